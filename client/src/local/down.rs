//! `down`: stop the recorded daemons by PID (SIGTERM, then SIGKILL).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::*;

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
