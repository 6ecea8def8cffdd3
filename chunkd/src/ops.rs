//! Requests executed on the core that owns the chunk: master commands
//! (fenced by epoch), reads, and the mutation path of the primary and the
//! secondaries (docs/ARCHITECTURE.md, read path R and write path W).

use std::rc::Rc;
use std::time::{Duration, Instant};

use ringfs_wire::msg::{
    AppendChunkReply, Body, ChunkInfoReply, ChunkReport, ForwardMutation, ForwardMutationReply,
    MutationKind, PeerKind, ReadChunkReply, ReplicaState, RequestId, WriteChunkReply,
};

use crate::chunk::{Appended, Chunk, Order, Ticket, WriteData};
use crate::dio::AlignedBuf;
use crate::error::{ChunkError, ChunkResult};
use crate::lease::Lease;
use crate::meta::ChunkState;
use crate::metrics::{ChecksumSource, Op};
use crate::node::ReplicaEvent;
use crate::shard::{Core, Reply};

/// How long a secondary waits for the mutation before its own to arrive.
pub const SERIAL_GAP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn wire_state(state: ChunkState) -> ReplicaState {
    match state {
        ChunkState::Ok => ReplicaState::Ok,
        ChunkState::Corrupt => ReplicaState::Corrupt,
        ChunkState::Stale => ReplicaState::Stale,
        ChunkState::Incomplete => ReplicaState::Incomplete,
    }
}

pub fn report_of(chunk: &Chunk) -> ChunkReport {
    let s = chunk.summary();
    ChunkReport {
        handle: s.handle,
        version: s.version,
        length_bytes: s.length_bytes,
        state: wire_state(s.state),
    }
}

/// The op a request body counts as in the metrics, and the handle it is
/// routed by (None for requests that are not about one chunk).
pub fn route_of(body: &Body) -> Option<(Op, u64)> {
    Some(match body {
        Body::CreateChunk(b) => (Op::Create, b.handle),
        Body::BumpVersion(b) => (Op::BumpVersion, b.handle),
        Body::CloneChunk(b) => (Op::Clone, b.handle),
        Body::GrantLease(b) => (Op::Lease, b.handle),
        Body::RevokeLease(b) => (Op::Lease, b.handle),
        Body::ReadChunk(b) => (Op::Read, b.handle),
        Body::WriteChunk(b) => (Op::Write, b.handle),
        Body::AppendChunk(b) => (Op::Append, b.handle),
        Body::ForwardMutation(b) => (Op::Forward, b.handle),
        Body::CloneRead(b) => (Op::CloneRead, b.handle),
        Body::GetChunkInfo(b) => (Op::Info, b.handle),
        Body::DeleteChunk(b) => (Op::Delete, b.handles.as_ref()?.first().copied()?),
        // Routed by data id: the core that holds the pushed bytes.
        Body::PushData(p) => {
            let (client, seq) = crate::push::key_of(p.data_id.as_ref()?);
            (Op::PushData, client ^ seq.rotate_left(32))
        }
        _ => return None,
    })
}

/// Executes one request on this (owner) core.
pub async fn execute(
    core: &Rc<Core>,
    body: Body,
    from: PeerKind,
    bufs: Vec<AlignedBuf>,
    data_len: u64,
) -> Reply {
    let started = Instant::now();
    let op = route_of(&body).map(|(op, _)| op);
    core.foreground.set(core.foreground.get() + 1);
    let in_flight = InFlight::enter(&core.node);
    let (result, bufs) = run(core, body, from, bufs, data_len).await;
    drop(in_flight);
    core.foreground.set(core.foreground.get() - 1);
    let reply = match result {
        Ok(mut reply) => {
            // Buffers the request is done with travel back with the reply
            // (after any data it sends), to the pool of the connection's
            // core.
            reply.bufs.extend(bufs);
            reply
        }
        Err(e) => {
            if matches!(e, ChunkError::ChecksumMismatch { .. }) {
                core.metrics().checksum_failure(ChecksumSource::Read);
            }
            if matches!(e, ChunkError::BadDataChecksum { .. }) {
                core.metrics().checksum_failure(ChecksumSource::Write);
            }
            Reply::error(&e, &core.node, bufs)
        }
    };
    if let Some(op) = op {
        let ok = !matches!(reply.body, Body::ErrorReply(_));
        core.metrics().op_done(op, started.elapsed(), ok);
    }
    reply
}

/// Counts a request in the node's `ops_in_flight` while it runs, also if
/// its future is dropped midway.
struct InFlight<'a>(&'a crate::node::Node);

impl<'a> InFlight<'a> {
    fn enter(node: &'a crate::node::Node) -> InFlight<'a> {
        node.ops_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(node)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .ops_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

type Run = (ChunkResult<Reply>, Vec<AlignedBuf>);

async fn run(
    core: &Rc<Core>,
    body: Body,
    from: PeerKind,
    bufs: Vec<AlignedBuf>,
    data_len: u64,
) -> Run {
    macro_rules! tryb {
        ($e:expr, $bufs:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return (Err(e), $bufs),
            }
        };
    }
    match body {
        Body::CreateChunk(c) => {
            tryb!(require_master(from), bufs);
            tryb!(admit_epoch(core, c.epoch).await, bufs);
            let r = core.store.create(c.handle, c.version).await;
            tryb!(r, bufs);
            core.node.metrics.node().set_chunks(core.store.len() as u64);
            (Ok(ack(bufs)), Vec::new())
        }
        Body::DeleteChunk(d) => {
            tryb!(require_master(from), bufs);
            tryb!(admit_epoch(core, d.epoch).await, bufs);
            for handle in d.handles.unwrap_or_default() {
                core.leases.borrow_mut().remove(&handle);
                match core.store.delete(handle).await {
                    Ok(()) | Err(ChunkError::NotFound(_)) => {}
                    Err(e) => return (Err(e), bufs),
                }
            }
            (Ok(ack(bufs)), Vec::new())
        }
        Body::BumpVersion(b) => {
            tryb!(require_master(from), bufs);
            tryb!(admit_epoch(core, b.epoch).await, bufs);
            let chunk = tryb!(core.store.get(b.handle), bufs);
            core.leases.borrow_mut().remove(&b.handle);
            tryb!(chunk.set_version(b.old_version, b.new_version).await, bufs);
            (Ok(ack(bufs)), Vec::new())
        }
        Body::GrantLease(g) => {
            tryb!(require_master(from), bufs);
            tryb!(admit_epoch(core, g.epoch).await, bufs);
            let chunk = tryb!(core.store.get(g.handle), bufs);
            tryb!(chunk.check_usable(), bufs);
            if chunk.version() != g.version {
                if chunk.version() < g.version {
                    report(core, &chunk, ChunkState::Stale);
                }
                return (
                    Err(ChunkError::StaleVersion {
                        ours: chunk.version(),
                        theirs: g.version,
                    }),
                    bufs,
                );
            }
            let lease = Lease::new(
                g.epoch,
                g.version,
                g.duration_ms,
                Instant::now(),
                g.secondaries.unwrap_or_default(),
            );
            core.leases.borrow_mut().insert(g.handle, lease);
            (Ok(ack(bufs)), Vec::new())
        }
        Body::CloneChunk(c) => {
            tryb!(require_master(from), bufs);
            tryb!(admit_epoch(core, c.epoch).await, bufs);
            core.leases.borrow_mut().remove(&c.handle);
            tryb!(crate::clone::clone_chunk(core, &c).await, bufs);
            core.node.metrics.node().set_chunks(core.store.len() as u64);
            (Ok(ack(bufs)), Vec::new())
        }
        Body::RevokeLease(r) => {
            tryb!(require_master(from), bufs);
            tryb!(admit_epoch(core, r.epoch).await, bufs);
            core.leases.borrow_mut().remove(&r.handle);
            (Ok(ack(bufs)), Vec::new())
        }
        Body::GetChunkInfo(i) => {
            let chunk = tryb!(core.store.get(i.handle), bufs);
            let now = Instant::now();
            let leases = core.leases.borrow();
            let lease = leases.get(&i.handle).filter(|l| l.expires_at > now);
            let body = Body::ChunkInfoReply(Box::new(ChunkInfoReply {
                report: Some(report_of(&chunk)),
                is_primary: lease.is_some(),
                lease_remaining_ms: lease
                    .map(|l| u32::try_from(l.remaining(now).as_millis()).unwrap_or(u32::MAX))
                    .unwrap_or(0),
                epoch: core.node.epoch.highest(),
            }));
            (Ok(Reply::body(body, bufs)), Vec::new())
        }
        Body::ReadChunk(r) => {
            let chunk = tryb!(core.store.get(r.handle), bufs);
            read(
                core,
                &chunk,
                r.min_version,
                r.offset,
                u64::from(r.length),
                bufs,
            )
            .await
        }
        Body::CloneRead(r) => {
            tryb!(fence(core, r.epoch), bufs);
            let chunk = tryb!(core.store.get(r.handle), bufs);
            tryb!(chunk.check_version(r.version), bufs);
            read(core, &chunk, r.version, r.offset, u64::from(r.length), bufs).await
        }
        Body::WriteChunk(w) => {
            let m = PrimaryMutation {
                handle: w.handle,
                epoch: w.epoch,
                version: w.version,
                length: u64::from(w.length),
                inline: w.inline,
                data_id: w.data_id,
                crcs: w.block_crcs.clone().unwrap_or_default(),
            };
            let (chunk, lease, data, data_id) =
                match primary_prelude(core, &m, bufs, data_len).await {
                    Ok(v) => v,
                    Err((e, bufs)) => return (Err(e), bufs),
                };
            let ticket = match chunk.begin_write(w.version, w.offset, data.len, Order::Assign) {
                Ok(t) => t,
                Err(e) => return (Err(e), data.bufs),
            };
            let serial = ticket.serial;
            let (r, bufs) = mutate_everywhere(
                core,
                &chunk,
                &lease,
                ticket,
                MutationKind::Write,
                data,
                data_id,
            )
            .await;
            let r = r.map(|_| {
                core.metrics().bytes_written(u64::from(w.length));
                Reply::body(
                    Body::WriteChunkReply(Box::new(WriteChunkReply {
                        handle: w.handle,
                        version: w.version,
                        serial,
                    })),
                    Vec::new(),
                )
            });
            (r, bufs)
        }
        Body::AppendChunk(a) => {
            let m = PrimaryMutation {
                handle: a.handle,
                epoch: a.epoch,
                version: a.version,
                length: u64::from(a.length),
                inline: a.inline,
                data_id: a.data_id,
                crcs: a.block_crcs.clone().unwrap_or_default(),
            };
            let (chunk, lease, data, data_id) =
                match primary_prelude(core, &m, bufs, data_len).await {
                    Ok(v) => v,
                    Err((e, bufs)) => return (Err(e), bufs),
                };
            match chunk.begin_append(a.version, data.len) {
                Err(e) => (Err(e), data.bufs),
                Ok(Appended::At(ticket)) => {
                    let (offset, serial) = (ticket.offset, ticket.serial);
                    let (r, bufs) = mutate_everywhere(
                        core,
                        &chunk,
                        &lease,
                        ticket,
                        MutationKind::Write,
                        data,
                        data_id,
                    )
                    .await;
                    let r = r.map(|_| {
                        core.metrics().bytes_written(u64::from(a.length));
                        Reply::body(
                            Body::AppendChunkReply(Box::new(AppendChunkReply {
                                handle: a.handle,
                                version: a.version,
                                offset,
                                serial,
                            })),
                            Vec::new(),
                        )
                    });
                    (r, bufs)
                }
                Ok(Appended::Full(ticket)) => {
                    let offset = ticket.offset;
                    let bufs = data.bufs;
                    let empty = WriteData {
                        bufs: Vec::new(),
                        len: 0,
                        piece_crcs: Vec::new(),
                    };
                    let (r, _) = mutate_everywhere(
                        core,
                        &chunk,
                        &lease,
                        ticket,
                        MutationKind::Pad,
                        empty,
                        None,
                    )
                    .await;
                    match r {
                        Ok(()) => (
                            Err(ChunkError::ChunkFull {
                                offset,
                                length: u64::from(a.length),
                            }),
                            bufs,
                        ),
                        Err(e) => (Err(e), bufs),
                    }
                }
            }
        }
        Body::ForwardMutation(f) => secondary_apply(core, *f, bufs, data_len).await,
        Body::PushData(p) => crate::push::receive(core, *p, bufs, data_len).await,
        other => (
            Err(ChunkError::BadRequest(format!(
                "{} is not a request for a chunk's owner core",
                ringfs_wire::msg::MessageKind::of_body(&other).name()
            ))),
            bufs,
        ),
    }
}

fn ack(bufs: Vec<AlignedBuf>) -> Reply {
    Reply::body(Body::Ack(Box::default()), bufs)
}

fn require_master(from: PeerKind) -> ChunkResult<()> {
    if from != PeerKind::Master {
        return Err(ChunkError::BadRequest(
            "only a master may send this command".into(),
        ));
    }
    Ok(())
}

/// Refuses a lower epoch than the highest seen (without persisting).
fn fence(core: &Core, epoch: u64) -> ChunkResult<()> {
    let highest = core.node.epoch.highest();
    if epoch < highest {
        return Err(ChunkError::StaleEpoch {
            theirs: epoch,
            highest,
        });
    }
    Ok(())
}

/// Admits a master command's epoch, persisting a new highest one in every
/// data dir before the command runs.
pub async fn admit_epoch(core: &Rc<Core>, epoch: u64) -> ChunkResult<()> {
    fence(core, epoch)?;
    if core.node.epoch.is_known(epoch) {
        return Ok(());
    }
    let node = core.node.clone();
    let r = compio::runtime::spawn_blocking(move || node.epoch.admit(epoch))
        .await
        .map_err(|_| ChunkError::Internal("epoch task panicked".into()))?;
    match r {
        Ok(highest) => {
            core.node.metrics.node().raise_highest_epoch(highest);
            Ok(())
        }
        Err(crate::epoch::AdmitError::Stale { highest }) => Err(ChunkError::StaleEpoch {
            theirs: epoch,
            highest,
        }),
        Err(crate::epoch::AdmitError::Io(e)) => Err(ChunkError::Internal(e)),
    }
}

fn report(core: &Core, chunk: &Chunk, state: ChunkState) {
    core.node.report(ReplicaEvent {
        handle: chunk.handle,
        version: chunk.version(),
        length_bytes: chunk.length(),
        state,
    });
}

/// The lease that makes this node primary for `chunk` at `version`.
fn primary_lease(core: &Core, chunk: &Chunk, epoch: u64, version: u64) -> ChunkResult<Lease> {
    fence(core, epoch)?;
    let mut leases = core.leases.borrow_mut();
    let lease = leases
        .get_mut(&chunk.handle)
        .ok_or(ChunkError::NotPrimary(chunk.handle))?;
    if epoch < lease.epoch {
        return Err(ChunkError::StaleEpoch {
            theirs: epoch,
            highest: lease.epoch,
        });
    }
    let now = Instant::now();
    lease.check(chunk.handle, version, now)?;
    chunk.check_version(version)?;
    // In use: the heartbeats ask for an extension while this goes on.
    lease.used_at = Some(now);
    Ok(lease.clone())
}

/// The chunk, its lease, the verified data and the data id to forward.
type Prelude = (Rc<Chunk>, Lease, WriteData, Option<RequestId>);

/// What the primary needs from a WriteChunk or AppendChunk.
struct PrimaryMutation {
    handle: u64,
    epoch: u64,
    version: u64,
    length: u64,
    inline: bool,
    data_id: Option<RequestId>,
    crcs: Vec<u32>,
}

/// The primary's checks before it orders a mutation: the chunk, the lease
/// (epoch, expiry, version), then the data (verified inline bytes or the
/// claimed pushed ones). The lease is checked first, so a refused mutation
/// never consumes pushed data the client could retry with.
async fn primary_prelude(
    core: &Rc<Core>,
    m: &PrimaryMutation,
    bufs: Vec<AlignedBuf>,
    data_len: u64,
) -> Result<Prelude, (ChunkError, Vec<AlignedBuf>)> {
    let chunk = match core.store.get(m.handle) {
        Ok(c) => c,
        Err(e) => return Err((e, bufs)),
    };
    let lease = match primary_lease(core, &chunk, m.epoch, m.version) {
        Ok(l) => l,
        Err(e) => return Err((e, bufs)),
    };
    let data = mutation_data(
        core,
        m.inline,
        m.data_id.as_ref(),
        bufs,
        data_len,
        m.length,
        m.crcs.clone(),
    )
    .await?;
    let data_id = if m.inline { None } else { m.data_id };
    Ok((chunk, lease, data, data_id))
}

/// The data of a mutation: inline in the frame (checked here against the
/// sender's CRCs before anything is written) or pushed earlier (checked
/// when it arrived; claimed now from the core holding it).
async fn mutation_data(
    core: &Rc<Core>,
    inline: bool,
    data_id: Option<&RequestId>,
    bufs: Vec<AlignedBuf>,
    data_len: u64,
    length: u64,
    crcs: Vec<u32>,
) -> Result<WriteData, (ChunkError, Vec<AlignedBuf>)> {
    if !inline {
        let Some(id) = data_id else {
            return Err((
                ChunkError::BadRequest("a mutation without inline data names no data_id".into()),
                bufs,
            ));
        };
        if data_len != 0 {
            return Err((
                ChunkError::BadRequest("pushed-data mutation carries data".into()),
                bufs,
            ));
        }
        return match crate::push::claim(core, id, length, &crcs).await {
            Ok(p) => Ok(WriteData {
                bufs: p.bufs,
                len: length,
                piece_crcs: crcs,
            }),
            Err(e) => Err((e, bufs)),
        };
    }
    if data_len != length {
        return Err((
            ChunkError::BadRequest(format!(
                "frame carries {data_len} data bytes, the request says {length}"
            )),
            bufs,
        ));
    }
    if let Err(e) = crate::push::verify(&bufs, length, &crcs) {
        return Err((e, bufs));
    }
    Ok(WriteData {
        bufs,
        len: length,
        piece_crcs: crcs,
    })
}

/// Sends the ordered mutation to every secondary, applies it here, and
/// succeeds only if every replica has it durably; otherwise names the
/// replica that failed.
async fn mutate_everywhere(
    core: &Rc<Core>,
    chunk: &Rc<Chunk>,
    lease: &Lease,
    ticket: Ticket,
    kind: MutationKind,
    data: WriteData,
    data_id: Option<RequestId>,
) -> (ChunkResult<()>, Vec<AlignedBuf>) {
    let forward = Body::ForwardMutation(Box::new(ForwardMutation {
        epoch: lease.epoch,
        handle: chunk.handle,
        version: lease.version,
        serial: ticket.serial,
        kind,
        offset: ticket.offset,
        length: u32::try_from(data.len).unwrap_or(u32::MAX),
        data_id,
        inline: data.len > 0 && data_id.is_none(),
        block_crcs: Some(data.piece_crcs.clone()),
    }));
    // Pushed data is already on every replica: forward the order only.
    let forward_len = if data_id.is_some() { 0 } else { data.len };
    // Send first (the buffers are then free for the local disk write);
    // the replies are awaited while the local write runs.
    let mut bufs = data.bufs;
    let mut sent = Vec::with_capacity(lease.secondaries.len());
    for replica in &lease.secondaries {
        let addr = replica.addr.clone().unwrap_or_default();
        let (r, b) = core.peers.send(&addr, &forward, bufs, forward_len).await;
        bufs = b;
        sent.push((replica.clone(), r));
    }
    let local = async {
        match kind {
            MutationKind::Pad => (chunk.finish_pad(ticket).await.map(|_| ()), bufs),
            _ => {
                let data = WriteData {
                    bufs,
                    len: data.len,
                    piece_crcs: data.piece_crcs,
                };
                let (r, bufs) = chunk.finish_write(ticket, data).await;
                (r.map(|_| ()), bufs)
            }
        }
    };
    let remote =
        futures_util::future::join_all(sent.into_iter().map(|(replica, sent)| async move {
            let outcome = match sent {
                Ok(inflight) => {
                    let (r, _) = core.peers.receive(inflight, Vec::new()).await;
                    match r {
                        Ok(reply) => match reply.head.owned_body() {
                            Ok(Body::ForwardMutationReply(_)) => Ok(()),
                            Ok(Body::ErrorReply(e)) => Err(format!(
                                "{:?}: {}",
                                e.code,
                                e.message.clone().unwrap_or_default()
                            )),
                            Ok(other) => Err(format!(
                                "unexpected reply {}",
                                ringfs_wire::msg::MessageKind::of_body(&other).name()
                            )),
                            Err(e) => Err(e.to_string()),
                        },
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            (replica, outcome)
        }));
    let ((local_result, bufs), remote_results) = futures_util::future::join(local, remote).await;
    if let Err(e) = local_result {
        return (Err(e), bufs);
    }
    for (replica, outcome) in remote_results {
        if let Err(reason) = outcome {
            return (
                Err(ChunkError::ReplicaFailed {
                    node: replica.node_id,
                    addr: replica.addr.unwrap_or_default(),
                    reason,
                }),
                bufs,
            );
        }
    }
    (Ok(()), bufs)
}

/// A secondary applies a mutation forwarded by the primary, in serial
/// order.
async fn secondary_apply(
    core: &Rc<Core>,
    f: ForwardMutation,
    bufs: Vec<AlignedBuf>,
    data_len: u64,
) -> Run {
    if let Err(e) = fence(core, f.epoch) {
        return (Err(e), bufs);
    }
    let chunk = match core.store.get(f.handle) {
        Ok(c) => c,
        Err(e) => return (Err(e), bufs),
    };
    if chunk.version() < f.version {
        report(core, &chunk, ChunkState::Stale);
    }
    if let Err(e) = chunk.check_version(f.version) {
        return (Err(e), bufs);
    }
    let ok = |bufs| {
        Reply::body(
            Body::ForwardMutationReply(Box::new(ForwardMutationReply {
                handle: f.handle,
                serial: f.serial,
            })),
            bufs,
        )
    };
    match f.kind {
        MutationKind::Pad => {
            if let Err(e) = chunk.wait_turn(f.serial, SERIAL_GAP_TIMEOUT).await {
                return (Err(e), bufs);
            }
            let ticket = match chunk.begin_pad(f.version, Order::Follow(f.serial)) {
                Ok(t) => t,
                Err(e) => return (Err(e), bufs),
            };
            match chunk.finish_pad(ticket).await {
                Ok(()) => (Ok(ok(Vec::new())), bufs),
                Err(e) => (Err(e), bufs),
            }
        }
        _ => {
            let crcs = f.block_crcs.clone().unwrap_or_default();
            let data_id = f.data_id;
            let length = u64::from(f.length);
            let data = match mutation_data(
                core,
                f.inline,
                data_id.as_ref(),
                bufs,
                data_len,
                length,
                crcs,
            )
            .await
            {
                Ok(d) => d,
                Err((e, bufs)) => return (Err(e), bufs),
            };
            if let Err(e) = chunk.wait_turn(f.serial, SERIAL_GAP_TIMEOUT).await {
                return (Err(e), data.bufs);
            }
            let ticket =
                match chunk.begin_write(f.version, f.offset, data.len, Order::Follow(f.serial)) {
                    Ok(t) => t,
                    Err(e) => return (Err(e), data.bufs),
                };
            let (r, bufs) = chunk.finish_write(ticket, data).await;
            match r {
                Ok(_) => {
                    core.metrics().bytes_written(u64::from(f.length));
                    (Ok(ok(Vec::new())), bufs)
                }
                Err(e) => (Err(e), bufs),
            }
        }
    }
}

async fn read(
    core: &Rc<Core>,
    chunk: &Rc<Chunk>,
    min_version: u64,
    offset: u64,
    len: u64,
    bufs: Vec<AlignedBuf>,
) -> Run {
    let buffer_bytes = core.pool.buffer_bytes() as u64;
    let verify = core.node.read_verify();
    let (r, leftover) = chunk
        .read(min_version, offset, len, bufs, buffer_bytes, verify)
        .await;
    match r {
        Ok(out) => {
            core.metrics().bytes_read(out.len);
            let body = Body::ReadChunkReply(Box::new(ReadChunkReply {
                handle: chunk.handle,
                version: out.version,
                chunk_length_bytes: out.chunk_length,
                offset: out.start,
                block_crcs: Some(out.crcs),
            }));
            let mut all = out.bufs;
            all.extend(leftover);
            (
                Ok(Reply {
                    body,
                    bufs: all,
                    data_len: out.len,
                }),
                Vec::new(),
            )
        }
        Err(e) => {
            if matches!(e, ChunkError::ChecksumMismatch { .. }) {
                report(core, chunk, ChunkState::Corrupt);
            }
            (Err(e), leftover)
        }
    }
}
