//! ringfs benchmarks.
//!
//! - `cargo bench -p ringfs-bench --bench wire`: criterion micro-benchmarks of
//!   the frame codec and CRC32C block math (results in docs/BENCHMARKS.md).
//!
//! The benchmark binary: `ringfs-bench chunkd|meta|cluster` (failover
//! comes with the HA issue).

/// `ringfs-bench chunkd`: one chunkd against fio (issue 3).
pub mod chunkd;
/// `ringfs-bench cluster`: a `ringfs local` cluster through the client
/// library against the MooseFS peer and raw fio (issue 5).
pub mod cluster;
/// `ringfs-bench failover`: master failover windows (issue 6).
pub mod failover;
/// `ringfs-bench meta`: one masterd's namespace throughput, restart time
/// and memory per file (NNThroughputBenchmark-style).
pub mod meta;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use ringfs_wire::msg::{Body, ReadChunk, ReadChunkReply};

/// Timeout of one `/metrics` or `/status` scrape.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP response read.
const HTTP_BYTES_MAX: u64 = 16 << 20;

/// The control message of the micro-benchmarks: a typical read request.
pub fn typical_control_message() -> Body {
    Body::ReadChunk(Box::new(ReadChunk {
        handle: 0x1234_5678,
        min_version: 17,
        offset: 3 << 20,
        length: 1 << 20,
    }))
}

/// The meta of a 1 MiB read reply: 16 block checksums.
pub fn data_reply_meta(block_crcs: Vec<u32>) -> Body {
    Body::ReadChunkReply(Box::new(ReadChunkReply {
        handle: 0x1234_5678,
        version: 17,
        chunk_length_bytes: 64 << 20,
        offset: 3 << 20,
        block_crcs: Some(block_crcs),
    }))
}

/// Deterministic, incompressible-looking bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Waits for a child process (ours) for at most `limit`; past it the child
/// is killed by PID and reaped, and `Ok(None)` returned.
pub fn wait_bounded(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A latency histogram in nanoseconds: 1 ns .. 10 min, 3 significant digits.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// Median and range of a metric over rounds (non-finite values left out):
/// what the benchmark reports, since the shared machines are noisy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// A GET on a daemon's HTTP address; the body of a 200 response, else
/// an error naming the status. Bounded in time and size.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = TcpStream::connect_timeout(&sock, HTTP_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(HTTP_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.take(HTTP_BYTES_MAX)
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("no end of the response head")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET {path}: {status}"));
    }
    Ok(body.to_owned())
}
