//! One master process: its Raft instance over the op log and the state
//! machine, the proposer, the chunkserver registry, leases, and the
//! background duties (dead chunkservers, trash purge, re-replication, GC).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::{BasicNode, ServerState};
use ringfs_wire::config::{Config, MasterTuning};
use ringfs_wire::msg::ReadStamp;

use crate::cscmd::CsClient;
use crate::lease::Leases;
use crate::metrics::Metrics;
use crate::oplog::{OpLog, OpLogStats};
use crate::proposer::Proposer;
use crate::raftnet::SingleVoter;
use crate::registry::Registry;
use crate::state::State;
use crate::statemachine::{Shared, StateMachine};
use crate::types::{NodeId, Raft};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("master {0} is not in the config")]
    NotInConfig(u64),
    #[error("{0}")]
    Unsupported(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("op log: {0}")]
    OpLog(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("raft: {0}")]
    Raft(String),
}

pub struct Master {
    pub id: NodeId,
    pub config: Arc<Config>,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub proposer: Proposer,
    pub registry: Mutex<Registry>,
    pub leases: Leases,
    pub cs: Arc<CsClient>,
    pub oplog_stats: Arc<OpLogStats>,
    pub metrics: Metrics,
    pub duties: Mutex<crate::duties::Duties>,
    /// Identifies heartbeat-carried commands: term in the high 24 bits.
    command_seq: AtomicU64,
    pub started: Instant,
    pub data_dir: PathBuf,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn raft_config(t: &MasterTuning) -> Result<openraft::Config, StartError> {
    let config = openraft::Config {
        cluster_name: "ringfs".into(),
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        heartbeat_interval: t.raft_heartbeat_interval_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.checkpoint_every_records),
        // Entries kept behind the newest checkpoint: at least one whole
        // checkpoint interval, so that if the newest checkpoint turns out
        // damaged, the previous one plus the log still reach the present;
        // the slack lets a lagging follower catch up from the log.
        max_in_snapshot_log_to_keep: t.checkpoint_every_records.saturating_add(10_000),
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))
}

impl Master {
    /// Opens the op log and the newest checkpoint under `data_dir`, starts
    /// Raft (initialising a fresh one-voter cluster) and the proposer.
    pub async fn start(
        config: Arc<Config>,
        id: NodeId,
        data_dir: &Path,
    ) -> Result<Arc<Master>, StartError> {
        let me = config
            .master(id)
            .ok_or(StartError::NotInConfig(id))?
            .clone();
        let voters: Vec<_> = config.voters().collect();
        if voters.len() != 1 || config.shadows().next().is_some() {
            return Err(StartError::Unsupported(format!(
                "the config lists {} voters and {} shadows; this masterd runs exactly one voting master \
                 (replicated masters come with the high-availability work)",
                voters.len(),
                config.shadows().count()
            )));
        }
        let tuning = config.file.master.clone();
        std::fs::create_dir_all(data_dir).map_err(|e| StartError::Io {
            path: data_dir.to_path_buf(),
            source: e,
        })?;
        let log = OpLog::open(&data_dir.join("oplog"), &tuning)
            .map_err(|e| StartError::OpLog(e.to_string()))?;
        let oplog_stats = log.stats();
        let fresh = State::new(
            config.file.chunk_size_bytes,
            config.file.default_replication,
        );
        let (sm, shared) = StateMachine::open(data_dir.join("checkpoints"), fresh)
            .map_err(|e| StartError::Checkpoint(e.to_string()))?;
        let raft = Raft::new(id, Arc::new(raft_config(&tuning)?), SingleVoter, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let members: BTreeMap<NodeId, BasicNode> =
            BTreeMap::from([(id, BasicNode::new(me.peer_addr.clone()))]);
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(id, "initialised a new one-voter cluster"),
            // Already initialised: a restart, the usual case.
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => {}
            Err(e) => return Err(StartError::Raft(e.to_string())),
        }
        let proposer = Proposer::start(raft.clone());
        let cs = CsClient::new(config.key.clone(), config.file.cluster_id.clone(), id);
        Ok(Arc::new(Master {
            id,
            raft,
            shared,
            proposer,
            registry: Mutex::new(Registry::default()),
            leases: Leases::new(Duration::from_millis(tuning.lease_duration_ms)),
            cs,
            oplog_stats,
            metrics: Metrics::default(),
            duties: Mutex::new(crate::duties::Duties::default()),
            command_seq: AtomicU64::new(0),
            started: Instant::now(),
            data_dir: data_dir.to_path_buf(),
            config,
        }))
    }

    pub fn tuning(&self) -> &MasterTuning {
        &self.config.file.master
    }

    pub fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current term: the epoch every command and lease carries.
    pub fn epoch(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The leader's id and client address, when known.
    pub fn leader_hint(&self) -> (u64, String) {
        let leader = self.raft.metrics().borrow().current_leader;
        let addr = leader
            .and_then(|l| self.config.master(l))
            .map(|m| m.client_addr.clone())
            .unwrap_or_default();
        (leader.unwrap_or(0), addr)
    }

    pub fn stamp(&self) -> ReadStamp {
        let m = self.raft.metrics();
        let m = m.borrow();
        ReadStamp {
            applied_index: self.shared.applied_index.load(Ordering::Acquire),
            leader_commit_index: m.last_applied.map_or(0, |l| l.index),
            term: m.current_term,
            answered_by: self.id,
        }
    }

    pub fn next_command_id(&self) -> u64 {
        let seq = self.command_seq.fetch_add(1, Ordering::Relaxed) & ((1 << 40) - 1);
        (self.epoch() << 40) | seq
    }

    /// Waits (bounded) until the state has applied `index`.
    pub async fn wait_applied(&self, index: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.shared.applied_index.load(Ordering::Acquire) >= index {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
