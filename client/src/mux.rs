//! Multiplexed links to the masters (design note 018): one connection
//! carries many requests at once, each matched to its reply by request id,
//! as Hadoop's IPC client shares one connection among a process's threads.
//!
//! A master answers a whole commit batch at once, so replies that finish
//! together leave it in one `send` and arrive here in one `recv`; requests
//! queued while the link was writing go out in one `write` as well. With
//! lock-step links every request and every reply was its own syscall and
//! its own wake-up on both sides, which on loopback is most of a metadata
//! operation's CPU.
//!
//! Everything is bounded: requests in flight per link
//! ([`MUX_REQUESTS_IN_FLIGHT_MAX`], the master's own per-connection bound),
//! links per address ([`MUX_LINKS_PER_ADDR_MAX`]), bytes per write. A reply
//! whose caller gave up (timeout, cancellation) is read and dropped. A
//! broken connection fails every request waiting on it at once, and later
//! callers get a fresh link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringfs_wire::admit;
use ringfs_wire::auth::ClusterKey;
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::message::Encoder;
use ringfs_wire::msg::Body;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::frames::{self, ConnError};
use crate::link::Reply;

/// Requests one link has in flight. A master works on at most 64 requests
/// of a connection at once (`REQUESTS_IN_FLIGHT_PER_CONNECTION`) and stops
/// reading past that, so more would only queue in its socket.
pub const MUX_REQUESTS_IN_FLIGHT_MAX: usize = 64;
/// Links per address: a `Client` can have this many × 64 requests at one
/// master before callers wait for a slot.
pub const MUX_LINKS_PER_ADDR_MAX: usize = 4;
/// Most bytes of queued frames gathered into one write.
const WRITE_BYTES_MAX: usize = 256 << 10;
/// Read buffer: many replies' headers and metas in one recv.
const READ_BUFFER_BYTES: usize = 64 << 10;

type Waiter = oneshot::Sender<Result<Reply, ConnError>>;

/// Callers waiting for replies, and whether the connection still works.
/// One lock for both, so no caller registers after the failure drained it.
#[derive(Default)]
struct Waiting {
    by_id: HashMap<u64, Waiter>,
    /// Why the connection stopped working, once it did.
    failed: Option<String>,
}

impl Waiting {
    /// Marks the link failed and fails every waiter with `why`.
    fn fail(&mut self, why: &str) {
        if self.failed.is_none() {
            self.failed = Some(why.to_owned());
        }
        for (_, waiter) in self.by_id.drain() {
            let _ = waiter.send(Err(link_failed(why)));
        }
    }
}

fn link_failed(why: &str) -> ConnError {
    ConnError::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        why.to_owned(),
    ))
}

fn lock(w: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// One authenticated connection with many requests in flight.
pub struct MuxLink {
    waiting: Arc<Mutex<Waiting>>,
    /// Encoded request frames, to the writer task.
    frames: mpsc::Sender<Vec<u8>>,
    encoder: Mutex<Encoder>,
    next_request_id: AtomicU64,
    slots: Semaphore,
    limits: FrameLimits,
    tasks: [AbortHandle; 2],
}

impl Drop for MuxLink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Takes a caller's entry out when its call ends early (timeout, drop), so
/// the table holds only callers still waiting.
struct Registered<'a> {
    waiting: &'a Mutex<Waiting>,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(self.waiting).by_id.remove(&self.id);
    }
}

impl MuxLink {
    pub async fn connect(
        addr: &str,
        key: &ClusterKey,
        cluster_id: &str,
        limits: FrameLimits,
    ) -> Result<MuxLink, ConnError> {
        let stream = crate::link::connect_as_client(addr, key, cluster_id).await?;
        let (reader, writer) = stream.into_split();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let (tx, rx) = mpsc::channel(MUX_REQUESTS_IN_FLIGHT_MAX);
        let read_task = tokio::spawn(read_replies(reader, waiting.clone(), limits));
        let write_task = tokio::spawn(write_requests(writer, rx, waiting.clone()));
        Ok(MuxLink {
            waiting,
            frames: tx,
            encoder: Mutex::new(Encoder::new()),
            // The handshake used ids 1 and 2; replies are matched by id, so
            // they must not come back.
            next_request_id: AtomicU64::new(3),
            slots: Semaphore::new(MUX_REQUESTS_IN_FLIGHT_MAX),
            limits,
            tasks: [read_task.abort_handle(), write_task.abort_handle()],
        })
    }

    /// True once the connection failed; every call on it fails at once.
    pub fn is_failed(&self) -> bool {
        lock(&self.waiting).failed.is_some()
    }

    /// Requests that could start now without waiting for a slot.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Sends `body` with `data` and waits for its reply. The caller bounds
    /// the wait; a reply that comes after it gave up is dropped.
    pub async fn call(&self, body: &Body, data: &[u8]) -> Result<Reply, ConnError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| link_failed("link closed"))?;
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        {
            let mut encoder = self.encoder.lock().unwrap_or_else(|e| e.into_inner());
            encoder.frame(&mut frame, id, body, data, &self.limits)?;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut w = lock(&self.waiting);
            if let Some(why) = &w.failed {
                return Err(link_failed(why));
            }
            let before = w.by_id.insert(id, tx);
            assert!(before.is_none(), "request id {id} used twice on a link");
            assert!(w.by_id.len() <= MUX_REQUESTS_IN_FLIGHT_MAX);
        }
        let _registered = Registered {
            waiting: &self.waiting,
            id,
        };
        if self.frames.send(frame).await.is_err() {
            return Err(link_failed("the link's writer stopped"));
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => Err(link_failed("the link's reader stopped")),
        }
    }
}

/// Writes queued request frames, as many as are waiting in one write.
async fn write_requests(
    mut writer: OwnedWriteHalf,
    mut frames: mpsc::Receiver<Vec<u8>>,
    waiting: Arc<Mutex<Waiting>>,
) {
    let mut out = Vec::new();
    while let Some(first) = frames.recv().await {
        out.clear();
        out.extend_from_slice(&first);
        while out.len() < WRITE_BYTES_MAX {
            match frames.try_recv() {
                Ok(more) => out.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = writer.write_all(&out).await {
            lock(&waiting).fail(&format!("sending to the master: {e}"));
            return;
        }
    }
}

/// Reads replies and hands each to the caller waiting for its id.
async fn read_replies(reader: OwnedReadHalf, waiting: Arc<Mutex<Waiting>>, limits: FrameLimits) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    loop {
        let frame = match frames::read_frame(&mut reader, &limits).await {
            Ok(f) => f,
            Err(e) => {
                lock(&waiting).fail(&format!("the master's connection: {e}"));
                return;
            }
        };
        let id = frame.header.request_id;
        let reply = master_reply(&frame).map(|body| Reply {
            body,
            data: frame.data,
        });
        let waiter = lock(&waiting).by_id.remove(&id);
        match (waiter, reply) {
            (Some(waiter), reply) => {
                let _ = waiter.send(reply);
            }
            // A master answers an unreadable frame with id 0 and closes:
            // nobody can be told which request it was, so all are failed.
            (
                None,
                Ok(Reply {
                    body: Body::ErrorReply(e),
                    ..
                }),
            ) if id == 0 => {
                let why = format!(
                    "the master refused a frame: {:?} {}",
                    e.code,
                    e.message.as_deref().unwrap_or("")
                );
                lock(&waiting).fail(&why);
                return;
            }
            // The caller gave up on it (timeout or cancellation).
            (None, _) => {}
        }
    }
}

/// The body of a master's reply. The kind is checked on the header first:
/// a master sends replies, and anything else is refused without being
/// copied; a reply is copied only once `admit` has bounded what the copy
/// reaches (shared offsets would repeat a table or string per offset).
fn master_reply(frame: &frames::Frame) -> Result<Body, ConnError> {
    let kind = frame.header.kind;
    if !admit::is_master_reply(kind) {
        return Err(ConnError::Protocol(format!(
            "the master sent {kind:?}, which is not a reply"
        )));
    }
    admit::to_owned(frame.body()?, frame.meta.len()).map_err(|e| ConnError::Message(e.to_string()))
}

/// Multiplexed links by address, at most [`MUX_LINKS_PER_ADDR_MAX`] each.
pub struct MuxPool {
    key: ClusterKey,
    cluster_id: String,
    limits: FrameLimits,
    connect_timeout: Duration,
    links: Mutex<HashMap<String, Vec<Arc<MuxLink>>>>,
    /// One connect at a time per address: callers arriving together share
    /// the link it makes instead of each opening one.
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MuxPool {
    pub fn new(
        key: ClusterKey,
        cluster_id: String,
        limits: FrameLimits,
        connect_timeout: Duration,
    ) -> MuxPool {
        MuxPool {
            key,
            cluster_id,
            limits,
            connect_timeout,
            links: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashMap::new()),
        }
    }

    /// The link to use now: one with a free slot, else a new one while the
    /// address has fewer than the maximum, else the least loaded.
    fn pick(&self, addr: &str) -> (Option<Arc<MuxLink>>, bool) {
        let mut map = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let links = map.entry(addr.to_owned()).or_default();
        links.retain(|l| !l.is_failed());
        let best = links.iter().max_by_key(|l| l.free_slots()).cloned();
        let may_open = links.len() < MUX_LINKS_PER_ADDR_MAX;
        match best {
            Some(l) if l.free_slots() > 0 || !may_open => (Some(l), false),
            other => (other, may_open),
        }
    }

    async fn take(&self, addr: &str) -> Result<Arc<MuxLink>, ConnError> {
        let (link, may_open) = self.pick(addr);
        if !may_open && let Some(link) = link {
            return Ok(link);
        }
        let gate = self
            .connecting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr.to_owned())
            .or_default()
            .clone();
        let _gate = gate.lock().await;
        // Somebody may have opened one while this caller waited.
        let (link, may_open) = self.pick(addr);
        if let Some(link) = link.filter(|l| l.free_slots() > 0 || !may_open) {
            return Ok(link);
        }
        let connect = MuxLink::connect(addr, &self.key, &self.cluster_id, self.limits);
        let link = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(r) => Arc::new(r?),
            Err(_) => {
                return Err(frames::timed_out(format!(
                    "connecting to {addr} took over {:?}",
                    self.connect_timeout
                )));
            }
        };
        let mut map = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let links = map.entry(addr.to_owned()).or_default();
        links.push(link.clone());
        assert!(links.len() <= MUX_LINKS_PER_ADDR_MAX);
        Ok(link)
    }

    /// Links open to `addr` (for tests and metrics).
    pub fn links_to(&self, addr: &str) -> usize {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(addr)
            .map_or(0, Vec::len)
    }

    /// One request, bounded by `timeout` end to end (connect included).
    pub async fn call(
        &self,
        addr: &str,
        body: &Body,
        data: &[u8],
        timeout: Duration,
    ) -> Result<Reply, ConnError> {
        let attempt = async {
            let link = self.take(addr).await?;
            link.call(body, data).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(frames::timed_out(format!(
                "{addr} did not answer within {timeout:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfs_wire::auth::Identity;
    use ringfs_wire::msg::{PeerKind, Ping, Pong};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const CLUSTER: &str = "mux-test";
    /// Every test wait is bounded by this.
    const WAIT: Duration = Duration::from_secs(10);

    fn ping(n: u64) -> Body {
        Body::Ping(Box::new(Ping { sent_at_us: n }))
    }

    fn echo_of(reply: &Reply) -> u64 {
        match &reply.body {
            Body::Pong(p) => p.sent_at_us,
            other => panic!("expected Pong, got {other:?}"),
        }
    }

    /// A peer that plays a master: handshake, then per connection it reads
    /// `batch` Pings and answers them in reverse order, except those whose
    /// value is in `silent` (never answered). `close_after` frames read,
    /// it closes the connection. Returns its address and the count of
    /// connections it accepted.
    async fn peer(
        key: ClusterKey,
        batch: usize,
        silent: &'static [u64],
        close_after: Option<usize>,
    ) -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let key = key.clone();
                tokio::spawn(async move {
                    let me = Identity {
                        kind: PeerKind::Master,
                        node_id: 1,
                    };
                    frames::accept_handshake(&mut stream, &key, CLUSTER, me)
                        .await
                        .unwrap();
                    let limits = FrameLimits::CONTROL;
                    let mut encoder = Encoder::new();
                    let mut read = 0;
                    loop {
                        let mut got = Vec::new();
                        while got.len() < batch {
                            if close_after == Some(read) {
                                return;
                            }
                            let Ok(f) = frames::read_frame(&mut stream, &limits).await else {
                                return;
                            };
                            read += 1;
                            let n = match Body::try_from(f.body().unwrap()).unwrap() {
                                Body::Ping(p) => p.sent_at_us,
                                other => panic!("unexpected {other:?}"),
                            };
                            got.push((f.header.request_id, n));
                        }
                        let mut out = Vec::new();
                        for (id, n) in got.into_iter().rev() {
                            if silent.contains(&n) {
                                continue;
                            }
                            let pong = Body::Pong(Box::new(Pong { sent_at_us: n }));
                            encoder.frame(&mut out, id, &pong, &[], &limits).unwrap();
                        }
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn pool(key: &ClusterKey) -> MuxPool {
        MuxPool::new(
            key.clone(),
            CLUSTER.to_owned(),
            FrameLimits::CONTROL,
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn replies_out_of_order_reach_their_callers() {
        let key = ClusterKey::generate().unwrap();
        let batch = MUX_REQUESTS_IN_FLIGHT_MAX;
        let (addr, accepted) = peer(key.clone(), batch, &[], None).await;
        let link = Arc::new(
            MuxLink::connect(&addr, &key, CLUSTER, FrameLimits::CONTROL)
                .await
                .unwrap(),
        );
        // Three full batches: the peer answers each only once all of it is
        // in, last first.
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..(3 * batch) as u64 {
            let link = link.clone();
            calls.spawn(async move { (n, link.call(&ping(n), &[]).await) });
        }
        let mut seen = 0;
        while let Some(done) = tokio::time::timeout(WAIT, calls.join_next()).await.unwrap() {
            let (n, reply) = done.unwrap();
            assert_eq!(echo_of(&reply.unwrap()), n);
            seen += 1;
        }
        assert_eq!(seen, 3 * batch);
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
        assert!(!link.is_failed());
        assert_eq!(link.free_slots(), MUX_REQUESTS_IN_FLIGHT_MAX);
        assert!(lock(&link.waiting).by_id.is_empty());
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_link_usable() {
        let key = ClusterKey::generate().unwrap();
        // Request 7 is never answered; the others are, one at a time.
        let (addr, _) = peer(key.clone(), 1, &[7], None).await;
        let link = MuxLink::connect(&addr, &key, CLUSTER, FrameLimits::CONTROL)
            .await
            .unwrap();
        let unanswered = ping(7);
        let gave_up = tokio::time::timeout(Duration::from_millis(200), link.call(&unanswered, &[]));
        assert!(gave_up.await.is_err(), "request 7 has no answer");
        assert!(lock(&link.waiting).by_id.is_empty(), "its entry is gone");
        assert_eq!(link.free_slots(), MUX_REQUESTS_IN_FLIGHT_MAX);
        for n in 0..5 {
            let reply = tokio::time::timeout(WAIT, link.call(&ping(n), &[]))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(echo_of(&reply), n);
        }
    }

    #[tokio::test]
    async fn a_closed_connection_fails_every_waiter_and_the_pool_reconnects() {
        let key = ClusterKey::generate().unwrap();
        // Never answers; closes once it has read 10 requests.
        let (addr, accepted) = peer(key.clone(), usize::MAX, &[], Some(10)).await;
        let pool = pool(&key);
        let pool = Arc::new(pool);
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..10 {
            let (pool, addr) = (pool.clone(), addr.clone());
            calls.spawn(async move { pool.call(&addr, &ping(n), &[], WAIT).await });
        }
        let mut failed = 0;
        while let Some(done) = tokio::time::timeout(WAIT, calls.join_next()).await.unwrap() {
            let e = done.unwrap().err().expect("nobody is answered");
            assert!(e.to_string().contains("connection"), "{e}");
            failed += 1;
        }
        assert_eq!(failed, 10);
        // The failed link is dropped and a new one opened for the next call.
        let unanswered = ping(99);
        let again = pool.call(&addr, &unanswered, &[], Duration::from_millis(300));
        assert!(again.await.is_err());
        let deadline = std::time::Instant::now() + WAIT;
        while accepted.load(Ordering::Relaxed) < 2 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.links_to(&addr), 1);
    }

    #[tokio::test]
    async fn a_frame_that_is_not_a_reply_is_refused_unread() {
        let key = ClusterKey::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server_key = key.clone();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let me = Identity {
                kind: PeerKind::Master,
                node_id: 1,
            };
            frames::accept_handshake(&mut stream, &server_key, CLUSTER, me)
                .await
                .unwrap();
            let limits = FrameLimits::CONTROL;
            let mut encoder = Encoder::new();
            // The first request is answered with a request, the second
            // with its Pong.
            let first = frames::read_frame(&mut stream, &limits).await.unwrap();
            let request = Body::Mkdir(Box::default());
            let mut out = Vec::new();
            encoder
                .frame(&mut out, first.header.request_id, &request, &[], &limits)
                .unwrap();
            stream.write_all(&out).await.unwrap();
            let second = frames::read_frame(&mut stream, &limits).await.unwrap();
            let pong = Body::Pong(Box::new(Pong { sent_at_us: 2 }));
            out.clear();
            encoder
                .frame(&mut out, second.header.request_id, &pong, &[], &limits)
                .unwrap();
            stream.write_all(&out).await.unwrap();
            let _ = frames::read_frame(&mut stream, &limits).await;
        });
        let link = MuxLink::connect(&addr, &key, CLUSTER, FrameLimits::CONTROL)
            .await
            .unwrap();
        let refused = tokio::time::timeout(WAIT, link.call(&ping(1), &[]))
            .await
            .unwrap()
            .err()
            .expect("a request is no reply");
        assert!(refused.to_string().contains("Mkdir"), "{refused}");
        let reply = tokio::time::timeout(WAIT, link.call(&ping(2), &[]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo_of(&reply), 2);
    }

    #[tokio::test]
    async fn many_callers_share_a_bounded_number_of_links() {
        let key = ClusterKey::generate().unwrap();
        let (addr, accepted) = peer(key.clone(), 1, &[], None).await;
        let pool = Arc::new(pool(&key));
        let callers = 20 * MUX_REQUESTS_IN_FLIGHT_MAX;
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..callers as u64 {
            let (pool, addr) = (pool.clone(), addr.clone());
            calls.spawn(async move { (n, pool.call(&addr, &ping(n), &[], WAIT).await) });
        }
        while let Some(done) = tokio::time::timeout(WAIT, calls.join_next()).await.unwrap() {
            let (n, reply) = done.unwrap();
            assert_eq!(echo_of(&reply.unwrap()), n);
        }
        let opened = accepted.load(Ordering::Relaxed) as usize;
        assert!(
            (1..=MUX_LINKS_PER_ADDR_MAX).contains(&opened),
            "{opened} links for {callers} callers"
        );
        assert_eq!(pool.links_to(&addr), opened);
    }
}
