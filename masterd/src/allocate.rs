//! Allocation of new chunks (DESIGN §4): place the replicas, commit the
//! chunk with its first lease, create the replicas, grant the lease.
//!
//! The commit and the creation are two steps, so a leader can die between
//! them, or every chosen chunkserver can refuse for want of space (the
//! master's view of free space is a heartbeat old): the chunk then exists
//! in the namespace with a committed first lease, and no chunkserver has
//! it. A later `get_lease` finds no replica
//! and, only when it can prove that no replica was ever created (see
//! [`recreate_unborn`]), creates them afresh; otherwise the chunk is
//! reported missing like any lost chunk.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use ringfs_wire::msg::{Body, ChunkReport, CreateChunk, ErrorCode, ReplicaState};

use crate::chunks::LeaseRecord;
use crate::lease::{LeaseError, Located, addr_of, get_lease, grant, unreachable_outcome};
use crate::node::{Master, now_ns};
use crate::placement::{self, Candidate};
use crate::types::{Done, Fail, NodeId, Op, ReqId};

/// Allocates chunk `index` of file `inode` (or finds it, if a concurrent
/// writer won), creates its replicas and grants the first lease.
pub async fn allocate(
    master: &Master,
    req: ReqId,
    inode: u64,
    index: u64,
) -> Result<Located, LeaseError> {
    let (goal, existing) = {
        let state = master.shared.read();
        let node = state.ns.get(inode).ok_or(Fail::NotFound)?;
        let file = node.file().ok_or(Fail::IsDirectory)?;
        let existing = usize::try_from(index)
            .ok()
            .and_then(|i| file.chunks.get(i).copied());
        (node.replication, existing)
    };
    if let Some(handle) = existing {
        return get_lease(master, handle).await;
    }
    master.leases.note_leader(master.epoch(), Instant::now());
    let marked = master.leases.mark_allocating(inode, index);
    let chosen = place(
        master,
        inode,
        goal,
        placement::mix(inode).wrapping_add(index),
    )?;
    let duration = master.leases.duration;
    let committed = master
        .proposer
        .propose(Op::AllocateChunk {
            req,
            inode,
            index,
            replicas: chosen.clone(),
            now_ns: now_ns(),
            lease_duration_ms: duration.as_millis() as u64,
        })
        .await?;
    let (handle, version) = match committed.outcome? {
        Done::Chunk { handle, version } => (handle, version),
        Done::JoinedChunk { handle, .. } => {
            // Someone else allocated it first: join theirs.
            drop(marked);
            return get_lease(master, handle).await;
        }
        other => return unreachable_outcome(other),
    };
    assert_eq!(version, 1, "a new chunk starts at version 1");
    let turn = master.leases.grant_turn(handle).await;
    let epoch = master.epoch();
    let Creation { created, refused } =
        create_replicas(master, handle, version, &chosen, epoch).await;
    let primary = chosen[0];
    if !created.contains(&primary) {
        drop(turn);
        drop(marked);
        if let Some(why) = all_out_of_space(&created, &refused) {
            // Unborn until space is freed: a later allocate of this index
            // finds it and creates it then (`recreate_unborn`).
            return Err(LeaseError::NoSpace { why });
        }
        // The committed first lease names a primary that has no replica:
        // the next grant bumps the version and picks a live one.
        return get_lease(master, handle).await;
    }
    let lease = grant(master, handle, version, primary, &created, epoch).await?;
    let replicas = master.registry().good_replicas(handle, version).to_vec();
    Ok(Located {
        handle,
        version,
        replicas,
        lease: Some(lease),
    })
}

/// Chooses the chunkservers for a new chunk of `inode` (the first one is
/// the primary) among the live ones with room for it, or says why none can
/// be chosen (yet). `seed` orders equally full servers (`placement::choose`).
fn place(master: &Master, inode: u64, goal: u8, seed: u64) -> Result<Vec<NodeId>, LeaseError> {
    let (file_chunks, chunk_size_bytes) = {
        let state = master.shared.read();
        let node = state.ns.get(inode).ok_or(Fail::NotFound)?;
        let chunks = node.file().ok_or(Fail::IsDirectory)?.chunks.to_vec();
        (chunks, state.chunk_size_bytes)
    };
    let chosen = {
        let reg = master.registry();
        let mut per_node: HashMap<NodeId, u64> = HashMap::new();
        for h in &file_chunks {
            for l in reg.replicas(*h) {
                *per_node.entry(l.node).or_default() += 1;
            }
        }
        let live: Vec<Candidate> = reg
            .live_servers()
            .map(|s| Candidate::of(s, per_node.get(&s.node_id).copied().unwrap_or(0)))
            .collect();
        if let Some(why) = placement::out_of_space(&live, chunk_size_bytes) {
            // Chunkservers with room may not have registered yet.
            if !registrations_settled(master) {
                return Err(LeaseError::Unavailable {
                    retry_after: Duration::from_millis(200),
                    why: format!("{why}; waiting for registrations"),
                });
            }
            return Err(LeaseError::NoSpace { why });
        }
        let with_room: Vec<Candidate> = live
            .into_iter()
            .filter(|c| c.has_room(chunk_size_bytes))
            .collect();
        placement::choose(&with_room, usize::from(goal), &[], &[], seed)
    };
    if chosen.is_empty() {
        return Err(LeaseError::Unavailable {
            retry_after: Duration::from_secs(1),
            why: "no live chunkserver to place a chunk on".into(),
        });
    }
    // A new leader hears from every chunkserver that is alive within one
    // chunkserver timeout. Until then a short placement most likely means
    // "not registered yet", and a chunk created short would be acknowledged
    // with fewer copies than asked for; afterwards it means the cluster
    // really is short, and the write goes on degraded (re-replication
    // makes up once servers return).
    if chosen.len() < usize::from(goal) && !registrations_settled(master) {
        return Err(LeaseError::Unavailable {
            retry_after: Duration::from_millis(200),
            why: format!(
                "{} of {goal} chunkservers live; waiting for registrations",
                chosen.len()
            ),
        });
    }
    if chosen.len() < usize::from(goal) {
        tracing::warn!(
            inode,
            placed = chosen.len(),
            goal,
            "placing a chunk below its goal: not enough live chunkservers with room"
        );
    }
    Ok(chosen)
}

/// True once this leader has led for a chunkserver timeout: every
/// chunkserver that is alive has registered with it by then.
fn registrations_settled(master: &Master) -> bool {
    let grace = Duration::from_millis(master.tuning().chunkserver_timeout_ms);
    master.leases.leading_for(Instant::now()) >= grace
}

/// What `create_replicas` did.
struct Creation {
    /// Nodes that created the chunk.
    created: Vec<NodeId>,
    /// Nodes that did not, with the code they answered (or the link's).
    refused: Vec<(NodeId, ErrorCode)>,
}

/// `Some(why)` when no node created a chunk and every one of them said it
/// is out of space (the master's view of their free space was stale).
fn all_out_of_space(created: &[NodeId], refused: &[(NodeId, ErrorCode)]) -> Option<String> {
    let full = !refused.is_empty() && refused.iter().all(|(_, c)| *c == ErrorCode::NoSpace);
    (created.is_empty() && full).then(|| {
        let nodes: Vec<NodeId> = refused.iter().map(|(n, _)| *n).collect();
        format!("chunkservers {nodes:?} have no data dir with room for a new chunk")
    })
}

/// Sends `CreateChunk` to every chosen node; the ones that created it are
/// entered in the registry at once (their next report confirms it).
async fn create_replicas(
    master: &Master,
    handle: u64,
    version: u64,
    chosen: &[NodeId],
    epoch: u64,
) -> Creation {
    let creates = chosen.iter().map(|&node| {
        let body = Body::CreateChunk(Box::new(CreateChunk {
            epoch,
            handle,
            version,
        }));
        let addr = addr_of(master, node);
        async move {
            match addr {
                Some(a) => (
                    node,
                    master
                        .cs
                        .command(&a, &body)
                        .await
                        .map_err(|e| (e.code(), e.to_string())),
                ),
                None => (
                    node,
                    Err((ErrorCode::Unavailable, "not registered".to_string())),
                ),
            }
        }
    });
    let mut created = Vec::new();
    let mut refused = Vec::new();
    for (node, result) in join_all(creates).await {
        match result {
            Ok(()) => created.push(node),
            Err((code, e)) => {
                tracing::warn!(handle, node, error = %e, "create chunk failed; re-replication will make up");
                refused.push((node, code));
            }
        }
    }
    let mut reg = master.registry();
    for &node in &created {
        let report = ChunkReport {
            handle,
            version,
            length_bytes: 0,
            state: ReplicaState::Ok,
        };
        reg.heartbeat(
            node,
            std::slice::from_ref(&report),
            &[],
            &[],
            Instant::now(),
        );
    }
    drop(reg);
    assert_eq!(created.len() + refused.len(), chosen.len());
    Creation { created, refused }
}

/// Why a chunk with no replica may (or may not) be created afresh.
#[derive(Debug, PartialEq, Eq)]
pub enum Unborn {
    /// Provably never created anywhere: create it.
    Recreate,
    /// Not provable (yet): report it missing.
    Missing(&'static str),
}

/// Decides whether a chunk that no chunkserver reports was never created.
///
/// A leader commits `AllocateChunk` (with the first lease, naming the
/// primary) and only then creates the replicas; if it dies in between, the
/// chunk has no replica and no write can ever have been acknowledged on it,
/// because every write goes through the primary and is acknowledged only
/// once the primary holds it durably. So the chunk is unborn when:
/// - it is still at version 1 and its last committed lease is the
///   allocation's (version 1): no later grant ever found a replica;
/// - the recorded primary is live and has sent this leader its complete
///   chunk report, and nobody reports any replica of it, in any state;
/// - the file's committed length does not reach into it (a completed
///   file's chunk is never replaced by zeros);
/// - this leader has led for a chunkserver timeout, so every live server
///   has reported.
///
/// A chunk that had replicas which were all lost while its file was still
/// open also passes; its data was lost with them, and what changes is that
/// the writer can go on instead of failing forever.
pub fn judge_unborn(
    version: u64,
    record: Option<LeaseRecord>,
    reported_anywhere: bool,
    primary_reported: bool,
    chunk_start_bytes: u64,
    file_length_bytes: u64,
    settled: bool,
) -> Unborn {
    let Some(record) = record else {
        return Unborn::Missing("no lease was ever recorded for it");
    };
    if version != 1 || record.version != 1 {
        return Unborn::Missing("it was leased after its allocation");
    }
    if reported_anywhere {
        return Unborn::Missing("some replica of it is reported");
    }
    if file_length_bytes > chunk_start_bytes {
        return Unborn::Missing("its file's committed length covers it");
    }
    if !settled {
        return Unborn::Missing("chunkservers may not all have reported yet");
    }
    if !primary_reported {
        return Unborn::Missing("its first primary has not reported");
    }
    Unborn::Recreate
}

/// Creates the replicas of a chunk whose allocation committed but whose
/// replicas were never created ([`judge_unborn`]). Called by `get_lease`
/// holding the chunk's grant turn, when no good replica exists. Returns
/// why not when it may not: `NoSpace` when space is what is missing,
/// otherwise `Unavailable`.
pub async fn recreate_unborn(
    master: &Master,
    handle: u64,
    version: u64,
    record: Option<LeaseRecord>,
) -> Result<(), LeaseError> {
    let unavailable = |why: &str| LeaseError::Unavailable {
        retry_after: Duration::from_secs(1),
        why: format!("no live replica of chunk {handle} at version {version} ({why})"),
    };
    let found = find_unborn(master, handle, version, record);
    let (inode, goal) = found.map_err(unavailable)?;
    let chosen = match place(master, inode, goal, placement::mix(handle)) {
        Ok(chosen) => chosen,
        Err(no_space @ LeaseError::NoSpace { .. }) => return Err(no_space),
        Err(_) => return Err(unavailable("no chunkserver to place it on")),
    };
    tracing::warn!(
        handle,
        inode,
        nodes = ?chosen,
        "creating the replicas of a chunk that was allocated but never created"
    );
    let Creation { created, refused } =
        create_replicas(master, handle, version, &chosen, master.epoch()).await;
    if let Some(why) = all_out_of_space(&created, &refused) {
        return Err(LeaseError::NoSpace { why });
    }
    if created.is_empty() {
        return Err(unavailable("no chunkserver created it"));
    }
    master
        .metrics
        .unborn_chunks_created
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The chunk's file and replication goal when [`judge_unborn`] says it may
/// be created afresh; otherwise why not.
fn find_unborn(
    master: &Master,
    handle: u64,
    version: u64,
    record: Option<LeaseRecord>,
) -> Result<(u64, u8), &'static str> {
    let (inode, chunk_start_bytes, file_length_bytes, goal) = {
        let state = master.shared.read();
        let Some(chunk) = state.chunks.get(handle) else {
            return Err("the chunk is gone");
        };
        let Some(node) = state.ns.get(chunk.inode) else {
            return Err("its file is gone");
        };
        let Some(file) = node.file() else {
            return Err("its inode is not a file");
        };
        let start = u64::from(chunk.index).saturating_mul(state.chunk_size_bytes);
        (chunk.inode, start, file.length_bytes, node.replication)
    };
    let (reported_anywhere, primary_reported) = {
        let reg = master.registry();
        let anywhere = reg.locations.get(&handle).is_some_and(|r| !r.is_empty());
        let primary = record.is_some_and(|r| reg.fully_reported(r.primary));
        (anywhere, primary)
    };
    let verdict = judge_unborn(
        version,
        record,
        reported_anywhere,
        primary_reported,
        chunk_start_bytes,
        file_length_bytes,
        registrations_settled(master),
    );
    match verdict {
        Unborn::Missing(why) => Err(why),
        Unborn::Recreate => Ok((inode, goal)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_lease() -> Option<LeaseRecord> {
        Some(LeaseRecord {
            primary: 3,
            version: 1,
            granted_at_ms: 1,
            duration_ms: 60_000,
        })
    }

    #[test]
    fn no_space_only_when_every_chosen_server_said_so() {
        use ErrorCode::{NoSpace, Unavailable};
        let why = all_out_of_space(&[], &[(1, NoSpace), (2, NoSpace)]).expect("all full");
        assert!(why.contains("[1, 2]"), "{why}");
        // One created it, or one failed for another reason: not a space problem.
        assert_eq!(all_out_of_space(&[3], &[(1, NoSpace), (2, NoSpace)]), None);
        assert_eq!(
            all_out_of_space(&[], &[(1, NoSpace), (2, Unavailable)]),
            None
        );
        assert_eq!(all_out_of_space(&[], &[]), None);
    }

    #[test]
    fn only_a_provably_unborn_chunk_is_recreated() {
        let chunk = 64 << 20;
        assert_eq!(
            judge_unborn(1, first_lease(), false, true, chunk, chunk, true),
            Unborn::Recreate
        );
        let cases = [
            judge_unborn(1, None, false, true, chunk, 0, true),
            judge_unborn(2, first_lease(), false, true, chunk, 0, true),
            judge_unborn(1, first_lease(), true, true, chunk, 0, true),
            judge_unborn(1, first_lease(), false, false, chunk, 0, true),
            judge_unborn(1, first_lease(), false, true, chunk, chunk + 1, true),
            judge_unborn(1, first_lease(), false, true, chunk, 0, false),
        ];
        for (i, verdict) in cases.iter().enumerate() {
            assert!(
                matches!(verdict, Unborn::Missing(_)),
                "case {i}: {verdict:?}"
            );
        }
        let mut regranted = first_lease();
        if let Some(r) = regranted.as_mut() {
            r.version = 2;
        }
        assert!(matches!(
            judge_unborn(1, regranted, false, true, chunk, 0, true),
            Unborn::Missing(_)
        ));
    }
}
