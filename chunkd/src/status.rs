//! `GET /metrics` (Prometheus text) and `GET /status` (JSON) of a
//! chunkserver, served off the data path by `http`.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;

use crate::http::{self, HttpServer, Response};
use crate::node::Node;

pub fn start_http(addr: SocketAddr, node: Arc<Node>) -> std::io::Result<HttpServer> {
    let started = std::time::Instant::now();
    let handler: http::Handler = Arc::new(move |path: &str| {
        let (chunks, bytes, corrupt) = node.counts();
        let gauges = node.metrics.node();
        gauges.set_chunks(chunks);
        gauges.set_bytes_stored(bytes);
        gauges.set_corrupt_chunks(corrupt);
        let scrub = node.scrub_totals();
        gauges.set_scrub_unverified_beyond_period_bytes(scrub.unverified_beyond_period_bytes);
        gauges.set_scrub_verified_this_period_bytes(scrub.verified_this_period_bytes);
        let ratio = if scrub.stored_bytes == 0 {
            1.0
        } else {
            1.0 - scrub.unverified_beyond_period_bytes as f64 / scrub.stored_bytes as f64
        };
        gauges.set_scrub_coverage_ratio(ratio);
        match path {
            "/metrics" => {
                let mut out = String::new();
                node.metrics.render_prometheus(&mut out);
                Some(Response {
                    status: 200,
                    content_type: crate::metrics::PROMETHEUS_CONTENT_TYPE,
                    body: out.into_bytes(),
                })
            }
            "/status" => {
                let s = &node.settings;
                Some(Response::json(&json!({
                    "role": "chunkserver",
                    "cluster_id": s.cluster_id,
                    "node_id": node.node_id(),
                    "listen": s.listen.to_string(),
                    "advertise": s.advertise,
                    "rack": s.rack,
                    "cores": s.cores,
                    "data_dirs": s.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
                    "chunk_size_bytes": s.chunk_size_bytes,
                    "chunks": chunks,
                    "stored_bytes": bytes,
                    "corrupt_chunks": corrupt,
                    "highest_epoch": node.epoch.highest(),
                    "pending_reports": node.pending_reports(),
                    "scrub": {
                        "period_secs": s.scrub_period.as_secs(),
                        "verified_this_period_bytes": scrub.verified_this_period_bytes,
                        "unverified_beyond_period_bytes": scrub.unverified_beyond_period_bytes,
                        "stored_bytes": scrub.stored_bytes,
                        "corrupt_blocks_found": scrub.corrupt_blocks_found,
                    },
                    "uptime_secs": started.elapsed().as_secs(),
                    "stopping": node.is_stopping(),
                    "metrics": node.metrics.snapshot_json(),
                })))
            }
            _ => None,
        }
    });
    HttpServer::start(addr, handler)
}
