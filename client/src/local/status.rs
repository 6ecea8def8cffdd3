//! `status`: each daemon alive or dead by PID, and the masters' view.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ringfs_wire::config::Config;
use serde::Serialize;

use super::*;

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
