//! Application-level group commit: mutations from every connection queue
//! here, and whatever has queued while earlier proposals were committing
//! goes into the log as one entry ([`Proposal`]). Together with the log's own
//! fsync batching (`crate::oplog`) that is what makes many records share one
//! `fdatasync` (docs/design/009-masterd-core.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::types::{NodeId, Op, Outcome, PROPOSAL_OPS_MAX, Proposal, Raft};

/// Mutations waiting for a proposal; beyond this callers get `Busy`.
pub const QUEUED_OPS_MAX: usize = 65_536;
/// Proposals handed to Raft and not yet committed. One: openraft 0.9 made
/// one log append (and so one fsync) per proposal in `ringfs-bench meta`
/// (1.0 records per fsync with 16 proposals in flight), so the batching
/// has to happen here: while one proposal commits, everything that arrives
/// queues for the next.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 1;
/// Longest wait for a proposal to commit. Past it, its callers hear
/// `Unavailable` (the entry may still commit later; a retry with the same
/// request id is applied once) and the next proposal goes: a leader cut off
/// from its majority refuses within a bounded time instead of hanging.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Another master leads (if known).
    NotLeader { leader: Option<NodeId> },
    /// The queue is full; retry shortly.
    Busy,
    /// Raft stopped (fatal storage error or shutdown).
    Stopped(String),
    /// No majority acknowledged the proposal in time, or the leadership is
    /// being handed over: retry shortly.
    Unavailable(String),
}

/// A committed and applied op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub outcome: Outcome,
    /// Log index of the entry that carried it.
    pub index: u64,
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<Committed, ProposeError>>,
}

#[derive(Debug, Default)]
pub struct ProposerStats {
    pub proposals: AtomicU64,
    pub ops: AtomicU64,
    pub largest_proposal_ops: AtomicU64,
    /// Proposals refused because a newer term superseded this leader's.
    pub fenced: AtomicU64,
}

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    pub stats: Arc<ProposerStats>,
    /// Set during a leadership handover: new proposals are refused.
    held: Arc<AtomicBool>,
    /// Slots of proposals handed to Raft and not yet answered.
    in_flight: Arc<Semaphore>,
}

impl Proposer {
    pub fn start(raft: Raft) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUED_OPS_MAX);
        let stats = Arc::new(ProposerStats::default());
        let held = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
        tokio::spawn(run(
            raft,
            rx,
            stats.clone(),
            held.clone(),
            in_flight.clone(),
        ));
        Proposer {
            tx,
            stats,
            held,
            in_flight,
        }
    }

    /// Refuses (`true`) or takes again (`false`) new proposals. Holding
    /// also refuses what is queued and not yet handed to Raft.
    pub fn hold(&self, held: bool) {
        self.held.store(held, Ordering::Release);
    }

    /// Holds, then waits (up to `wait`) until no proposal handed to Raft
    /// is unanswered: afterwards the log grows only by entries proposed
    /// elsewhere (membership changes). True once drained.
    pub async fn hold_and_drain(&self, wait: Duration) -> bool {
        self.hold(true);
        let all = u32::try_from(PROPOSALS_IN_FLIGHT_MAX).expect("a small bound");
        matches!(
            tokio::time::timeout(wait, self.in_flight.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    /// Commits `op` through the log; returns its outcome once applied.
    pub async fn propose(&self, op: Op) -> Result<Committed, ProposeError> {
        if self.held.load(Ordering::Acquire) {
            return Err(ProposeError::Unavailable(
                "the leadership is being handed over".into(),
            ));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Pending { op, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ProposeError::Busy,
                mpsc::error::TrySendError::Closed(_) => {
                    ProposeError::Stopped("proposer stopped".into())
                }
            })?;
        rx.await
            .map_err(|_| ProposeError::Stopped("proposal dropped".into()))?
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    stats: Arc<ProposerStats>,
    held: Arc<AtomicBool>,
    in_flight: Arc<Semaphore>,
) {
    while let Some(first) = rx.recv().await {
        // Wait for a slot before collecting: ops that arrive meanwhile join
        // this proposal instead of making their own.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < PROPOSAL_OPS_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if held.load(Ordering::Acquire) {
            // Queued before a handover began: the new leader takes them.
            let err = ProposeError::Unavailable("the leadership is being handed over".into());
            for p in batch {
                let _ = p.reply.send(Err(err.clone()));
            }
            continue;
        }
        stats.proposals.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .largest_proposal_ops
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        let raft = raft.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let (ops, replies): (Vec<Op>, Vec<_>) =
                batch.into_iter().map(|p| (p.op, p.reply)).unzip();
            let n = ops.len();
            let result =
                tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(Proposal { ops })).await;
            drop(permit);
            let Ok(result) = result else {
                let err = ProposeError::Unavailable(format!(
                    "no majority of the masters acknowledged within {COMMIT_TIMEOUT:?}"
                ));
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
                return;
            };
            match result {
                Ok(resp) => {
                    let applied = resp.data;
                    assert_eq!(applied.outcomes.len(), n, "one outcome per proposed op");
                    for (reply, outcome) in replies.into_iter().zip(applied.outcomes) {
                        let _ = reply.send(Ok(Committed {
                            outcome,
                            index: applied.index,
                        }));
                    }
                }
                Err(e) => {
                    let err = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            stats.fenced.fetch_add(1, Ordering::Relaxed);
                            ProposeError::NotLeader {
                                leader: f.leader_id,
                            }
                        }
                        RaftError::APIError(other) => ProposeError::Stopped(other.to_string()),
                        RaftError::Fatal(f) => ProposeError::Stopped(f.to_string()),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}
