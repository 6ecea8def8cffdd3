//! End-to-end integrity against real chunkd processes: on-disk corruption
//! is never served (reads and the scrubber catch it), acknowledged writes
//! survive kill -9, fencing refuses stale epochs, versions and leases, and
//! bad frames or a wrong key get typed errors without hurting the server.

mod support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfs_client::conn::Conn;
use ringfs_wire::auth::ClusterKey;
use ringfs_wire::checksum::BLOCK_BYTES;
use ringfs_wire::msg::{Body, ErrorCode, PeerKind};
use support::*;

const CHUNK: u64 = 4 << 20;
const B: u64 = BLOCK_BYTES as u64;

fn data_file(dir: &Path, handle: u64) -> PathBuf {
    let prefix = format!("{handle:016x}-");
    std::fs::read_dir(dir.join("chunks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with(&prefix) && name.ends_with(".data")
        })
        .expect("data file")
}

fn flip_byte(path: &Path, offset: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut b = [0u8];
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x40;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_flipped_byte_on_disk_is_never_served() {
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    // A slow scrubber, so the read path finds the damage first.
    let mut cs = env.start(
        std::slice::from_ref(&d0),
        &["--cores", "1", "--scrub-period-secs", "100000"],
    );
    let handle = 0x31;
    let (_m, mut client) = primary_chunk(&env, &cs, handle);
    let data = pattern(7, 6 * BLOCK_BYTES + 100);
    expect_ok(&write(&mut client, 1, handle, 1, 0, &data));
    // Flip one byte in block 2. The chunk file is O_DIRECT; our buffered
    // write reaches the same disk blocks once synced.
    flip_byte(&data_file(&d0, handle), 2 * B + 17);
    // Ranges away from block 2 still read; anything touching it is refused.
    assert_eq!(
        read(&mut client, handle, 0, B as u32).unwrap(),
        &data[..BLOCK_BYTES]
    );
    for (off, len) in [
        (2 * B, 1),
        (2 * B + 17, 1),
        (B, 2 * B as u32 as u64),
        (0, 6 * B),
    ] {
        let e = read(&mut client, handle, off, len as u32)
            .expect_err("a corrupt block must not be served");
        assert_eq!(e.code, ErrorCode::ChecksumMismatch, "read {off}+{len}");
        assert_eq!(e.block_index, 2);
    }
    // The replica is marked corrupt and says so after a restart too.
    let info_reply = info(&mut client, handle);
    match info_reply.body {
        Body::ChunkInfoReply(i) => {
            assert_eq!(
                i.report.unwrap().state,
                ringfs_wire::msg::ReplicaState::Corrupt
            )
        }
        other => panic!("{other:?}"),
    }
    // The kept totals follow the state change (published each tick).
    cs.wait_until("the corrupt gauge", || {
        cs.metric("corrupt_chunks") == 1
            && cs.metric("chunks") == 1
            && cs.metric("stored_bytes") == data.len() as u64
    });
    drop(client);
    cs.restart(&env);
    let mut client = cs.conn(&env, PeerKind::Client);
    let e = read(&mut client, handle, 2 * B, 10).unwrap_err();
    assert_eq!(e.code, ErrorCode::ChecksumMismatch);
    assert_eq!(read(&mut client, handle, 0, 10).unwrap(), &data[..10]);
    wait_for("the corrupt gauge", || {
        let (_, metrics) = cs.http_get("/metrics");
        metrics.contains("ringfs_chunkd_corrupt_chunks 1")
    });
}

/// The benchmark switch that prices read verification really turns it
/// off (a corrupt block then reaches the client, whose end-to-end check is
/// the only one left) and back on, and `/metrics` says which is in force.
#[test]
fn the_benchmark_verify_switch_turns_read_verification_off_and_on() {
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    let cs = env.start(
        std::slice::from_ref(&d0),
        &[
            "--cores",
            "1",
            "--scrub-period-secs",
            "100000",
            "--bench-read-verify-signals",
        ],
    );
    assert_eq!(cs.metric("read_verify"), 1, "verification is on by default");
    let handle = 0x32;
    let (_m, mut client) = primary_chunk(&env, &cs, handle);
    let data = pattern(8, 3 * BLOCK_BYTES);
    expect_ok(&write(&mut client, 1, handle, 1, 0, &data));
    flip_byte(&data_file(&d0, handle), B + 3);

    cs.signal("USR1");
    cs.wait_until("verification off", || cs.metric("read_verify") == 0);
    let raw = client
        .call(
            &Body::ReadChunk(Box::new(ringfs_wire::msg::ReadChunk {
                handle,
                min_version: 0,
                offset: B,
                length: B as u32,
            })),
            &[],
        )
        .unwrap();
    match raw.body {
        Body::ReadChunkReply(reply) => {
            let crcs = reply.block_crcs.unwrap_or_default();
            assert_eq!(crcs.len(), 1);
            assert_ne!(
                ringfs_wire::checksum::crc32c(&raw.data),
                crcs[0],
                "unverified, the corrupt block is sent with its stored CRC"
            );
            let mut want = data[BLOCK_BYTES..2 * BLOCK_BYTES].to_vec();
            want[3] ^= 0x40;
            assert_eq!(raw.data, want);
        }
        other => panic!("verification off: {other:?}"),
    }

    cs.signal("USR2");
    cs.wait_until("verification on", || cs.metric("read_verify") == 1);
    let e = read(&mut client, handle, B, 1).expect_err("verified again");
    assert_eq!(e.code, ErrorCode::ChecksumMismatch);
}

#[test]
fn the_scrubber_finds_a_flipped_byte() {
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    let cs = env.start(
        std::slice::from_ref(&d0),
        &["--cores", "2", "--scrub-period-secs", "1"],
    );
    let handle = 0x32;
    let (_m, mut client) = primary_chunk(&env, &cs, handle);
    let data = pattern(8, 3 * BLOCK_BYTES);
    expect_ok(&write(&mut client, 1, handle, 1, 0, &data));
    flip_byte(&data_file(&d0, handle), B + 5);
    // No client read: only the scrubber can find it.
    wait_for("the scrubber to mark the replica corrupt", || {
        let (_, m) = cs.http_get("/metrics");
        m.contains("ringfs_chunkd_checksum_failures_total{source=\"scrub\"} 1")
    });
    wait_for("/status to count the corrupt replica", || {
        let (_, status) = cs.http_get("/status");
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        status["corrupt_chunks"] == 1 && status["scrub"]["corrupt_blocks_found"].as_u64() >= Some(1)
    });
    // Good blocks are still served; the bad one never is; writes are refused.
    assert_eq!(read(&mut client, handle, 0, 10).unwrap(), &data[..10]);
    let e = read(&mut client, handle, B, 10).unwrap_err();
    assert_eq!(e.code, ErrorCode::ChecksumMismatch);
    let r = write(&mut client, 1, handle, 1, 0, b"no");
    assert_eq!(r.error_code(), Some(ErrorCode::Corrupt));
}

/// (handle, offset, data, acknowledged)
type Attempt = (u64, u64, Vec<u8>, bool);

#[test]
fn acknowledged_writes_survive_kill_9_mid_stream() {
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    let mut cs = env.start(std::slice::from_ref(&d0), &["--cores", "2"]);
    let handles: Vec<u64> = (0x40..0x44).collect();
    let mut master = cs.conn(&env, PeerKind::Master);
    for &h in &handles {
        expect_ok(&create(&mut master, 1, h, 1));
        expect_ok(&lease(&mut master, 1, h, 1, 600_000, Vec::new()));
    }
    // Writers: each owns one chunk, writes odd-sized pieces (appends and
    // overwrites) and records what was acknowledged.
    // (handle, offset, data, acknowledged): a write is recorded before it
    // is sent, and marked once acknowledged.
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, &h) in handles.iter().enumerate() {
        let addr = cs.addr.clone();
        let key = env.key.clone();
        let attempts = attempts.clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let Ok(mut c) = Conn::connect(&addr, &key, CLUSTER, PeerKind::Client, TIMEOUT) else {
                return;
            };
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 10_000 {
                let len = [1usize, 4096, 70_000, 200_001, 5][n as usize % 5];
                let offset = (n * 97_531 + i as u64 * 13) % (CHUNK - len as u64);
                let data = pattern(n * 31 + i as u64, len);
                let slot = {
                    let mut a = attempts.lock().unwrap();
                    a.push((h, offset, data.clone(), false));
                    a.len() - 1
                };
                match c.call(
                    &Body::WriteChunk(Box::new(ringfs_wire::msg::WriteChunk {
                        epoch: 1,
                        handle: h,
                        version: 1,
                        offset,
                        length: len as u32,
                        inline: true,
                        block_crcs: Some(ringfs_wire::checksum::block_checksums(&data)),
                        ..Default::default()
                    })),
                    &data,
                ) {
                    Ok(r) if r.error().is_none() => attempts.lock().unwrap()[slot].3 = true,
                    _ => return,
                }
                n += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    cs.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let attempts = attempts.lock().unwrap().clone();
    let acked = attempts.iter().filter(|a| a.3).count();
    assert!(
        acked > 20,
        "only {acked} writes acknowledged before the kill"
    );
    cs.restart(&env);
    let mut client = cs.conn(&env, PeerKind::Client);
    // Each writer sends one request at a time, so every acknowledged write
    // precedes its writer's single unacknowledged one, which may or may not
    // have landed (wholly or in part): those bytes may hold either value.
    for &h in &handles {
        let mut model: Vec<Option<u8>> = vec![None; CHUNK as usize];
        let mut maybe: Vec<Option<u8>> = vec![None; CHUNK as usize];
        for (_, off, data, ok) in attempts.iter().filter(|a| a.0 == h) {
            for (i, b) in data.iter().enumerate() {
                if *ok {
                    model[*off as usize + i] = Some(*b);
                } else {
                    maybe[*off as usize + i] = Some(*b);
                }
            }
        }
        let got = read(&mut client, h, 0, (CHUNK - 2 * B) as u32);
        let got = got.unwrap_or_else(|e| {
            panic!(
                "chunk {h:#x} unreadable after restart: {e:?}\n{}\n{}",
                cs.ready_line,
                cs.stderr()
            )
        });
        let mut checked = 0;
        for (i, want) in model.iter().enumerate().take(got.len()) {
            if let Some(w) = want {
                checked += 1;
                if got[i] != *w && maybe[i] != Some(got[i]) {
                    panic!(
                        "chunk {h:#x} byte {i}: acknowledged {w:#x}, read {:#x}",
                        got[i]
                    );
                }
            }
        }
        assert!(checked > 0);
    }
    // The restart reported what recovery did.
    assert!(cs.ready_line.contains("quarantined=0"), "{}", cs.ready_line);
}

#[test]
fn data_files_grow_with_their_data_and_a_truncated_one_is_refused() {
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    let mut cs = env.start(
        std::slice::from_ref(&d0),
        &["--cores", "1", "--scrub-period-secs", "100000"],
    );
    let handle = 0x51;
    let (mut master, mut client) = primary_chunk(&env, &cs, handle);
    // An empty chunk whose data file a crash lost (creation does not sync
    // it on its own) comes back empty.
    let empty = 0x52;
    expect_ok(&create(&mut master, 1, empty, 1));
    // Its meta file holds the header, the table and the log's first 16 KiB.
    let meta = d0.join("chunks").join(format!("{empty:016x}.meta"));
    assert_eq!(std::fs::metadata(&meta).unwrap().len(), (4 + 4 + 16) << 10);
    // A new chunk takes no space; a small write takes one allocation step.
    let size = |h| std::fs::metadata(data_file(&d0, h)).unwrap().len();
    assert_eq!(size(handle), 0);
    let data = pattern(5, 3 * BLOCK_BYTES + 10);
    expect_ok(&write(&mut client, 1, handle, 1, 0, &data));
    assert_eq!(size(handle), 4 * B, "allocated to the block boundary");
    // A write past a hole allocates through it; the hole reads as zeros.
    let far = pattern(6, 100);
    expect_ok(&write(&mut client, 1, handle, 1, 40 * B, &far));
    assert!(size(handle) >= 41 * B && size(handle) <= CHUNK);
    let hole = read(&mut client, handle, 10 * B, B as u32).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
    // One more write logs the far write as durable (settled): from then on
    // its CRC is the truth, whatever the disk says.
    expect_ok(&write(&mut client, 1, handle, 1, 0, &data[..10]));
    drop(client);
    cs.kill9();
    // The disk lost the tail of the file (acknowledged data): a restart
    // still succeeds, the intact blocks are served, and the lost ones are
    // refused as corrupt, never served as zeros.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(data_file(&d0, handle))
        .unwrap();
    f.set_len(2 * B).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::remove_file(data_file(&d0, empty)).unwrap();
    drop(master);
    cs.restart(&env);
    let mut client = cs.conn(&env, PeerKind::Client);
    match info(&mut client, empty).body {
        Body::ChunkInfoReply(i) => {
            let r = i.report.expect("the empty chunk is still there");
            assert_eq!(
                (r.length_bytes, r.state),
                (0, ringfs_wire::msg::ReplicaState::Ok)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(data_file(&d0, empty).exists());
    assert_eq!(
        read(&mut client, handle, 0, B as u32).unwrap(),
        &data[..BLOCK_BYTES]
    );
    let e = read(&mut client, handle, 40 * B, 100).unwrap_err();
    assert_eq!(e.code, ErrorCode::ChecksumMismatch);
}

/// Data written under an Intent may reach the disk before its log record
/// (note 015). After a kill -9, recovery rewrites as zeros whatever lies
/// past the length in open-Intent blocks (there an unacknowledged write
/// may have left bytes no record describes), so a later hole still reads
/// as zeros under zero CRCs. The Intent is open only until the next
/// housekeeping tick (500 ms) closes it; an attempt whose kill came after
/// that zeroes nothing and is repeated, bounded.
#[test]
fn a_crash_with_open_intents_zeroes_past_the_length() {
    const MIB: u64 = 1 << 20;
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    let mut cs = env.start(
        std::slice::from_ref(&d0),
        &["--cores", "1", "--scrub-period-secs", "100000"],
    );
    let data = pattern(9, (MIB + 100) as usize);
    for attempt in 0..5u64 {
        let handle = 0x70 + attempt;
        let (master, mut client) = primary_chunk(&env, &cs, handle);
        // Its batch predicts the stream's next write: blocks 16..=32.
        expect_ok(&write(&mut client, 1, handle, 1, 0, &data));
        drop((master, client));
        cs.kill9();
        // An in-flight write whose record was lost: bytes past the length
        // in the partial block 16 and in block 17.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(data_file(&d0, handle))
            .unwrap();
        for at in [MIB + 150, MIB + B + 5] {
            std::os::unix::fs::FileExt::write_all_at(&f, &[0xa5; 300], at).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        cs.restart(&env);
        let zeroed = cs.ready_field("zeroed_bytes");
        if zeroed == 0 {
            continue;
        }
        assert!(zeroed >= B, "{}", cs.ready_line);
        let mut master = cs.conn(&env, PeerKind::Master);
        expect_ok(&lease(&mut master, 1, handle, 1, 60_000, Vec::new()));
        let mut client = cs.conn(&env, PeerKind::Client);
        assert_eq!(
            read(&mut client, handle, 0, (MIB + 100) as u32).unwrap(),
            data
        );
        // A write beyond a hole: blocks 16..48 take the CRCs of zeros
        // without any data written there.
        expect_ok(&write(
            &mut client,
            1,
            handle,
            1,
            3 * MIB,
            b"after the hole",
        ));
        let got = read(&mut client, handle, MIB, (2 * B) as u32)
            .expect("the hole reads back, its CRCs matching");
        assert_eq!(&got[..100], &data[MIB as usize..]);
        assert!(
            got[100..].iter().all(|&b| b == 0),
            "the hole reads as zeros"
        );
        return;
    }
    panic!("five kills all came after the housekeeping tick closed the Intent");
}

/// Housekeeping settles every chunk written since its last tick, on every
/// core, and only those (`chunkd::unsettled`): once the chunks are idle the
/// work list drains, and a `kill -9` then leaves recovery nothing to re-read
/// or zero. Without settling, each chunk's last write leaves an Intent open
/// and its blocks unsettled, and the restart re-reads them.
#[test]
fn idle_written_chunks_are_settled_so_a_crash_rereads_nothing() {
    const CHUNKS: u64 = 12;
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    let mut cs = env.start(
        std::slice::from_ref(&d0),
        &["--cores", "2", "--scrub-period-secs", "100000"],
    );
    let data = pattern(11, 3 * B as usize + 17);
    for handle in 0x90..0x90 + CHUNKS {
        let (_master, mut client) = primary_chunk(&env, &cs, handle);
        expect_ok(&write(&mut client, 1, handle, 1, 0, &data));
        expect_ok(&write(&mut client, 1, handle, 1, data.len() as u64, &data));
    }
    // Each chunk's settle logs one batch, which marks it for one more
    // visit; the gauge is published after every tick.
    cs.wait_until("every chunk settled and the work list drained", || {
        cs.metric("settles_logged_total") >= CHUNKS && cs.metric("unsettled_chunks") == 0
    });
    cs.kill9();
    cs.restart(&env);
    assert_eq!(cs.ready_field("chunks"), CHUNKS, "{}", cs.ready_line);
    assert_eq!(cs.ready_field("checked_blocks"), 0, "{}", cs.ready_line);
    assert_eq!(cs.ready_field("zeroed_bytes"), 0, "{}", cs.ready_line);
    let mut master = cs.conn(&env, PeerKind::Master);
    let mut client = cs.conn(&env, PeerKind::Client);
    for handle in 0x90..0x90 + CHUNKS {
        expect_ok(&lease(&mut master, 1, handle, 1, 60_000, Vec::new()));
        let got = read(&mut client, handle, 0, 2 * data.len() as u32).unwrap();
        assert_eq!(&got[..data.len()], &data[..]);
        assert_eq!(&got[data.len()..], &data[..]);
    }
}

#[test]
fn fencing_refuses_stale_epochs_versions_and_expired_leases() {
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    let mut cs = env.start(std::slice::from_ref(&d0), &["--cores", "2"]);
    let handle = 0x50;
    let mut master = cs.conn(&env, PeerKind::Master);
    expect_ok(&create(&mut master, 5, handle, 1));
    // A lower epoch than one already admitted is refused, and says which.
    let r = create(&mut master, 4, 0x51, 1);
    assert_eq!(r.error_code(), Some(ErrorCode::StaleEpoch));
    assert_eq!(r.error().unwrap().epoch, 5);
    // Persisted: still refused after a restart.
    drop(master);
    cs.restart(&env);
    let mut master = cs.conn(&env, PeerKind::Master);
    assert_eq!(
        create(&mut master, 4, 0x51, 1).error_code(),
        Some(ErrorCode::StaleEpoch)
    );
    // Only masters may command.
    let mut client = cs.conn(&env, PeerKind::Client);
    assert_eq!(
        create(&mut client, 9, 0x52, 1).error_code(),
        Some(ErrorCode::BadRequest)
    );
    // No lease: not primary.
    let r = write(&mut client, 5, handle, 1, 0, b"x");
    assert_eq!(r.error_code(), Some(ErrorCode::NotPrimary));
    // A short lease expires and stops primary writes.
    expect_ok(&lease(&mut master, 5, handle, 1, 300, Vec::new()));
    expect_ok(&write(&mut client, 5, handle, 1, 0, b"inside the lease"));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        write(&mut client, 5, handle, 1, 0, b"late").error_code(),
        Some(ErrorCode::LeaseExpired)
    );
    // Version bump: writes with the old version are stale.
    expect_ok(&bump(&mut master, 5, handle, 1, 2));
    expect_ok(&lease(&mut master, 5, handle, 2, 60_000, Vec::new()));
    let r = write(&mut client, 5, handle, 1, 0, b"old version");
    assert_eq!(r.error_code(), Some(ErrorCode::StaleVersion));
    assert_eq!(r.error().unwrap().version, 2);
    expect_ok(&write(&mut client, 5, handle, 2, 0, b"new version"));
    // A write carrying an epoch older than the lease's is refused.
    assert_eq!(
        write(&mut client, 4, handle, 2, 0, b"old master").error_code(),
        Some(ErrorCode::StaleEpoch)
    );
    // A lease for a version we do not hold is refused with ours.
    let r = lease(&mut master, 5, handle, 3, 60_000, Vec::new());
    assert_eq!(r.error_code(), Some(ErrorCode::StaleVersion));
    assert_eq!(read(&mut client, handle, 0, 11).unwrap(), b"new version");
}

#[test]
fn bad_frames_and_wrong_keys_get_clear_errors() {
    let env = Env::new(CHUNK);
    let cs = env.start(&[env.data_dir("d0")], &["--cores", "1"]);
    // Wrong key: the handshake fails with a typed error.
    let other = ClusterKey::generate().unwrap();
    match Conn::connect(&cs.addr, &other, CLUSTER, PeerKind::Client, TIMEOUT) {
        Err(ringfs_client::conn::ConnError::Handshake { code, .. }) => {
            assert_eq!(code, ErrorCode::AuthFailed)
        }
        Err(e) => panic!("expected a handshake error, got {e}"),
        Ok(_) => panic!("a wrong key must not authenticate"),
    }
    // Wrong cluster id.
    match Conn::connect(
        &cs.addr,
        &env.key,
        "another-cluster",
        PeerKind::Client,
        TIMEOUT,
    ) {
        Err(ringfs_client::conn::ConnError::Handshake { code, .. }) => {
            assert_eq!(code, ErrorCode::WrongCluster)
        }
        other => panic!("expected WrongCluster, got {:?}", other.err()),
    }
    // Garbage after the handshake: BadFrame, then the connection closes.
    let mut c = cs.conn(&env, PeerKind::Client);
    c.send_raw(&[0xAB; 64]).unwrap();
    let r = c.receive().unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::BadFrame));
    assert!(
        c.receive().is_err(),
        "the connection is closed after a bad frame"
    );
    // A frame whose header announces more data than the limit.
    let mut c = cs.conn(&env, PeerKind::Client);
    let mut frame = Vec::new();
    ringfs_wire::message::Encoder::new()
        .frame(
            &mut frame,
            1,
            &Body::Ping(Box::default()),
            &[],
            &ringfs_wire::frame::FrameLimits::DATA,
        )
        .unwrap();
    frame[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    c.send_raw(&frame).unwrap();
    let r = c.receive().unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::BadFrame));
    // A well-framed request the chunkserver does not serve: typed error,
    // connection still usable.
    let mut c = cs.conn(&env, PeerKind::Client);
    let r = c.call(&Body::Mkdir(Box::default()), &[]).unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::Unsupported));
    let r = c.call(&Body::Ping(Box::default()), &[]).unwrap();
    assert!(matches!(r.body, Body::Pong(_)));
    // A read larger than a frame can carry.
    let r = c
        .call(
            &Body::ReadChunk(Box::new(ringfs_wire::msg::ReadChunk {
                handle: 1,
                min_version: 0,
                offset: 0,
                length: 64 << 20,
            })),
            &[],
        )
        .unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::TooLarge));
    // Unknown chunk.
    assert_eq!(
        read(&mut c, 0xdead, 0, 1).unwrap_err().code,
        ErrorCode::NotFound
    );
    // The server is still fine.
    let (code, _) = cs.http_get("/status");
    assert_eq!(code, 200);
}

/// `buffer_pool_free_buffers` of core 0 (a labelled gauge).
fn free_buffers(cs: &Chunkd) -> u64 {
    let (status, body) = cs.http_get("/metrics");
    assert_eq!(status, 200);
    let series = "ringfs_chunkd_buffer_pool_free_buffers{core=\"0\"} ";
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Reads until the peer closes; returns how long that took (bounded by
/// the stream's read timeout, which fails the test).
fn time_to_close(stream: &mut std::net::TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return since.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return since.elapsed(),
            Err(e) => panic!("the connection was not closed: {e}"),
        }
    }
}

#[test]
fn a_silent_or_oversized_handshake_is_cut_off() {
    let env = Env::new(CHUNK);
    let cs = env.start(&[env.data_dir("d0")], &["--cores", "1"]);
    // Connects and says nothing: closed after chunkd's 5 s handshake
    // timeout, not held.
    let mut silent = std::net::TcpStream::connect(&cs.addr).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let took = time_to_close(&mut silent, Instant::now());
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "closed after {took:?}"
    );
    // A Hello announcing more meta than a handshake needs is refused at
    // its header, before anything is allocated for it.
    let mut big = std::net::TcpStream::connect(&cs.addr).unwrap();
    big.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut frame = Vec::new();
    ringfs_wire::message::Encoder::new()
        .frame(
            &mut frame,
            1,
            &Body::Hello(Box::default()),
            &[],
            &ringfs_wire::frame::FrameLimits::HANDSHAKE,
        )
        .unwrap();
    let header = ringfs_wire::frame::FrameHeader {
        meta_len: 1 << 20,
        ..ringfs_wire::frame::FrameHeader::decode(
            &frame,
            &ringfs_wire::frame::FrameLimits::HANDSHAKE,
        )
        .unwrap()
    };
    let sent = Instant::now();
    big.write_all(&header.encode()).unwrap();
    let took = time_to_close(&mut big, sent);
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    // Both are gone, and a proper client still gets in.
    let mut c = cs.conn(&env, PeerKind::Client);
    let r = c.call(&Body::Ping(Box::default()), &[]).unwrap();
    assert!(matches!(r.body, Body::Pong(_)));
}

/// A request whose data stops coming holds the pool buffers lent to it
/// only until chunkd's 30 s deadline for a request's data; then the
/// connection is closed and the buffers come back.
#[test]
fn a_request_stalled_mid_data_is_closed_and_its_buffers_come_back() {
    let env = Env::new(CHUNK);
    let cs = env.start(&[env.data_dir("d0")], &["--cores", "1"]);
    // Housekeeping publishes the gauge every 500 ms.
    let mut start = 0;
    cs.wait_until("the buffer gauge", || {
        start = free_buffers(&cs);
        start > 0
    });
    // Reads may block for the whole deadline and then some.
    let mut c = Conn::connect(
        &cs.addr,
        &env.key,
        CLUSTER,
        PeerKind::Client,
        Duration::from_secs(60),
    )
    .unwrap();
    let data_len: u64 = 16 << 20;
    let push = Body::PushData(Box::new(ringfs_wire::msg::PushData {
        data_id: Some(ringfs_wire::msg::RequestId {
            client_id: 7,
            seq: 1,
        }),
        chain: None,
        block_crcs: Some(vec![0; (data_len / B) as usize]),
    }));
    let mut head = Vec::new();
    ringfs_wire::message::Encoder::new()
        .head(
            &mut head,
            1,
            &push,
            data_len,
            &ringfs_wire::frame::FrameLimits::DATA,
        )
        .unwrap();
    c.send_raw(&head).unwrap();
    c.send_raw(&vec![0u8; 1 << 20]).unwrap();
    let stalled = Instant::now();
    // The request holds its 16 buffers (1 MiB each in the test config).
    cs.wait_until("the stalled request's buffers", || {
        free_buffers(&cs) == start - 16
    });
    let r = c.receive();
    let took = stalled.elapsed();
    assert!(r.is_err(), "a stalled request got a reply: {:?}", r.ok());
    assert!(
        took >= Duration::from_secs(25) && took < Duration::from_secs(50),
        "closed after {took:?}"
    );
    cs.wait_until("the buffers to come back", || free_buffers(&cs) == start);
    // The core still serves.
    let mut c = cs.conn(&env, PeerKind::Client);
    let r = c.call(&Body::Ping(Box::default()), &[]).unwrap();
    assert!(matches!(r.body, Body::Pong(_)));
}

/// Recovery reads a meta file only up to what its format allows: one
/// grown past its layout (here sparse, one of them to 1 TiB, which a
/// whole-file read would try to hold in memory) is quarantined like any
/// other damaged meta file, and the other chunks come back.
#[test]
fn an_oversized_meta_file_is_quarantined_without_being_read_whole() {
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    let mut cs = env.start(std::slice::from_ref(&d0), &["--cores", "1"]);
    let mut master = cs.conn(&env, PeerKind::Master);
    let (huge, longer, intact) = (0x71, 0x72, 0x73);
    for h in [huge, longer, intact] {
        expect_ok(&create(&mut master, 1, h, 1));
    }
    drop(master);
    cs.kill9();
    let meta = |h: u64| d0.join("chunks").join(format!("{h:016x}.meta"));
    let grow = |h: u64, len: u64| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(meta(h))
            .unwrap();
        f.set_len(len).unwrap();
        f.sync_all().unwrap();
    };
    grow(huge, 1 << 40);
    // Header page, one table page (4 MiB chunk), the default 256 KiB log:
    // one page more than the layout has room for.
    grow(longer, (4 + 4 + 256 + 4) << 10);
    cs.restart(&env);
    assert!(
        cs.ready_line.contains("quarantined=2"),
        "{}\n{}",
        cs.ready_line,
        cs.stderr()
    );
    let mut client = cs.conn(&env, PeerKind::Client);
    for h in [huge, longer] {
        assert_eq!(
            read(&mut client, h, 0, 1).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert!(!meta(h).exists(), "{h:#x} is moved to quarantine");
    }
    match info(&mut client, intact).body {
        Body::ChunkInfoReply(i) => assert!(i.report.is_some()),
        other => panic!("{other:?}"),
    }
}
