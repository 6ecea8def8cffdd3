//! Start-up and shutdown of a chunkserver: check the data dirs (identity,
//! direct-I/O alignment), start one pinned runtime per core, recover each
//! core's chunks, clear orphans, then serve until SIGTERM.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use compio::driver::ProactorBuilder;
use compio::runtime::RuntimeBuilder;
use ringfs_wire::auth::ClusterKey;

use crate::chunk::{DataDir, Settle};
use crate::dio;
use crate::epoch::EpochStore;
use crate::groupsync::GroupSync;
use crate::identity;
use crate::meta;
use crate::node::{Node, Settings};
use crate::openfiles;
use crate::peer::PeerPool;
use crate::pool::BufferPool;
use crate::server;
use crate::shard::{self, Core, CoreMsg};
use crate::store::{self, FoundChunk, RecoveryStats, Store};

/// How often each core settles durable watermarks and refreshes gauges.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(500);
/// io_uring submission queue entries per core (a batch size, not a limit
/// on ops in flight); small so rings fit a low memlock limit.
pub const RING_ENTRIES: u32 = 256;
/// Cross-thread wake queue per runtime (compio's default of 64 can spin
/// when many tasks are woken from other cores at once).
pub const REMOTE_WAKE_QUEUE: usize = 4096;

/// A data dir, checked and ready.
struct PreparedDir {
    dir: DirSpec,
    found: Vec<FoundChunk>,
}

/// What every core needs to open its own [`DataDir`] on a data dir.
#[derive(Clone, Debug)]
struct DirSpec {
    index: usize,
    path: PathBuf,
    chunks_dir: PathBuf,
    align: dio::DioAlign,
    dir_id: u64,
}

/// A running chunkserver; `wait` blocks until shutdown.
pub struct Daemon {
    pub node: Arc<Node>,
    pub listen: SocketAddr,
    pub http: Option<SocketAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
    http_server: Option<crate::http::HttpServer>,
    pub recovery: RecoveryStats,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn prepare_dirs(settings: &Settings) -> Result<(Vec<PreparedDir>, u64), String> {
    let mut identities = Vec::new();
    for path in &settings.dirs {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let id = identity::open_or_init(path, &settings.cluster_id, now_unix_ms())
            .map_err(|e| e.to_string())?;
        identities.push((path.clone(), id));
    }
    let node = identity::node_of(&identities).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (index, (path, id)) in identities.into_iter().enumerate() {
        let align = dio::probe_alignment(&path).map_err(|e| e.to_string())?;
        let chunks_dir = path.join(store::CHUNKS_DIR);
        std::fs::create_dir_all(&chunks_dir)
            .map_err(|e| format!("{}: {e}", chunks_dir.display()))?;
        let found = store::scan_dir(index, &chunks_dir)
            .map_err(|e| format!("{}: {e}", chunks_dir.display()))?;
        out.push(PreparedDir {
            dir: DirSpec {
                index,
                path,
                chunks_dir,
                align,
                dir_id: id.dir_id,
            },
            found,
        });
    }
    Ok((out, node.0))
}

/// Reserves the listen port when it is 0, so every core binds the same
/// one: a bound (not listening) `SO_REUSEPORT` socket takes no connections.
fn reserve_port(addr: SocketAddr) -> Result<(SocketAddr, Option<rustix::fd::OwnedFd>), String> {
    if addr.port() != 0 {
        return Ok((addr, None));
    }
    use rustix::net::{AddressFamily, SocketType, bind, getsockname, socket, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = socket(family, SocketType::STREAM, None).map_err(|e| format!("socket: {e}"))?;
    sockopt::set_socket_reuseaddr(&fd, true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    sockopt::set_socket_reuseport(&fd, true).map_err(|e| format!("SO_REUSEPORT: {e}"))?;
    bind(&fd, &addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let bound = getsockname(&fd).map_err(|e| format!("getsockname: {e}"))?;
    let bound =
        SocketAddr::try_from(bound).map_err(|_| "getsockname: not an inet address".to_owned())?;
    Ok((bound, Some(fd)))
}

fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// What a core reports once its chunks are recovered.
struct CoreReady {
    live: Vec<(usize, u64, u64)>,
    stats: RecoveryStats,
}

impl Daemon {
    pub fn start(mut settings: Settings, key: ClusterKey) -> Result<Daemon, String> {
        let cpus = allowed_cpus();
        if settings.cores == 0 {
            settings.cores = cpus.len().max(1);
        }
        if settings.open_chunks_max == 0 {
            let open_files_max = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(u64::MAX);
            let per_core = openfiles::open_chunks_per_core(open_files_max, settings.cores);
            settings.open_chunks_max = (per_core as u64).saturating_mul(settings.cores as u64);
        }
        if settings.buffer_bytes == 0
            || !settings
                .buffer_bytes
                .is_multiple_of(ringfs_wire::checksum::BLOCK_BYTES)
        {
            return Err(format!(
                "chunkserver.buffer_bytes = {} must be a non-zero multiple of 65536",
                settings.buffer_bytes
            ));
        }
        let max_data = ringfs_wire::frame::FrameLimits::DATA.max_data_bytes as usize;
        if settings.buffers_per_core * settings.buffer_bytes
            < max_data + 2 * ringfs_wire::checksum::BLOCK_BYTES
        {
            return Err(format!(
                "the buffer pool of a core ({} x {} bytes) must hold one largest frame ({max_data} bytes) and two blocks",
                settings.buffers_per_core, settings.buffer_bytes
            ));
        }
        meta::MetaLayout::new(settings.chunk_size_bytes, meta::DEFAULT_LOG_BYTES)
            .map_err(|e| e.to_string())?;
        let (dirs, node_id) = prepare_dirs(&settings)?;
        let epoch = EpochStore::open(&settings.dirs)?;
        let (listen, reservation) = reserve_port(settings.listen)?;
        settings.listen = listen;
        if settings.advertise.is_empty() || settings.advertise.ends_with(":0") {
            settings.advertise = listen.to_string();
        }
        let cores = settings.cores;
        let node = Arc::new(Node::new(settings, key, node_id, epoch));
        let mut senders = Vec::with_capacity(cores);
        let mut receivers = Vec::with_capacity(cores);
        for _ in 0..cores {
            let (tx, rx) = async_channel::bounded::<CoreMsg>(shard::INBOX_CAPACITY);
            senders.push(tx);
            receivers.push(rx);
        }
        node.inboxes
            .set(senders)
            .map_err(|_| "inboxes already set".to_owned())?;
        // Each core recovers the chunks it owns.
        let mut per_core: Vec<Vec<FoundChunk>> = vec![Vec::new(); cores];
        for d in &dirs {
            for f in &d.found {
                per_core[shard::owner_core(f.handle, cores)].push(f.clone());
            }
        }
        let data_dirs: Vec<DirSpec> = dirs.into_iter().map(|d| d.dir).collect();
        let chunks_dirs: Vec<PathBuf> = data_dirs.iter().map(|d| d.chunks_dir.clone()).collect();
        let shared_dirs = Arc::new(data_dirs);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<CoreReady, String>>();
        let mut go_senders = Vec::new();
        let mut threads = Vec::new();
        for (id, (inbox, found)) in receivers.into_iter().zip(per_core).enumerate() {
            let (go_tx, go_rx) = mpsc::channel::<bool>();
            go_senders.push(go_tx);
            let node = node.clone();
            let ready_tx = ready_tx.clone();
            let dirs = shared_dirs.clone();
            let cpu = if cpus.is_empty() {
                None
            } else {
                Some(cpus[id % cpus.len()])
            };
            let thread = std::thread::Builder::new()
                .name(format!("chunkd-core-{id}"))
                .spawn(move || core_thread(id, cpu, node, dirs, found, inbox, ready_tx, go_rx))
                .map_err(|e| format!("spawning core {id}: {e}"))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut live = HashSet::new();
        let mut stats = RecoveryStats::default();
        let mut failure = None;
        for _ in 0..cores {
            match ready_rx.recv() {
                Ok(Ok(ready)) => {
                    for (dir, h, id) in ready.live {
                        live.insert((dir, h, id));
                    }
                    stats.chunks += ready.stats.chunks;
                    stats.quarantined += ready.stats.quarantined;
                    stats.unsettled_blocks_checked += ready.stats.unsettled_blocks_checked;
                    stats.blocks_recomputed += ready.stats.blocks_recomputed;
                    stats.bytes_zeroed += ready.stats.bytes_zeroed;
                    stats.compacted += ready.stats.compacted;
                }
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some("a core thread died during start-up".into()),
            }
        }
        if failure.is_none() {
            for (i, dir) in chunks_dirs.iter().enumerate() {
                let live_here: HashSet<(u64, u64)> = live
                    .iter()
                    .filter(|(d, _, _)| *d == i)
                    .map(|(_, h, id)| (*h, *id))
                    .collect();
                match store::remove_orphan_data_files(dir, &live_here) {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!("removed {n} orphan data files in {}", dir.display()),
                    Err(e) => failure = Some(format!("{}: {e}", dir.display())),
                }
            }
        }
        let go = failure.is_none();
        for tx in &go_senders {
            let _ = tx.send(go);
        }
        if go {
            // Every core confirms its listener before we call ourselves ready.
            for _ in 0..cores {
                match ready_rx.recv() {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => failure = Some(e),
                    Err(_) => failure = Some("a core thread died while binding".into()),
                }
            }
        }
        if let Some(e) = failure {
            node.stopping.store(true, Ordering::Release);
            for t in threads {
                let _ = t.join();
            }
            return Err(e);
        }
        drop(reservation);
        node.metrics.node().set_chunks(stats.chunks);
        node.metrics
            .core(0)
            .blocks_recomputed_at_recovery(stats.blocks_recomputed);
        let http_server = match node.settings.http {
            Some(addr) => Some(
                crate::status::start_http(addr, node.clone())
                    .map_err(|e| format!("http {addr}: {e}"))?,
            ),
            None => None,
        };
        let http = http_server.as_ref().map(|s| s.local_addr());
        Ok(Daemon {
            node,
            listen,
            http,
            threads,
            http_server,
            recovery: stats,
        })
    }

    /// Stops accepting, lets the cores finish, and returns.
    pub fn stop(self) {
        self.node.stopping.store(true, Ordering::Release);
        if let Some(inboxes) = self.node.inboxes.get() {
            for tx in inboxes {
                tx.close();
            }
        }
        if let Some(h) = self.http_server {
            h.shutdown();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn core_thread(
    id: usize,
    cpu: Option<usize>,
    node: Arc<Node>,
    dirs: Arc<Vec<DirSpec>>,
    found: Vec<FoundChunk>,
    inbox: async_channel::Receiver<CoreMsg>,
    ready: mpsc::Sender<Result<CoreReady, String>>,
    go: mpsc::Receiver<bool>,
) {
    if let Some(cpu) = cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
            let _ = ready.send(Err(format!("pinning core {id} to cpu {cpu}: {e}")));
            return;
        }
    }
    let mut proactor = ProactorBuilder::new();
    proactor.capacity(RING_ENTRIES).thread_pool_limit(2);
    let runtime = match RuntimeBuilder::new()
        .with_proactor(proactor)
        .sync_queue_size(REMOTE_WAKE_QUEUE)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "core {id}: io_uring runtime: {e} (is io_uring disabled, or RLIMIT_MEMLOCK too low?)"
            )));
            return;
        }
    };
    runtime.block_on(async move {
        let settings = &node.settings;
        let dirs: Vec<Rc<DataDir>> = dirs
            .iter()
            .map(|d| {
                Rc::new(DataDir {
                    index: d.index,
                    path: d.path.clone(),
                    chunks_dir: d.chunks_dir.clone(),
                    align: d.align,
                    dir_id: d.dir_id,
                    dir_sync: GroupSync::new(),
                })
            })
            .collect();
        let mem_align = dirs
            .iter()
            .map(|d| d.align.mem_align_bytes)
            .max()
            .unwrap_or(4096);
        let store = Store::new(
            dirs,
            settings.chunk_size_bytes,
            meta::DEFAULT_LOG_BYTES,
            usize::try_from(settings.open_chunks_max / settings.cores as u64)
                .unwrap_or(usize::MAX)
                .max(1),
            settings.data_dir_reserved_bytes,
        );
        let mut stats = RecoveryStats::default();
        for f in &found {
            if let Err(e) = store.recover(f, &mut stats).await {
                let _ = ready.send(Err(format!("recovering {:#x}: {e}", f.handle)));
                return;
            }
        }
        let live = store
            .all()
            .iter()
            .map(|c| (c.dir.index, c.handle, c.data_file_id()))
            .collect();
        let _ = ready.send(Ok(CoreReady { live, stats }));
        if !matches!(go.recv(), Ok(true)) {
            return;
        }
        let listener = match server::listen(settings.listen).await {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!(
                    "core {id}: listen on {}: {e}",
                    settings.listen
                )));
                return;
            }
        };
        let _ = ready.send(Ok(CoreReady {
            live: Vec::new(),
            stats: RecoveryStats::default(),
        }));
        let core = Rc::new(Core {
            id,
            node: node.clone(),
            store,
            pool: BufferPool::new(settings.buffers_per_core, settings.buffer_bytes, mem_align),
            peers: PeerPool::new(node.clone()),
            leases: Default::default(),
            pushes: Default::default(),
            foreground: Default::default(),
        });
        compio::runtime::spawn(shard::serve_inbox(core.clone(), inbox)).detach();
        compio::runtime::spawn(server::accept_loop(core.clone(), listener)).detach();
        if id == 0 {
            compio::runtime::spawn(crate::masterlink::run(core.clone())).detach();
        }
        compio::runtime::spawn(crate::scrub::run(core.clone())).detach();
        housekeeping(core).await;
    });
}

/// Per-core periodic work until shutdown: settle durable watermarks of
/// idle chunks, refresh gauges.
async fn housekeeping(core: Rc<Core>) {
    while !core.node.is_stopping() {
        compio::time::sleep(HOUSEKEEPING_INTERVAL).await;
        for handle in core.store.unsettled.take() {
            // Deleted since it was marked: nothing to settle.
            let Ok(chunk) = core.store.get(handle) else {
                continue;
            };
            match chunk.settle().await {
                Ok(Settle::Clean) => {}
                Ok(Settle::Logged) => core.metrics().settled_chunk(),
                Ok(Settle::Busy) => core.store.unsettled.mark(handle),
                Err(e) => tracing::warn!(handle, "settling: {e}"),
            }
        }
        core.metrics()
            .set_unsettled_chunks(core.store.unsettled.len() as u64);
        core.metrics()
            .set_buffer_pool_free_buffers(core.pool.free_buffers() as u64);
        // The kept counts against a walk of every chunk, in debug builds
        // (every test that runs chunkd checks the bookkeeping).
        debug_assert_eq!(
            core.store.totals(),
            core.store.totals_by_walk(),
            "core {}: chunk totals drifted from the chunks",
            core.id
        );
        core.node.publish_core_counts(core.id, &core.store);
        core.metrics().set_open_files(core.store.open.stats());
        let expired = core.pushes.expire(Instant::now());
        if expired > 0 {
            tracing::info!(core = core.id, expired, "dropped unclaimed pushed data");
        }
    }
    for chunk in core.store.all() {
        let _ = chunk.settle().await;
        chunk.close().await;
    }
}
