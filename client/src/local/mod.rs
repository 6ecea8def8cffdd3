//! `ringfs local up|down|status` (DESIGN §6, §7): a whole cluster on
//! 127.0.0.1, its config, key, data and logs in one directory.
//!
//! Layout of `DIR`:
//!
//! ```text
//! ringfs.toml     the config (masters' addresses, tuning)
//! cluster.key     the cluster key, mode 0600
//! cluster.json    what was started: every node's addresses, pid, data dir, log
//! master-1/ ...   masters' data (op log, checkpoints)
//! cs-1/ ...       chunkservers' data
//! logs/NAME.log   each daemon's stdout and stderr
//! .lock           held while an `up` or `down` runs on DIR
//! ```
//!
//! `up` on a `DIR` whose daemons all died restarts them with the same
//! config, key, ports and data; it never writes a new key or config over
//! existing ones. Chunkservers get no rack: placement on one machine gains
//! nothing from racks, and an unset rack is what a single-rack site runs.
//!
//! Modules: [`config_gen`] writes the config, [`process`] starts,
//! recognises and stops daemons by PID, [`health`] asks the masters how the
//! cluster is, [`cluster`] reads and writes `cluster.json`.

pub mod cluster;
pub mod config_gen;
pub mod health;
pub mod process;

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringfs_wire::config::{Config, MasterRole, VOTERS_MAX};
use serde::Serialize;

pub use cluster::{Cluster, Node, NodeKind};
pub use health::{ChunkserverHealth, Health, MasterHealth, probe, wait_healthy};
pub use process::StopOutcome;

pub const CONFIG_FILE: &str = "ringfs.toml";
pub const CLUSTER_JSON: &str = "cluster.json";
pub const LOG_DIR: &str = "logs";
const LOCK_FILE: &str = ".lock";
/// `up` waits this long for a leader and every chunkserver.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
/// `down` waits this long after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on chunkservers in one local cluster (each is a process with a core).
pub const CHUNKSERVERS_MAX: usize = 32;
/// Bound on shadow masters in one local cluster.
pub const SHADOWS_MAX: usize = 8;
/// masterd runs exactly one voting master until high availability lands
/// (`masterd/src/node.rs` refuses other configs). Set to true then: the
/// config generation already handles several voters and shadows.
pub const MULTI_MASTER_SUPPORTED: bool = false;
/// masterd runtime threads per master: a local cluster shares one machine.
const MASTER_THREADS: usize = 2;
/// Names of the daemon binaries.
const MASTERD: &str = "masterd";
const CHUNKD: &str = "chunkd";
/// Overrides where the daemon binaries are looked for.
pub const BIN_DIR_ENV: &str = "RINGFS_BIN_DIR";
/// `statfs` magic of tmpfs, which has no O_DIRECT (chunkd refuses it).
const TMPFS_MAGIC: u64 = 0x0102_1994;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Daemons of this directory are running (or another `up`/`down` is).
    #[error(
        "the local cluster in {dir} is already running ({running}); stop it first: `ringfs local down --dir {dir}`",
        dir = .dir.display()
    )]
    AlreadyRunning { dir: PathBuf, running: String },
    /// No local cluster in this directory.
    #[error("no local cluster in {dir}: {reason}", dir = .dir.display())]
    NotFound { dir: PathBuf, reason: String },
    /// The directory holds something `up` will not overwrite.
    #[error("{0}")]
    Refused(String),
    /// A daemon died or the cluster did not become healthy in time.
    #[error("{node}: {message}{}", tail_text(.log_file, .log_tail))]
    Unavailable {
        node: String,
        message: String,
        log_file: Option<PathBuf>,
        log_tail: String,
    },
    /// A file of ours (e.g. cluster.json) cannot be parsed.
    #[error("{path} is damaged: {message}", path = .path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    Config(#[from] ringfs_wire::config::ConfigError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{0}")]
    Failed(String),
}

fn tail_text(log_file: &Option<PathBuf>, tail: &str) -> String {
    match log_file {
        None => String::new(),
        Some(f) if tail.is_empty() => format!("\n(log: {}, empty)", f.display()),
        Some(f) => format!("\nlast lines of {}:\n{tail}", f.display()),
    }
}

impl LocalError {
    pub(crate) fn io(context: String, source: io::Error) -> LocalError {
        LocalError::Io { context, source }
    }

    /// A suggested process exit code: 2 usage, 69 unavailable (sysexits
    /// EX_UNAVAILABLE), 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            LocalError::Usage(_) => 2,
            LocalError::Unavailable { .. } => 69,
            _ => 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct UpOptions {
    pub dir: PathBuf,
    /// Voting masters (ids 1..N).
    pub masters: usize,
    pub chunkservers: usize,
    /// Shadow (read-only) masters.
    pub shadows: usize,
    /// Where `masterd` and `chunkd` are; default: `$RINGFS_BIN_DIR`, else
    /// next to the running executable.
    pub bin_dir: Option<PathBuf>,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            dir: default_dir(),
            masters: 1,
            chunkservers: 3,
            shadows: 0,
            bin_dir: None,
        }
    }
}

/// `./ringfs-local`. Not under /tmp: that may be tmpfs, which has no
/// O_DIRECT, and chunkd needs it.
pub fn default_dir() -> PathBuf {
    let name = PathBuf::from("ringfs-local");
    std::env::current_dir().map_or(name.clone(), |d| d.join(name))
}

fn check_options(o: &UpOptions) -> Result<(), LocalError> {
    let usage = |m: String| Err(LocalError::Usage(m));
    if !MULTI_MASTER_SUPPORTED && (o.masters != 1 || o.shadows != 0) {
        return usage(format!(
            "--masters {} --shadows {}: a local cluster with more than one master needs high \
             availability, which is not built yet; use --masters 1 --shadows 0",
            o.masters, o.shadows
        ));
    }
    if o.masters == 0 || o.masters > VOTERS_MAX || o.masters.is_multiple_of(2) {
        return usage(format!(
            "--masters {}: must be odd, 1 to {VOTERS_MAX} (a Raft majority)",
            o.masters
        ));
    }
    if o.shadows > SHADOWS_MAX {
        return usage(format!("--shadows {}: at most {SHADOWS_MAX}", o.shadows));
    }
    if o.chunkservers == 0 || o.chunkservers > CHUNKSERVERS_MAX {
        return usage(format!(
            "--chunkservers {}: must be 1 to {CHUNKSERVERS_MAX}",
            o.chunkservers
        ));
    }
    Ok(())
}

/// Paths of `masterd` and `chunkd`.
struct Binaries {
    masterd: PathBuf,
    chunkd: PathBuf,
}

impl Binaries {
    fn find(bin_dir: Option<&Path>) -> Result<Binaries, LocalError> {
        let (dir, whence) = if let Some(d) = bin_dir {
            (d.to_path_buf(), "the given bin dir".to_owned())
        } else if let Some(d) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
            (PathBuf::from(d), format!("${BIN_DIR_ENV}"))
        } else {
            let exe = std::env::current_exe()
                .map_err(|e| LocalError::io("cannot find the running executable".into(), e))?;
            let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
            (dir, "ringfs".to_owned())
        };
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(LocalError::Usage(format!(
                    "{name} not found next to {whence} ({}); build the workspace: cargo build --release \
                     (or set ${BIN_DIR_ENV})",
                    dir.display()
                )))
            }
        };
        Ok(Binaries {
            masterd: find(MASTERD)?,
            chunkd: find(CHUNKD)?,
        })
    }

    fn for_kind(&self, kind: NodeKind) -> &Path {
        match kind {
            NodeKind::Master => &self.masterd,
            NodeKind::Chunkserver => &self.chunkd,
        }
    }
}

/// Held while `up` or `down` works on a directory; released on drop (the
/// kernel drops a `flock` with its last descriptor, also on a crash).
struct DirLock {
    _file: File,
}

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock, LocalError> {
        let path = dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LocalError::io(format!("cannot open {}", path.display()), e))?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirLock { _file: f }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(LocalError::AlreadyRunning {
                dir: dir.to_path_buf(),
                running: "another `ringfs local up` or `down` is working on it".into(),
            }),
            Err(e) => Err(LocalError::io(
                format!("cannot lock {}", path.display()),
                e.into(),
            )),
        }
    }
}

/// The arguments a node is started with.
fn node_args(c: &Cluster, n: &Node) -> Vec<String> {
    let config = c.config.display().to_string();
    let data = n.data_dir.display().to_string();
    match n.kind {
        NodeKind::Master => vec![
            "--config".into(),
            config,
            "--id".into(),
            n.id.to_string(),
            "--data".into(),
            data,
            "--threads".into(),
            MASTER_THREADS.to_string(),
        ],
        NodeKind::Chunkserver => vec![
            "--config".into(),
            config,
            "--listen".into(),
            n.addr.clone(),
            "--data".into(),
            data,
            "--http".into(),
            n.http_addr.clone(),
            // Several chunkservers share this machine: one core each.
            "--cores".into(),
            "1".into(),
        ],
    }
}

fn is_alive(n: &Node) -> bool {
    process::is_ours(n.pid, n.kind.program_name(), &n.data_dir)
}

fn running_list(c: &Cluster) -> Vec<String> {
    c.nodes
        .iter()
        .filter(|n| is_alive(n))
        .map(|n| format!("{} pid {}", n.name, n.pid))
        .collect()
}

fn create_dir(path: &Path) -> Result<(), LocalError> {
    std::fs::create_dir_all(path)
        .map_err(|e| LocalError::io(format!("cannot create {}", path.display()), e))
}

fn check_not_tmpfs(dir: &Path) -> Result<(), LocalError> {
    if let Ok(fs) = rustix::fs::statfs(dir)
        && fs.f_type as u64 == TMPFS_MAGIC
    {
        return Err(LocalError::Usage(format!(
            "{} is on tmpfs, which has no O_DIRECT (chunkd needs it); choose a --dir on ext4 or xfs",
            dir.display()
        )));
    }
    Ok(())
}

/// Starts a local cluster in `opts.dir` and waits until it is healthy; or,
/// if `cluster.json` is there and every daemon is dead, restarts them.
pub fn up(opts: &UpOptions) -> Result<Cluster, LocalError> {
    check_options(opts)?;
    let bins = Binaries::find(opts.bin_dir.as_deref())?;
    create_dir(&opts.dir)?;
    let dir = opts
        .dir
        .canonicalize()
        .map_err(|e| LocalError::io(format!("cannot resolve {}", opts.dir.display()), e))?;
    check_not_tmpfs(&dir)?;
    let _lock = DirLock::take(&dir)?;
    let mut cluster = if dir.join(CLUSTER_JSON).exists() {
        let mut c = Cluster::load(&dir)?;
        let running = running_list(&c);
        if !running.is_empty() {
            return Err(LocalError::AlreadyRunning {
                dir,
                running: running.join(", "),
            });
        }
        c.resumed = true;
        c
    } else {
        for name in [CONFIG_FILE, config_gen::KEY_FILE] {
            if dir.join(name).exists() {
                return Err(LocalError::Refused(format!(
                    "{} holds {name} but no {CLUSTER_JSON}: not a local cluster started by \
                     `ringfs local up` (or its start was interrupted); refusing to write a new \
                     config or key over it. Choose another --dir, or remove this one if its data \
                     is not needed",
                    dir.display()
                )));
            }
        }
        create_fresh(&dir, opts)?
    };
    let config = Config::load(&cluster.config)?;
    start(&mut cluster, &config, &bins)
}

/// Writes the key, the config and an initial cluster.json (no pids yet).
fn create_fresh(dir: &Path, opts: &UpOptions) -> Result<Cluster, LocalError> {
    let masters = opts.masters + opts.shadows;
    let ports = config_gen::free_ports(config_gen::ports_needed(masters, opts.chunkservers))
        .map_err(|e| LocalError::io("cannot find free loopback ports".into(), e))?;
    let mut ports = ports.into_iter();
    let cluster_id = config_gen::fresh_cluster_id().map_err(LocalError::Failed)?;
    let file = config_gen::generate(
        &cluster_id,
        opts.masters,
        opts.shadows,
        opts.chunkservers,
        &mut ports,
    )
    .map_err(LocalError::Failed)?;

    // The key first, with create-new: if anything is there, nothing is replaced.
    let key_path = dir.join(config_gen::KEY_FILE);
    crate::admin::keygen(&key_path).map_err(LocalError::Refused)?;
    let config_path = dir.join(CONFIG_FILE);
    let write_config = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&config_path)?;
        io::Write::write_all(&mut f, config_gen::to_text(&file).as_bytes())?;
        f.sync_all()
    };
    write_config()
        .map_err(|e| LocalError::io(format!("cannot write {}", config_path.display()), e))?;

    let mut nodes = Vec::new();
    for m in &file.masters {
        nodes.push(Node {
            kind: NodeKind::Master,
            id: m.id,
            name: format!("master-{}", m.id),
            role: match m.role {
                MasterRole::Voter => "voter",
                MasterRole::Shadow => "shadow",
            }
            .into(),
            addr: m.client_addr.clone(),
            peer_addr: Some(m.peer_addr.clone()),
            http_addr: m.http_addr.clone(),
            http_port: cluster::http_port(&m.http_addr),
            pid: 0,
            data_dir: PathBuf::new(),
            log_file: PathBuf::new(),
            node_id: None,
        });
    }
    for i in 1..=opts.chunkservers {
        let (Some(data), Some(http)) = (ports.next(), ports.next()) else {
            return Err(LocalError::Failed(
                "ran out of ports for chunkservers".into(),
            ));
        };
        nodes.push(Node {
            kind: NodeKind::Chunkserver,
            id: i as u64,
            name: format!("cs-{i}"),
            role: "chunkserver".into(),
            addr: format!("127.0.0.1:{data}"),
            peer_addr: None,
            http_addr: format!("127.0.0.1:{http}"),
            http_port: http,
            pid: 0,
            data_dir: PathBuf::new(),
            log_file: PathBuf::new(),
            node_id: None,
        });
    }
    let mut cluster = Cluster {
        format_version: cluster::FORMAT_VERSION,
        cluster_id,
        dir: dir.to_path_buf(),
        config: PathBuf::new(),
        key_file: PathBuf::new(),
        nodes,
        resumed: false,
    };
    cluster.rebase(dir);
    // Saved before any daemon starts: from here on `up` resumes this cluster.
    cluster.save()?;
    Ok(cluster)
}

/// Starts every node (masters first), records the pids, waits until healthy.
/// On failure stops what it started, so a retry finds every daemon dead and
/// resumes.
fn start(cluster: &mut Cluster, config: &Config, bins: &Binaries) -> Result<Cluster, LocalError> {
    create_dir(&cluster.dir.join(LOG_DIR))?;
    let mut result = Ok(());
    for i in 0..cluster.nodes.len() {
        let n = &cluster.nodes[i];
        if let Err(e) = create_dir(&n.data_dir) {
            result = Err(e);
            break;
        }
        let args = node_args(cluster, n);
        match process::spawn(bins.for_kind(n.kind), &args, &n.log_file) {
            Ok(pid) => cluster.nodes[i].pid = pid,
            Err(e) => {
                result = Err(LocalError::io(
                    format!(
                        "cannot start {} ({})",
                        n.name,
                        bins.for_kind(n.kind).display()
                    ),
                    e,
                ));
                break;
            }
        }
    }
    // Record the pids even on failure, so `down` can find what is running.
    let saved = cluster.save();
    let result = result
        .and(saved)
        .and_then(|()| wait_started(cluster, config));
    match result {
        Ok(health) => {
            for n in &mut cluster.nodes {
                if n.kind == NodeKind::Chunkserver {
                    n.node_id = health.chunkserver(&n.addr).map(|c| c.node_id);
                }
            }
            cluster.save()?;
            Ok(cluster.clone())
        }
        Err(e) => {
            stop_nodes(cluster, STOP_TIMEOUT);
            Err(e)
        }
    }
}

/// Waits for a leader and every chunkserver of `cluster` to be live, and
/// fails at once, with its log, if a daemon exits meanwhile.
fn wait_started(cluster: &Cluster, config: &Config) -> Result<Health, LocalError> {
    let unavailable = |n: &Node, message: String| LocalError::Unavailable {
        node: n.name.clone(),
        message,
        log_file: Some(n.log_file.clone()),
        log_tail: process::log_tail(&n.log_file),
    };
    let first_master = cluster.masters().next();
    let check = |h: &Health| {
        if h.leader.is_none() {
            return Err(health::Missing {
                node: first_master.map(|n| n.name.clone()),
                what: "no leader elected".into(),
            });
        }
        for n in cluster.chunkservers() {
            match h.chunkserver(&n.addr) {
                Some(c) if c.state == "live" => {}
                other => {
                    return Err(health::Missing {
                        node: Some(n.name.clone()),
                        what: format!(
                            "not registered with the master as live ({})",
                            other.map_or("not known", |c| c.state.as_str())
                        ),
                    });
                }
            }
        }
        Ok(())
    };
    let watch = || {
        for n in &cluster.nodes {
            if let Some(status) = process::exit_status(n.pid) {
                return Err(unavailable(
                    n,
                    format!(
                        "exited during start-up ({status}); the other daemons were stopped. \
                         Fix the cause and run `ringfs local up --dir {}` again (it resumes), \
                         or remove that directory to start afresh",
                        cluster.dir.display()
                    ),
                ));
            }
        }
        Ok(())
    };
    health::wait_until(config, HEALTHY_TIMEOUT, check, watch).map_err(|e| {
        let missing = match e {
            health::WaitError::Watch(e) => return e,
            health::WaitError::Timeout(missing) => missing,
        };
        {
            let what = format!(
                "cluster not healthy after {} s: {}",
                HEALTHY_TIMEOUT.as_secs(),
                missing.what
            );
            match missing
                .node
                .and_then(|name| cluster.nodes.iter().find(|n| n.name == name))
            {
                Some(n) => unavailable(n, what),
                None => LocalError::Unavailable {
                    node: "cluster".into(),
                    message: what,
                    log_file: None,
                    log_tail: String::new(),
                },
            }
        }
    })
}

fn stop_nodes(cluster: &Cluster, timeout: Duration) -> Vec<StopOutcome> {
    let targets: Vec<process::Target<'_>> = cluster
        .nodes
        .iter()
        .map(|n| process::Target {
            pid: n.pid,
            program_name: n.kind.program_name(),
            data_dir: &n.data_dir,
        })
        .collect();
    process::stop_all(&targets, timeout)
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeStop {
    pub name: String,
    pub pid: u32,
    pub outcome: StopOutcome,
}

#[derive(Clone, Debug, Serialize)]
pub struct DownReport {
    pub dir: PathBuf,
    pub nodes: Vec<NodeStop>,
}

impl DownReport {
    /// True when nothing of this cluster is left running.
    pub fn all_stopped(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.outcome != StopOutcome::StillRunning)
    }

    pub fn describe(&self) -> String {
        let mut out = format!("local cluster in {}:\n", self.dir.display());
        for n in &self.nodes {
            let what = match n.outcome {
                StopOutcome::NotRunning => "was not running",
                StopOutcome::Terminated => "stopped",
                StopOutcome::Killed => "did not stop on SIGTERM; killed",
                StopOutcome::StillRunning => "STILL RUNNING after SIGKILL",
            };
            let _ = writeln!(out, "  {:<10} pid {:<8} {what}", n.name, n.pid);
        }
        let _ = writeln!(
            out,
            "data kept; `ringfs local up --dir {}` resumes",
            self.dir.display()
        );
        out
    }
}

/// Stops the daemons recorded in `DIR/cluster.json` (SIGTERM, then SIGKILL
/// after [`STOP_TIMEOUT`]); only PIDs that still are our daemons with our
/// data dirs are signalled. Data, config and key stay.
pub fn down(dir: &Path) -> Result<DownReport, LocalError> {
    let dir = resolve(dir)?;
    let _lock = DirLock::take(&dir)?;
    let cluster = Cluster::load(&dir)?;
    let outcomes = stop_nodes(&cluster, STOP_TIMEOUT);
    Ok(DownReport {
        nodes: cluster
            .nodes
            .iter()
            .zip(outcomes)
            .map(|(n, outcome)| NodeStop {
                name: n.name.clone(),
                pid: n.pid,
                outcome,
            })
            .collect(),
        dir,
    })
}

fn resolve(dir: &Path) -> Result<PathBuf, LocalError> {
    dir.canonicalize().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            LocalError::NotFound {
                dir: dir.to_path_buf(),
                reason: "the directory does not exist".into(),
            }
        } else {
            LocalError::io(format!("cannot resolve {}", dir.display()), e)
        }
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub kind: NodeKind,
    pub id: u64,
    pub pid: u32,
    /// The recorded pid still is this daemon.
    pub alive: bool,
    pub addr: String,
    pub http_addr: String,
    pub log_file: PathBuf,
    /// A master's role and term, as the masters report them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// A chunkserver's node id and state (`live`, `dead`...) at the master;
    /// `None` when the master does not know it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LocalStatus {
    pub dir: PathBuf,
    pub cluster_id: String,
    pub config: PathBuf,
    pub nodes: Vec<NodeStatus>,
    /// The masters' view; `None` when none answered (see `probe_error`).
    pub health: Option<Health>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_error: Option<String>,
}

impl LocalStatus {
    /// Every daemon alive, a leader, every chunkserver registered and live.
    pub fn healthy(&self) -> bool {
        self.health.as_ref().is_some_and(|h| h.leader.is_some())
            && self.nodes.iter().all(|n| {
                n.alive && (n.kind == NodeKind::Master || n.state.as_deref() == Some("live"))
            })
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        let verdict = if self.healthy() {
            "healthy"
        } else if self.nodes.iter().all(|n| !n.alive) {
            "stopped"
        } else {
            "NOT healthy"
        };
        let _ = writeln!(
            out,
            "local cluster {} in {}: {verdict}",
            self.cluster_id,
            self.dir.display()
        );
        for n in &self.nodes {
            let mut line = format!(
                "  {:<10} {:<5} pid {:<8} {}",
                n.name,
                if n.alive { "alive" } else { "dead" },
                n.pid,
                n.addr
            );
            if let Some(r) = &n.role {
                let _ = write!(line, "  {r}");
            }
            if let Some(t) = n.term {
                let _ = write!(line, " term {t}");
            }
            if n.kind == NodeKind::Chunkserver {
                match (&n.state, n.node_id) {
                    (Some(s), Some(id)) => {
                        let _ = write!(line, "  node {id} {s}");
                    }
                    _ if self.health.is_some() => line.push_str("  not registered"),
                    _ => {}
                }
            }
            if !n.alive {
                let _ = write!(line, "  (log: {})", n.log_file.display());
            }
            let _ = writeln!(out, "{line}");
        }
        if let Some(e) = &self.probe_error {
            let _ = writeln!(out, "  masters: {e}");
        }
        let _ = writeln!(out, "config: {}", self.config.display());
        out
    }
}

/// Each daemon alive or dead (by pid), and the masters' view of roles,
/// terms and registered chunkservers.
pub fn status(dir: &Path) -> Result<LocalStatus, LocalError> {
    let dir = resolve(dir)?;
    let cluster = Cluster::load(&dir)?;
    let mut nodes: Vec<NodeStatus> = cluster
        .nodes
        .iter()
        .map(|n| NodeStatus {
            name: n.name.clone(),
            kind: n.kind,
            id: n.id,
            pid: n.pid,
            alive: is_alive(n),
            addr: n.addr.clone(),
            http_addr: n.http_addr.clone(),
            log_file: n.log_file.clone(),
            role: None,
            term: None,
            node_id: None,
            state: None,
        })
        .collect();
    let (health, probe_error) = if nodes.iter().any(|n| n.alive && n.kind == NodeKind::Master) {
        match Config::load(&cluster.config) {
            Ok(config) => match probe(&config, health::PROBE_TIMEOUT) {
                Ok(h) => (Some(h), None),
                Err(e) => (None, Some(e)),
            },
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, Some("no master is running".into()))
    };
    if let Some(h) = &health {
        for n in &mut nodes {
            match n.kind {
                NodeKind::Master => {
                    if let Some(m) = h.masters.iter().find(|m| m.id == n.id) {
                        n.role = Some(m.role.clone());
                        n.term = Some(m.term);
                    }
                }
                NodeKind::Chunkserver => {
                    if let Some(c) = h.chunkserver(&n.addr) {
                        n.node_id = Some(c.node_id);
                        n.state = Some(c.state.clone());
                    }
                }
            }
        }
    }
    Ok(LocalStatus {
        dir,
        cluster_id: cluster.cluster_id,
        config: cluster.config,
        nodes,
        health,
        probe_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(masters: usize, shadows: usize, chunkservers: usize) -> UpOptions {
        UpOptions {
            dir: PathBuf::from("/nonexistent"),
            masters,
            chunkservers,
            shadows,
            bin_dir: None,
        }
    }

    #[test]
    fn multi_master_is_refused_until_high_availability() {
        for (m, s) in [(3, 0), (1, 1)] {
            match check_options(&opts(m, s, 3)) {
                Err(LocalError::Usage(msg)) => {
                    assert!(msg.contains("high availability"), "{msg}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(check_options(&opts(1, 0, 3)).is_ok());
    }

    #[test]
    fn bad_counts_are_usage_errors() {
        for o in [
            opts(1, 0, 0),
            opts(1, 0, CHUNKSERVERS_MAX + 1),
            opts(0, 0, 1),
        ] {
            assert!(
                matches!(check_options(&o), Err(LocalError::Usage(_))),
                "{o:?}"
            );
        }
    }

    #[test]
    fn missing_binaries_say_how_to_build() {
        let dir = tempfile::tempdir().unwrap();
        match Binaries::find(Some(dir.path())) {
            Err(LocalError::Usage(m)) => assert!(m.contains("cargo build --release"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("found binaries in an empty dir"),
        }
    }

    #[test]
    fn corrupt_or_missing_cluster_json_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Cluster::load(dir.path()),
            Err(LocalError::NotFound { .. })
        ));
        assert!(matches!(
            status(dir.path()),
            Err(LocalError::NotFound { .. })
        ));
        assert!(matches!(down(dir.path()), Err(LocalError::NotFound { .. })));
        std::fs::write(dir.path().join(CLUSTER_JSON), "{ not json").unwrap();
        match status(dir.path()) {
            Err(e @ LocalError::Corrupt { .. }) => {
                assert!(e.to_string().contains(CLUSTER_JSON), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn up_refuses_a_config_without_cluster_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "precious").unwrap();
        let bins = tempfile::tempdir().unwrap();
        for b in [MASTERD, CHUNKD] {
            std::fs::write(bins.path().join(b), "").unwrap();
        }
        let o = UpOptions {
            dir: dir.path().to_path_buf(),
            bin_dir: Some(bins.path().to_path_buf()),
            ..UpOptions::default()
        };
        assert!(matches!(up(&o), Err(LocalError::Refused(_))));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap(),
            "precious"
        );
        assert!(!dir.path().join(config_gen::KEY_FILE).exists());
    }

    #[test]
    fn cluster_json_round_trips_and_rebases() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cluster {
            format_version: cluster::FORMAT_VERSION,
            cluster_id: "local-x".into(),
            dir: PathBuf::from("/elsewhere"),
            config: PathBuf::new(),
            key_file: PathBuf::new(),
            nodes: vec![Node {
                kind: NodeKind::Master,
                id: 1,
                name: "master-1".into(),
                role: "voter".into(),
                addr: "127.0.0.1:1".into(),
                peer_addr: Some("127.0.0.1:2".into()),
                http_addr: "127.0.0.1:3".into(),
                http_port: 3,
                pid: 0,
                data_dir: PathBuf::from("/elsewhere/master-1"),
                log_file: PathBuf::new(),
                node_id: None,
            }],
            resumed: false,
        };
        c.dir = dir.path().to_path_buf();
        c.save().unwrap();
        let back = Cluster::load(dir.path()).unwrap();
        assert_eq!(back.nodes[0].data_dir, dir.path().join("master-1"));
        assert_eq!(
            back.nodes[0].log_file,
            dir.path().join("logs").join("master-1.log")
        );
        assert_eq!(back.config, dir.path().join(CONFIG_FILE));
        c.rebase(dir.path());
        assert_eq!(back, c);
        // A node name that would escape the directory is refused.
        c.nodes[0].name = "../x".into();
        c.save().unwrap();
        assert!(matches!(
            Cluster::load(dir.path()),
            Err(LocalError::Corrupt { .. })
        ));
    }
}
