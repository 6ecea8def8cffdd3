//! Framed messages over tokio TCP streams (docs/design/001-wire-frames.md)
//! and the cluster-key handshake on both sides. The master's frames are
//! small (metadata, Raft payloads), so data sections land in plain vectors.

use std::io;

use ringfs_wire::auth::{self, Acceptor, ClusterKey, Identity, Initiator};
use ringfs_wire::frame::{FrameError, FrameHeader, FrameLimits, HEADER_BYTES, handshake_reason};
use ringfs_wire::message::{Encoder, decode_meta, error_body};
use ringfs_wire::msg::{Body, BodyRef, ErrorCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a refused peer gets to take its error reply.
const REFUSAL_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

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

/// A wait that ran out (connect, or a reply), as the I/O error callers
/// see for any other broken link.
pub fn timed_out(what: String) -> ConnError {
    ConnError::Io(io::Error::new(io::ErrorKind::TimedOut, what))
}

/// A received frame, header and meta CRC-checked.
pub struct Frame {
    pub header: FrameHeader,
    pub meta: Vec<u8>,
    pub data: Vec<u8>,
}

impl Frame {
    pub fn body(&self) -> Result<BodyRef<'_>, ConnError> {
        decode_meta(&self.header, &self.meta).map_err(|e| ConnError::Message(e.to_string()))
    }
}

async fn read_vec<R: AsyncRead + Unpin>(
    stream: &mut R,
    n: usize,
    first: bool,
) -> Result<Vec<u8>, ConnError> {
    // Into spare capacity: zero-filling a chunk read's megabytes first is a
    // wasted pass over them.
    let mut buf = Vec::with_capacity(n);
    let got = (&mut *stream).take(n as u64).read_to_end(&mut buf).await?;
    if got == n {
        return Ok(buf);
    }
    if first {
        return Err(ConnError::Closed);
    }
    Err(ConnError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the peer closed the connection after {got} of {n} bytes"),
    )))
}

/// Reads one whole frame. Lengths are checked against `limits` before
/// anything is allocated for them.
pub async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    limits: &FrameLimits,
) -> Result<Frame, ConnError> {
    let raw = read_vec(stream, HEADER_BYTES, true).await?;
    let header = FrameHeader::decode(&raw, limits)?;
    let meta = read_vec(stream, header.meta_len as usize, false).await?;
    header.verify_meta(&meta)?;
    let data = read_vec(stream, header.data_len as usize, false).await?;
    Ok(Frame { header, meta, data })
}

/// Encodes a whole frame into `out` (cleared first).
pub fn encode_frame(
    encoder: &mut Encoder,
    out: &mut Vec<u8>,
    request_id: u64,
    body: &Body,
    data: &[u8],
    limits: &FrameLimits,
) -> Result<(), ConnError> {
    out.clear();
    encoder.frame(out, request_id, body, data, limits)?;
    Ok(())
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    stream: &mut W,
    encoder: &mut Encoder,
    request_id: u64,
    body: &Body,
    data: &[u8],
    limits: &FrameLimits,
) -> Result<(), ConnError> {
    let mut out = Vec::new();
    encode_frame(encoder, &mut out, request_id, body, data, limits)?;
    stream.write_all(&out).await?;
    Ok(())
}

fn handshake_error(e: &ringfs_wire::msg::ErrorReplyRef<'_>) -> ConnError {
    ConnError::Handshake {
        code: e.code().unwrap_or(ErrorCode::Unknown),
        reason: e.message().ok().flatten().unwrap_or("").to_owned(),
    }
}

/// The acceptor side of the handshake (Hello → Challenge → Proof → Welcome).
/// On failure the peer gets a typed error before the close.
pub async fn accept_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    key: &ClusterKey,
    cluster_id: &str,
    me: Identity,
) -> Result<Identity, ConnError> {
    // Nothing larger is read or sent before the peer is authenticated.
    let limits = FrameLimits::HANDSHAKE;
    let mut encoder = Encoder::new();
    let nonce = auth::fresh_nonce().map_err(|e| ConnError::Protocol(e.to_string()))?;
    let acceptor = Acceptor::new(key, cluster_id, me, nonce);
    let hello_frame = read_frame(stream, &limits).await?;
    let result: Result<Identity, (ErrorCode, String)> = async {
        let BodyRef::Hello(hello) = hello_frame
            .body()
            .map_err(|e| (ErrorCode::BadFrame, e.to_string()))?
        else {
            return Err((ErrorCode::AuthFailed, "expected Hello".to_owned()));
        };
        let (challenge, awaiting) = acceptor
            .on_hello(&hello)
            .map_err(|e| (e.code(), e.to_string()))?;
        let body = Body::Challenge(Box::new(challenge));
        write_frame(
            stream,
            &mut encoder,
            hello_frame.header.request_id,
            &body,
            &[],
            &limits,
        )
        .await
        .map_err(|e| (ErrorCode::Unknown, e.to_string()))?;
        let proof_frame = read_frame(stream, &limits)
            .await
            .map_err(|e| (ErrorCode::AuthFailed, e.to_string()))?;
        let BodyRef::Proof(proof) = proof_frame
            .body()
            .map_err(|e| (ErrorCode::BadFrame, e.to_string()))?
        else {
            return Err((ErrorCode::AuthFailed, "expected Proof".to_owned()));
        };
        let (peer, welcome) = awaiting
            .on_proof(&proof)
            .map_err(|e| (e.code(), e.to_string()))?;
        let body = Body::Welcome(Box::new(welcome));
        write_frame(
            stream,
            &mut encoder,
            proof_frame.header.request_id,
            &body,
            &[],
            &limits,
        )
        .await
        .map_err(|e| (ErrorCode::Unknown, e.to_string()))?;
        Ok(peer)
    }
    .await;
    match result {
        Ok(peer) => Ok(peer),
        Err((code, reason)) => {
            let body = error_body(code, handshake_reason(&reason));
            let mut out = Vec::new();
            if encode_frame(
                &mut encoder,
                &mut out,
                hello_frame.header.request_id,
                &body,
                &[],
                &limits,
            )
            .is_ok()
            {
                // Best effort, bounded: the peer is refused either way.
                let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, stream.write_all(&out)).await;
            }
            Err(ConnError::Handshake { code, reason })
        }
    }
}

/// The initiator side, for master-to-chunkserver and master-to-master links.
pub async fn initiate_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
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
    write_frame(stream, &mut encoder, 1, &hello, &[], &limits).await?;
    let frame = read_frame(stream, &limits).await?;
    let challenge = match frame.body()? {
        BodyRef::Challenge(c) => c,
        BodyRef::ErrorReply(e) => return Err(handshake_error(&e)),
        _ => return Err(ConnError::Protocol("expected Challenge".into())),
    };
    let (proof, peer) = initiator
        .on_challenge(&challenge)
        .map_err(|e| ConnError::Handshake {
            code: e.code(),
            reason: e.to_string(),
        })?;
    write_frame(
        stream,
        &mut encoder,
        2,
        &Body::Proof(Box::new(proof)),
        &[],
        &limits,
    )
    .await?;
    let frame = read_frame(stream, &limits).await?;
    match frame.body()? {
        BodyRef::Welcome(_) => Ok(peer),
        BodyRef::ErrorReply(e) => Err(handshake_error(&e)),
        _ => Err(ConnError::Protocol("expected Welcome".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfs_wire::msg::Ping;

    fn ping_frame(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let body = Body::Ping(Box::new(Ping { sent_at_us: 7 }));
        encode_frame(
            &mut Encoder::new(),
            &mut out,
            1,
            &body,
            data,
            &FrameLimits::DATA,
        )
        .expect("encode");
        out
    }

    #[tokio::test]
    async fn a_whole_frame_reads_back_with_its_data() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let bytes = ping_frame(&data);
        let frame = read_frame(&mut &bytes[..], &FrameLimits::DATA)
            .await
            .expect("read");
        assert_eq!(frame.data, data);
        assert!(matches!(frame.body().expect("body"), BodyRef::Ping(_)));
    }

    #[tokio::test]
    async fn a_close_before_a_frame_is_closed_and_a_short_data_section_is_an_error() {
        let empty: &[u8] = &[];
        assert!(matches!(
            read_frame(&mut &empty[..], &FrameLimits::DATA).await,
            Err(ConnError::Closed)
        ));
        let bytes = ping_frame(&[1u8; 1000]);
        let cut = &bytes[..bytes.len() - 10];
        match read_frame(&mut &cut[..], &FrameLimits::DATA).await {
            Err(ConnError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            Err(e) => panic!("expected an I/O error, got {e}"),
            Ok(_) => panic!("a truncated frame was accepted"),
        }
    }
}
