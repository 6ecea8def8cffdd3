//! The master's listener on `client_addr`: clients and chunkservers, after
//! the cluster-key handshake.
//!
//! Client connections are pipelined: a reader takes frames and runs each
//! request as its own task (at most [`REQUESTS_IN_FLIGHT_PER_CONNECTION`]),
//! a writer sends replies as they finish, each echoing its request id, so
//! one slow commit does not hold up the reads behind it; replies that are
//! ready together go out in one write. Chunkserver
//! connections are lock-step (one Register/Heartbeat, one reply).

use std::sync::Arc;
use std::time::Duration;

use ringfs_wire::admit;
use ringfs_wire::auth::Identity;
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::message::{Encoder, error_body};
use ringfs_wire::msg::{Body, ErrorCode, MessageKind, PeerKind};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::conn::{self, ConnError};
use crate::node::Master;
use crate::{client_api, cslink};

/// Connections served at once; more wait in the kernel's backlog.
pub const CONNECTIONS_MAX: usize = 4096;
/// Requests of one client connection being worked on at once.
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION: usize = 64;
/// Read buffer of a client connection: room for many control frames.
const READ_BUFFER_BYTES: usize = 16 << 10;
// Every in-flight request of a connection must fit in its client's
// idempotency window, or a late one would be refused as too old.
const _: () = assert!(REQUESTS_IN_FLIGHT_PER_CONNECTION <= crate::state::REQUEST_WINDOW_PER_CLIENT);
/// Replies gathered into one write, and their bytes: every reply of a
/// connection's in-flight requests fits, and a large listing goes alone.
const REPLIES_PER_WRITE_MAX: usize = REQUESTS_IN_FLIGHT_PER_CONNECTION;
const REPLY_BYTES_PER_WRITE_MAX: usize = 256 << 10;
/// Time a new connection gets to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn accept_loop(master: Arc<Master>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off, bounded.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let master = master.clone();
        tokio::spawn(async move {
            let _permit = permit;
            master
                .metrics
                .connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = serve(&master, stream).await {
                match e {
                    ConnError::Closed => {}
                    ConnError::Handshake { .. } => {
                        master
                            .metrics
                            .handshake_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(%peer, error = %e, "handshake refused");
                    }
                    e => tracing::debug!(%peer, error = %e, "connection ended"),
                }
            }
        });
    }
}

async fn serve(master: &Arc<Master>, mut stream: TcpStream) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let me = Identity {
        kind: PeerKind::Master,
        node_id: master.id,
    };
    let key = &master.config.key;
    let cluster = &master.config.file.cluster_id;
    let peer = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        conn::accept_handshake(&mut stream, key, cluster, me),
    )
    .await
    .map_err(|_| ConnError::Protocol("handshake timed out".into()))??;
    match peer.kind {
        PeerKind::Chunkserver => serve_chunkserver(master, stream, peer).await,
        PeerKind::Client => serve_client(master, stream).await,
        _ => serve_refusing(stream).await,
    }
}

async fn serve_chunkserver(
    master: &Master,
    mut stream: TcpStream,
    peer: Identity,
) -> Result<(), ConnError> {
    let limits = FrameLimits::CONTROL;
    let mut encoder = Encoder::new();
    // The node this connection speaks for: the handshake's id, or, for a
    // fresh chunkserver (0), the id its registration here settled. Every
    // Register and Heartbeat after that must be that node's.
    let mut node_id = peer.node_id;
    loop {
        let frame = conn::read_frame(&mut stream, &limits).await?;
        let id = frame.header.request_id;
        let reply = match chunkserver_request(master, &frame) {
            Ok(Body::Register(r)) => {
                master.metrics.count("register", true);
                let reply = cslink::register(master, *r, node_id).await;
                if let Body::RegisterReply(r) = &reply {
                    node_id = r.node_id;
                }
                reply
            }
            Ok(Body::Heartbeat(h)) => {
                master.metrics.count("heartbeat", true);
                cslink::heartbeat(master, *h, node_id).await
            }
            Ok(Body::Ping(p)) => Body::Pong(Box::new(ringfs_wire::msg::Pong {
                sent_at_us: p.sent_at_us,
            })),
            Ok(other) => error_body(
                ErrorCode::Internal,
                format!(
                    "{:?} got past the chunkserver port's filter",
                    MessageKind::of_body(&other)
                ),
            ),
            Err(refusal) => refusal,
        };
        conn::write_frame(&mut stream, &mut encoder, id, &reply, &[], &limits).await?;
    }
}

/// The body of a chunkserver's frame, or the error that answers it. The
/// kind is checked on the header, before the meta is read: a kind this
/// port does not take is never copied, whatever it holds.
fn chunkserver_request(master: &Master, frame: &conn::Frame) -> Result<Body, Body> {
    match frame.header.kind {
        MessageKind::Register | MessageKind::Heartbeat | MessageKind::Ping => {
            admitted(master, frame)
        }
        kind => Err(error_body(
            ErrorCode::BadRequest,
            format!("a chunkserver sends Register, Heartbeat or Ping, not {kind:?}"),
        )),
    }
}

/// The body of a client's frame, or the error that answers it; as
/// [`chunkserver_request`], for the requests of `client_api`.
fn client_request(master: &Master, frame: &conn::Frame) -> Result<Body, Body> {
    let kind = frame.header.kind;
    if !admit::is_client_request(kind) {
        return Err(error_body(
            ErrorCode::BadRequest,
            format!("the client port takes client requests, not {kind:?}"),
        ));
    }
    admitted(master, frame)
}

/// `frame`'s body, copied only once `admit` has bounded what the copy
/// reaches: planus lets many offsets share one table or string, and the
/// copy repeats it for each.
fn admitted(master: &Master, frame: &conn::Frame) -> Result<Body, Body> {
    let owned = match frame.body() {
        Ok(body) => {
            admit::to_owned(body, frame.meta.len()).map_err(|e| error_body(e.code(), e.to_string()))
        }
        Err(e) => Err(error_body(ErrorCode::BadFrame, e.to_string())),
    };
    if owned.is_err() {
        master
            .metrics
            .bad_frames
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    owned
}

async fn serve_client(master: &Arc<Master>, stream: TcpStream) -> Result<(), ConnError> {
    let limits = FrameLimits::CONTROL;
    let (reader, mut writer) = stream.into_split();
    // Buffered: a frame is header + meta, and a pipelining client sends
    // several back to back; one recv takes them all instead of two per frame.
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let (tx, mut rx) = mpsc::channel::<(u64, Body)>(REQUESTS_IN_FLIGHT_PER_CONNECTION);
    let writer_task = tokio::spawn(async move {
        let mut encoder = Encoder::new();
        let mut out = Vec::new();
        while let Some(first) = rx.recv().await {
            // One commit answers a whole batch: the replies that are ready
            // leave in one send, not one syscall and wake-up each.
            out.clear();
            let mut next = Some(first);
            let mut replies = 0;
            while let Some((id, body)) = next {
                if append_reply(&mut encoder, &mut out, id, &body, &limits).is_err() {
                    return;
                }
                replies += 1;
                next = if replies < REPLIES_PER_WRITE_MAX && out.len() < REPLY_BYTES_PER_WRITE_MAX {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if writer.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let in_flight = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_PER_CONNECTION));
    let result = loop {
        let frame = match conn::read_frame(&mut reader, &limits).await {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        let id = frame.header.request_id;
        let body = match client_request(master, &frame) {
            Ok(b) => b,
            Err(refusal) => {
                if tx.send((id, refusal)).await.is_err() {
                    break Ok(());
                }
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break Ok(());
        };
        let master = master.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = client_api::handle(&master, body).await;
            let _ = tx.send((id, reply)).await;
            drop(permit);
        });
    };
    drop(tx);
    // Let replies already computed reach the client (bounded by the channel).
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    result
}

/// Appends the reply frame for request `id` to `out`; a reply over the
/// frame limit becomes a `TooLarge` error for the client instead.
fn append_reply(
    encoder: &mut Encoder,
    out: &mut Vec<u8>,
    id: u64,
    body: &Body,
    limits: &FrameLimits,
) -> Result<(), ConnError> {
    if let Err(e) = encoder.frame(out, id, body, &[], limits) {
        let small = error_body(ErrorCode::TooLarge, e.to_string());
        encoder.frame(out, id, &small, &[], limits)?;
    }
    Ok(())
}

async fn serve_refusing(mut stream: TcpStream) -> Result<(), ConnError> {
    let limits = FrameLimits::CONTROL;
    let frame = conn::read_frame(&mut stream, &limits).await?;
    let body = error_body(
        ErrorCode::Unsupported,
        "master-to-master traffic goes to the peer address (peer_addr in the config)",
    );
    let mut encoder = Encoder::new();
    conn::write_frame(
        &mut stream,
        &mut encoder,
        frame.header.request_id,
        &body,
        &[],
        &limits,
    )
    .await?;
    stream.shutdown().await?;
    Ok(())
}
