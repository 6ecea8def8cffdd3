//! `/metrics` and `/status` over the real HTTP server: summed shards in the
//! exposition, routing, every bound (head size, connections, time), garbage
//! input, and a prompt shutdown.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chunkd::http::{self, HttpServer, MAX_CONNECTIONS, Response};
use chunkd::metrics::{ChecksumSource, Metrics, Op, PROMETHEUS_CONTENT_TYPE};

const T: Duration = Duration::from_secs(5);

fn start_server(metrics: Arc<Metrics>) -> HttpServer {
    let handler: http::Handler = Arc::new(move |path: &str| match path {
        "/metrics" => {
            let mut body = String::new();
            metrics.render_prometheus(&mut body);
            Some(Response {
                status: 200,
                content_type: PROMETHEUS_CONTENT_TYPE,
                body: body.into_bytes(),
            })
        }
        "/status" => Some(Response::json(&serde_json::json!({
            "role": "chunkd",
            "metrics": metrics.snapshot_json(),
        }))),
        "/panic" => panic!("handler bug"),
        _ => None,
    });
    HttpServer::start("127.0.0.1:0".parse().unwrap(), handler).unwrap()
}

/// Sends raw bytes and returns whatever comes back before the server
/// closes (or an error if it resets). Bounded by the read timeout.
fn raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, T)?;
    s.set_read_timeout(Some(T))?;
    s.set_write_timeout(Some(T))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

fn status_of(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\r').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// The exposition as `series -> value`, with HELP/TYPE checks on the way.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        assert!(series.starts_with("ringfs_chunkd_"), "{series}");
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

#[test]
fn metrics_sums_shards_and_histograms_are_cumulative() {
    let metrics = Arc::new(Metrics::new(2));
    let (c0, c1) = (metrics.core(0), metrics.core(1));
    c0.op_done(Op::Read, Duration::from_micros(40), true); // le 0.00005
    c0.op_done(Op::Read, Duration::from_millis(1), true); // le 0.001, boundary
    c1.op_done(Op::Read, Duration::from_millis(3), false); // le 0.005
    c1.op_done(Op::Read, Duration::from_secs(11), true); // +Inf only
    c1.op_done(Op::PushData, Duration::from_micros(200), true);
    c0.bytes_read(1000);
    c1.bytes_read(24);
    c0.bytes_written(1 << 20);
    c1.bytes_written(1 << 20);
    c0.checksum_failure(ChecksumSource::Scrub);
    c1.checksum_failure(ChecksumSource::Scrub);
    c1.checksum_failure(ChecksumSource::Read);
    c0.buffer_pool_wait();
    c1.buffer_pool_wait();
    c1.buffer_pool_wait_time(Duration::from_millis(500));
    c0.set_buffer_pool_free_buffers(7);
    c1.set_buffer_pool_free_buffers(3);
    c0.scrub_bytes_verified(4096);
    c1.blocks_recomputed_at_recovery(2);
    c1.handoff();
    c1.handoff();
    c0.connection_opened();
    c1.connection_opened();
    c1.connection_opened();
    c1.connection_closed();
    let node = metrics.node();
    node.set_chunks(12);
    node.set_bytes_stored(3 << 30);
    node.set_corrupt_chunks(1);
    node.raise_highest_epoch(9);
    node.raise_highest_epoch(4);
    node.set_scrub_unverified_beyond_period_bytes(123);
    node.set_scrub_verified_this_period_bytes(456);
    node.set_scrub_coverage_ratio(0.75);

    let server = start_server(metrics.clone());
    let (status, body) = http::get(server.local_addr(), "/metrics", T).unwrap();
    assert_eq!(status, 200);
    let m = parse_exposition(&body);
    let get = |series: &str| *m.get(series).unwrap_or_else(|| panic!("missing {series}"));

    assert_eq!(
        get(r#"ringfs_chunkd_ops_total{op="read",result="ok"}"#),
        3.0
    );
    assert_eq!(
        get(r#"ringfs_chunkd_ops_total{op="read",result="error"}"#),
        1.0
    );
    assert_eq!(
        get(r#"ringfs_chunkd_ops_total{op="push_data",result="ok"}"#),
        1.0
    );
    assert_eq!(
        get(r#"ringfs_chunkd_ops_total{op="write",result="ok"}"#),
        0.0
    );
    let bucket = |op: &str, le: &str| {
        get(&format!(
            "ringfs_chunkd_op_latency_seconds_bucket{{op=\"{op}\",le=\"{le}\"}}"
        ))
    };
    assert_eq!(bucket("read", "0.00005"), 1.0);
    assert_eq!(bucket("read", "0.0005"), 1.0);
    assert_eq!(bucket("read", "0.001"), 2.0);
    assert_eq!(bucket("read", "0.005"), 3.0);
    assert_eq!(bucket("read", "10"), 3.0);
    assert_eq!(bucket("read", "+Inf"), 4.0);
    assert_eq!(bucket("push_data", "0.0001"), 0.0);
    assert_eq!(bucket("push_data", "0.00025"), 1.0);
    assert_eq!(
        get(r#"ringfs_chunkd_op_latency_seconds_count{op="read"}"#),
        4.0
    );
    let sum = get(r#"ringfs_chunkd_op_latency_seconds_sum{op="read"}"#);
    assert!((sum - 11.00404).abs() < 1e-9, "{sum}");

    // Every op's buckets: non-decreasing, +Inf == _count.
    for op in Op::ALL {
        let mut previous = 0.0;
        let mut buckets = 0;
        let prefix = format!(
            "ringfs_chunkd_op_latency_seconds_bucket{{op=\"{}\",le=",
            op.name()
        );
        let mut les: Vec<(f64, f64)> = m
            .iter()
            .filter_map(|(k, v)| {
                let le = k
                    .strip_prefix(&prefix)?
                    .trim_end_matches('}')
                    .trim_matches('"');
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                Some((le, *v))
            })
            .collect();
        les.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, v) in &les {
            assert!(*v >= previous, "{op:?} buckets decrease");
            previous = *v;
            buckets += 1;
        }
        assert_eq!(buckets, 17, "{op:?}");
        assert_eq!(les.last().unwrap().0, f64::INFINITY);
        let count = get(&format!(
            "ringfs_chunkd_op_latency_seconds_count{{op=\"{}\"}}",
            op.name()
        ));
        assert_eq!(previous, count, "{op:?}: +Inf != _count");
    }

    assert_eq!(get("ringfs_chunkd_read_bytes_total"), 1024.0);
    assert_eq!(get("ringfs_chunkd_written_bytes_total"), 2.0 * 1048576.0);
    assert_eq!(
        get(r#"ringfs_chunkd_checksum_failures_total{source="scrub"}"#),
        2.0
    );
    assert_eq!(
        get(r#"ringfs_chunkd_checksum_failures_total{source="read"}"#),
        1.0
    );
    assert_eq!(
        get(r#"ringfs_chunkd_checksum_failures_total{source="recovery"}"#),
        0.0
    );
    assert_eq!(get("ringfs_chunkd_buffer_pool_waits_total"), 2.0);
    assert_eq!(get("ringfs_chunkd_buffer_pool_wait_seconds_total"), 0.5);
    assert_eq!(
        get(r#"ringfs_chunkd_buffer_pool_free_buffers{core="0"}"#),
        7.0
    );
    assert_eq!(
        get(r#"ringfs_chunkd_buffer_pool_free_buffers{core="1"}"#),
        3.0
    );
    assert_eq!(get(r#"ringfs_chunkd_handoffs_total{core="0"}"#), 0.0);
    assert_eq!(get(r#"ringfs_chunkd_handoffs_total{core="1"}"#), 2.0);
    assert_eq!(get("ringfs_chunkd_connections_open"), 2.0);
    assert_eq!(get("ringfs_chunkd_chunks"), 12.0);
    assert_eq!(get("ringfs_chunkd_stored_bytes"), 3.0 * (1u64 << 30) as f64);
    assert_eq!(get("ringfs_chunkd_corrupt_chunks"), 1.0);
    assert_eq!(get("ringfs_chunkd_highest_epoch"), 9.0);
    assert_eq!(get("ringfs_chunkd_scrub_verified_bytes_total"), 4096.0);
    assert_eq!(
        get("ringfs_chunkd_scrub_unverified_beyond_period_bytes"),
        123.0
    );
    assert_eq!(get("ringfs_chunkd_scrub_verified_this_period_bytes"), 456.0);
    assert_eq!(get("ringfs_chunkd_scrub_coverage_ratio"), 0.75);
    assert_eq!(get("ringfs_chunkd_recovery_recomputed_blocks_total"), 2.0);

    // HELP and TYPE once per family, TYPE histogram for latency.
    assert!(body.contains("# TYPE ringfs_chunkd_op_latency_seconds histogram\n"));
    assert!(body.contains("# TYPE ringfs_chunkd_ops_total counter\n"));
    assert_eq!(body.matches("# HELP ringfs_chunkd_ops_total ").count(), 1);

    // The content type Prometheus expects, and HEAD sends no body.
    let head = raw(server.local_addr(), b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap();
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
    assert!(head.contains("Connection: close\r\n"));
    assert!(head.ends_with("\r\n\r\n"), "HEAD response has a body");
    server.shutdown();
}

#[test]
fn status_is_json_and_routing_ignores_query() {
    let metrics = Arc::new(Metrics::new(2));
    metrics
        .core(0)
        .op_done(Op::Write, Duration::from_millis(2), true);
    metrics
        .core(1)
        .op_done(Op::Write, Duration::from_millis(2), false);
    metrics.core(1).bytes_written(10);
    let server = start_server(metrics);
    let addr = server.local_addr();

    let (status, body) = http::get(addr, "/status?verbose=1", T).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["role"], "chunkd");
    assert_eq!(v["metrics"]["cores"], 2);
    assert_eq!(v["metrics"]["ops"]["write"]["ok"], 1);
    assert_eq!(v["metrics"]["ops"]["write"]["error"], 1);
    assert_eq!(v["metrics"]["written_bytes_total"], 10);

    assert_eq!(http::get(addr, "/nope", T).unwrap().0, 404);
    assert_eq!(http::get(addr, "/metrics/", T).unwrap().0, 404);
    assert_eq!(http::get(addr, "/metrics?a=b", T).unwrap().0, 200);
    // A panicking handler is a 500, and the server lives on.
    assert_eq!(http::get(addr, "/panic", T).unwrap().0, 500);
    assert_eq!(http::get(addr, "/metrics", T).unwrap().0, 200);
    assert!(http::get(addr, "no-slash", T).is_err());
    server.shutdown();
}

#[test]
fn other_methods_are_405() {
    let server = start_server(Arc::new(Metrics::new(1)));
    let addr = server.local_addr();
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let req = format!("{method} /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        let resp = raw(addr, req.as_bytes()).unwrap();
        assert_eq!(status_of(&resp), Some(405), "{method}");
        assert!(String::from_utf8_lossy(&resp).contains("Allow: GET, HEAD\r\n"));
    }
    server.shutdown();
}

#[test]
fn garbage_and_oversized_requests_fail_and_the_server_lives_on() {
    let server = start_server(Arc::new(Metrics::new(1)));
    let addr = server.local_addr();

    let mut oversized = b"GET /metrics HTTP/1.1\r\nX-Fill: ".to_vec();
    oversized.resize(64 * 1024, b'a');
    let mut long_line = b"GET /".to_vec();
    long_line.resize(20 * 1024, b'x');
    long_line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "non-UTF-8",
            b"\xff\xfe\x00\x01 /\x80 HTTP/1.1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "binary noise",
            (0..=255u8).cycle().take(3000).chain(*b"\r\n\r\n").collect(),
            400,
        ),
        ("no request line", b"\r\n\r\n".to_vec(), 400),
        ("not HTTP", b"HELLO\n\n".to_vec(), 400),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            505,
        ),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nbad\r\n\r\n".to_vec(),
            400,
        ),
        ("oversized head", oversized, 431),
        ("huge request line", long_line, 431),
    ];
    for (name, request, want) in cases {
        // Either the status, or the server closed/reset before answering:
        // both are acceptable refusals; a 200 or a hang is not.
        match raw(addr, &request) {
            Ok(resp) if resp.is_empty() => {}
            Ok(resp) => assert_eq!(status_of(&resp), Some(want), "{name}"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{name}: {e}"
            ),
        }
        assert_eq!(
            http::get(addr, "/metrics", T).unwrap().0,
            200,
            "after {name}"
        );
    }

    // Head cut short: the client half-closes without the blank line.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    assert_eq!(status_of(&resp), Some(400));

    // Connecting and leaving silently ends the connection without a reply.
    drop(TcpStream::connect(addr).unwrap());
    assert_eq!(http::get(addr, "/metrics", T).unwrap().0, 200);
    server.shutdown();
}

#[test]
fn a_slow_client_is_cut_off_at_the_deadline() {
    let server = start_server(Arc::new(Metrics::new(1)));
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let start = Instant::now();
    // Trickle bytes, never finishing the head.
    for b in b"GET /metrics HTTP/1.1\r\nX: " {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(150));
        if start.elapsed() > Duration::from_millis(2500) {
            break;
        }
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(resp.is_empty() || status_of(&resp) == Some(408), "{resp:?}");
    server.shutdown();
}

#[test]
fn connections_beyond_the_limit_get_503_then_service_resumes() {
    let server = start_server(Arc::new(Metrics::new(1)));
    let addr = server.local_addr();
    // Idle connections hold every connection thread (up to IO_TIMEOUT).
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // The accept thread takes connections in order, so by the time it
    // accepts this one all idle ones hold a slot.
    let (status, _) = http::get(addr, "/metrics", T).unwrap();
    assert_eq!(status, 503);
    drop(idle);
    let deadline = Instant::now() + T;
    loop {
        let (status, _) = http::get(addr, "/metrics", T).unwrap();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after the idle ones left"
        );
        thread::sleep(Duration::from_millis(20));
    }
    server.shutdown();
}

#[test]
fn shutdown_is_prompt_and_closes_the_port() {
    let server = start_server(Arc::new(Metrics::new(1)));
    let addr = server.local_addr();
    assert_eq!(http::get(addr, "/metrics", T).unwrap().0, 200);
    // A connection being served does not hold up shutdown.
    let _idle = TcpStream::connect(addr).unwrap();
    thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    server.shutdown();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(http::get(addr, "/metrics", Duration::from_secs(1)).is_err());

    // Dropping without shutdown() stops it too.
    let dropped = start_server(Arc::new(Metrics::new(1)));
    let addr = dropped.local_addr();
    drop(dropped);
    assert!(http::get(addr, "/metrics", Duration::from_secs(1)).is_err());
}
