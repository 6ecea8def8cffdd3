//! Counters, gauges and latency histograms for `GET /metrics` (Prometheus
//! text 0.0.4) and `GET /status` (JSON).
//!
//! The data path takes no locks: every core owns one `CoreMetrics` shard and
//! is its only writer, so a cache line is never contended and Relaxed
//! atomics suffice. A scrape reads all shards and sums them; a sum may mix
//! values from slightly different instants, which monitoring tolerates, and
//! it never goes backwards because each shard only grows. Numbers owned by
//! one component for the whole node (chunk count, scrub progress) live in
//! `NodeMetrics` and are set, not added.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde_json::{Map, Value, json};

/// Prefix of every metric name.
pub const PREFIX: &str = "ringfs_chunkd_";

/// Content type of `render_prometheus` output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub use ringfs_wire::latency::{BUCKETS, LATENCY_BUCKETS_NS};
use ringfs_wire::latency::{LATENCY_BUCKET_LE, bucket_index, duration_ns};

/// A request kind, as counted and timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
    Append,
    PushData,
    Forward,
    Create,
    Delete,
    BumpVersion,
    Clone,
    CloneRead,
    Info,
    List,
    Lease,
    Heartbeat,
}

impl Op {
    /// Every op, in declaration order; `ALL[op as usize] == op`.
    pub const ALL: [Op; 14] = [
        Op::Read,
        Op::Write,
        Op::Append,
        Op::PushData,
        Op::Forward,
        Op::Create,
        Op::Delete,
        Op::BumpVersion,
        Op::Clone,
        Op::CloneRead,
        Op::Info,
        Op::List,
        Op::Lease,
        Op::Heartbeat,
    ];
    pub const COUNT: usize = Op::ALL.len();

    /// The `op` label value.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Append => "append",
            Op::PushData => "push_data",
            Op::Forward => "forward",
            Op::Create => "create",
            Op::Delete => "delete",
            Op::BumpVersion => "bump_version",
            Op::Clone => "clone",
            Op::CloneRead => "clone_read",
            Op::Info => "info",
            Op::List => "list",
            Op::Lease => "lease",
            Op::Heartbeat => "heartbeat",
        }
    }
}

/// Where a checksum mismatch was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChecksumSource {
    /// A client or replica read.
    Read,
    /// The read-modify-write of a partially overwritten block.
    Write,
    Scrub,
    /// Data received from a clone source.
    Clone,
    /// Start-up recovery of chunks that were open at a crash.
    Recovery,
}

impl ChecksumSource {
    /// Every source, in declaration order; `ALL[s as usize] == s`.
    pub const ALL: [ChecksumSource; 5] = [
        ChecksumSource::Read,
        ChecksumSource::Write,
        ChecksumSource::Scrub,
        ChecksumSource::Clone,
        ChecksumSource::Recovery,
    ];
    pub const COUNT: usize = ChecksumSource::ALL.len();

    /// The `source` label value.
    pub fn name(&self) -> &'static str {
        match self {
            ChecksumSource::Read => "read",
            ChecksumSource::Write => "write",
            ChecksumSource::Scrub => "scrub",
            ChecksumSource::Clone => "clone",
            ChecksumSource::Recovery => "recovery",
        }
    }
}

/// One op's counters on one core. Buckets are stored per bucket, not
/// cumulative, so an observation is one add; the scrape accumulates them
/// and derives `_count` from the buckets, which keeps `+Inf == _count`
/// exact even while cores are writing.
struct OpShard {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
    ok: AtomicU64,
    err: AtomicU64,
}

impl OpShard {
    const fn new() -> OpShard {
        OpShard {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_ns: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            err: AtomicU64::new(0),
        }
    }
}

/// One core's shard. Only that core writes it. Aligned to 128 bytes (two
/// cache lines, for adjacent-line prefetch) so neighbouring shards in the
/// `Vec` never share a line.
#[repr(align(128))]
pub struct CoreMetrics {
    ops: [OpShard; Op::COUNT],
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    checksum_failures: [AtomicU64; ChecksumSource::COUNT],
    buffer_pool_waits: AtomicU64,
    buffer_pool_wait_ns: AtomicU64,
    buffer_pool_free_buffers: AtomicU64,
    scrub_verified_bytes: AtomicU64,
    recovery_recomputed_blocks: AtomicU64,
    handoffs: AtomicU64,
    open_chunks: AtomicU64,
    chunk_reopens: AtomicU64,
    chunk_closes: AtomicU64,
    unsettled_chunks: AtomicU64,
    settles_logged: AtomicU64,
    // Signed: a close counted before its open (never expected) must show
    // as a visible -1, not as 2^64 - 1.
    connections_open: AtomicI64,
}

impl CoreMetrics {
    fn new() -> CoreMetrics {
        CoreMetrics {
            ops: [const { OpShard::new() }; Op::COUNT],
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            checksum_failures: [const { AtomicU64::new(0) }; ChecksumSource::COUNT],
            buffer_pool_waits: AtomicU64::new(0),
            buffer_pool_wait_ns: AtomicU64::new(0),
            buffer_pool_free_buffers: AtomicU64::new(0),
            scrub_verified_bytes: AtomicU64::new(0),
            recovery_recomputed_blocks: AtomicU64::new(0),
            handoffs: AtomicU64::new(0),
            open_chunks: AtomicU64::new(0),
            chunk_reopens: AtomicU64::new(0),
            chunk_closes: AtomicU64::new(0),
            unsettled_chunks: AtomicU64::new(0),
            settles_logged: AtomicU64::new(0),
            connections_open: AtomicI64::new(0),
        }
    }

    /// Counts a finished request and times it. Failed requests are timed
    /// too: a slow error is as much a symptom as a slow success.
    pub fn op_done(&self, op: Op, latency: Duration, ok: bool) {
        let shard = &self.ops[op as usize];
        let ns = duration_ns(latency);
        shard.buckets[bucket_index(ns)].fetch_add(1, Relaxed);
        shard.sum_ns.fetch_add(ns, Relaxed);
        if ok {
            shard.ok.fetch_add(1, Relaxed);
        } else {
            shard.err.fetch_add(1, Relaxed);
        }
    }

    /// Payload bytes sent to clients and replicas.
    pub fn bytes_read(&self, n: u64) {
        self.read_bytes.fetch_add(n, Relaxed);
    }

    /// Payload bytes made durable in chunk files.
    pub fn bytes_written(&self, n: u64) {
        self.written_bytes.fetch_add(n, Relaxed);
    }

    pub fn checksum_failure(&self, source: ChecksumSource) {
        self.checksum_failures[source as usize].fetch_add(1, Relaxed);
    }

    /// A request found the buffer pool empty and had to wait.
    pub fn buffer_pool_wait(&self) {
        self.buffer_pool_waits.fetch_add(1, Relaxed);
    }

    /// How long one such wait lasted.
    pub fn buffer_pool_wait_time(&self, waited: Duration) {
        self.buffer_pool_wait_ns
            .fetch_add(duration_ns(waited), Relaxed);
    }

    /// Free buffers in this core's pool now.
    pub fn set_buffer_pool_free_buffers(&self, n: u64) {
        self.buffer_pool_free_buffers.store(n, Relaxed);
    }

    pub fn scrub_bytes_verified(&self, n: u64) {
        self.scrub_verified_bytes.fetch_add(n, Relaxed);
    }

    /// Blocks whose CRC was recomputed by start-up recovery.
    pub fn blocks_recomputed_at_recovery(&self, n: u64) {
        self.recovery_recomputed_blocks.fetch_add(n, Relaxed);
    }

    /// This core's open chunks and its running counts of reopens and
    /// closes (`crate::openfiles`), published by housekeeping.
    pub fn set_open_files(&self, s: crate::openfiles::OpenFilesStats) {
        self.open_chunks.store(s.open_chunks, Relaxed);
        self.chunk_reopens.store(s.reopens, Relaxed);
        self.chunk_closes.store(s.closes, Relaxed);
    }

    /// Chunks of this core left with settling to do after housekeeping.
    pub fn set_unsettled_chunks(&self, n: u64) {
        self.unsettled_chunks.store(n, Relaxed);
    }

    /// Housekeeping logged an idle chunk's watermark or closed its Intents.
    pub fn settled_chunk(&self) {
        self.settles_logged.fetch_add(1, Relaxed);
    }

    /// A request this core received was passed to the core owning its chunk.
    pub fn handoff(&self) {
        self.handoffs.fetch_add(1, Relaxed);
    }

    /// Connections are counted on the core that owns them, so opening and
    /// closing stay on one shard.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }
}

/// Node-wide gauges, each set by the one component that owns the number.
pub struct NodeMetrics {
    chunks: AtomicU64,
    stored_bytes: AtomicU64,
    corrupt_chunks: AtomicU64,
    highest_epoch: AtomicU64,
    read_verify: AtomicU64,
    scrub_unverified_beyond_period_bytes: AtomicU64,
    scrub_verified_this_period_bytes: AtomicU64,
    /// f64 bits; `AtomicU64::new(0)` is 0.0.
    scrub_coverage_ratio: AtomicU64,
}

impl NodeMetrics {
    fn new() -> NodeMetrics {
        NodeMetrics {
            chunks: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            corrupt_chunks: AtomicU64::new(0),
            highest_epoch: AtomicU64::new(0),
            read_verify: AtomicU64::new(0),
            scrub_unverified_beyond_period_bytes: AtomicU64::new(0),
            scrub_verified_this_period_bytes: AtomicU64::new(0),
            scrub_coverage_ratio: AtomicU64::new(0),
        }
    }

    pub fn set_chunks(&self, n: u64) {
        self.chunks.store(n, Relaxed);
    }

    /// Bytes of chunk data on disk (not counting the checksum sidecars).
    pub fn set_bytes_stored(&self, n: u64) {
        self.stored_bytes.store(n, Relaxed);
    }

    pub fn set_corrupt_chunks(&self, n: u64) {
        self.corrupt_chunks.store(n, Relaxed);
    }

    pub fn set_read_verify(&self, on: bool) {
        self.read_verify.store(u64::from(on), Relaxed);
    }

    /// Raises the highest epoch seen to `epoch` if it is higher. A max,
    /// not a store, because several cores see epochs and an older one
    /// arriving late must not lower the gauge.
    pub fn raise_highest_epoch(&self, epoch: u64) {
        self.highest_epoch.fetch_max(epoch, Relaxed);
    }

    /// Bytes whose last verification is older than the scrub period: the
    /// number an operator alerts on.
    pub fn set_scrub_unverified_beyond_period_bytes(&self, n: u64) {
        self.scrub_unverified_beyond_period_bytes.store(n, Relaxed);
    }

    pub fn set_scrub_verified_this_period_bytes(&self, n: u64) {
        self.scrub_verified_this_period_bytes.store(n, Relaxed);
    }

    /// Fraction of stored bytes verified within the period, clamped to
    /// [0, 1]; NaN becomes 0 so the exposition never carries a NaN.
    pub fn set_scrub_coverage_ratio(&self, ratio: f64) {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.scrub_coverage_ratio.store(ratio.to_bits(), Relaxed);
    }
}

/// All of a chunkd's metrics; share it with `Arc`.
pub struct Metrics {
    cores: Vec<CoreMetrics>,
    node: NodeMetrics,
}

impl Metrics {
    /// One shard per core; core ids are `0..cores`.
    pub fn new(cores: usize) -> Metrics {
        Metrics {
            cores: (0..cores).map(|_| CoreMetrics::new()).collect(),
            node: NodeMetrics::new(),
        }
    }

    /// The shard of core `id`. Panics if `id` is not a core id: core ids
    /// come from our own start-up code, never from the network.
    pub fn core(&self, id: usize) -> &CoreMetrics {
        &self.cores[id]
    }

    pub fn cores(&self) -> &[CoreMetrics] {
        &self.cores
    }

    pub fn node(&self) -> &NodeMetrics {
        &self.node
    }

    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for core in &self.cores {
            for (sum, shard) in t.ops.iter_mut().zip(&core.ops) {
                for (b, a) in sum.buckets.iter_mut().zip(&shard.buckets) {
                    *b = b.wrapping_add(a.load(Relaxed));
                }
                sum.sum_ns = sum.sum_ns.wrapping_add(shard.sum_ns.load(Relaxed));
                sum.ok = sum.ok.wrapping_add(shard.ok.load(Relaxed));
                sum.err = sum.err.wrapping_add(shard.err.load(Relaxed));
            }
            let add = |total: &mut u64, a: &AtomicU64| *total = total.wrapping_add(a.load(Relaxed));
            add(&mut t.read_bytes, &core.read_bytes);
            add(&mut t.written_bytes, &core.written_bytes);
            for (total, a) in t.checksum_failures.iter_mut().zip(&core.checksum_failures) {
                add(total, a);
            }
            add(&mut t.buffer_pool_waits, &core.buffer_pool_waits);
            add(&mut t.buffer_pool_wait_ns, &core.buffer_pool_wait_ns);
            add(&mut t.scrub_verified_bytes, &core.scrub_verified_bytes);
            add(
                &mut t.recovery_recomputed_blocks,
                &core.recovery_recomputed_blocks,
            );
            add(&mut t.open_chunks, &core.open_chunks);
            add(&mut t.unsettled_chunks, &core.unsettled_chunks);
            add(&mut t.settles_logged, &core.settles_logged);
            add(&mut t.chunk_reopens, &core.chunk_reopens);
            add(&mut t.chunk_closes, &core.chunk_closes);
            t.connections_open = t
                .connections_open
                .wrapping_add(core.connections_open.load(Relaxed));
            t.handoffs.push(core.handoffs.load(Relaxed));
            t.buffer_pool_free_buffers
                .push(core.buffer_pool_free_buffers.load(Relaxed));
        }
        let n = &self.node;
        t.chunks = n.chunks.load(Relaxed);
        t.stored_bytes = n.stored_bytes.load(Relaxed);
        t.corrupt_chunks = n.corrupt_chunks.load(Relaxed);
        t.highest_epoch = n.highest_epoch.load(Relaxed);
        t.read_verify = n.read_verify.load(Relaxed);
        t.scrub_unverified_beyond_period_bytes =
            n.scrub_unverified_beyond_period_bytes.load(Relaxed);
        t.scrub_verified_this_period_bytes = n.scrub_verified_this_period_bytes.load(Relaxed);
        t.scrub_coverage_ratio = f64::from_bits(n.scrub_coverage_ratio.load(Relaxed));
        t
    }

    /// Appends every metric in the Prometheus text exposition format 0.0.4.
    /// Every series is emitted from start-up on, zero or not, so the set
    /// of series never changes and `rate()` has a starting point.
    pub fn render_prometheus(&self, out: &mut String) {
        let t = self.totals();
        let mut w = Writer { out };

        w.family(
            "ops_total",
            "counter",
            "Requests finished, by op and result.",
        );
        for (op, s) in Op::ALL.iter().zip(&t.ops) {
            for (result, v) in [("ok", s.ok), ("error", s.err)] {
                w.sample(
                    "ops_total",
                    format_args!("op=\"{}\",result=\"{result}\"", op.name()),
                    v,
                );
            }
        }

        w.family(
            "op_latency_seconds",
            "histogram",
            "Request latency from receipt of the request to the reply, by op.",
        );
        for (op, s) in Op::ALL.iter().zip(&t.ops) {
            let mut cumulative = 0u64;
            for (le, b) in LATENCY_BUCKET_LE.iter().zip(&s.buckets) {
                cumulative = cumulative.wrapping_add(*b);
                w.sample(
                    "op_latency_seconds_bucket",
                    format_args!("op=\"{}\",le=\"{le}\"", op.name()),
                    cumulative,
                );
            }
            w.sample(
                "op_latency_seconds_sum",
                format_args!("op=\"{}\"", op.name()),
                Seconds(s.sum_ns),
            );
            w.sample(
                "op_latency_seconds_count",
                format_args!("op=\"{}\"", op.name()),
                cumulative,
            );
        }

        w.counter(
            "read_bytes_total",
            "Payload bytes read for clients and replicas.",
            t.read_bytes,
        );
        w.counter(
            "written_bytes_total",
            "Payload bytes written to chunk files.",
            t.written_bytes,
        );

        w.family(
            "checksum_failures_total",
            "counter",
            "Blocks whose CRC32C did not match, by where the mismatch was found.",
        );
        for (source, v) in ChecksumSource::ALL.iter().zip(t.checksum_failures) {
            w.sample(
                "checksum_failures_total",
                format_args!("source=\"{}\"", source.name()),
                v,
            );
        }

        w.counter(
            "buffer_pool_waits_total",
            "Requests that found their core's buffer pool empty and waited.",
            t.buffer_pool_waits,
        );
        w.counter(
            "buffer_pool_wait_seconds_total",
            "Time requests spent waiting for the buffer pool.",
            Seconds(t.buffer_pool_wait_ns),
        );
        w.family(
            "buffer_pool_free_buffers",
            "gauge",
            "Free buffers in each core's buffer pool.",
        );
        for (core, v) in t.buffer_pool_free_buffers.iter().enumerate() {
            w.sample(
                "buffer_pool_free_buffers",
                format_args!("core=\"{core}\""),
                v,
            );
        }
        w.family(
            "handoffs_total",
            "counter",
            "Requests a core received and passed to the core that owns the chunk, by receiving core.",
        );
        for (core, v) in t.handoffs.iter().enumerate() {
            w.sample("handoffs_total", format_args!("core=\"{core}\""), v);
        }
        w.gauge(
            "connections_open",
            "Open client and replica connections.",
            t.connections_open,
        );

        w.gauge("chunks", "Chunks stored.", t.chunks);
        w.gauge(
            "stored_bytes",
            "Bytes of chunk data stored.",
            t.stored_bytes,
        );
        w.gauge(
            "corrupt_chunks",
            "Chunks with a known checksum failure not yet repaired.",
            t.corrupt_chunks,
        );
        w.gauge(
            "highest_epoch",
            "Highest master epoch seen.",
            t.highest_epoch,
        );
        w.gauge(
            "read_verify",
            "1 while reads verify block CRCs before sending; 0 only under a benchmark switch.",
            t.read_verify,
        );

        w.counter(
            "scrub_verified_bytes_total",
            "Bytes the scrubber read and verified.",
            t.scrub_verified_bytes,
        );
        w.gauge(
            "scrub_unverified_beyond_period_bytes",
            "Stored bytes not verified within the scrub period.",
            t.scrub_unverified_beyond_period_bytes,
        );
        w.gauge(
            "scrub_verified_this_period_bytes",
            "Stored bytes verified within the current scrub period.",
            t.scrub_verified_this_period_bytes,
        );
        w.gauge(
            "scrub_coverage_ratio",
            "Fraction of stored bytes verified within the scrub period.",
            Float(t.scrub_coverage_ratio),
        );
        w.counter(
            "recovery_recomputed_blocks_total",
            "Blocks whose CRC32C start-up recovery recomputed.",
            t.recovery_recomputed_blocks,
        );
        w.gauge(
            "open_chunks",
            "Chunks whose files are open (bounded per core; idle ones are closed).",
            t.open_chunks,
        );
        w.gauge(
            "unsettled_chunks",
            "Chunks with a durable watermark or open Intents still to log (housekeeping's work list).",
            t.unsettled_chunks,
        );
        w.counter(
            "settles_logged_total",
            "Idle chunks whose durable watermark housekeeping logged or whose Intents it closed.",
            t.settles_logged,
        );
        w.counter(
            "chunk_reopens_total",
            "Chunks whose files were opened again after being closed for the bound.",
            t.chunk_reopens,
        );
        w.counter(
            "chunk_closes_total",
            "Chunks whose files were closed to stay within the bound.",
            t.chunk_closes,
        );
    }

    /// The main totals, summed over cores, for `/status`.
    pub fn snapshot_json(&self) -> Value {
        let t = self.totals();
        let ops: Map<String, Value> = Op::ALL
            .iter()
            .zip(&t.ops)
            .map(|(op, s)| {
                (
                    op.name().to_owned(),
                    json!({
                        "ok": s.ok,
                        "error": s.err,
                        "latency_sum_seconds": s.sum_ns as f64 / 1e9,
                    }),
                )
            })
            .collect();
        let checksum_failures: Map<String, Value> = ChecksumSource::ALL
            .iter()
            .zip(t.checksum_failures)
            .map(|(s, v)| (s.name().to_owned(), json!(v)))
            .collect();
        json!({
            "cores": self.cores.len(),
            "ops": ops,
            "read_bytes_total": t.read_bytes,
            "written_bytes_total": t.written_bytes,
            "checksum_failures": checksum_failures,
            "buffer_pool_waits_total": t.buffer_pool_waits,
            "buffer_pool_wait_seconds_total": t.buffer_pool_wait_ns as f64 / 1e9,
            "buffer_pool_free_buffers": t.buffer_pool_free_buffers.iter().sum::<u64>(),
            "handoffs_total": t.handoffs.iter().sum::<u64>(),
            "connections_open": t.connections_open,
            "chunks": t.chunks,
            "stored_bytes": t.stored_bytes,
            "corrupt_chunks": t.corrupt_chunks,
            "highest_epoch": t.highest_epoch,
            "read_verify": t.read_verify == 1,
            "recovery_recomputed_blocks_total": t.recovery_recomputed_blocks,
            "open_chunks": t.open_chunks,
            "unsettled_chunks": t.unsettled_chunks,
            "settles_logged_total": t.settles_logged,
            "chunk_reopens_total": t.chunk_reopens,
            "chunk_closes_total": t.chunk_closes,
            "scrub": {
                "verified_bytes_total": t.scrub_verified_bytes,
                "unverified_beyond_period_bytes": t.scrub_unverified_beyond_period_bytes,
                "verified_this_period_bytes": t.scrub_verified_this_period_bytes,
                "coverage_ratio": t.scrub_coverage_ratio,
            },
        })
    }
}

#[derive(Default, Clone, Copy)]
struct OpTotals {
    buckets: [u64; BUCKETS],
    sum_ns: u64,
    ok: u64,
    err: u64,
}

/// Shards summed at one scrape.
#[derive(Default)]
struct Totals {
    ops: [OpTotals; Op::COUNT],
    read_bytes: u64,
    written_bytes: u64,
    checksum_failures: [u64; ChecksumSource::COUNT],
    buffer_pool_waits: u64,
    buffer_pool_wait_ns: u64,
    scrub_verified_bytes: u64,
    recovery_recomputed_blocks: u64,
    open_chunks: u64,
    chunk_reopens: u64,
    chunk_closes: u64,
    unsettled_chunks: u64,
    settles_logged: u64,
    connections_open: i64,
    /// Per core, index = core id.
    handoffs: Vec<u64>,
    buffer_pool_free_buffers: Vec<u64>,
    chunks: u64,
    stored_bytes: u64,
    corrupt_chunks: u64,
    highest_epoch: u64,
    read_verify: u64,
    scrub_unverified_beyond_period_bytes: u64,
    scrub_verified_this_period_bytes: u64,
    scrub_coverage_ratio: f64,
}

/// Nanoseconds shown as seconds.
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Float(self.0 as f64 / 1e9).fmt(f)
    }
}

/// A float in exposition syntax: Rust's `Display` never uses exponents,
/// which Prometheus accepts, but spells infinities `inf`, which it does not.
struct Float(f64);

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v == f64::INFINITY {
            f.write_str("+Inf")
        } else if v == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            write!(f, "{v}")
        }
    }
}

/// Writes exposition lines. Writing to a `String` cannot fail, so the
/// `fmt::Result`s are dropped here once instead of at every call.
struct Writer<'a> {
    out: &'a mut String,
}

impl Writer<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {PREFIX}{name} {help}");
        let _ = writeln!(self.out, "# TYPE {PREFIX}{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: fmt::Arguments<'_>, value: impl fmt::Display) {
        let _ = writeln!(self.out, "{PREFIX}{name}{{{labels}}} {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl fmt::Display) {
        self.family(name, kind, help);
        let _ = writeln!(self.out, "{PREFIX}{name} {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: impl fmt::Display) {
        self.single(name, "counter", help, value);
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl fmt::Display) {
        self.single(name, "gauge", help, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_arrays_are_indexed_by_discriminant() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
        for (i, s) in ChecksumSource::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
        let mut names: Vec<_> = Op::ALL.iter().map(Op::name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Op::COUNT);
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }

    #[test]
    fn huge_latency_saturates_instead_of_panicking() {
        let m = Metrics::new(1);
        m.core(0).op_done(Op::Read, Duration::MAX, true);
        m.core(0).buffer_pool_wait_time(Duration::MAX);
        let mut out = String::new();
        m.render_prometheus(&mut out);
        assert!(
            out.contains("ringfs_chunkd_op_latency_seconds_bucket{op=\"read\",le=\"+Inf\"} 1\n")
        );
    }

    #[test]
    fn coverage_ratio_is_clamped() {
        let m = Metrics::new(0);
        for (set, want) in [(f64::NAN, 0.0), (-1.0, 0.0), (2.0, 1.0), (0.25, 0.25)] {
            m.node().set_scrub_coverage_ratio(set);
            assert_eq!(m.snapshot_json()["scrub"]["coverage_ratio"], json!(want));
        }
    }

    #[test]
    fn every_sample_has_a_type_line_before_it() {
        let m = Metrics::new(3);
        let mut out = String::new();
        m.render_prometheus(&mut out);
        let mut typed: Vec<String> = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(!typed.contains(&name), "family {name} declared twice");
                typed.push(name);
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = typed.last().expect("sample before any TYPE");
                assert!(
                    name == family
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(family)),
                    "{name} is not in family {family}"
                );
            }
        }
        assert!(typed.iter().all(|n| n.starts_with(PREFIX)));
    }
}
