//! Raft traffic between masters, server side (design note 013): the
//! listener on `peer_addr`.
//!
//! Only masters of the config get past the handshake. Each connection is
//! lock-step: a `RaftRequest` (openraft's request as postcard bytes in the
//! data section, checked against its CRC32Cs), then one `RaftReply` with the
//! local Raft's answer, `Result` and all, so the caller sees the target's
//! own error as a remote one. `TransferLeader` is ours, not openraft's: the
//! graceful handover of `failover`.

use std::sync::Arc;
use std::time::Duration;

use ringfs_wire::auth::Identity;
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::message::{Encoder, error_body};
use ringfs_wire::msg::{
    Body, BodyRef, ErrorCode, MessageKind, PeerKind, RaftReply, RaftRequest, RaftRpc,
};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::conn::{self, ConnError};
use crate::failover::{self, Handover};
use crate::node::Master;
use crate::raftnet::verify_payload;

/// Master connections served at once (a few per peer: one per replication
/// stream, one per election, one per handover).
pub const PEER_CONNECTIONS_MAX: usize = 64;

pub async fn accept_loop(master: Arc<Master>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(PEER_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let master = master.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match serve(&master, stream).await {
                Ok(()) | Err(ConnError::Closed) => {}
                Err(e @ ConnError::Handshake { .. }) => {
                    master
                        .metrics
                        .handshake_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(%from, error = %e, "peer handshake refused");
                }
                Err(e) => tracing::debug!(%from, error = %e, "peer connection ended"),
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
    let peer = tokio::time::timeout(
        crate::server::HANDSHAKE_TIMEOUT,
        conn::accept_handshake(
            &mut stream,
            &master.config.key,
            &master.config.file.cluster_id,
            me,
        ),
    )
    .await
    .map_err(|_| ConnError::Protocol("handshake timed out".into()))??;
    let limits = FrameLimits::CONTROL;
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    let known = peer.kind == PeerKind::Master
        && peer.node_id != master.id
        && master.config.master(peer.node_id).is_some();
    loop {
        let frame = conn::read_frame(&mut stream, &limits).await?;
        let id = frame.header.request_id;
        // Refused on the header alone, before anything is copied: a peer
        // not of the config, and any kind but RaftRequest.
        let request = if !known {
            Err(error_body(
                ErrorCode::AuthFailed,
                format!(
                    "the peer port serves the masters of the config; {:?} {} is not one",
                    peer.kind, peer.node_id
                ),
            ))
        } else if frame.header.kind != MessageKind::RaftRequest {
            Err(error_body(
                ErrorCode::BadRequest,
                format!(
                    "the peer port takes RaftRequest, not {:?}",
                    frame.header.kind
                ),
            ))
        } else {
            // Copied without `admit`: its only vector holds u32s, so
            // shared offsets cannot multiply it.
            match frame.body() {
                Ok(BodyRef::RaftRequest(r)) => RaftRequest::try_from(r)
                    .map_err(|e| error_body(ErrorCode::BadFrame, e.to_string())),
                Ok(_) => Err(error_body(ErrorCode::BadFrame, "not a RaftRequest")),
                Err(e) => Err(error_body(ErrorCode::BadFrame, e.to_string())),
            }
        };
        let (reply, data) = match request {
            Ok(r) => match answer(master, peer.node_id, &r, &frame.data).await {
                Ok(data) => (
                    Body::RaftReply(Box::new(RaftReply {
                        rpc: r.rpc,
                        block_crcs: Some(ringfs_wire::checksum::block_checksums(&data)),
                    })),
                    data,
                ),
                Err((code, why)) => (error_body(code, why), Vec::new()),
            },
            Err(refusal) => {
                if matches!(&refusal, Body::ErrorReply(e) if e.code == ErrorCode::BadFrame) {
                    master
                        .metrics
                        .bad_frames
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                (refusal, Vec::new())
            }
        };
        if let Err(e) = conn::encode_frame(&mut encoder, &mut out, id, &reply, &data, &limits) {
            let small = error_body(ErrorCode::TooLarge, e.to_string());
            conn::encode_frame(&mut encoder, &mut out, id, &small, &[], &limits)?;
        }
        tokio::io::AsyncWriteExt::write_all(&mut stream, &out).await?;
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, (ErrorCode, String)> {
    postcard::to_allocvec(v).map_err(|e| (ErrorCode::Internal, format!("encoding a reply: {e}")))
}

fn decode<'a, T: serde::Deserialize<'a>>(data: &'a [u8]) -> Result<T, (ErrorCode, String)> {
    postcard::from_bytes(data).map_err(|e| (ErrorCode::BadRequest, format!("bad payload: {e}")))
}

/// Runs one request against the local Raft; the reply's payload.
async fn answer(
    master: &Master,
    from: u64,
    r: &RaftRequest,
    data: &[u8],
) -> Result<Vec<u8>, (ErrorCode, String)> {
    if r.from != from || r.to != master.id {
        return Err((
            ErrorCode::BadRequest,
            format!(
                "a request from {} to {} on a link from {from} to {}",
                r.from, r.to, master.id
            ),
        ));
    }
    verify_payload(r.block_crcs.as_deref(), data).map_err(|e| (ErrorCode::ChecksumMismatch, e))?;
    match r.rpc {
        RaftRpc::AppendEntries => encode(&master.raft.append_entries(decode(data)?).await),
        RaftRpc::Vote => {
            let req = decode(data)?;
            if let Some(why) = crate::election::take_over_instead(master, &req).await {
                return Err((ErrorCode::Unavailable, why));
            }
            encode(&master.raft.vote(req).await)
        }
        RaftRpc::InstallSnapshot => encode(&master.raft.install_snapshot(decode(data)?).await),
        RaftRpc::TransferLeader => {
            let handover: Handover = decode(data)?;
            encode(&failover::on_handover(master, from, handover).await)
        }
    }
}
