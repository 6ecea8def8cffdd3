//! Chunk allocation, leases, placement, re-replication and GC with real
//! chunkservers registered to a real master.

use std::time::{Duration, Instant};

use ringfs_tests::*;
use ringfs_wire::msg::{Body, ChunkLocation, ErrorCode, GetChunkInfo, PeerKind, ReportBadReplica};

fn wait_registered(env: &Env, n: usize) {
    let mut c = env.client();
    wait_for(TIMEOUT, "chunkservers to register", || {
        let s = c.status();
        (s.chunkservers.unwrap_or_default().len() >= n).then_some(())
    });
}

fn has_chunk(env: &Env, cs: &Daemon, handle: u64) -> bool {
    chunk_version(env, cs, handle).is_some()
}

/// The version of a chunk's replica on `cs`, if it holds one.
fn chunk_version(env: &Env, cs: &Daemon, handle: u64) -> Option<u64> {
    let mut conn = ringfs_client::conn::Conn::connect(
        &cs.field("listen"),
        &env.key,
        CLUSTER,
        PeerKind::Client,
        TIMEOUT,
    )
    .expect("connect chunkd");
    match conn
        .call(&Body::GetChunkInfo(Box::new(GetChunkInfo { handle })), &[])
        .unwrap()
        .body
    {
        Body::ChunkInfoReply(r) => r.report.map(|r| r.version),
        _ => None,
    }
}

fn holder<'a>(env: &Env, servers: &'a [Daemon], loc: &ChunkLocation, node: u64) -> &'a Daemon {
    let addr = loc
        .replicas
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| r.node_id == node)
        .and_then(|r| r.addr.clone())
        .expect("replica address");
    let _ = env;
    servers
        .iter()
        .find(|s| s.field("listen") == addr)
        .expect("a server at that address")
}

#[test]
fn allocation_spreads_over_racks_and_leases_are_exclusive() {
    let opts = Options {
        lease_duration_ms: 3_000,
        chunkserver_timeout_ms: 1_000,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _m = start_master(&env);
    let servers: Vec<Daemon> = [("cs1", "a"), ("cs2", "a"), ("cs3", "a"), ("cs4", "b")]
        .iter()
        .map(|(n, r)| start_chunkd(&env, n, r))
        .collect();
    wait_registered(&env, 4);
    let mut c = env.client();
    c.create("/f").unwrap();
    let ino = c.inode("/f");
    let loc = c.allocate(ino, 0).unwrap();
    let replicas = loc.replicas.clone().unwrap();
    assert_eq!(replicas.len(), 3, "three replicas on distinct servers");
    let mut racks: Vec<_> = replicas.iter().map(|r| r.rack.clone().unwrap()).collect();
    racks.sort();
    racks.dedup();
    assert_eq!(racks.len(), 2, "replicas span both racks: {replicas:?}");
    assert!(loc.primary != 0 && loc.lease_remaining_ms > 0);
    for r in &replicas {
        let s = holder(&env, &servers, &loc, r.node_id);
        assert!(
            has_chunk(&env, s, loc.handle),
            "replica created on {}",
            r.node_id
        );
    }
    // Allocating the same index again (a retry, a racing writer) finds it.
    let again = c.allocate(ino, 0).unwrap();
    assert_eq!(again.handle, loc.handle);
    assert_eq!(again.primary, loc.primary, "the live lease is kept");
    assert_eq!(
        code(&c.allocate(ino, 5).map(|_| Body::Ping(Box::default()))),
        Some(ErrorCode::OutOfRange)
    );

    // Kill the primary: no new primary before its lease has run out.
    let old_primary = loc.primary;
    let mut servers = servers;
    let idx = servers
        .iter()
        .position(|s| {
            s.field("listen") == holder(&env, &servers, &loc, old_primary).field("listen")
        })
        .unwrap();
    servers[idx].kill9();
    let killed_at = Instant::now();
    // Until the master notices, it may still name the old primary (its lease
    // runs); after that it refuses until the lease is over.
    let new = wait_for(Duration::from_secs(20), "a new primary", || {
        match c.get_lease(loc.handle) {
            Ok(l) if l.primary == old_primary => None,
            Ok(l) => Some(l),
            Err(e) => {
                assert!(matches!(e.code, ErrorCode::Unavailable), "{e:?}");
                None
            }
        }
    });
    assert!(
        killed_at.elapsed()
            >= Duration::from_millis(opts.lease_duration_ms) - Duration::from_millis(500)
    );
    assert_ne!(new.primary, old_primary);
    assert!(
        new.version > loc.version,
        "the version was bumped for the new lease"
    );
}

#[test]
fn dead_chunkserver_is_re_replicated() {
    let opts = Options {
        chunkserver_timeout_ms: 1_000,
        // The file stays open under the allocation's lease, and a chunk of
        // a file being written is cloned only once its lease has ended
        // (a copy taken mid-write would miss later writes).
        lease_duration_ms: 3_000,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _m = start_master(&env);
    let mut servers: Vec<Daemon> = (1..=4)
        .map(|i| start_chunkd(&env, &format!("cs{i}"), ""))
        .collect();
    wait_registered(&env, 4);
    let mut c = env.client();
    c.create("/g").unwrap();
    let ino = c.inode("/g");
    let loc = c.allocate(ino, 0).unwrap();
    let victim = loc
        .replicas
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| r.node_id != loc.primary)
        .unwrap()
        .clone();
    let addr = victim.addr.clone().unwrap();
    let idx = servers
        .iter()
        .position(|s| s.field("listen") == addr)
        .unwrap();
    servers[idx].kill9();
    // The chunk pass counts it (its counts lag a pass; the clone it starts
    // in the same tick is reported a heartbeat later).
    wait_for(
        Duration::from_secs(15),
        "the chunk counted under-replicated",
        || (c.status().under_replicated_chunks == 1).then_some(()),
    );
    let healed = wait_for(
        Duration::from_secs(25),
        "re-replication to three live replicas",
        || {
            let chunks = c.chunks(ino).ok()?;
            let reps = chunks.first()?.replicas.clone()?;
            (reps.len() == 3 && reps.iter().all(|r| r.node_id != victim.node_id)).then_some(reps)
        },
    );
    let spare = servers
        .iter()
        .find(|s| {
            !loc.replicas
                .as_ref()
                .unwrap()
                .iter()
                .any(|r| r.addr.as_deref() == Some(&s.field("listen")))
        })
        .unwrap();
    assert!(
        healed
            .iter()
            .any(|r| r.addr.as_deref() == Some(spare.field("listen").as_str()))
    );
    assert!(has_chunk(&env, spare, loc.handle));
    wait_for(Duration::from_secs(15), "the chunk counted whole", || {
        let s = c.status();
        (s.under_replicated_chunks == 0 && s.missing_chunks == 0 && s.chunks == 1).then_some(())
    });
}

#[test]
fn orphaned_and_stale_replicas_are_collected() {
    let opts = Options {
        lease_duration_ms: 1_000,
        chunkserver_timeout_ms: 60_000,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _m = start_master(&env);
    let mut servers: Vec<Daemon> = (1..=3)
        .map(|i| start_chunkd(&env, &format!("cs{i}"), ""))
        .collect();
    wait_registered(&env, 3);
    let mut c = env.client();

    // Orphan: the file is deleted and purged; its replicas go.
    c.create("/orphan").unwrap();
    let ino = c.inode("/orphan");
    let orphan = c.allocate(ino, 0).unwrap();
    let t = c.delete("/orphan", false).unwrap();
    c.purge(t).unwrap();
    wait_for(Duration::from_secs(20), "orphaned replicas deleted", || {
        servers
            .iter()
            .all(|s| !has_chunk(&env, s, orphan.handle))
            .then_some(())
    });

    // Stale: a replica misses a version bump while it is down.
    c.create("/stale").unwrap();
    let ino = c.inode("/stale");
    let loc = c.allocate(ino, 0).unwrap();
    let victim = loc
        .replicas
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| r.node_id != loc.primary)
        .unwrap()
        .clone();
    let idx = servers
        .iter()
        .position(|s| Some(s.field("listen")) == victim.addr)
        .unwrap();
    servers[idx].kill9();
    std::thread::sleep(Duration::from_millis(opts.lease_duration_ms + 300));
    let bumped = wait_for(Duration::from_secs(10), "a new lease", || {
        c.get_lease(loc.handle).ok()
    });
    assert!(bumped.version > loc.version);
    servers[idx].restart();
    // Deleted (and possibly cloned back afterwards at the current version).
    wait_for(Duration::from_secs(20), "the stale replica deleted", || {
        (chunk_version(&env, &servers[idx], loc.handle) != Some(loc.version)).then_some(())
    });
}

#[test]
fn lowered_goal_trims_to_exactly_the_goal() {
    // Short leases: trimming waits for the chunk's lease to run out.
    let opts = Options {
        lease_duration_ms: 1_000,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _m = start_master(&env);
    let servers: Vec<Daemon> = (1..=3)
        .map(|i| start_chunkd(&env, &format!("cs{i}"), ""))
        .collect();
    wait_registered(&env, 3);
    let mut c = env.client();
    c.create("/t").unwrap();
    let ino = c.inode("/t");
    let loc = c.allocate(ino, 0).unwrap();
    assert_eq!(loc.replicas.as_ref().unwrap().len(), 3);
    c.complete(ino, 0).unwrap();
    c.set_replication("/t", 1, false).unwrap();
    let holders = |c: &mut Client| {
        let on_disk = servers
            .iter()
            .filter(|s| has_chunk(&env, s, loc.handle))
            .count();
        let listed = c.chunks(ino).unwrap()[0]
            .replicas
            .clone()
            .unwrap_or_default()
            .len();
        (on_disk, listed)
    };
    wait_for(Duration::from_secs(30), "trimmed to one replica", || {
        (holders(&mut c) == (1, 1)).then_some(())
    });
    // Several scans later (one every 2 s) the last replica is still there:
    // deletes already sent are not counted as keepers twice.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        assert_eq!(holders(&mut c), (1, 1), "trimming went below the goal");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_failed_write_report_never_strands_the_only_replica() {
    let env = Env::new(&Options::default());
    let _m = start_master(&env);
    let _servers: Vec<Daemon> = (1..=3)
        .map(|i| start_chunkd(&env, &format!("cs{i}"), ""))
        .collect();
    wait_registered(&env, 3);
    let mut c = env.client();
    c.mkdir("/one", false).unwrap();
    c.set_replication("/one", 1, false).unwrap();
    c.create("/one/f").unwrap();
    let ino = c.inode("/one/f");
    let loc = c.allocate(ino, 0).unwrap();
    assert_eq!(loc.replicas.as_ref().unwrap().len(), 1);
    let report = |c: &mut Client, node: u64, reason: ErrorCode| {
        c.call(Body::ReportBadReplica(Box::new(ReportBadReplica {
            handle: loc.handle,
            node_id: node,
            reason,
        })))
        .unwrap();
    };
    // A write that failed on the only replica: it stays, the lease too.
    report(&mut c, loc.primary, ErrorCode::ReplicaFailed);
    let again = c.get_lease(loc.handle).unwrap();
    assert_eq!(again.primary, loc.primary);
    // Bad data on it is another matter: it is no longer served.
    report(&mut c, loc.primary, ErrorCode::ChecksumMismatch);
    assert!(
        c.chunks(ino).unwrap()[0]
            .replicas
            .clone()
            .unwrap_or_default()
            .is_empty()
    );
}

#[test]
fn a_lease_in_use_is_extended_without_a_version_bump() {
    let opts = Options {
        lease_duration_ms: 2_000,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _m = start_master(&env);
    let _servers: Vec<Daemon> = ["cs1", "cs2", "cs3"]
        .iter()
        .map(|n| start_chunkd(&env, n, "a"))
        .collect();
    wait_registered(&env, 3);
    let rt = runtime();
    let fs = fs_client(&env, ringfs_client::ClientOptions::default());
    // Small record appends for three lease durations, all to the first
    // chunk: its primary asks for extensions through its heartbeats.
    let appended = rt.block_on(async {
        fs.create("/log", ringfs_client::CreateOptions::default())
            .await
            .unwrap();
        let mut ap = fs.appender("/log").await.unwrap();
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_millis(3 * opts.lease_duration_ms) {
            ap.append(&pattern(n, 100)).await.unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n
    });
    assert!(appended > 10);
    let mut c = env.client();
    let ino = c.inode("/log");
    let chunks = c.chunks(ino).unwrap();
    assert_eq!(chunks.len(), 1, "every record fits the first chunk");
    assert_eq!(
        chunks[0].version, 1,
        "the first lease was extended, never granted anew"
    );
}
