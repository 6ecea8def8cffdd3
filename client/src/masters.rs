//! The link to the master group: one logical master whatever is leading.
//! Requests go to the last known leader; `NotLeader` hints are followed,
//! unreachable masters are skipped in turn, `Unavailable`/`Busy` are waited
//! out, and every request has a total deadline (DESIGN §6).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringfs_wire::msg::{Body, ErrorCode, ErrorReply, ReadStamp};

use crate::error::Error;
use crate::mux::MuxPool;

/// Retry bounds for requests to the masters.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total time a request may take, retries included.
    pub deadline: Duration,
    /// One attempt's bound (connect, send, reply).
    pub attempt_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Attempts, whatever the deadline says.
    pub attempts_max: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(60),
            // A hung master (paused, partitioned) costs one of these before
            // the next is tried; masters answer mutations within their own
            // commit timeout (3 s) either way.
            attempt_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(20),
            // Short: during an election every master may refuse for a few
            // hundred ms, and a long pause would outlast the failover.
            backoff_max: Duration::from_millis(100),
            attempts_max: 200,
        }
    }
}

pub struct Masters {
    /// Client addresses of every configured master, voters first.
    addrs: Vec<String>,
    /// The master believed to lead: an index into `addrs`, or an address
    /// only a hint named.
    leader: Mutex<Option<String>>,
    /// Multiplexed links (design note 018): a client's concurrent requests
    /// share a few connections per master.
    pool: MuxPool,
    policy: RetryPolicy,
    /// The newest applied index any master's answer was stamped with.
    /// Reads ask for at least this much, so whichever master answers
    /// (another leader after a failover, a shadow), this client never reads
    /// older than what it already saw or wrote.
    seen_index: AtomicU64,
}

/// The read stamp of a master's answer, if it has one.
fn stamp_of(body: &Body) -> Option<&ReadStamp> {
    match body {
        Body::Ack(r) => r.stamp.as_ref(),
        Body::AttrReply(r) => r.stamp.as_ref(),
        Body::ListDirReply(r) => r.stamp.as_ref(),
        Body::DeleteReply(r) => r.stamp.as_ref(),
        Body::ListTrashReply(r) => r.stamp.as_ref(),
        Body::SetReplicationReply(r) => r.stamp.as_ref(),
        Body::GetChunksReply(r) => r.stamp.as_ref(),
        Body::ChunkLocationReply(r) => r.stamp.as_ref(),
        Body::AdminStatusReply(r) => r.stamp.as_ref(),
        Body::FsckReply(r) => r.stamp.as_ref(),
        _ => None,
    }
}

enum Next {
    /// Try again now (a hint named the leader).
    Now,
    /// Try again after backing off, at least this long.
    After(Duration),
}

impl Masters {
    pub fn new(addrs: Vec<String>, pool: MuxPool, policy: RetryPolicy) -> Masters {
        assert!(!addrs.is_empty(), "a cluster has at least one master");
        Masters {
            addrs,
            leader: Mutex::new(None),
            pool,
            policy,
            seen_index: AtomicU64::new(0),
        }
    }

    /// See [`Masters::seen_index`](struct field): the `min_applied_index` of reads.
    pub fn seen_index(&self) -> u64 {
        self.seen_index.load(Ordering::Relaxed)
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    fn leader(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_leader(&self, addr: Option<String>) {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }

    /// Sends `body` (built once, so a retried mutation keeps its request id
    /// and is applied once) until a master answers it or the deadline passes.
    /// Typed refusals other than "not me / not now" are returned as errors.
    pub async fn call(&self, what: &str, body: &Body) -> Result<Body, Error> {
        let started = Instant::now();
        let mut backoff = self.policy.backoff_initial;
        let mut rotation = 0usize;
        let mut last_problem = String::from("no master answered");
        let mut retry_hint = Duration::ZERO;
        for _ in 0..self.policy.attempts_max {
            let addr = self.leader().unwrap_or_else(|| {
                rotation += 1;
                self.addrs[rotation % self.addrs.len()].clone()
            });
            let left = self.policy.deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let timeout = self.policy.attempt_timeout.min(left);
            let next = match self.pool.call(&addr, body, &[], timeout).await {
                Ok(reply) => match reply.body {
                    Body::ErrorReply(e) => match self.on_refusal(&addr, &e) {
                        Some(next) => {
                            last_problem = format!(
                                "{addr}: {:?} {}",
                                e.code,
                                e.message.as_deref().unwrap_or("")
                            );
                            retry_hint = Duration::from_millis(u64::from(e.retry_after_ms));
                            next
                        }
                        None => return Err(Error::from_reply(what, &e)),
                    },
                    body => {
                        if let Some(stamp) = stamp_of(&body) {
                            self.seen_index
                                .fetch_max(stamp.applied_index, Ordering::Relaxed);
                        }
                        self.set_leader(Some(addr));
                        return Ok(body);
                    }
                },
                Err(e) => {
                    if let crate::frames::ConnError::Handshake { .. } = e {
                        return Err(Error::from_conn(what, &e));
                    }
                    last_problem = format!("{addr}: {e}");
                    // Next time, the master after this one in turn.
                    self.set_leader(None);
                    if let Some(i) = self.addrs.iter().position(|a| *a == addr) {
                        rotation = i;
                    }
                    Next::After(Duration::ZERO)
                }
            };
            if let Next::After(at_least) = next {
                let left = self.policy.deadline.saturating_sub(started.elapsed());
                let pause = backoff.max(at_least).min(left);
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(self.policy.backoff_max);
            }
        }
        Err(Error::unavailable(
            what,
            format!(
                "no answer within {:?}; last: {last_problem}",
                self.policy.deadline
            ),
            retry_hint,
        ))
    }

    /// What to do about a typed refusal: `None` when it is the answer.
    fn on_refusal(&self, addr: &str, e: &ErrorReply) -> Option<Next> {
        match e.code {
            ErrorCode::NotLeader | ErrorCode::ReadOnlyShadow => {
                match e.leader_addr.as_deref().filter(|a| !a.is_empty()) {
                    // A hint back to the master that just refused means an
                    // election is under way: wait rather than spin.
                    Some(hint) if hint != addr => {
                        self.set_leader(Some(hint.to_owned()));
                        Some(Next::Now)
                    }
                    _ => {
                        self.set_leader(None);
                        Some(Next::After(Duration::ZERO))
                    }
                }
            }
            ErrorCode::Unavailable | ErrorCode::Busy | ErrorCode::Timeout => Some(Next::After(
                Duration::from_millis(u64::from(e.retry_after_ms)),
            )),
            _ => None,
        }
    }
}
