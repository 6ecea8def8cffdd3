//! The chunkserver's link to the masters (DESIGN §4, §5): register with and
//! heartbeat to **every** master in the config — leader, standbys and
//! shadows alike — so a new leader already knows where every chunk is, and
//! act on the commands that come back in heartbeat replies.
//!
//! Runs on core 0 (`run`), one task per master address. Each task loops:
//! connect, handshake as a chunkserver, `Register` with the full chunk report
//! (several frames of at most [`REGISTER_BATCH`] reports, `report_complete`
//! on the last), then a `Heartbeat` every interval carrying what changed
//! since the previous heartbeat *to that master*. Any failure closes the
//! connection, backs off (bounded, jittered) and starts over with a full
//! report, so a master never has to reconcile a half-known incremental state.
//!
//! The exchange is lock-step on one connection: every `Register` and
//! `Heartbeat` frame gets exactly one reply frame (`RegisterReply`,
//! `HeartbeatReply` or `ErrorReply`) echoing its request id. A master that is
//! not the leader may answer `NotLeader` / `ReadOnlyShadow`: it still took the
//! report, so that is not an error here.
//!
//! What a heartbeat carries, per master: `added` (new or changed replicas)
//! and `removed` since the previous heartbeat to that master (a bounded
//! diff against a snapshot of what it was told); `corrupt`: the replica
//! problems reported by the data path and the scrubber, each with its state
//! (`Corrupt`, or `Stale` when a peer showed a newer version); every master
//! hears every one of them. `results` of the commands that master sent.
//!
//! Commands from heartbeat replies run in order on a separate task per
//! master (bounded queue), so a slow disk operation never delays heartbeats;
//! their results go back in the next heartbeats to the master that sent them:
//! one `CommandResult` per handle (a `DeleteChunk` of n handles gets n), or
//! a single `Busy` result under the first handle when the queue was full and
//! none of the command ran. Epoch fencing is `ops`'s: a stale command comes
//! back as a `StaleEpoch` result.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use compio::net::TcpStream;
use futures_channel::oneshot;
use ringfs_wire::auth::Identity;
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::message::Encoder;
use ringfs_wire::msg::{
    Body, ChunkCommand, ChunkReport, CommandEnvelope, CommandResult, DataDir as WireDir,
    DeleteChunk, ErrorCode, ErrorReply, Heartbeat, PeerKind, Register, ScrubProgress,
};

use crate::conn::{self, ConnError};
use crate::identity::DirIdentity;
use crate::metrics::Op;
use crate::node::{self, Node};
use crate::ops;
use crate::shard::{self, Core};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// One request and its reply; a master answers from memory, so this only
/// trips on a dead or wedged peer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunk reports per `Register` frame (32 bytes each: ~320 KB of meta, far
/// under `FrameLimits::CONTROL`).
pub const REGISTER_BATCH: usize = 10_000;
/// Chunk summaries fetched from a core per inbox message while listing.
pub const LIST_PAGE: usize = 4096;
/// Per heartbeat; the rest of a large change goes in the next ones.
pub const MAX_ADDED_PER_HEARTBEAT: usize = 10_000;
pub const MAX_REMOVED_PER_HEARTBEAT: usize = 10_000;
pub const MAX_CORRUPT_PER_HEARTBEAT: usize = 1024;
pub const MAX_RESULTS_PER_HEARTBEAT: usize = 4096;
/// Replica events waiting per master (a down master must not grow memory;
/// the oldest are dropped and counted, the full report at re-registration
/// carries the replica states again).
pub const PENDING_EVENTS_MAX: usize = node::REPORT_QUEUE_MAX;
/// Command results waiting per master; the oldest are dropped and counted.
pub const PENDING_RESULTS_MAX: usize = 16_384;
/// Commands received but not yet executed, per master; beyond it a command
/// is answered `Busy` at once and the master sends it again later.
pub const COMMAND_QUEUE: usize = 1024;
/// A command still running after this gets a `Timeout` result; it keeps
/// running (cancelling a half-done disk operation is worse), and its effect
/// shows in the reports.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds on the heartbeat interval, whatever a master or config says.
pub const HEARTBEAT_MIN: Duration = Duration::from_millis(50);
pub const HEARTBEAT_MAX: Duration = Duration::from_secs(60);
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Error texts travel back to the master for its logs only; keep them short.
pub const ERROR_MESSAGE_MAX_BYTES: usize = 512;
/// Repeated connection failures are logged at warn level once per this many
/// attempts (debug in between), so a long-dead master does not flood logs.
const WARN_EVERY_ATTEMPTS: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("master refused ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    #[error("a core did not answer (shutting down?)")]
    CoresGone,
    #[error("persisting the node id: {0}")]
    Identity(String),
}

/// Starts one link per configured master and runs until shutdown. Spawn it
/// on core 0 once the cores serve their inboxes.
pub async fn run(core: Rc<Core>) {
    let masters = core.node.settings.masters.clone();
    if masters.is_empty() {
        tracing::warn!("no masters configured: this chunkserver registers nowhere");
        return;
    }
    let hub = Rc::new(Hub::new(core.clone(), masters.len()));
    hub.backfill_node_id().await;
    let links: Vec<_> = masters
        .into_iter()
        .enumerate()
        .map(|(index, addr)| compio::runtime::spawn(link(hub.clone(), index, addr)))
        .collect();
    for l in links {
        let _ = l.await;
    }
}

/// What the links of one chunkserver share (all on core 0, so plain
/// `RefCell`s): per master, the replica events and command results it has
/// not heard yet.
struct Hub {
    core: Rc<Core>,
    pending: Vec<RefCell<Pending>>,
    /// Serialises adopting a node id assigned by a master.
    adopt: futures_util::lock::Mutex<()>,
}

#[derive(Default)]
struct Pending {
    events: VecDeque<ChunkReport>,
    events_dropped: u64,
    results: VecDeque<CommandResult>,
    results_dropped: u64,
}

/// Events and results taken for one heartbeat; put back if it fails.
struct Taken {
    events: Vec<ChunkReport>,
    results: Vec<CommandResult>,
}

impl Hub {
    fn new(core: Rc<Core>, masters: usize) -> Hub {
        Hub {
            core,
            pending: (0..masters).map(|_| RefCell::default()).collect(),
            adopt: futures_util::lock::Mutex::new(()),
        }
    }

    fn node(&self) -> &Node {
        &self.core.node
    }

    /// Moves the node-wide replica events (drained by whoever calls first)
    /// to every master's own queue, so each master hears every event.
    fn pump_events(&self) {
        let events = self.node().take_reports(node::REPORT_QUEUE_MAX);
        if events.is_empty() {
            return;
        }
        for (index, pending) in self.pending.iter().enumerate() {
            let mut p = pending.borrow_mut();
            for e in &events {
                if p.events.len() >= PENDING_EVENTS_MAX {
                    p.events.pop_front();
                    p.events_dropped += 1;
                    if p.events_dropped.is_power_of_two() {
                        tracing::warn!(
                            master = self.node().settings.masters[index],
                            dropped = p.events_dropped,
                            "replica event queue full: dropping the oldest"
                        );
                    }
                }
                p.events.push_back(ChunkReport {
                    handle: e.handle,
                    version: e.version,
                    length_bytes: e.length_bytes,
                    state: ops::wire_state(e.state),
                });
            }
        }
    }

    fn push_result(&self, index: usize, result: CommandResult) {
        let mut p = self.pending[index].borrow_mut();
        if p.results.len() >= PENDING_RESULTS_MAX {
            p.results.pop_front();
            p.results_dropped += 1;
            if p.results_dropped.is_power_of_two() {
                tracing::warn!(
                    master = self.node().settings.masters[index],
                    dropped = p.results_dropped,
                    "command result queue full: dropping the oldest"
                );
            }
        }
        p.results.push_back(result);
    }

    fn take(&self, index: usize) -> Taken {
        let mut p = self.pending[index].borrow_mut();
        let e = p.events.len().min(MAX_CORRUPT_PER_HEARTBEAT);
        let r = p.results.len().min(MAX_RESULTS_PER_HEARTBEAT);
        Taken {
            events: p.events.drain(..e).collect(),
            results: p.results.drain(..r).collect(),
        }
    }

    /// Puts back what a failed heartbeat carried, in front (oldest first),
    /// within the same bounds.
    fn requeue(&self, index: usize, taken: Taken) {
        let mut p = self.pending[index].borrow_mut();
        for e in taken.events.into_iter().rev() {
            if p.events.len() >= PENDING_EVENTS_MAX {
                p.events_dropped += 1;
                continue;
            }
            p.events.push_front(e);
        }
        for r in taken.results.into_iter().rev() {
            if p.results.len() >= PENDING_RESULTS_MAX {
                p.results_dropped += 1;
                continue;
            }
            p.results.push_front(r);
        }
    }

    /// Adopts `id` (assigned by a master) if this node has none yet:
    /// persisted in every data dir first, then used. Returns the node id
    /// in force afterwards (another link may have adopted one meanwhile).
    async fn adopt(&self, id: u64) -> Result<u64, LinkError> {
        let _guard = self.adopt.lock().await;
        let current = self.node().node_id();
        if current != 0 {
            return Ok(current);
        }
        let dirs = self.node().settings.dirs.clone();
        let written = compio::runtime::spawn_blocking(move || persist_node_id(&dirs, id))
            .await
            .map_err(|_| LinkError::Identity("identity task panicked".into()))?
            .map_err(LinkError::Identity)?;
        self.node().node_id.store(id, Ordering::Release);
        tracing::info!(
            node_id = id,
            dirs = written,
            "adopted the node id assigned by a master"
        );
        Ok(id)
    }

    /// A data dir added after the node got its id (or an adoption cut
    /// short by a crash) still says node 0: give it the id now.
    async fn backfill_node_id(&self) {
        let id = self.node().node_id();
        if id == 0 {
            return;
        }
        let dirs = self.node().settings.dirs.clone();
        match compio::runtime::spawn_blocking(move || persist_node_id(&dirs, id)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(node_id = id, dirs = n, "wrote the node id into data dirs"),
            Ok(Err(e)) => tracing::error!("writing the node id into data dirs: {e}"),
            Err(_) => tracing::error!("writing the node id into data dirs: task panicked"),
        }
    }
}

/// Writes `id` into the identity of every dir that does not hold it yet;
/// returns how many were written. Blocking (fsync): run it off the ring.
fn persist_node_id(dirs: &[PathBuf], id: u64) -> Result<usize, String> {
    let mut written = 0;
    for dir in dirs {
        let mut identity = DirIdentity::load(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .ok_or_else(|| format!("{}: no identity file", dir.display()))?;
        if identity.node_id.0 == id {
            continue;
        }
        if identity.node_id.0 != 0 {
            return Err(format!(
                "{} belongs to node {}, not {id}",
                dir.display(),
                identity.node_id
            ));
        }
        identity.node_id = id.into();
        identity
            .store(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        written += 1;
    }
    Ok(written)
}

/// One master, for the life of the process: sessions with backoff between
/// failures.
async fn link(hub: Rc<Hub>, index: usize, addr: String) {
    let (commands, queue) = async_channel::bounded::<Queued>(COMMAND_QUEUE);
    compio::runtime::spawn(execute_commands(hub.clone(), index, queue)).detach();
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    while !hub.node().is_stopping() {
        match session(&hub, index, &addr, &commands, &mut backoff).await {
            Ok(End::Stopping) => break,
            Ok(End::Reregister) => {
                tracing::info!(master = addr, "node id changed: registering again");
                failures = 0;
            }
            Err(e) => {
                let registered = backoff.is_reset();
                failures = if registered { 1 } else { failures + 1 };
                let delay = backoff.next_delay(jitter());
                if failures == 1 || failures.is_multiple_of(WARN_EVERY_ATTEMPTS) {
                    tracing::warn!(
                        master = addr,
                        attempt = failures,
                        ?delay,
                        "master link: {e}"
                    );
                } else {
                    tracing::debug!(
                        master = addr,
                        attempt = failures,
                        ?delay,
                        "master link: {e}"
                    );
                }
                compio::time::sleep(delay).await;
            }
        }
    }
    // Dropping `commands` ends the executor once its queue is drained.
}

enum End {
    Stopping,
    /// This master knows us by another node id than ours: start over.
    Reregister,
}

async fn session(
    hub: &Rc<Hub>,
    index: usize,
    addr: &str,
    commands: &async_channel::Sender<Queued>,
    backoff: &mut Backoff,
) -> Result<End, LinkError> {
    let node = hub.node();
    let mut s = Session::open(addr, node).await?;
    let registered = register(hub, &mut s).await?;
    backoff.reset();
    tracing::info!(
        master = addr,
        master_id = s.peer.node_id,
        node_id = registered.known_as,
        chunks = registered.told.len(),
        interval = ?registered.interval,
        "registered"
    );
    let mut told = registered.told;
    let mut next = Instant::now() + registered.interval;
    loop {
        compio::time::sleep_until(next).await;
        if node.is_stopping() {
            return Ok(End::Stopping);
        }
        if node.node_id() != registered.known_as {
            return Ok(End::Reregister);
        }
        let (body, taken) = heartbeat(hub, index, &mut told).await?;
        // The schedule counts from the send, so a slow build or reply does
        // not stretch the period.
        let sent = Instant::now();
        next = sent + registered.interval;
        let reply = match s.call(&body).await {
            Ok(reply) => reply,
            Err(e) => {
                hub.requeue(index, taken);
                hub.core
                    .metrics()
                    .op_done(Op::Heartbeat, sent.elapsed(), false);
                return Err(e);
            }
        };
        let ok = match reply {
            Body::HeartbeatReply(r) => {
                // Only a leader answers with a HeartbeatReply: its term is
                // persisted at once, so a deposed leader's commands are
                // refused from now on even before this one sends any. A
                // lower one is a deposed leader's; its commands come back
                // as StaleEpoch results.
                if !hub.core.node.epoch.is_known(r.epoch)
                    && let Err(e) = ops::admit_epoch(&hub.core, r.epoch).await
                {
                    tracing::warn!(epoch = r.epoch, error = %e, "cannot persist a new epoch");
                }
                for command in r.commands.unwrap_or_default() {
                    enqueue(hub, index, commands, command, sent);
                }
                let extended = r.extended_leases.unwrap_or_default();
                if !extended.is_empty() {
                    crate::lease::apply_extensions(&hub.core, extended, sent).await;
                }
                Ok(())
            }
            Body::ErrorReply(e) if not_leader(&e) => Ok(()),
            Body::ErrorReply(e) => Err(refused(&e)),
            other => Err(unexpected("HeartbeatReply", &other)),
        };
        hub.core
            .metrics()
            .op_done(Op::Heartbeat, sent.elapsed(), ok.is_ok());
        if let Err(e) = ok {
            hub.requeue(index, taken);
            return Err(e);
        }
    }
}

/// An authenticated connection to one master.
struct Session {
    stream: TcpStream,
    encoder: Encoder,
    next_request_id: u64,
    peer: Identity,
}

impl Session {
    async fn open(addr: &str, node: &Node) -> Result<Session, LinkError> {
        let mut stream = compio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| LinkError::Timeout("connecting"))?
            .map_err(LinkError::Connect)?;
        stream.set_nodelay(true).map_err(ConnError::from)?;
        let me = conn::chunkserver_identity(node.node_id());
        let peer = compio::time::timeout(
            HANDSHAKE_TIMEOUT,
            conn::initiate_handshake(&mut stream, &node.key, &node.settings.cluster_id, me),
        )
        .await
        .map_err(|_| LinkError::Timeout("handshake"))??;
        if peer.kind != PeerKind::Master {
            return Err(LinkError::Unexpected(format!(
                "the peer is a {:?}, not a master",
                peer.kind
            )));
        }
        Ok(Session {
            stream,
            encoder: Encoder::new(),
            // 1 and 2 went to the handshake.
            next_request_id: 3,
            peer,
        })
    }

    /// Sends one request and reads its reply (which must echo the id and
    /// carry no data section).
    async fn call(&mut self, body: &Body) -> Result<Body, LinkError> {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let Session {
            stream, encoder, ..
        } = self;
        let limits = FrameLimits::CONTROL;
        let exchange = async {
            conn::write_simple(stream, encoder, id, body, &limits).await?;
            conn::read_head(stream, &limits).await
        };
        let head = compio::time::timeout(REPLY_TIMEOUT, exchange)
            .await
            .map_err(|_| LinkError::Timeout("waiting for the reply"))??;
        if head.header.request_id != id {
            return Err(LinkError::Unexpected(format!(
                "reply to request {} while waiting for {id}",
                head.header.request_id
            )));
        }
        if head.header.data_len != 0 {
            return Err(LinkError::Unexpected(format!(
                "a control reply with {} data bytes",
                head.header.data_len
            )));
        }
        Ok(head.owned_body()?)
    }
}

struct Registered {
    /// The node id this master knows us by.
    known_as: u64,
    interval: Duration,
    /// The report sent: what this master knows of our chunks.
    told: Vec<ChunkReport>,
}

/// Sends the full report, lock-step, and adopts a node id if the master
/// assigns one.
async fn register(hub: &Rc<Hub>, s: &mut Session) -> Result<Registered, LinkError> {
    let node = hub.node();
    let settings = &node.settings;
    let sent_as = node.node_id();
    let reports = list_all(&hub.core).await?;
    let dirs = dir_reports(&hub.core).await?;
    let highest_epoch = node.epoch.highest();
    let batches = register_batches(reports.len(), REGISTER_BATCH);
    let last = batches.len() - 1;
    let mut known_as = sent_as;
    let mut interval = None;
    let mut told_not_leader = false;
    for (i, range) in batches.into_iter().enumerate() {
        let body = Body::Register(Box::new(Register {
            node_id: sent_as,
            listen_addr: Some(settings.advertise.clone()),
            http_addr: Some(http_addr(settings)),
            rack: Some(settings.rack.clone()),
            cores: u16::try_from(settings.cores).unwrap_or(u16::MAX),
            dirs: Some(dirs.dirs.clone()),
            chunks: Some(reports[range].to_vec()),
            report_complete: i == last,
            highest_epoch,
            capacity_bytes: dirs.capacity_bytes,
            used_bytes: dirs.used_bytes,
        }));
        match s.call(&body).await? {
            Body::RegisterReply(r) => {
                if r.heartbeat_interval_ms > 0 {
                    interval = Some(Duration::from_millis(u64::from(r.heartbeat_interval_ms)));
                }
                if r.epoch < highest_epoch {
                    tracing::debug!(
                        master_epoch = r.epoch,
                        highest_epoch,
                        "a master behind the highest epoch seen took our registration"
                    );
                }
                if r.node_id != 0 && r.node_id != known_as {
                    let in_force = match node.node_id() {
                        0 => hub.adopt(r.node_id).await?,
                        id => id,
                    };
                    if in_force == r.node_id {
                        known_as = in_force;
                    } else {
                        tracing::error!(
                            master_id = s.peer.node_id,
                            assigned = r.node_id,
                            ours = in_force,
                            "a master assigned a different node id: keeping ours"
                        );
                    }
                }
            }
            Body::ErrorReply(e) if not_leader(&e) => {
                if !told_not_leader {
                    told_not_leader = true;
                    tracing::info!(
                        master_id = s.peer.node_id,
                        code = ?e.code,
                        leader = e.leader_hint,
                        "registered with a master that is not the leader"
                    );
                }
            }
            Body::ErrorReply(e) => return Err(refused(&e)),
            other => return Err(unexpected("RegisterReply", &other)),
        }
    }
    let interval = interval
        .unwrap_or(settings.heartbeat_interval)
        .clamp(HEARTBEAT_MIN, HEARTBEAT_MAX);
    Ok(Registered {
        known_as,
        interval,
        told: reports,
    })
}

/// The configured HTTP address, unless it names no fixed port (then the
/// bound one is not known here, and a wrong address is worse than none).
fn http_addr(settings: &node::Settings) -> String {
    match settings.http {
        Some(a) if a.port() != 0 => a.to_string(),
        _ => String::new(),
    }
}

/// Builds the next heartbeat to master `index`; `told` (what it knows of
/// our chunks) moves forward by what this heartbeat says.
async fn heartbeat(
    hub: &Rc<Hub>,
    index: usize,
    told: &mut Vec<ChunkReport>,
) -> Result<(Body, Taken), LinkError> {
    let node = hub.node();
    let now = list_all(&hub.core).await?;
    let d = diff(
        told,
        &now,
        MAX_ADDED_PER_HEARTBEAT,
        MAX_REMOVED_PER_HEARTBEAT,
    );
    *told = d.told;
    let dirs = dir_reports(&hub.core).await?;
    hub.pump_events();
    let taken = hub.take(index);
    let body = Body::Heartbeat(Box::new(Heartbeat {
        node_id: node.node_id(),
        highest_epoch: node.epoch.highest(),
        capacity_bytes: dirs.capacity_bytes,
        used_bytes: dirs.used_bytes,
        ops_in_flight: u32::try_from(
            node.ops_in_flight
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .unwrap_or(u32::MAX),
        dirs: Some(dirs.dirs),
        added: Some(d.added),
        removed: Some(d.removed),
        corrupt: Some(taken.events.clone()),
        results: Some(taken.results.clone()),
        scrub: scrub_progress(node),
        extend_leases: Some(crate::lease::wanting_extension(&hub.core).await),
    }));
    Ok((body, taken))
}

/// Scrubber progress over all cores, as the scrubber publishes it.
fn scrub_progress(node: &Node) -> Option<Box<ScrubProgress>> {
    let p = node.scrub_totals();
    Some(Box::new(ScrubProgress {
        bytes_verified_this_period: p.verified_this_period_bytes,
        bytes_stored: p.stored_bytes,
        bytes_unverified_beyond_period: p.unverified_beyond_period_bytes,
        corrupt_blocks_found: p.corrupt_blocks_found,
    }))
}

fn not_leader(e: &ErrorReply) -> bool {
    matches!(e.code, ErrorCode::NotLeader | ErrorCode::ReadOnlyShadow)
}

fn refused(e: &ErrorReply) -> LinkError {
    LinkError::Refused {
        code: e.code,
        message: e.message.clone().unwrap_or_default(),
    }
}

fn unexpected(wanted: &str, got: &Body) -> LinkError {
    LinkError::Unexpected(format!(
        "{} instead of {wanted}",
        ringfs_wire::msg::MessageKind::of_body(got).name()
    ))
}

/// Every chunk of every core, sorted by handle, one page per inbox message.
async fn list_all(core: &Rc<Core>) -> Result<Vec<ChunkReport>, LinkError> {
    let mut out = Vec::new();
    for target in 0..core.node.cores() {
        // `None` = from the start: `Store::list` lists handles above its
        // cursor, so handle 0 is looked up on its own.
        let mut cursor: Option<u64> = None;
        // Bounded by the core's chunk count: the cursor strictly rises.
        loop {
            let page = shard::on_core(core, target, move |c| list_page(c, cursor))
                .await
                .ok_or(LinkError::CoresGone)?;
            let full = page.len() >= LIST_PAGE;
            let last = page.last().map(|r| r.handle);
            out.extend(page);
            match last {
                Some(h) if full && cursor.is_none_or(|c| h > c) => cursor = Some(h),
                _ => break,
            }
        }
    }
    out.sort_unstable_by_key(|r| r.handle);
    Ok(out)
}

fn list_page(core: &Rc<Core>, cursor: Option<u64>) -> Vec<ChunkReport> {
    let mut out = Vec::new();
    if cursor.is_none()
        && let Ok(chunk) = core.store.get(0)
    {
        out.push(ops::report_of(&chunk));
    }
    let after = cursor.unwrap_or(0);
    out.extend(
        core.store
            .list(after, LIST_PAGE)
            .into_iter()
            .map(|s| ChunkReport {
                handle: s.handle,
                version: s.version,
                length_bytes: s.length_bytes,
                state: ops::wire_state(s.state),
            }),
    );
    out
}

struct DirsNow {
    dirs: Vec<WireDir>,
    capacity_bytes: u64,
    used_bytes: u64,
}

/// Data dirs with their filesystem's size and use (statvfs, off the ring:
/// a hung disk must not stall core 0) and their chunk counts.
async fn dir_reports(core: &Rc<Core>) -> Result<DirsNow, LinkError> {
    let ndirs = core.store.dirs.len();
    let mut counts = vec![0u64; ndirs];
    for target in 0..core.node.cores() {
        let per_core = shard::on_core(core, target, move |c| {
            let mut v = vec![0u64; ndirs];
            for chunk in c.store.all() {
                if let Some(n) = v.get_mut(chunk.dir.index) {
                    *n += 1;
                }
            }
            v
        })
        .await
        .ok_or(LinkError::CoresGone)?;
        for (total, n) in counts.iter_mut().zip(per_core) {
            *total += n;
        }
    }
    let paths: Vec<PathBuf> = core.store.dirs.iter().map(|d| d.path.clone()).collect();
    let stats = compio::runtime::spawn_blocking(move || {
        paths
            .iter()
            .map(|p| rustix::fs::statvfs(p).ok())
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|_| LinkError::Unexpected("statvfs task panicked".into()))?;
    let mut out = DirsNow {
        dirs: Vec::with_capacity(ndirs),
        capacity_bytes: 0,
        used_bytes: 0,
    };
    // Dirs sharing a filesystem count once in the node's totals.
    let mut seen_fs = Vec::new();
    for ((dir, stat), chunk_count) in core.store.dirs.iter().zip(stats).zip(counts) {
        let (capacity, used) = match &stat {
            Some(s) => {
                // The reserve counts as used: the master places new
                // chunks by what is left.
                let capacity = s.f_blocks.saturating_mul(s.f_frsize);
                let usable = crate::store::usable_bytes(s, core.store.reserved_bytes);
                (capacity, capacity.saturating_sub(usable))
            }
            None => (0, 0),
        };
        if let Some(s) = &stat
            && !seen_fs.contains(&s.f_fsid)
        {
            seen_fs.push(s.f_fsid);
            out.capacity_bytes += capacity;
            out.used_bytes += used;
        }
        out.dirs.push(WireDir {
            dir_id: dir.dir_id,
            path: Some(dir.path.display().to_string()),
            capacity_bytes: capacity,
            used_bytes: used,
            chunk_count,
            healthy: stat.is_some(),
        });
    }
    Ok(out)
}

/// What changed between what a master was told and what is stored now.
#[derive(Debug, Default, PartialEq)]
struct Diff {
    added: Vec<ChunkReport>,
    removed: Vec<u64>,
    /// What the master knows once it has this diff.
    told: Vec<ChunkReport>,
    /// Changes left for the next heartbeat.
    more: bool,
}

/// Merges two handle-sorted reports. New or changed replicas go in
/// `added`, vanished ones in `removed`, each at most its bound; a change
/// over the bound is left out of the new `told`, so the next diff finds it.
fn diff(told: &[ChunkReport], now: &[ChunkReport], max_added: usize, max_removed: usize) -> Diff {
    let mut d = Diff {
        told: Vec::with_capacity(now.len().max(told.len())),
        ..Diff::default()
    };
    let (mut i, mut j) = (0, 0);
    loop {
        let step = match (told.get(i), now.get(j)) {
            (None, None) => break,
            (Some(t), Some(n)) if t.handle == n.handle => Step::Both(t, n),
            (Some(t), Some(n)) if t.handle < n.handle => Step::Gone(t),
            (Some(t), None) => Step::Gone(t),
            (_, Some(n)) => Step::New(n),
        };
        match step {
            Step::Both(t, n) => {
                if t == n {
                    d.told.push(*t);
                } else if d.added.len() < max_added {
                    d.added.push(*n);
                    d.told.push(*n);
                } else {
                    d.told.push(*t);
                    d.more = true;
                }
                i += 1;
                j += 1;
            }
            Step::Gone(t) => {
                if d.removed.len() < max_removed {
                    d.removed.push(t.handle);
                } else {
                    d.told.push(*t);
                    d.more = true;
                }
                i += 1;
            }
            Step::New(n) => {
                if d.added.len() < max_added {
                    d.added.push(*n);
                    d.told.push(*n);
                } else {
                    d.more = true;
                }
                j += 1;
            }
        }
    }
    d
}

/// One step of the merge in [`diff`].
enum Step<'a> {
    /// The same handle on both sides.
    Both(&'a ChunkReport, &'a ChunkReport),
    /// Told, no longer stored.
    Gone(&'a ChunkReport),
    /// Stored, not told.
    New(&'a ChunkReport),
}

/// Report ranges of the Register frames: at least one frame, even empty.
fn register_batches(len: usize, batch: usize) -> Vec<Range<usize>> {
    let batch = batch.max(1);
    if len == 0 {
        let empty: Range<usize> = 0..0;
        return vec![empty];
    }
    (0..len)
        .step_by(batch)
        .map(|start| start..(start + batch).min(len))
        .collect()
}

/// A command, and when the heartbeat whose reply brought it was sent.
struct Queued {
    envelope: CommandEnvelope,
    heartbeat_sent: Instant,
}

/// Queues a command for the executor, or answers `Busy` when it is full.
fn enqueue(
    hub: &Hub,
    index: usize,
    commands: &async_channel::Sender<Queued>,
    command: CommandEnvelope,
    heartbeat_sent: Instant,
) {
    let queued = Queued {
        envelope: command,
        heartbeat_sent,
    };
    if let Err(e) = commands.try_send(queued) {
        let (command, full) = match e {
            async_channel::TrySendError::Full(q) => (q.envelope, true),
            async_channel::TrySendError::Closed(q) => (q.envelope, false),
        };
        let mut error = if full {
            error_reply(ErrorCode::Busy, "command queue full")
        } else {
            error_reply(ErrorCode::Internal, "command executor stopped")
        };
        if full {
            error.retry_after_ms = 1000;
        }
        // One result for the whole command, however many handles it names:
        // none of it ran, and a flood of refusals must not push the results
        // of commands that did run out of the bounded queue.
        hub.push_result(
            index,
            CommandResult {
                command_id: command.command_id,
                handle: first_handle(command.command.as_ref()),
                error: Some(Box::new(error)),
            },
        );
    }
}

/// Runs the commands of one master in order, recording their results.
async fn execute_commands(hub: Rc<Hub>, index: usize, queue: async_channel::Receiver<Queued>) {
    while let Ok(Queued {
        envelope,
        heartbeat_sent,
    }) = queue.recv().await
    {
        let id = envelope.command_id;
        let Some(command) = envelope.command else {
            hub.push_result(
                index,
                CommandResult {
                    command_id: id,
                    handle: 0,
                    error: Some(Box::new(error_reply(
                        ErrorCode::BadRequest,
                        "command envelope without a command",
                    ))),
                },
            );
            continue;
        };
        let mut bodies = bodies_of(command).peekable();
        if bodies.peek().is_none() {
            // A DeleteChunk naming no handles: nothing to do, done.
            hub.push_result(
                index,
                CommandResult {
                    command_id: id,
                    handle: 0,
                    error: None,
                },
            );
        }
        for (handle, body) in bodies {
            let error = match lease_from(body, heartbeat_sent) {
                Ok(body) => execute_one(&hub.core, handle, body).await,
                Err(e) => Some(Box::new(e)),
            };
            hub.push_result(
                index,
                CommandResult {
                    command_id: id,
                    handle,
                    error,
                },
            );
        }
    }
}

/// One command on the chunk's owner core, bounded by [`COMMAND_TIMEOUT`].
/// It runs as its own task: a timeout abandons the wait, not the work.
async fn execute_one(core: &Rc<Core>, handle: u64, body: Body) -> Option<Box<ErrorReply>> {
    let (tx, rx) = oneshot::channel();
    let c = core.clone();
    compio::runtime::spawn(async move {
        let reply = c.call(handle, body, PeerKind::Master, Vec::new(), 0).await;
        let _ = tx.send(reply.body);
    })
    .detach();
    match compio::time::timeout(COMMAND_TIMEOUT, rx).await {
        Ok(Ok(Body::ErrorReply(mut e))) => {
            truncate_message(&mut e);
            Some(e)
        }
        Ok(Ok(_)) => None,
        Ok(Err(_)) => Some(Box::new(error_reply(
            ErrorCode::Internal,
            "the command was dropped",
        ))),
        Err(_) => Some(Box::new(error_reply(
            ErrorCode::Timeout,
            "the command is still running",
        ))),
    }
}

/// A lease counts from the send of the heartbeat that fetched it
/// (chunkserver.fbs, `GrantLease`), so it never outlives what the master
/// believes; `ops` starts it when it runs. Until `ops` takes that start
/// instant, the duration is shortened by the time since the send (rounded
/// up), and a lease with nothing left is refused.
fn lease_from(body: Body, heartbeat_sent: Instant) -> Result<Body, ErrorReply> {
    let Body::GrantLease(mut g) = body else {
        return Ok(body);
    };
    let waited = heartbeat_sent.elapsed().as_millis().saturating_add(1);
    let waited = u32::try_from(waited).unwrap_or(u32::MAX);
    if waited >= g.duration_ms {
        return Err(error_reply(
            ErrorCode::LeaseExpired,
            "the lease ran out before it could be granted",
        ));
    }
    g.duration_ms -= waited;
    Ok(Body::GrantLease(g))
}

/// The requests a command amounts to, each with the handle it is about
/// (routed by it, and reported with its result). A DeleteChunk becomes one
/// request per handle, so each handle gets its own result; they are made
/// one at a time, as the executor gets to them.
fn bodies_of(command: ChunkCommand) -> Box<dyn Iterator<Item = (u64, Body)>> {
    let one = |handle, body| Box::new(std::iter::once((handle, body)));
    match command {
        ChunkCommand::CreateChunk(c) => one(c.handle, Body::CreateChunk(c)),
        ChunkCommand::DeleteChunk(d) => {
            let (epoch, reason) = (d.epoch, d.reason);
            Box::new(d.handles.unwrap_or_default().into_iter().map(move |h| {
                let single = DeleteChunk {
                    epoch,
                    handles: Some(vec![h]),
                    reason,
                };
                (h, Body::DeleteChunk(Box::new(single)))
            }))
        }
        ChunkCommand::BumpVersion(b) => one(b.handle, Body::BumpVersion(b)),
        ChunkCommand::CloneChunk(c) => one(c.handle, Body::CloneChunk(c)),
        ChunkCommand::GrantLease(g) => one(g.handle, Body::GrantLease(g)),
        ChunkCommand::RevokeLease(r) => one(r.handle, Body::RevokeLease(r)),
    }
}

/// The handle a result about the whole command is reported under: its
/// first (0 for a command about none).
fn first_handle(command: Option<&ChunkCommand>) -> u64 {
    match command {
        Some(ChunkCommand::CreateChunk(c)) => c.handle,
        Some(ChunkCommand::DeleteChunk(d)) => d
            .handles
            .as_ref()
            .and_then(|h| h.first().copied())
            .unwrap_or(0),
        Some(ChunkCommand::BumpVersion(b)) => b.handle,
        Some(ChunkCommand::CloneChunk(c)) => c.handle,
        Some(ChunkCommand::GrantLease(g)) => g.handle,
        Some(ChunkCommand::RevokeLease(r)) => r.handle,
        None => 0,
    }
}

fn error_reply(code: ErrorCode, message: &str) -> ErrorReply {
    ErrorReply {
        code,
        message: Some(message.to_owned()),
        ..ErrorReply::default()
    }
}

fn truncate_message(e: &mut ErrorReply) {
    if let Some(m) = &mut e.message
        && m.len() > ERROR_MESSAGE_MAX_BYTES
    {
        let mut end = ERROR_MESSAGE_MAX_BYTES;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m.truncate(end);
    }
}

/// Exponential backoff between failed sessions: doubles from
/// [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each delay jittered into
/// `[d/2, d]` so chunkservers restarted together do not reconnect in step.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn is_reset(&self) -> bool {
        self.next == BACKOFF_MIN
    }

    /// `jitter` in `[0, 1]` picks the point in `[d/2, d]`.
    fn next_delay(&mut self, jitter: f64) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

fn jitter() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 1.0;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfs_wire::msg::{CreateChunk, DeleteReason, GrantLease, ReplicaState};

    fn r(handle: u64, version: u64) -> ChunkReport {
        ChunkReport {
            handle,
            version,
            length_bytes: 0,
            state: ReplicaState::Ok,
        }
    }

    #[test]
    fn diff_finds_added_changed_and_removed() {
        let told = vec![r(1, 1), r(2, 1), r(4, 1)];
        let now = vec![r(2, 2), r(3, 1), r(4, 1), r(5, 1)];
        let d = diff(&told, &now, 100, 100);
        assert_eq!(d.added, vec![r(2, 2), r(3, 1), r(5, 1)]);
        assert_eq!(d.removed, vec![1]);
        assert_eq!(d.told, now);
        assert!(!d.more);
        assert_eq!(diff(&now, &now, 100, 100).added, Vec::new());
    }

    #[test]
    fn diff_is_bounded_and_catches_up() {
        let told: Vec<_> = (0..10).map(|h| r(h, 1)).collect();
        let now: Vec<_> = (5..20).map(|h| r(h, 1)).collect();
        let mut known = told.clone();
        let mut rounds = 0;
        loop {
            let d = diff(&known, &now, 3, 2);
            assert!(d.added.len() <= 3 && d.removed.len() <= 2);
            known = d.told;
            rounds += 1;
            if !d.more {
                break;
            }
            assert!(rounds < 20, "diff does not converge");
        }
        assert_eq!(known, now);
        // 10 adds at 3 a round take 4 rounds; 5 removals at 2 a round go alongside.
        assert_eq!(rounds, 4);
    }

    #[test]
    fn register_frames_cover_the_report() {
        assert_eq!(register_batches(0, 10), vec![0..0]);
        assert_eq!(register_batches(10, 10), vec![0..10]);
        assert_eq!(register_batches(25, 10), vec![0..10, 10..20, 20..25]);
        assert_eq!(register_batches(3, 0), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn backoff_doubles_to_its_bound_with_jitter() {
        let mut b = Backoff::new();
        assert_eq!(b.next_delay(1.0), BACKOFF_MIN);
        assert_eq!(b.next_delay(0.0), BACKOFF_MIN);
        for _ in 0..20 {
            let d = b.next_delay(0.5);
            assert!(d <= BACKOFF_MAX && d >= BACKOFF_MIN);
        }
        assert_eq!(b.next_delay(1.0), BACKOFF_MAX);
        assert!(!b.is_reset());
        b.reset();
        assert!(b.is_reset());
        let j = jitter();
        assert!((0.0..=1.0).contains(&j));
    }

    #[test]
    fn delete_commands_split_per_handle() {
        let d = ChunkCommand::DeleteChunk(Box::new(DeleteChunk {
            epoch: 3,
            handles: Some(vec![7, 9]),
            reason: DeleteReason::Orphan,
        }));
        let bodies: Vec<_> = bodies_of(d.clone()).collect();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[1].0, 9);
        match &bodies[1].1 {
            Body::DeleteChunk(one) => {
                assert_eq!(one.handles.as_deref(), Some(&[9][..]));
                assert_eq!(one.epoch, 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(first_handle(Some(&d)), 7);
        let c = ChunkCommand::CreateChunk(Box::new(CreateChunk {
            epoch: 1,
            handle: 5,
            version: 1,
        }));
        assert_eq!(bodies_of(c.clone()).next().map(|b| b.0), Some(5));
        assert_eq!(first_handle(Some(&c)), 5);
        assert_eq!(first_handle(None), 0);
        let none = ChunkCommand::DeleteChunk(Box::default());
        assert_eq!(bodies_of(none.clone()).count(), 0);
        assert_eq!(first_handle(Some(&none)), 0);
    }

    #[test]
    fn a_lease_counts_from_the_heartbeat_send() {
        let grant = |duration_ms| {
            Body::GrantLease(Box::new(GrantLease {
                epoch: 1,
                handle: 9,
                version: 1,
                duration_ms,
                secondaries: None,
            }))
        };
        let sent = Instant::now()
            .checked_sub(Duration::from_secs(2))
            .expect("the clock is past 2 s");
        match lease_from(grant(60_000), sent) {
            Ok(Body::GrantLease(g)) => assert!(g.duration_ms <= 58_000, "{}", g.duration_ms),
            other => panic!("{other:?}"),
        }
        let e = lease_from(grant(1_500), sent).unwrap_err();
        assert_eq!(e.code, ErrorCode::LeaseExpired);
        let create = Body::CreateChunk(Box::default());
        assert!(matches!(lease_from(create, sent), Ok(Body::CreateChunk(_))));
    }

    #[test]
    fn long_error_messages_are_cut_on_a_char_boundary() {
        let mut e = error_reply(ErrorCode::Internal, &"é".repeat(ERROR_MESSAGE_MAX_BYTES));
        truncate_message(&mut e);
        let m = e.message.unwrap();
        assert!(m.len() <= ERROR_MESSAGE_MAX_BYTES);
        assert!(m.chars().all(|c| c == 'é'));
    }
}
