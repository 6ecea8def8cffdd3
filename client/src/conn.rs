//! A blocking, authenticated connection speaking ringfs frames: the
//! building block of the client library, the CLI and the test and
//! benchmark tools. One request at a time; open several for concurrency.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use ringfs_wire::admit;
use ringfs_wire::auth::{self, ClusterKey, Identity, Initiator};
use ringfs_wire::frame::{FrameHeader, FrameLimits, HEADER_BYTES};
use ringfs_wire::message::{Encoder, decode_meta};
use ringfs_wire::msg::{Body, BodyRef, ErrorCode, ErrorReply, PeerKind};

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{addr}: {source}")]
    Io { addr: String, source: io::Error },
    #[error("{0}")]
    Frame(#[from] ringfs_wire::frame::FrameError),
    #[error("bad message from the peer: {0}")]
    Message(String),
    #[error("handshake refused ({code:?}): {reason}")]
    Handshake { code: ErrorCode, reason: String },
    #[error("unexpected reply {0}")]
    Unexpected(String),
}

/// A reply: the body and the data section.
#[derive(Debug)]
pub struct Response {
    pub body: Body,
    pub data: Vec<u8>,
}

impl Response {
    /// The typed error, if the peer answered with one.
    pub fn error(&self) -> Option<&ErrorReply> {
        match &self.body {
            Body::ErrorReply(e) => Some(e),
            _ => None,
        }
    }

    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error().map(|e| e.code)
    }
}

pub struct Conn {
    stream: TcpStream,
    addr: String,
    encoder: Encoder,
    next_request_id: u64,
    limits: FrameLimits,
    /// The peer's identity from the handshake.
    pub peer: Identity,
}

impl Conn {
    /// Connects and authenticates as `kind` with the cluster key.
    pub fn connect(
        addr: &str,
        key: &ClusterKey,
        cluster_id: &str,
        kind: PeerKind,
        timeout: Duration,
    ) -> Result<Conn, ConnError> {
        let io_err = |source| ConnError::Io {
            addr: addr.to_owned(),
            source,
        };
        let sock: SocketAddr = addr
            .to_socket_addrs()
            .map_err(io_err)?
            .next()
            .ok_or_else(|| io_err(io::Error::new(io::ErrorKind::NotFound, "no address")))?;
        let stream = TcpStream::connect_timeout(&sock, timeout).map_err(io_err)?;
        stream.set_nodelay(true).map_err(io_err)?;
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        let mut conn = Conn {
            stream,
            addr: addr.to_owned(),
            encoder: Encoder::new(),
            next_request_id: 1,
            limits: FrameLimits::DATA,
            peer: Identity {
                kind: PeerKind::Chunkserver,
                node_id: 0,
            },
        };
        let nonce = auth::fresh_nonce().map_err(|e| ConnError::Message(e.to_string()))?;
        let initiator = Initiator::new(key, cluster_id, Identity { kind, node_id: 0 }, nonce);
        conn.send(&Body::Hello(Box::new(initiator.hello())), &[])?;
        let (header, meta, _) = conn.receive_raw()?;
        let body = decode_meta(&header, &meta).map_err(|e| ConnError::Message(e.to_string()))?;
        let challenge = match body {
            BodyRef::Challenge(c) => c,
            BodyRef::ErrorReply(e) => {
                return Err(ConnError::Handshake {
                    code: e.code().unwrap_or(ErrorCode::Unknown),
                    reason: e.message().ok().flatten().unwrap_or("").to_owned(),
                });
            }
            _ => {
                return Err(ConnError::Unexpected(format!(
                    "{:?} during the handshake",
                    header.kind
                )));
            }
        };
        let (proof, peer) =
            initiator
                .on_challenge(&challenge)
                .map_err(|e| ConnError::Handshake {
                    code: e.code(),
                    reason: e.to_string(),
                })?;
        let welcome = conn.call(&Body::Proof(Box::new(proof)), &[])?;
        match welcome.body {
            Body::Welcome(_) => {}
            Body::ErrorReply(e) => {
                return Err(ConnError::Handshake {
                    code: e.code,
                    reason: e.message.unwrap_or_default(),
                });
            }
            other => return Err(ConnError::Unexpected(format!("{other:?}"))),
        }
        conn.peer = peer;
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request (with `data`) and reads its reply.
    pub fn call(&mut self, body: &Body, data: &[u8]) -> Result<Response, ConnError> {
        self.send(body, data)?;
        self.receive()
    }

    fn send(&mut self, body: &Body, data: &[u8]) -> Result<(), ConnError> {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let mut head = Vec::new();
        self.encoder
            .head(&mut head, id, body, data.len() as u64, &self.limits)?;
        // Bulk data goes from the caller's slice: copying a 1 MiB write
        // behind its header cost the benchmark clients a memcpy per request.
        let mut slices = [IoSlice::new(&head), IoSlice::new(data)];
        write_all_vectored(&mut self.stream, &mut slices).map_err(|source| ConnError::Io {
            addr: self.addr.clone(),
            source,
        })
    }

    /// Writes raw bytes (tests use this to send malformed frames).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let addr = self.addr.clone();
        self.stream
            .write_all(bytes)
            .map_err(|source| ConnError::Io { addr, source })
    }

    /// Reads one reply frame.
    pub fn receive(&mut self) -> Result<Response, ConnError> {
        let (header, meta, data) = self.receive_raw()?;
        // Only replies are taken, and copied only once `admit` has bounded
        // what the copy reaches: shared offsets would repeat a table or
        // string once per offset.
        if !admit::is_reply(header.kind) {
            return Err(ConnError::Unexpected(format!(
                "{:?}, which is not a reply",
                header.kind
            )));
        }
        let body = decode_meta(&header, &meta).map_err(|e| ConnError::Message(e.to_string()))?;
        let body =
            admit::to_owned(body, meta.len()).map_err(|e| ConnError::Message(e.to_string()))?;
        Ok(Response { body, data })
    }

    /// Reads one frame: its header, CRC-checked meta and data.
    fn receive_raw(&mut self) -> Result<(FrameHeader, Vec<u8>, Vec<u8>), ConnError> {
        let addr = self.addr.clone();
        let io_err = |source| ConnError::Io {
            addr: addr.clone(),
            source,
        };
        let mut raw = [0u8; HEADER_BYTES];
        self.stream.read_exact(&mut raw).map_err(io_err)?;
        let header = FrameHeader::decode(&raw, &self.limits)?;
        let mut meta = vec![0u8; header.meta_len as usize];
        self.stream.read_exact(&mut meta).map_err(io_err)?;
        header.verify_meta(&meta)?;
        // Read into spare capacity: zero-filling a 1 MiB read first is a
        // wasted pass over it.
        let data_len = header.data_len as usize;
        let mut data = Vec::with_capacity(data_len);
        (&mut self.stream)
            .take(data_len as u64)
            .read_to_end(&mut data)
            .map_err(io_err)?;
        if data.len() != data_len {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the frame's data ended after {} of {data_len} bytes",
                    data.len()
                ),
            )));
        }
        Ok((header, meta, data))
    }
}

/// `write_all` over several slices, one `writev` per round; every round
/// either writes at least one byte or fails, so it ends.
fn write_all_vectored(stream: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
