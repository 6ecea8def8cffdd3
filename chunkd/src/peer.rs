//! Outbound connections of one core to other chunkservers (forwarding
//! mutations and pushed data down the chain, reading a clone source).
//! A small per-address pool of idle, authenticated connections; each
//! request uses one connection exclusively, so replies need no matching.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use compio::net::TcpStream;
use std::sync::Arc;

use crate::node::Node;
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::message::Encoder;
use ringfs_wire::msg::Body;

use crate::conn::{self, ConnError, FrameHead};
use crate::dio::AlignedBuf;

/// Idle connections kept per peer address, per core: about as many as
/// mutations forwarded at once, so a burst does not reconnect.
pub const IDLE_PER_PEER: usize = 32;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A forwarded mutation includes the peer's disk write and fdatasync.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PeerPool {
    idle: RefCell<HashMap<String, Vec<TcpStream>>>,
    /// Key, cluster id and our node id (read at each connect: the master
    /// may assign the id after start-up).
    node: Arc<Node>,
}

/// A peer's reply: its head, and its data (if any) in the given buffers.
pub struct PeerReply {
    pub head: FrameHead,
    pub data_len: u64,
}

impl PeerPool {
    pub fn new(node: Arc<Node>) -> PeerPool {
        PeerPool {
            idle: RefCell::new(HashMap::new()),
            node,
        }
    }

    async fn connect(&self, addr: &str) -> Result<TcpStream, ConnError> {
        let sock: SocketAddr = addr
            .parse()
            .map_err(|_| ConnError::Protocol(format!("bad peer address {addr:?}")))?;
        let mut stream = compio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(sock))
            .await
            .map_err(|_| ConnError::Protocol(format!("connecting to {addr} timed out")))??;
        stream.set_nodelay(true)?;
        conn::initiate_handshake(
            &mut stream,
            &self.node.key,
            &self.node.settings.cluster_id,
            conn::chunkserver_identity(self.node.node_id()),
        )
        .await?;
        Ok(stream)
    }

    /// Sends one request with `data_len` bytes from `bufs`; the reply is
    /// awaited separately ([`PeerPool::receive`]), so the caller can reuse
    /// the buffers (e.g. for its own disk write) meanwhile.
    pub async fn send(
        &self,
        addr: &str,
        body: &Body,
        bufs: Vec<AlignedBuf>,
        data_len: u64,
    ) -> (Result<InFlight, ConnError>, Vec<AlignedBuf>) {
        let pooled = self.idle.borrow_mut().get_mut(addr).and_then(|v| v.pop());
        let mut stream = match pooled {
            Some(s) => s,
            None => match self.connect(addr).await {
                Ok(s) => s,
                Err(e) => return (Err(e), bufs),
            },
        };
        let mut encoder = Encoder::new();
        let head = match conn::encode_head(&mut encoder, 1, body, data_len, &FrameLimits::DATA) {
            Ok(h) => h,
            Err(e) => return (Err(e), bufs),
        };
        match compio::time::timeout(
            REQUEST_TIMEOUT,
            conn::write_frame(&mut stream, head, bufs, data_len),
        )
        .await
        {
            Ok((Ok(()), bufs)) => (
                Ok(InFlight {
                    stream,
                    addr: addr.to_owned(),
                }),
                bufs,
            ),
            Ok((Err(e), bufs)) => (Err(e), bufs),
            Err(_) => (
                Err(ConnError::Protocol(format!("sending to {addr} timed out"))),
                Vec::new(),
            ),
        }
    }

    /// Waits for the reply of a sent request; reply data lands in
    /// `reply_bufs`. The connection goes back to the idle pool on success.
    pub async fn receive(
        &self,
        inflight: InFlight,
        reply_bufs: Vec<AlignedBuf>,
    ) -> (Result<PeerReply, ConnError>, Vec<AlignedBuf>) {
        let InFlight { mut stream, addr } = inflight;
        let exchange = async {
            let head = match conn::read_head(&mut stream, &FrameLimits::DATA).await {
                Ok(h) => h,
                Err(e) => return (Err(e), reply_bufs),
            };
            let len = u64::from(head.header.data_len);
            if len == 0 {
                return (Ok(PeerReply { head, data_len: 0 }), reply_bufs);
            }
            let capacity: u64 = reply_bufs.iter().map(|b| b.capacity() as u64).sum();
            if len > capacity {
                return (
                    Err(ConnError::Protocol(format!(
                        "peer sent {len} data bytes, room for {capacity}"
                    ))),
                    reply_bufs,
                );
            }
            let (r, reply_bufs) = conn::read_data(&mut stream, reply_bufs, len).await;
            (
                r.map(|_| PeerReply {
                    head,
                    data_len: len,
                }),
                reply_bufs,
            )
        };
        match compio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok((Ok(reply), reply_bufs)) => {
                let mut idle = self.idle.borrow_mut();
                let list = idle.entry(addr).or_default();
                if list.len() < IDLE_PER_PEER {
                    list.push(stream);
                }
                (Ok(reply), reply_bufs)
            }
            Ok((Err(e), reply_bufs)) => (Err(e), reply_bufs),
            Err(_) => (
                Err(ConnError::Protocol(format!("reply from {addr} timed out"))),
                Vec::new(),
            ),
        }
    }

    pub async fn request(
        &self,
        addr: &str,
        body: &Body,
        bufs: Vec<AlignedBuf>,
        data_len: u64,
        reply_bufs: Vec<AlignedBuf>,
    ) -> (
        Result<PeerReply, ConnError>,
        Vec<AlignedBuf>,
        Vec<AlignedBuf>,
    ) {
        let (r, bufs) = self.send(addr, body, bufs, data_len).await;
        match r {
            Ok(inflight) => {
                let (r, reply_bufs) = self.receive(inflight, reply_bufs).await;
                (r, bufs, reply_bufs)
            }
            Err(e) => (Err(e), bufs, reply_bufs),
        }
    }
}

/// A request sent on an exclusive connection, its reply not yet read.
pub struct InFlight {
    stream: TcpStream,
    addr: String,
}
