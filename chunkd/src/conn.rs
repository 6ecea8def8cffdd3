//! Framed messages over compio TCP streams (docs/design/001-wire-frames.md):
//! the header and meta into ordinary memory, bulk data straight into
//! aligned pool buffers, and the cluster-key handshake on both sides.

use std::io;
use std::time::{Duration, Instant};

use compio::buf::{IntoInner, IoBuf};
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use ringfs_wire::auth::{self, Acceptor, ClusterKey, Identity, Initiator};
use ringfs_wire::frame::{FrameError, FrameHeader, FrameLimits, HEADER_BYTES, handshake_reason};
use ringfs_wire::message::{Encoder, decode_meta};
use ringfs_wire::msg::{Body, BodyRef, ErrorCode, PeerKind};

use crate::dio::AlignedBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("bad message: {0}")]
    Message(String),
    #[error("handshake failed ({code:?}): {reason}")]
    Handshake { code: ErrorCode, reason: String },
    #[error("{0}")]
    Protocol(String),
}

/// Reads exactly `n` bytes into a fresh Vec; a clean EOF before the first
/// byte is `Closed`.
async fn read_vec(stream: &mut TcpStream, n: usize) -> Result<Vec<u8>, ConnError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let buf = Vec::with_capacity(n);
    let compio::BufResult(r, slice) = stream.read_exact(buf.slice(0..n)).await;
    match r {
        Ok(()) => Ok(slice.into_inner()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ConnError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// A received frame: header and meta (CRC-checked); the data section has
/// not been read yet.
pub struct FrameHead {
    pub header: FrameHeader,
    pub meta: Vec<u8>,
}

impl FrameHead {
    pub fn body(&self) -> Result<BodyRef<'_>, ConnError> {
        decode_meta(&self.header, &self.meta).map_err(|e| ConnError::Message(e.to_string()))
    }

    /// The body as owned types, copied only once `admit` has bounded what
    /// the copy reaches: offsets shared by a hostile sender would repeat a
    /// table or string once per offset.
    pub fn owned_body(&self) -> Result<Body, ConnError> {
        let body = self.body()?;
        ringfs_wire::admit::to_owned(body, self.meta.len())
            .map_err(|e| ConnError::Message(e.to_string()))
    }
}

pub async fn read_head(
    stream: &mut TcpStream,
    limits: &FrameLimits,
) -> Result<FrameHead, ConnError> {
    let raw = read_vec(stream, HEADER_BYTES).await?;
    let header = FrameHeader::decode(&raw, limits)?;
    let meta = read_vec(stream, header.meta_len as usize).await?;
    header.verify_meta(&meta)?;
    Ok(FrameHead { header, meta })
}

/// [`read_head`] for a request on a served connection: the header may
/// take as long as it likes (an idle connection holds nothing), the meta
/// after it at most `rest_timeout`. Returns the head and the deadline,
/// counted from the header's arrival, for the rest of the request.
pub async fn read_request_head(
    stream: &mut TcpStream,
    limits: &FrameLimits,
    rest_timeout: Duration,
) -> Result<(FrameHead, Instant), ConnError> {
    let raw = read_vec(stream, HEADER_BYTES).await?;
    let deadline = Instant::now() + rest_timeout;
    let header = FrameHeader::decode(&raw, limits)?;
    let meta = compio::time::timeout(rest_timeout, read_vec(stream, header.meta_len as usize))
        .await
        .map_err(|_| {
            ConnError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("meta not received within {rest_timeout:?} of its header"),
            ))
        })??;
    header.verify_meta(&meta)?;
    Ok((FrameHead { header, meta }, deadline))
}

/// Reads `len` data bytes into `bufs` in order (each filled to its
/// capacity except the last).
pub async fn read_data(
    stream: &mut TcpStream,
    mut bufs: Vec<AlignedBuf>,
    len: u64,
) -> (Result<(), ConnError>, Vec<AlignedBuf>) {
    let mut left = len;
    let mut out = Vec::with_capacity(bufs.len());
    bufs.reverse();
    while left > 0 {
        let Some(buf) = bufs.pop() else {
            out.extend(bufs.into_iter().rev());
            return (
                Err(ConnError::Protocol("data longer than its buffers".into())),
                out,
            );
        };
        let n = (buf.capacity() as u64).min(left) as usize;
        let compio::BufResult(r, slice) = stream.read_exact(buf.slice(0..n)).await;
        let mut buf = slice.into_inner();
        buf.set_len_bytes(n);
        out.push(buf);
        if let Err(e) = r {
            out.extend(bufs.into_iter().rev());
            return (Err(e.into()), out);
        }
        left -= n as u64;
    }
    out.extend(bufs.into_iter().rev());
    (Ok(()), out)
}

/// Reads and drops `len` bytes (the data of a frame we refuse, so the
/// connection stays in sync).
pub async fn skip_data(stream: &mut TcpStream, mut len: u64) -> Result<(), ConnError> {
    let mut scratch = vec![0u8; 64 * 1024];
    while len > 0 {
        let n = (scratch.len() as u64).min(len) as usize;
        let compio::BufResult(r, s) = stream.read_exact(scratch.slice(0..n)).await;
        scratch = s.into_inner();
        r?;
        len -= n as u64;
    }
    Ok(())
}

/// Encodes a frame's header and meta; the data (if any) follows from the
/// caller's buffers.
pub fn encode_head(
    encoder: &mut Encoder,
    request_id: u64,
    body: &Body,
    data_len: u64,
    limits: &FrameLimits,
) -> Result<Vec<u8>, ConnError> {
    let mut out = Vec::new();
    encoder.head(&mut out, request_id, body, data_len, limits)?;
    Ok(out)
}

/// Writes a whole frame: head, then `data_len` bytes from `bufs` in order.
pub async fn write_frame(
    stream: &mut TcpStream,
    head: Vec<u8>,
    bufs: Vec<AlignedBuf>,
    data_len: u64,
) -> (Result<(), ConnError>, Vec<AlignedBuf>) {
    let compio::BufResult(r, _) = stream.write_all(head).await;
    if let Err(e) = r {
        return (Err(e.into()), bufs);
    }
    let mut left = data_len;
    let mut out = Vec::with_capacity(bufs.len());
    let mut it = bufs.into_iter();
    while left > 0 {
        let Some(mut buf) = it.next() else {
            return (
                Err(ConnError::Protocol(
                    "reply data longer than its buffers".into(),
                )),
                out,
            );
        };
        let n = (buf.capacity() as u64).min(left) as usize;
        buf.set_len_bytes(n);
        let compio::BufResult(r, buf) = stream.write_all(buf).await;
        out.push(buf);
        if let Err(e) = r {
            out.extend(it);
            return (Err(e.into()), out);
        }
        left -= n as u64;
    }
    out.extend(it);
    (Ok(()), out)
}

/// Writes a frame whose data is plain bytes (control replies, errors).
pub async fn write_simple(
    stream: &mut TcpStream,
    encoder: &mut Encoder,
    request_id: u64,
    body: &Body,
    limits: &FrameLimits,
) -> Result<(), ConnError> {
    let head = encode_head(encoder, request_id, body, 0, limits)?;
    let compio::BufResult(r, _) = stream.write_all(head).await;
    r.map_err(ConnError::from)
}

/// Time a handshake gets, on either side: a peer that connects (or is
/// connected to) and then says nothing would otherwise hold the
/// connection, and whatever waits on it, forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one side of a handshake within [`HANDSHAKE_TIMEOUT`].
async fn within_handshake_timeout(
    exchange: impl std::future::Future<Output = Result<Identity, ConnError>>,
) -> Result<Identity, ConnError> {
    compio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            ConnError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("handshake not done within {HANDSHAKE_TIMEOUT:?}"),
            ))
        })?
}

/// The acceptor side of the handshake (Hello → Challenge → Proof →
/// Welcome), within [`HANDSHAKE_TIMEOUT`]. On failure the peer gets a
/// typed error before the close.
pub async fn accept_handshake(
    stream: &mut TcpStream,
    key: &ClusterKey,
    cluster_id: &str,
    me: Identity,
) -> Result<Identity, ConnError> {
    within_handshake_timeout(accept_handshake_unbounded(stream, key, cluster_id, me)).await
}

async fn accept_handshake_unbounded(
    stream: &mut TcpStream,
    key: &ClusterKey,
    cluster_id: &str,
    me: Identity,
) -> Result<Identity, ConnError> {
    // Nothing larger is read or sent before the peer is authenticated.
    let limits = FrameLimits::HANDSHAKE;
    let mut encoder = Encoder::new();
    let nonce = auth::fresh_nonce().map_err(|e| ConnError::Protocol(e.to_string()))?;
    let acceptor = Acceptor::new(key, cluster_id, me, nonce);
    let head = read_head(stream, &limits).await?;
    let result: Result<(Identity, u64), (ErrorCode, String)> = async {
        let hello = match head
            .body()
            .map_err(|e| (ErrorCode::BadFrame, e.to_string()))?
        {
            BodyRef::Hello(h) => h,
            _ => return Err((ErrorCode::AuthFailed, "expected Hello".to_owned())),
        };
        let (challenge, awaiting) = acceptor
            .on_hello(&hello)
            .map_err(|e| (e.code(), e.to_string()))?;
        let body = Body::Challenge(Box::new(challenge));
        write_simple(stream, &mut encoder, head.header.request_id, &body, &limits)
            .await
            .map_err(|e| (ErrorCode::Unknown, e.to_string()))?;
        let proof_head = read_head(stream, &limits)
            .await
            .map_err(|e| (ErrorCode::AuthFailed, e.to_string()))?;
        let proof = match proof_head
            .body()
            .map_err(|e| (ErrorCode::BadFrame, e.to_string()))?
        {
            BodyRef::Proof(p) => p,
            _ => return Err((ErrorCode::AuthFailed, "expected Proof".to_owned())),
        };
        let (peer, welcome) = awaiting
            .on_proof(&proof)
            .map_err(|e| (e.code(), e.to_string()))?;
        let body = Body::Welcome(Box::new(welcome));
        write_simple(
            stream,
            &mut encoder,
            proof_head.header.request_id,
            &body,
            &limits,
        )
        .await
        .map_err(|e| (ErrorCode::Unknown, e.to_string()))?;
        Ok((peer, proof_head.header.request_id))
    }
    .await;
    match result {
        Ok((peer, _)) => Ok(peer),
        Err((code, reason)) => {
            let body = ringfs_wire::message::error_body(code, handshake_reason(&reason));
            let _ =
                write_simple(stream, &mut encoder, head.header.request_id, &body, &limits).await;
            Err(ConnError::Handshake { code, reason })
        }
    }
}

/// The initiator side, for chunkserver-to-chunkserver and master links,
/// within [`HANDSHAKE_TIMEOUT`].
pub async fn initiate_handshake(
    stream: &mut TcpStream,
    key: &ClusterKey,
    cluster_id: &str,
    me: Identity,
) -> Result<Identity, ConnError> {
    within_handshake_timeout(initiate_handshake_unbounded(stream, key, cluster_id, me)).await
}

async fn initiate_handshake_unbounded(
    stream: &mut TcpStream,
    key: &ClusterKey,
    cluster_id: &str,
    me: Identity,
) -> Result<Identity, ConnError> {
    // Nothing larger is read or sent before the peer is authenticated.
    let limits = FrameLimits::HANDSHAKE;
    let mut encoder = Encoder::new();
    let nonce = auth::fresh_nonce().map_err(|e| ConnError::Protocol(e.to_string()))?;
    let initiator = Initiator::new(key, cluster_id, me, nonce);
    let hello = Body::Hello(Box::new(initiator.hello()));
    write_simple(stream, &mut encoder, 1, &hello, &limits).await?;
    let head = read_head(stream, &limits).await?;
    let challenge = match head.body()? {
        BodyRef::Challenge(c) => c,
        BodyRef::ErrorReply(e) => {
            return Err(ConnError::Handshake {
                code: e.code().unwrap_or(ErrorCode::Unknown),
                reason: e.message().ok().flatten().unwrap_or("").to_owned(),
            });
        }
        _ => return Err(ConnError::Protocol("expected Challenge".into())),
    };
    let (proof, peer) = initiator
        .on_challenge(&challenge)
        .map_err(|e| ConnError::Handshake {
            code: e.code(),
            reason: e.to_string(),
        })?;
    write_simple(
        stream,
        &mut encoder,
        2,
        &Body::Proof(Box::new(proof)),
        &limits,
    )
    .await?;
    let head = read_head(stream, &limits).await?;
    match head.body()? {
        BodyRef::Welcome(_) => Ok(peer),
        BodyRef::ErrorReply(e) => Err(ConnError::Handshake {
            code: e.code().unwrap_or(ErrorCode::Unknown),
            reason: e.message().ok().flatten().unwrap_or("").to_owned(),
        }),
        _ => Err(ConnError::Protocol("expected Welcome".into())),
    }
}

pub fn chunkserver_identity(node_id: u64) -> Identity {
    Identity {
        kind: PeerKind::Chunkserver,
        node_id,
    }
}
