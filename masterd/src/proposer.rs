//! Application-level group commit: mutations from every connection queue
//! here, and whatever has queued while earlier proposals were committing
//! goes into the log as one entry ([`Proposal`]). Together with the log's own
//! fsync batching (`crate::oplog`) that is what makes many records share one
//! `fdatasync` (docs/design/009-masterd-core.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

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
/// Longest wait of a mutation that arrives during a leadership handover.
/// A handover holds for a vote round and a commit (milliseconds; the
/// allies' lease before it, with more than three voters, does not hold
/// the writes); past this the caller hears `Unavailable` and retries.
pub const HELD_WAIT_MAX: Duration = Duration::from_secs(2);

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

/// Whether proposals go to Raft, and what a leadership handover asks of
/// them otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// A handover is under way: proposals wait.
    Held,
    /// The handover is done and this master knows the new leader before
    /// openraft tells it: proposals are answered `NotLeader` with it.
    Redirect(NodeId),
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
    /// Closed during a leadership handover (`Gate`).
    gate: watch::Sender<Gate>,
    /// Slots of proposals handed to Raft and not yet answered.
    in_flight: Arc<Semaphore>,
}

impl Proposer {
    pub fn start(raft: Raft) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUED_OPS_MAX);
        let stats = Arc::new(ProposerStats::default());
        let (gate, _) = watch::channel(Gate::Open);
        let in_flight = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
        tokio::spawn(run(
            raft,
            rx,
            stats.clone(),
            gate.subscribe(),
            in_flight.clone(),
        ));
        Proposer {
            tx,
            stats,
            gate,
            in_flight,
        }
    }

    /// Sets the gate. `Held` holds new proposals and what is queued and
    /// not yet handed to Raft: they wait, up to [`HELD_WAIT_MAX`]. Then
    /// `Redirect(to)` answers them `NotLeader` with `to` at once, so a
    /// client goes straight to the new leader, and `Open` hands them to
    /// Raft. Before 2026-11-22 they were refused with `Unavailable` at
    /// once; under load the clients' retries kept the CPU from the handover
    /// and landed after their backoff.
    pub fn set_gate(&self, gate: Gate) {
        self.gate.send_replace(gate);
    }

    /// Holds, then waits (up to `wait`) until no proposal handed to Raft
    /// is unanswered: afterwards the log grows only by entries proposed
    /// elsewhere (membership changes). True once drained.
    pub async fn hold_and_drain(&self, wait: Duration) -> bool {
        self.set_gate(Gate::Held);
        let all = u32::try_from(PROPOSALS_IN_FLIGHT_MAX).expect("a small bound");
        matches!(
            tokio::time::timeout(wait, self.in_flight.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    /// Commits `op` through the log; returns its outcome once applied.
    pub async fn propose(&self, op: Op) -> Result<Committed, ProposeError> {
        if *self.gate.borrow() != Gate::Open {
            wait_for_open(&mut self.gate.subscribe()).await?;
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

/// Returns once the gate is open; `NotLeader` once it redirects, or
/// `Unavailable` after [`HELD_WAIT_MAX`] held.
async fn wait_for_open(gate: &mut watch::Receiver<Gate>) -> Result<(), ProposeError> {
    let settled = tokio::time::timeout(HELD_WAIT_MAX, gate.wait_for(|g| *g != Gate::Held)).await;
    match settled {
        Ok(Ok(g)) => match *g {
            Gate::Open => Ok(()),
            Gate::Redirect(to) => Err(ProposeError::NotLeader { leader: Some(to) }),
            Gate::Held => unreachable!("waited for a gate that is not held"),
        },
        Ok(Err(_)) => Err(ProposeError::Stopped("proposer stopped".into())),
        Err(_) => Err(ProposeError::Unavailable(
            "the leadership is being handed over".into(),
        )),
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    stats: Arc<ProposerStats>,
    mut gate: watch::Receiver<Gate>,
    in_flight: Arc<Semaphore>,
) {
    while let Some(first) = rx.recv().await {
        // Wait for a slot before collecting: ops that arrive meanwhile join
        // this proposal instead of making their own.
        let Ok(mut permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < PROPOSAL_OPS_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if *gate.borrow() != Gate::Open {
            // Queued before a handover began. The slot goes back while
            // they wait, or the handover's drain would wait for it.
            drop(permit);
            if let Err(err) = wait_for_open(&mut gate).await {
                for p in batch {
                    let _ = p.reply.send(Err(err.clone()));
                }
                continue;
            }
            let Ok(again) = in_flight.clone().acquire_owned().await else {
                return;
            };
            permit = again;
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
