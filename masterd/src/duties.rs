//! The leader's background duties, once per tick: declare silent
//! chunkservers dead, purge trash past retention, re-replicate chunks below
//! their goal (fewest live replicas first, then longest exposed; throttled
//! per chunkserver and cluster-wide), trim replicas above it, and garbage
//! collect orphaned and stale replicas through heartbeat replies.
//!
//! Deletion is conservative: a replica is only deleted when it is orphaned
//! (its handle was allocated and is no longer in the chunk table), stale
//! while good replicas exist, corrupt once the goal is met again by good
//! ones, or in excess of the goal. Handles not yet
//! allocated, and chunks whose version changed within the last two
//! heartbeats (or is changing now), are left alone.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ringfs_wire::msg::{
    ChunkCommand, CloneChunk, CommandEnvelope, CommandResult, DeleteChunk, DeleteReason, Replica,
    ReplicaState,
};

use crate::node::{Master, now_ms};
use crate::placement::{self, Candidate};
use crate::registry::Liveness;
use crate::types::{NodeId, Op, ReqId};

pub const TICK: Duration = Duration::from_millis(500);
/// How often chunks are scanned for re-replication, trimming and GC.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// How often due trash is purged.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(10);
/// A clone not reported done within this is given up (and retried).
pub const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
/// A delete not reflected in reports within this is sent again.
pub const DELETE_RETRY: Duration = Duration::from_secs(60);
/// Beyond two heartbeat intervals, how long after a version bump replicas
/// may still report the old version (a heartbeat built before the bump).
pub const VERSION_SETTLE_SLACK: Duration = Duration::from_secs(1);
/// Handles per DeleteChunk command.
pub const DELETE_BATCH_MAX: usize = 512;
/// Chunks examined per scan for re-replication (the most urgent first).
pub const REPLICATION_CANDIDATES_MAX: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Clone {
    source: NodeId,
    target: NodeId,
    started: Instant,
    command_id: u64,
}

#[derive(Default)]
pub struct Duties {
    clones: HashMap<u64, Clone>,
    /// When each under-replicated chunk was first seen short.
    exposed: HashMap<u64, Instant>,
    deletes: HashMap<(NodeId, u64), Instant>,
    last_scan: Option<Instant>,
    last_purge: Option<Instant>,
    pub clones_started: u64,
    pub clones_done: u64,
    pub clones_failed: u64,
    pub deletes_sent: u64,
}

fn with<R>(master: &Master, f: impl FnOnce(&mut Duties) -> R) -> R {
    let mut d = master.duties.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut d)
}

/// Counters for /metrics: (clones in flight, started, done, failed, deletes sent).
pub fn counters(master: &Master) -> (u64, u64, u64, u64, u64) {
    with(master, |d| {
        (
            d.clones.len() as u64,
            d.clones_started,
            d.clones_done,
            d.clones_failed,
            d.deletes_sent,
        )
    })
}

/// A chunkserver reported how a command went.
pub fn command_result(master: &Master, node: NodeId, result: &CommandResult) {
    if result
        .error
        .as_ref()
        .is_some_and(|e| e.code == ringfs_wire::msg::ErrorCode::StaleEpoch)
    {
        master
            .metrics
            .fenced
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    with(master, |d| {
        let Some(c) = d.clones.get(&result.handle).copied() else {
            return;
        };
        if c.command_id != result.command_id || c.target != node {
            return;
        }
        d.clones.remove(&result.handle);
        match &result.error {
            None => d.clones_done += 1,
            Some(e) => {
                d.clones_failed += 1;
                tracing::warn!(handle = result.handle, node, code = ?e.code, "clone failed; will retry");
            }
        }
    });
}

pub async fn run(master: std::sync::Arc<Master>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let timeout = Duration::from_millis(master.tuning().chunkserver_timeout_ms);
        let dead = master.registry().expire(now, timeout);
        for node in dead {
            tracing::warn!(node, "chunkserver silent for {timeout:?}: dead");
        }
        master.leases.sweep(now);
        // Only once this leader has applied its own term's first entry, so
        // everything earlier leaders committed: GC judged from a state still
        // catching up would take new chunks for orphans.
        if !master.leader_ready() {
            continue;
        }
        crate::failover::add_configured_shadows(&master).await;
        master.leases.note_leader(master.epoch(), now);
        let purge_due = with(&master, |d| {
            d.last_purge
                .is_none_or(|t| now.duration_since(t) >= PURGE_INTERVAL)
        });
        if purge_due {
            with(&master, |d| d.last_purge = Some(now));
            purge_trash(&master).await;
        }
        let scan_due = with(&master, |d| {
            d.last_scan
                .is_none_or(|t| now.duration_since(t) >= SCAN_INTERVAL)
        });
        if scan_due {
            with(&master, |d| d.last_scan = Some(now));
            scan(&master, now);
        }
    }
}

async fn purge_trash(master: &Master) {
    let now = now_ms();
    let due = master
        .shared
        .read()
        .ns
        .trash
        .values()
        .any(|e| e.purge_at_ms <= now);
    if due {
        match master
            .proposer
            .propose(Op::Purge {
                req: ReqId::default(),
                trash_id: 0,
                now_ms: now,
            })
            .await
        {
            Ok(c) => tracing::info!(outcome = ?c.outcome, "trash purged"),
            Err(e) => tracing::warn!(error = ?e, "trash purge not committed"),
        }
    }
}

/// What one scan decided, computed under the locks and sent after.
#[derive(Default)]
struct Plan {
    deletes: HashMap<NodeId, Vec<(u64, DeleteReason)>>,
    clones: Vec<(u64, u64, NodeId, NodeId)>,
}

fn scan(master: &Master, now: Instant) {
    let plan = plan(master, now);
    let epoch = master.epoch();
    let mut reg = master.registry();
    for (node, items) in plan.deletes {
        for reason in [
            DeleteReason::Orphan,
            DeleteReason::Stale,
            DeleteReason::Trimmed,
            DeleteReason::Corrupt,
        ] {
            let handles: Vec<u64> = items
                .iter()
                .filter(|(_, r)| *r == reason)
                .map(|(h, _)| *h)
                .collect();
            for batch in handles.chunks(DELETE_BATCH_MAX) {
                let command = CommandEnvelope {
                    command_id: master.next_command_id(),
                    command: Some(ChunkCommand::DeleteChunk(Box::new(DeleteChunk {
                        epoch,
                        handles: Some(batch.to_vec()),
                        reason,
                    }))),
                };
                if reg.queue_command(node, command) {
                    with(master, |d| {
                        d.deletes_sent += batch.len() as u64;
                        for h in batch {
                            d.deletes.insert((node, *h), now);
                        }
                    });
                    tracing::info!(node, count = batch.len(), ?reason, "deleting replicas");
                }
            }
        }
    }
    for (handle, version, source, target) in plan.clones {
        let Some(src) = reg.servers.get(&source) else {
            continue;
        };
        let source_replica = Replica {
            node_id: source,
            addr: Some(src.listen_addr.clone()),
            rack: Some(src.rack.clone()),
        };
        let command_id = master.next_command_id();
        let command = CommandEnvelope {
            command_id,
            command: Some(ChunkCommand::CloneChunk(Box::new(CloneChunk {
                epoch,
                handle,
                version,
                source: Some(Box::new(source_replica)),
            }))),
        };
        if reg.queue_command(target, command) {
            tracing::info!(handle, source, target, "re-replicating");
            with(master, |d| {
                d.clones_started += 1;
                d.clones.insert(
                    handle,
                    Clone {
                        source,
                        target,
                        started: now,
                        command_id,
                    },
                );
            });
        }
    }
}

/// Which of a chunk's good replicas (node, utilisation) to delete to come
/// down to `goal`: the most utilised first. A replica whose delete is on
/// its way (`leaving`) is still reported until its server says it is gone;
/// counting it as a keeper would make the next scan trim one more.
fn to_trim(
    holders: &[(NodeId, f64)],
    goal: usize,
    leaving: impl Fn(NodeId) -> bool,
) -> Vec<NodeId> {
    let mut keepers: Vec<(NodeId, f64)> = holders
        .iter()
        .copied()
        .filter(|(n, _)| !leaving(*n))
        .collect();
    let staying = keepers.len();
    let excess = staying.saturating_sub(goal);
    keepers.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let out: Vec<NodeId> = keepers.into_iter().take(excess).map(|(n, _)| n).collect();
    assert_eq!(
        staying - out.len(),
        goal.min(staying),
        "trimmed below the goal"
    );
    out
}

fn plan(master: &Master, now: Instant) -> Plan {
    let tuning = master.tuning();
    let state = master.shared.read();
    let reg = master.registry();
    let wall_ms = now_ms();
    let mut plan = Plan::default();
    with(master, |d| {
        d.clones.retain(|_, c| {
            let alive = now.duration_since(c.started) < CLONE_TIMEOUT && reg.is_live(c.target);
            if !alive {
                d.clones_failed += 1;
            }
            alive
        });
        d.deletes
            .retain(|_, at| now.duration_since(*at) < DELETE_RETRY);
    });
    let pending: HashSet<(NodeId, u64)> = with(master, |d| d.deletes.keys().copied().collect());
    let settle_ms =
        tuning.heartbeat_interval_ms.saturating_mul(2) + VERSION_SETTLE_SLACK.as_millis() as u64;
    let settling = |handle: u64| {
        state
            .chunks
            .leases
            .get(&handle)
            .is_some_and(|l| wall_ms.saturating_sub(l.granted_at_ms) < settle_ms)
            || master.leases.granting(handle)
    };
    let mut short: Vec<(usize, Instant, u64)> = Vec::new();
    let mut still_short: HashSet<u64> = HashSet::new();
    for (&handle, locs) in &reg.locations {
        let Some(chunk) = state.chunks.get(handle) else {
            // Orphan: allocated once (below the counter), owned by no file now.
            if handle < state.counters.next_handle {
                for l in locs.iter().filter(|l| reg.is_live(l.node)) {
                    plan.deletes
                        .entry(l.node)
                        .or_default()
                        .push((handle, DeleteReason::Orphan));
                }
            }
            continue;
        };
        let goal = state
            .ns
            .get(chunk.inode)
            .map_or(0, |i| usize::from(i.replication));
        let counted: Vec<_> = locs
            .iter()
            .filter(|l| l.version == chunk.version && l.state == ReplicaState::Ok)
            .filter(|l| {
                reg.servers
                    .get(&l.node)
                    .is_some_and(|s| s.liveness == Liveness::Live)
            })
            .collect();
        if !counted.is_empty() && !settling(handle) {
            for l in locs
                .iter()
                .filter(|l| l.version < chunk.version && reg.is_live(l.node))
            {
                plan.deletes
                    .entry(l.node)
                    .or_default()
                    .push((handle, DeleteReason::Stale));
            }
        }
        if counted.len() < goal {
            still_short.insert(handle);
            let since = with(master, |d| *d.exposed.entry(handle).or_insert(now));
            if counted.len() + usize::from(with(master, |d| d.clones.contains_key(&handle))) < goal
                && short.len() < REPLICATION_CANDIDATES_MAX
            {
                short.push((counted.len(), since, handle));
            }
        } else if goal > 0 && !settling(handle) {
            // At or above the goal. Corrupt replicas go only now, so a
            // chunk is never left with fewer copies than it had, bad ones
            // included, while it is being repaired. A lease does not hold
            // them: a corrupt replica refuses every write anyway.
            // Likewise a replica a client marked stale after a failed write.
            for l in locs.iter().filter(|l| reg.is_live(l.node)) {
                let reason = match l.state {
                    ReplicaState::Corrupt => DeleteReason::Corrupt,
                    ReplicaState::Stale if l.version >= chunk.version => DeleteReason::Stale,
                    _ => continue,
                };
                plan.deletes
                    .entry(l.node)
                    .or_default()
                    .push((handle, reason));
            }
            // Trim above the goal, but not under a running lease: its chain
            // names these replicas.
            if master.leases.live(handle, now).is_some() {
                continue;
            }
            let holders: Vec<(NodeId, f64)> = counted
                .iter()
                .map(|l| {
                    let used = reg.servers.get(&l.node).map_or(0.0, |s| s.utilisation());
                    (l.node, used)
                })
                .collect();
            for node in to_trim(&holders, goal, |n| pending.contains(&(n, handle))) {
                plan.deletes
                    .entry(node)
                    .or_default()
                    .push((handle, DeleteReason::Trimmed));
            }
        }
    }
    with(master, |d| {
        d.exposed.retain(|h, _| still_short.contains(h));
        // Do not send a delete twice while the first may still be on its way.
        for (node, items) in plan.deletes.iter_mut() {
            items.retain(|(h, _)| !d.deletes.contains_key(&(*node, *h)));
        }
    });
    plan.deletes.retain(|_, items| !items.is_empty());
    // Fewest live replicas first (0 cannot be cloned), then longest exposed.
    short.retain(|(live, _, _)| *live > 0);
    short.sort_by_key(|(live, since, handle)| (*live, *since, *handle));
    let cluster_max = tuning.rereplication_cluster_max as usize;
    let per_server_max = tuning.rereplication_per_chunkserver_max as usize;
    let mut busy: HashMap<NodeId, usize> = HashMap::new();
    let in_flight = with(master, |d| {
        for c in d.clones.values() {
            *busy.entry(c.source).or_default() += 1;
            *busy.entry(c.target).or_default() += 1;
        }
        d.clones.len()
    });
    let mut budget = cluster_max.saturating_sub(in_flight);
    let candidates: Vec<Candidate> = reg.live_servers().map(|s| Candidate::of(s, 0)).collect();
    for (_, _, handle) in short {
        if budget == 0 {
            break;
        }
        let Some(chunk) = state.chunks.get(handle) else {
            continue;
        };
        let holders: Vec<_> = reg
            .locations
            .get(&handle)
            .map(|ls| ls.iter().map(|l| l.node).collect())
            .unwrap_or_default();
        let good = reg.good_replicas(handle, chunk.version);
        let Some(source) = good
            .iter()
            .map(|l| l.node)
            .find(|n| busy.get(n).copied().unwrap_or(0) < per_server_max)
        else {
            continue;
        };
        let racks: Vec<&str> = good
            .iter()
            .filter_map(|l| reg.servers.get(&l.node))
            .map(|s| s.rack.as_str())
            .collect();
        let free: Vec<Candidate> = candidates
            .iter()
            .filter(|c| busy.get(&c.node).copied().unwrap_or(0) < per_server_max)
            .cloned()
            .collect();
        let Some(&target) = placement::choose(&free, 1, &holders, &racks).first() else {
            continue;
        };
        *busy.entry(source).or_default() += 1;
        *busy.entry(target).or_default() += 1;
        budget -= 1;
        plan.clones.push((handle, chunk.version, source, target));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::to_trim;

    #[test]
    fn trims_the_most_utilised_down_to_the_goal() {
        let holders = [(1, 0.2), (2, 0.9), (3, 0.5)];
        assert_eq!(to_trim(&holders, 1, |_| false), vec![2, 3]);
        assert_eq!(to_trim(&holders, 3, |_| false), Vec::<u64>::new());
        assert_eq!(to_trim(&holders, 4, |_| false), Vec::<u64>::new());
    }

    #[test]
    fn replicas_already_being_deleted_are_not_keepers() {
        // Two deletes are on their way; utilisation changed since, so a
        // fresh ranking would pick node 1 next. Nothing more may go.
        let holders = [(1, 0.9), (2, 0.1), (3, 0.1)];
        assert_eq!(to_trim(&holders, 1, |n| n != 1), Vec::<u64>::new());
        // One of two extra deletes is on its way: one more, not two.
        let holders = [(1, 0.9), (2, 0.5), (3, 0.1)];
        assert_eq!(to_trim(&holders, 1, |n| n == 1), vec![2]);
    }
}
