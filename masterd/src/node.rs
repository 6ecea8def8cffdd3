//! One master process: its Raft instance over the op log and the state
//! machine, the proposer, the chunkserver registry, leases, and the
//! background duties (dead chunkservers, trash purge, re-replication, GC).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::{BasicNode, ServerState};
use ringfs_wire::config::{Config, MasterRole as ConfigRole, MasterTuning};
use ringfs_wire::msg::ReadStamp;

use crate::cscmd::CsClient;
use crate::election::Elections;
use crate::lease::Leases;
use crate::metrics::Metrics;
use crate::oplog::{OpLog, OpLogReader, OpLogStats};
use crate::proposer::Proposer;
use crate::raftnet::{PeerNetwork, Withheld};
use crate::registry::Registry;
use crate::state::State;
use crate::statemachine::{Shared, StateMachine};
use crate::types::{NodeId, Raft};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("master {0} is not in the config")]
    NotInConfig(u64),
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
    /// The op log's last ids, read without going through Raft.
    pub log_reader: OpLogReader,
    pub elections: Elections,
    /// Followers the leader withholds AppendEntries from during a handover.
    pub withheld: Arc<Withheld>,
    pub metrics: Metrics,
    pub duties: Mutex<crate::duties::Duties>,
    /// Identifies heartbeat-carried commands: term in the high 24 bits.
    command_seq: AtomicU64,
    pub started: Instant,
    pub data_dir: PathBuf,
    /// Shadows an operator removed (`admin masters remove`), kept out of
    /// the learner duty until added again; in memory, on this master.
    removed_shadows: Mutex<BTreeSet<NodeId>>,
    /// The newest leadership confirmation for linearizable reads: when it
    /// started, and the read index it gave.
    read_gate: tokio::sync::Mutex<Option<(Instant, u64)>>,
}

/// Entries per AppendEntries at most (openraft's default is 300). A new
/// leader probes each follower's log by binary search, each probe carrying
/// this many entries the follower usually has already; with 300 the probes
/// made a handover under load pause 200–500 ms (note 020). A follower in
/// step gets one or two entries per request; one behind catches up this
/// many per round trip.
pub const MAX_PAYLOAD_ENTRIES: u64 = 16;

/// Longest wait for a leadership confirmation (a heartbeat round).
pub const READ_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

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
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.checkpoint_every_records),
        // Entries kept behind the newest checkpoint: at least one whole
        // checkpoint interval, so that if the newest checkpoint turns out
        // damaged, the previous one plus the log still reach the present;
        // the slack lets a lagging follower catch up from the log.
        max_in_snapshot_log_to_keep: t
            .checkpoint_every_records
            .saturating_add(t.log_kept_behind_checkpoint_records),
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))
}

impl Master {
    /// Opens the op log and the newest checkpoint under `data_dir`, starts
    /// Raft and the proposer. A voter of a fresh group initialises it with
    /// every voter of the config (each voter does, with the same members,
    /// which openraft allows); a shadow waits for the leader to add it.
    pub async fn start(
        config: Arc<Config>,
        id: NodeId,
        data_dir: &Path,
    ) -> Result<Arc<Master>, StartError> {
        let me = config
            .master(id)
            .ok_or(StartError::NotInConfig(id))?
            .clone();
        let tuning = config.file.master.clone();
        std::fs::create_dir_all(data_dir).map_err(|e| StartError::Io {
            path: data_dir.to_path_buf(),
            source: e,
        })?;
        let log = OpLog::open(&data_dir.join("oplog"), &tuning)
            .map_err(|e| StartError::OpLog(e.to_string()))?;
        let oplog_stats = log.stats();
        let log_reader = log.reader();
        let fresh = State::new(
            config.file.chunk_size_bytes,
            config.file.default_replication,
        );
        let (sm, shared) = StateMachine::open(data_dir.join("checkpoints"), fresh)
            .map_err(|e| StartError::Checkpoint(e.to_string()))?;
        let withheld = Arc::new(Withheld::default());
        let network = PeerNetwork::new(
            id,
            config.key.clone(),
            config.file.cluster_id.clone(),
            withheld.clone(),
        );
        let raft = Raft::new(id, Arc::new(raft_config(&tuning)?), network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if me.role == ConfigRole::Voter {
            let members: BTreeMap<NodeId, BasicNode> = config
                .voters()
                .map(|m| (m.id, BasicNode::new(m.peer_addr.clone())))
                .collect();
            let voters = members.len();
            // A restart, the usual case, has a log or a vote: asking first
            // keeps openraft from logging its refusal as an ERROR.
            let initialised = raft
                .is_initialized()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            if !initialised {
                match raft.initialize(members).await {
                    Ok(()) => tracing::info!(id, voters, "initialised a new master group"),
                    // A peer's vote or entries arrived since the check.
                    Err(openraft::error::RaftError::APIError(
                        openraft::error::InitializeError::NotAllowed(_),
                    )) => {}
                    Err(e) => return Err(StartError::Raft(e.to_string())),
                }
            }
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
            log_reader,
            elections: Elections::default(),
            withheld,
            metrics: Metrics::default(),
            duties: Mutex::new(crate::duties::Duties::default()),
            command_seq: AtomicU64::new(0),
            started: Instant::now(),
            data_dir: data_dir.to_path_buf(),
            config,
            removed_shadows: Mutex::new(BTreeSet::new()),
            read_gate: tokio::sync::Mutex::new(None),
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

    /// The leader, having applied an entry of its own term: its state holds
    /// everything any earlier leader committed.
    pub fn leader_ready(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
            && m.current_leader == Some(self.id)
            && m.last_applied
                .is_some_and(|l| l.leader_id.term == m.current_term)
    }

    /// True when this master is not a voter of the group (a shadow, or a
    /// master not yet added): it refuses mutations with `ReadOnlyShadow`.
    pub fn is_shadow(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        !m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id)
    }

    fn voter_count(&self) -> usize {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().count()
    }

    /// The commit index as this master knows it: its own on the leader,
    /// the leader's as last heard on a follower or shadow.
    pub fn commit_index(&self) -> u64 {
        self.oplog_stats
            .committed_index
            .load(Ordering::Relaxed)
            .max(self.shared.applied_index.load(Ordering::Acquire))
    }

    pub fn removed_shadows(&self) -> BTreeSet<NodeId> {
        self.removed_shadows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn note_removed(&self, id: NodeId) {
        self.removed_shadows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    }

    pub fn note_added(&self, id: NodeId) {
        self.removed_shadows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Makes a read on the leader linearizable (read index, Raft §6.4):
    /// confirms with a majority that this master still leads, then waits
    /// until the state has applied what was committed at that moment. A
    /// confirmation that began after the caller arrived serves it too, so
    /// concurrent reads share one heartbeat round. A deposed leader (paused,
    /// partitioned) fails here instead of answering from a stale state.
    pub async fn linearize(&self) -> Result<(), String> {
        if self.voter_count() <= 1 {
            // The only voter: no other leader can exist.
            return Ok(());
        }
        let arrived = Instant::now();
        let read_index = {
            let mut last = self.read_gate.lock().await;
            match *last {
                Some((started, index)) if started >= arrived => index,
                _ => {
                    let started = Instant::now();
                    let (read, _) =
                        tokio::time::timeout(READ_CONFIRM_TIMEOUT, self.raft.get_read_log_id())
                            .await
                            .map_err(|_| {
                                format!(
                                    "master {} could not confirm its leadership within {READ_CONFIRM_TIMEOUT:?}",
                                    self.id
                                )
                            })?
                            .map_err(|e| e.to_string())?;
                    let index = read.map_or(0, |l| l.index);
                    *last = Some((started, index));
                    index
                }
            }
        };
        if self.wait_applied(read_index, READ_CONFIRM_TIMEOUT).await {
            Ok(())
        } else {
            Err(format!(
                "master {} is applying behind index {read_index}",
                self.id
            ))
        }
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
            leader_commit_index: self.commit_index(),
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
