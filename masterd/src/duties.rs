//! The masters' background duties, once per tick: declare silent
//! chunkservers dead, walk the next slice of the chunk pass
//! (`crate::chunkscan`: health counts on every master; on the leader, the
//! replicas to delete and the chunks to re-replicate), purge trash past
//! retention, and start clones for the most urgent chunks below their goal
//! (fewest live replicas first, then longest exposed; throttled per
//! chunkserver and cluster-wide). Deletes and clones reach chunkservers in
//! heartbeat replies.
//!
//! Deletion is conservative: a replica is only deleted when it is orphaned
//! (its handle was allocated and is no longer in the chunk table), stale
//! while good replicas exist, corrupt once the goal is met again by good
//! ones, or in excess of the goal. Handles not yet
//! allocated, and chunks whose version changed within the last two
//! heartbeats (or is changing now), are left alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ringfs_wire::msg::{
    ChunkCommand, CloneChunk, CommandEnvelope, CommandResult, DeleteChunk, DeleteReason, Replica,
};

use crate::chunkscan::{self, CloneOrder, Delete, Scan, View};
use crate::node::{Master, now_ms};
use crate::pagedmap::PARTS;
use crate::types::{NodeId, Op, ReqId};

pub const TICK: Duration = Duration::from_millis(500);
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
/// Lock holds per tick for the chunk pass: every part, so an empty or small
/// table still finishes its pass in one tick.
const SCAN_STEPS_PER_TICK_MAX: usize = PARTS;

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
    deletes: HashMap<(NodeId, u64), Instant>,
    pub scan: Scan,
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

/// The chunk pass as /metrics and /status show it: (passes finished, the
/// last one's counts and duration, how long ago it finished, chunks queued
/// for re-replication).
pub fn scan_report(master: &Master) -> (u64, Option<chunkscan::PassSummary>, usize) {
    with(master, |d| {
        (d.scan.passes, d.scan.last, d.scan.needed.len())
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
        for node in &dead {
            tracing::warn!(node, "chunkserver silent for {timeout:?}: dead");
        }
        // The dead's replicas (hidden from lookups already), in bounded
        // steps; the chunk pass judges only once they are gone.
        let started = Instant::now();
        crate::cslink::apply_replacements(&master).await;
        if !dead.is_empty() {
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "replicas of dead chunkservers dropped"
            );
        }
        master.leases.sweep(now);
        // Only once this leader has applied its own term's first entry, so
        // everything earlier leaders committed: GC judged from a state still
        // catching up would take new chunks for orphans. Every master walks
        // the chunk pass for its health counts; only this one acts on it.
        let acting = master.leader_ready();
        if acting {
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
        }
        let deletes = scan_slice(&master, now);
        if acting {
            send_deletes(&master, deletes, now);
            start_clones(&master, now);
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

fn settle_ms(master: &Master) -> u64 {
    master
        .tuning()
        .heartbeat_interval_ms
        .saturating_mul(2)
        .saturating_add(VERSION_SETTLE_SLACK.as_millis() as u64)
}

/// Walks this tick's share of the chunk pass: parts until
/// [`chunkscan::SCAN_TIME_PER_TICK`] is spent, one part of the tables per
/// hold of the locks, so a commit or a heartbeat never waits for more than
/// one part (about 3 ms at 10 M chunks). Returns the replicas the pass
/// would delete.
fn scan_slice(master: &Master, now: Instant) -> Vec<Delete> {
    let wall_ms = now_ms();
    let settle_ms = settle_ms(master);
    let mut deletes = Vec::new();
    let started = Instant::now();
    for _ in 0..SCAN_STEPS_PER_TICK_MAX {
        if started.elapsed() >= chunkscan::SCAN_TIME_PER_TICK {
            break;
        }
        let state = master.shared.read();
        let reg = master.registry();
        let mut d = master.duties.lock().unwrap_or_else(|e| e.into_inner());
        // A table half replaced would show replicas missing or left over.
        if !d.scan.due(now) || reg.replacing() {
            break;
        }
        let Duties {
            scan,
            deletes: pending,
            ..
        } = &mut *d;
        let view = View {
            state: &state,
            reg: &reg,
            now,
            wall_ms,
            settle_ms,
            granting: &|h| master.leases.granting(h),
            leased: &|h| master.leases.live(h, now).is_some(),
            deleting: &|n, h| pending.contains_key(&(n, h)),
        };
        scan.step(&view, &mut deletes);
    }
    deletes
}

/// Queues delete commands, grouped by chunkserver and reason.
fn send_deletes(master: &Master, deletes: Vec<Delete>, now: Instant) {
    if deletes.is_empty() {
        return;
    }
    let mut by_node: HashMap<NodeId, Vec<(u64, DeleteReason)>> = HashMap::new();
    for (node, handle, reason) in deletes {
        by_node.entry(node).or_default().push((handle, reason));
    }
    let epoch = master.epoch();
    let mut reg = master.registry();
    for (node, items) in by_node {
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
}

/// Forgets clones and deletes that took too long, then starts clones for
/// the most urgent chunks in the pass's queue within the throttles.
fn start_clones(master: &Master, now: Instant) {
    let tuning = master.tuning();
    let orders: Vec<CloneOrder> = {
        let state = master.shared.read();
        let reg = master.registry();
        let mut d = master.duties.lock().unwrap_or_else(|e| e.into_inner());
        let Duties {
            scan,
            clones,
            deletes,
            clones_failed,
            ..
        } = &mut *d;
        clones.retain(|_, c| {
            let alive = now.duration_since(c.started) < CLONE_TIMEOUT && reg.is_live(c.target);
            if !alive {
                *clones_failed += 1;
            }
            alive
        });
        deletes.retain(|_, at| now.duration_since(*at) < DELETE_RETRY);
        let mut busy: HashMap<NodeId, usize> = HashMap::new();
        for c in clones.values() {
            *busy.entry(c.source).or_default() += 1;
            *busy.entry(c.target).or_default() += 1;
        }
        let budget = (tuning.rereplication_cluster_max as usize).saturating_sub(clones.len());
        let view = View {
            state: &state,
            reg: &reg,
            now,
            wall_ms: now_ms(),
            settle_ms: settle_ms(master),
            granting: &|h| master.leases.granting(h),
            leased: &|h| master.leases.live(h, now).is_some(),
            deleting: &|n, h| deletes.contains_key(&(n, h)),
        };
        scan.plan_clones(
            &view,
            budget,
            tuning.rereplication_per_chunkserver_max as usize,
            &mut busy,
            |h| clones.contains_key(&h),
        )
    };
    if orders.is_empty() {
        return;
    }
    let epoch = master.epoch();
    let mut reg = master.registry();
    for (handle, version, source, target) in orders {
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
