//! `ringfs-bench meta`: the metadata master's throughput, restart time and
//! memory per file, in the manner of HDFS's NNThroughputBenchmark.
//!
//! The bench starts its own `masterd` (one voter, generated config and
//! cluster key, `--listen`/`--http` on 127.0.0.1 port 0) on a temporary data
//! dir, or drives a running master (`--addr` with `--config`). Per round, on
//! a fresh master:
//!
//! - phases `mkdirs` (the directories that hold the files), `creates`
//!   (`--files` empty files, exclusive), `stats` (every file) and `renames`
//!   (every file to a new name in its directory), each run by
//!   `--clients` × `--depth` tokio tasks on `--client-threads` threads, each
//!   with its own `RequestId` client id and one request in flight. With
//!   `--connections C` the tasks share C multiplexed links
//!   (`ringfs_client::mux::MuxLink`, what the client library uses, design
//!   note 018), task w on link w mod C; with `--connections 0` each task has
//!   its own lock-step `Link`, as before 2026-11-22;
//! - per phase: ops/s over the phase's wall clock, p50/p99/p999/max latency at
//!   the client (hdrhistogram), and from `/metrics` deltas the op-log
//!   records per fsync, ops per fsync and ops per proposal, plus the CPU of
//!   the master and of the bench;
//! - then `kill -9` of the master, a restart on the same data dir, the time
//!   to its `ready` line and to having applied everything it had applied
//!   before the kill (log replay and checkpoint load);
//! - resident memory (`VmRSS`): of the empty master right after its first
//!   start, after the creates, and after the restart; per file, the
//!   difference to the empty master divided by the files.
//!
//! Every wait is bounded; the bench kills only the masterd it started, by
//! PID, and removes its temporary directory. See docs/BENCHMARKS.md.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use ringfs_client::conn::Conn;
use ringfs_client::link::Link;
use ringfs_client::mux::MuxLink;
use ringfs_wire::auth::ClusterKey;
use ringfs_wire::config::Config;
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::msg::{Body, Create, ErrorCode, Mkdir, PeerKind, Rename, RequestId, Stat};
use serde_json::{Value, json};

const CLUSTER: &str = "ringfs-bench-meta";
/// Connect, send and receive timeout of every client connection.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// A first start (empty data dir) must print `ready` within this.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGTERM to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// `Busy` replies retried per request before it counts as an error.
const BUSY_RETRIES: u32 = 1000;
/// Files per directory when `--dirs` is 0.
const FILES_PER_DIR: u64 = 100;

type Res<T> = Result<T, String>;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The masterd binary (build it with --release). Default: `masterd`
    /// next to this binary.
    #[arg(long)]
    pub masterd: Option<PathBuf>,
    /// A temporary subdirectory of this holds the master's data dir, the
    /// config, the key and the logs; it is removed at the end (unless
    /// --keep).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// Drive a running master at this client address instead of starting
    /// one (no restart or memory figures then). Needs --config.
    #[arg(long, requires = "config")]
    pub addr: Option<String>,
    /// With --addr: the cluster config (cluster id and key; the `http_addr`
    /// of the master whose `client_addr` is --addr, for /metrics).
    #[arg(long, requires = "addr")]
    pub config: Option<PathBuf>,
    /// Concurrent clients per phase, each a task with one request in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Requests in flight per client: each client runs this many tasks.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Multiplexed connections the client tasks share, as one `Client` of
    /// the client library does (default: as many as it opens to a master;
    /// at most 64 requests in flight on each, the master's per-connection
    /// bound, and more tasks wait for a slot). 0: every task has its own
    /// lock-step connection (the layout before 2026-11-22).
    #[arg(long, default_value_t = ringfs_client::mux::MUX_LINKS_PER_ADDR_MAX)]
    pub connections: usize,
    /// Threads of the bench's tokio runtime, which drive every client task.
    /// The bench shares the machine with the master: one OS thread per
    /// client (as before 2026-11-21) spent as much CPU on context switches
    /// as the master spent serving.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Files created, stat'ed and renamed per round.
    #[arg(long, default_value_t = 200_000)]
    pub files: u64,
    /// Directories the files are spread over (0: one per 100 files).
    #[arg(long, default_value_t = 0)]
    pub dirs: u64,
    /// Rounds, each on a fresh master; the summary is the median and min..max.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// masterd --threads (0: one per CPU, masterd's default).
    #[arg(long, default_value_t = 0)]
    pub masterd_threads: usize,
    /// `master.checkpoint_every_records` in the generated config (log
    /// records = proposals, not ops); masterd's default when absent.
    #[arg(long)]
    pub checkpoint_every_records: Option<u64>,
    /// Bound on each phase and on each restart (seconds).
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
    /// Write every raw number, per round, and the summary here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the temporary directory (data dirs, logs) for inspection.
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: Args) -> Res<()> {
    if args.clients == 0
        || args.depth == 0
        || args.files == 0
        || args.rounds == 0
        || args.client_threads == 0
    {
        return Err(
            "--clients, --depth, --files, --rounds and --client-threads must be >= 1".into(),
        );
    }
    if args.timeout_secs == 0 {
        return Err("--timeout-secs must be >= 1".into());
    }
    let dirs = if args.dirs == 0 {
        args.files.div_ceil(FILES_PER_DIR)
    } else {
        args.dirs
    };
    let workers = args.clients * args.depth;
    let links = links_label(args.connections, workers);
    let mut rounds: Vec<Vec<Sample>> = Vec::new();
    let settings;
    match (&args.addr, &args.config) {
        (Some(addr), Some(config)) => {
            let ext = External::new(addr, config)?;
            settings = format!("master {addr} (external: no restart or memory figures)");
            println!(
                "ringfs-bench meta: {settings}, {} files in {dirs} dirs, {} clients x depth {} = {workers} \
                 tasks on {links}, {} round(s)",
                args.files, args.clients, args.depth, args.rounds
            );
            for round in 1..=args.rounds {
                rounds.push(ext.round(&args, round, dirs)?);
            }
        }
        _ => {
            let bin = match &args.masterd {
                Some(p) => p.clone(),
                None => std::env::current_exe()
                    .map_err(|e| format!("own path: {e}"))?
                    .with_file_name("masterd"),
            };
            let bin = fs::canonicalize(&bin).map_err(|e| {
                format!(
                    "masterd binary {}: {e} (build it: cargo build --release -p masterd, or pass --masterd)",
                    bin.display()
                )
            })?;
            fs::create_dir_all(&args.dir)
                .map_err(|e| format!("--dir {}: {e}", args.dir.display()))?;
            let work = tempfile::Builder::new()
                .prefix("ringfs-bench-meta-")
                .disable_cleanup(args.keep)
                .tempdir_in(&args.dir)
                .map_err(|e| format!("temp dir in {}: {e}", args.dir.display()))?;
            let own = Own::new(work.path(), bin, &args)?;
            settings = format!("own masterd {}", own.bin.display());
            println!(
                "ringfs-bench meta: {settings} (--threads {}), work dir {}, {} files in {dirs} dirs, \
                 {} clients x depth {} = {workers} tasks on {links}, {} round(s)",
                args.masterd_threads,
                work.path().display(),
                args.files,
                args.clients,
                args.depth,
                args.rounds
            );
            for round in 1..=args.rounds {
                rounds.push(own.round(&args, round, dirs)?);
            }
            if args.keep {
                println!("kept {}", work.path().display());
            }
        }
    }
    let summary = summarize(&rounds);
    print_summary(&summary, args.rounds, args.files);
    for s in &summary {
        println!(
            "json-summary {}",
            json!({
                "case": s.case, "metric": s.metric, "median": s.median(),
                "min": s.min(), "max": s.max(), "values": s.values,
            })
        );
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "command": std::env::args().collect::<Vec<_>>(),
            "settings": {
                "target": settings,
                "files": args.files,
                "dirs": dirs,
                "clients": args.clients,
                "depth": args.depth,
                "connections": args.connections,
                "rounds": args.rounds,
                "masterd_threads": args.masterd_threads,
                "checkpoint_every_records": args.checkpoint_every_records,
                "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            },
            "rounds": rounds.iter().map(|r| r.iter().map(Sample::to_json).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            "summary": summary.iter().map(|s| json!({
                "case": s.case, "metric": s.metric, "median": s.median(),
                "min": s.min(), "max": s.max(), "values": s.values,
            })).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        println!("raw numbers: {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------- targets

/// Where the clients connect and how to reach `/metrics`.
struct Target {
    addr: String,
    http: Option<String>,
    key: ClusterKey,
    cluster: String,
    /// The master's PID when the bench started it (for CPU and RSS).
    pid: Option<u32>,
}

impl Target {
    fn connect(&self) -> Res<Conn> {
        Conn::connect(
            &self.addr,
            &self.key,
            &self.cluster,
            PeerKind::Client,
            IO_TIMEOUT,
        )
        .map_err(|e| format!("connecting to masterd {}: {e}", self.addr))
    }

    /// A connection for a client task (the future owns what it needs).
    fn connect_async(&self) -> impl Future<Output = Res<Link>> + Send + 'static {
        let (addr, key, cluster) = (self.addr.clone(), self.key.clone(), self.cluster.clone());
        async move {
            let link = Link::connect(&addr, &key, &cluster, FrameLimits::CONTROL);
            tokio::time::timeout(IO_TIMEOUT, link)
                .await
                .map_err(|_| {
                    format!("connecting to masterd {addr}: no answer within {IO_TIMEOUT:?}")
                })?
                .map_err(|e| format!("connecting to masterd {addr}: {e}"))
        }
    }

    /// A multiplexed connection, shared by several client tasks.
    async fn connect_mux(&self) -> Res<MuxLink> {
        let link = MuxLink::connect(&self.addr, &self.key, &self.cluster, FrameLimits::CONTROL);
        tokio::time::timeout(IO_TIMEOUT, link)
            .await
            .map_err(|_| {
                format!(
                    "connecting to masterd {}: no answer within {IO_TIMEOUT:?}",
                    self.addr
                )
            })?
            .map_err(|e| format!("connecting to masterd {}: {e}", self.addr))
    }

    fn scrape(&self) -> Option<Scrape> {
        let http = self.http.as_deref()?;
        match crate::http_get(http, "/metrics") {
            Ok(text) => Some(parse_metrics(&text)),
            Err(e) => {
                println!("warning: /metrics on {http}: {e}");
                None
            }
        }
    }

    fn status(&self) -> Option<Value> {
        let text = crate::http_get(self.http.as_deref()?, "/status").ok()?;
        serde_json::from_str(&text).ok()
    }

    fn cpu_secs(&self) -> Option<f64> {
        proc_cpu_secs(&format!("/proc/{}/stat", self.pid?))
    }

    fn rss_bytes(&self) -> Option<u64> {
        proc_rss_bytes(self.pid?)
    }
}

/// A running master the bench did not start.
struct External {
    target: Target,
}

impl External {
    fn new(addr: &str, config: &Path) -> Res<External> {
        let c = Config::load(config).map_err(|e| format!("{}: {e}", config.display()))?;
        let http = c
            .file
            .masters
            .iter()
            .find(|m| m.client_addr == addr)
            .map(|m| m.http_addr.clone());
        if http.is_none() {
            println!(
                "warning: no master in {} has client_addr {addr}: no /metrics figures",
                config.display()
            );
        }
        Ok(External {
            target: Target {
                addr: addr.to_owned(),
                http,
                key: c.key.clone(),
                cluster: c.file.cluster_id.clone(),
                pid: None,
            },
        })
    }

    fn round(&self, args: &Args, round: usize, dirs: u64) -> Res<Vec<Sample>> {
        let plan = Plan::new(args.files, dirs);
        let mut out = Vec::new();
        run_phases(&self.target, args, round, &plan, &mut out, |_| {})?;
        Ok(out)
    }
}

/// Masters the bench starts: the config and key, and per round a data dir.
struct Own {
    bin: PathBuf,
    work: PathBuf,
    config: PathBuf,
    key: ClusterKey,
    threads: usize,
    restart_timeout: Duration,
}

impl Own {
    fn new(work: &Path, bin: PathBuf, args: &Args) -> Res<Own> {
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
        // The config's addresses are free ports at this moment (bound and
        // released); masterd is started with --listen/--http 127.0.0.1:0
        // and the bench reads the real ones from its ready line, so a port
        // taken meanwhile does not matter. The peer address is never bound
        // by a single voter.
        // They must differ (the config refuses a reused address), so all
        // three are bound at once before any is released.
        let ports = ringfs_client::local::config_gen::free_ports(3)
            .map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
        let (client, peer, http) = (ports[0], ports[1], ports[2]);
        let tuning = match args.checkpoint_every_records {
            Some(n) => format!("\n[master]\ncheckpoint_every_records = {n}\n"),
            None => String::new(),
        };
        let config = work.join("ringfs.toml");
        fs::write(
            &config,
            format!(
                r#"cluster_id = "{CLUSTER}"
key_file = "cluster.key"

[[masters]]
id = 1
client_addr = "127.0.0.1:{client}"
peer_addr = "127.0.0.1:{peer}"
http_addr = "127.0.0.1:{http}"
role = "voter"
{tuning}"#
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        Ok(Own {
            bin,
            work: work.to_path_buf(),
            config,
            key,
            threads: args.masterd_threads,
            restart_timeout: Duration::from_secs(args.timeout_secs),
        })
    }

    fn round(&self, args: &Args, round: usize, dirs: u64) -> Res<Vec<Sample>> {
        let dir = self.work.join(format!("round-{round}"));
        let data = dir.join("data");
        fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let r = self.round_in(args, round, dirs, &dir, &data);
        if !args.keep {
            let _ = fs::remove_dir_all(&dir);
        }
        r
    }

    fn round_in(
        &self,
        args: &Args,
        round: usize,
        dirs: u64,
        dir: &Path,
        data: &Path,
    ) -> Res<Vec<Sample>> {
        let mut out = Vec::new();
        let mut m = Masterd::start(self, data, &dir.join("masterd-1.log"), START_TIMEOUT)?;
        let mut target = Target {
            addr: m.addr.clone(),
            http: Some(m.http.clone()),
            key: self.key.clone(),
            cluster: CLUSTER.to_owned(),
            pid: m.pid(),
        };
        // Let the fresh master settle (first election, initial entries).
        std::thread::sleep(Duration::from_millis(300));
        let rss_empty = target.rss_bytes().ok_or("cannot read masterd's VmRSS")?;
        let plan = Plan::new(args.files, dirs);
        let files = args.files as f64;
        let mut rss_creates = None;
        run_phases(&target, args, round, &plan, &mut out, |phase| {
            if phase == Phase::Creates {
                rss_creates = target.rss_bytes();
            }
        })?;
        let rss_creates = rss_creates.ok_or("cannot read masterd's VmRSS after the creates")?;
        let before = target.scrape().ok_or("no /metrics before the restart")?;
        let status = target.status().ok_or("no /status before the restart")?;
        let applied = before.get("ringfs_master_applied_index");
        let replay_entries = status["last_log_index"].as_f64().unwrap_or(f64::NAN)
            - status["snapshot_index"].as_f64().unwrap_or(0.0);

        // kill -9 and restart on the same data dir.
        m.kill9();
        let started = Instant::now();
        let started_wall = unix_secs(SystemTime::now());
        let m2 = Masterd::start(
            self,
            data,
            &dir.join("masterd-2.log"),
            self.restart_timeout.max(START_TIMEOUT),
        )?;
        let ready_s = started.elapsed().as_secs_f64();
        m = m2;
        target.addr = m.addr.clone();
        target.http = Some(m.http.clone());
        target.pid = m.pid();
        let ready_files = m.field("files").parse::<f64>().unwrap_or(f64::NAN);
        let ready_applied = m.field("applied").parse::<f64>().unwrap_or(f64::NAN);
        // Caught up: applied at least what was applied before the kill.
        let deadline = started + self.restart_timeout.max(START_TIMEOUT);
        let caught_up_s = loop {
            let now = target
                .scrape()
                .map_or(0.0, |s| s.get("ringfs_master_applied_index"));
            if now >= applied {
                break started.elapsed().as_secs_f64();
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "restarted master applied {now} < {applied} (before the kill) after {:?}",
                    self.restart_timeout
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // Everything is there: the last file, by its new name, and the count.
        let mut conn = target.connect()?;
        let last = plan.renamed(plan.files - 1);
        expect_attr(&mut conn, &last).map_err(|e| format!("after the restart: {e}"))?;
        drop(conn);
        let files_after = target
            .status()
            .and_then(|s| s["files"].as_f64())
            .unwrap_or(f64::NAN);
        if files_after != files {
            println!(
                "round {round}: WARNING: the restarted master counts {files_after} files, \
                 {files} were created"
            );
        }
        let rss_restart = target
            .rss_bytes()
            .ok_or("cannot read masterd's VmRSS after the restart")?;
        m.stop()?;

        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let per_file = |b: u64| (b as f64 - rss_empty as f64) / files;
        let mut push = |case: &str, metric: &'static str, v: f64| {
            out.push(Sample {
                round,
                case: case.to_owned(),
                metric,
                value: v,
            })
        };
        let checkpoints = before.get("ringfs_master_checkpoints_total");
        push(RESTART, READY_S, ready_s);
        push(RESTART, CAUGHT_UP_S, caught_up_s);
        push(RESTART, READY_FILES, ready_files);
        push(RESTART, READY_APPLIED, ready_applied);
        push(RESTART, APPLIED_BEFORE, applied);
        push(RESTART, FILES_AFTER, files_after);
        push(RESTART, REPLAYED, replay_entries);
        push(RESTART, CHECKPOINTS, checkpoints);
        push(
            RESTART,
            LOG_MIB,
            mib(before.get("ringfs_master_oplog_bytes") as u64),
        );
        let written = checkpoints > 0.0;
        push(
            RESTART,
            CKPT_WRITE_S,
            if written {
                before.get("ringfs_master_checkpoint_last_ms") / 1000.0
            } else {
                f64::NAN
            },
        );
        push(
            RESTART,
            CKPT_MIB,
            if written {
                mib(before.get("ringfs_master_checkpoint_last_bytes") as u64)
            } else {
                f64::NAN
            },
        );
        // masterd opens the op log, then loads the checkpoint (its log line
        // says when it finished and how long the load took), then replays
        // the log after the checkpoint. Without a checkpoint there is no
        // line, and opening and replaying the log are not told apart.
        let (open_s, load_s, replay_s) = match loaded_checkpoint(&m.log) {
            Some((at, ms)) => {
                let load_s = ms / 1000.0;
                let done_s = at - started_wall;
                (done_s - load_s, load_s, caught_up_s - done_s)
            }
            None => (f64::NAN, 0.0, f64::NAN),
        };
        push(RESTART, OPEN_S, open_s);
        push(RESTART, CKPT_LOAD_S, load_s);
        push(RESTART, REPLAY_S, replay_s);
        push(RESTART, REPLAY_US, replay_s / replay_entries * 1e6);
        push(RESTART, S_PER_M_FILES, caught_up_s / files * 1e6);
        push(MEMORY, RSS_EMPTY, mib(rss_empty));
        push(MEMORY, RSS_CREATES, mib(rss_creates));
        push(MEMORY, BYTES_CREATES, per_file(rss_creates));
        push(MEMORY, RSS_RESTART, mib(rss_restart));
        push(MEMORY, BYTES_RESTART, per_file(rss_restart));
        let mine: Vec<&Sample> = out
            .iter()
            .filter(|s| s.case == RESTART || s.case == MEMORY)
            .collect();
        let line = |case: &str| {
            mine.iter()
                .filter(|s| s.case == case)
                .map(|s| format!("{} {}", s.metric, num(s.value)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("round {round}: restart: {}", line(RESTART));
        println!("round {round}: memory:  {}", line(MEMORY));
        for case in [RESTART, MEMORY] {
            let metrics: serde_json::Map<String, Value> = mine
                .iter()
                .filter(|s| s.case == case)
                .map(|s| (s.metric.to_owned(), json!(finite(s.value))))
                .collect();
            println!(
                "json {}",
                json!({"round": round, "case": case, "metrics": metrics})
            );
        }
        if ready_files.is_finite() && ready_files < files {
            println!(
                "round {round}: note: masterd said ready with files={ready_files} of {files}; \
                 it applied the rest {:.3} s later",
                caught_up_s - ready_s
            );
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------- phases

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Mkdirs,
    Creates,
    Stats,
    Renames,
}

const PHASES: [Phase; 4] = [Phase::Mkdirs, Phase::Creates, Phase::Stats, Phase::Renames];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Mkdirs => "mkdirs",
            Phase::Creates => "creates",
            Phase::Stats => "stats",
            Phase::Renames => "renames",
        }
    }

    fn mutates(self) -> bool {
        self != Phase::Stats
    }
}

/// The namespace of one round: `/<root>/d<j>` directories, file `i` in
/// directory `i % dirs` as `f<i>`, renamed to `r<i>`.
#[derive(Clone)]
struct Plan {
    root: String,
    files: u64,
    dirs: u64,
}

impl Plan {
    fn new(files: u64, dirs: u64) -> Plan {
        // A fresh name, so a run against a running master never collides.
        Plan {
            root: format!("/ringfs-bench-{:016x}", unique_id()),
            files,
            dirs,
        }
    }

    fn ops(&self, phase: Phase) -> u64 {
        match phase {
            Phase::Mkdirs => self.dirs,
            _ => self.files,
        }
    }

    fn dir(&self, j: u64) -> String {
        format!("{}/d{j}", self.root)
    }

    fn file(&self, i: u64) -> String {
        format!("{}/d{}/f{i}", self.root, i % self.dirs)
    }

    fn renamed(&self, i: u64) -> String {
        format!("{}/d{}/r{i}", self.root, i % self.dirs)
    }

    /// Request `i` of `phase`.
    fn request(&self, phase: Phase, i: u64, req: RequestId) -> Body {
        match phase {
            Phase::Mkdirs => Body::Mkdir(Box::new(Mkdir {
                req: Some(req),
                path: Some(self.dir(i)),
                parents: false,
                mode: 0o755,
                owner: Some("bench".into()),
            })),
            Phase::Creates => Body::Create(Box::new(Create {
                req: Some(req),
                path: Some(self.file(i)),
                replication: 0,
                exclusive: true,
                mode: 0o644,
                owner: Some("bench".into()),
            })),
            Phase::Stats => Body::Stat(Box::new(Stat {
                path: Some(self.file(i)),
                min_applied_index: 0,
            })),
            Phase::Renames => Body::Rename(Box::new(Rename {
                req: Some(req),
                src: Some(self.file(i)),
                dst: Some(self.renamed(i)),
                replace: false,
            })),
        }
    }
}

/// The four phases, one after the other; `after(phase)` runs right after
/// each (the RSS reading after the creates).
fn run_phases(
    target: &Target,
    args: &Args,
    round: usize,
    plan: &Plan,
    out: &mut Vec<Sample>,
    mut after: impl FnMut(Phase),
) -> Res<()> {
    let mut conn = target.connect()?;
    let root = Body::Mkdir(Box::new(Mkdir {
        req: Some(RequestId {
            client_id: unique_id() | 1,
            seq: 1,
        }),
        path: Some(plan.root.clone()),
        parents: true,
        mode: 0o755,
        owner: Some("bench".into()),
    }));
    let r = conn
        .call(&root, &[])
        .map_err(|e| format!("mkdir {}: {e}", plan.root))?;
    if let Some(e) = r.error() {
        return Err(format!(
            "mkdir {}: {:?}: {:?}",
            plan.root, e.code, e.message
        ));
    }
    drop(conn);
    let workers = args.clients * args.depth;
    let limit = Duration::from_secs(args.timeout_secs);
    for phase in PHASES {
        let p = run_phase(target, phase, plan, workers, args, limit)?;
        after(phase);
        let m = p.metrics(phase);
        println!("round {round}: {:8} {}", phase.name(), brief(&m));
        if p.errors > 0 {
            println!(
                "round {round}: {:8} {} request(s) failed, the first: {}",
                phase.name(),
                p.errors,
                p.first_error.as_deref().unwrap_or("?")
            );
        }
        let metrics: serde_json::Map<String, Value> = m
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(finite(*v))))
            .collect();
        println!(
            "json {}",
            json!({"round": round, "case": phase.name(), "metrics": metrics})
        );
        for (metric, value) in m {
            out.push(Sample {
                round,
                case: phase.name().to_owned(),
                metric,
                value,
            });
        }
    }
    Ok(())
}

struct PhaseOut {
    ops: u64,
    errors: u64,
    busy_retries: u64,
    first_error: Option<String>,
    secs: f64,
    hist: Histogram<u64>,
    before: Option<Scrape>,
    after: Option<Scrape>,
    server_cpu_s: Option<f64>,
    client_cpu_s: Option<f64>,
    /// Latencies of the requests that overlapped a checkpoint being
    /// written, and of the others; `None` when no checkpoint was watched.
    by_checkpoint: Option<CheckpointSplit>,
}

/// A phase's requests split by whether a checkpoint was being written
/// while they waited (issue 4: checkpointing must not stall mutations).
struct CheckpointSplit {
    checkpoints: usize,
    during: Histogram<u64>,
    outside: Histogram<u64>,
}

impl PhaseOut {
    fn metrics(&self, phase: Phase) -> Vec<(&'static str, f64)> {
        let us = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        let mut m = vec![
            (OPS_S, self.ops as f64 / self.secs),
            (P50, us(0.50)),
            (P99, us(0.99)),
            (P999, us(0.999)),
            (MAX, self.hist.max() as f64 / 1000.0),
        ];
        if let (Some(a), Some(b)) = (&self.before, &self.after) {
            let d = |name: &str| b.get(name) - a.get(name);
            let fsyncs = d("ringfs_master_oplog_fsyncs_total");
            let records = d("ringfs_master_oplog_records_total");
            let ops = d("ringfs_master_proposed_ops_total");
            let proposals = d("ringfs_master_proposals_total");
            if phase.mutates() {
                m.push((REC_FSYNC, records / fsyncs));
                m.push((OPS_FSYNC, ops / fsyncs));
                m.push((OPS_PROP, ops / proposals));
            }
            m.push((FSYNCS, fsyncs));
        }
        if let Some(c) = self.server_cpu_s {
            m.push((SRV_CORES, c / self.secs));
        }
        if let Some(c) = self.client_cpu_s {
            m.push((CLI_CORES, c / self.secs));
        }
        m.push((ERRORS, self.errors as f64));
        m.push((BUSY, self.busy_retries as f64));
        if let Some(split) = &self.by_checkpoint {
            let us = |ns: u64| ns as f64 / 1000.0;
            m.push((CKPTS_DURING, split.checkpoints as f64));
            m.push((CKPT_REQS, split.during.len() as f64));
            if !split.during.is_empty() {
                m.push((CKPT_P99, us(split.during.value_at_quantile(0.99))));
                m.push((CKPT_MAX, us(split.during.max())));
            }
            if !split.outside.is_empty() {
                m.push((NO_CKPT_MAX, us(split.outside.max())));
            }
        }
        m
    }
}

/// How many connections the tasks use, for the banner.
fn links_label(connections: usize, workers: usize) -> String {
    if connections == 0 {
        format!("{workers} lock-step connections")
    } else {
        format!("{connections} multiplexed connection(s)")
    }
}

/// A client task's way to the master.
enum Channel {
    /// Its own lock-step connection.
    Own(Box<Link>),
    /// A multiplexed connection shared with other tasks.
    Shared(Arc<MuxLink>),
}

impl Channel {
    async fn call(&mut self, body: &Body) -> Result<ringfs_client::link::Reply, String> {
        match self {
            Channel::Own(link) => link.call(body, &[]).await,
            Channel::Shared(link) => link.call(body, &[]).await,
        }
        .map_err(|e| e.to_string())
    }
}

/// `workers` tasks on `--client-threads` threads, each with one request in
/// flight on its own connection or a shared one (`--connections`), split
/// the phase's requests (worker w takes requests w, w + workers, ...); the
/// clock runs from the moment all are connected to the last reply.
fn run_phase(
    target: &Target,
    phase: Phase,
    plan: &Plan,
    workers: usize,
    args: &Args,
    limit: Duration,
) -> Res<PhaseOut> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let n = plan.ops(phase);
    runtime.block_on(async {
        let mut shared = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            shared.push(Arc::new(target.connect_mux().await?));
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(workers + 1));
        let plan = Arc::new(plan.clone());
        // Request start times are kept relative to this, in µs.
        let epoch = Instant::now();
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let (barrier, plan) = (barrier.clone(), plan.clone());
                let connect = target.connect_async();
                let shared = shared.get(w % args.connections.max(1)).cloned();
                tokio::spawn(async move {
                    let channel = match shared {
                        Some(link) => Ok(Channel::Shared(link)),
                        None => connect.await.map(|l| Channel::Own(Box::new(l))),
                    };
                    // Everyone reaches the barrier, connected or not.
                    barrier.wait().await;
                    let mut channel = channel?;
                    let deadline = Instant::now() + limit;
                    let first = w as u64;
                    let range = (first, workers as u64, n);
                    worker(&mut channel, phase, &plan, range, epoch, deadline).await
                })
            })
            .collect();
        // Scrapes are blocking, on this (non-worker) thread, before the start.
        let before = target.scrape();
        let srv0 = target.cpu_secs();
        let cli0 = proc_cpu_secs("/proc/self/stat");
        let watcher = phase
            .mutates()
            .then(|| target.http.clone())
            .flatten()
            .map(CheckpointWatcher::start);
        barrier.wait().await;
        let t0 = Instant::now();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.map_err(|e| format!("a client task failed: {e}")));
        }
        let secs = t0.elapsed().as_secs_f64();
        let checkpoint_windows = watcher.map(|w| w.stop(epoch));
        let server_cpu_s = target.cpu_secs().zip(srv0).map(|(b, a)| b - a);
        let client_cpu_s = proc_cpu_secs("/proc/self/stat")
            .zip(cli0)
            .map(|(b, a)| b - a);
        let after = target.scrape();
        let mut out = PhaseOut {
            ops: 0,
            errors: 0,
            busy_retries: 0,
            first_error: None,
            secs,
            hist: crate::latency_histogram(),
            before,
            after,
            server_cpu_s,
            client_cpu_s,
            by_checkpoint: None,
        };
        let mut samples = Vec::new();
        for r in results {
            let w = r??;
            out.hist.add(&w.hist).map_err(|e| e.to_string())?;
            samples.extend_from_slice(&w.samples);
            out.ops += w.ops;
            out.errors += w.errors;
            out.busy_retries += w.busy_retries;
            if out.first_error.is_none() {
                out.first_error = w.first_error;
            }
        }
        if out.ops == 0 {
            return Err(format!("{}: no request completed", phase.name()));
        }
        out.by_checkpoint =
            checkpoint_windows.map(|windows| split_by_checkpoint(&samples, &windows));
        Ok(out)
    })
}

struct WorkerOut {
    hist: Histogram<u64>,
    /// Per request: start (µs after the phase's epoch) and latency (µs).
    samples: Vec<(u32, u32)>,
    ops: u64,
    errors: u64,
    busy_retries: u64,
    first_error: Option<String>,
}

/// Runs requests `first`, `first + step`, ... below `n` (`range`).
async fn worker(
    channel: &mut Channel,
    phase: Phase,
    plan: &Plan,
    (first, step, n): (u64, u64, u64),
    epoch: Instant,
    deadline: Instant,
) -> Res<WorkerOut> {
    let client_id = unique_id() | 1;
    let mut seq = 0;
    let mut out = WorkerOut {
        hist: crate::latency_histogram(),
        samples: Vec::with_capacity(n.div_ceil(step) as usize),
        ops: 0,
        errors: 0,
        busy_retries: 0,
        first_error: None,
    };
    let mut i = first;
    while i < n {
        if Instant::now() > deadline {
            return Err(format!(
                "{}: not done within the time limit ({} of this connection's requests done)",
                phase.name(),
                out.ops
            ));
        }
        seq += 1;
        // A retry after Busy reuses the request id: Busy means not proposed.
        let body = plan.request(phase, i, RequestId { client_id, seq });
        let t = Instant::now();
        let mut retries = 0;
        let failure = loop {
            let r = tokio::time::timeout(IO_TIMEOUT, channel.call(&body))
                .await
                .map_err(|_| {
                    format!(
                        "{} request {i}: no reply within {IO_TIMEOUT:?}",
                        phase.name()
                    )
                })?
                .map_err(|e| format!("{} request {i}: {e}", phase.name()))?;
            match (&r.body, phase) {
                (Body::AttrReply(_), Phase::Mkdirs | Phase::Creates | Phase::Stats) => break None,
                (Body::Ack(_), Phase::Renames) => break None,
                (Body::ErrorReply(e), _) if e.code == ErrorCode::Busy && retries < BUSY_RETRIES => {
                    retries += 1;
                    out.busy_retries += 1;
                    let pause_ms = u64::from(e.retry_after_ms.max(1));
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                }
                (Body::ErrorReply(e), _) => break Some(format!("{:?}: {:?}", e.code, e.message)),
                (other, _) => break Some(format!("unexpected reply {other:?}")),
            }
        };
        let took = t.elapsed();
        out.hist.saturating_record(took.as_nanos() as u64);
        out.samples.push((micros_u32(t - epoch), micros_u32(took)));
        out.ops += 1;
        if let Some(why) = failure {
            out.errors += 1;
            out.first_error
                .get_or_insert_with(|| format!("{} request {i}: {why}", phase.name()));
        }
        i += step;
    }
    Ok(out)
}

fn micros_u32(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Polls masterd's `ringfs_master_checkpoint_in_progress` during a phase
/// and keeps the windows in which a checkpoint was being written.
struct CheckpointWatcher {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, Instant)>>,
}

/// Poll period; windows are widened by one period at the start, so a
/// request near a window's edge counts as during it.
const CHECKPOINT_POLL: Duration = Duration::from_millis(10);

impl CheckpointWatcher {
    fn start(http: String) -> CheckpointWatcher {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut windows = Vec::new();
            let mut open: Option<Instant> = None;
            // Bounded by the phase: the caller stops it when the phase ends.
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                let running = crate::http_get(&http, "/metrics")
                    .map(|t| parse_metrics(&t).get("ringfs_master_checkpoint_in_progress") > 0.0)
                    .unwrap_or(false);
                match (running, open) {
                    (true, None) => open = Some(now - CHECKPOINT_POLL),
                    (false, Some(from)) => {
                        windows.push((from, now));
                        open = None;
                    }
                    _ => {}
                }
                std::thread::sleep(CHECKPOINT_POLL);
            }
            if let Some(from) = open {
                windows.push((from, Instant::now()));
            }
            windows
        });
        CheckpointWatcher { stop, thread }
    }

    /// The windows, in µs after `epoch`.
    fn stop(self, epoch: Instant) -> Vec<(u32, u32)> {
        self.stop.store(true, Ordering::Relaxed);
        let windows = self.thread.join().unwrap_or_default();
        windows
            .into_iter()
            .map(|(a, b)| {
                let from = a.saturating_duration_since(epoch);
                (
                    micros_u32(from),
                    micros_u32(b.saturating_duration_since(epoch)),
                )
            })
            .collect()
    }
}

/// Splits request latencies by whether a request overlapped a window.
fn split_by_checkpoint(samples: &[(u32, u32)], windows: &[(u32, u32)]) -> CheckpointSplit {
    let mut during = crate::latency_histogram();
    let mut outside = crate::latency_histogram();
    for &(start, took) in samples {
        let end = start.saturating_add(took);
        let overlaps = windows.iter().any(|&(a, b)| start <= b && end >= a);
        let h = if overlaps { &mut during } else { &mut outside };
        // The histograms hold ns, as the phase's does.
        h.saturating_record(u64::from(took) * 1000);
    }
    CheckpointSplit {
        checkpoints: windows.len(),
        during,
        outside,
    }
}

fn expect_attr(conn: &mut Conn, path: &str) -> Res<()> {
    let body = Body::Stat(Box::new(Stat {
        path: Some(path.to_owned()),
        min_applied_index: 0,
    }));
    let r = conn
        .call(&body, &[])
        .map_err(|e| format!("stat {path}: {e}"))?;
    match r.body {
        Body::AttrReply(_) => Ok(()),
        Body::ErrorReply(e) => Err(format!("stat {path}: {:?}: {:?}", e.code, e.message)),
        other => Err(format!("stat {path}: unexpected reply {other:?}")),
    }
}

/// Distinct per call, process and time (client ids, the round's root name).
fn unique_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 40)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

// ---------------------------------------------------------------- masterd

/// A masterd child process: killed by PID when dropped.
struct Masterd {
    child: Option<Child>,
    addr: String,
    http: String,
    ready_line: String,
    log: PathBuf,
}

impl Masterd {
    fn start(own: &Own, data: &Path, log: &Path, timeout: Duration) -> Res<Masterd> {
        let stderr = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(&own.bin)
            .arg("--config")
            .arg(&own.config)
            .args([
                "--id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .arg("--data")
            .arg(data)
            .arg("--threads")
            .arg(own.threads.to_string())
            // masterd's info lines include the checkpoint load time.
            .env("RINGFS_LOG", "warn,masterd=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", own.bin.display()))?;
        let stdout = child.stdout.take().ok_or("no masterd stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so masterd never writes into a closed pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut m = Masterd {
            child: Some(child),
            addr: String::new(),
            http: String::new(),
            ready_line: String::new(),
            log: log.to_path_buf(),
        };
        match rx.recv_timeout(timeout) {
            Ok(line) if line.starts_with("masterd ready") => {
                m.ready_line = line.trim().to_owned();
                m.addr = m.field("listen");
                m.http = m.field("http");
                if m.addr.is_empty() || m.http.is_empty() {
                    return Err(format!(
                        "no listen= or http= in masterd's ready line: {line:?}"
                    ));
                }
                Ok(m)
            }
            other => {
                m.kill9();
                Err(format!(
                    "masterd did not start ({other:?}); its log {}:\n{}",
                    m.log.display(),
                    tail(&m.log)
                ))
            }
        }
    }

    fn field(&self, name: &str) -> String {
        let prefix = format!("{name}=");
        self.ready_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(prefix.as_str()))
            .unwrap_or_default()
            .to_owned()
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL our own child, by PID, and reap it.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
        match crate::wait_bounded(&mut child, STOP_TIMEOUT) {
            Ok(Some(status)) if status.success() => Ok(()),
            Ok(Some(status)) => Err(format!(
                "masterd exited with {status}; its log {}:\n{}",
                self.log.display(),
                tail(&self.log)
            )),
            Ok(None) => Err(format!(
                "masterd did not exit on SIGTERM within {STOP_TIMEOUT:?}"
            )),
            Err(e) => Err(format!("waiting for masterd: {e}")),
        }
    }
}

impl Drop for Masterd {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
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

/// When masterd logged "loaded checkpoint" (Unix seconds, from the line's
/// RFC 3339 UTC timestamp) and the load's `elapsed_ms`, if it did.
fn loaded_checkpoint(log: &Path) -> Option<(f64, f64)> {
    let text = strip_ansi(&fs::read_to_string(log).ok()?);
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("loaded checkpoint"))?;
    let at = parse_utc(line.split_whitespace().next()?)?;
    let rest = &line[line.find("elapsed_ms=")? + "elapsed_ms=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((at, digits.parse().ok()?))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` as Unix seconds.
fn parse_utc(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from 1970-01-01 to y-m-day (proleptic Gregorian; H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The text without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `VmRSS` of /proc/PID/status, in bytes.
fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&text)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(kib * 1024),
        Some(_) => None,
    }
}

// ---------------------------------------------------------------- /metrics

/// One scrape: sample name (with labels) to value.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// A sample's value; NaN when absent (so ratios show as n/a).
    fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(f64::NAN)
    }
}

fn parse_metrics(text: &str) -> Scrape {
    Scrape(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.trim().to_owned(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

// ---------------------------------------------------------------- results

const RESTART: &str = "restart";
const MEMORY: &str = "memory";

const OPS_S: &str = "ops/s";
const P50: &str = "p50 us";
const P99: &str = "p99 us";
const P999: &str = "p999 us";
const MAX: &str = "max us";
const REC_FSYNC: &str = "rec/fsync";
const OPS_FSYNC: &str = "ops/fsync";
const OPS_PROP: &str = "ops/prop";
const FSYNCS: &str = "fsyncs";
const SRV_CORES: &str = "srv cores";
const CLI_CORES: &str = "cli cores";
const ERRORS: &str = "errors";
const BUSY: &str = "busy";
const CKPTS_DURING: &str = "ckpts during";
const CKPT_REQS: &str = "reqs during ckpt";
const CKPT_P99: &str = "ckpt p99 us";
const CKPT_MAX: &str = "ckpt max us";
const NO_CKPT_MAX: &str = "no-ckpt max us";
const COLUMNS: [&str; 11] = [
    OPS_S, P50, P99, P999, MAX, REC_FSYNC, OPS_FSYNC, OPS_PROP, SRV_CORES, CLI_CORES, ERRORS,
];

const READY_S: &str = "ready s";
const CAUGHT_UP_S: &str = "caught-up s";
const READY_FILES: &str = "files at ready";
const READY_APPLIED: &str = "applied at ready";
const APPLIED_BEFORE: &str = "applied before kill";
const FILES_AFTER: &str = "files after";
const REPLAYED: &str = "log entries after ckpt";
const CHECKPOINTS: &str = "checkpoints";
const LOG_MIB: &str = "oplog MiB";
const S_PER_M_FILES: &str = "caught-up s per 1M files";
const CKPT_WRITE_S: &str = "last ckpt write s";
const CKPT_MIB: &str = "last ckpt MiB";
const OPEN_S: &str = "exec + log open s";
const CKPT_LOAD_S: &str = "ckpt load s";
const REPLAY_S: &str = "replay s";
const REPLAY_US: &str = "replay us per entry";
const RSS_EMPTY: &str = "RSS empty MiB";
const RSS_CREATES: &str = "RSS after creates MiB";
const BYTES_CREATES: &str = "B/file after creates";
const RSS_RESTART: &str = "RSS after restart MiB";
const BYTES_RESTART: &str = "B/file after restart";

/// One number of one round.
struct Sample {
    round: usize,
    case: String,
    metric: &'static str,
    value: f64,
}

impl Sample {
    fn to_json(&self) -> Value {
        json!({"round": self.round, "case": self.case, "metric": self.metric,
               "value": finite(self.value)})
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn brief(m: &[(&'static str, f64)]) -> String {
    let get = |k| {
        m.iter()
            .find(|(n, _)| *n == k)
            .map_or("-".into(), |(_, v)| num(*v))
    };
    format!(
        "{:>8} ops/s  p50 {:>7} us  p99 {:>7} us  p999 {:>7} us  max {:>7} us  rec/fsync {:>6}  ops/fsync {:>6}  \
         ops/prop {:>6}  srv {:>5} cores  cli {:>5} cores",
        get(OPS_S),
        get(P50),
        get(P99),
        get(P999),
        get(MAX),
        get(REC_FSYNC),
        get(OPS_FSYNC),
        get(OPS_PROP),
        get(SRV_CORES),
        get(CLI_CORES),
    )
}

struct Summary {
    case: String,
    metric: &'static str,
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

    /// "median [min..max]", or "n/a".
    fn cell(&self) -> String {
        match (self.median(), self.min(), self.max()) {
            (Some(m), Some(a), Some(b)) if a == b => num(m),
            (Some(m), Some(a), Some(b)) => format!("{} [{}..{}]", num(m), num(a), num(b)),
            _ => "n/a".into(),
        }
    }
}

/// Per (case, metric), in first-seen order.
fn summarize(rounds: &[Vec<Sample>]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for s in rounds.iter().flatten() {
        match out
            .iter_mut()
            .find(|x| x.case == s.case && x.metric == s.metric)
        {
            Some(x) => x.values.push(s.value),
            None => out.push(Summary {
                case: s.case.clone(),
                metric: s.metric,
                values: vec![s.value],
            }),
        }
    }
    out
}

fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "n/a".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn print_summary(summary: &[Summary], rounds: usize, files: u64) {
    let find = |case: &str, metric: &str| {
        summary
            .iter()
            .find(|s| s.case == case && s.metric == metric)
    };
    println!();
    println!("summary over {rounds} round(s): per cell the median, and min..max on the line below");
    let mut head = format!("{:9}", "phase");
    for c in COLUMNS {
        head += &format!(" {c:>13}");
    }
    println!("{head}");
    for phase in PHASES {
        let mut med = format!("{:9}", phase.name());
        let mut spread = format!("{:9}", "");
        for c in COLUMNS {
            match find(phase.name(), c) {
                Some(x) => {
                    med += &format!(" {:>13}", x.median().map_or("n/a".into(), num));
                    let sp = match (x.min(), x.max()) {
                        (Some(a), Some(b)) => format!("{}..{}", num(a), num(b)),
                        _ => "n/a".into(),
                    };
                    spread += &format!(" {sp:>13}");
                }
                None => {
                    med += &format!(" {:>13}", "");
                    spread += &format!(" {:>13}", "");
                }
            }
        }
        println!("{med}");
        if rounds > 1 {
            println!("{spread}");
        }
    }
    println!(
        "  rec/fsync: op-log records (Raft entries, each one proposal) per data fdatasync;\n  \
         ops/fsync: namespace ops per data fdatasync (= ops/prop x rec/fsync);\n  \
         ops/prop: ops per proposal; srv/cli cores: CPU seconds of masterd / of this bench\n  \
         per second of the phase"
    );
    for case in [RESTART, MEMORY] {
        let rows: Vec<&Summary> = summary.iter().filter(|s| s.case == case).collect();
        if rows.is_empty() {
            continue;
        }
        println!("{case} (median [min..max]):");
        for s in rows {
            println!("  {:28} {:>32}", s.metric, s.cell());
        }
    }
    let show = |label: &str, value: String, target: &str| {
        println!("  {label:52} {value:>32}   {target}");
    };
    println!();
    println!("against the targets (median [min..max] over rounds; reported, not asserted):");
    let cell = |case: &str, metric: &str| find(case, metric).map_or("n/a".into(), Summary::cell);
    show(
        "creates/s, committed and fsync'd, 1 master",
        cell("creates", OPS_S),
        ">= 50000",
    );
    show(
        "creates: ops per fsync",
        cell("creates", OPS_FSYNC),
        ">= 50",
    );
    show(
        "creates: op-log records (entries) per fsync",
        cell("creates", REC_FSYNC),
        "(ops/fsync is the design's records/fsync)",
    );
    if let Some(s) = find(RESTART, CAUGHT_UP_S) {
        let at_target_size = files >= 10_000_000;
        show(
            &format!("restart of {files} files, s to caught up"),
            s.cell(),
            if at_target_size { "<= 10" } else { "" },
        );
        if !at_target_size
            && let Some(per_m) = find(RESTART, S_PER_M_FILES).and_then(Summary::median)
        {
            show(
                "EXTRAPOLATED (linear) restart of 10M files, s",
                num(per_m * 10.0),
                "<= 10 (not measured)",
            );
        }
    }
    if let Some(s) = find(MEMORY, BYTES_CREATES) {
        show(
            "RSS per file after creates, bytes (files have no chunks)",
            s.cell(),
            "<= 200 per single-chunk file",
        );
    }
    if let Some(s) = find(MEMORY, BYTES_RESTART) {
        show(
            "RSS per file after restart, bytes (files have no chunks)",
            s.cell(),
            "<= 200 per single-chunk file",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metrics_and_rss() {
        let s = parse_metrics(
            "# TYPE ringfs_master_oplog_records_total counter\n\
             ringfs_master_oplog_records_total 1234\n\
             ringfs_master_requests_total{op=\"create\"} 7\n",
        );
        assert_eq!(s.get("ringfs_master_oplog_records_total"), 1234.0);
        assert_eq!(s.get("ringfs_master_requests_total{op=\"create\"}"), 7.0);
        assert!(s.get("missing").is_nan());
        let status = "Name:\tmasterd\nVmPeak:\t  100 kB\nVmRSS:\t   20480 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(20480 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn finds_the_checkpoint_load_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("masterd.log");
        fs::write(
            &log,
            "\x1b[2m2026-11-21T09:50:17.5Z\x1b[0m \x1b[32m INFO\x1b[0m masterd::checkpoint: loaded checkpoint \
             \x1b[3mlast_log_id\x1b[0m\x1b[2m=\x1b[0mSome(1-1-5) \x1b[3melapsed_ms\x1b[0m\x1b[2m=\x1b[0m1234\n",
        )
        .unwrap();
        let (at, ms) = loaded_checkpoint(&log).unwrap();
        assert_eq!(ms, 1234.0);
        // 2026-11-21T09:50:17.5Z
        assert_eq!(at, parse_utc("2026-11-21T09:50:17.5Z").unwrap());
        assert_eq!(parse_utc("1970-01-01T00:00:01.25Z"), Some(1.25));
        assert_eq!(parse_utc("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(parse_utc("2026-11-21T09:50:17.5Z"), Some(1_795_254_617.5));
        fs::write(&log, "nothing here\n").unwrap();
        assert_eq!(loaded_checkpoint(&log), None);
    }

    #[test]
    fn plan_spreads_files_over_dirs() {
        let p = Plan::new(10, 3);
        assert_eq!(p.ops(Phase::Mkdirs), 3);
        assert_eq!(p.ops(Phase::Stats), 10);
        assert_eq!(p.file(4), format!("{}/d1/f4", p.root));
        assert_eq!(p.renamed(4), format!("{}/d1/r4", p.root));
        assert_ne!(Plan::new(1, 1).root, Plan::new(1, 1).root);
    }

    #[test]
    fn summary_takes_median_and_spread() {
        let s = Summary {
            case: "creates".into(),
            metric: OPS_S,
            values: vec![3.0, 1.0, f64::NAN, 2.0, 10.0],
        };
        assert_eq!(s.median(), Some(2.5));
        assert_eq!(s.min(), Some(1.0));
        assert_eq!(s.max(), Some(10.0));
        assert_eq!(s.cell(), "2.50 [1.00..10.00]");
    }

    #[test]
    fn requests_touching_a_checkpoint_window_count_as_during_it() {
        // Windows [100, 200] and [1000, 1100] µs.
        let windows = [(100, 200), (1000, 1100)];
        let samples = [
            (0, 50),      // ends before the first window
            (0, 100),     // ends at its start: during
            (150, 10),    // inside
            (200, 5_000), // starts at the first's end, spans the second
            (300, 600),   // between them
            (1101, 1),    // after the last
        ];
        let split = split_by_checkpoint(&samples, &windows);
        assert_eq!(split.checkpoints, 2);
        assert_eq!(split.during.len(), 3);
        assert_eq!(split.outside.len(), 3);
        // Three significant digits.
        assert!((4_995..=5_005).contains(&(split.during.max() / 1000)));
        assert!((599..=601).contains(&(split.outside.max() / 1000)));
    }
}
