//! A master in this process, fed frames no honest peer sends: kinds its
//! port does not take, metas whose offsets share one table or string many
//! times over, heartbeats for another node. Each is answered with a typed
//! error, quickly, and the master goes on serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use masterd::conn;
use masterd::node::Master;
use ringfs_wire::auth::{ClusterKey, Identity};
use ringfs_wire::config::Config;
use ringfs_wire::frame::{FrameLimits, encode_frame};
use ringfs_wire::message::Encoder;
use ringfs_wire::msg::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const CLUSTER: &str = "hostile-frames";
/// Every wait of these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

struct Running {
    _dir: tempfile::TempDir,
    key: ClusterKey,
    addr: String,
    _master: Arc<Master>,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate().unwrap();
    let key_path = dir.path().join("cluster.key");
    std::fs::write(&key_path, key.to_hex_line()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config_path = dir.path().join("ringfs.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"cluster_id = "{CLUSTER}"
key_file = "cluster.key"
chunk_size_bytes = 67108864
default_replication = 1

[[masters]]
id = 1
client_addr = "{client}"
peer_addr = "{peer}"
http_addr = "{http}"
role = "voter"
"#,
            client = free_addr(),
            peer = free_addr(),
            http = free_addr(),
        ),
    )
    .unwrap();
    let config = Arc::new(Config::load(&config_path).unwrap());
    let master = Master::start(config, 1, &dir.path().join("data"))
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(masterd::server::accept_loop(master.clone(), listener));
    let deadline = Instant::now() + WAIT;
    while !master.is_leader() {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        _dir: dir,
        key,
        addr,
        _master: master,
    }
}

async fn connect(m: &Running, kind: PeerKind, node_id: u64) -> TcpStream {
    let mut stream = TcpStream::connect(&m.addr).await.unwrap();
    conn::initiate_handshake(&mut stream, &m.key, CLUSTER, Identity { kind, node_id })
        .await
        .unwrap();
    stream
}

/// Sends `meta` as a frame of `kind` and returns the reply's body.
async fn exchange_raw(stream: &mut TcpStream, kind: MessageKind, id: u64, meta: &[u8]) -> Body {
    let mut out = Vec::new();
    encode_frame(&mut out, kind, id, meta, &[], &FrameLimits::CONTROL).unwrap();
    stream.write_all(&out).await.unwrap();
    let frame = tokio::time::timeout(WAIT, conn::read_frame(stream, &FrameLimits::CONTROL))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(frame.header.request_id, id);
    Body::try_from(frame.body().unwrap()).unwrap()
}

async fn exchange(stream: &mut TcpStream, id: u64, body: &Body) -> Body {
    let mut encoder = Encoder::new();
    let (kind, meta) = encoder.meta(body);
    let meta = meta.to_vec();
    exchange_raw(stream, kind, id, &meta).await
}

fn code_of(reply: &Body) -> ErrorCode {
    match reply {
        Body::ErrorReply(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A message whose `slots` vector entries all reach one table holding a
/// string of `string_bytes`: `build` makes the root body from the builder,
/// the shared string and the slot count.
fn shared_meta(
    string_bytes: usize,
    slots: usize,
    build: impl FnOnce(&mut planus::Builder, planus::Offset<str>, usize) -> planus::Offset<Message>,
) -> Vec<u8> {
    let mut b = planus::Builder::new();
    let s = b.create_string("x".repeat(string_bytes).as_str());
    let message = build(&mut b, s, slots);
    b.finish(message, None).to_vec()
}

/// A ListDirReply of 100,000 slots naming one 1 MiB entry: 100 GB owned.
fn hostile_listing() -> Vec<u8> {
    shared_meta(1 << 20, 100_000, |b, name, slots| {
        let entry = DirEntry::create(b, name, None::<planus::Offset<Attr>>);
        let entries = b.create_vector(vec![entry; slots]);
        let reply = ListDirReply::create(b, entries, false, None::<ReadStamp>);
        let union = Body::create_list_dir_reply(b, reply);
        Message::create(b, union)
    })
}

/// A Heartbeat of 100,000 data dirs that are one dir with a 1 MiB path.
fn hostile_heartbeat(node_id: u64) -> Vec<u8> {
    shared_meta(1 << 20, 100_000, |b, path, slots| {
        let dir = DataDir::create(b, 1, path, 0, 0, 0, true);
        let dirs = b.create_vector(vec![dir; slots]);
        let heartbeat = Heartbeat::create(
            b,
            node_id,
            0,
            0,
            0,
            0,
            dirs,
            None::<planus::Offset<[ChunkReport]>>,
            None::<planus::Offset<[u64]>>,
            None::<planus::Offset<[ChunkReport]>>,
            None::<planus::Offset<[planus::Offset<CommandResult>]>>,
            None::<planus::Offset<ScrubProgress>>,
            None::<planus::Offset<[planus::Offset<LeaseHeld>]>>,
        );
        let union = Body::create_heartbeat(b, heartbeat);
        Message::create(b, union)
    })
}

fn stat_root() -> Body {
    Body::Stat(Box::new(Stat {
        path: Some("/".into()),
        min_applied_index: 0,
    }))
}

fn ping() -> Body {
    Body::Ping(Box::new(Ping { sent_at_us: 9 }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_are_refused_and_the_master_serves_on() {
    let m = start().await;

    // The client port: a reply kind is refused on its header, unread.
    let mut client = connect(&m, PeerKind::Client, 0).await;
    let meta = hostile_listing();
    assert!(meta.len() < 2 << 20);
    let started = Instant::now();
    let reply = exchange_raw(&mut client, MessageKind::ListDirReply, 3, &meta).await;
    assert_eq!(code_of(&reply), ErrorCode::BadRequest, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let reply = exchange(&mut client, 4, &stat_root()).await;
    assert!(matches!(reply, Body::AttrReply(_)), "{reply:?}");

    // The chunkserver port takes Heartbeats: a shared one is refused
    // before its copy.
    let mut cs = connect(&m, PeerKind::Chunkserver, 0).await;
    let started = Instant::now();
    let reply = exchange_raw(&mut cs, MessageKind::Heartbeat, 3, &hostile_heartbeat(0)).await;
    assert_eq!(code_of(&reply), ErrorCode::BadFrame, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // ...and so is a kind it does not take.
    let reply = exchange_raw(&mut cs, MessageKind::ListDirReply, 4, &meta).await;
    assert_eq!(code_of(&reply), ErrorCode::BadRequest, "{reply:?}");
    let reply = exchange(&mut cs, 5, &ping()).await;
    assert!(matches!(reply, Body::Pong(_)), "{reply:?}");

    // The master is still up for everyone.
    let mut again = connect(&m, PeerKind::Client, 0).await;
    let reply = exchange(&mut again, 3, &stat_root()).await;
    assert!(matches!(reply, Body::AttrReply(_)), "{reply:?}");
}

fn heartbeat(node_id: u64) -> Body {
    Body::Heartbeat(Box::new(Heartbeat {
        node_id,
        ..Default::default()
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_speak_only_for_their_connections_node() {
    let m = start().await;
    // A fresh chunkserver: authenticated as 0, registered here, given an id.
    let mut cs = connect(&m, PeerKind::Chunkserver, 0).await;
    let reply = exchange(&mut cs, 3, &heartbeat(1)).await;
    assert_eq!(code_of(&reply), ErrorCode::BadRequest, "before registering");
    let register = Body::Register(Box::new(Register {
        node_id: 0,
        listen_addr: Some("127.0.0.1:1".into()),
        rack: Some("r1".into()),
        dirs: Some(vec![DataDir {
            dir_id: 77,
            path: Some("/d".into()),
            capacity_bytes: 1 << 30,
            healthy: true,
            ..Default::default()
        }]),
        report_complete: true,
        ..Default::default()
    }));
    let node = match exchange(&mut cs, 4, &register).await {
        Body::RegisterReply(r) => r.node_id,
        other => panic!("{other:?}"),
    };
    assert_ne!(node, 0);
    let reply = exchange(&mut cs, 5, &heartbeat(node + 1)).await;
    assert_eq!(code_of(&reply), ErrorCode::BadRequest, "{reply:?}");
    let reply = exchange(&mut cs, 6, &heartbeat(node)).await;
    assert!(matches!(reply, Body::HeartbeatReply(_)), "{reply:?}");

    // A connection authenticated as that node cannot speak for another,
    // nor register as one.
    let mut other = connect(&m, PeerKind::Chunkserver, node).await;
    let reply = exchange(&mut other, 3, &heartbeat(node + 7)).await;
    assert_eq!(code_of(&reply), ErrorCode::BadRequest, "{reply:?}");
    let reply = exchange(&mut other, 4, &heartbeat(node)).await;
    assert!(matches!(reply, Body::HeartbeatReply(_)), "{reply:?}");
}
