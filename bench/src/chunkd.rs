//! `ringfs-bench chunkd` (issue 3): one chunkd process on one data dir,
//! driven over loopback by blocking client connections, against `fio`
//! (io_uring, O_DIRECT) on the same file system in the same run.
//!
//! The bench acts as the master (creates the chunks, grants long leases)
//! and as the clients: queue depth Q is Q connections with one request in
//! flight each, one thread per connection. Clients compute block CRCs on
//! writes and verify them on reads, as the real client does. Cases: 1 MiB
//! sequential writes and reads at QD 1, 8, 32 and 64 KiB random reads at
//! QD 32; then each read case again, alternating chunkd's read verification
//! off and on (ABBA, one process, so both sides see the same caches) to
//! price the server's read verification. Each round runs every case;
//! the summary gives the median over rounds and min..max, and ratios are
//! taken per round (chunkd and fio measured minutes apart, not days).
//! See docs/BENCHMARKS.md for the method.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Barrier, mpsc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringfs_client::conn::Conn;
use ringfs_wire::auth::ClusterKey;
use ringfs_wire::checksum::{BLOCK_BYTES, block_checksums, crc32c};
use ringfs_wire::msg::{
    Body, CreateChunk, GrantLease, PeerKind, ReadChunk, ReadChunkReply, WriteChunk,
};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
const CLUSTER: &str = "ringfs-bench";
const EPOCH: u64 = 1;
const VERSION: u64 = 1;
/// Leases outlast any run (the bench is the only master).
const LEASE_MS: u32 = 24 * 3600 * 1000;
const HANDLE_BASE: u64 = 0xb0_0000;
const SEQ_DEPTHS: [usize; 3] = [1, 8, 32];
const RAND_DEPTH: usize = 32;
const FILL_DEPTH: usize = 8;
const SEQ_BYTES: u64 = MIB;
const RAND_BYTES: u64 = 64 << 10;
/// Connect, send and receive timeout of every connection.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// chunkd must print its ready line (and exit on SIGTERM) within this.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// fio may take this long beyond its runtime (start-up, file checks).
const FIO_SLACK: Duration = Duration::from_secs(120);
/// Verification A/B per read case: this many ABBA cycles (on, off, off,
/// on), each segment a quarter of a case's runtime (at least a second).
/// ABBA cancels a linear drift of the host's speed within a cycle; many
/// short segments average out its jumps.
const VERIFY_AB_CYCLES: usize = 4;
/// chunkd must show a flipped verification switch on /metrics within this.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

type Res<T> = Result<T, String>;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The chunkd binary to benchmark (build it with --release).
    #[arg(long)]
    pub chunkd_bin: PathBuf,
    /// A directory on the disk under test. A temporary subdirectory holds
    /// chunkd's data dir, fio's file, the config and key, and the logs; it
    /// is removed at the end (unless --keep).
    #[arg(long)]
    pub dir: PathBuf,
    /// Data set size in MiB: the chunks chunkd serves; fio's file is as large.
    #[arg(long, default_value_t = 2048)]
    pub size_mib: u64,
    /// Chunk size in MiB (written into the config).
    #[arg(long, default_value_t = 64)]
    pub chunk_mib: u64,
    /// Seconds per case (each chunkd and each fio measurement).
    #[arg(long, default_value_t = 10)]
    pub runtime_secs: u64,
    /// Rounds of the whole matrix; the summary is the median and min..max.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// chunkd --cores (the client threads share the machine with it).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// The fio binary.
    #[arg(long, default_value = "fio")]
    pub fio: PathBuf,
    /// Do not run fio (ratios are shown as n/a).
    #[arg(long)]
    pub no_fio: bool,
    /// Write every raw number, per round, and the summary here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the temporary directory (data, fio file, logs) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Run only the cases whose name contains this text (e.g. "seq-write 1MiB QD8");
    /// for profiling one case. The targets summary then lists what ran.
    #[arg(long)]
    pub only: Option<String>,
}

pub fn run(args: Args) -> Res<()> {
    if args.size_mib < 32 || args.chunk_mib == 0 || args.chunk_mib > 1024 {
        return Err("--size-mib must be >= 32 and --chunk-mib in 1..=1024".into());
    }
    if args.rounds == 0 || args.runtime_secs == 0 {
        return Err("--rounds and --runtime-secs must be >= 1".into());
    }
    if let Some(only) = &args.only
        && !cases().iter().any(|c| c.name.contains(only.as_str()))
    {
        let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
        return Err(format!(
            "--only {only:?} matches no case; the cases are: {}",
            names.join(", ")
        ));
    }
    let chunkd_bin = fs::canonicalize(&args.chunkd_bin)
        .map_err(|e| format!("--chunkd-bin {}: {e}", args.chunkd_bin.display()))?;
    fs::create_dir_all(&args.dir).map_err(|e| format!("--dir {}: {e}", args.dir.display()))?;
    let fio = if args.no_fio {
        None
    } else {
        match fio_version(&args.fio) {
            Ok(v) => Some((args.fio.clone(), v)),
            Err(e) => {
                println!(
                    "fio not usable ({e}); continuing without fio (ratios n/a). \
                     Install it (e.g. `apt-get install -y fio`) or pass --fio PATH."
                );
                None
            }
        }
    };
    let work = tempfile::Builder::new()
        .prefix("ringfs-bench-")
        .disable_cleanup(args.keep)
        .tempdir_in(&args.dir)
        .map_err(|e| format!("temp dir in {}: {e}", args.dir.display()))?;
    let layout = Layout {
        chunk_bytes: args.chunk_mib * MIB,
        size_bytes: args.size_mib * MIB,
    };
    let ctx = Ctx::new(work.path(), chunkd_bin, &args, layout)?;
    let fio = match fio {
        Some((bin, version)) => Some(Fio::new(bin, version, work.path(), layout.size_bytes)?),
        None => None,
    };
    println!(
        "ringfs-bench chunkd: work dir {} ({} MiB data set, {} chunks of {} MiB, {} s per case, \
         {} round(s), chunkd --cores {}, fio {})",
        work.path().display(),
        args.size_mib,
        layout.chunks(),
        args.chunk_mib,
        args.runtime_secs,
        args.rounds,
        args.cores,
        fio.as_ref().map(|f| f.version.as_str()).unwrap_or("off"),
    );
    ctx.setup()?;

    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let crc = crc_cost();
        println!(
            "round {round}/{}: CRC32C {:.4} CPU-s/GiB cache-hot 64 KiB, {:.4} CPU-s/GiB streaming",
            args.rounds, crc.hot_s_per_gib, crc.cold_s_per_gib
        );
        let rows = ctx.round(round, fio.as_ref())?;
        rounds.push(Round { rows, crc });
    }
    let summary = summarize(&rounds);
    print_summary(&summary, args.rounds);
    if let Some(path) = &args.json {
        let doc = json!({
            "command": std::env::args().collect::<Vec<_>>(),
            "settings": {
                "size_mib": args.size_mib,
                "chunk_mib": args.chunk_mib,
                "runtime_secs": args.runtime_secs,
                "rounds": args.rounds,
                "cores": args.cores,
                "fio": fio.as_ref().map(|f| f.version.clone()),
                "dir": args.dir.display().to_string(),
            },
            "rounds": rounds.iter().map(Round::to_json).collect::<Vec<_>>(),
            "summary": summary.iter().map(|s| json!({
                "case": s.case, "system": s.system, "metric": s.metric,
                "median": s.median(), "min": s.min(), "max": s.max(), "values": s.values,
            })).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        println!("raw numbers: {}", path.display());
    }
    if args.keep {
        println!("kept {}", work.path().display());
    }
    Ok(())
}

// ---------------------------------------------------------------- layout

/// The data set as one address space of `size_bytes`, cut into chunks.
#[derive(Clone, Copy, Debug)]
struct Layout {
    chunk_bytes: u64,
    size_bytes: u64,
}

impl Layout {
    fn chunks(&self) -> u64 {
        self.size_bytes.div_ceil(self.chunk_bytes)
    }

    fn handles(&self) -> impl Iterator<Item = u64> {
        (0..self.chunks()).map(|i| HANDLE_BASE + i)
    }

    /// (handle, offset in chunk) of a data-set position. Requests are
    /// aligned to their size, which divides the chunk size, so they never
    /// cross a chunk.
    fn locate(&self, pos: u64) -> (u64, u64) {
        (HANDLE_BASE + pos / self.chunk_bytes, pos % self.chunk_bytes)
    }

    /// Stream `i` of `n`: a MiB-aligned slice of the data set, written and
    /// read sequentially by one connection.
    fn stream(&self, i: usize, n: usize) -> (u64, u64) {
        let units = self.size_bytes / SEQ_BYTES;
        let (i, n) = (i as u64, n as u64);
        (units * i / n * SEQ_BYTES, units * (i + 1) / n * SEQ_BYTES)
    }
}

// ---------------------------------------------------------------- context

struct Ctx {
    chunkd_bin: PathBuf,
    config: PathBuf,
    data: PathBuf,
    logs: PathBuf,
    key: ClusterKey,
    cores: usize,
    runtime: Duration,
    layout: Layout,
    only: Option<String>,
    starts: std::sync::atomic::AtomicU32,
}

impl Ctx {
    fn new(work: &Path, chunkd_bin: PathBuf, args: &Args, layout: Layout) -> Res<Ctx> {
        let key = ClusterKey::generate().map_err(|e| e.to_string())?;
        let key_path = work.join("cluster.key");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        f.write_all(key.to_hex_line().as_bytes())
            .map_err(|e| e.to_string())?;
        let config = work.join("ringfs.toml");
        // The master addresses are never served: chunkd's heartbeats fail
        // (cheaply) and the bench plays the master over a Master connection.
        fs::write(
            &config,
            format!(
                r#"cluster_id = "{CLUSTER}"
key_file = "cluster.key"
chunk_size_bytes = {}

[[masters]]
id = 1
client_addr = "127.0.0.1:1"
peer_addr = "127.0.0.1:2"
http_addr = "127.0.0.1:3"
role = "voter"
"#,
                layout.chunk_bytes
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let data = work.join("data");
        fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        Ok(Ctx {
            chunkd_bin,
            config,
            data,
            logs: work.to_path_buf(),
            key,
            cores: args.cores,
            runtime: Duration::from_secs(args.runtime_secs),
            layout,
            only: args.only.clone(),
            starts: std::sync::atomic::AtomicU32::new(0),
        })
    }

    fn start(&self) -> Res<Chunkd> {
        let n = 1 + self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.logs.join(format!("chunkd-{n}.log"));
        Chunkd::start(self, &log)
    }

    fn connect(&self, cs: &Chunkd, kind: PeerKind) -> Res<Conn> {
        Conn::connect(&cs.addr, &self.key, CLUSTER, kind, IO_TIMEOUT)
            .map_err(|e| format!("connecting to chunkd {}: {e}", cs.addr))
    }

    /// Creates the chunks and writes the whole data set once, so every
    /// measured write is an overwrite of allocated, written space (as fio's
    /// are, on its zero-filled file).
    fn setup(&self) -> Res<()> {
        let mut cs = self.start()?;
        let mut master = self.connect(&cs, PeerKind::Master)?;
        for handle in self.layout.handles() {
            let body = Body::CreateChunk(Box::new(CreateChunk {
                epoch: EPOCH,
                handle,
                version: VERSION,
            }));
            expect_ok(&mut master, &body, "CreateChunk")?;
        }
        drop(master);
        self.grant_leases(&cs)?;
        let started = Instant::now();
        let fill = self.phase(&cs, Op::SeqWrite, FILL_DEPTH, None)?;
        println!(
            "setup: created {} chunks, wrote {} MiB in {:.1} s ({:.0} MiB/s)",
            self.layout.chunks(),
            fill.bytes / MIB,
            started.elapsed().as_secs_f64(),
            fill.mib_per_s()
        );
        cs.stop()
    }

    fn grant_leases(&self, cs: &Chunkd) -> Res<()> {
        let mut master = self.connect(cs, PeerKind::Master)?;
        for handle in self.layout.handles() {
            let body = Body::GrantLease(Box::new(GrantLease {
                epoch: EPOCH,
                handle,
                version: VERSION,
                duration_ms: LEASE_MS,
                secondaries: Some(Vec::new()),
            }));
            expect_ok(&mut master, &body, "GrantLease")?;
        }
        Ok(())
    }

    /// One round of the matrix; returns its rows in display order.
    fn round(&self, round: usize, fio: Option<&Fio>) -> Res<Vec<Row>> {
        let mut got: BTreeMap<(String, &'static str), Metrics> = BTreeMap::new();
        let cases: Vec<Case> = cases()
            .into_iter()
            .filter(|c| {
                self.only
                    .as_ref()
                    .is_none_or(|o| c.name.contains(o.as_str()))
            })
            .collect();
        assert!(
            !cases.is_empty(),
            "run() checked that --only matches a case"
        );
        let secs = self.runtime.as_secs();
        let say = |case: &str, system: &str, m: &Metrics| {
            println!("round {round}: {case:22} {system:18} {}", m.brief());
        };

        let mut cs = self.start()?;
        self.grant_leases(&cs)?;
        for c in &cases {
            let m = self
                .phase(&cs, c.op, c.depth, Some(self.runtime))?
                .metrics();
            say(&c.name, CHUNKD, &m);
            got.insert((c.name.clone(), CHUNKD), m);
            if let Some(fio) = fio {
                let m = fio.run(c.op, c.depth, secs, false)?;
                say(&c.name, FIO, &m);
                got.insert((c.name.clone(), FIO), m);
                if c.op == Op::SeqWrite {
                    let m = fio.run(c.op, c.depth, secs, true)?;
                    say(&c.name, FIO_SYNC, &m);
                    got.insert((c.name.clone(), FIO_SYNC), m);
                }
            }
        }
        for c in cases.iter().filter(|c| c.op != Op::SeqWrite) {
            let (on, off) = self.verify_ab(&cs, c, round)?;
            let (on, off) = (on.metrics(), off.metrics());
            say(&c.name, CHUNKD_VERIFY_AB, &on);
            say(&c.name, CHUNKD_NOVERIFY, &off);
            got.insert((c.name.clone(), CHUNKD_VERIFY_AB), on);
            got.insert((c.name.clone(), CHUNKD_NOVERIFY), off);
        }
        cs.stop()?;

        let mut rows = Vec::new();
        for c in &cases {
            let get = |system| got.get(&(c.name.clone(), system));
            let chunkd = get(CHUNKD).ok_or("missing chunkd result")?;
            let mut push = |system: &'static str, metrics: Metrics| {
                rows.push(Row {
                    case: c.name.clone(),
                    system,
                    metrics,
                })
            };
            push(CHUNKD, chunkd.clone());
            for system in [CHUNKD_VERIFY_AB, CHUNKD_NOVERIFY] {
                if let Some(m) = get(system) {
                    push(system, m.clone());
                }
            }
            for (fio_system, ratio_system) in [(FIO, RATIO_FIO), (FIO_SYNC, RATIO_FIO_SYNC)] {
                if let Some(f) = get(fio_system) {
                    push(fio_system, f.clone());
                    let mut ratio = Metrics::from([(MIBS, chunkd[MIBS] / f[MIBS])]);
                    // fio's write clat leaves out its fdatasync; a p99 ratio
                    // against it would flatter nobody, so it is only taken
                    // against plain fio.
                    if fio_system == FIO {
                        ratio.insert(P99, chunkd[P99] / f[P99]);
                    }
                    push(ratio_system, ratio);
                }
            }
            if let (Some(v), Some(nv)) = (get(CHUNKD_VERIFY_AB), get(CHUNKD_NOVERIFY)) {
                let mut m = Metrics::from([
                    (MIBS, (1.0 - v[MIBS] / nv[MIBS]) * 100.0),
                    (P99, (v[P99] / nv[P99] - 1.0) * 100.0),
                ]);
                if let (Some(a), Some(b)) = (v.get(SRV_CPU), nv.get(SRV_CPU)) {
                    m.insert(SRV_CPU, (a / b - 1.0) * 100.0);
                }
                push(VERIFY_COST, m);
            }
        }
        Ok(rows)
    }

    /// One read case with chunkd's read verification on and off in ABBA
    /// order on one process; returns (on, off), each the sum of its
    /// segments. Leaves verification on.
    fn verify_ab(&self, cs: &Chunkd, c: &Case, round: usize) -> Res<(Phase, Phase)> {
        let segment = (self.runtime / 4).max(Duration::from_secs(1));
        let (mut on, mut off): (Option<Phase>, Option<Phase>) = (None, None);
        for verify in [true, false, false, true].repeat(VERIFY_AB_CYCLES) {
            cs.set_read_verify(verify)?;
            let p = self.phase(cs, c.op, c.depth, Some(segment))?;
            println!(
                "round {round}: {:22} verify {:3} segment {:>7.0} MiB/s",
                c.name,
                if verify { "on" } else { "off" },
                p.mib_per_s()
            );
            let side = if verify { &mut on } else { &mut off };
            match side {
                Some(sum) => sum.absorb(p)?,
                None => *side = Some(p),
            }
        }
        cs.set_read_verify(true)?;
        match (on, off) {
            (Some(on), Some(off)) => Ok((on, off)),
            _ => Err("verification A/B ran no segment".into()),
        }
    }

    /// Runs `depth` connections doing `op` for `runtime`, or, without a
    /// runtime, writes every stream once (the fill).
    fn phase(&self, cs: &Chunkd, op: Op, depth: usize, runtime: Option<Duration>) -> Res<Phase> {
        let barrier = Barrier::new(depth + 1);
        // Fill: assume at least 10 MiB/s, never less than two minutes.
        let fill_limit = Duration::from_secs((self.layout.size_bytes / (10 * MIB)).max(120));
        let layout = self.layout;
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..depth)
                .map(|i| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let conn = self.connect(cs, PeerKind::Client);
                        // Everyone reaches the barrier, failed or not.
                        barrier.wait();
                        let w = Worker {
                            layout,
                            op,
                            stream: layout.stream(i, depth),
                            seed: (i as u64 + 1) * 0x9E37_79B9_7F4A_7C15,
                        };
                        w.run(&mut conn?, runtime, fill_limit)
                    })
                })
                .collect();
            let srv0 = cs.cpu_secs();
            let cli0 = self_cpu_secs();
            barrier.wait();
            let t0 = Instant::now();
            let mut results = Vec::new();
            for w in workers {
                results.push(w.join().map_err(|_| "a client thread panicked".to_string()));
            }
            let secs = t0.elapsed().as_secs_f64();
            let server_cpu_s = match (srv0, cs.cpu_secs()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            let client_cpu_s = match (cli0, self_cpu_secs()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            let mut hist = crate::latency_histogram();
            let (mut bytes, mut ops) = (0, 0);
            for r in results {
                let w = r??;
                hist.add(&w.hist).map_err(|e| e.to_string())?;
                bytes += w.bytes;
                ops += w.ops;
            }
            if ops == 0 {
                return Err(format!("{op:?} QD {depth}: no request completed"));
            }
            Ok(Phase {
                bytes,
                ops,
                secs,
                hist,
                server_cpu_s,
                client_cpu_s,
            })
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    SeqWrite,
    SeqRead,
    RandRead,
}

struct Case {
    name: String,
    op: Op,
    depth: usize,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (op, what) in [(Op::SeqWrite, "seq-write"), (Op::SeqRead, "seq-read")] {
        for depth in SEQ_DEPTHS {
            v.push(Case {
                name: format!("{what} 1MiB QD{depth}"),
                op,
                depth,
            });
        }
    }
    v.push(Case {
        name: format!("rand-read 64KiB QD{RAND_DEPTH}"),
        op: Op::RandRead,
        depth: RAND_DEPTH,
    });
    v
}

// ---------------------------------------------------------------- workers

struct Worker {
    layout: Layout,
    op: Op,
    stream: (u64, u64),
    seed: u64,
}

struct WorkerOut {
    hist: Histogram<u64>,
    bytes: u64,
    ops: u64,
}

impl Worker {
    fn run(
        &self,
        conn: &mut Conn,
        runtime: Option<Duration>,
        fill_limit: Duration,
    ) -> Res<WorkerOut> {
        let (start, end) = self.stream;
        let data = crate::pattern(SEQ_BYTES as usize);
        let mut rng = self.seed | 1;
        let blocks = self.layout.size_bytes / RAND_BYTES;
        let mut pos = start;
        let mut out = WorkerOut {
            hist: crate::latency_histogram(),
            bytes: 0,
            ops: 0,
        };
        let t0 = Instant::now();
        loop {
            match runtime {
                Some(r) if t0.elapsed() >= r => break,
                None if pos >= end => break,
                None if t0.elapsed() > fill_limit => {
                    return Err(format!("fill not done within {fill_limit:?}"));
                }
                _ => {}
            }
            let (at, len) = match self.op {
                Op::SeqWrite | Op::SeqRead => {
                    if pos >= end {
                        pos = start;
                    }
                    pos += SEQ_BYTES;
                    (pos - SEQ_BYTES, SEQ_BYTES)
                }
                Op::RandRead => {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    ((rng % blocks) * RAND_BYTES, RAND_BYTES)
                }
            };
            let (handle, offset) = self.layout.locate(at);
            let t = Instant::now();
            match self.op {
                Op::SeqWrite => write(conn, handle, offset, &data)?,
                Op::SeqRead | Op::RandRead => read(conn, handle, offset, len as u32)?,
            }
            out.hist.saturating_record(t.elapsed().as_nanos() as u64);
            out.bytes += len;
            out.ops += 1;
        }
        Ok(out)
    }
}

fn expect_ok(conn: &mut Conn, body: &Body, what: &str) -> Res<()> {
    let r = conn.call(body, &[]).map_err(|e| format!("{what}: {e}"))?;
    match r.error() {
        Some(e) => Err(format!("{what}: {:?}: {:?}", e.code, e.message)),
        None => Ok(()),
    }
}

/// A write as the client sends it: block CRCs computed here, data inline.
fn write(conn: &mut Conn, handle: u64, offset: u64, data: &[u8]) -> Res<()> {
    let body = Body::WriteChunk(Box::new(WriteChunk {
        epoch: EPOCH,
        handle,
        version: VERSION,
        offset,
        length: data.len() as u32,
        inline: true,
        block_crcs: Some(block_checksums(data)),
        ..Default::default()
    }));
    let r = conn.call(&body, data).map_err(|e| format!("write: {e}"))?;
    match r.body {
        Body::WriteChunkReply(_) => Ok(()),
        Body::ErrorReply(e) => Err(format!(
            "write {handle:#x}+{offset}: {:?}: {:?}",
            e.code, e.message
        )),
        other => Err(format!("write: unexpected reply {other:?}")),
    }
}

/// A block-aligned read, every returned block checked against its CRC.
fn read(conn: &mut Conn, handle: u64, offset: u64, len: u32) -> Res<()> {
    let body = Body::ReadChunk(Box::new(ReadChunk {
        handle,
        min_version: 0,
        offset,
        length: len,
    }));
    let r = conn.call(&body, &[]).map_err(|e| format!("read: {e}"))?;
    match r.body {
        Body::ReadChunkReply(reply) => verify_read(&reply, &r.data, offset, len)
            .map_err(|e| format!("read {handle:#x}+{offset}: {e}")),
        Body::ErrorReply(e) => Err(format!(
            "read {handle:#x}+{offset}: {:?}: {:?}",
            e.code, e.message
        )),
        other => Err(format!("read: unexpected reply {other:?}")),
    }
}

fn verify_read(reply: &ReadChunkReply, data: &[u8], offset: u64, len: u32) -> Res<()> {
    if reply.offset != offset || data.len() != len as usize {
        return Err(format!(
            "got {} bytes at {}, asked {len} at {offset}",
            data.len(),
            reply.offset
        ));
    }
    let crcs = reply.block_crcs.as_deref().unwrap_or_default();
    if crcs.len() != data.len().div_ceil(BLOCK_BYTES) {
        return Err(format!("{} CRCs for {} bytes", crcs.len(), data.len()));
    }
    for (i, (piece, crc)) in data.chunks(BLOCK_BYTES).zip(crcs).enumerate() {
        if crc32c(piece) != *crc {
            return Err(format!("block {i} fails its CRC"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- results

const CHUNKD: &str = "chunkd";
const CHUNKD_VERIFY_AB: &str = "chunkd A/B verify";
const CHUNKD_NOVERIFY: &str = "chunkd A/B no-verify";
const FIO: &str = "fio";
const FIO_SYNC: &str = "fio fdatasync=1";
const RATIO_FIO: &str = "chunkd/fio (x)";
const RATIO_FIO_SYNC: &str = "chunkd/fio-fds (x)";
const VERIFY_COST: &str = "verify cost (%)";

const MIBS: &str = "MiB/s";
const IOPS: &str = "IOPS";
const P50: &str = "p50 us";
const P99: &str = "p99 us";
const P999: &str = "p999 us";
const SRV_CPU: &str = "srv CPU-s/GiB";
const CLI_CPU: &str = "cli CPU-s/GiB";
/// fio --fdatasync=1 only (raw numbers in --json, not in the table).
const SYNC_P50: &str = "fdatasync p50 us";
const SYNC_P99: &str = "fdatasync p99 us";
const COLUMNS: [&str; 7] = [MIBS, IOPS, P50, P99, P999, SRV_CPU, CLI_CPU];

type Metrics = BTreeMap<&'static str, f64>;

trait Brief {
    fn brief(&self) -> String;
}

impl Brief for Metrics {
    fn brief(&self) -> String {
        let f = |k| self.get(k).map(|v| format!("{v:.0}")).unwrap_or("-".into());
        format!(
            "{:>7} MiB/s {:>7} IOPS  p50 {:>7} us  p99 {:>7} us  p999 {:>7} us",
            f(MIBS),
            f(IOPS),
            f(P50),
            f(P99),
            f(P999)
        )
    }
}

struct Phase {
    bytes: u64,
    ops: u64,
    secs: f64,
    hist: Histogram<u64>,
    server_cpu_s: Option<f64>,
    client_cpu_s: Option<f64>,
}

impl Phase {
    /// Adds another measurement of the same case (A/B segments): bytes,
    /// requests, time, latencies and CPU add up.
    fn absorb(&mut self, other: Phase) -> Res<()> {
        self.bytes += other.bytes;
        self.ops += other.ops;
        self.secs += other.secs;
        self.hist.add(&other.hist).map_err(|e| e.to_string())?;
        let sum = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        self.server_cpu_s = sum(self.server_cpu_s, other.server_cpu_s);
        self.client_cpu_s = sum(self.client_cpu_s, other.client_cpu_s);
        Ok(())
    }

    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.secs
    }

    fn metrics(&self) -> Metrics {
        let us = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        let gib = self.bytes as f64 / GIB;
        let mut m = Metrics::from([
            (MIBS, self.mib_per_s()),
            (IOPS, self.ops as f64 / self.secs),
            (P50, us(0.50)),
            (P99, us(0.99)),
            (P999, us(0.999)),
        ]);
        if let Some(c) = self.server_cpu_s {
            m.insert(SRV_CPU, c / gib);
        }
        if let Some(c) = self.client_cpu_s {
            m.insert(CLI_CPU, c / gib);
        }
        m
    }
}

struct Row {
    case: String,
    system: &'static str,
    metrics: Metrics,
}

struct Round {
    rows: Vec<Row>,
    crc: CrcCost,
}

impl Round {
    fn to_json(&self) -> Value {
        json!({
            "crc32c_cpu_s_per_gib": {
                "cache_hot_64k": self.crc.hot_s_per_gib,
                "streaming": self.crc.cold_s_per_gib,
            },
            "rows": self.rows.iter().map(|r| json!({
                "case": r.case, "system": r.system, "metrics": r.metrics,
            })).collect::<Vec<_>>(),
        })
    }
}

struct Summary {
    case: String,
    system: String,
    metric: String,
    values: Vec<f64>,
}

impl Summary {
    fn median(&self) -> Option<f64> {
        crate::spread(&self.values).map(|s| s.median)
    }

    fn min(&self) -> Option<f64> {
        crate::spread(&self.values).map(|s| s.min)
    }

    fn max(&self) -> Option<f64> {
        crate::spread(&self.values).map(|s| s.max)
    }
}

/// Per (case, system, metric), in first-seen order, with the CRC cost last.
fn summarize(rounds: &[Round]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    let mut add = |case: &str, system: &str, metric: &str, v: f64| match out
        .iter_mut()
        .find(|s| s.case == case && s.system == system && s.metric == metric)
    {
        Some(s) => s.values.push(v),
        None => out.push(Summary {
            case: case.into(),
            system: system.into(),
            metric: metric.into(),
            values: vec![v],
        }),
    };
    for r in rounds {
        for row in &r.rows {
            for (metric, v) in &row.metrics {
                add(&row.case, row.system, metric, *v);
            }
        }
        add(
            "CRC32C",
            "cache-hot 64 KiB",
            "CPU-s/GiB",
            r.crc.hot_s_per_gib,
        );
        add("CRC32C", "streaming", "CPU-s/GiB", r.crc.cold_s_per_gib);
    }
    out
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn print_summary(summary: &[Summary], rounds: usize) {
    let find = |case: &str, system: &str, metric: &str| {
        summary
            .iter()
            .find(|s| s.case == case && s.system == system && s.metric == metric)
    };
    println!();
    println!("summary over {rounds} round(s): per cell the median, and min..max on the line below");
    let mut head = format!("{:22} {:19}", "case", "system");
    for c in COLUMNS {
        head += &format!(" {c:>15}");
    }
    println!("{head}");
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for s in summary {
        if s.case == "CRC32C" || seen.contains(&(&s.case, &s.system)) {
            continue;
        }
        seen.push((&s.case, &s.system));
        let mut med = format!("{:22} {:19}", s.case, s.system);
        let mut spread = format!("{:22} {:19}", "", "");
        for c in COLUMNS {
            match find(&s.case, &s.system, c) {
                Some(x) => {
                    med += &format!(" {:>15}", x.median().map(num).unwrap_or("n/a".into()));
                    let sp = match (x.min(), x.max()) {
                        (Some(a), Some(b)) => format!("{}..{}", num(a), num(b)),
                        _ => "n/a".into(),
                    };
                    spread += &format!(" {sp:>15}");
                }
                None => {
                    med += &format!(" {:>15}", "");
                    spread += &format!(" {:>15}", "");
                }
            }
        }
        println!("{med}");
        if rounds > 1 {
            println!("{spread}");
        }
    }
    println!(
        "  {RATIO_FIO}: chunkd over fio in the same round (MiB/s column: throughput, p99 column: p99)\n  \
         {RATIO_FIO_SYNC}: throughput of chunkd over fio --fdatasync=1 (fio's clat leaves its syncs out)\n  \
         {VERIFY_COST}: {CHUNKD_VERIFY_AB} against {CHUNKD_NOVERIFY} (one process, verification switched\n    \
         in ABBA segments): MiB/s column % throughput lost,\n    \
         p99 column % higher p99, srv CPU column % more chunkd CPU per GiB\n  \
         srv CPU-s/GiB: CPU seconds of the chunkd process (of fio, in fio rows) per GiB moved;\n  \
         cli CPU-s/GiB: the bench process (the clients: framing, copies, CRCs)"
    );
    let show = |label: &str, s: Option<&Summary>, target: &str| {
        let v = match s {
            Some(s) => match (s.median(), s.min(), s.max()) {
                (Some(m), Some(a), Some(b)) => format!("{} [{}..{}]", num(m), num(a), num(b)),
                _ => "n/a".into(),
            },
            None => "n/a".into(),
        };
        println!("  {label:58} {v:>28}   {target}");
    };
    println!();
    println!("against the issue-3 targets (median [min..max] over rounds):");
    for (what, target) in [("seq-read", ">= 0.90"), ("seq-write", ">= 0.90")] {
        let case = format!("{what} 1MiB QD8");
        show(
            &format!("{case}: throughput chunkd/fio"),
            find(&case, RATIO_FIO, MIBS),
            target,
        );
    }
    show(
        "seq-write 1MiB QD8: throughput chunkd/fio fdatasync=1",
        find("seq-write 1MiB QD8", RATIO_FIO_SYNC, MIBS),
        "(like-for-like durability)",
    );
    for c in cases().iter().filter(|c| c.op != Op::SeqWrite) {
        show(
            &format!("{}: read verification, % throughput", c.name),
            find(&c.name, VERIFY_COST, MIBS),
            "<= 3 %",
        );
    }
    for c in cases() {
        show(
            &format!("{}: p99 chunkd/fio", c.name),
            find(&c.name, RATIO_FIO, P99),
            "<= 1.5",
        );
    }
    show(
        "CRC32C CPU-s per GiB, cache-hot 64 KiB blocks",
        find("CRC32C", "cache-hot 64 KiB", "CPU-s/GiB"),
        "",
    );
    show(
        "CRC32C CPU-s per GiB, streaming from memory",
        find("CRC32C", "streaming", "CPU-s/GiB"),
        "",
    );
}

// ---------------------------------------------------------------- CRC cost

struct CrcCost {
    hot_s_per_gib: f64,
    cold_s_per_gib: f64,
}

/// Seconds of one core per GiB checksummed in 64 KiB blocks: a cache-hot
/// block over and over, and a 256 MiB buffer streamed from memory. One
/// thread, wall clock, median of 5 passes (nothing else runs meanwhile).
fn crc_cost() -> CrcCost {
    fn median_pass(buf: &[u8], passes_bytes: u64) -> f64 {
        let mut v: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let mut done = 0u64;
                let mut acc = 0u32;
                while done < passes_bytes {
                    for block in buf.chunks(BLOCK_BYTES) {
                        acc ^= crc32c(std::hint::black_box(block));
                    }
                    done += buf.len() as u64;
                }
                std::hint::black_box(acc);
                t.elapsed().as_secs_f64() / (done as f64 / GIB)
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[2]
    }
    let hot = crate::pattern(BLOCK_BYTES);
    let mut cold = vec![0u8; 256 << 20];
    for piece in cold.chunks_mut(hot.len()) {
        piece.copy_from_slice(&hot[..piece.len()]);
        piece[0] = piece[0].wrapping_add(1);
    }
    CrcCost {
        hot_s_per_gib: median_pass(&hot, 1 << 30),
        cold_s_per_gib: median_pass(&cold, 512 << 20),
    }
}

// ---------------------------------------------------------------- processes

/// A chunkd child process: killed by PID when dropped.
struct Chunkd {
    child: Option<Child>,
    addr: String,
    http: String,
    log: PathBuf,
}

impl Chunkd {
    fn start(ctx: &Ctx, log: &Path) -> Res<Chunkd> {
        let stderr = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(&ctx.chunkd_bin);
        cmd.arg("--config")
            .arg(&ctx.config)
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--bench-read-verify-signals")
            .arg("--data")
            .arg(&ctx.data)
            .arg("--cores")
            .arg(ctx.cores.to_string())
            .env("RINGFS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", ctx.chunkd_bin.display()))?;
        let stdout = child.stdout.take().ok_or("no chunkd stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so chunkd never writes into a closed pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut cs = Chunkd {
            child: Some(child),
            addr: String::new(),
            http: String::new(),
            log: log.to_path_buf(),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if line.starts_with("chunkd ready") => {
                let field = |key: &str| {
                    line.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(key))
                        .filter(|v| !v.is_empty() && *v != "-")
                        .map(str::to_owned)
                        .ok_or_else(|| format!("no {key} in chunkd's ready line: {line:?}"))
                };
                cs.addr = field("listen=")?;
                cs.http = field("http=")?;
                Ok(cs)
            }
            other => {
                cs.kill();
                Err(format!(
                    "chunkd did not start ({other:?}); its log {}:\n{}",
                    cs.log.display(),
                    tail(&cs.log)
                ))
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Flips the benchmark switch (SIGUSR2 on, SIGUSR1 off) and waits until
    /// `/metrics` shows it: reads sent after that see the new setting.
    fn set_read_verify(&self, on: bool) -> Res<()> {
        let pid = self.pid().ok_or("chunkd is not running")?;
        let status = Command::new("kill")
            .arg(if on { "-USR2" } else { "-USR1" })
            .arg(pid.to_string())
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if !status.success() {
            return Err(format!(
                "signalling chunkd {pid}: kill exited with {status}"
            ));
        }
        let want = format!("ringfs_chunkd_read_verify {}", u8::from(on));
        let deadline = Instant::now() + SWITCH_TIMEOUT;
        loop {
            let metrics = crate::http_get(&self.http, "/metrics")?;
            if metrics.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "chunkd did not show {want:?} within {SWITCH_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// User + system CPU seconds of the process so far.
    fn cpu_secs(&self) -> Option<f64> {
        proc_cpu_secs(&format!("/proc/{}/stat", self.pid()?))
    }

    /// SIGTERM and a bounded wait for a clean exit, then SIGKILL.
    fn stop(&mut self) -> Res<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match crate::wait_bounded(&mut child, START_TIMEOUT) {
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(Some(status)) => Err(format!(
                "chunkd exited with {status}; its log {}:\n{}",
                self.log.display(),
                tail(&self.log)
            )),
            Ok(None) => Err(format!(
                "chunkd did not exit on SIGTERM within {START_TIMEOUT:?}"
            )),
            Err(e) => Err(format!("waiting for chunkd: {e}")),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Chunkd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn self_cpu_secs() -> Option<f64> {
    proc_cpu_secs("/proc/self/stat")
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat file, in seconds.
fn proc_cpu_secs(path: &str) -> Option<f64> {
    let text = fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; fields restart after ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

// ---------------------------------------------------------------- fio

struct Fio {
    bin: PathBuf,
    version: String,
    file: PathBuf,
    dir: PathBuf,
    size_bytes: u64,
    runs: std::cell::Cell<u32>,
}

fn fio_version(bin: &Path) -> Res<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!("{} --version: {}", bin.display(), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Fio {
    /// Lays out fio's file, zero-filled and synced, so fio's writes are
    /// overwrites of written extents, as chunkd's are after the fill.
    fn new(bin: PathBuf, version: String, work: &Path, size_bytes: u64) -> Res<Fio> {
        let dir = work.join("fio");
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let file = dir.join("fio.dat");
        let started = Instant::now();
        let mut f = File::create(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let zeros = vec![0u8; MIB as usize];
        for _ in 0..size_bytes / MIB {
            f.write_all(&zeros)
                .map_err(|e| format!("{}: {e}", file.display()))?;
        }
        f.sync_all().map_err(|e| e.to_string())?;
        println!(
            "setup: fio file {} ({} MiB of zeros) in {:.1} s",
            file.display(),
            size_bytes / MIB,
            started.elapsed().as_secs_f64()
        );
        Ok(Fio {
            bin,
            version,
            file,
            dir,
            size_bytes,
            runs: std::cell::Cell::new(0),
        })
    }

    fn args(&self, op: Op, depth: usize, secs: u64, fdatasync: bool) -> Vec<String> {
        let (rw, bs) = match op {
            Op::SeqWrite => ("write", SEQ_BYTES),
            Op::SeqRead => ("read", SEQ_BYTES),
            Op::RandRead => ("randread", RAND_BYTES),
        };
        let mut a = vec![
            format!("--name=ringfs-{rw}"),
            "--ioengine=io_uring".into(),
            "--direct=1".into(),
            format!("--rw={rw}"),
            format!("--bs={bs}"),
            format!("--iodepth={depth}"),
            format!("--size={}", self.size_bytes),
            format!("--runtime={secs}"),
            "--time_based".into(),
            format!("--filename={}", self.file.display()),
            "--output-format=json".into(),
            "--percentile_list=50:99:99.9".into(),
        ];
        if fdatasync {
            a.push("--fdatasync=1".into());
        }
        a
    }

    fn run(&self, op: Op, depth: usize, secs: u64, fdatasync: bool) -> Res<Metrics> {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let out_path = self.dir.join(format!("fio-{n}.json"));
        let err_path = self.dir.join(format!("fio-{n}.err"));
        let args = self.args(op, depth, secs, fdatasync);
        let mut child = Command::new(&self.bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).map_err(|e| e.to_string())?)
            .stderr(File::create(&err_path).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("starting fio: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(secs) + FIO_SLACK;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("fio {args:?}: did not finish in time ({other:?})"));
                }
            }
        };
        let mut text = String::new();
        File::open(&out_path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!(
                "fio {args:?}: {status}\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            ));
        }
        parse_fio(&text, op).map_err(|e| format!("fio {args:?}: {e}"))
    }
}

/// bw_bytes, iops, clat percentiles and CPU per GiB of fio's only job.
fn parse_fio(text: &str, op: Op) -> Res<Metrics> {
    // fio may print notes before the JSON document.
    let start = text.find('{').ok_or("no JSON in fio's output")?;
    let v: Value = serde_json::from_str(&text[start..]).map_err(|e| e.to_string())?;
    let job = &v["jobs"][0];
    if job.is_null() {
        return Err("no job in fio's output".into());
    }
    if job["error"].as_i64().unwrap_or(0) != 0 {
        return Err(format!("fio job error {}", job["error"]));
    }
    let dir = if op == Op::SeqWrite { "write" } else { "read" };
    let d = &job[dir];
    let f = |x: &Value, what: &str| x.as_f64().ok_or(format!("fio output lacks {dir}.{what}"));
    let pct = |p: f64| -> Res<f64> {
        percentile_us(&d["clat_ns"], p).ok_or(format!("fio output lacks clat percentile {p}"))
    };
    let bw = f(&d["bw_bytes"], "bw_bytes")?;
    let mut m = Metrics::from([
        (MIBS, bw / MIB as f64),
        (IOPS, f(&d["iops"], "iops")?),
        (P50, pct(50.0)?),
        (P99, pct(99.0)?),
        (P999, pct(99.9)?),
    ]);
    // With --fdatasync=1, fio times its syncs apart from the writes.
    for (metric, p) in [(SYNC_P50, 50.0), (SYNC_P99, 99.0)] {
        if let Some(us) = percentile_us(&job["sync"]["lat_ns"], p) {
            m.insert(metric, us);
        }
    }
    // CPU of the fio process per GiB moved, comparable to chunkd's server CPU.
    if let (Some(usr), Some(sys), Some(ms), Some(io)) = (
        job["usr_cpu"].as_f64(),
        job["sys_cpu"].as_f64(),
        d["runtime"].as_f64(),
        d["io_bytes"].as_f64(),
    ) && io > 0.0
    {
        m.insert(SRV_CPU, (usr + sys) / 100.0 * ms / 1000.0 / (io / GIB));
    }
    Ok(m)
}

/// A percentile, in µs, from a fio latency object (`clat_ns`, `lat_ns`).
fn percentile_us(lat_ns: &Value, p: f64) -> Option<f64> {
    lat_ns["percentile"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.parse::<f64>().is_ok_and(|k| (k - p).abs() < 1e-6))
        .and_then(|(_, v)| v.as_f64())
        .map(|ns| ns / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_cover_the_data_set_without_crossing_chunks() {
        let l = Layout {
            chunk_bytes: 4 * MIB,
            size_bytes: 70 * MIB,
        };
        assert_eq!(l.chunks(), 18);
        for n in [1, 8, 32] {
            let mut next = 0;
            for i in 0..n {
                let (a, b) = l.stream(i, n);
                assert_eq!(a, next);
                assert!(b > a && a % MIB == 0 && b % MIB == 0);
                next = b;
            }
            assert_eq!(next, l.size_bytes);
        }
        assert_eq!(l.locate(4 * MIB + 5), (HANDLE_BASE + 1, 5));
    }

    #[test]
    fn parses_fio_json() {
        let text = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.36",
  "jobs" : [ {
      "jobname" : "x", "error" : 0, "usr_cpu" : 10.0, "sys_cpu" : 30.0,
      "read" : { "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0, "runtime" : 0 },
      "sync" : { "total_ios" : 10, "lat_ns" : { "percentile" : {
          "50.000000" : 400000, "99.000000" : 700000 } } },
      "write" : {
        "io_bytes" : 2147483648, "bw_bytes" : 1073741824, "iops" : 1024.0, "runtime" : 2000,
        "clat_ns" : { "percentile" : {
            "50.000000" : 900000, "99.000000" : 2000000, "99.900000" : 3500000 } }
      }
  } ]
}"#;
        let m = parse_fio(text, Op::SeqWrite).unwrap();
        assert_eq!(m[MIBS], 1024.0);
        assert_eq!(m[IOPS], 1024.0);
        assert_eq!(m[P50], 900.0);
        assert_eq!(m[P99], 2000.0);
        assert_eq!(m[P999], 3500.0);
        assert!((m[SRV_CPU] - 0.4).abs() < 1e-9);
        assert_eq!(m[SYNC_P99], 700.0);
        assert!(parse_fio(text, Op::SeqRead).is_err());
    }

    #[test]
    fn summary_takes_median_and_spread() {
        let s = Summary {
            case: "c".into(),
            system: "s".into(),
            metric: "m".into(),
            values: vec![3.0, 1.0, 2.0, 10.0],
        };
        assert_eq!(s.median(), Some(2.5));
        assert_eq!(s.min(), Some(1.0));
        assert_eq!(s.max(), Some(10.0));
    }
}
