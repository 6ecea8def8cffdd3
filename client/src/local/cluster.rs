//! `cluster.json`: what `ringfs local up` started, where, and how to find
//! it again. Written to a temp file and renamed, so a crash leaves the old
//! or the new file, never half of one.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CLUSTER_JSON, CONFIG_FILE, LOG_DIR, LocalError};

/// Bumped when a field changes meaning; older files are refused by name.
pub const FORMAT_VERSION: u32 = 1;
/// Bound on the file we read back: a local cluster is a few dozen nodes.
const CLUSTER_JSON_MAX_BYTES: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Master,
    Chunkserver,
}

impl NodeKind {
    /// The daemon's program name.
    pub fn program_name(self) -> &'static str {
        match self {
            NodeKind::Master => "masterd",
            NodeKind::Chunkserver => "chunkd",
        }
    }
}

/// One daemon of the local cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub kind: NodeKind,
    /// A master's id in the config; a chunkserver's number in this local
    /// cluster (1..M, its data dir is `cs-N`), not its master-assigned id.
    pub id: u64,
    /// `master-N` or `cs-N`: its data dir and log file are named after it.
    pub name: String,
    /// `voter` or `shadow` for a master (from the config), `chunkserver`.
    pub role: String,
    /// A master's client address, a chunkserver's data address.
    pub addr: String,
    /// A master's Raft address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    /// `GET /metrics`, `GET /status`.
    pub http_addr: String,
    pub http_port: u16,
    /// 0 before it was ever started.
    pub pid: u32,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    /// A chunkserver's node id, assigned by the master when it registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
}

/// The local cluster, as written to `DIR/cluster.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub format_version: u32,
    pub cluster_id: String,
    pub dir: PathBuf,
    /// `DIR/ringfs.toml`: point `RINGFS_CONFIG` here.
    pub config: PathBuf,
    pub key_file: PathBuf,
    pub nodes: Vec<Node>,
    /// True when the last `up` restarted an existing cluster rather than
    /// creating one.
    #[serde(default)]
    pub resumed: bool,
    /// Remarks for the user about this `up` (e.g. options a resume ignored);
    /// returned by `up`, never saved in cluster.json.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

pub fn http_port(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0)
}

impl Cluster {
    pub fn masters(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.kind == NodeKind::Master)
    }

    pub fn chunkservers(&self) -> impl Iterator<Item = &Node> {
        self.nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Chunkserver)
    }

    /// Reads `DIR/cluster.json`. Paths are re-derived from `dir` (the layout
    /// is fixed), so a moved directory still works.
    pub fn load(dir: &Path) -> Result<Cluster, LocalError> {
        let path = dir.join(CLUSTER_JSON);
        let corrupt = |message: String| LocalError::Corrupt {
            path: path.clone(),
            message,
        };
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LocalError::NotFound {
                    dir: dir.to_path_buf(),
                    reason: format!("{} does not exist", path.display()),
                }
            } else {
                LocalError::io(format!("cannot read {}", path.display()), e)
            }
        })?;
        let mut text = String::new();
        file.take(CLUSTER_JSON_MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| corrupt(e.to_string()))?;
        if text.len() as u64 > CLUSTER_JSON_MAX_BYTES {
            return Err(corrupt(format!(
                "larger than {CLUSTER_JSON_MAX_BYTES} bytes"
            )));
        }
        let mut c: Cluster = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if c.format_version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format_version {} is not {FORMAT_VERSION} (written by another ringfs version)",
                c.format_version
            )));
        }
        let mut names = std::collections::HashSet::new();
        for n in &c.nodes {
            // The name becomes a path: refuse anything but our own `master-N`/`cs-N`.
            let ok = n
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !n.name.is_empty();
            if !ok || !names.insert(n.name.clone()) {
                return Err(corrupt(format!("bad or duplicate node name {:?}", n.name)));
            }
        }
        if c.masters().next().is_none() {
            return Err(corrupt("lists no master".into()));
        }
        c.rebase(dir);
        Ok(c)
    }

    /// Points every path at `dir`.
    pub fn rebase(&mut self, dir: &Path) {
        self.dir = dir.to_path_buf();
        self.config = dir.join(CONFIG_FILE);
        self.key_file = dir.join(super::config_gen::KEY_FILE);
        for n in &mut self.nodes {
            n.data_dir = dir.join(&n.name);
            n.log_file = dir.join(LOG_DIR).join(format!("{}.log", n.name));
        }
    }

    /// Writes `DIR/cluster.json` atomically (temp file, fsync, rename, fsync dir).
    pub fn save(&self) -> Result<(), LocalError> {
        let path = self.dir.join(CLUSTER_JSON);
        let tmp = self.dir.join(format!("{CLUSTER_JSON}.tmp"));
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| LocalError::Failed(format!("cannot encode cluster.json: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| LocalError::io(format!("cannot write {}", path.display()), e))
    }

    /// Human text for `ringfs local up`: the nodes, the config, how to use it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let how = if self.resumed { "resumed" } else { "up" };
        let _ = writeln!(
            out,
            "local cluster {} {how} in {}",
            self.cluster_id,
            self.dir.display()
        );
        for n in &self.nodes {
            let mut line = format!("  {:<10} {:<11} {}", n.name, n.role, n.addr);
            if let Some(p) = &n.peer_addr {
                let _ = write!(line, "  peer {p}");
            }
            let _ = write!(line, "  http {}  pid {}", n.http_addr, n.pid);
            if let Some(id) = n.node_id {
                let _ = write!(line, "  node {id}");
            }
            let _ = writeln!(out, "{line}");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let d = self.dir.display();
        let _ = writeln!(out, "logs in {d}/{LOG_DIR}/, state in {d}/{CLUSTER_JSON}");
        let _ = writeln!(out);
        let _ = writeln!(out, "use it:");
        let _ = writeln!(out, "  export RINGFS_CONFIG={}", self.config.display());
        let _ = writeln!(out, "  ringfs put LOCAL_FILE /remote/path");
        let _ = writeln!(out, "  ringfs ls /");
        let _ = writeln!(out, "  ringfs local status --dir {d}");
        let _ = writeln!(
            out,
            "  ringfs local down --dir {d}    # `up` again resumes with the same data"
        );
        out
    }
}
