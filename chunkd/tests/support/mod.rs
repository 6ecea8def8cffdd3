//! Real chunkd processes on loopback for the integration tests: a temp
//! dir with a config and key, processes started from the built binary and
//! killed by PID, and a blocking client speaking the wire protocol.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ringfs_client::conn::{Conn, Response};
use ringfs_wire::auth::ClusterKey;
use ringfs_wire::checksum::{BLOCK_BYTES, block_checksums, crc32c};
use ringfs_wire::msg::*;

pub const CLUSTER: &str = "test-cluster";
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub key: ClusterKey,
    pub chunk_size_bytes: u64,
}

impl Env {
    pub fn new(chunk_size_bytes: u64) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("chunkd-test-")
            .tempdir()
            .unwrap();
        let key = ClusterKey::generate().unwrap();
        let key_path = dir.path().join("cluster.key");
        std::fs::write(&key_path, key.to_hex_line()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = dir.path().join("ringfs.toml");
        std::fs::write(
            &config,
            format!(
                r#"cluster_id = "{CLUSTER}"
key_file = "cluster.key"
chunk_size_bytes = {chunk_size_bytes}

[[masters]]
id = 1
client_addr = "127.0.0.1:1"
peer_addr = "127.0.0.1:2"
http_addr = "127.0.0.1:3"
role = "voter"

[chunkserver]
buffer_pool_buffers_per_core = 24
buffer_bytes = 1048576
"#
            ),
        )
        .unwrap();
        Env {
            dir,
            config,
            key,
            chunk_size_bytes,
        }
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn start(&self, data: &[PathBuf], extra: &[&str]) -> Chunkd {
        Chunkd::start(self, data, extra)
    }

    /// Starts chunkd with both its soft and hard open-files limits at
    /// `open_files` (so it cannot raise them); restarts keep the limit.
    pub fn start_limited(&self, data: &[PathBuf], extra: &[&str], open_files: u32) -> Chunkd {
        Chunkd::start_with_limit(self, data, extra, Some(open_files))
    }

    /// Adds `line` to the config's `[chunkserver]` table (the file's last).
    pub fn add_chunkserver_tuning(&self, line: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.trim_end().ends_with("buffer_bytes = 1048576"));
        text.push_str(line);
        text.push('\n');
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn conn(&self, addr: &str, kind: PeerKind) -> Conn {
        Conn::connect(addr, &self.key, CLUSTER, kind, TIMEOUT).unwrap()
    }
}

pub struct Chunkd {
    child: Option<Child>,
    pub addr: String,
    pub http: String,
    pub data: Vec<PathBuf>,
    pub ready_line: String,
    pub stderr_path: PathBuf,
    config: PathBuf,
    extra: Vec<String>,
    open_files_limit: Option<u32>,
}

impl Chunkd {
    pub fn start(env: &Env, data: &[PathBuf], extra: &[&str]) -> Chunkd {
        Self::start_with_limit(env, data, extra, None)
    }

    fn start_with_limit(
        env: &Env,
        data: &[PathBuf],
        extra: &[&str],
        open_files_limit: Option<u32>,
    ) -> Chunkd {
        Self::start_at(
            env.config.clone(),
            data,
            extra,
            "127.0.0.1:0",
            env.dir.path(),
            open_files_limit,
        )
    }

    fn start_at(
        config: PathBuf,
        data: &[PathBuf],
        extra: &[&str],
        listen: &str,
        logdir: &Path,
        open_files_limit: Option<u32>,
    ) -> Chunkd {
        let dirs: Vec<String> = data.iter().map(|d| d.display().to_string()).collect();
        let stderr_path = logdir.join(format!("chunkd-{}-{}.log", std::process::id(), rand_u64()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut command = match open_files_limit {
            None => Command::new(env!("CARGO_BIN_EXE_chunkd")),
            Some(n) => {
                // The shell sets the limit and becomes chunkd (same PID).
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_chunkd"));
                c
            }
        };
        let mut child = command
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(listen)
            .arg("--data")
            .arg(dirs.join(","))
            .arg("--http")
            .arg("127.0.0.1:0")
            .args(extra)
            .env("RINGFS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn chunkd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(TIMEOUT) {
            Ok(l) if l.starts_with("chunkd ready") => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("chunkd did not start: {other:?}\n--- stderr ---\n{log}");
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_default()
                .to_owned()
        };
        Chunkd {
            addr: field("listen"),
            http: field("http"),
            child: Some(child),
            data: data.to_vec(),
            ready_line: line.clone(),
            stderr_path,
            config,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            open_files_limit,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends signal `name` (e.g. "USR1") to the running process.
    pub fn signal(&self, name: &str) {
        let c = self.child.as_ref().expect("chunkd is running");
        send_signal(c.id(), name);
    }

    /// SIGKILL, by PID (our own child only).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and a bounded wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe_kill_term(c.id());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same address and dirs.
    pub fn restart(&mut self, env: &Env) {
        self.kill9();
        let extra: Vec<&str> = self.extra.iter().map(|s| s.as_str()).collect();
        let started = Instant::now();
        // The port may linger briefly; retry on the same address, bounded.
        loop {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Chunkd::start_at(
                    self.config.clone(),
                    &self.data,
                    &extra,
                    &self.addr,
                    env.dir.path(),
                    self.open_files_limit,
                )
            }));
            match r {
                Ok(c) => {
                    *self = c;
                    return;
                }
                Err(e) if started.elapsed() > TIMEOUT => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Connects as `kind`; on failure shows this chunkd's log.
    pub fn conn(&self, env: &Env, kind: PeerKind) -> Conn {
        // Right after a restart on the same port, the killed process's
        // listener can outlive it briefly (io_uring tears its ring down
        // asynchronously) and reset a connection the kernel routed to it.
        // Clients retry such resets; so does this, a bounded number of times.
        let mut result = Conn::connect(&self.addr, &env.key, CLUSTER, kind, TIMEOUT);
        for _ in 0..50 {
            match &result {
                Err(ringfs_client::conn::ConnError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                    result = Conn::connect(&self.addr, &env.key, CLUSTER, kind, TIMEOUT);
                }
                _ => break,
            }
        }
        match result {
            Ok(c) => c,
            Err(e) => panic!(
                "connecting to {}: {e}\n--- chunkd stderr ---\n{}",
                self.addr,
                self.stderr()
            ),
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        chunkd::http::get(self.http.parse().unwrap(), path, TIMEOUT).unwrap()
    }

    /// A gauge or counter of `/metrics` (no labels).
    pub fn metric(&self, name: &str) -> u64 {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200);
        let series = format!("ringfs_chunkd_{name} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Polls `cond` every 50 ms until it holds, for at most [`TIMEOUT`].
    pub fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- chunkd stderr ---\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A `key=N` field of the ready line.
    pub fn ready_field(&self, key: &str) -> u64 {
        let prefix = format!("{key}=");
        self.ready_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {key}= in {}", self.ready_line))
            .parse()
            .unwrap()
    }
}

impl Drop for Chunkd {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_kill_term(pid: u32) {
    send_signal(pid, "TERM");
}

/// `kill -NAME PID`, to our own child only.
fn send_signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Deterministic test bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn expect_ok(r: &Response) {
    if let Some(e) = r.error() {
        panic!("expected success, got {:?}: {:?}", e.code, e.message);
    }
}

pub fn create(conn: &mut Conn, epoch: u64, handle: u64, version: u64) -> Response {
    conn.call(
        &Body::CreateChunk(Box::new(CreateChunk {
            epoch,
            handle,
            version,
        })),
        &[],
    )
    .unwrap()
}

pub fn lease(
    conn: &mut Conn,
    epoch: u64,
    handle: u64,
    version: u64,
    duration_ms: u32,
    secondaries: Vec<Replica>,
) -> Response {
    conn.call(
        &Body::GrantLease(Box::new(GrantLease {
            epoch,
            handle,
            version,
            duration_ms,
            secondaries: Some(secondaries),
        })),
        &[],
    )
    .unwrap()
}

pub fn write(
    conn: &mut Conn,
    epoch: u64,
    handle: u64,
    version: u64,
    offset: u64,
    data: &[u8],
) -> Response {
    conn.call(
        &Body::WriteChunk(Box::new(WriteChunk {
            req: None,
            epoch,
            handle,
            version,
            offset,
            length: data.len() as u32,
            inline: true,
            data_id: None,
            block_crcs: Some(block_checksums(data)),
            secondaries: None,
        })),
        data,
    )
    .unwrap()
}

pub fn append(conn: &mut Conn, epoch: u64, handle: u64, version: u64, data: &[u8]) -> Response {
    conn.call(
        &Body::AppendChunk(Box::new(AppendChunk {
            req: None,
            epoch,
            handle,
            version,
            length: data.len() as u32,
            inline: true,
            data_id: None,
            block_crcs: Some(block_checksums(data)),
            secondaries: None,
        })),
        data,
    )
    .unwrap()
}

/// Reads `[offset, offset+len)`, checking the returned block CRCs end to
/// end, and returns exactly the requested bytes (clipped to the chunk).
pub fn read(conn: &mut Conn, handle: u64, offset: u64, len: u32) -> Result<Vec<u8>, ErrorReply> {
    let r = conn
        .call(
            &Body::ReadChunk(Box::new(ReadChunk {
                handle,
                min_version: 0,
                offset,
                length: len,
            })),
            &[],
        )
        .unwrap();
    match r.body {
        Body::ReadChunkReply(reply) => {
            let crcs = reply.block_crcs.clone().unwrap_or_default();
            assert_eq!(
                crcs.len(),
                r.data.len().div_ceil(BLOCK_BYTES),
                "one CRC per returned block"
            );
            for (i, (piece, crc)) in r.data.chunks(BLOCK_BYTES).zip(&crcs).enumerate() {
                assert_eq!(crc32c(piece), *crc, "returned block {i} fails its CRC");
            }
            assert_eq!(reply.offset % BLOCK_BYTES as u64, 0);
            let skip = (offset - reply.offset) as usize;
            let end = (offset + u64::from(len)).min(reply.chunk_length_bytes);
            let want = end.saturating_sub(offset) as usize;
            Ok(r.data[skip..skip + want].to_vec())
        }
        Body::ErrorReply(e) => Err(*e),
        other => panic!("unexpected reply {other:?}"),
    }
}

pub fn info(conn: &mut Conn, handle: u64) -> Response {
    conn.call(&Body::GetChunkInfo(Box::new(GetChunkInfo { handle })), &[])
        .unwrap()
}

pub fn bump(
    conn: &mut Conn,
    epoch: u64,
    handle: u64,
    old_version: u64,
    new_version: u64,
) -> Response {
    conn.call(
        &Body::BumpVersion(Box::new(BumpVersion {
            epoch,
            handle,
            old_version,
            new_version,
        })),
        &[],
    )
    .unwrap()
}

/// A created chunk with a lease, ready for writes from `client`.
pub fn primary_chunk(env: &Env, cs: &Chunkd, handle: u64) -> (Conn, Conn) {
    let mut master = cs.conn(env, PeerKind::Master);
    expect_ok(&create(&mut master, 1, handle, 1));
    expect_ok(&lease(&mut master, 1, handle, 1, 60_000, Vec::new()));
    let client = cs.conn(env, PeerKind::Client);
    (master, client)
}

pub fn replica_of(cs: &Chunkd, node_id: u64) -> Replica {
    Replica {
        node_id,
        addr: Some(cs.addr.clone()),
        rack: None,
    }
}
