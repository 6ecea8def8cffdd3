//! A replication chain of three real chunkd processes: the primary orders
//! mutations and forwards them; every replica ends byte-identical; a dead
//! replica makes the write fail with an error that names it.

mod support;

use std::time::Duration;

use ringfs_wire::msg::{Body, ErrorCode, PeerKind};
use support::*;

const CHUNK: u64 = 4 << 20;

fn chain(env: &Env) -> Vec<Chunkd> {
    (0..3)
        .map(|i| env.start(&[env.data_dir(&format!("cs{i}"))], &["--cores", "2"]))
        .collect()
}

fn setup(env: &Env, nodes: &[Chunkd], handle: u64, lease_ms: u32) {
    for cs in nodes {
        let mut m = cs.conn(env, PeerKind::Master);
        expect_ok(&create(&mut m, 1, handle, 1));
    }
    let secondaries = vec![replica_of(&nodes[1], 12), replica_of(&nodes[2], 13)];
    let mut m = nodes[0].conn(env, PeerKind::Master);
    expect_ok(&lease(&mut m, 1, handle, 1, lease_ms, secondaries));
}

fn whole(env: &Env, cs: &Chunkd, handle: u64) -> Vec<u8> {
    let mut c = cs.conn(env, PeerKind::Client);
    read(&mut c, handle, 0, CHUNK as u32 - 128 * 1024).unwrap()
}

#[test]
fn concurrent_writes_and_appends_apply_in_the_same_order_on_every_replica() {
    let env = Env::new(CHUNK);
    let mut nodes = chain(&env);
    let handle = 0x60;
    setup(&env, &nodes, handle, 60_000);
    // Overlapping writes and appends from several clients at once.
    let mut threads = Vec::new();
    for t in 0..4u64 {
        let addr = nodes[0].addr.clone();
        let key = env.key.clone();
        threads.push(std::thread::spawn(move || {
            let mut c =
                ringfs_client::conn::Conn::connect(&addr, &key, CLUSTER, PeerKind::Client, TIMEOUT)
                    .unwrap();
            for i in 0..25u64 {
                let data = pattern(
                    t * 1000 + i,
                    1 + ((t * 7919 + i * 104_729) % 150_000) as usize,
                );
                let r = if i % 2 == 0 {
                    append(&mut c, 1, handle, 1, &data)
                } else {
                    // Overlapping overwrites near the start.
                    write(&mut c, 1, handle, 1, (i * 3001) % 200_000, &data)
                };
                expect_ok(&r);
            }
        }));
    }
    for t in threads {
        if t.join().is_err() {
            panic!(
                "a client failed\n--- primary ---\n{}\n--- secondary ---\n{}",
                nodes[0].stderr(),
                nodes[1].stderr()
            );
        }
    }
    let primary = whole(&env, &nodes[0], handle);
    assert!(primary.len() > 200_000);
    for cs in &nodes[1..] {
        let copy = whole(&env, cs, handle);
        assert_eq!(copy.len(), primary.len(), "replica length differs");
        assert!(
            copy == primary,
            "replica {} differs from the primary",
            cs.addr
        );
    }
    // Their logs, with records of concurrent mutations, replay to the same.
    for cs in nodes.iter_mut() {
        cs.restart(&env);
        assert!(cs.ready_line.contains("quarantined=0"), "{}", cs.ready_line);
    }
    for cs in &nodes {
        assert!(
            whole(&env, cs, handle) == primary,
            "replica {} differs after a restart",
            cs.addr
        );
    }
    // Each replica reports the same length and version.
    for cs in &nodes {
        let mut c = cs.conn(&env, PeerKind::Client);
        match info(&mut c, handle).body {
            Body::ChunkInfoReply(i) => {
                let r = i.report.unwrap();
                assert_eq!((r.version, r.length_bytes), (1, primary.len() as u64));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_dead_secondary_is_named_in_the_error() {
    let env = Env::new(CHUNK);
    let mut nodes = chain(&env);
    let handle = 0x61;
    setup(&env, &nodes, handle, 60_000);
    let mut client = nodes[0].conn(&env, PeerKind::Client);
    expect_ok(&write(&mut client, 1, handle, 1, 0, &pattern(1, 300_000)));
    let dead_addr = nodes[2].addr.clone();
    nodes[2].kill9();
    let r = write(&mut client, 1, handle, 1, 0, &pattern(2, 300_000));
    let e = r.error().expect("the write must fail").clone();
    assert_eq!(e.code, ErrorCode::ReplicaFailed, "{e:?}");
    assert_eq!(e.failed_replica, 13);
    assert_eq!(e.failed_replica_addr.as_deref(), Some(dead_addr.as_str()));
    // The surviving secondary got the mutation (GFS: the region is now
    // inconsistent until the client retries or the master re-replicates).
    let _ = Duration::from_secs(0);
}

#[test]
fn a_secondary_with_a_gap_in_the_order_refuses_after_a_bounded_wait() {
    let env = Env::new(CHUNK);
    let nodes = chain(&env);
    let handle = 0x62;
    for cs in &nodes[1..] {
        let mut m = cs.conn(&env, PeerKind::Master);
        expect_ok(&create(&mut m, 1, handle, 1));
    }
    // A forwarded mutation with serial 1 applies; an out-of-order one is
    // refused at once (an already applied serial) .
    let mut peer = nodes[1].conn(&env, PeerKind::Chunkserver);
    let data = pattern(3, 1000);
    let fwd = |serial| {
        Body::ForwardMutation(Box::new(ringfs_wire::msg::ForwardMutation {
            epoch: 1,
            handle,
            version: 1,
            serial,
            kind: ringfs_wire::msg::MutationKind::Write,
            offset: 0,
            length: 1000,
            data_id: None,
            inline: true,
            block_crcs: Some(ringfs_wire::checksum::block_checksums(&data)),
        }))
    };
    expect_ok(&peer.call(&fwd(1), &data).unwrap());
    let r = peer.call(&fwd(1), &data).unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::BadRequest));
    let mut c = nodes[1].conn(&env, PeerKind::Client);
    assert_eq!(read(&mut c, handle, 0, 1000).unwrap(), data);
}

fn clone_cmd(
    master: &mut ringfs_client::conn::Conn,
    handle: u64,
    version: u64,
    source: &Chunkd,
) -> ringfs_client::conn::Response {
    master
        .call(
            &Body::CloneChunk(Box::new(ringfs_wire::msg::CloneChunk {
                epoch: 1,
                handle,
                version,
                source: Some(Box::new(replica_of(source, 11))),
            })),
            &[],
        )
        .unwrap()
}

#[test]
fn clone_pulls_a_verified_copy_and_refuses_a_corrupt_source() {
    let env = Env::new(CHUNK);
    let nodes = chain(&env);
    let handle = 0x63;
    let mut m0 = nodes[0].conn(&env, PeerKind::Master);
    expect_ok(&create(&mut m0, 1, handle, 1));
    expect_ok(&lease(&mut m0, 1, handle, 1, 60_000, Vec::new()));
    let mut c0 = nodes[0].conn(&env, PeerKind::Client);
    let data = pattern(5, 3 * (1 << 20) + 12_345);
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        expect_ok(&write(&mut c0, 1, handle, 1, (i << 20) as u64, piece));
    }
    // A clean clone: byte-identical, same version and length.
    let mut m1 = nodes[1].conn(&env, PeerKind::Master);
    expect_ok(&clone_cmd(&mut m1, handle, 1, &nodes[0]));
    assert!(whole(&env, &nodes[1], handle) == data);
    // A clone of a version the source does not hold is refused.
    let mut m2 = nodes[2].conn(&env, PeerKind::Master);
    let r = clone_cmd(&mut m2, handle, 2, &nodes[0]);
    assert_eq!(
        r.error_code(),
        Some(ErrorCode::ReplicaFailed),
        "{:?}",
        r.error()
    );
    // Corrupt one block at the source: the clone is refused and nothing
    // is installed.
    let dir = nodes[0].data[0].join("chunks");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().ends_with(".data"))
        .unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(SeekFrom::Start((2 << 20) + 100)).unwrap();
        f.write_all(&[0x55; 3]).unwrap();
        f.sync_all().unwrap();
    }
    let r = clone_cmd(&mut m2, handle, 1, &nodes[0]);
    assert!(
        r.error().is_some(),
        "a clone from a corrupt source must fail"
    );
    let mut c2 = nodes[2].conn(&env, PeerKind::Client);
    assert_eq!(
        read(&mut c2, handle, 0, 10).unwrap_err().code,
        ErrorCode::NotFound
    );
    let leftovers: Vec<_> = std::fs::read_dir(nodes[2].data[0].join("chunks"))
        .unwrap()
        .collect();
    assert!(
        leftovers.is_empty(),
        "a refused clone leaves no files: {leftovers:?}"
    );
}

#[test]
fn pushed_data_flows_down_the_chain_and_the_order_names_it() {
    let env = Env::new(CHUNK);
    let nodes = chain(&env);
    let handle = 0x64;
    setup(&env, &nodes, handle, 60_000);
    let mut client = nodes[0].conn(&env, PeerKind::Client);
    let data = pattern(77, 2 * (1 << 20) + 999);
    let id = ringfs_wire::msg::RequestId {
        client_id: 42,
        seq: 1,
    };
    let push = Body::PushData(Box::new(ringfs_wire::msg::PushData {
        data_id: Some(id),
        chain: Some(vec![replica_of(&nodes[1], 12), replica_of(&nodes[2], 13)]),
        block_crcs: Some(ringfs_wire::checksum::block_checksums(&data)),
    }));
    let r = client.call(&push, &data).unwrap();
    match &r.body {
        Body::PushDataReply(p) => assert_eq!(p.stored_by.as_ref().map(|s| s.len()), Some(3)),
        other => panic!("{other:?}"),
    }
    // The write names the pushed data; no bytes travel with it.
    let order = |seq| {
        Body::WriteChunk(Box::new(ringfs_wire::msg::WriteChunk {
            epoch: 1,
            handle,
            version: 1,
            offset: 4096,
            length: data.len() as u32,
            inline: false,
            data_id: Some(ringfs_wire::msg::RequestId { client_id: 42, seq }),
            block_crcs: Some(ringfs_wire::checksum::block_checksums(&data)),
            ..Default::default()
        }))
    };
    expect_ok(&client.call(&order(1), &[]).unwrap());
    for cs in &nodes {
        let mut c = cs.conn(&env, PeerKind::Client);
        assert_eq!(
            read(&mut c, handle, 4096, data.len() as u32).unwrap(),
            data,
            "replica {}",
            cs.addr
        );
    }
    // Claimed data is gone; unknown ids are typed errors.
    let r = client.call(&order(1), &[]).unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::DataIdUnknown));
    // A push whose bytes do not match its CRCs is refused.
    let bad = Body::PushData(Box::new(ringfs_wire::msg::PushData {
        data_id: Some(ringfs_wire::msg::RequestId {
            client_id: 42,
            seq: 2,
        }),
        chain: None,
        block_crcs: Some(vec![1]),
    }));
    let r = client.call(&bad, &data[..100]).unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::ChecksumMismatch));
}

#[test]
fn pushes_without_data_or_with_a_bad_chain_are_refused() {
    let env = Env::new(CHUNK);
    let cs = env.start(&[env.data_dir("cs0")], &["--cores", "2"]);
    let mut client = cs.conn(&env, PeerKind::Client);
    let data = pattern(3, 1000);
    let push = |seq, chain: Vec<ringfs_wire::msg::Replica>, crcs| {
        Body::PushData(Box::new(ringfs_wire::msg::PushData {
            data_id: Some(ringfs_wire::msg::RequestId { client_id: 9, seq }),
            chain: Some(chain),
            block_crcs: Some(crcs),
        }))
    };
    let crcs = ringfs_wire::checksum::block_checksums(&data);
    // No data: it would hold no buffer, so no limit would bound it.
    let r = client.call(&push(1, Vec::new(), Vec::new()), &[]).unwrap();
    assert_eq!(
        r.error_code(),
        Some(ErrorCode::BadRequest),
        "{:?}",
        r.error()
    );
    // A chain longer than any replication factor.
    let long: Vec<_> = (0..17)
        .map(|i| ringfs_wire::msg::Replica {
            node_id: 100 + i,
            addr: Some(format!("127.0.0.1:{}", 1000 + i)),
            rack: None,
        })
        .collect();
    let r = client.call(&push(2, long, crcs.clone()), &data).unwrap();
    assert_eq!(
        r.error_code(),
        Some(ErrorCode::BadRequest),
        "{:?}",
        r.error()
    );
    // A chain naming one node twice: the data would loop back to it.
    let twice = vec![replica_of(&cs, 12), replica_of(&cs, 12)];
    let r = client.call(&push(3, twice, crcs.clone()), &data).unwrap();
    assert_eq!(
        r.error_code(),
        Some(ErrorCode::BadRequest),
        "{:?}",
        r.error()
    );
    // Nothing refused was kept; the connection still serves.
    let r = client.call(&push(4, Vec::new(), crcs), &data).unwrap();
    match &r.body {
        Body::PushDataReply(p) => assert_eq!(p.stored_by.as_ref().map(|s| s.len()), Some(1)),
        other => panic!("{other:?}"),
    }
}

fn clone_from_addr(
    master: &mut ringfs_client::conn::Conn,
    handle: u64,
    addr: &str,
) -> ringfs_client::conn::Response {
    let source = ringfs_wire::msg::Replica {
        node_id: 11,
        addr: Some(addr.to_owned()),
        rack: None,
    };
    master
        .call(
            &Body::CloneChunk(Box::new(ringfs_wire::msg::CloneChunk {
                epoch: 1,
                handle,
                version: 1,
                source: Some(Box::new(source)),
            })),
            &[],
        )
        .unwrap()
}

#[test]
fn a_chunk_being_cloned_is_busy_for_another_clone_or_a_create() {
    let env = Env::new(CHUNK);
    let cs = env.start(&[env.data_dir("cs0")], &["--cores", "1"]);
    // A source that accepts and never answers: the clone waits in its
    // handshake (bounded) while the others arrive.
    let source = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let source_addr = source.local_addr().unwrap().to_string();
    let handle = 0x65;
    let first = {
        let mut m = cs.conn(&env, PeerKind::Master);
        let addr = source_addr.clone();
        std::thread::spawn(move || clone_from_addr(&mut m, handle, &addr))
    };
    // Accepted: the first clone is under way (the thread's call is bounded
    // by chunkd's handshake timeout, so this accept is too).
    source.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let held = loop {
        match source.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "chunkd never connected"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    let mut m = cs.conn(&env, PeerKind::Master);
    let r = clone_from_addr(&mut m, handle, &source_addr);
    assert_eq!(r.error_code(), Some(ErrorCode::Busy), "{:?}", r.error());
    let r = create(&mut m, 1, handle, 1);
    assert_eq!(r.error_code(), Some(ErrorCode::Busy), "{:?}", r.error());
    // The first ends (its source never answered), and so does its claim.
    let r = first.join().unwrap();
    assert_eq!(
        r.error_code(),
        Some(ErrorCode::ReplicaFailed),
        "{:?}",
        r.error()
    );
    drop(held);
    expect_ok(&create(&mut m, 1, handle, 1));
}
