//! The client API (master.fbs): namespace operations, chunk lookup and
//! allocation, leases, bad-replica reports, admin status and fsck.
//!
//! Reads are answered from the applied state (waiting, bounded, for a
//! client's `min_applied_index`); mutations go through the proposer and are
//! answered after they are committed and applied.

use std::time::{Duration, Instant};

use ringfs_wire::msg::{
    Ack, AdminStatusReply, Attr, AttrReply, Body, ChunkLocation, ChunkLocationReply,
    ChunkserverState, ChunkserverStatus, DeleteReply, DirEntry, ErrorCode, ErrorReply, FsckChunk,
    FsckFile, FsckReply, GetChunksReply, InodeKind, ListDirReply, ListTrashReply, MasterRole,
    MasterStatus, Replica, ReplicaState, RequestId, SetReplicationReply,
    TrashEntry as WireTrashEntry,
};

use crate::allocate;
use crate::lease::{self, LeaseError, Located};
use crate::metrics;
use crate::namespace::{Inode, Kind};
use crate::node::{Master, now_ms, now_ns};
use crate::proposer::ProposeError;
use crate::registry::Liveness;
use crate::state::State;
use crate::types::{Done, Fail, OWNER_BYTES_MAX, Op, ReqId};

/// Longest wait for a read's `min_applied_index`.
pub const MIN_APPLIED_WAIT: Duration = Duration::from_secs(2);
/// Upper bound on entries in one ListDir / ListTrash / GetChunks / Fsck reply.
pub const LIST_LIMIT_MAX: u32 = 10_000;
/// Files examined per Fsck call (paged beyond that).
pub const FSCK_FILES_PER_CALL_MAX: u32 = 10_000;
/// Work per Fsck call: one unit per file or directory walked plus one per
/// chunk examined. A call holds the state's read lock (and the registry's)
/// throughout; this bounds it where the file count does not (empty
/// directories, files of many chunks).
pub const FSCK_WORK_PER_CALL_MAX: u64 = 1_000_000;

fn error(code: ErrorCode, message: impl Into<String>) -> Body {
    Body::ErrorReply(Box::new(ErrorReply {
        code,
        message: Some(message.into()),
        ..ErrorReply::default()
    }))
}

fn not_leader(master: &Master) -> Body {
    not_leader_with(master, &format!("master {} is not the leader", master.id))
}

/// `NotLeader` (`ReadOnlyShadow` on a shadow) with the leader's id and
/// client address, when known.
pub fn not_leader_with(master: &Master, message: &str) -> Body {
    let (hint, addr) = master.leader_hint();
    not_leader_to(master, message, hint, addr)
}

fn not_leader_to(master: &Master, message: &str, hint: u64, addr: String) -> Body {
    Body::ErrorReply(Box::new(ErrorReply {
        code: if master.is_shadow() {
            ErrorCode::ReadOnlyShadow
        } else {
            ErrorCode::NotLeader
        },
        message: Some(message.to_string()),
        leader_hint: hint,
        leader_addr: Some(addr),
        ..ErrorReply::default()
    }))
}

/// `Unavailable`: retry after `retry_after_ms`.
fn unavailable(message: impl Into<String>, retry_after_ms: u32) -> Body {
    Body::ErrorReply(Box::new(ErrorReply {
        code: ErrorCode::Unavailable,
        message: Some(message.into()),
        retry_after_ms,
        ..ErrorReply::default()
    }))
}

fn fail(f: Fail) -> Body {
    error(f.code(), f.to_string())
}

fn propose_error(master: &Master, e: ProposeError) -> Body {
    match e {
        // The leader the proposer names goes first: a handover's target is
        // known before openraft here hears from it.
        ProposeError::NotLeader { leader } => {
            let named = leader
                .filter(|&l| l != master.id)
                .and_then(|l| Some((l, master.config.master(l)?.client_addr.clone())));
            match named {
                Some((to, addr)) => not_leader_to(
                    master,
                    &format!("master {} is not the leader", master.id),
                    to,
                    addr,
                ),
                None => not_leader(master),
            }
        }
        ProposeError::Busy => Body::ErrorReply(Box::new(ErrorReply {
            code: ErrorCode::Busy,
            message: Some("proposal queue full".into()),
            retry_after_ms: 10,
            ..ErrorReply::default()
        })),
        ProposeError::Stopped(why) => error(ErrorCode::Unavailable, why),
        ProposeError::Unavailable(why) => unavailable(why, 20),
    }
}

fn lease_error(master: &Master, e: LeaseError) -> Body {
    match e {
        LeaseError::Propose(p) => propose_error(master, p),
        LeaseError::Fail(f) => fail(f),
        LeaseError::Unavailable { retry_after, why } => Body::ErrorReply(Box::new(ErrorReply {
            code: lease::error_code(&LeaseError::Unavailable {
                retry_after,
                why: String::new(),
            }),
            message: Some(why),
            retry_after_ms: u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX),
            ..ErrorReply::default()
        })),
        LeaseError::NoSpace { why } => error(ErrorCode::NoSpace, why),
    }
}

fn req_of(r: Option<RequestId>) -> ReqId {
    r.map_or(ReqId::default(), |r| ReqId {
        client_id: r.client_id,
        seq: r.seq,
    })
}

fn owner_of(o: Option<String>) -> String {
    let mut o = o.unwrap_or_default();
    if o.is_empty() {
        o.push_str("nobody");
    }
    // `truncate` panics inside a multi-byte char: cut at the boundary below.
    o.truncate(o.floor_char_boundary(OWNER_BYTES_MAX));
    o
}

pub fn attr(state: &State, ino: u64, inode: &Inode) -> Attr {
    let (kind, length_bytes, chunk_count, complete) = match &inode.kind {
        Kind::File(f) => (
            InodeKind::File,
            f.length_bytes,
            f.chunks.len() as u64,
            f.complete,
        ),
        Kind::Dir(d) => (InodeKind::Directory, 0, d.children.len() as u64, true),
    };
    Attr {
        inode: ino,
        kind,
        length_bytes,
        replication: inode.replication,
        mode: inode.mode,
        owner: Some(state.ns.owner_name(inode.owner).to_string()),
        mtime_ns: inode.mtime_ns,
        ctime_ns: inode.ctime_ns,
        chunk_count,
        complete,
    }
}

fn attr_reply(master: &Master, ino: u64) -> Body {
    let state = master.shared.read();
    match state.ns.get(ino) {
        Some(inode) => Body::AttrReply(Box::new(AttrReply {
            attr: Some(Box::new(attr(&state, ino, inode))),
            stamp: Some(master.stamp()),
        })),
        None => fail(Fail::NotFound),
    }
}

/// Commits `op` and turns its outcome into a reply with `reply`.
async fn mutate(master: &Master, op: Op, reply: impl FnOnce(Done) -> Body) -> Body {
    if !master.is_leader() {
        return not_leader(master);
    }
    if let Err(refusal) = bounded(&op) {
        return refusal;
    }
    match master.proposer.propose(op).await {
        Ok(c) => match c.outcome {
            Ok(done) => reply(done),
            Err(f) => fail(f),
        },
        Err(e) => propose_error(master, e),
    }
}

/// The refusal of an op whose client-supplied fields are over their
/// bounds; such an op is never proposed ([`Op::check_bounds`]).
fn bounded(op: &Op) -> Result<(), Body> {
    op.check_bounds()
        .map_err(|e| error(Fail::TooLarge.code(), format!("{} refused: {e}", op.kind())))
}

fn stamp_ack(master: &Master) -> Body {
    Body::Ack(Box::new(Ack {
        stamp: Some(master.stamp()),
    }))
}

fn inode_of(done: &Done) -> u64 {
    match done {
        Done::Inode(i) => *i,
        _ => 0,
    }
}

/// Kind name for metrics.
pub fn kind_name(body: &Body) -> &'static str {
    match body {
        Body::Mkdir(_) => "mkdir",
        Body::Create(_) => "create",
        Body::Stat(_) => "stat",
        Body::ListDir(_) => "list_dir",
        Body::Rename(_) => "rename",
        Body::Delete(_) => "delete",
        Body::ListTrash(_) => "list_trash",
        Body::RestoreFromTrash(_) => "restore",
        Body::Purge(_) => "purge",
        Body::SetReplication(_) => "set_replication",
        Body::CompleteFile(_) => "complete_file",
        Body::GetChunks(_) => "get_chunks",
        Body::AllocateChunk(_) => "allocate_chunk",
        Body::GetLease(_) => "get_lease",
        Body::ReportBadReplica(_) => "report_bad_replica",
        Body::AdminStatus(_) => "admin_status",
        Body::Fsck(_) => "fsck",
        Body::AdminFailover(_) | Body::AdminMembership(_) | Body::AdminDecommission(_) => {
            "admin_other"
        }
        _ => "other",
    }
}

pub async fn handle(master: &Master, body: Body) -> Body {
    let kind = kind_name(&body);
    let started = std::time::Instant::now();
    let reply = dispatch(master, body).await;
    let ok = !matches!(reply, Body::ErrorReply(_));
    master.metrics.answered(kind, ok, started.elapsed());
    reply
}

async fn dispatch(master: &Master, body: Body) -> Body {
    let retention_ms = master.tuning().trash_retention_secs.saturating_mul(1000);
    match body {
        Body::Mkdir(m) => {
            let op = Op::Mkdir {
                req: req_of(m.req),
                path: m.path.unwrap_or_default(),
                parents: m.parents,
                mode: m.mode,
                owner: owner_of(m.owner),
                now_ns: now_ns(),
            };
            mutate(master, op, |d| attr_reply(master, inode_of(&d))).await
        }
        Body::Create(c) => {
            let op = Op::Create {
                req: req_of(c.req),
                path: c.path.unwrap_or_default(),
                replication: c.replication,
                exclusive: c.exclusive,
                mode: c.mode,
                owner: owner_of(c.owner),
                now_ns: now_ns(),
                trash_retention_ms: retention_ms,
            };
            mutate(master, op, |d| attr_reply(master, inode_of(&d))).await
        }
        Body::Rename(r) => {
            let op = Op::Rename {
                req: req_of(r.req),
                src: r.src.unwrap_or_default(),
                dst: r.dst.unwrap_or_default(),
                replace: r.replace,
                now_ns: now_ns(),
                trash_retention_ms: retention_ms,
            };
            mutate(master, op, |_| stamp_ack(master)).await
        }
        Body::Delete(d) => {
            let now = now_ms();
            let op = Op::Delete {
                req: req_of(d.req),
                path: d.path.unwrap_or_default(),
                recursive: d.recursive,
                now_ms: now,
                purge_at_ms: now.saturating_add(retention_ms),
            };
            mutate(master, op, |done| {
                let trash_id = if let Done::Trashed(t) = done { t } else { 0 };
                Body::DeleteReply(Box::new(DeleteReply {
                    trash_id,
                    stamp: Some(master.stamp()),
                }))
            })
            .await
        }
        Body::RestoreFromTrash(r) => {
            let op = Op::Restore {
                req: req_of(r.req),
                trash_id: r.trash_id,
                dst_path: r.dst_path.unwrap_or_default(),
                now_ns: now_ns(),
            };
            mutate(master, op, |d| attr_reply(master, inode_of(&d))).await
        }
        Body::Purge(p) => {
            let op = Op::Purge {
                req: req_of(p.req),
                trash_id: p.trash_id,
                now_ms: now_ms(),
            };
            mutate(master, op, |_| stamp_ack(master)).await
        }
        Body::SetReplication(s) => {
            let op = Op::SetReplication {
                req: req_of(s.req),
                path: s.path.unwrap_or_default(),
                replication: s.replication,
                recursive: s.recursive,
            };
            mutate(master, op, |d| {
                let files_changed = if let Done::Changed(n) = d { n } else { 0 };
                Body::SetReplicationReply(Box::new(SetReplicationReply {
                    files_changed,
                    stamp: Some(master.stamp()),
                }))
            })
            .await
        }
        Body::CompleteFile(c) => {
            let op = Op::CompleteFile {
                req: req_of(c.req),
                inode: c.inode,
                length_bytes: c.length_bytes,
                now_ns: now_ns(),
            };
            mutate(master, op, |d| attr_reply(master, inode_of(&d))).await
        }
        Body::Stat(s) => {
            if let Some(refusal) = read_ready(master, s.min_applied_index).await {
                return refusal;
            }
            let state = master.shared.read();
            match state.ns.lookup(s.path.as_deref().unwrap_or("")) {
                Ok(ino) => match state.ns.get(ino) {
                    Some(inode) => Body::AttrReply(Box::new(AttrReply {
                        attr: Some(Box::new(attr(&state, ino, inode))),
                        stamp: Some(master.stamp()),
                    })),
                    None => fail(Fail::NotFound),
                },
                Err(f) => fail(f),
            }
        }
        Body::ListDir(l) => {
            if let Some(refusal) = read_ready(master, l.min_applied_index).await {
                return refusal;
            }
            list_dir(
                master,
                l.path.as_deref().unwrap_or(""),
                l.start_after.as_deref().unwrap_or(""),
                l.limit,
            )
        }
        Body::ListTrash(l) => {
            if let Some(refusal) = read_ready(master, 0).await {
                return refusal;
            }
            let state = master.shared.read();
            let limit = l.limit.clamp(1, LIST_LIMIT_MAX) as usize;
            let mut entries = Vec::new();
            let mut more = false;
            for (&id, e) in state.ns.trash.range(l.start_after.saturating_add(1)..) {
                if entries.len() == limit {
                    more = true;
                    break;
                }
                let attr = state
                    .ns
                    .get(e.inode)
                    .map(|i| Box::new(attr(&state, e.inode, i)));
                entries.push(WireTrashEntry {
                    trash_id: id,
                    original_path: Some(e.original_path.clone()),
                    deleted_at_ms: e.deleted_at_ms,
                    purge_at_ms: e.purge_at_ms,
                    attr,
                });
            }
            Body::ListTrashReply(Box::new(ListTrashReply {
                entries: Some(entries),
                more,
                stamp: Some(master.stamp()),
            }))
        }
        Body::GetChunks(g) => {
            if let Some(refusal) = read_ready(master, g.min_applied_index).await {
                return refusal;
            }
            get_chunks(master, g.inode, g.first_index, g.count)
        }
        Body::AllocateChunk(a) => {
            if let Some(refusal) = lease_ready(master) {
                return refusal;
            }
            match allocate::allocate(master, req_of(a.req), a.inode, a.index).await {
                Ok(located) => location_reply(master, a.index, located),
                Err(e) => lease_error(master, e),
            }
        }
        Body::GetLease(g) => {
            if let Some(refusal) = lease_ready(master) {
                return refusal;
            }
            let index = master
                .shared
                .read()
                .chunks
                .get(g.handle)
                .map_or(0, |c| u64::from(c.index));
            match lease::get_lease(master, g.handle).await {
                Ok(located) => location_reply(master, index, located),
                Err(e) => lease_error(master, e),
            }
        }
        Body::ReportBadReplica(r) => {
            report_bad_replica(master, &r);
            stamp_ack(master)
        }
        Body::AdminStatus(_) => {
            // The leader's view covers every member; a follower's only itself.
            if let Some(refusal) = read_ready(master, 0).await {
                return refusal;
            }
            admin_status(master)
        }
        Body::Fsck(f) => {
            if let Some(refusal) = read_ready(master, 0).await {
                return refusal;
            }
            fsck(
                master,
                f.path.as_deref().unwrap_or("/"),
                f.start_after.as_deref().unwrap_or(""),
                f.limit,
            )
        }
        Body::AdminDecommission(d) => {
            let mut reg = master.registry();
            match reg.servers.get_mut(&d.node_id) {
                Some(s) if s.liveness == Liveness::Live => {
                    s.liveness = Liveness::Decommissioning;
                    drop(reg);
                    stamp_ack(master)
                }
                Some(_) => stamp_ack(master),
                None => fail(Fail::NotFound),
            }
        }
        Body::AdminFailover(f) => {
            if !master.is_leader() {
                return not_leader(master);
            }
            match crate::failover::hand_over(master, f.to).await {
                Ok(_) => stamp_ack(master),
                Err(why) => unavailable(why, 100),
            }
        }
        Body::AdminMembership(m) => {
            if !master.is_leader() {
                return not_leader(master);
            }
            match crate::failover::change(master, m.op, m.node_id).await {
                Ok(()) => stamp_ack(master),
                Err(why) => error(ErrorCode::BadRequest, why),
            }
        }
        other => error(
            ErrorCode::BadRequest,
            format!(
                "{:?} is not a client request",
                ringfs_wire::msg::MessageKind::of_body(&other)
            ),
        ),
    }
}

/// Leases and allocations need the leader's state to hold every earlier
/// leader's grants (`Master::leader_ready`), or it could name a second
/// primary; just after an election that takes one commit.
fn lease_ready(master: &Master) -> Option<Body> {
    if !master.is_leader() {
        return Some(not_leader(master));
    }
    if !master.leader_ready() {
        return Some(unavailable("a new leader is catching up", 10));
    }
    None
}

/// Readies a read. The leader answers linearizably
/// (`Master::linearize`). A follower sends the client to the leader while
/// one is known, and answers itself only while none is (an election), so
/// reads go on through a failover. A shadow always answers. Followers and
/// shadows answer from their applied state, stamped with how far behind
/// they are, and never older than the client's `min_applied_index`
/// (read-your-writes; the client passes the newest index it has seen).
/// `Some` is the refusal to send instead.
async fn read_ready(master: &Master, min_applied_index: u64) -> Option<Body> {
    let leading = master.is_leader();
    if !leading && !master.is_shadow() && master.leader_hint().0 != 0 {
        return Some(not_leader(master));
    }
    if leading && let Err(why) = master.linearize().await {
        return Some(unavailable(why, 20));
    }
    if !master
        .wait_applied(min_applied_index, MIN_APPLIED_WAIT)
        .await
    {
        return Some(behind(master, min_applied_index));
    }
    None
}

fn behind(master: &Master, wanted: u64) -> Body {
    Body::ErrorReply(Box::new(ErrorReply {
        code: ErrorCode::Unavailable,
        message: Some(format!(
            "applied index {} is behind the requested {wanted}",
            master
                .shared
                .applied_index
                .load(std::sync::atomic::Ordering::Acquire)
        )),
        retry_after_ms: 100,
        ..ErrorReply::default()
    }))
}

fn list_dir(master: &Master, path: &str, start_after: &str, limit: u32) -> Body {
    let state = master.shared.read();
    let ino = match state.ns.lookup(path) {
        Ok(i) => i,
        Err(f) => return fail(f),
    };
    let Some(dir) = state.ns.get(ino).and_then(Inode::dir) else {
        return fail(Fail::NotDirectory);
    };
    let limit = limit.clamp(1, LIST_LIMIT_MAX) as usize;
    let range = if start_after.is_empty() {
        dir.children.range::<str, _>(..)
    } else {
        dir.children.range::<str, _>((
            std::ops::Bound::Excluded(start_after),
            std::ops::Bound::Unbounded,
        ))
    };
    let mut entries = Vec::new();
    let mut more = false;
    for (name, &child) in range {
        if entries.len() == limit {
            more = true;
            break;
        }
        let attr = state
            .ns
            .get(child)
            .map(|i| Box::new(attr(&state, child, i)));
        entries.push(DirEntry {
            name: Some(name.to_string()),
            attr,
        });
    }
    Body::ListDirReply(Box::new(ListDirReply {
        entries: Some(entries),
        more,
        stamp: Some(master.stamp()),
    }))
}

/// A chunk's replicas, least loaded first: clients read from the front.
/// Equal loads are ordered by a mix of handle and node, so the reads of a
/// file's chunks spread over all their replicas instead of all going to
/// the lowest node id.
fn replicas_of(master: &Master, handle: u64, locs: &[crate::registry::Location]) -> Vec<Replica> {
    let reg = master.registry();
    let mut out: Vec<(u32, Replica)> = locs
        .iter()
        .filter_map(|l| {
            let s = reg.servers.get(&l.node)?;
            let r = Replica {
                node_id: l.node,
                addr: Some(s.listen_addr.clone()),
                rack: Some(s.rack.clone()),
            };
            Some((s.ops_in_flight, r))
        })
        .collect();
    let spread = |node: u64| (handle ^ node).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    out.sort_by_key(|(load, r)| (*load, spread(r.node_id), r.node_id));
    out.into_iter().map(|(_, r)| r).collect()
}

fn location(master: &Master, index: u64, located: &Located) -> ChunkLocation {
    let now = Instant::now();
    let (primary, remaining, epoch) = match &located.lease {
        Some(l) if l.client_expires > now => (
            l.primary,
            u32::try_from(l.client_expires.duration_since(now).as_millis()).unwrap_or(u32::MAX),
            l.epoch,
        ),
        _ => (0, 0, master.epoch()),
    };
    ChunkLocation {
        index,
        handle: located.handle,
        version: located.version,
        replicas: Some(replicas_of(master, located.handle, &located.replicas)),
        primary,
        lease_remaining_ms: remaining,
        epoch,
    }
}

fn location_reply(master: &Master, index: u64, located: Located) -> Body {
    Body::ChunkLocationReply(Box::new(ChunkLocationReply {
        location: Some(Box::new(location(master, index, &located))),
        stamp: Some(master.stamp()),
    }))
}

fn get_chunks(master: &Master, inode: u64, first: u64, count: u32) -> Body {
    let (length, handles) = {
        let state = master.shared.read();
        let Some(node) = state.ns.get(inode) else {
            return fail(Fail::NotFound);
        };
        let Some(file) = node.file() else {
            return fail(Fail::IsDirectory);
        };
        let count = count.clamp(1, LIST_LIMIT_MAX) as usize;
        let start = usize::try_from(first)
            .unwrap_or(usize::MAX)
            .min(file.chunks.len());
        let handles: Vec<(u64, u64, u64)> = file.chunks[start..]
            .iter()
            .take(count)
            .enumerate()
            .map(|(i, &h)| {
                (
                    start as u64 + i as u64,
                    h,
                    state.chunks.get(h).map_or(0, |c| c.version),
                )
            })
            .collect();
        (file.length_bytes, handles)
    };
    let now = Instant::now();
    let chunks = handles
        .into_iter()
        .map(|(index, handle, version)| {
            let replicas = master.registry().good_replicas(handle, version).to_vec();
            let lease = master
                .leases
                .live(handle, now)
                .filter(|l| l.version == version);
            location(
                master,
                index,
                &Located {
                    handle,
                    version,
                    replicas,
                    lease,
                },
            )
        })
        .collect();
    Body::GetChunksReply(Box::new(GetChunksReply {
        length_bytes: length,
        chunks: Some(chunks),
        stamp: Some(master.stamp()),
    }))
}

fn admin_status(master: &Master) -> Body {
    let h = metrics::health(master);
    let (files, directories, chunks) = {
        let s = master.shared.read();
        (s.ns.files, s.ns.directories, s.chunks.chunks.len() as u64)
    };
    let masters = master_statuses(master);
    let chunkservers = master
        .registry()
        .servers
        .values()
        .map(|s| ChunkserverStatus {
            node_id: s.node_id,
            addr: Some(s.listen_addr.clone()),
            rack: Some(s.rack.clone()),
            state: match s.liveness {
                Liveness::Live => ChunkserverState::Live,
                Liveness::Dead => ChunkserverState::Dead,
                Liveness::Decommissioning => ChunkserverState::Decommissioning,
            },
            capacity_bytes: s.capacity_bytes,
            used_bytes: s.used_bytes,
            chunk_count: s.chunk_count,
            ops_in_flight: s.ops_in_flight,
            last_heartbeat_ms_ago: s.last_heartbeat.elapsed().as_millis() as u64,
            scrub_bytes_unverified_beyond_period: s.scrub_unverified_bytes,
        })
        .collect();
    Body::AdminStatusReply(Box::new(AdminStatusReply {
        masters: Some(masters),
        chunkservers: Some(chunkservers),
        files,
        directories,
        chunks,
        under_replicated_chunks: h.under_replicated,
        corrupt_replicas: h.corrupt_replicas,
        missing_chunks: h.missing,
        stamp: Some(master.stamp()),
    }))
}

/// Every member of the group as this master sees it. The leader knows each
/// member's replicated index, so it reports the group's lag; another master
/// reports itself and the leader it follows.
fn master_statuses(master: &Master) -> Vec<MasterStatus> {
    let m = master.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    let commit = master.commit_index();
    let applied = master
        .shared
        .applied_index
        .load(std::sync::atomic::Ordering::Acquire);
    let addr = |id: u64| master.config.master(id).map(|c| c.client_addr.clone());
    let is_voter = |id: u64| membership.voter_ids().any(|v| v == id);
    let me = MasterStatus {
        id: master.id,
        role: match m.state {
            _ if master.is_leader() => MasterRole::Leader,
            openraft::ServerState::Candidate => MasterRole::Candidate,
            _ if !is_voter(master.id) => MasterRole::Shadow,
            _ => MasterRole::Follower,
        },
        term: m.current_term,
        leader: m.current_leader.unwrap_or(0),
        commit_index: commit,
        applied_index: applied,
        lag: commit.saturating_sub(applied),
        client_addr: addr(master.id),
    };
    let mut out = vec![me];
    if let Some(replication) = m.replication.as_ref() {
        for (&id, matched) in replication {
            if id == master.id {
                continue;
            }
            let matched = matched.map(|l| l.index);
            out.push(MasterStatus {
                id,
                role: match matched {
                    None => MasterRole::Unreachable,
                    Some(_) if is_voter(id) => MasterRole::Follower,
                    Some(_) => MasterRole::Shadow,
                },
                term: m.current_term,
                leader: master.id,
                // What the leader knows: the member's log holds this much.
                commit_index: matched.unwrap_or(0),
                applied_index: matched.unwrap_or(0),
                lag: commit.saturating_sub(matched.unwrap_or(0)),
                client_addr: addr(id),
            });
        }
    }
    out.sort_by_key(|s| s.id);
    out
}

/// A client says a replica served bad data (it is marked corrupt: never
/// read again, replaced, then deleted) or failed a write (it is marked
/// stale, so the next lease leaves it out of the chain and re-replication
/// replaces it). A failed write says nothing about the data: when no other
/// good replica is left, the mark would make the chunk unwritable for
/// good, so the replica is kept and the writer retries on it.
fn report_bad_replica(master: &Master, r: &ringfs_wire::msg::ReportBadReplica) {
    let corrupt = matches!(r.reason, ErrorCode::ChecksumMismatch | ErrorCode::Corrupt);
    let version = master
        .shared
        .read()
        .chunks
        .get(r.handle)
        .map_or(0, |c| c.version);
    let mut reg = master.registry();
    let others_good = reg
        .good_replicas(r.handle, version)
        .iter()
        .any(|l| l.node != r.node_id);
    let mark = match (corrupt, others_good) {
        (true, _) => Some(ReplicaState::Corrupt),
        (false, true) => Some(ReplicaState::Stale),
        (false, false) => None,
    };
    let Some(mark) = mark else {
        tracing::info!(handle = r.handle, node = r.node_id, reason = ?r.reason,
            "client reported a failed write on the only good replica: kept");
        return;
    };
    reg.update_replica(r.handle, r.node_id, |l| {
        if l.state == ReplicaState::Ok {
            l.state = mark;
        }
    });
    tracing::warn!(handle = r.handle, node = r.node_id, reason = ?r.reason, ?mark, "client reported a bad replica");
}

/// Walks files under `path`, reporting unhealthy chunks; one page per call.
fn fsck(master: &Master, path: &str, start_after: &str, limit: u32) -> Body {
    let state = master.shared.read();
    let root = match state.ns.lookup(path) {
        Ok(i) => i,
        Err(f) => return fail(f),
    };
    let files_max = u64::from(limit.clamp(1, FSCK_FILES_PER_CALL_MAX));
    let mut files = Vec::new();
    let reg = master.registry();
    let walked = fsck_walk(
        &state.ns,
        path,
        root,
        start_after,
        files_max,
        FSCK_WORK_PER_CALL_MAX,
        |p, node, f| {
            let mut unhealthy = Vec::new();
            for (index, &handle) in f.chunks.iter().enumerate() {
                let version = state.chunks.get(handle).map_or(0, |c| c.version);
                let locs = reg.replicas(handle);
                let count = |pred: &dyn Fn(&crate::registry::Location) -> bool| {
                    locs.iter().filter(|l| pred(l)).count() as u8
                };
                let live = reg.good_replicas(handle, version).len() as u8;
                let corrupt = count(&|l| l.state == ReplicaState::Corrupt);
                let stale = count(&|l| l.version < version);
                if live < node.replication || corrupt > 0 || stale > 0 {
                    unhealthy.push(FsckChunk {
                        index: index as u64,
                        handle,
                        version,
                        goal: node.replication,
                        live_replicas: live,
                        corrupt_replicas: corrupt,
                        stale_replicas: stale,
                    });
                }
            }
            if !unhealthy.is_empty() {
                files.push(FsckFile {
                    path: Some(p.to_string()),
                    unhealthy_chunks: Some(unhealthy),
                    chunk_count: f.chunks.len() as u64,
                });
            }
            f.chunks.len() as u64
        },
    );
    let walked = match walked {
        Ok(w) => w,
        Err(why) => return error(ErrorCode::BadRequest, why),
    };
    Body::FsckReply(Box::new(FsckReply {
        files: Some(files),
        files_checked: walked.files_checked,
        more: walked.more,
        stamp: Some(master.stamp()),
        next_after: walked.more.then_some(walked.next_after),
    }))
}

/// Where an fsck page ended.
#[derive(Debug, PartialEq, Eq)]
pub struct FsckWalked {
    pub files_checked: u64,
    /// Nodes are left: resume with `start_after = next_after`.
    pub more: bool,
    /// The last node walked (file or directory).
    pub next_after: String,
}

type Children<'s> = std::collections::btree_map::Range<'s, compact_str::CompactString, u64>;

/// A directory being walked. `spine`: its path is a proper prefix of the
/// resume cursor, so only the children from the cursor's next component
/// on are left to walk.
struct FsckFrame<'s> {
    path: String,
    children: Children<'s>,
    spine: bool,
    depth: usize,
}

fn children_from<'s>(d: &'s crate::namespace::Dir, from: Option<&str>) -> Children<'s> {
    match from {
        Some(name) => d
            .children
            .range::<str, _>((std::ops::Bound::Included(name), std::ops::Bound::Unbounded)),
        None => d.children.range::<str, _>(..),
    }
}

/// Walks the tree under `path` (inode `root`) depth first, each
/// directory's names in byte order, calling `check` on every file; that is
/// the order of paths compared component by component, so `start_after`
/// (the `next_after` of the previous page) resumes right after the last
/// node walked. The walk descends straight to the cursor instead of
/// skipping over everything before it, and stops after `files_max` files
/// or `work_max` units of work (one per node plus what `check` returns:
/// its chunks), so one call holds the state lock for a bounded time
/// whatever the tree looks like. Every call walks at least one node, so
/// paging ends. Before 2026-11-22 the client resumed from the last
/// unhealthy file and the master compared whole path strings, whose order
/// is not the walk's ('/' sorts after '.').
pub fn fsck_walk<'s>(
    ns: &'s crate::namespace::Namespace,
    path: &str,
    root: u64,
    start_after: &str,
    files_max: u64,
    work_max: u64,
    mut check: impl FnMut(&str, &'s Inode, &'s crate::namespace::File) -> u64,
) -> Result<FsckWalked, String> {
    let base = path.trim_end_matches('/');
    let cursor: Vec<&str> = if start_after.is_empty() {
        Vec::new()
    } else {
        match start_after
            .strip_prefix(base)
            .and_then(|r| r.strip_prefix('/'))
        {
            // Bounded: the cursor comes from the network. No tree is this
            // deep (paths are bounded); a longer one resumes at a prefix.
            Some(rest) => rest
                .split('/')
                .filter(|c| !c.is_empty())
                .take(crate::types::PATH_BYTES_MAX)
                .collect(),
            None => return Err(format!("start_after {start_after:?} is not under {path:?}")),
        }
    };
    let mut walked = FsckWalked {
        files_checked: 0,
        more: false,
        next_after: String::new(),
    };
    let Some(node) = ns.get(root) else {
        return Ok(walked);
    };
    let root_dir = match &node.kind {
        Kind::File(f) => {
            // A file named by `path` itself: one node, no cursor below it.
            if cursor.is_empty() {
                walked.files_checked = 1;
                check(path, node, f);
            }
            return Ok(walked);
        }
        Kind::Dir(d) => d,
    };
    let mut stack = vec![FsckFrame {
        path: base.to_string(),
        children: children_from(root_dir, cursor.first().copied()),
        spine: !cursor.is_empty(),
        depth: 0,
    }];
    let mut work = 0u64;
    while let Some(top) = stack.last_mut() {
        let Some((name, &child)) = top.children.next() else {
            stack.pop();
            continue;
        };
        let on_spine = top.spine && cursor.get(top.depth) == Some(&name.as_str());
        let depth = top.depth + 1;
        let Some(node) = ns.get(child) else {
            continue;
        };
        let child_path = format!("{}/{name}", top.path);
        if on_spine {
            // The cursor's own ancestors (or the cursor) were walked on an
            // earlier page; of them only a directory's rest is left.
            if let Kind::Dir(d) = &node.kind {
                let spine = depth < cursor.len();
                stack.push(FsckFrame {
                    path: child_path,
                    children: children_from(d, cursor.get(depth).copied().filter(|_| spine)),
                    spine,
                    depth,
                });
            }
            continue;
        }
        let is_file = matches!(node.kind, Kind::File(_));
        if work >= work_max || (is_file && walked.files_checked >= files_max) {
            walked.more = true;
            break;
        }
        work += 1;
        match &node.kind {
            Kind::Dir(d) => stack.push(FsckFrame {
                path: child_path.clone(),
                children: children_from(d, None),
                spine: false,
                depth,
            }),
            Kind::File(f) => {
                walked.files_checked += 1;
                work = work.saturating_add(check(&child_path, node, f));
            }
        }
        walked.next_after = child_path;
    }
    Ok(walked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PATH_BYTES_MAX;

    #[test]
    fn owner_is_cut_at_a_char_boundary() {
        // 63 ASCII bytes then a 3-byte char: byte 64 is inside it.
        let owner = format!("{}€tail", "a".repeat(OWNER_BYTES_MAX - 1));
        let got = owner_of(Some(owner));
        assert_eq!(got, "a".repeat(OWNER_BYTES_MAX - 1));
        let emoji = "😀".repeat(40);
        let got = owner_of(Some(emoji));
        assert_eq!(got, "😀".repeat(OWNER_BYTES_MAX / 4));
        assert_eq!(owner_of(None), "nobody");
        assert_eq!(owner_of(Some("é".into())), "é");
    }

    /// `mutate` answers this before it reaches the proposer.
    #[test]
    fn an_over_long_path_is_refused_as_too_large() {
        let op = Op::Rename {
            req: ReqId::default(),
            src: format!("/{}", "x".repeat(16 << 20)),
            dst: "/y".into(),
            replace: false,
            now_ns: 0,
            trash_retention_ms: 0,
        };
        let Err(Body::ErrorReply(e)) = bounded(&op) else {
            panic!("an over-long path was accepted");
        };
        assert_eq!(e.code, ErrorCode::TooLarge);
        let msg = e.message.unwrap_or_default();
        assert!(
            msg.contains("source path") && msg.contains(&PATH_BYTES_MAX.to_string()),
            "{msg}"
        );
    }

    fn tree() -> State {
        let mut state = State::new(1 << 20, 1);
        let apply = |state: &mut State, op: Op| {
            state.apply(&op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
        };
        let mkdir = |path: &str| Op::Mkdir {
            req: ReqId::default(),
            path: path.into(),
            parents: true,
            mode: 0o755,
            owner: "t".into(),
            now_ns: 0,
        };
        let create = |path: &str| Op::Create {
            req: ReqId::default(),
            path: path.into(),
            replication: 0,
            exclusive: true,
            mode: 0o644,
            owner: "t".into(),
            now_ns: 0,
            trash_retention_ms: 0,
        };
        // '/' sorts after '.': "/d/b/x" comes after "/d/b.txt" as strings,
        // before it in the walk.
        for d in ["/d/b", "/d/empty1", "/d/empty2/deeper", "/e", "/m"] {
            apply(&mut state, mkdir(d));
        }
        for f in ["/d/a", "/d/b/x", "/d/b/y", "/d/b.txt", "/d/c", "/e/f", "/z"] {
            apply(&mut state, create(f));
        }
        for i in 0..25 {
            apply(&mut state, create(&format!("/m/{i:03}")));
        }
        state
    }

    /// Pages through the whole walk as the CLI does; returns the files in
    /// the order checked and the number of pages.
    fn page_all(state: &State, path: &str, files_max: u64, work_max: u64) -> (Vec<String>, u64) {
        let root = state.ns.lookup(path).unwrap();
        let mut after = String::new();
        let mut seen = Vec::new();
        for pages in 1..=1000 {
            let w = fsck_walk(
                &state.ns,
                path,
                root,
                &after,
                files_max,
                work_max,
                |p, _, _| {
                    seen.push(p.to_string());
                    0
                },
            )
            .unwrap();
            assert!(w.files_checked <= files_max);
            if !w.more {
                return (seen, pages);
            }
            assert!(
                w.next_after > String::new(),
                "a page walks at least one node"
            );
            after = w.next_after;
        }
        panic!("paging did not end");
    }

    #[test]
    fn fsck_pages_resume_in_walk_order_and_end() {
        let state = tree();
        let (all, pages) = page_all(&state, "/", u64::MAX, u64::MAX);
        assert_eq!(pages, 1);
        let mut want = vec!["/d/a", "/d/b/x", "/d/b/y", "/d/b.txt", "/d/c", "/e/f"];
        let m: Vec<String> = (0..25).map(|i| format!("/m/{i:03}")).collect();
        want.extend(m.iter().map(String::as_str));
        want.push("/z");
        assert_eq!(all, want);
        // Any page size, by files or by work, checks each file once, in
        // the same order, and ends.
        for files_max in [1, 2, 3, 7] {
            assert_eq!(page_all(&state, "/", files_max, u64::MAX).0, want);
        }
        for work_max in [1, 2, 5] {
            let (got, pages) = page_all(&state, "/", u64::MAX, work_max);
            assert_eq!(got, want, "work_max {work_max}");
            assert!(pages > 1);
        }
        // A subtree, with and without a trailing slash.
        for p in ["/d", "/d/"] {
            assert_eq!(page_all(&state, p, 1, u64::MAX).0, want[..5]);
        }
        // A cursor that no longer exists resumes where it would sort.
        let root = state.ns.lookup("/").unwrap();
        let mut rest = Vec::new();
        let w = fsck_walk(
            &state.ns,
            "/",
            root,
            "/d/bb/gone",
            3,
            u64::MAX,
            |p, _, _| {
                rest.push(p.to_string());
                0
            },
        )
        .unwrap();
        assert_eq!(rest, ["/d/c", "/e/f", "/m/000"]);
        assert!(w.more);
        assert!(fsck_walk(&state.ns, "/d", root, "/e/f", 3, 9, |_, _, _| 0).is_err());
    }
}
