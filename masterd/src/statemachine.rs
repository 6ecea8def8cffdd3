//! The Raft state machine: applies committed proposals to [`State`] and
//! turns checkpoints into Raft snapshots.
//!
//! One writer (openraft's state-machine worker) and many readers (client
//! requests) share the state through a `RwLock`; `apply` takes the write
//! lock once per batch of entries, so readers wait at most one batch.
//! A snapshot is a checkpoint file: the builder forks at the current applied
//! index (docs/design/011-checkpoint-format.md), so mutations keep flowing
//! while the child writes it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{BasicNode, EntryPayload, ErrorSubject, ErrorVerb, StoredMembership};

use crate::checkpoint::{self, CheckpointMeta};
use crate::state::State;
use crate::types::{Applied, Entry, LogId, NodeId, StorageError, TypeConfig};

/// Where a checkpoint sent by the leader is received before it is checked.
const INCOMING_NAME: &str = "incoming.ckpt.part";

/// What readers and the rest of the master see of the state machine.
pub struct Shared {
    pub state: RwLock<State>,
    /// Index of the last applied entry (0 = none): read stamps.
    pub applied_index: AtomicU64,
    /// Checkpoints written / their last duration and size, for /metrics.
    pub checkpoints_written: AtomicU64,
    pub checkpoint_last_ms: AtomicU64,
    pub checkpoint_last_bytes: AtomicU64,
    pub checkpoint_last_index: AtomicU64,
    /// Checkpoints being written now (forked, not yet published or
    /// failed): operators and the meta bench see when one runs.
    pub checkpoints_in_progress: AtomicU64,
    /// Checkpoints installed from the leader (a follower too far behind
    /// for the log).
    pub checkpoints_received: AtomicU64,
    /// Ops applied since start-up, and that count when the newest
    /// checkpoint's state was captured (or received): the difference is
    /// what a restart would replay after that checkpoint.
    pub ops_applied: AtomicU64,
    pub ops_at_checkpoint: AtomicU64,
    /// The newest published checkpoint: the snapshot openraft may ask for.
    current: Mutex<Option<(PathBuf, CheckpointMeta)>>,
}

impl Shared {
    pub fn new(state: State) -> Arc<Shared> {
        Arc::new(Shared {
            state: RwLock::new(state),
            applied_index: AtomicU64::new(0),
            checkpoints_written: AtomicU64::new(0),
            checkpoint_last_ms: AtomicU64::new(0),
            checkpoint_last_bytes: AtomicU64::new(0),
            checkpoint_last_index: AtomicU64::new(0),
            checkpoints_in_progress: AtomicU64::new(0),
            checkpoints_received: AtomicU64::new(0),
            ops_applied: AtomicU64::new(0),
            ops_at_checkpoint: AtomicU64::new(0),
            current: Mutex::new(None),
        })
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock already brought the master down
        // (panic = abort is not set, but apply never panics on data);
        // the state itself stays consistent per op, so keep serving.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Ops applied since the newest checkpoint's state.
    pub fn ops_since_checkpoint(&self) -> u64 {
        self.ops_applied
            .load(Ordering::Relaxed)
            .saturating_sub(self.ops_at_checkpoint.load(Ordering::Relaxed))
    }

    fn set_current(&self, path: PathBuf, meta: CheckpointMeta) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((path, meta));
    }

    fn current(&self) -> Option<(PathBuf, CheckpointMeta)> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub struct StateMachine {
    shared: Arc<Shared>,
    dir: PathBuf,
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

impl StateMachine {
    /// Starts from the newest good checkpoint in `dir` (or an empty state).
    pub fn open(
        dir: PathBuf,
        fresh: State,
    ) -> Result<(StateMachine, Arc<Shared>), checkpoint::CheckpointError> {
        std::fs::create_dir_all(&dir).map_err(|source| checkpoint::CheckpointError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let _ = std::fs::remove_file(dir.join(INCOMING_NAME));
        let (state, meta, path) = match checkpoint::load_newest(&dir)? {
            Some(loaded) => (loaded.state, loaded.meta, Some(loaded.path)),
            None => (fresh, CheckpointMeta::default(), None),
        };
        let shared = Shared::new(state);
        if let Some(path) = path {
            shared.set_current(path, meta.clone());
        }
        let index = meta.last_log_id.map_or(0, |l| l.index);
        shared.applied_index.store(index, Ordering::Release);
        shared.checkpoint_last_index.store(index, Ordering::Relaxed);
        let sm = StateMachine {
            shared: shared.clone(),
            dir,
            last_applied: meta.last_log_id,
            membership: meta.last_membership,
        };
        Ok((sm, shared))
    }

    fn meta(&self) -> CheckpointMeta {
        CheckpointMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
        }
    }
}

pub struct Builder {
    shared: Arc<Shared>,
    meta: CheckpointMeta,
    pending: Option<Result<checkpoint::PendingCheckpoint, checkpoint::CheckpointError>>,
    /// Counts this checkpoint in progress until it is published or fails
    /// (or the builder is dropped unused).
    _in_progress: InProgress,
}

struct InProgress(Arc<Shared>);

impl InProgress {
    fn start(shared: &Arc<Shared>) -> InProgress {
        shared
            .checkpoints_in_progress
            .fetch_add(1, Ordering::Relaxed);
        InProgress(shared.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let before = self
            .0
            .checkpoints_in_progress
            .fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "checkpoint in-progress count underflow");
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let subject = || ErrorSubject::Snapshot(None);
        let pending = self.pending.take().ok_or_else(|| {
            io_error(
                subject(),
                ErrorVerb::Write,
                std::io::Error::other("checkpoint builder used twice"),
            )
        })?;
        let pending = pending.map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        let info = tokio::task::spawn_blocking(move || pending.wait())
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        let shared = &self.shared;
        shared.checkpoints_written.fetch_add(1, Ordering::Relaxed);
        shared
            .checkpoint_last_ms
            .store(info.duration.as_millis() as u64, Ordering::Relaxed);
        shared
            .checkpoint_last_bytes
            .store(info.bytes, Ordering::Relaxed);
        shared.checkpoint_last_index.store(
            self.meta.last_log_id.map_or(0, |l| l.index),
            Ordering::Relaxed,
        );
        tracing::info!(
            path = %info.path.display(),
            bytes = info.bytes,
            ms = info.duration.as_millis() as u64,
            fork_us = info.fork_duration.as_micros() as u64,
            "checkpoint written"
        );
        shared.set_current(info.path.clone(), self.meta.clone());
        let file = tokio::fs::File::open(&info.path)
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta: snapshot_meta(&self.meta),
            snapshot: Box::new(file),
        })
    }
}

fn snapshot_meta(meta: &CheckpointMeta) -> SnapshotMeta<NodeId, BasicNode> {
    let id = meta.last_log_id.map_or_else(
        || "empty".to_string(),
        |l| format!("{}-{}", l.leader_id.term, l.index),
    );
    SnapshotMeta {
        last_log_id: meta.last_log_id,
        last_membership: meta.last_membership.clone(),
        snapshot_id: id,
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let mut state = self.shared.write();
        for entry in entries {
            if let Some(last) = self.last_applied {
                assert!(
                    entry.log_id.index > last.index,
                    "entries applied out of order"
                );
            }
            let index = entry.log_id.index;
            let outcomes = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(proposal) => {
                    self.shared
                        .ops_applied
                        .fetch_add(proposal.ops.len() as u64, Ordering::Relaxed);
                    proposal.ops.iter().map(|op| state.apply(op)).collect()
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
            };
            self.last_applied = Some(entry.log_id);
            self.shared.applied_index.store(index, Ordering::Release);
            replies.push(Applied { outcomes, index });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        // On the state-machine worker: nothing applies while we fork, so the
        // child's copy is exactly the state at `last_applied`.
        let meta = self.meta();
        let in_progress = InProgress::start(&self.shared);
        let pending = {
            let state = self.shared.read();
            checkpoint::Checkpointer::start(&self.dir, &state, &meta)
        };
        // The fork holds the state as of now (a failed one is retried by
        // the next trigger, which this delays by one interval).
        self.shared.ops_at_checkpoint.store(
            self.shared.ops_applied.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        Builder {
            shared: self.shared.clone(),
            meta,
            pending: Some(pending),
            _in_progress: in_progress,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.dir.join(INCOMING_NAME);
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        snapshot
            .sync_all()
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        drop(snapshot);
        let incoming = self.dir.join(INCOMING_NAME);
        let (state, loaded_meta) = tokio::task::spawn_blocking(move || checkpoint::load(&incoming))
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        let loaded = checkpoint::Loaded {
            state,
            meta: loaded_meta,
            path: PathBuf::new(),
            refused: Vec::new(),
            duration: Default::default(),
        };
        if loaded.meta.last_log_id != meta.last_log_id {
            return Err(io_error(
                subject(),
                ErrorVerb::Read,
                std::io::Error::other(format!(
                    "received checkpoint is at {:?}, the leader announced {:?}",
                    loaded.meta.last_log_id, meta.last_log_id
                )),
            ));
        }
        // Published under its final name only once it decoded: a bad
        // transfer never replaces a good checkpoint.
        let final_path = self
            .dir
            .join(checkpoint::final_name(loaded.meta.last_log_id));
        std::fs::rename(self.dir.join(INCOMING_NAME), &final_path)
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all())
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        self.shared.set_current(final_path, loaded.meta.clone());
        *self.shared.write() = loaded.state;
        self.last_applied = loaded.meta.last_log_id;
        self.membership = loaded.meta.last_membership;
        self.shared
            .applied_index
            .store(self.last_applied.map_or(0, |l| l.index), Ordering::Release);
        self.shared
            .checkpoints_received
            .fetch_add(1, Ordering::Relaxed);
        self.shared.ops_at_checkpoint.store(
            self.shared.ops_applied.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        tracing::info!(
            last_log_id = ?self.last_applied,
            "installed a checkpoint from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let subject = || ErrorSubject::Snapshot(None);
        let Some((path, meta)) = self.shared.current() else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: snapshot_meta(&meta),
            snapshot: Box::new(file),
        }))
    }
}

/// How often [`checkpoint_by_ops`] looks at the count.
pub const CHECKPOINT_BY_OPS_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Asks Raft for a checkpoint whenever `every_ops` ops were applied since
/// the newest one, and purges the log behind the previous checkpoint.
///
/// openraft's own policy counts log entries, and one entry carries a whole
/// batch (50 ops at 256 clients in `ringfs-bench meta`): at 10 M files that
/// policy never fired, and a restart opened 2 GiB of log and replayed 20 M
/// ops, for 144 s. Replay time follows ops, so this bounds it. The log is
/// then purged up to the previous checkpoint, less `kept_behind_records`
/// for lagging followers: openraft keeps a fixed `checkpoint_every_records`
/// entries instead, which at 50 ops each is the whole log. The previous
/// checkpoint plus the log still reach the present if the newest one turns
/// out damaged. Runs on every master: each checkpoints its own state.
pub async fn checkpoint_by_ops(
    raft: crate::types::Raft,
    shared: Arc<Shared>,
    every_ops: u64,
    kept_behind_records: u64,
) {
    assert!(every_ops > 0, "validated by the config");
    let mut tick = tokio::time::interval(CHECKPOINT_BY_OPS_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut newest = shared.checkpoint_last_index.load(Ordering::Relaxed);
    loop {
        tick.tick().await;
        let now_newest = shared.checkpoint_last_index.load(Ordering::Relaxed);
        if now_newest > newest {
            let upto = newest.saturating_sub(kept_behind_records);
            newest = now_newest;
            // openraft purges only what a checkpoint covers, later and in
            // order with its replication.
            if upto > 0
                && let Err(e) = raft.trigger().purge_log(upto).await
            {
                tracing::warn!("could not purge the op log: {e}");
                return;
            }
        }
        if shared.ops_since_checkpoint() < every_ops {
            continue;
        }
        // openraft ignores it while a checkpoint is being built; the count
        // restarts when the next one forks.
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::warn!("could not ask for a checkpoint: {e}");
            return;
        }
    }
}
