//! What every core of one chunkserver shares: settings, identity, the
//! fencing epoch, metrics, the inboxes of all cores and the queue of
//! replica reports for the masters. Everything here is `Sync`; the data
//! path only reads it (atomics, no locks).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ringfs_wire::auth::ClusterKey;

use crate::epoch::EpochStore;
use crate::meta::ChunkState;
use crate::metrics::Metrics;
use crate::shard::CoreMsg;

/// Settings of a running chunkserver (config file + flags, resolved).
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster_id: String,
    pub listen: SocketAddr,
    /// Address other nodes reach us at (the listen address unless it is a
    /// wildcard).
    pub advertise: String,
    pub http: Option<SocketAddr>,
    pub cores: usize,
    pub dirs: Vec<PathBuf>,
    pub rack: String,
    pub chunk_size_bytes: u64,
    pub buffer_bytes: usize,
    pub buffers_per_core: usize,
    pub push_buffer_max_bytes: u64,
    pub scrub_period: Duration,
    /// Client addresses of every master in the config.
    pub masters: Vec<String>,
    pub heartbeat_interval: Duration,
    /// Benchmark-only: skip verifying block CRCs on reads (never on writes
    /// or in the scrubber). Off unless a flag says so.
    pub bench_skip_read_verify: bool,
    /// Chunks whose files stay open, over all cores (0: as many as the
    /// open-files limit allows; resolved by `Daemon::start`).
    pub open_chunks_max: u64,
    /// Bytes of each data dir's filesystem left free (config
    /// `data_dir_reserved_bytes`).
    pub data_dir_reserved_bytes: u64,
}

/// A replica state change the masters must hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaEvent {
    pub handle: u64,
    pub version: u64,
    pub length_bytes: u64,
    pub state: ChunkState,
}

/// Reports queued for the master link; bounded (the oldest are dropped and
/// counted: the full report at the next registration covers them).
pub const REPORT_QUEUE_MAX: usize = 4096;

pub struct Node {
    pub settings: Settings,
    pub key: ClusterKey,
    pub node_id: AtomicU64,
    pub epoch: EpochStore,
    pub metrics: Arc<Metrics>,
    pub inboxes: OnceLock<Vec<async_channel::Sender<CoreMsg>>>,
    pub stopping: AtomicBool,
    /// Requests being executed on any core: the load the masters place
    /// by and order read replicas by (heartbeat `ops_in_flight`).
    pub ops_in_flight: AtomicU64,
    reports: Mutex<VecDeque<ReplicaEvent>>,
    pub reports_dropped: AtomicU64,
    /// Whether reads verify block CRCs before sending. Always on, except
    /// under the benchmark switches that price the verification.
    read_verify: AtomicBool,
    /// Per core: chunks, stored bytes, corrupt chunks (published by each
    /// core's housekeeping; read by /metrics and /status).
    core_counts: Vec<[AtomicU64; 3]>,
    /// Per core scrub progress: verified this period, unverified beyond
    /// the period, stored, corrupt blocks found.
    core_scrub: Vec<[AtomicU64; 4]>,
}

impl Node {
    pub fn new(settings: Settings, key: ClusterKey, node_id: u64, epoch: EpochStore) -> Node {
        let cores = settings.cores;
        let metrics = Arc::new(Metrics::new(cores));
        metrics.node().raise_highest_epoch(epoch.highest());
        let read_verify = !settings.bench_skip_read_verify;
        metrics.node().set_read_verify(read_verify);
        Node {
            settings,
            key,
            node_id: AtomicU64::new(node_id),
            epoch,
            metrics,
            inboxes: OnceLock::new(),
            stopping: AtomicBool::new(false),
            ops_in_flight: AtomicU64::new(0),
            reports: Mutex::new(VecDeque::new()),
            reports_dropped: AtomicU64::new(0),
            read_verify: AtomicBool::new(read_verify),
            core_counts: (0..cores).map(|_| Default::default()).collect(),
            core_scrub: (0..cores).map(|_| Default::default()).collect(),
        }
    }

    pub fn node_id(&self) -> u64 {
        self.node_id.load(Ordering::Acquire)
    }

    pub fn cores(&self) -> usize {
        self.settings.cores
    }

    pub fn read_verify(&self) -> bool {
        self.read_verify.load(Ordering::Relaxed)
    }

    /// Benchmark-only (`--bench-read-verify-signals`). The gauge follows
    /// the switch, so whoever sees the gauge change knows reads started
    /// after that see the switch.
    pub fn set_read_verify(&self, on: bool) {
        self.read_verify.store(on, Ordering::Relaxed);
        self.metrics.node().set_read_verify(on);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Queues a report for every master (corruption, staleness).
    pub fn report(&self, event: ReplicaEvent) {
        let mut q = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= REPORT_QUEUE_MAX {
            q.pop_front();
            self.reports_dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(event);
    }

    /// Takes up to `max` queued reports.
    pub fn take_reports(&self, max: usize) -> Vec<ReplicaEvent> {
        let mut q = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    pub fn publish_core_counts(&self, core: usize, store: &crate::store::Store) {
        let (chunks, bytes, corrupt) = store.totals();
        let slot = &self.core_counts[core];
        slot[0].store(chunks, Ordering::Relaxed);
        slot[1].store(bytes, Ordering::Relaxed);
        slot[2].store(corrupt, Ordering::Relaxed);
    }

    /// (chunks, stored bytes, corrupt chunks) over all cores.
    pub fn counts(&self) -> (u64, u64, u64) {
        let mut out = (0, 0, 0);
        for slot in &self.core_counts {
            out.0 += slot[0].load(Ordering::Relaxed);
            out.1 += slot[1].load(Ordering::Relaxed);
            out.2 += slot[2].load(Ordering::Relaxed);
        }
        out
    }

    pub fn publish_scrub(&self, core: usize, p: crate::scrub::Progress) {
        let slot = &self.core_scrub[core];
        slot[0].store(p.verified_this_period_bytes, Ordering::Relaxed);
        slot[1].store(p.unverified_beyond_period_bytes, Ordering::Relaxed);
        slot[2].store(p.stored_bytes, Ordering::Relaxed);
    }

    pub fn scrub_corrupt_found(&self, core: usize) {
        self.core_scrub[core][3].fetch_add(1, Ordering::Relaxed);
    }

    /// Scrub progress over all cores.
    pub fn scrub_totals(&self) -> crate::scrub::Progress {
        let mut p = crate::scrub::Progress::default();
        for slot in &self.core_scrub {
            p.verified_this_period_bytes += slot[0].load(Ordering::Relaxed);
            p.unverified_beyond_period_bytes += slot[1].load(Ordering::Relaxed);
            p.stored_bytes += slot[2].load(Ordering::Relaxed);
            p.corrupt_blocks_found += slot[3].load(Ordering::Relaxed);
        }
        p
    }

    pub fn pending_reports(&self) -> usize {
        self.reports.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
