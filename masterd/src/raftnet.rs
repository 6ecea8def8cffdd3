//! Raft traffic between masters, client side (design note 013).
//!
//! openraft asks [`PeerNetwork`] for one [`PeerLink`] per replication
//! stream and per election. A link owns one TCP connection to the target's
//! `peer_addr`, authenticated with the cluster key as this master, and is
//! lock-step: one `RaftRequest` frame out, one `RaftReply` back. openraft's
//! request and response travel as postcard bytes in the frame's data
//! section, with one CRC32C per 64 KiB piece in the meta, so log entries are
//! checked end to end rather than trusted to TCP. The server side is
//! [`crate::peer`].
//!
//! Errors map onto what openraft does next: a refused connect is
//! `Unreachable` (openraft backs off), a broken exchange is `Network`
//! (retried at once), a reply over the frame limit is `PayloadTooLarge`
//! (openraft sends fewer entries), the target's own Raft error is a
//! `RemoteError`.

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use ringfs_wire::admit;
use ringfs_wire::auth::{ClusterKey, Identity};
use ringfs_wire::checksum::block_checksums;
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::message::Encoder;
use ringfs_wire::msg::{Body, PeerKind, RaftReply, RaftRequest, RaftRpc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::conn::{self, ConnError};
use crate::types::{NodeId, TypeConfig};

/// Connect plus handshake to another master.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest openraft payload in one frame (the control frame's data limit).
pub const PAYLOAD_BYTES_MAX: usize = FrameLimits::CONTROL.max_data_bytes as usize;
/// Pause before openraft retries an unreachable master. A restarted
/// follower waits at most this long for its first entries.
pub const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// The checks of a Raft payload against its per-64 KiB CRC32Cs.
pub fn verify_payload(crcs: Option<&[u32]>, data: &[u8]) -> Result<(), String> {
    let expected = block_checksums(data);
    match crcs {
        Some(got) if got == expected.as_slice() => Ok(()),
        Some(got) => Err(format!(
            "payload of {} bytes fails its checksums ({} given, {} expected)",
            data.len(),
            got.len(),
            expected.len()
        )),
        None => Err("payload without checksums".into()),
    }
}

/// Why one exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Nothing reached the target (connect refused, handshake refused).
    #[error("cannot reach master {target} at {addr}: {source}")]
    Connect {
        target: NodeId,
        addr: String,
        source: ConnError,
    },
    #[error("master {target} at {addr}: {source}")]
    Exchange {
        target: NodeId,
        addr: String,
        source: ConnError,
    },
    #[error("master {target} at {addr} refused the request: {message}")]
    Refused {
        target: NodeId,
        addr: String,
        message: String,
    },
}

/// One authenticated, lock-step connection to another master, reopened on
/// demand.
pub struct PeerConn {
    me: Identity,
    key: ClusterKey,
    cluster_id: String,
    target: NodeId,
    addr: String,
    stream: Option<TcpStream>,
    encoder: Encoder,
    out: Vec<u8>,
}

impl PeerConn {
    pub fn new(
        me: NodeId,
        key: ClusterKey,
        cluster_id: String,
        target: NodeId,
        addr: String,
    ) -> PeerConn {
        PeerConn {
            me: Identity {
                kind: PeerKind::Master,
                node_id: me,
            },
            key,
            cluster_id,
            target,
            addr,
            stream: None,
            encoder: Encoder::new(),
            out: Vec::new(),
        }
    }

    async fn connect(&self) -> Result<TcpStream, ConnError> {
        let attempt = async {
            let mut stream = TcpStream::connect(&self.addr).await?;
            stream.set_nodelay(true)?;
            let peer =
                conn::initiate_handshake(&mut stream, &self.key, &self.cluster_id, self.me).await?;
            if peer.kind != PeerKind::Master || peer.node_id != self.target {
                return Err(ConnError::Protocol(format!(
                    "{} answers as {:?} {}, not master {}",
                    self.addr, peer.kind, peer.node_id, self.target
                )));
            }
            Ok(stream)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| ConnError::Protocol("connect timed out".into()))?
    }

    /// Sends one request and returns the reply's payload. A pooled
    /// connection the target closed meanwhile is retried once on a fresh one.
    pub async fn exchange(&mut self, rpc: RaftRpc, payload: &[u8]) -> Result<Vec<u8>, LinkError> {
        if let Some(mut stream) = self.stream.take()
            && let Ok(reply) = self.exchange_on(&mut stream, rpc, payload).await
        {
            self.stream = Some(stream);
            return reply;
        }
        let mut stream = self.connect().await.map_err(|source| LinkError::Connect {
            target: self.target,
            addr: self.addr.clone(),
            source,
        })?;
        let reply = self
            .exchange_on(&mut stream, rpc, payload)
            .await
            .map_err(|source| LinkError::Exchange {
                target: self.target,
                addr: self.addr.clone(),
                source,
            })?;
        self.stream = Some(stream);
        reply
    }

    /// The outer error is the link's (try a fresh connection); the inner one
    /// is the target's typed refusal.
    async fn exchange_on(
        &mut self,
        stream: &mut TcpStream,
        rpc: RaftRpc,
        payload: &[u8],
    ) -> Result<Result<Vec<u8>, LinkError>, ConnError> {
        let limits = FrameLimits::CONTROL;
        let body = Body::RaftRequest(Box::new(RaftRequest {
            rpc,
            from: self.me.node_id,
            to: self.target,
            block_crcs: Some(block_checksums(payload)),
        }));
        conn::encode_frame(&mut self.encoder, &mut self.out, 1, &body, payload, &limits)?;
        tokio::io::AsyncWriteExt::write_all(stream, &self.out).await?;
        let frame = conn::read_frame(stream, &limits).await?;
        if frame.header.request_id != 1 {
            return Err(ConnError::Protocol("reply to another request".into()));
        }
        // Copied only once `admit` has bounded what the copy reaches.
        let reply = match admit::to_owned(frame.body()?, frame.meta.len()) {
            Ok(b) => b,
            Err(e) => return Err(ConnError::Message(e.to_string())),
        };
        match reply {
            Body::RaftReply(r) => {
                let r: RaftReply = *r;
                if r.rpc != rpc {
                    return Err(ConnError::Protocol(format!(
                        "a {:?} reply to a {rpc:?} request",
                        r.rpc
                    )));
                }
                verify_payload(r.block_crcs.as_deref(), &frame.data)
                    .map_err(ConnError::Protocol)?;
                Ok(Ok(frame.data))
            }
            Body::ErrorReply(e) => Ok(Err(LinkError::Refused {
                target: self.target,
                addr: self.addr.clone(),
                message: format!("{:?}: {}", e.code, e.message.unwrap_or_default()),
            })),
            other => Err(ConnError::Protocol(format!(
                "unexpected reply {:?}",
                ringfs_wire::msg::MessageKind::of_body(&other)
            ))),
        }
    }
}

/// Voters this master, as leader, sends no AppendEntries to for a while.
/// A handover in a group of more than three uses it (`crate::failover`):
/// openraft 0.9 refreshes a follower's leader lease on every AppendEntries
/// and refuses votes while it runs, so the target's election needs voters
/// that have not heard from the leader for a lease; withholding from just
/// enough of them, while the rest keep committing, gets those without a
/// pause in the writes. Dropping messages is always safe in Raft: the
/// entries follow once it ends (openraft retries after its backoff).
#[derive(Debug, Default)]
pub struct Withheld {
    until: Mutex<BTreeMap<NodeId, Instant>>,
}

/// Voters withheld at once, at most: no group has more masters than a
/// config lists.
const WITHHELD_MAX: usize = ringfs_wire::config::MASTERS_MAX;

impl Withheld {
    /// Withholds from `ids` until `until` (or [`Withheld::release`]).
    pub fn withhold(&self, ids: &[NodeId], until: Instant) {
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        for &id in ids {
            map.insert(id, until);
        }
        assert!(
            map.len() <= WITHHELD_MAX,
            "withholding from {} voters",
            map.len()
        );
    }

    pub fn release(&self) {
        self.until.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn is_withheld(&self, id: NodeId) -> bool {
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&id) {
            Some(&until) if Instant::now() < until => true,
            Some(_) => {
                map.remove(&id);
                false
            }
            None => false,
        }
    }
}

/// Hands openraft one [`PeerLink`] per stream.
pub struct PeerNetwork {
    me: NodeId,
    key: ClusterKey,
    cluster_id: String,
    withheld: Arc<Withheld>,
}

impl PeerNetwork {
    pub fn new(
        me: NodeId,
        key: ClusterKey,
        cluster_id: String,
        withheld: Arc<Withheld>,
    ) -> PeerNetwork {
        PeerNetwork {
            me,
            key,
            cluster_id,
            withheld,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        PeerLink {
            conn: PeerConn::new(
                self.me,
                self.key.clone(),
                self.cluster_id.clone(),
                target,
                node.addr.clone(),
            ),
            withheld: self.withheld.clone(),
        }
    }
}

pub struct PeerLink {
    conn: PeerConn,
    withheld: Arc<Withheld>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

fn network_error<E: Error>(e: &(dyn Error + 'static)) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
}

// openraft's own error type, which its trait methods return as is.
#[allow(clippy::result_large_err)]
fn encode<T: Serialize, E: Error>(
    req: &T,
) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
    postcard::to_allocvec(req).map_err(|e| network_error(&e))
}

impl PeerLink {
    async fn call<Resp, E>(
        &mut self,
        action: RPCTypes,
        rpc: RaftRpc,
        payload: &[u8],
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let target = self.conn.target;
        let reply = match tokio::time::timeout(ttl, self.conn.exchange(rpc, payload)).await {
            Err(_) => {
                // The half-done exchange leaves the stream mid-frame.
                self.conn.stream = None;
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.conn.me.node_id,
                    target,
                    timeout: ttl,
                }));
            }
            Ok(Err(e @ LinkError::Connect { .. })) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Ok(Err(e)) => return Err(network_error(&e)),
            Ok(Ok(reply)) => reply,
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&reply).map_err(|e| network_error(&e))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        if self.withheld.is_withheld(self.conn.target) {
            let why = std::io::Error::other("withheld during a leadership handover");
            return Err(RPCError::Unreachable(Unreachable::new(&why)));
        }
        // Sized before sending: a frame over the limit would be refused by
        // the target after the whole transfer.
        let payload = encode(&rpc)?;
        if payload.len() > PAYLOAD_BYTES_MAX {
            // openraft retries with fewer entries, and treats a single
            // entry over the limit as unreachable (an entry is bounded far
            // below it: oplog::format).
            let hint = (rpc.entries.len() as u64 / 2).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.call(
            RPCTypes::AppendEntries,
            RaftRpc::AppendEntries,
            &payload,
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let payload = encode(&rpc)?;
        self.call(
            RPCTypes::InstallSnapshot,
            RaftRpc::InstallSnapshot,
            &payload,
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let payload = encode(&rpc)?;
        self.call(RPCTypes::Vote, RaftRpc::Vote, &payload, &option)
            .await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withholding_ends_at_its_instant_or_on_release() {
        let w = Withheld::default();
        let now = Instant::now();
        w.withhold(&[2, 3], now + Duration::from_secs(60));
        w.withhold(&[4], now);
        assert!(w.is_withheld(2) && w.is_withheld(3));
        assert!(!w.is_withheld(4), "its instant has passed");
        assert!(!w.is_withheld(5));
        w.release();
        assert!(!w.is_withheld(2) && !w.is_withheld(3));
    }
}
