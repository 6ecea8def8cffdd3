//! Authenticated request/response links to masters and chunkservers, and a
//! bounded pool of idle ones per address. A link carries one request at a
//! time; concurrency comes from several links, which keeps a slow reply from
//! holding up an unrelated one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ringfs_wire::admit;
use ringfs_wire::auth::{ClusterKey, Identity};
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::message::Encoder;
use ringfs_wire::msg::{Body, PeerKind};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::frames::{self, ConnError};

/// Idle links kept per address; more are closed when returned.
pub const IDLE_LINKS_PER_ADDR_MAX: usize = 32;

/// Read buffer of a link: a reply's header and meta in one recv. Larger
/// reads (chunk data) bypass it.
const READ_BUFFER_BYTES: usize = 8 << 10;

pub struct Link {
    stream: BufReader<TcpStream>,
    encoder: Encoder,
    out: Vec<u8>,
    next_request_id: u64,
    limits: FrameLimits,
}

/// A reply: its body and its data section.
pub struct Reply {
    pub body: Body,
    pub data: Vec<u8>,
}

/// A TCP connection to `addr`, authenticated as a client with the cluster
/// key (lock-step and multiplexed links start alike).
pub(crate) async fn connect_as_client(
    addr: &str,
    key: &ClusterKey,
    cluster_id: &str,
) -> Result<TcpStream, ConnError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let me = Identity {
        kind: PeerKind::Client,
        node_id: 0,
    };
    frames::initiate_handshake(&mut stream, key, cluster_id, me).await?;
    Ok(stream)
}

impl Link {
    pub async fn connect(
        addr: &str,
        key: &ClusterKey,
        cluster_id: &str,
        limits: FrameLimits,
    ) -> Result<Link, ConnError> {
        let stream = connect_as_client(addr, key, cluster_id).await?;
        Ok(Link {
            stream: BufReader::with_capacity(READ_BUFFER_BYTES, stream),
            encoder: Encoder::new(),
            out: Vec::new(),
            next_request_id: 1,
            limits,
        })
    }

    /// Sends `body` with `data` and reads the reply, which must carry the
    /// same request id (one request at a time on a link).
    pub async fn call(&mut self, body: &Body, data: &[u8]) -> Result<Reply, ConnError> {
        let id = self.next_request_id;
        self.next_request_id += 1;
        // The header and meta go in one small buffer; bulk data is written
        // from the caller's slice, not copied behind them.
        self.out.clear();
        self.encoder
            .head(&mut self.out, id, body, data.len() as u64, &self.limits)?;
        self.stream.write_all(&self.out).await?;
        if !data.is_empty() {
            self.stream.write_all(data).await?;
        }
        let frame = frames::read_frame(&mut self.stream, &self.limits).await?;
        if frame.header.request_id != id {
            return Err(ConnError::Protocol(format!(
                "reply to request {} while waiting for {id}",
                frame.header.request_id
            )));
        }
        // Only replies are taken, and copied only once `admit` has bounded
        // what the copy reaches: shared offsets would repeat a table or
        // string once per offset.
        let kind = frame.header.kind;
        if !admit::is_reply(kind) {
            return Err(ConnError::Protocol(format!(
                "{kind:?} in answer to request {id}, which is not a reply"
            )));
        }
        let body = admit::to_owned(frame.body()?, frame.meta.len())
            .map_err(|e| ConnError::Message(e.to_string()))?;
        Ok(Reply {
            body,
            data: frame.data,
        })
    }
}

/// Idle links by address. Links are taken out for one call and put back
/// when the call succeeded; a failed link is dropped (its stream may hold a
/// half-read reply).
pub struct Pool {
    key: ClusterKey,
    cluster_id: String,
    limits: FrameLimits,
    connect_timeout: Duration,
    idle: Mutex<HashMap<String, Vec<Link>>>,
}

impl Pool {
    pub fn new(
        key: ClusterKey,
        cluster_id: String,
        limits: FrameLimits,
        connect_timeout: Duration,
    ) -> Pool {
        Pool {
            key,
            cluster_id,
            limits,
            connect_timeout,
            idle: Mutex::new(HashMap::new()),
        }
    }

    async fn take(&self, addr: &str) -> Result<Link, ConnError> {
        let idle = {
            let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            map.get_mut(addr).and_then(Vec::pop)
        };
        if let Some(link) = idle {
            return Ok(link);
        }
        match tokio::time::timeout(
            self.connect_timeout,
            Link::connect(addr, &self.key, &self.cluster_id, self.limits),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(frames::timed_out(format!(
                "connecting to {addr} took over {:?}",
                self.connect_timeout
            ))),
        }
    }

    fn give_back(&self, addr: &str, link: Link) {
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let links = map.entry(addr.to_owned()).or_default();
        if links.len() < IDLE_LINKS_PER_ADDR_MAX {
            links.push(link);
        }
    }

    /// Forgets the idle links to `addr` (the peer restarted or failed).
    pub fn forget(&self, addr: &str) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr);
    }

    /// One request on a pooled link, bounded by `timeout` end to end.
    pub async fn call(
        &self,
        addr: &str,
        body: &Body,
        data: &[u8],
        timeout: Duration,
    ) -> Result<Reply, ConnError> {
        let attempt = async {
            let mut link = self.take(addr).await?;
            let reply = link.call(body, data).await?;
            Ok::<_, ConnError>((link, reply))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok((link, reply))) => {
                self.give_back(addr, link);
                Ok(reply)
            }
            Ok(Err(e)) => {
                self.forget(addr);
                Err(e)
            }
            Err(_) => Err(frames::timed_out(format!(
                "{addr} did not answer within {timeout:?}"
            ))),
        }
    }
}
