//! The longer log campaigns at once (design note 013, "Crash failover").
//!
//! A leader that dies while an entry is on its way to the followers can
//! leave one of them an entry ahead of the other. If the one behind times
//! out first, openraft 0.9 loses time twice:
//!
//! - The one ahead refuses it for its log without taking its term, so its
//!   own campaign, at the same term, is refused too (the candidate has
//!   voted for itself in that term), and it waits one more election
//!   timeout before it campaigns at the next term.
//! - The refused candidate learns that a greater log exists, which adds
//!   `2 × election_timeout_max` to its next election timeout, and openraft
//!   clears that only when it next campaigns on its own timer, however
//!   much later: its next failover, when its log may well be the longest,
//!   is slowed too.
//!
//! Measured before this module (`ringfs-bench failover`, 40 kills): 3 crash
//! windows of 1.07–1.27 s, every one of them this, against 0.55–0.67 s.
//!
//! So a voter asked for its vote by a candidate whose log is shorter than
//! its own, while the leader it followed has been silent for a whole
//! leader lease, takes over: it campaigns at once, at a term above the
//! candidate's, and the candidate gets a refusal without this voter's log
//! id (so it learns of no greater log). openraft never sees that request;
//! it would have refused it without any change of state (a shorter log is
//! refused before the vote is looked at), so leaving it out changes nothing
//! else; and a vote withheld is never a safety question in Raft, only one
//! of liveness (our log's last id can run ahead of openraft's for the
//! moment of a truncation, and then a vote is withheld that openraft might
//! have granted). While the leader is heard, or during a handover's hold, or when
//! the terms are far apart, the request goes to openraft as before.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::raft::VoteRequest;

use crate::node::Master;
use crate::types::{LogId, NodeId};

/// Campaigns one takeover may start: enough to pass a candidate one term
/// ahead. A candidate further ahead has campaigned alone for a while
/// (partitioned); openraft's own timers handle that case.
pub const TAKEOVER_ELECTIONS_MAX: u64 = 2;

/// Elections by hand on this master: the handover's hold, and takeovers.
#[derive(Debug, Default)]
pub struct Elections {
    held_until: Mutex<Option<Instant>>,
    last_takeover: Mutex<Option<Instant>>,
}

impl Elections {
    /// No takeover until `until` (a handover asked this voter to hold).
    pub fn hold_until(&self, until: Instant) {
        let mut held = self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        *held = Some(held.map_or(until, |h| h.max(until)));
    }

    /// Takes back this master's own hold (its handover ended).
    pub fn release(&self) {
        *self.held_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn held(&self, now: Instant) -> bool {
        self.held_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|h| now < h)
    }

    /// Claims the right to take over: at most once per `gap`, so a burst of
    /// vote requests from one candidate starts one campaign.
    fn claim(&self, now: Instant, gap: Duration) -> bool {
        let mut last = self.last_takeover.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < gap) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// What this voter knows when a vote request arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// A voter following a leader: openraft's server state is `Follower`
    /// and its vote is committed.
    pub voter_following: bool,
    /// Since the leader was last heard (the vote's last refresh).
    pub silent_for: Option<Duration>,
    pub our_term: u64,
    pub our_last_log_id: Option<LogId>,
    pub held: bool,
}

/// Campaigns to start instead of answering `req`, or `None` to leave the
/// request to openraft. `lease` is openraft's leader lease
/// (`election_timeout_max_ms`).
pub fn takeover_elections(seen: &Seen, req: &VoteRequest<NodeId>, lease: Duration) -> Option<u64> {
    if req.last_log_id >= seen.our_last_log_id || seen.held || !seen.voter_following {
        return None;
    }
    // Heard within a lease: openraft refuses the candidate for the lease.
    if seen.silent_for.is_none_or(|s| s < lease) {
        return None;
    }
    let elections = (req.vote.leader_id().term + 1)
        .saturating_sub(seen.our_term)
        .max(1);
    (elections <= TAKEOVER_ELECTIONS_MAX).then_some(elections)
}

/// Takes over instead of answering `req` when that is right: returns the
/// refusal to send the candidate, or `None` to hand `req` to openraft.
pub async fn take_over_instead(master: &Master, req: &VoteRequest<NodeId>) -> Option<String> {
    let tuning = master.tuning();
    let lease = Duration::from_millis(tuning.election_timeout_max_ms);
    let our_last_log_id = master.log_reader.last_log_id();
    // Most vote requests come from a candidate whose log is at least ours:
    // decided without a round trip to openraft's core.
    if req.last_log_id >= our_last_log_id {
        return None;
    }
    let now = Instant::now();
    let me = master.id;
    let held = master.elections.held(now);
    let seen = master
        .raft
        .with_raft_state(move |st| {
            let vote = st.vote_ref();
            Seen {
                voter_following: st.server_state == ServerState::Follower
                    && vote.is_committed()
                    && st.membership_state.effective().voter_ids().any(|v| v == me),
                silent_for: st
                    .vote_last_modified()
                    .map(|t| tokio::time::Instant::now().saturating_duration_since(t)),
                our_term: vote.leader_id().term,
                our_last_log_id,
                held,
            }
        })
        .await
        .ok()?;
    let elections = takeover_elections(&seen, req, lease)?;
    let gap = Duration::from_millis(tuning.election_timeout_min_ms);
    if !master.elections.claim(now, gap) {
        // A takeover is under way: refuse this one like the first.
        return Some(refusal(me, req));
    }
    tracing::info!(
        candidate = req.vote.leader_id().voted_for(),
        candidate_term = req.vote.leader_id().term,
        our_term = seen.our_term,
        ours = ?our_last_log_id,
        theirs = ?req.last_log_id,
        elections,
        "a candidate with a shorter log asked for a vote: campaigning at once"
    );
    master
        .metrics
        .election_takeovers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..elections {
        // Each one campaigns at the next term; the last is above the
        // candidate's. An error means Raft is shutting down.
        if master.raft.trigger().elect().await.is_err() {
            break;
        }
    }
    Some(refusal(me, req))
}

fn refusal(me: NodeId, req: &VoteRequest<NodeId>) -> String {
    format!(
        "master {me} has a longer log than {} and campaigns itself",
        req.last_log_id
            .map_or_else(|| "none".to_string(), |l| l.to_string())
    )
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Vote};

    use super::*;

    const LEASE: Duration = Duration::from_millis(300);

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// A follower of the term-5 leader, one entry ahead of the candidate.
    fn seen() -> Seen {
        Seen {
            voter_following: true,
            silent_for: Some(Duration::from_millis(500)),
            our_term: 5,
            our_last_log_id: Some(log_id(5, 11)),
            held: false,
        }
    }

    fn request(term: u64, last: Option<LogId>) -> VoteRequest<NodeId> {
        VoteRequest::new(Vote::new(term, 3), last)
    }

    #[test]
    fn a_shorter_log_after_the_lease_is_outbid_by_one_term() {
        // The candidate is at 6, our own next campaign would be 6 too:
        // two campaigns reach 7.
        let r = request(6, Some(log_id(5, 10)));
        assert_eq!(takeover_elections(&seen(), &r, LEASE), Some(2));
        // A candidate at our own term (it has not bumped yet): one.
        let r = request(5, Some(log_id(5, 10)));
        assert_eq!(takeover_elections(&seen(), &r, LEASE), Some(1));
        // An older term's last entry is a shorter log whatever its index.
        let r = request(6, Some(log_id(4, 40)));
        assert_eq!(takeover_elections(&seen(), &r, LEASE), Some(2));
        let r = request(6, None);
        assert_eq!(takeover_elections(&seen(), &r, LEASE), Some(2));
    }

    #[test]
    fn anything_else_goes_to_openraft() {
        let r = request(6, Some(log_id(5, 10)));
        // An equal or longer log: openraft grants or decides.
        for last in [log_id(5, 11), log_id(5, 12), log_id(6, 1)] {
            assert_eq!(
                takeover_elections(&seen(), &request(6, Some(last)), LEASE),
                None
            );
        }
        // The leader was heard within a lease, or silence is unknown.
        for silent in [Some(Duration::from_millis(299)), Some(Duration::ZERO), None] {
            let s = Seen {
                silent_for: silent,
                ..seen()
            };
            assert_eq!(takeover_elections(&s, &r, LEASE), None);
        }
        // Exactly one lease of silence is enough.
        let s = Seen {
            silent_for: Some(LEASE),
            ..seen()
        };
        assert_eq!(takeover_elections(&s, &r, LEASE), Some(2));
        // Held by a handover, or not a following voter (a candidate, a
        // learner, a leader).
        assert_eq!(
            takeover_elections(
                &Seen {
                    held: true,
                    ..seen()
                },
                &r,
                LEASE
            ),
            None
        );
        let s = Seen {
            voter_following: false,
            ..seen()
        };
        assert_eq!(takeover_elections(&s, &r, LEASE), None);
        // A candidate terms ahead has campaigned alone for a while.
        let r = request(7, Some(log_id(5, 10)));
        assert_eq!(takeover_elections(&seen(), &r, LEASE), None);
    }

    #[test]
    fn one_takeover_per_gap_and_none_while_held() {
        let e = Elections::default();
        let t0 = Instant::now();
        let gap = Duration::from_millis(150);
        assert!(e.claim(t0, gap));
        assert!(!e.claim(t0 + Duration::from_millis(149), gap));
        assert!(e.claim(t0 + gap, gap));
        assert!(!e.held(t0));
        e.hold_until(t0 + Duration::from_secs(3));
        // A shorter hold never cuts a longer one short.
        e.hold_until(t0 + Duration::from_secs(1));
        assert!(e.held(t0 + Duration::from_secs(2)));
        assert!(!e.held(t0 + Duration::from_secs(3)));
        e.hold_until(t0 + Duration::from_secs(3));
        e.release();
        assert!(!e.held(t0));
    }
}
