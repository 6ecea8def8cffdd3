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

use crate::types::{NodeId, Op, Outcome, PROPOSAL_BYTES_MAX, PROPOSAL_OPS_MAX, Proposal, Raft};

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
    /// `op`'s encoded size, measured by the caller's task rather than the
    /// proposer's single one.
    bytes: usize,
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
        let bytes = op.encoded_bytes();
        self.tx
            .try_send(Pending { op, bytes, reply })
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

/// A batch: `first`, then what `next` yields while the batch holds fewer
/// than `ops_max` ops and the next one keeps it within `bytes_max`. The one
/// that would go over is returned, to open the next batch: an entry over
/// the log's record limit would stop Raft for good. `first` always goes in
/// (alone if it is over by itself: client ops are bounded before they
/// get here, `Op::check_bounds`), so every batch makes progress.
fn fill<T>(
    first: T,
    mut next: impl FnMut() -> Option<T>,
    bytes_of: impl Fn(&T) -> usize,
    ops_max: usize,
    bytes_max: usize,
) -> (Vec<T>, Option<T>) {
    let mut bytes = bytes_of(&first);
    let mut batch = vec![first];
    while batch.len() < ops_max {
        let Some(p) = next() else {
            break;
        };
        let b = bytes_of(&p);
        if bytes.saturating_add(b) > bytes_max {
            return (batch, Some(p));
        }
        bytes += b;
        batch.push(p);
    }
    (batch, None)
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Pending>,
    stats: Arc<ProposerStats>,
    mut gate: watch::Receiver<Gate>,
    in_flight: Arc<Semaphore>,
) {
    // The op that did not fit the previous proposal's bytes; it opens the next.
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Wait for a slot before collecting: ops that arrive meanwhile join
        // this proposal instead of making their own.
        let Ok(mut permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (batch, rest) = fill(
            first,
            || rx.try_recv().ok(),
            |p| p.bytes,
            PROPOSAL_OPS_MAX,
            PROPOSAL_BYTES_MAX,
        );
        carry = rest;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ReqId;

    fn rename(path_bytes: usize) -> Op {
        Op::Rename {
            req: ReqId::default(),
            src: "s".repeat(path_bytes),
            dst: "d".repeat(path_bytes),
            replace: false,
            now_ns: 0,
            trash_retention_ms: 0,
        }
    }

    /// Splits `ops` the way `run` does, carrying the op that did not fit.
    fn batches(ops: Vec<Op>, ops_max: usize, bytes_max: usize) -> Vec<Vec<Op>> {
        let mut queue = ops.into_iter();
        let mut carry = None;
        let mut out = Vec::new();
        while let Some(first) = carry.take().or_else(|| queue.next()) {
            let (b, rest) = fill(
                first,
                || queue.next(),
                Op::encoded_bytes,
                ops_max,
                bytes_max,
            );
            carry = rest;
            out.push(b);
        }
        out
    }

    /// The review's case: pipelined renames with huge paths (had they got
    /// past the client checks) made one ~80 MiB entry. Split by bytes, no
    /// proposal is over the bound and none is lost or reordered.
    #[test]
    fn batches_are_split_by_bytes() {
        let ops: Vec<Op> = (0..5).map(|_| rename(1_500_000)).collect();
        let one = ops[0].encoded_bytes();
        assert!(one > 3_000_000 && one < PROPOSAL_BYTES_MAX, "{one}");
        let got = batches(ops.clone(), PROPOSAL_OPS_MAX, PROPOSAL_BYTES_MAX);
        assert_eq!(got.len(), 5, "each op over half the bound goes alone");
        for b in &got {
            let bytes: usize = b.iter().map(Op::encoded_bytes).sum();
            assert!(bytes <= PROPOSAL_BYTES_MAX, "{bytes}");
        }
        assert_eq!(got.concat(), ops);

        // Small ops still share a proposal up to the op bound.
        let small: Vec<Op> = (0..PROPOSAL_OPS_MAX + 10).map(|_| rename(20)).collect();
        let got = batches(small, PROPOSAL_OPS_MAX, PROPOSAL_BYTES_MAX);
        let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(sizes, [PROPOSAL_OPS_MAX, 10]);

        // A bound between one and two ops: one op per batch; a bound
        // below one op still takes it (alone), so the queue drains.
        let mid: Vec<Op> = (0..3).map(|_| rename(100)).collect();
        let one = mid[0].encoded_bytes();
        for bound in [one, one * 2 - 1, 1] {
            let got = batches(mid.clone(), PROPOSAL_OPS_MAX, bound);
            assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
        }
        let got = batches(mid.clone(), PROPOSAL_OPS_MAX, one * 2);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    }
}
