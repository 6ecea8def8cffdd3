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
//! Modules: `up`, `down` and `status` are the three commands;
//! [`config_gen`] writes the config, [`process`] starts, recognises and
//! stops daemons by PID, [`health`] asks the masters how the cluster is,
//! [`cluster`] reads and writes `cluster.json`.

pub mod cluster;
pub mod config_gen;
mod down;
pub mod health;
pub mod process;
mod status;
mod up;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cluster::{Cluster, Node, NodeKind};
pub use down::{DownReport, NodeStop, down};
pub use health::{ChunkserverHealth, Health, MasterHealth, probe, wait_healthy};
pub use process::StopOutcome;
pub use status::{LocalStatus, NodeStatus, status};
pub use up::up;

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
/// Overrides where the daemon binaries are looked for.
pub const BIN_DIR_ENV: &str = "RINGFS_BIN_DIR";

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

fn is_alive(n: &Node) -> bool {
    process::is_ours(n.pid, n.kind.program_name(), &n.data_dir)
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

#[cfg(test)]
mod tests {
    use super::*;

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
            notes: Vec::new(),
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
