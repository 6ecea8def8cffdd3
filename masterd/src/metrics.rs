//! Counters for `/metrics` (Prometheus text) and `/status` (JSON).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringfs_wire::latency::{BUCKETS, LATENCY_BUCKET_LE, bucket_index, duration_ns};

use crate::node::Master;
use crate::registry::Liveness;

/// Request kinds counted, in the order of [`Metrics::requests`].
pub const REQUEST_KINDS: [&str; 22] = [
    "mkdir",
    "create",
    "stat",
    "list_dir",
    "rename",
    "delete",
    "list_trash",
    "restore",
    "purge",
    "set_replication",
    "complete_file",
    "get_chunks",
    "allocate_chunk",
    "get_lease",
    "report_bad_replica",
    "admin_status",
    "fsck",
    "admin_other",
    "register",
    "heartbeat",
    "raft",
    "other",
];

/// One request kind's latency histogram. Buckets are stored per bucket,
/// not cumulative, so an observation is one add; the scrape accumulates.
#[derive(Default)]
pub struct Latency {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let ns = duration_ns(took);
        self.buckets[bucket_index(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Appends the Prometheus lines of this histogram, labelled `op`.
    fn render(&self, out: &mut String, name: &str, op: &str) {
        let mut cumulative = 0u64;
        for (le, bucket) in LATENCY_BUCKET_LE.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{op=\"{op}\",le=\"{le}\"}} {cumulative}");
        }
        let secs = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{op=\"{op}\"}} {secs}");
        // From the buckets, so `_count` always equals the `+Inf` bucket.
        let _ = writeln!(out, "{name}_count{{op=\"{op}\"}} {cumulative}");
    }
}

#[derive(Default)]
pub struct Metrics {
    pub requests: [AtomicU64; REQUEST_KINDS.len()],
    pub request_errors: [AtomicU64; REQUEST_KINDS.len()],
    /// Time from a client request's arrival to its reply, per kind (the
    /// commit of a mutation included).
    pub request_latency: [Latency; REQUEST_KINDS.len()],
    pub connections: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Primary leases extended through heartbeats.
    pub leases_extended: AtomicU64,
    /// Terms this master has seen begin (elections anywhere in the group).
    pub elections: AtomicU64,
    /// Times the leader this master knows of changed.
    pub leader_changes: AtomicU64,
    /// Heartbeat-carried commands chunkservers refused as of a stale epoch
    /// (with the proposer's and `CsClient`'s counts: fenced requests).
    pub fenced: AtomicU64,
    /// Graceful handovers this master led.
    pub handovers: AtomicU64,
    /// Campaigns started at once because a candidate with a shorter log
    /// asked for this master's vote after the leader fell silent
    /// (`election.rs`).
    pub election_takeovers: AtomicU64,
    pub membership_changes: AtomicU64,
    /// Leases of earlier terms taken back from their holders.
    pub leases_revoked: AtomicU64,
    /// Chunks whose allocation committed under a leader that died before
    /// creating them, created by a later leader.
    pub unborn_chunks_created: AtomicU64,
}

fn kind_index(kind: &str) -> usize {
    REQUEST_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(REQUEST_KINDS.len() - 1)
}

impl Metrics {
    pub fn count(&self, kind: &str, ok: bool) {
        let i = kind_index(kind);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.request_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client request of `kind` answered after `took`.
    pub fn answered(&self, kind: &str, ok: bool, took: Duration) {
        self.count(kind, ok);
        self.request_latency[kind_index(kind)].observe(took);
    }

    pub fn leases_extended(&self, n: u64) {
        self.leases_extended.fetch_add(n, Ordering::Relaxed);
    }
}

/// Cluster health as the master sees it. The chunk counts are those of the
/// last finished chunk pass (`crate::chunkscan`): counting them here would
/// walk every chunk under the locks on every scrape.
pub struct Health {
    pub live_chunkservers: u64,
    pub dead_chunkservers: u64,
    pub under_replicated: u64,
    pub missing: u64,
    pub corrupt_replicas: u64,
    /// Passes finished since this master started; 0 = the counts are not
    /// known yet.
    pub scan_passes: u64,
    /// The last pass: how long it took, and how long ago it finished.
    pub scan_took_ms: u64,
    pub scan_age_ms: u64,
    /// Chunks queued for re-replication.
    pub rereplication_queued: u64,
}

pub fn health(master: &Master) -> Health {
    let (live_chunkservers, dead_chunkservers) = {
        let reg = master.registry();
        let dead = reg
            .servers
            .values()
            .filter(|s| s.liveness == Liveness::Dead)
            .count();
        (reg.live_servers().count() as u64, dead as u64)
    };
    let (passes, last, queued) = crate::duties::scan_report(master);
    let tally = last.map(|p| p.tally).unwrap_or_default();
    Health {
        live_chunkservers,
        dead_chunkservers,
        under_replicated: tally.under_replicated,
        missing: tally.missing,
        corrupt_replicas: tally.corrupt_replicas,
        scan_passes: passes,
        scan_took_ms: last.map_or(0, |p| p.took.as_millis() as u64),
        scan_age_ms: last.map_or(0, |p| p.finished.elapsed().as_millis() as u64),
        rereplication_queued: queued as u64,
    }
}

pub fn render(master: &Master) -> String {
    let mut out = String::new();
    let m = &master.metrics;
    let _ = writeln!(out, "# TYPE ringfs_master_requests_total counter");
    for (i, kind) in REQUEST_KINDS.iter().enumerate() {
        let _ = writeln!(
            out,
            "ringfs_master_requests_total{{op=\"{kind}\"}} {}",
            m.requests[i].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "# TYPE ringfs_master_request_errors_total counter");
    for (i, kind) in REQUEST_KINDS.iter().enumerate() {
        let _ = writeln!(
            out,
            "ringfs_master_request_errors_total{{op=\"{kind}\"}} {}",
            m.request_errors[i].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# TYPE ringfs_master_request_latency_seconds histogram"
    );
    for (i, kind) in REQUEST_KINDS.iter().enumerate() {
        m.request_latency[i].render(&mut out, "ringfs_master_request_latency_seconds", kind);
    }
    let log = &master.oplog_stats;
    let p = &master.proposer.stats;
    let sh = &master.shared;
    let counters: [(&str, &str, u64); 23] = [
        (
            "ringfs_master_unborn_chunks_created_total",
            "counter",
            m.unborn_chunks_created.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_leases_revoked_total",
            "counter",
            m.leases_revoked.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_elections_total",
            "counter",
            m.elections.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_leader_changes_total",
            "counter",
            m.leader_changes.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_fenced_requests_total",
            "counter",
            m.fenced.load(Ordering::Relaxed)
                + master.proposer.stats.fenced.load(Ordering::Relaxed)
                + master.cs.stale_epoch_refusals.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_handovers_total",
            "counter",
            m.handovers.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_election_takeovers_total",
            "counter",
            m.election_takeovers.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_membership_changes_total",
            "counter",
            m.membership_changes.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_leases_extended_total",
            "counter",
            m.leases_extended.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_connections_total",
            "counter",
            m.connections.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_handshake_failures_total",
            "counter",
            m.handshake_failures.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_oplog_records_total",
            "counter",
            log.records_appended.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_oplog_fsyncs_total",
            "counter",
            log.data_fsyncs.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_oplog_bytes",
            "gauge",
            log.log_bytes_on_disk.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_proposals_total",
            "counter",
            p.proposals.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_proposed_ops_total",
            "counter",
            p.ops.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_checkpoints_total",
            "counter",
            sh.checkpoints_written.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_checkpoints_received_total",
            "counter",
            sh.checkpoints_received.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_ops_since_checkpoint",
            "gauge",
            sh.ops_since_checkpoint(),
        ),
        (
            "ringfs_master_checkpoint_last_bytes",
            "gauge",
            sh.checkpoint_last_bytes.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_checkpoint_last_ms",
            "gauge",
            sh.checkpoint_last_ms.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_checkpoint_in_progress",
            "gauge",
            sh.checkpoints_in_progress.load(Ordering::Relaxed),
        ),
        (
            "ringfs_master_applied_index",
            "gauge",
            sh.applied_index.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, value) in counters {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
    }
    let h = health(master);
    for (name, value) in [
        ("ringfs_master_chunkservers_live", h.live_chunkservers),
        ("ringfs_master_chunkservers_dead", h.dead_chunkservers),
        ("ringfs_master_chunks_under_replicated", h.under_replicated),
        ("ringfs_master_chunks_missing", h.missing),
        ("ringfs_master_replicas_corrupt", h.corrupt_replicas),
        ("ringfs_master_chunk_scan_passes", h.scan_passes),
        ("ringfs_master_chunk_scan_last_pass_ms", h.scan_took_ms),
        ("ringfs_master_chunk_scan_age_ms", h.scan_age_ms),
        ("ringfs_master_rereplication_queued", h.rereplication_queued),
        ("ringfs_master_leases_live", master.leases.count() as u64),
    ] {
        let _ = writeln!(out, "# TYPE {name} gauge\n{name} {value}");
    }
    out
}

pub fn status_json(master: &Master) -> String {
    let metrics = master.raft.metrics().borrow().clone();
    let h = health(master);
    let (files, dirs) = {
        let s = master.shared.read();
        (s.ns.files, s.ns.directories)
    };
    let chunkservers: Vec<serde_json::Value> = master
        .registry()
        .servers
        .values()
        .map(|s| {
            serde_json::json!({
                "node_id": s.node_id,
                "addr": s.listen_addr,
                "rack": s.rack,
                "state": format!("{:?}", s.liveness).to_lowercase(),
                "capacity_bytes": s.capacity_bytes,
                "used_bytes": s.used_bytes,
                "chunks": s.chunk_count,
                "last_heartbeat_ms_ago": s.last_heartbeat.elapsed().as_millis() as u64,
            })
        })
        .collect();
    let role = match metrics.state {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "shadow",
        openraft::ServerState::Shutdown => "shutdown",
    };
    serde_json::json!({
        "role": role,
        "id": master.id,
        "term": metrics.current_term,
        "leader": metrics.current_leader,
        "commit_index": master.commit_index(),
        "voters": metrics.membership_config.membership().voter_ids().collect::<Vec<_>>(),
        "learners": metrics.membership_config.membership().learner_ids().collect::<Vec<_>>(),
        "replication": metrics.replication.as_ref().map(|r| r.iter().map(|(id, l)| (id.to_string(), l.map_or(0, |l| l.index))).collect::<std::collections::BTreeMap<_, _>>()),
        "elections": master.metrics.elections.load(Ordering::Relaxed),
        "applied_index": master.shared.applied_index.load(Ordering::Relaxed),
        "last_log_index": metrics.last_log_index,
        "snapshot_index": metrics.snapshot.map(|l| l.index),
        "purged_index": metrics.purged.map(|l| l.index),
        "files": files,
        "directories": dirs,
        "chunkservers": chunkservers,
        "live_chunkservers": h.live_chunkservers,
        "under_replicated": h.under_replicated,
        "missing_chunks": h.missing,
        "corrupt_replicas": h.corrupt_replicas,
        "chunk_scan": {
            "passes": h.scan_passes,
            "last_pass_ms": h.scan_took_ms,
            "age_ms": h.scan_age_ms,
            "rereplication_queued": h.rereplication_queued,
        },
        "uptime_secs": master.started.elapsed().as_secs(),
    })
    .to_string()
}

/// Counts elections and leader changes as this master sees them; ends with
/// the Raft instance.
pub async fn watch_raft(master: std::sync::Arc<Master>) {
    let mut rx = master.raft.metrics();
    let (mut term, mut leader) = {
        let m = rx.borrow();
        (m.current_term, m.current_leader)
    };
    while rx.changed().await.is_ok() {
        let (t, l) = {
            let m = rx.borrow();
            (m.current_term, m.current_leader)
        };
        if t > term {
            master
                .metrics
                .elections
                .fetch_add(t - term, Ordering::Relaxed);
            term = t;
        }
        if l.is_some() && l != leader {
            master
                .metrics
                .leader_changes
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(term = t, leader = l, "leader changed");
        }
        if l.is_some() {
            leader = l;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histograms_are_cumulative_and_count_every_request() {
        let m = Metrics::default();
        m.answered("create", true, Duration::from_micros(40));
        m.answered("create", false, Duration::from_millis(3));
        m.answered("create", true, Duration::from_secs(20));
        m.answered("no such kind", true, Duration::from_micros(1));
        let mut out = String::new();
        m.request_latency[kind_index("create")].render(&mut out, "x", "create");
        let value = |line: &str| -> String {
            out.lines()
                .find(|l| l.starts_with(line))
                .unwrap_or_else(|| panic!("no {line} in {out}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(value("x_bucket{op=\"create\",le=\"0.00005\"}"), "1");
        assert_eq!(value("x_bucket{op=\"create\",le=\"0.0025\"}"), "1");
        assert_eq!(value("x_bucket{op=\"create\",le=\"0.005\"}"), "2");
        assert_eq!(value("x_bucket{op=\"create\",le=\"10\"}"), "2");
        assert_eq!(value("x_bucket{op=\"create\",le=\"+Inf\"}"), "3");
        assert_eq!(value("x_count{op=\"create\"}"), "3");
        let sum: f64 = value("x_sum{op=\"create\"}").parse().unwrap();
        assert!((sum - 20.00304).abs() < 1e-6, "{sum}");
        assert_eq!(
            m.request_errors[kind_index("create")].load(Ordering::Relaxed),
            1
        );
        // Unknown kinds land in "other", timed as well.
        let other = kind_index("other");
        assert_eq!(m.requests[other].load(Ordering::Relaxed), 1);
    }
}
