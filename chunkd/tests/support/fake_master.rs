//! A stand-in master for chunkd's master-link tests: a blocking TCP server
//! on loopback that does the acceptor side of the handshake, records every
//! `Register` and `Heartbeat` it receives, answers `RegisterReply` (or a
//! configured error) and `HeartbeatReply` carrying the commands a test
//! queued. One thread accepts; one thread serves each connection.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringfs_wire::auth::{self, Acceptor, ClusterKey, Identity};
use ringfs_wire::frame::{FrameHeader, FrameLimits, HEADER_BYTES};
use ringfs_wire::message::{Encoder, decode_meta, error_body};
use ringfs_wire::msg::{
    Body, BodyRef, ChunkReport, CommandEnvelope, ErrorCode, ErrorReply, Heartbeat, HeartbeatReply,
    LeaseExtension, PeerKind, Register, RegisterReply,
};

/// A connection idle this long is dropped (chunkd heartbeats far more often).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// Commands per heartbeat reply, like a real master's bounded batch.
const COMMANDS_PER_REPLY: usize = 64;

/// How the fake master answers.
#[derive(Clone, Debug)]
pub struct Options {
    pub master_id: u64,
    /// Node id handed to a chunkserver that registers with 0 (0 = none).
    pub assign_node_id: u64,
    /// Answer every `Register` frame with this error instead (a follower or
    /// shadow that still takes the report).
    pub register_error: Option<ErrorCode>,
    pub epoch: u64,
    pub heartbeat_interval_ms: u32,
    /// Extend every lease a heartbeat asks for by this much (0: none).
    pub extend_leases_ms: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            master_id: 1,
            assign_node_id: 0,
            register_error: None,
            epoch: 1,
            heartbeat_interval_ms: 100,
            extend_leases_ms: 0,
        }
    }
}

/// Everything received, in order.
#[derive(Default)]
pub struct Log {
    /// Node id each authenticated chunkserver announced in its handshake.
    pub handshakes: Vec<u64>,
    /// (connection number, frame).
    pub registers: Vec<(u64, Register)>,
    pub heartbeats: Vec<(u64, Heartbeat)>,
}

/// One whole registration: the frames of one connection up to
/// `report_complete`.
#[derive(Debug, Clone)]
pub struct Registration {
    pub conn: u64,
    pub node_id: u64,
    pub frames: usize,
    pub first: Register,
    pub chunks: Vec<ChunkReport>,
}

impl Log {
    pub fn registrations(&self) -> Vec<Registration> {
        let mut out = Vec::new();
        let mut open: Option<Registration> = None;
        for (conn, r) in &self.registers {
            let cur = match open.take() {
                Some(o) if o.conn == *conn => o,
                _ => Registration {
                    conn: *conn,
                    node_id: r.node_id,
                    frames: 0,
                    first: r.clone(),
                    chunks: Vec::new(),
                },
            };
            let mut cur = cur;
            cur.frames += 1;
            cur.chunks.extend(r.chunks.clone().unwrap_or_default());
            if r.report_complete {
                out.push(cur);
            } else {
                open = Some(cur);
            }
        }
        out
    }
}

struct Shared {
    key: ClusterKey,
    cluster_id: String,
    options: Mutex<Options>,
    log: Mutex<Log>,
    commands: Mutex<VecDeque<CommandEnvelope>>,
    streams: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

pub struct FakeMaster {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeMaster {
    /// Listens on a fresh loopback port.
    pub fn start(key: &ClusterKey, cluster_id: &str, options: Options) -> FakeMaster {
        Self::start_on("127.0.0.1:0".parse().unwrap(), key, cluster_id, options)
    }

    /// Listens on `addr` (a restarted master on its old port), retrying the
    /// bind for a bounded time.
    pub fn start_on(
        addr: SocketAddr,
        key: &ClusterKey,
        cluster_id: &str,
        options: Options,
    ) -> FakeMaster {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("fake master: bind {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("fake master: bind {addr}: {e}"),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            key: key.clone(),
            cluster_id: cluster_id.to_owned(),
            options: Mutex::new(options),
            log: Mutex::new(Log::default()),
            commands: Mutex::new(VecDeque::new()),
            streams: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let shared = shared.clone();
            let conns = conns.clone();
            std::thread::spawn(move || accept_loop(listener, shared, conns))
        };
        FakeMaster {
            addr,
            shared,
            accept: Some(accept),
            conns,
        }
    }

    pub fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.shared.log)
    }

    pub fn set_options(&self, options: Options) {
        *lock(&self.shared.options) = options;
    }

    /// Sends `command` in a coming heartbeat reply.
    pub fn push_command(&self, command: CommandEnvelope) {
        lock(&self.shared.commands).push_back(command);
    }

    /// Closes the listener and every connection, and joins the threads.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for s in lock(&self.shared.streams).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads: Vec<_> = lock(&self.conns).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for FakeMaster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, conns: Arc<Mutex<Vec<JoinHandle<()>>>>) {
    let mut next_conn = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                next_conn += 1;
                let conn = next_conn;
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                {
                    let mut streams = lock(&shared.streams);
                    // Checked under the lock `stop` drains, so no stream
                    // slips past the shutdown.
                    if shared.stop.load(Ordering::Acquire) {
                        return;
                    }
                    streams.push(clone);
                }
                let shared = shared.clone();
                let t = std::thread::spawn(move || {
                    if let Err(e) = serve(stream, conn, &shared)
                        && !shared.stop.load(Ordering::Acquire)
                    {
                        eprintln!("fake master: connection {conn}: {e}");
                    }
                });
                lock(&conns).push(t);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(e) => {
                eprintln!("fake master: accept: {e}");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// A received frame: header and CRC-checked meta (no data section).
struct RawFrame {
    header: FrameHeader,
    meta: Vec<u8>,
}

impl RawFrame {
    fn body(&self) -> Result<BodyRef<'_>, String> {
        decode_meta(&self.header, &self.meta).map_err(|e| e.to_string())
    }

    fn owned_body(&self) -> Result<Body, String> {
        Body::try_from(self.body()?).map_err(|e| e.to_string())
    }
}

#[derive(Debug)]
enum ReadError {
    /// End of stream (or a reset) before a frame began.
    Closed,
    Bad(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => f.write_str("connection closed"),
            ReadError::Bad(e) => f.write_str(e),
        }
    }
}

impl From<ReadError> for String {
    fn from(e: ReadError) -> String {
        e.to_string()
    }
}

fn read_frame(stream: &mut TcpStream) -> Result<RawFrame, ReadError> {
    let limits = FrameLimits::CONTROL;
    let mut raw = [0u8; HEADER_BYTES];
    stream.read_exact(&mut raw).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            ReadError::Closed
        }
        _ => ReadError::Bad(e.to_string()),
    })?;
    let bad = |e: String| ReadError::Bad(e);
    let header = FrameHeader::decode(&raw, &limits).map_err(|e| bad(e.to_string()))?;
    let mut meta = vec![0u8; header.meta_len as usize];
    stream
        .read_exact(&mut meta)
        .map_err(|e| bad(e.to_string()))?;
    header.verify_meta(&meta).map_err(|e| bad(e.to_string()))?;
    if header.data_len != 0 {
        return Err(bad(format!(
            "unexpected data section of {}",
            header.data_len
        )));
    }
    Ok(RawFrame { header, meta })
}

fn write_frame(
    stream: &mut TcpStream,
    encoder: &mut Encoder,
    request_id: u64,
    body: &Body,
) -> Result<(), String> {
    let mut out = Vec::new();
    encoder
        .frame(&mut out, request_id, body, &[], &FrameLimits::CONTROL)
        .map_err(|e| e.to_string())?;
    stream.write_all(&out).map_err(|e| e.to_string())
}

/// The acceptor side of the handshake; returns the chunkserver's identity.
fn handshake(
    stream: &mut TcpStream,
    encoder: &mut Encoder,
    shared: &Shared,
) -> Result<Identity, String> {
    let master_id = lock(&shared.options).master_id;
    let me = Identity {
        kind: PeerKind::Master,
        node_id: master_id,
    };
    let nonce = auth::fresh_nonce().map_err(|e| e.to_string())?;
    let acceptor = Acceptor::new(&shared.key, &shared.cluster_id, me, nonce);
    let hello = read_frame(stream)?;
    let BodyRef::Hello(hello_ref) = hello.body()? else {
        return Err("expected Hello".into());
    };
    let (challenge, awaiting) = acceptor.on_hello(&hello_ref).map_err(|e| e.to_string())?;
    let id = hello.header.request_id;
    write_frame(stream, encoder, id, &Body::Challenge(Box::new(challenge)))?;
    let proof = read_frame(stream)?;
    let id = proof.header.request_id;
    let BodyRef::Proof(proof_ref) = proof.body()? else {
        return Err("expected Proof".into());
    };
    match awaiting.on_proof(&proof_ref) {
        Ok((peer, welcome)) => {
            write_frame(stream, encoder, id, &Body::Welcome(Box::new(welcome)))?;
            Ok(peer)
        }
        Err(e) => {
            let _ = write_frame(stream, encoder, id, &error_body(e.code(), e.to_string()));
            Err(e.to_string())
        }
    }
}

fn serve(mut stream: TcpStream, conn: u64, shared: &Shared) -> Result<(), String> {
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut encoder = Encoder::new();
    let peer = handshake(&mut stream, &mut encoder, shared)?;
    if peer.kind != PeerKind::Chunkserver {
        return Err(format!("peer is a {:?}", peer.kind));
    }
    lock(&shared.log).handshakes.push(peer.node_id);
    loop {
        let frame = match read_frame(&mut stream) {
            Ok(f) => f,
            // The chunkserver closed (it restarted or reconnects), or we
            // are stopping: both normal.
            Err(ReadError::Closed) => return Ok(()),
            Err(_) if shared.stop.load(Ordering::Acquire) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let options = lock(&shared.options).clone();
        let reply = match frame.owned_body()? {
            Body::Register(r) => {
                let node_id = if r.node_id == 0 {
                    options.assign_node_id
                } else {
                    r.node_id
                };
                lock(&shared.log).registers.push((conn, *r));
                match options.register_error {
                    Some(code) => Body::ErrorReply(Box::new(ErrorReply {
                        code,
                        message: Some("fake master: not the leader".into()),
                        leader_hint: 1,
                        ..ErrorReply::default()
                    })),
                    None => Body::RegisterReply(Box::new(RegisterReply {
                        node_id,
                        epoch: options.epoch,
                        heartbeat_interval_ms: options.heartbeat_interval_ms,
                        master_id: options.master_id,
                    })),
                }
            }
            Body::Heartbeat(h) => {
                let extended = match options.extend_leases_ms {
                    0 => Vec::new(),
                    ms => h
                        .extend_leases
                        .iter()
                        .flatten()
                        .map(|l| LeaseExtension {
                            handle: l.handle,
                            version: l.version,
                            epoch: l.epoch,
                            duration_ms: ms,
                        })
                        .collect(),
                };
                lock(&shared.log).heartbeats.push((conn, *h));
                let mut queued = lock(&shared.commands);
                let n = queued.len().min(COMMANDS_PER_REPLY);
                let commands: Vec<_> = queued.drain(..n).collect();
                Body::HeartbeatReply(Box::new(HeartbeatReply {
                    epoch: options.epoch,
                    commands: Some(commands),
                    extended_leases: Some(extended),
                }))
            }
            other => error_body(ErrorCode::BadRequest, format!("fake master: {other:?}")),
        };
        write_frame(&mut stream, &mut encoder, frame.header.request_id, &reply)?;
    }
}
