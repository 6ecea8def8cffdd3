//! The data listener of one core: accept, handshake, then a loop of
//! request → owner core → reply per connection. Bad frames get a typed
//! error and a closed connection; a well-framed bad request gets a typed
//! error and the connection stays usable.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::net::{TcpListener, TcpSocket, TcpStream};
use ringfs_wire::auth::Identity;
use ringfs_wire::checksum::BLOCK_BYTES;
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::message::{Encoder, error_body};
use ringfs_wire::msg::{Body, ErrorCode, ListChunksReply, PeerKind, Pong};

use crate::conn::{self, ConnError};
use crate::ops;
use crate::pool::Pooled;
use crate::shard::{Core, Reply, on_core, owner_core};

/// Connections one core serves at once; more wait in the kernel backlog.
pub const CONNECTIONS_PER_CORE_MAX: usize = 1024;
pub const LISTEN_BACKLOG: i32 = 1024;
/// Most chunk reports in one ListChunks reply.
pub const LIST_LIMIT_MAX: u32 = 10_000;
/// Time the rest of a request (meta and data) gets once its header has
/// arrived, and a reply gets to be taken: a peer that stalls mid-frame
/// would otherwise hold the pool buffers lent to it forever. The time
/// between requests stays unbounded (an idle connection holds nothing).
pub const REQUEST_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds this core's listener on the shared address (`SO_REUSEPORT`: the
/// kernel spreads connections over the cores).
pub async fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4().await?
    } else {
        TcpSocket::new_v6().await?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr).await?;
    socket.listen(LISTEN_BACKLOG).await
}

pub async fn accept_loop(core: Rc<Core>, listener: TcpListener) {
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        if core.node.is_stopping() {
            return;
        }
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(core = core.id, "accept: {e}");
                compio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.get() >= CONNECTIONS_PER_CORE_MAX {
            tracing::warn!(core = core.id, %peer, "connection refused: {CONNECTIONS_PER_CORE_MAX} already open");
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let core = core.clone();
        let open = open.clone();
        compio::runtime::spawn(async move {
            core.metrics().connection_opened();
            if let Err(e) = serve_connection(&core, stream).await {
                tracing::debug!(core = core.id, %peer, "connection ended: {e}");
            }
            core.metrics().connection_closed();
            open.set(open.get() - 1);
        })
        .detach();
    }
}

async fn serve_connection(core: &Rc<Core>, mut stream: TcpStream) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let node = &core.node;
    let me = Identity {
        kind: PeerKind::Chunkserver,
        node_id: node.node_id(),
    };
    // Bounded (conn::HANDSHAKE_TIMEOUT): peers that connect and send
    // nothing must not hold this core's connection slots.
    let peer =
        conn::accept_handshake(&mut stream, &node.key, &node.settings.cluster_id, me).await?;
    let limits = FrameLimits::DATA;
    let mut encoder = Encoder::new();
    loop {
        let read = conn::read_request_head(&mut stream, &limits, REQUEST_IO_TIMEOUT).await;
        let (head, deadline) = match read {
            Ok(h) => h,
            Err(ConnError::Closed) => return Ok(()),
            Err(e @ ConnError::Frame(_)) => {
                let body = error_body(ErrorCode::BadFrame, e.to_string());
                let _ =
                    conn::write_simple(&mut stream, &mut encoder, 0, &body, &FrameLimits::CONTROL)
                        .await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let request_id = head.header.request_id;
        let data_len = u64::from(head.header.data_len);
        let body = match head.owned_body() {
            Ok(b) => b,
            Err(e) => {
                before(deadline, conn::skip_data(&mut stream, data_len)).await??;
                let body = error_body(ErrorCode::BadRequest, e.to_string());
                conn::write_simple(&mut stream, &mut encoder, request_id, &body, &limits).await?;
                continue;
            }
        };
        let handled = handle(core, &mut stream, body, peer.kind, data_len, deadline).await?;
        let (reply, pooled) = match handled {
            Handled::Reply(reply, pooled) => (reply, pooled),
            Handled::Refused(body) => {
                conn::write_simple(&mut stream, &mut encoder, request_id, &body, &limits).await?;
                continue;
            }
        };
        let head = match conn::encode_head(
            &mut encoder,
            request_id,
            &reply.body,
            reply.data_len,
            &limits,
        ) {
            Ok(h) => h,
            Err(e) => {
                let body = error_body(
                    ErrorCode::Internal,
                    format!("reply does not fit a frame: {e}"),
                );
                conn::write_simple(&mut stream, &mut encoder, request_id, &body, &limits).await?;
                continue;
            }
        };
        let write = conn::write_frame(&mut stream, head, reply.bufs, reply.data_len);
        let written = compio::time::timeout(REQUEST_IO_TIMEOUT, write).await;
        let Ok((r, bufs)) = written else {
            // The buffers went with the dropped write; `pooled` still
            // gives their count back to the pool.
            drop(pooled);
            core.metrics()
                .set_buffer_pool_free_buffers(core.pool.free_buffers() as u64);
            return Err(timed_out(format!(
                "reply not taken within {REQUEST_IO_TIMEOUT:?}"
            )));
        };
        match pooled {
            Some(mut pooled) => pooled.restore(bufs),
            // E.g. a mutation of pushed data: the push's buffers.
            None => core.pool.adopt(bufs),
        }
        r?;
    }
}

fn timed_out(what: String) -> ConnError {
    ConnError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// Runs `io` (reading the rest of a request) until `deadline`.
async fn before<T>(
    deadline: Instant,
    io: impl std::future::Future<Output = T>,
) -> Result<T, ConnError> {
    let left = deadline.saturating_duration_since(Instant::now());
    compio::time::timeout(left, io).await.map_err(|_| {
        timed_out(format!(
            "request data not received within {REQUEST_IO_TIMEOUT:?} of its header"
        ))
    })
}

enum Handled {
    Reply(Reply, Option<Pooled>),
    Refused(Body),
}

/// Reads the request's data into pool buffers and runs it where it
/// belongs.
async fn handle(
    core: &Rc<Core>,
    stream: &mut TcpStream,
    body: Body,
    from: PeerKind,
    data_len: u64,
    deadline: Instant,
) -> Result<Handled, ConnError> {
    let refuse = |code, msg: String| Ok(Handled::Refused(error_body(code, msg)));
    // Requests not about one chunk.
    match &body {
        Body::Ping(p) => {
            before(deadline, conn::skip_data(stream, data_len)).await??;
            let pong = Body::Pong(Box::new(Pong {
                sent_at_us: p.sent_at_us,
            }));
            return Ok(Handled::Reply(Reply::body(pong, Vec::new()), None));
        }
        Body::ListChunks(l) => {
            before(deadline, conn::skip_data(stream, data_len)).await??;
            return Ok(Handled::Reply(
                list_chunks(core, l.start_after, l.limit).await,
                None,
            ));
        }
        Body::DeleteChunk(d) if d.handles.as_ref().is_some_and(|h| h.len() > 1) => {
            before(deadline, conn::skip_data(stream, data_len)).await??;
            return Ok(Handled::Reply(
                delete_many(core, (**d).clone(), from).await,
                None,
            ));
        }
        _ => {}
    }
    let Some((_, handle)) = ops::route_of(&body) else {
        before(deadline, conn::skip_data(stream, data_len)).await??;
        let name = ringfs_wire::msg::MessageKind::of_body(&body).name();
        return refuse(
            ErrorCode::Unsupported,
            format!("a chunkserver does not serve {name}"),
        );
    };
    // Buffers: the request's data, or room for a read's reply.
    let buffer_bytes = core.pool.buffer_bytes() as u64;
    let max_read = u64::from(FrameLimits::DATA.max_data_bytes) - BLOCK_BYTES as u64;
    let want_bytes = match &body {
        Body::ReadChunk(r) => Some(u64::from(r.length)),
        Body::CloneRead(r) => Some(u64::from(r.length)),
        _ => None,
    };
    let needed_bytes = match want_bytes {
        Some(len) if len > max_read => {
            before(deadline, conn::skip_data(stream, data_len)).await??;
            return refuse(
                ErrorCode::TooLarge,
                format!("a read may ask for at most {max_read} bytes, not {len}"),
            );
        }
        // Widened to whole blocks at both ends.
        Some(len) => len + 2 * BLOCK_BYTES as u64,
        None => data_len,
    };
    let mut pooled = None;
    let mut bufs = Vec::new();
    if needed_bytes > 0 {
        let n = needed_bytes.div_ceil(buffer_bytes) as usize;
        let waited_from = std::time::Instant::now();
        let free_before = core.pool.free_buffers();
        let mut p = match core.pool.acquire(n).await {
            Ok(p) => p,
            Err(e) => {
                before(deadline, conn::skip_data(stream, data_len)).await??;
                return refuse(ErrorCode::TooLarge, e.to_string());
            }
        };
        if free_before < n {
            core.metrics().buffer_pool_wait();
            core.metrics().buffer_pool_wait_time(waited_from.elapsed());
        }
        core.metrics()
            .set_buffer_pool_free_buffers(core.pool.free_buffers() as u64);
        bufs = p.lend();
        pooled = Some(p);
    }
    if data_len > 0 {
        // Counted from now: a wait for buffers above is this core's doing,
        // not the peer's.
        let deadline = deadline.max(Instant::now() + REQUEST_IO_TIMEOUT);
        let Ok((r, b)) = before(deadline, conn::read_data(stream, bufs, data_len)).await else {
            // The buffers went with the dropped read; dropping `pooled`
            // gives their count back to the pool all the same.
            drop(pooled);
            core.metrics()
                .set_buffer_pool_free_buffers(core.pool.free_buffers() as u64);
            return Err(timed_out(format!(
                "request data not received within {REQUEST_IO_TIMEOUT:?} of its header"
            )));
        };
        bufs = b;
        if let Err(e) = r {
            if let Some(p) = pooled.as_mut() {
                p.restore(bufs);
            }
            return Err(e);
        }
    }
    let reply = core.call(handle, body, from, bufs, data_len).await;
    Ok(Handled::Reply(reply, pooled))
}

/// Merges the sorted lists of every core.
async fn list_chunks(core: &Rc<Core>, start_after: u64, limit: u32) -> Reply {
    let limit = limit.clamp(1, LIST_LIMIT_MAX) as usize;
    let mut all = Vec::new();
    for c in 0..core.node.cores() {
        let listed = on_core(core, c, move |other| {
            other.store.list(start_after, limit + 1)
        })
        .await;
        all.extend(listed.unwrap_or_default());
    }
    all.sort_by_key(|s| s.handle);
    let more = all.len() > limit;
    all.truncate(limit);
    let chunks = all
        .into_iter()
        .map(|s| ringfs_wire::msg::ChunkReport {
            handle: s.handle,
            version: s.version,
            length_bytes: s.length_bytes,
            state: ops::wire_state(s.state),
        })
        .collect();
    Reply::body(
        Body::ListChunksReply(Box::new(ListChunksReply {
            chunks: Some(chunks),
            more,
        })),
        Vec::new(),
    )
}

/// A DeleteChunk naming chunks of several cores: one command per owner.
async fn delete_many(core: &Rc<Core>, d: ringfs_wire::msg::DeleteChunk, from: PeerKind) -> Reply {
    let cores = core.node.cores();
    let mut per_core: Vec<Vec<u64>> = vec![Vec::new(); cores];
    for h in d.handles.clone().unwrap_or_default() {
        per_core[owner_core(h, cores)].push(h);
    }
    for handles in per_core.into_iter().filter(|h| !h.is_empty()) {
        let first = handles[0];
        let body = Body::DeleteChunk(Box::new(ringfs_wire::msg::DeleteChunk {
            epoch: d.epoch,
            handles: Some(handles),
            reason: d.reason,
        }));
        let reply = core.call(first, body, from, Vec::new(), 0).await;
        if matches!(reply.body, Body::ErrorReply(_)) {
            return reply;
        }
    }
    Reply::body(Body::Ack(Box::default()), Vec::new())
}
