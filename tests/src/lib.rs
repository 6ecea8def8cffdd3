//! ringfs cluster harness: real `masterd` and `chunkd` processes on
//! 127.0.0.1, a temp dir holding the config, key and data, processes killed
//! by PID (only the ones started here), and a blocking client for the
//! master's API. Every wait is bounded.
//!
//! The daemons are the workspace's own binaries, found next to the test
//! executable (`cargo test --workspace` builds them first).

pub mod proxy;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use ringfs_client::conn::{Conn, Response};
use ringfs_wire::auth::ClusterKey;
use ringfs_wire::msg::*;

pub const CLUSTER: &str = "test-cluster";
/// Bound on any single wait in the harness.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a workspace binary built alongside the tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo test --workspace`",
        path.display()
    );
    path
}

/// A free loopback port (bound and released: the usual small race with other
/// processes). The kernel may hand the same ephemeral port to two binds in a
/// row once the first is released, which made one cluster's http and client
/// addresses collide; so a port is never handed out twice by this process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    const ATTEMPTS_MAX: usize = 256;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..ATTEMPTS_MAX {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .expect("local_addr")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("no fresh loopback port in {ATTEMPTS_MAX} attempts");
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Cluster knobs the tests change.
#[derive(Clone, Debug)]
pub struct Options {
    pub chunk_size_bytes: u64,
    pub default_replication: u8,
    pub lease_duration_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub chunkserver_timeout_ms: u64,
    pub trash_retention_secs: u64,
    pub checkpoint_every_records: u64,
    pub checkpoint_every_ops: u64,
    pub log_kept_behind_checkpoint_records: u64,
    /// `[chunkserver] data_dir_reserved_bytes` of every chunkserver.
    pub data_dir_reserved_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_size_bytes: 1 << 20,
            default_replication: 3,
            lease_duration_ms: 60_000,
            heartbeat_interval_ms: 200,
            chunkserver_timeout_ms: 3_000,
            trash_retention_secs: 3_600,
            checkpoint_every_records: 1_000_000,
            checkpoint_every_ops: 1_000_000,
            log_kept_behind_checkpoint_records: 10_000,
            data_dir_reserved_bytes: 0,
        }
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub key: ClusterKey,
    pub master_addr: String,
    pub master_http: String,
}

impl Env {
    pub fn new(o: &Options) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("ringfs-test-")
            .tempdir()
            .unwrap();
        let key = ClusterKey::generate().unwrap();
        let key_path = dir.path().join("cluster.key");
        std::fs::write(&key_path, key.to_hex_line()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let master_addr = format!("127.0.0.1:{}", free_port());
        let master_http = format!("127.0.0.1:{}", free_port());
        let peer = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("ringfs.toml");
        std::fs::write(
            &config,
            format!(
                r#"cluster_id = "{CLUSTER}"
key_file = "cluster.key"
chunk_size_bytes = {chunk}
default_replication = {repl}

[[masters]]
id = 1
client_addr = "{master_addr}"
peer_addr = "{peer}"
http_addr = "{master_http}"
role = "voter"

[master]
lease_duration_ms = {lease}
heartbeat_interval_ms = {hb}
chunkserver_timeout_ms = {cst}
trash_retention_secs = {trash}
checkpoint_every_records = {ckpt}
checkpoint_every_ops = {ckpt_ops}
log_kept_behind_checkpoint_records = {kept}

[chunkserver]
buffer_pool_buffers_per_core = 24
buffer_bytes = 1048576
data_dir_reserved_bytes = {reserved}
"#,
                chunk = o.chunk_size_bytes,
                repl = o.default_replication,
                lease = o.lease_duration_ms,
                hb = o.heartbeat_interval_ms,
                cst = o.chunkserver_timeout_ms,
                trash = o.trash_retention_secs,
                ckpt = o.checkpoint_every_records,
                ckpt_ops = o.checkpoint_every_ops,
                kept = o.log_kept_behind_checkpoint_records,
                reserved = o.data_dir_reserved_bytes,
            ),
        )
        .unwrap();
        Env {
            dir,
            config,
            key,
            master_addr,
            master_http,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn client(&self) -> Client {
        Client::connect(self)
    }
}

/// A daemon process started by the harness.
pub struct Daemon {
    child: Option<Child>,
    pub ready_line: String,
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    ready_prefix: &'static str,
}

impl Daemon {
    fn spawn(
        program: PathBuf,
        args: Vec<String>,
        ready_prefix: &'static str,
        logdir: &Path,
    ) -> Daemon {
        let mut d = Daemon {
            child: None,
            ready_line: String::new(),
            log: logdir.join(format!("{ready_prefix}-{}.log", rand_u64())),
            program,
            args,
            ready_prefix,
        };
        d.start();
        d
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("RINGFS_LOG", "info,openraft=warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(TIMEOUT) {
            Ok(l) if l.starts_with(self.ready_prefix) => self.ready_line = l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not start: {other:?}\n--- log ---\n{}",
                    self.ready_prefix,
                    self.log_text()
                );
            }
        }
        self.child = Some(child);
    }

    pub fn field(&self, name: &str) -> String {
        self.ready_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL our own child, by PID.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and a bounded wait; the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
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

    /// Kills (if running) and starts again with the same arguments; the
    /// port may linger briefly, so retry, bounded.
    pub fn restart(&mut self) {
        self.kill9();
        let started = Instant::now();
        loop {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.start()));
            match r {
                Ok(()) => return,
                Err(e) if started.elapsed() > TIMEOUT => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn start_master(env: &Env) -> Daemon {
    let args = vec![
        "--config".into(),
        env.config.display().to_string(),
        "--id".into(),
        "1".into(),
        "--data".into(),
        env.path("master1").display().to_string(),
        "--threads".into(),
        "2".into(),
    ];
    Daemon::spawn(binary("masterd"), args, "masterd ready", env.dir.path())
}

/// A chunkserver on a fixed port (so restarts keep the address), one data dir.
pub fn start_chunkd(env: &Env, name: &str, rack: &str) -> Daemon {
    start_chunkd_with(env, name, rack, &ChunkdPlumbing::default())
}

/// How a chunkserver is wired, where a test puts a [`proxy::Proxy`] in a path.
#[derive(Clone, Debug, Default)]
pub struct ChunkdPlumbing {
    /// Config to read instead of the cluster's (e.g. one that reaches the
    /// master through a proxy).
    pub config: Option<PathBuf>,
    /// Data listener (default: a free port).
    pub listen: Option<String>,
    /// Address others are told to reach it by (e.g. a proxy to `listen`).
    pub advertise: Option<String>,
}

/// Like [`start_chunkd`], wired as `plumbing` says.
pub fn start_chunkd_with(env: &Env, name: &str, rack: &str, plumbing: &ChunkdPlumbing) -> Daemon {
    let listen = plumbing
        .listen
        .clone()
        .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
    let config = plumbing.config.as_ref().unwrap_or(&env.config);
    let mut args = vec![
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        listen,
        "--data".into(),
        env.path(name).display().to_string(),
        "--rack".into(),
        rack.into(),
        "--cores".into(),
        "1".into(),
    ];
    if let Some(a) = &plumbing.advertise {
        args.extend(["--advertise".into(), a.clone()]);
    }
    Daemon::spawn(binary("chunkd"), args, "chunkd ready", env.dir.path())
}

/// The body of `GET path` from a daemon's HTTP endpoint, or `None` when it
/// does not answer within a second.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// The value of an unlabelled counter or gauge in a daemon's `/metrics`.
pub fn metric(http_addr: &str, name: &str) -> u64 {
    let text = http_get(http_addr, "/metrics").expect("/metrics answers");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics of {http_addr}"))
}

/// Polls `f` until it returns Some, bounded by `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blocking client of the master API, with its own idempotency id.
pub struct Client {
    pub conn: Conn,
    pub client_id: u64,
    seq: u64,
}

pub type Reply = Result<Body, Box<ErrorReply>>;

impl Client {
    pub fn connect(env: &Env) -> Client {
        let conn = wait_for(TIMEOUT, "master to accept", || {
            Conn::connect(
                &env.master_addr,
                &env.key,
                CLUSTER,
                PeerKind::Client,
                TIMEOUT,
            )
            .ok()
        });
        Client {
            conn,
            client_id: rand_u64() | 1,
            seq: 0,
        }
    }

    pub fn next_req(&mut self) -> RequestId {
        self.seq += 1;
        RequestId {
            client_id: self.client_id,
            seq: self.seq,
        }
    }

    pub fn call(&mut self, body: Body) -> Reply {
        let r: Response = self.conn.call(&body, &[]).expect("master call");
        match r.body {
            Body::ErrorReply(e) => Err(e),
            b => Ok(b),
        }
    }

    pub fn mkdir(&mut self, path: &str, parents: bool) -> Reply {
        let req = Some(self.next_req());
        self.call(Body::Mkdir(Box::new(Mkdir {
            req,
            path: Some(path.into()),
            parents,
            mode: 0o755,
            owner: Some("test".into()),
        })))
    }

    pub fn create(&mut self, path: &str) -> Reply {
        let req = Some(self.next_req());
        self.create_with(path, req, true)
    }

    pub fn create_with(&mut self, path: &str, req: Option<RequestId>, exclusive: bool) -> Reply {
        self.call(Body::Create(Box::new(Create {
            req,
            path: Some(path.into()),
            replication: 0,
            exclusive,
            mode: 0o644,
            owner: Some("test".into()),
        })))
    }

    pub fn stat(&mut self, path: &str) -> Result<Attr, Box<ErrorReply>> {
        match self.call(Body::Stat(Box::new(Stat {
            path: Some(path.into()),
            min_applied_index: 0,
        })))? {
            Body::AttrReply(a) => Ok(*a.attr.expect("attr")),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn inode(&mut self, path: &str) -> u64 {
        self.stat(path)
            .unwrap_or_else(|e| panic!("stat {path}: {e:?}"))
            .inode
    }

    pub fn rename(&mut self, src: &str, dst: &str, replace: bool) -> Reply {
        let req = Some(self.next_req());
        self.call(Body::Rename(Box::new(Rename {
            req,
            src: Some(src.into()),
            dst: Some(dst.into()),
            replace,
        })))
    }

    /// Deletes (to the trash); returns the trash id.
    pub fn delete(&mut self, path: &str, recursive: bool) -> Result<u64, Box<ErrorReply>> {
        let req = Some(self.next_req());
        match self.call(Body::Delete(Box::new(Delete {
            req,
            path: Some(path.into()),
            recursive,
        })))? {
            Body::DeleteReply(d) => Ok(d.trash_id),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn restore(&mut self, trash_id: u64, dst: &str) -> Reply {
        let req = Some(self.next_req());
        self.call(Body::RestoreFromTrash(Box::new(RestoreFromTrash {
            req,
            trash_id,
            dst_path: Some(dst.into()),
        })))
    }

    pub fn purge(&mut self, trash_id: u64) -> Reply {
        let req = Some(self.next_req());
        self.call(Body::Purge(Box::new(Purge { req, trash_id })))
    }

    pub fn list(&mut self, path: &str) -> Result<Vec<String>, Box<ErrorReply>> {
        let mut names = Vec::new();
        let mut after = String::new();
        for _ in 0..10_000 {
            let body = Body::ListDir(Box::new(ListDir {
                path: Some(path.into()),
                start_after: Some(after.clone()),
                limit: 1000,
                min_applied_index: 0,
            }));
            match self.call(body)? {
                Body::ListDirReply(r) => {
                    for e in r.entries.unwrap_or_default() {
                        after = e.name.clone().unwrap_or_default();
                        names.push(after.clone());
                    }
                    if !r.more {
                        return Ok(names);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("listing {path} did not end");
    }

    pub fn set_replication(&mut self, path: &str, replication: u8, recursive: bool) -> Reply {
        let req = Some(self.next_req());
        self.call(Body::SetReplication(Box::new(SetReplication {
            req,
            path: Some(path.into()),
            replication,
            recursive,
        })))
    }

    pub fn allocate(&mut self, inode: u64, index: u64) -> Result<ChunkLocation, Box<ErrorReply>> {
        let req = Some(self.next_req());
        match self.call(Body::AllocateChunk(Box::new(AllocateChunk {
            req,
            inode,
            index,
        })))? {
            Body::ChunkLocationReply(r) => Ok(*r.location.expect("location")),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn get_lease(&mut self, handle: u64) -> Result<ChunkLocation, Box<ErrorReply>> {
        let req = Some(self.next_req());
        match self.call(Body::GetLease(Box::new(GetLease { req, handle })))? {
            Body::ChunkLocationReply(r) => Ok(*r.location.expect("location")),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn chunks(&mut self, inode: u64) -> Result<Vec<ChunkLocation>, Box<ErrorReply>> {
        let body = Body::GetChunks(Box::new(GetChunks {
            inode,
            first_index: 0,
            count: 10_000,
            min_applied_index: 0,
        }));
        match self.call(body)? {
            Body::GetChunksReply(r) => Ok(r.chunks.unwrap_or_default()),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn complete(&mut self, inode: u64, length_bytes: u64) -> Reply {
        let req = Some(self.next_req());
        self.call(Body::CompleteFile(Box::new(CompleteFile {
            req,
            inode,
            length_bytes,
        })))
    }

    pub fn status(&mut self) -> AdminStatusReply {
        match self
            .call(Body::AdminStatus(Box::new(AdminStatus {})))
            .expect("admin status")
        {
            Body::AdminStatusReply(r) => *r,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The error code of a reply, for assertions.
pub fn code(r: &Reply) -> Option<ErrorCode> {
    r.as_ref().err().map(|e| e.code)
}

/// The async client library on this cluster, with `opts`.
pub fn fs_client(env: &Env, opts: ringfs_client::ClientOptions) -> ringfs_client::Client {
    let config = ringfs_wire::config::Config::load(&env.config).expect("config");
    ringfs_client::Client::new(&config, opts).expect("client")
}

/// A runtime for driving the async client from a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Deterministic bytes that differ at every offset and between seeds.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 of `data`, hex.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex_lower(&sha2::Sha256::digest(data))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
