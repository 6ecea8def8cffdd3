//! Direct commands to chunkservers, for what a client is waiting on
//! (create the replicas of a new chunk, bump versions, grant a lease).
//! Background work (deletes, clones) rides heartbeat replies instead.
//!
//! Connections authenticate as this master and are kept in a small idle
//! pool per address; one command at a time per connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringfs_wire::admit;
use ringfs_wire::auth::{ClusterKey, Identity};
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::message::Encoder;
use ringfs_wire::msg::{Body, ErrorCode, ErrorReply, PeerKind};
use tokio::net::TcpStream;

use crate::conn::{self, ConnError};

/// Connect plus handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One command and its reply (a create fallocates a whole chunk).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept per chunkserver: about as many as commands run
/// at once to one server (every allocation sends one to each replica), or
/// each burst above it pays a connect and a handshake per command.
pub const IDLE_PER_SERVER_MAX: usize = 64;
/// Chunkservers with idle connections kept.
pub const SERVERS_MAX: usize = 4096;
/// Idle connections kept in all (file descriptors).
pub const IDLE_TOTAL_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{addr}: {source}")]
    Link { addr: String, source: ConnError },
    #[error("{addr}: timed out")]
    Timeout { addr: String },
    #[error("{addr}: refused ({:?}): {}", .reply.code, .reply.message.as_deref().unwrap_or(""))]
    Refused {
        addr: String,
        reply: Box<ErrorReply>,
    },
}

impl CommandError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::Refused { reply, .. } => reply.code,
            CommandError::Timeout { .. } => ErrorCode::Timeout,
            CommandError::Link { .. } => ErrorCode::Unavailable,
        }
    }
}

pub struct CsClient {
    key: ClusterKey,
    cluster_id: String,
    me: Identity,
    idle: Mutex<Idle>,
    /// Commands chunkservers refused as of an epoch older than one they
    /// have seen: this master was deposed (fencing at work).
    pub stale_epoch_refusals: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Idle {
    by_addr: HashMap<String, Vec<TcpStream>>,
    total: usize,
}

impl CsClient {
    pub fn new(key: ClusterKey, cluster_id: String, master_id: u64) -> Arc<CsClient> {
        Arc::new(CsClient {
            key,
            cluster_id,
            me: Identity {
                kind: PeerKind::Master,
                node_id: master_id,
            },
            idle: Mutex::new(Idle::default()),
            stale_epoch_refusals: std::sync::atomic::AtomicU64::new(0),
        })
    }

    async fn connect(&self, addr: &str) -> Result<TcpStream, ConnError> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        conn::initiate_handshake(&mut stream, &self.key, &self.cluster_id, self.me).await?;
        Ok(stream)
    }

    fn take_idle(&self, addr: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stream = idle.by_addr.get_mut(addr)?.pop()?;
        idle.total -= 1;
        Some(stream)
    }

    fn put_idle(&self, addr: &str, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.total >= IDLE_TOTAL_MAX
            || (idle.by_addr.len() >= SERVERS_MAX && !idle.by_addr.contains_key(addr))
        {
            return;
        }
        let list = idle.by_addr.entry(addr.to_string()).or_default();
        if list.len() < IDLE_PER_SERVER_MAX {
            list.push(stream);
            idle.total += 1;
        }
        assert!(idle.total <= IDLE_TOTAL_MAX);
    }

    /// Sends one command and waits for its `Ack` (or typed refusal).
    pub async fn command(&self, addr: &str, body: &Body) -> Result<(), CommandError> {
        let link = |source| CommandError::Link {
            addr: addr.to_string(),
            source,
        };
        let attempt = async {
            // A pooled connection may have been closed by the peer meanwhile:
            // one retry on a fresh connection, no more.
            if let Some(mut stream) = self.take_idle(addr)
                && let Ok(reply) = exchange(&mut stream, body).await
            {
                self.put_idle(addr, stream);
                return Ok(reply);
            }
            let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(addr))
                .await
                .map_err(|_| CommandError::Timeout {
                    addr: addr.to_string(),
                })?
                .map_err(link)?;
            let reply = exchange(&mut stream, body).await.map_err(link)?;
            self.put_idle(addr, stream);
            Ok(reply)
        };
        let reply = tokio::time::timeout(COMMAND_TIMEOUT, attempt)
            .await
            .map_err(|_| CommandError::Timeout {
                addr: addr.to_string(),
            })??;
        match reply {
            Body::Ack(_) => Ok(()),
            Body::ErrorReply(reply) => {
                if reply.code == ErrorCode::StaleEpoch {
                    self.stale_epoch_refusals
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(CommandError::Refused {
                    addr: addr.to_string(),
                    reply,
                })
            }
            other => Err(link(ConnError::Protocol(format!(
                "unexpected reply {:?}",
                ringfs_wire::msg::MessageKind::of_body(&other)
            )))),
        }
    }
}

async fn exchange(stream: &mut TcpStream, body: &Body) -> Result<Body, ConnError> {
    let limits = FrameLimits::CONTROL;
    let mut encoder = Encoder::new();
    conn::write_frame(stream, &mut encoder, 1, body, &[], &limits).await?;
    let frame = conn::read_frame(stream, &limits).await?;
    if frame.header.request_id != 1 {
        return Err(ConnError::Protocol("reply to another request".into()));
    }
    // Copied only once `admit` has bounded what the copy reaches (shared
    // offsets would repeat a table or string once per offset).
    let kind = frame.header.kind;
    if !admit::is_reply(kind) {
        return Err(ConnError::Protocol(format!(
            "{kind:?} in answer to a command, which is not a reply"
        )));
    }
    admit::to_owned(frame.body()?, frame.meta.len()).map_err(|e| ConnError::Message(e.to_string()))
}
