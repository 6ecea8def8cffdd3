//! Partitions between the master and chunkservers (issue 6), made with
//! TCP proxies the tests cut and heal (`ringfs_tests::proxy`), on real
//! processes:
//! - a chunkserver cut off from the master while it holds a primary lease
//!   stops accepting writes once the lease has run out, with nobody telling
//!   it, and the master names no new primary while it might still accept
//!   one (clients still reach the chunkserver);
//! - a chunk whose allocation committed but whose replicas could not be
//!   created (the master could not reach any chunkserver) is created by a
//!   later lease request, once the master can show none was ever made.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringfs_client::conn::Conn;
use ringfs_tests::proxy::Proxy;
use ringfs_tests::*;
use ringfs_wire::checksum::block_checksums;
use ringfs_wire::msg::{Body, ChunkLocation, ErrorCode, PeerKind, RequestId, WriteChunk};

const LEASE_MS: u64 = 3_000;

/// A config that reaches the master through `proxy`.
fn proxied_config(env: &Env, proxy: &Proxy, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.contains(&env.master_addr));
    let path = env.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text.replace(&env.master_addr, &proxy.addr)).unwrap();
    path
}

fn connect(env: &Env, addr: &str) -> Conn {
    Conn::connect(addr, &env.key, CLUSTER, PeerKind::Client, TIMEOUT).expect("connect chunkd")
}

/// One 64 KiB write at offset 0 under `loc`'s lease, straight to `addr`.
fn write(conn: &mut Conn, loc: &ChunkLocation, seq: u64) -> Result<(), ErrorCode> {
    let data = vec![(seq % 251) as u8; 64 << 10];
    let write = WriteChunk {
        req: Some(RequestId {
            client_id: 0x5eed,
            seq,
        }),
        epoch: loc.epoch,
        handle: loc.handle,
        version: loc.version,
        offset: 0,
        length: data.len() as u32,
        inline: true,
        data_id: None,
        block_crcs: Some(block_checksums(&data)),
        secondaries: None,
    };
    match conn
        .call(&Body::WriteChunk(Box::new(write)), &data)
        .expect("write call")
        .body
    {
        Body::WriteChunkReply(_) => Ok(()),
        Body::ErrorReply(e) => Err(e.code),
        other => panic!("unexpected {other:?}"),
    }
}

fn address_of(loc: &ChunkLocation, node: u64) -> String {
    loc.replicas
        .iter()
        .flatten()
        .find(|r| r.node_id == node)
        .and_then(|r| r.addr.clone())
        .expect("primary among the replicas")
}

#[test]
fn a_primary_cut_off_from_the_master_stops_writing_when_its_lease_ends() {
    let opts = Options {
        lease_duration_ms: LEASE_MS,
        default_replication: 2,
        chunkserver_timeout_ms: 2_000,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _master = start_master(&env);
    let proxies = [
        Proxy::start(env.master_addr.clone()),
        Proxy::start(env.master_addr.clone()),
    ];
    let servers: Vec<Daemon> = ["cs1", "cs2"]
        .iter()
        .zip(&proxies)
        .map(|(name, p)| {
            let plumbing = ChunkdPlumbing {
                config: Some(proxied_config(&env, p, name)),
                ..ChunkdPlumbing::default()
            };
            start_chunkd_with(&env, name, "", &plumbing)
        })
        .collect();
    let mut master = env.client();
    wait_for(TIMEOUT, "both chunkservers to register", || {
        (master.status().chunkservers.unwrap_or_default().len() == 2).then_some(())
    });
    assert!(master.create("/f").is_ok());
    let inode = master.inode("/f");
    let old = master.allocate(inode, 0).expect("allocate");
    let old_addr = address_of(&old, old.primary);
    let mut old_primary = connect(&env, &old_addr);
    let mut seq = 1;
    write(&mut old_primary, &old, seq).expect("a write under a fresh lease");

    // Cut the primary's link to the master (its data port stays reachable).
    let cut_proxy = servers
        .iter()
        .zip(&proxies)
        .find(|(s, _)| s.field("listen") == old_addr)
        .map(|(_, p)| p)
        .expect("the primary's proxy");
    let cut_at = Instant::now();
    cut_proxy.cut();

    // Keep writing to it under its lease, and keep asking the master for
    // the lease, until the master names a new primary.
    let deadline = cut_at + Duration::from_millis(LEASE_MS) + TIMEOUT;
    let mut last_accepted = cut_at;
    let mut first_refusal = None;
    let new = loop {
        assert!(Instant::now() < deadline, "no new primary named");
        seq += 1;
        match write(&mut old_primary, &old, seq) {
            Ok(()) => {
                assert!(
                    first_refusal.is_none(),
                    "the cut-off primary accepted a write after refusing one"
                );
                last_accepted = Instant::now();
            }
            Err(code) => {
                assert!(
                    matches!(code, ErrorCode::LeaseExpired | ErrorCode::NotPrimary),
                    "refused with {code:?}"
                );
                first_refusal.get_or_insert_with(Instant::now);
            }
        }
        match master.get_lease(old.handle) {
            Ok(loc) if loc.primary != old.primary => break loc,
            Ok(loc) => assert_eq!(loc.version, old.version, "the same lease, still running"),
            Err(e) => assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let first_refusal = first_refusal.expect("the old primary refused before a new one was named");
    eprintln!(
        "after the cut: last write accepted at {:?}, first refused at {:?}, new primary named at {:?}",
        last_accepted.duration_since(cut_at),
        first_refusal.duration_since(cut_at),
        cut_at.elapsed()
    );
    assert!(first_refusal > cut_at);
    // It ran at most one lease (from its last extension, before the cut).
    assert!(
        last_accepted.duration_since(cut_at) < Duration::from_millis(LEASE_MS),
        "accepted writes {:?} after the cut",
        last_accepted.duration_since(cut_at)
    );
    assert!(
        new.version > old.version,
        "a new primary only with a new version"
    );

    // From here on the old primary refuses, the new one accepts.
    let mut new_primary = connect(&env, &address_of(&new, new.primary));
    for _ in 0..3 {
        seq += 1;
        let refused = write(&mut old_primary, &old, seq).expect_err("the old lease is over");
        assert!(matches!(
            refused,
            ErrorCode::LeaseExpired | ErrorCode::NotPrimary
        ));
        seq += 1;
        write(&mut new_primary, &new, seq).expect("the new primary writes");
    }

    // Healed, the old primary comes back with a stale replica, which the
    // master replaces: two good replicas at the new version again.
    cut_proxy.heal();
    wait_for(TIMEOUT * 2, "the chunk back at two good replicas", || {
        let loc = master.chunks(inode).ok()?.into_iter().next()?;
        (loc.version >= new.version && loc.replicas.unwrap_or_default().len() == 2).then_some(())
    });
}

#[test]
fn a_chunk_allocated_but_never_created_is_created_by_the_next_lease_request() {
    let opts = Options {
        default_replication: 2,
        chunkserver_timeout_ms: 1_000,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _master = start_master(&env);
    // The master reaches each chunkserver's data port through a proxy
    // (its advertised address); the chunkservers reach the master directly,
    // so they stay registered and heartbeating while cut.
    let mut proxies = Vec::new();
    let mut servers = Vec::new();
    for name in ["cs1", "cs2"] {
        let listen = format!("127.0.0.1:{}", free_port());
        let proxy = Proxy::start(listen.clone());
        let plumbing = ChunkdPlumbing {
            listen: Some(listen),
            advertise: Some(proxy.addr.clone()),
            ..ChunkdPlumbing::default()
        };
        servers.push(start_chunkd_with(&env, name, "", &plumbing));
        proxies.push(proxy);
    }
    let mut master = env.client();
    wait_for(TIMEOUT, "both chunkservers to register", || {
        (master.status().chunkservers.unwrap_or_default().len() == 2).then_some(())
    });
    assert!(master.create("/f").is_ok());
    let inode = master.inode("/f");

    for p in &proxies {
        p.cut();
    }
    // The allocation commits; no replica can be created.
    let refused = master
        .allocate(inode, 0)
        .expect_err("no replica was created");
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused:?}");
    let handle = master.chunks(inode).expect("chunks")[0].handle;
    assert!(master.get_lease(handle).is_err(), "still unreachable");

    for p in &proxies {
        p.heal();
    }
    let loc = wait_for(TIMEOUT, "a lease on the created chunk", || {
        master.get_lease(handle).ok()
    });
    assert_eq!(loc.replicas.as_deref().unwrap_or_default().len(), 2);
    assert!(loc.version > 1, "granted with a bumped version");
    let http = env.master_http.clone();
    let created = metric(&http, "ringfs_master_unborn_chunks_created_total");
    assert_eq!(
        created, 1,
        "created as an unborn chunk, not found elsewhere"
    );
    let primary = address_of(&loc, loc.primary);
    write(&mut connect(&env, &primary), &loc, 1).expect("the chunk takes writes");
}
