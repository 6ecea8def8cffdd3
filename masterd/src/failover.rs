//! Leadership and membership by hand (design note 013): the graceful
//! handover of `ringfs admin failover [--to ID]`, `admin masters
//! add|promote|remove`, and the leader's duty of adding the configured
//! shadows as Raft learners.
//!
//! openraft 0.9 has no leadership transfer, and a follower refuses to vote
//! while its leader lease (`election_timeout_max_ms` after the last
//! heartbeat) runs. So the handover is: the leader tells the other voters
//! to hold their own elections for a while, stops taking mutations (they
//! wait, and are answered `NotLeader` with the new leader once it is known;
//! `proposer::Proposer::hold`), waits until the target has every entry,
//! stops heartbeating, and tells the target to campaign. The target
//! campaigns at once, which wins when the old leader's vote makes a
//! majority (three voters: a leader's own lease is never refreshed, so it
//! grants once it has led for a lease); otherwise it campaigns again once
//! the followers' leases have run out.
//!
//! With more than three voters the target needs allies besides the old
//! leader: before anything stops, the leader withholds AppendEntries from
//! just enough of the holding followers (`raftnet::Withheld`) for one
//! lease, while the rest keep committing, so their leases have run out when
//! the target asks. The pause is then a vote round and a commit with five
//! voters as with three, if the voters left commit without the allies;
//! otherwise the writes wait out the lease as before. No request fails
//! either way.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers};
use ringfs_wire::config::MasterRole as ConfigRole;
use ringfs_wire::msg::RaftRpc;
use serde::{Deserialize, Serialize};

use crate::node::Master;
use crate::proposer::Gate;
use crate::raftnet::PeerConn;
use crate::types::NodeId;

/// Longest wait for the target to hold every entry before the handover.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(3);
/// How long the other voters hold their elections during a handover.
pub const HOLD_ELECTIONS_MS: u64 = 3000;
/// Longest wait for the target to win once asked.
pub const CAMPAIGN_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the first, immediate campaign (one vote round on a
/// LAN) before waiting for the leases to run out.
pub const FAST_CAMPAIGN_WAIT: Duration = Duration::from_millis(100);
/// Bound on the leader's own hold of takeovers during its handover (the
/// catch-up, the drain and both campaigns fit); released when it ends.
pub const HANDOVER_HOLD_MAX: Duration = Duration::from_secs(30);
/// Margin over the followers' leader lease before the target campaigns:
/// the last heartbeat left at most this before the stop.
pub const LEASE_MARGIN_MS: u64 = 20;
/// Longest wait for a voter to answer `Hold`, which it does at once: one
/// that is down or cut off is left out rather than stalling the handover.
pub const HOLD_ANSWER_WAIT: Duration = Duration::from_millis(500);

/// The last log index each follower is known to hold, as this leader
/// sees it (none when it does not lead).
fn matched_indexes(master: &Master) -> BTreeMap<NodeId, u64> {
    let m = master.raft.metrics();
    let m = m.borrow();
    m.replication
        .iter()
        .flatten()
        .map(|(&id, l)| (id, l.map_or(0, |l| l.index)))
        .collect()
}

/// How many followers, with this leader's and the target's own votes,
/// make a majority of `voters` (none with three, one with four or five),
/// and the candidates in the order to ask them: least caught-up first, so
/// the followers left to commit during the lease are the quickest ones.
fn ally_candidates(
    master: &Master,
    voters: &BTreeMap<NodeId, BasicNode>,
    target: NodeId,
) -> (usize, Vec<NodeId>) {
    let needed = (voters.len() / 2 + 1).saturating_sub(2);
    if needed == 0 {
        return (0, Vec::new());
    }
    let matched = matched_indexes(master);
    let mut others: Vec<NodeId> = voters
        .keys()
        .copied()
        .filter(|&id| id != master.id && id != target)
        .collect();
    others.sort_by_key(|id| matched.get(id).copied().unwrap_or(0));
    (needed, others)
}

/// What the leader asks of another voter during a handover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handover {
    /// Start no election of your own for `for_ms`.
    Hold { for_ms: u64 },
    /// Once your log reaches `last_log_index`, wait `after_ms` (the others'
    /// leader lease running out), then campaign; answer once you lead.
    Take { last_log_index: u64, after_ms: u64 },
}

/// A voter's side of a handover.
pub async fn on_handover(master: &Master, from: NodeId, h: Handover) -> Result<(), String> {
    match h {
        Handover::Hold { for_ms } => {
            let for_ms = for_ms.min(HOLD_ELECTIONS_MS);
            master.raft.runtime_config().elect(false);
            master
                .elections
                .hold_until(Instant::now() + Duration::from_millis(for_ms));
            let raft = master.raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(for_ms)).await;
                raft.runtime_config().elect(true);
            });
            tracing::info!(from, for_ms, "holding elections for a handover");
            Ok(())
        }
        Handover::Take {
            last_log_index,
            after_ms,
        } => {
            let lease_over = Instant::now() + Duration::from_millis(after_ms.min(10_000));
            let mut metrics = master.raft.metrics();
            tokio::time::timeout(
                CATCH_UP_WAIT,
                metrics.wait_for(|m| m.last_log_index.unwrap_or(0) >= last_log_index),
            )
            .await
            .map_err(|_| format!("master {} did not reach index {last_log_index}", master.id))?
            .map_err(|e| e.to_string())?;
            // First at once: the old leader grants the vote when its own
            // lease has run out (openraft refreshes a voter's lease on each
            // heartbeat it takes, and a leader takes none, so a leader that
            // has led longer than one lease grants). With three voters
            // that is a majority; with five, two more are needed, whose
            // leases run until `lease_over`.
            if campaign(master, FAST_CAMPAIGN_WAIT).await.is_ok() {
                tracing::info!(from, "took over the leadership at once");
                return Ok(());
            }
            tokio::time::sleep_until(lease_over.into()).await;
            campaign(master, CAMPAIGN_WAIT).await?;
            tracing::info!(from, "took over the leadership once the leases ran out");
            Ok(())
        }
    }
}

/// Starts an election and waits up to `wait` to win it.
async fn campaign(master: &Master, wait: Duration) -> Result<(), String> {
    let me = master.id;
    master
        .raft
        .trigger()
        .elect()
        .await
        .map_err(|e| e.to_string())?;
    let mut metrics = master.raft.metrics();
    tokio::time::timeout(wait, metrics.wait_for(|m| m.current_leader == Some(me)))
        .await
        .map_err(|_| format!("master {me} did not win its election in {wait:?}"))?
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn voters(master: &Master) -> BTreeMap<NodeId, BasicNode> {
    let m = master.raft.metrics();
    let m = m.borrow();
    let membership = m.membership_config.membership();
    membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
        .collect()
}

fn conn(master: &Master, target: NodeId, node: &BasicNode) -> PeerConn {
    PeerConn::new(
        master.id,
        master.config.key.clone(),
        master.config.file.cluster_id.clone(),
        target,
        node.addr.clone(),
    )
}

async fn send(
    master: &Master,
    target: NodeId,
    node: &BasicNode,
    h: &Handover,
) -> Result<(), String> {
    let payload = postcard::to_allocvec(h).map_err(|e| e.to_string())?;
    let mut c = conn(master, target, node);
    let wait = match h {
        Handover::Hold { .. } => HOLD_ANSWER_WAIT,
        Handover::Take { .. } => CATCH_UP_WAIT + CAMPAIGN_WAIT + Duration::from_secs(1),
    };
    let reply = tokio::time::timeout(wait, c.exchange(RaftRpc::TransferLeader, &payload))
        .await
        .map_err(|_| format!("master {target} did not answer the handover"))?
        .map_err(|e| e.to_string())?;
    postcard::from_bytes::<Result<(), String>>(&reply).map_err(|e| e.to_string())?
}

/// The leader's side: hands the leadership to `to` (0 = the most
/// caught-up other voter). Returns the new leader.
pub async fn hand_over(master: &Master, to: NodeId) -> Result<NodeId, String> {
    if !master.is_leader() {
        return Err(format!("master {} is not the leader", master.id));
    }
    let voters = voters(master);
    let target = if to == 0 {
        let matched = matched_indexes(master);
        voters
            .keys()
            .filter(|&&id| id != master.id)
            .max_by_key(|id| matched.get(id).copied().unwrap_or(0))
            .copied()
            .ok_or("no other voter to hand over to")?
    } else {
        to
    };
    if target == master.id {
        return Ok(target);
    }
    let Some(target_node) = voters.get(&target).cloned() else {
        return Err(format!("master {target} is not a voter"));
    };
    let started = Instant::now();
    // This master starts no election of its own meanwhile either: once the
    // target campaigns it is no longer leader, and winning back its old
    // place would leave the target waiting out everyone's lease.
    master.raft.runtime_config().elect(false);
    // openraft's switch stops its timer, not a takeover (`election.rs`).
    master.elections.hold_until(started + HANDOVER_HOLD_MAX);
    let (allies_needed, candidates) = ally_candidates(master, &voters, target);
    // When each step of the held part ended, for the log line at the end.
    let mut held_at = None;
    let mut drained_at = None;
    let mut caught_up_at = None;
    let result = async {
        // Every other voter but the target holds its own elections first,
        // all at once and before anything stops: once the heartbeats stop,
        // or an ally hears nothing for a lease, it would campaign itself.
        // One that does not answer is left out (and is no ally: with too
        // few, the target waits out the leases as before).
        let hold = Handover::Hold {
            for_ms: HOLD_ELECTIONS_MS,
        };
        let others: Vec<(NodeId, &BasicNode)> = voters
            .iter()
            .filter(|(id, _)| **id != target && **id != master.id)
            .map(|(id, node)| (*id, node))
            .collect();
        let answers = futures_util::future::join_all(
            others
                .iter()
                .map(|&(id, node)| send(master, id, node, &hold)),
        )
        .await;
        let mut holding = BTreeSet::new();
        for (&(id, _), answer) in others.iter().zip(answers) {
            match answer {
                Ok(()) => {
                    holding.insert(id);
                }
                Err(e) => tracing::warn!(id, error = %e, "a voter did not hold its elections"),
            }
        }
        let allies: Vec<NodeId> = candidates
            .iter()
            .copied()
            .filter(|id| holding.contains(id))
            .take(allies_needed)
            .collect();
        if !allies.is_empty() {
            master
                .withheld
                .withhold(&allies, started + HANDOVER_HOLD_MAX);
            let lease_ms = master.tuning().election_timeout_max_ms;
            tokio::time::sleep(Duration::from_millis(
                lease_ms.saturating_add(LEASE_MARGIN_MS),
            ))
            .await;
        }
        // Nothing more enters the log from here: a proposal already handed
        // to Raft would otherwise land after the target's catch-up, and
        // the old leader refuses to vote for a log shorter than its own.
        held_at = Some(Instant::now());
        if !master.proposer.hold_and_drain(CATCH_UP_WAIT).await {
            return Err(format!("proposals did not finish within {CATCH_UP_WAIT:?}"));
        }
        drained_at = Some(Instant::now());
        // Everything taken so far committed and on the target.
        let mut metrics = master.raft.metrics();
        let caught_up = tokio::time::timeout(
            CATCH_UP_WAIT,
            metrics.wait_for(|m| {
                let last = m.last_log_index.unwrap_or(0);
                let on_target = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&target).copied().flatten())
                    .map_or(0, |l| l.index);
                m.last_applied.map_or(0, |l| l.index) >= last && on_target >= last
            }),
        )
        .await
        .map(|r| r.is_ok());
        if caught_up != Ok(true) {
            return Err(format!(
                "master {target} did not catch up within {CATCH_UP_WAIT:?}"
            ));
        }
        caught_up_at = Some(Instant::now());
        let last_log_index = master.raft.metrics().borrow().last_log_index.unwrap_or(0);
        master.raft.runtime_config().heartbeat(false);
        let stopped = Instant::now();
        let after_ms = master
            .tuning()
            .election_timeout_max_ms
            .saturating_add(LEASE_MARGIN_MS)
            .saturating_sub(u64::try_from(stopped.elapsed().as_millis()).unwrap_or(u64::MAX));
        send(
            master,
            target,
            &target_node,
            &Handover::Take {
                last_log_index,
                after_ms,
            },
        )
        .await
    }
    .await;
    let won_at = Instant::now();
    master.withheld.release();
    master.raft.runtime_config().heartbeat(true);
    master.raft.runtime_config().elect(true);
    master.elections.release();
    if let Err(e) = result {
        master.proposer.set_gate(Gate::Open);
        return Err(e);
    }
    // The target answered once it led, before openraft here hears from
    // it (its first AppendEntries, tens of ms under load): the mutations
    // held meanwhile, and those arriving until then, are sent there at
    // once rather than answered with no leader at all.
    master.proposer.set_gate(Gate::Redirect(target));
    let mut metrics = master.raft.metrics();
    let _ = tokio::time::timeout(
        CAMPAIGN_WAIT,
        metrics.wait_for(|m| m.current_leader == Some(target)),
    )
    .await;
    master.proposer.set_gate(Gate::Open);
    master
        .metrics
        .handovers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ms = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
        (Some(f), Some(t)) => t.saturating_duration_since(f).as_millis() as u64,
        _ => 0,
    };
    let now = Some(Instant::now());
    tracing::info!(
        target,
        call_ms = started.elapsed().as_millis() as u64,
        mutations_held_ms = ms(held_at, now),
        drain_ms = ms(held_at, drained_at),
        catch_up_ms = ms(drained_at, caught_up_at),
        campaign_ms = ms(caught_up_at, Some(won_at)),
        leader_known_ms = ms(Some(won_at), now),
        "handed over the leadership"
    );
    Ok(target)
}

/// `admin masters add|promote|remove`, on the leader.
pub async fn change(
    master: &Master,
    op: ringfs_wire::msg::MembershipOp,
    id: NodeId,
) -> Result<(), String> {
    use ringfs_wire::msg::MembershipOp;
    let node = master
        .config
        .master(id)
        .ok_or_else(|| format!("master {id} is not in the config"))?;
    let basic = BasicNode::new(node.peer_addr.clone());
    let result = match op {
        MembershipOp::AddShadow => master
            .raft
            .add_learner(id, basic, true)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        MembershipOp::Promote => {
            membership_change(master, ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await
        }
        MembershipOp::Remove => {
            if id == master.id {
                return Err("the leader cannot remove itself; fail over first".into());
            }
            let voters = voters(master);
            let change = if voters.contains_key(&id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            membership_change(master, change).await
        }
    };
    if result.is_ok() {
        if op == MembershipOp::Remove {
            master.note_removed(id);
        } else {
            master.note_added(id);
        }
        master
            .metrics
            .membership_changes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(?op, id, "membership changed");
    }
    result
}

/// Bound on the wait for an earlier membership change (a shadow being
/// added, say) to commit before this one.
pub const MEMBERSHIP_BUSY_WAIT: Duration = Duration::from_secs(10);

/// One membership change, waiting (bounded) for one in progress to finish
/// first: openraft takes one at a time.
async fn membership_change(
    master: &Master,
    change: ChangeMembers<NodeId, BasicNode>,
) -> Result<(), String> {
    use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
    let deadline = Instant::now() + MEMBERSHIP_BUSY_WAIT;
    loop {
        match master.raft.change_membership(change.clone(), false).await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Leader duty: every shadow of the config that is not a member yet joins
/// as a learner. Removed shadows stay out until `admin masters add`.
pub async fn add_configured_shadows(master: &Master) {
    if !master.is_leader() {
        return;
    }
    let members: BTreeSet<NodeId> = {
        let m = master.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    };
    let removed = master.removed_shadows();
    for s in master.config.file.masters.iter() {
        if s.role != ConfigRole::Shadow || members.contains(&s.id) || removed.contains(&s.id) {
            continue;
        }
        // Not blocking: a shadow that is down joins when it comes up.
        match master
            .raft
            .add_learner(s.id, BasicNode::new(s.peer_addr.clone()), false)
            .await
        {
            Ok(_) => tracing::info!(id = s.id, "added a shadow master as a learner"),
            Err(e) => tracing::warn!(id = s.id, error = %e, "cannot add a shadow master"),
        }
    }
}
