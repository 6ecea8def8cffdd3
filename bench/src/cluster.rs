//! `ringfs-bench cluster` (issue 5): a whole `ringfs local` cluster (one
//! master, three chunkservers, real processes on loopback, data dirs on the
//! disk under `--dir`) driven by the client library, against the MooseFS
//! peer (`../shared/peers/moosefs/`, FUSE mount, same replication, same
//! sizes) and raw `fio` on the same disk, all in the same run.
//!
//! Per round and replication r:
//! - sequential write of one `--size-mib` file (create to durable close)
//!   and its read after dropping caches;
//! - `--files` files of 4 KiB created (create + write + close) and read
//!   (open + read), at each `--concurrency`, with per-operation latency
//!   histograms.
//!
//! MooseFS runs its own scripts for the sequential cases and the
//! single-client small files (`bench.sh`: fio on the mount, smallfiles.py),
//! and this module's threaded driver on the mount for small files at the
//! same concurrency as ringfs. Ratios are taken per round; the summary
//! gives the median over rounds and min..max. See docs/BENCHMARKS.md.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringfs_client::{Client, ClientOptions, CreateOptions};
use serde_json::{Value, json};

use crate::{Spread, spread};

const MIB: u64 = 1 << 20;
const SMALL_FILE_BYTES: usize = 4096;
/// Small files are spread over this many directories (as smallfiles.py).
const SMALL_DIRS: usize = 10;
/// Bytes handed to the writer per call in the sequential case.
const WRITE_CALL_BYTES: usize = 8 << 20;
/// The peer's scripts and fio may take this long per invocation.
const PEER_TIMEOUT: Duration = Duration::from_secs(3600);

type Res<T> = Result<T, String>;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Where `masterd` and `chunkd` are (build with --release).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// A directory on the disk under test: the local cluster and fio's
    /// file go in a temporary subdirectory, removed at the end.
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Size of the sequentially written and read file.
    #[arg(long, default_value_t = 2048)]
    pub size_mib: u64,
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub replication: Vec<u8>,
    /// Small files per case.
    #[arg(long, default_value_t = 5000)]
    pub files: usize,
    /// Concurrent clients (tasks for ringfs, threads on the MooseFS mount)
    /// in the small-file cases.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub concurrency: Vec<usize>,
    /// The MooseFS peer's scripts (../shared/peers/moosefs), mounted
    /// already (`start.sh`). Without it, ringfs and fio only.
    #[arg(long)]
    pub moosefs: Option<PathBuf>,
    /// The MooseFS mount point.
    #[arg(long, default_value = "/tmp/moosefs/mnt")]
    pub moosefs_mount: PathBuf,
    /// fio binary; the raw-disk baseline is skipped when it is missing.
    #[arg(long, default_value = "fio")]
    pub fio: PathBuf,
    /// Every raw number, as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One measured number.
#[derive(Clone, Debug)]
struct Sample {
    round: usize,
    /// "ringfs", "moosefs", "fio".
    system: &'static str,
    replication: u8,
    /// e.g. "seq_write", "small_create_c32".
    case: String,
    /// e.g. "MiB_per_s", "ops_per_s", "p99_us".
    metric: &'static str,
    value: f64,
}

struct Samples(Vec<Sample>);

impl Samples {
    fn push(
        &mut self,
        round: usize,
        system: &'static str,
        r: u8,
        case: &str,
        metric: &'static str,
        value: f64,
    ) {
        println!("  round {round} {system:<8} r={r} {case:<22} {metric:<10} {value:>12.1}");
        self.0.push(Sample {
            round,
            system,
            replication: r,
            case: case.to_string(),
            metric,
            value,
        });
    }

    fn get(&self, round: usize, system: &str, r: u8, case: &str, metric: &str) -> Option<f64> {
        self.0
            .iter()
            .find(|s| {
                s.round == round
                    && s.system == system
                    && s.replication == r
                    && s.case == case
                    && s.metric == metric
            })
            .map(|s| s.value)
    }
}

pub fn run(args: Args) -> Res<()> {
    if args.rounds == 0 || args.size_mib == 0 || args.files == 0 {
        return Err("--rounds, --size-mib and --files must be positive".into());
    }
    if args.replication.iter().any(|&r| !(1..=3).contains(&r)) {
        return Err("--replication takes values 1 to 3 (three chunkservers)".into());
    }
    if args.concurrency.iter().any(|&c| c == 0 || c > 1024) {
        return Err("--concurrency takes values 1 to 1024".into());
    }
    if let Some(m) = &args.moosefs {
        if !m.join("bench.sh").exists() {
            return Err(format!(
                "{}: no bench.sh (the MooseFS peer scripts)",
                m.display()
            ));
        }
        if !is_mounted(&args.moosefs_mount) {
            return Err(format!(
                "{} is not a mounted MooseFS: run {}/start.sh first",
                args.moosefs_mount.display(),
                m.display()
            ));
        }
    }
    let fio = Command::new(&args.fio).arg("--version").output().is_ok();
    if !fio {
        eprintln!("fio not found: the raw-disk baseline is skipped");
    }
    let work = tempfile::Builder::new()
        .prefix("ringfs-bench-cluster-")
        .tempdir_in(&args.dir)
        .map_err(|e| format!("temp dir under {}: {e}", args.dir.display()))?;
    let mut samples = Samples(Vec::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let cluster = LocalCluster::up(&args.bin_dir, &work.path().join("cluster"))?;
    let result = (|| -> Res<()> {
        let config = ringfs_wire::config::Config::load(&cluster.config)
            .map_err(|e| format!("{}: {e}", cluster.config.display()))?;
        let fs = Client::new(&config, ClientOptions::default()).map_err(|e| e.to_string())?;
        for round in 1..=args.rounds {
            println!("round {round} of {}", args.rounds);
            if fio {
                fio_round(&args, work.path(), round, &mut samples)?;
            }
            for &r in &args.replication {
                rt.block_on(ringfs_round(&args, &fs, round, r, &mut samples))?;
                if let Some(peer) = &args.moosefs {
                    moosefs_round(&args, peer, round, r, &mut samples)?;
                }
            }
        }
        Ok(())
    })();
    cluster.down();
    if let Err(e) = result {
        // Keep the daemons' logs and data for a look.
        let kept = work.keep();
        return Err(format!(
            "{e}
(the cluster's logs and data are kept in {})",
            kept.display()
        ));
    }
    let summary = summarize(&args, &samples);
    if let Some(path) = &args.json {
        let raw: Vec<Value> = samples
            .0
            .iter()
            .map(|s| {
                json!({"round": s.round, "system": s.system, "replication": s.replication,
                       "case": s.case, "metric": s.metric, "value": s.value})
            })
            .collect();
        let doc = json!({"args": format!("{args:?}"), "samples": raw, "summary": summary});
        fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("raw numbers: {}", path.display());
    }
    Ok(())
}

/// A `ringfs local` cluster started for the bench and stopped after it.
struct LocalCluster {
    dir: PathBuf,
    config: PathBuf,
}

impl LocalCluster {
    fn up(bin_dir: &Path, dir: &Path) -> Res<LocalCluster> {
        let opts = ringfs_client::local::UpOptions {
            dir: dir.to_path_buf(),
            masters: 1,
            chunkservers: 3,
            shadows: 0,
            bin_dir: Some(bin_dir.to_path_buf()),
        };
        let cluster =
            ringfs_client::local::up(&opts).map_err(|e| format!("ringfs local up: {e}"))?;
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            config: cluster.config,
        })
    }

    fn down(&self) {
        match ringfs_client::local::down(&self.dir) {
            Ok(report) if report.all_stopped() => {}
            Ok(report) => eprintln!("ringfs local down: {}", report.describe()),
            Err(e) => eprintln!("ringfs local down: {e}"),
        }
    }
}

/// Writes the page cache out and drops it, so reads come from the disks.
fn drop_caches() {
    rustix::fs::sync();
    // Needs root; without it reads may be served from memory on the peer
    // (ringfs reads with O_DIRECT either way).
    let _ = fs::write("/proc/sys/vm/drop_caches", "3\n");
}

async fn ringfs_round(args: &Args, fs: &Client, round: usize, r: u8, out: &mut Samples) -> Res<()> {
    let err = |what: &str, e: ringfs_client::Error| format!("ringfs {what}: {e}");
    let dir = format!("/bench-r{r}-{round}");
    fs.mkdir(&dir, true).await.map_err(|e| err("mkdir", e))?;
    // Sequential write and read of one large file.
    let path = format!("{dir}/big");
    let size = args.size_mib * MIB;
    let data = crate::pattern(WRITE_CALL_BYTES);
    drop_caches();
    let t = Instant::now();
    let opts = CreateOptions {
        replication: r,
        exclusive: true,
    };
    let mut w = fs.writer(&path, opts).await.map_err(|e| err("create", e))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(data.len() as u64) as usize;
        w.write(&data[..n]).await.map_err(|e| err("write", e))?;
        left -= n as u64;
    }
    let attr = w.close().await.map_err(|e| err("close", e))?;
    let secs = t.elapsed().as_secs_f64();
    if attr.length_bytes != size {
        return Err(format!(
            "ringfs wrote {} of {size} bytes",
            attr.length_bytes
        ));
    }
    out.push(
        round,
        "ringfs",
        r,
        "seq_write",
        "MiB_per_s",
        args.size_mib as f64 / secs,
    );
    drop_caches();
    let t = Instant::now();
    let reader = fs.reader(&path).await.map_err(|e| err("open", e))?;
    let mut sink = tokio::io::sink();
    let n = reader
        .copy_to(&mut sink, |_| {})
        .await
        .map_err(|e| err("read", e))?;
    let secs = t.elapsed().as_secs_f64();
    if n != size {
        return Err(format!("ringfs read {n} of {size} bytes"));
    }
    out.push(
        round,
        "ringfs",
        r,
        "seq_read",
        "MiB_per_s",
        args.size_mib as f64 / secs,
    );
    // Purged, not left in the trash: the chunks are deleted, as a long
    // benchmark session needs.
    let trash_id = fs
        .delete(&path, false)
        .await
        .map_err(|e| err("delete", e))?;
    fs.purge(trash_id).await.map_err(|e| err("purge", e))?;
    // Small files at each concurrency.
    let payload = Arc::new(crate::pattern(SMALL_FILE_BYTES));
    for &c in &args.concurrency {
        let sdir = format!("{dir}/small-c{c}");
        for d in 0..SMALL_DIRS {
            fs.mkdir(&format!("{sdir}/d{d:03}"), true)
                .await
                .map_err(|e| err("mkdir", e))?;
        }
        let name = move |i: usize| format!("{sdir}/d{:03}/f{i:06}", i % SMALL_DIRS);
        let create = {
            let payload = payload.clone();
            let name = name.clone();
            move |fs: Client, i: usize| {
                let payload = payload.clone();
                let path = name(i);
                async move {
                    let mut w = fs.writer(&path, opts).await?;
                    w.write(&payload).await?;
                    w.close().await.map(|_| ())
                }
            }
        };
        let (secs, hist) = drive(fs, args.files, c, create)
            .await
            .map_err(|e| err("small create", e))?;
        push_ops(
            out,
            round,
            "ringfs",
            r,
            &format!("small_create_c{c}"),
            args.files,
            secs,
            &hist,
        );
        drop_caches();
        let read = move |fs: Client, i: usize| {
            let path = name(i);
            async move {
                let r = fs.reader(&path).await?;
                let got = r.read_at(0, SMALL_FILE_BYTES as u64).await?;
                if got.len() != SMALL_FILE_BYTES {
                    return Err(ringfs_client::Error::Protocol {
                        what: path,
                        reason: format!("read {} bytes", got.len()),
                    });
                }
                Ok(())
            }
        };
        let (secs, hist) = drive(fs, args.files, c, read)
            .await
            .map_err(|e| err("small read", e))?;
        push_ops(
            out,
            round,
            "ringfs",
            r,
            &format!("small_read_c{c}"),
            args.files,
            secs,
            &hist,
        );
    }
    let trash_id = fs.delete(&dir, true).await.map_err(|e| err("delete", e))?;
    fs.purge(trash_id).await.map_err(|e| err("purge", e))?;
    Ok(())
}

/// Runs `op(i)` for i in 0..n with `c` workers; returns the wall time and
/// the latency histogram (ns) of every operation.
async fn drive<F, Fut>(
    fs: &Client,
    n: usize,
    c: usize,
    op: F,
) -> Result<(f64, Histogram<u64>), ringfs_client::Error>
where
    F: Fn(Client, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), ringfs_client::Error>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..c {
        let (next, op, fs) = (next.clone(), op.clone(), fs.clone());
        workers.spawn(async move {
            let mut hist = crate::latency_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(hist);
                }
                let start = Instant::now();
                op(fs.clone(), i).await?;
                hist.saturating_record(start.elapsed().as_nanos() as u64);
            }
        });
    }
    let mut all = crate::latency_histogram();
    while let Some(done) = workers.join_next().await {
        let hist = done.map_err(|e| ringfs_client::Error::Protocol {
            what: "bench worker".into(),
            reason: e.to_string(),
        })??;
        all.add(&hist).map_err(|e| ringfs_client::Error::Protocol {
            what: "histogram".into(),
            reason: e.to_string(),
        })?;
    }
    Ok((t.elapsed().as_secs_f64(), all))
}

/// Throughput and latency percentiles (recorded in ns, reported in µs).
#[allow(clippy::too_many_arguments)]
fn push_ops(
    out: &mut Samples,
    round: usize,
    system: &'static str,
    r: u8,
    case: &str,
    n: usize,
    secs: f64,
    hist: &Histogram<u64>,
) {
    out.push(round, system, r, case, "ops_per_s", n as f64 / secs);
    let us = |ns: u64| ns as f64 / 1000.0;
    for (metric, ns) in [
        ("p50_us", hist.value_at_quantile(0.50)),
        ("p99_us", hist.value_at_quantile(0.99)),
        ("p999_us", hist.value_at_quantile(0.999)),
        ("max_us", hist.max()),
    ] {
        out.push(round, system, r, case, metric, us(ns));
    }
}

/// Raw disk: fio sequential 1 MiB writes (O_DIRECT, 8 in flight, fsync at
/// the end) and reads of a file as large as ringfs's, under `work`.
fn fio_round(args: &Args, work: &Path, round: usize, out: &mut Samples) -> Res<()> {
    let file = work.join("fio.dat");
    for (case, rw) in [("seq_write", "write"), ("seq_read", "read")] {
        drop_caches();
        let json_out = work.join("fio.json");
        let mut cmd = Command::new(&args.fio);
        cmd.args([
            "--name=raw",
            &format!("--filename={}", file.display()),
            &format!("--rw={rw}"),
            "--bs=1M",
            &format!("--size={}M", args.size_mib),
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=8",
            "--end_fsync=1",
            "--output-format=json",
        ])
        .arg(format!("--output={}", json_out.display()));
        let status = run_bounded(&mut cmd, "fio")?;
        let text = fs::read(&json_out).map_err(|e| format!("{}: {e}", json_out.display()))?;
        if !status.success() {
            return Err(format!(
                "fio {rw} exited with {status}: {}",
                String::from_utf8_lossy(&text)
            ));
        }
        let v: Value = serde_json::from_slice(&text).map_err(|e| format!("fio json: {e}"))?;
        let side = if rw == "write" { "write" } else { "read" };
        let bw_kib = v["jobs"][0][side]["bw"]
            .as_f64()
            .ok_or_else(|| format!("fio json has no jobs[0].{side}.bw"))?;
        out.push(round, "fio", 1, case, "MiB_per_s", bw_kib / 1024.0);
    }
    let _ = fs::remove_file(&file);
    Ok(())
}

/// The peer at goal r: its own bench.sh (sequential cases and the single
/// client small files), then this module's driver for the concurrent ones.
fn moosefs_round(args: &Args, peer: &Path, round: usize, r: u8, out: &mut Samples) -> Res<()> {
    let csv = std::env::temp_dir().join(format!(
        "ringfs-bench-moosefs-{}-{round}-{r}.csv",
        std::process::id()
    ));
    let _ = fs::remove_file(&csv);
    let mut cmd = Command::new("bash");
    cmd.arg(peer.join("bench.sh"))
        .env("GOALS", r.to_string())
        .env("REPS", "1")
        .env("SIZE_MIB", args.size_mib.to_string())
        .env("FILES", args.files.to_string())
        .env("OUTCSV", &csv)
        .stdout(std::process::Stdio::null());
    let status = run_bounded(&mut cmd, "moosefs bench.sh")?;
    let text = fs::read_to_string(&csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    let _ = fs::remove_file(&csv);
    if !status.success() {
        return Err(format!("moosefs bench.sh exited with {status}"));
    }
    for (key, case, metric) in [
        ("seqwrite", "seq_write_nosync", "MiB_per_s"),
        ("seqwrite_plus_sync", "seq_write", "MiB_per_s"),
        ("seqread", "seq_read", "MiB_per_s"),
        ("small_create", "small_create_c1_script", "ops_per_s"),
        ("small_read", "small_read_c1_script", "ops_per_s"),
    ] {
        let value = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.len() >= 5 && f[2] == key)
                    .then(|| f[4].parse::<f64>().ok())
                    .flatten()
            })
            .next()
            .ok_or_else(|| format!("moosefs bench.sh printed no {key} row"))?;
        out.push(round, "moosefs", r, case, metric, value);
    }
    for &c in &args.concurrency {
        let dir = args
            .moosefs_mount
            .join(format!("ringfs-bench-g{r}-{round}-c{c}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let goal = Command::new("mfssetgoal")
            .args(["-r", &r.to_string()])
            .arg(&dir)
            .output()
            .map_err(|e| format!("mfssetgoal: {e}"))?;
        if !goal.status.success() {
            return Err(format!(
                "mfssetgoal: {}",
                String::from_utf8_lossy(&goal.stderr)
            ));
        }
        let result = posix_small_files(&dir, args.files, c);
        let _ = fs::remove_dir_all(&dir);
        let ((cs, ch), (rs, rh)) = result?;
        push_ops(
            out,
            round,
            "moosefs",
            r,
            &format!("small_create_c{c}"),
            args.files,
            cs,
            &ch,
        );
        push_ops(
            out,
            round,
            "moosefs",
            r,
            &format!("small_read_c{c}"),
            args.files,
            rs,
            &rh,
        );
    }
    Ok(())
}

type Timed = (f64, Histogram<u64>);

/// Small files on a mounted file system with `c` threads: create + write
/// + close, then (caches dropped) open + read + close.
fn posix_small_files(dir: &Path, n: usize, c: usize) -> Res<(Timed, Timed)> {
    for d in 0..SMALL_DIRS {
        let p = dir.join(format!("d{d:03}"));
        fs::create_dir(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let name = |i: usize| dir.join(format!("d{:03}/f{i:06}", i % SMALL_DIRS));
    let payload = crate::pattern(SMALL_FILE_BYTES);
    let create = threads(n, c, |i| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(name(i))?;
        f.write_all(&payload)
    })?;
    drop_caches();
    let read = threads(n, c, |i| {
        let mut buf = Vec::with_capacity(SMALL_FILE_BYTES + 1);
        fs::File::open(name(i))?.read_to_end(&mut buf)?;
        if buf.len() == SMALL_FILE_BYTES {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("read {} bytes", buf.len())))
        }
    })?;
    Ok((create, read))
}

fn threads(n: usize, c: usize, op: impl Fn(usize) -> std::io::Result<()> + Sync) -> Res<Timed> {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    let hists: Vec<Res<Histogram<u64>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..c)
            .map(|_| {
                s.spawn(|| {
                    let mut hist = crate::latency_histogram();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(hist);
                        }
                        let start = Instant::now();
                        op(i).map_err(|e| format!("file {i}: {e}"))?;
                        hist.saturating_record(start.elapsed().as_nanos() as u64);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("a worker panicked".into())))
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    let mut all = crate::latency_histogram();
    for h in hists {
        all.add(&h?).map_err(|e| e.to_string())?;
    }
    Ok((secs, all))
}

/// Runs a command to completion within [`PEER_TIMEOUT`]; past it the
/// child (ours, by PID) is killed.
fn run_bounded(cmd: &mut Command, what: &str) -> Res<std::process::ExitStatus> {
    let mut child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
    match crate::wait_bounded(&mut child, PEER_TIMEOUT) {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err(format!("{what} took longer than {PEER_TIMEOUT:?}; killed")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy();
    fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
    })
}

/// Median and spread of every (system, r, case, metric), and the per-round
/// ratios against the targets.
fn summarize(args: &Args, s: &Samples) -> Value {
    let mut groups: BTreeMap<(u8, String, &str, &str), Vec<f64>> = BTreeMap::new();
    for x in &s.0 {
        groups
            .entry((x.replication, x.case.clone(), x.metric, x.system))
            .or_default()
            .push(x.value);
    }
    println!("\nmedian over {} round(s), [min..max]:", args.rounds);
    let mut rows = Vec::new();
    for ((r, case, metric, system), values) in &groups {
        if let Some(Spread { median, min, max }) = spread(values) {
            println!(
                "  r={r} {case:<24} {metric:<10} {system:<8} {median:>12.1} [{min:.1}..{max:.1}]"
            );
            rows.push(
                json!({"replication": r, "case": case, "metric": metric, "system": system,
                             "median": median, "min": min, "max": max}),
            );
        }
    }
    // Ratios per round, then their median: (label, ours, theirs).
    let mut ratios = Vec::new();
    let mut ratio =
        |label: String, ours: (&str, u8, &str, &str), theirs: (&str, u8, &str, &str)| {
            let per_round: Vec<f64> = (1..=args.rounds)
                .filter_map(|round| {
                    let a = s.get(round, ours.0, ours.1, ours.2, ours.3)?;
                    let b = s.get(round, theirs.0, theirs.1, theirs.2, theirs.3)?;
                    (b > 0.0).then_some(a / b)
                })
                .collect();
            if let Some(Spread { median, min, max }) = spread(&per_round) {
                println!("  {label:<58} {median:>7.2}x [{min:.2}..{max:.2}]");
                ratios.push(json!({"ratio": label, "median": median, "min": min, "max": max}));
            }
        };
    println!("\nratios (per round, median [min..max]):");
    for &r in &args.replication {
        for case in ["seq_write", "seq_read"] {
            ratio(
                format!("ringfs/moosefs r={r} {case} (moosefs incl. sync)"),
                ("ringfs", r, case, "MiB_per_s"),
                ("moosefs", r, case, "MiB_per_s"),
            );
        }
        ratio(
            format!("ringfs/moosefs r={r} seq_write (moosefs without sync)"),
            ("ringfs", r, "seq_write", "MiB_per_s"),
            ("moosefs", r, "seq_write_nosync", "MiB_per_s"),
        );
        for &c in &args.concurrency {
            for op in ["create", "read"] {
                let case = format!("small_{op}_c{c}");
                ratio(
                    format!("ringfs/moosefs r={r} {case}"),
                    ("ringfs", r, &case, "ops_per_s"),
                    ("moosefs", r, &case, "ops_per_s"),
                );
            }
        }
        for op in ["create", "read"] {
            let c = args.concurrency.iter().max().copied().unwrap_or(1);
            ratio(
                format!("ringfs c={c} / moosefs smallfiles.py r={r} {op}"),
                ("ringfs", r, &format!("small_{op}_c{c}"), "ops_per_s"),
                ("moosefs", r, &format!("small_{op}_c1_script"), "ops_per_s"),
            );
        }
    }
    for case in ["seq_write", "seq_read"] {
        ratio(
            format!("ringfs r=1 / raw fio {case}"),
            ("ringfs", 1, case, "MiB_per_s"),
            ("fio", 1, case, "MiB_per_s"),
        );
    }
    json!({"rows": rows, "ratios": ratios})
}
