//! The chunkserver side of a master: `Register` and `Heartbeat` frames,
//! each answered by exactly one reply frame echoing its request id (the
//! contract of chunkd's master link).
//!
//! Every master takes reports, leader or not, so its registry is warm when
//! it becomes leader; only the leader assigns node ids and sends commands.
//! A follower answers `NotLeader` (the chunkserver keeps reporting).

use std::time::Instant;

use ringfs_wire::msg::{
    Body, DataDir, ErrorCode, ErrorReply, Heartbeat, HeartbeatReply, Register, RegisterReply,
};

use crate::node::Master;
use crate::registry::{REPLACE_STEP_ENTRIES, Registration};
use crate::types::{Done, Op};
use crate::{client_api, duties};

fn refuse(code: ErrorCode, message: impl Into<String>) -> Body {
    Body::ErrorReply(Box::new(ErrorReply {
        code,
        message: Some(message.into()),
        ..ErrorReply::default()
    }))
}

pub async fn register(master: &Master, r: Register, peer_node_id: u64) -> Body {
    let mut node_id = r.node_id;
    if node_id == 0 {
        // A fresh chunkserver: its id is committed, keyed by its first data
        // dir's identity, so a retried registration gets the same id.
        if !master.is_leader() {
            return client_api::not_leader_with(
                master,
                "reports taken; commands come from the leader",
            );
        }
        let Some(dir_id) = r.dirs.as_ref().and_then(|d| d.first()).map(|d| d.dir_id) else {
            return refuse(ErrorCode::BadRequest, "registration without a data dir");
        };
        match master.proposer.propose(Op::AssignNodeId { dir_id }).await {
            Ok(c) => match c.outcome {
                Ok(Done::NodeId(id)) => node_id = id,
                Ok(other) => {
                    return refuse(ErrorCode::Internal, format!("unexpected outcome {other:?}"));
                }
                Err(f) => return refuse(f.code(), f.to_string()),
            },
            Err(_) => {
                return client_api::not_leader_with(
                    master,
                    "reports taken; commands come from the leader",
                );
            }
        }
    } else if peer_node_id != 0 && peer_node_id != node_id {
        return refuse(
            ErrorCode::BadRequest,
            format!("connection authenticated as node {peer_node_id} registers as {node_id}"),
        );
    }
    let dirs = r.dirs.unwrap_or_default();
    let (capacity_bytes, used_bytes) = node_totals(r.capacity_bytes, r.used_bytes, &dirs);
    let registration = Registration {
        node_id,
        listen_addr: r.listen_addr.as_deref().unwrap_or(""),
        http_addr: r.http_addr.as_deref().unwrap_or(""),
        rack: r.rack.as_deref().unwrap_or(""),
        capacity_bytes,
        used_bytes,
    };
    let chunks = r.chunks.unwrap_or_default();
    master
        .registry()
        .register(&registration, &chunks, r.report_complete, Instant::now());
    if r.report_complete {
        // Before the reply: the chunkserver's next heartbeat, and every
        // lookup after it, find its report applied.
        let started = Instant::now();
        apply_replacements(master).await;
        tracing::info!(
            node_id,
            addr = registration.listen_addr,
            rack = registration.rack,
            chunks = chunks_reported(master, node_id),
            apply_ms = started.elapsed().as_millis() as u64,
            "chunkserver registered"
        );
    }
    Body::RegisterReply(Box::new(RegisterReply {
        node_id,
        epoch: master.epoch(),
        heartbeat_interval_ms: u32::try_from(master.tuning().heartbeat_interval_ms)
            .unwrap_or(u32::MAX),
        master_id: master.id,
    }))
}

/// Steps the registry's queued replacements (full reports, deaths) to
/// their end, one bounded step per hold of the registry lock, so lookups,
/// heartbeats and allocations get in between (`registry`, module docs).
pub async fn apply_replacements(master: &Master) {
    // Each step covers at least one part: this many finish 16 of them.
    const REPLACE_STEPS_MAX: usize = crate::pagedmap::PARTS * 16;
    let mut spent = Vec::new();
    for _ in 0..REPLACE_STEPS_MAX {
        let more = master
            .registry()
            .replace_step(REPLACE_STEP_ENTRIES, &mut spent);
        // Freed with the lock let go (`Registry::replace_step`).
        spent.clear();
        if !more {
            return;
        }
        tokio::task::yield_now().await;
    }
    // Still more (many at once): the duties tick goes on with them.
}

/// A node's capacity and use as it registers: its own totals, in which
/// data dirs sharing a filesystem count once (each dir reports its whole
/// filesystem); from a chunkserver that sends none (both 0: it predates
/// them), the sum of its dirs, which counts a shared filesystem once per
/// dir until its first heartbeat brings the totals.
fn node_totals(capacity_bytes: u64, used_bytes: u64, dirs: &[DataDir]) -> (u64, u64) {
    if capacity_bytes != 0 || used_bytes != 0 {
        return (capacity_bytes, used_bytes);
    }
    let sum = |f: fn(&DataDir) -> u64| dirs.iter().map(f).fold(0u64, u64::saturating_add);
    (sum(|d| d.capacity_bytes), sum(|d| d.used_bytes))
}

fn chunks_reported(master: &Master, node: u64) -> u64 {
    master
        .registry()
        .servers
        .get(&node)
        .map_or(0, |s| s.chunk_count)
}

/// A heartbeat's report is taken only for the node its connection speaks
/// for (`conn_node_id`: the handshake's id, or the one a registration on
/// the connection settled), as a registration's is: otherwise a
/// chunkserver could report chunks for, or keep alive, another node.
pub async fn heartbeat(master: &Master, h: Heartbeat, conn_node_id: u64) -> Body {
    if let Err(refusal) = heartbeat_speaks_for(conn_node_id, h.node_id) {
        return refusal;
    }
    let node = h.node_id;
    let known = {
        let mut reg = master.registry();
        let known = reg.heartbeat(
            node,
            h.added.as_deref().unwrap_or(&[]),
            h.removed.as_deref().unwrap_or(&[]),
            h.corrupt.as_deref().unwrap_or(&[]),
            Instant::now(),
        );
        if let Some(s) = reg.servers.get_mut(&node) {
            s.capacity_bytes = h.capacity_bytes;
            s.used_bytes = h.used_bytes;
            s.ops_in_flight = h.ops_in_flight;
            if let Some(scrub) = &h.scrub {
                s.scrub_unverified_bytes = scrub.bytes_unverified_beyond_period;
            }
        }
        known
    };
    if !known {
        // Unknown, or declared dead meanwhile: a fresh full report is needed.
        return refuse(
            ErrorCode::NotFound,
            format!("node {node} must register again"),
        );
    }
    for result in h.results.unwrap_or_default() {
        duties::command_result(master, node, &result);
    }
    if !master.is_leader() {
        return client_api::not_leader_with(master, "reports taken; commands come from the leader");
    }
    let commands = master.registry().take_commands(node);
    let extended =
        crate::lease::extend(master, node, h.extend_leases.as_deref().unwrap_or_default()).await;
    Body::HeartbeatReply(Box::new(HeartbeatReply {
        epoch: master.epoch(),
        commands: Some(commands),
        extended_leases: Some(extended),
    }))
}

fn heartbeat_speaks_for(conn_node_id: u64, node_id: u64) -> Result<(), Body> {
    if node_id == conn_node_id {
        return Ok(());
    }
    let why = if conn_node_id == 0 {
        format!("a heartbeat for node {node_id} on a connection not yet registered as any node")
    } else {
        format!("connection authenticated as node {conn_node_id} heartbeats as {node_id}")
    };
    Err(refuse(ErrorCode::BadRequest, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(capacity_bytes: u64, used_bytes: u64) -> DataDir {
        DataDir {
            capacity_bytes,
            used_bytes,
            healthy: true,
            ..DataDir::default()
        }
    }

    #[test]
    fn a_heartbeat_speaks_only_for_its_connections_node() {
        assert!(heartbeat_speaks_for(7, 7).is_ok());
        // Unregistered on both sides: the registry answers (NotFound).
        assert!(heartbeat_speaks_for(0, 0).is_ok());
        for (conn, claimed) in [(7, 8), (0, 8), (7, 0)] {
            match heartbeat_speaks_for(conn, claimed) {
                Err(Body::ErrorReply(e)) => {
                    assert_eq!(e.code, ErrorCode::BadRequest);
                    let message = e.message.unwrap_or_default();
                    assert!(message.contains(&claimed.to_string()), "{message}");
                }
                other => panic!("{conn} as {claimed}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_node_registers_with_its_own_totals_or_the_sum_of_its_dirs() {
        // Two dirs on one 10 GB filesystem: the node says 10, not 20.
        let dirs = [dir(10, 4), dir(10, 4)];
        assert_eq!(node_totals(10, 4, &dirs), (10, 4));
        // A chunkserver from before the totals: the dirs' sum.
        assert_eq!(node_totals(0, 0, &dirs), (20, 8));
        assert_eq!(node_totals(0, 0, &[]), (0, 0));
        assert_eq!(
            node_totals(0, 0, &[dir(u64::MAX, 1), dir(5, 1)]),
            (u64::MAX, 2),
            "no overflow on hostile figures"
        );
    }
}
