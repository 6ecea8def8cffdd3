//! Writes, appends and reads of odd sizes and offsets against a real
//! chunkd process, checked against an in-memory model of the chunk.

mod support;

use ringfs_wire::checksum::BLOCK_BYTES;
use ringfs_wire::msg::{Body, ErrorCode};
use support::*;

const CHUNK: u64 = 4 << 20;
const B: u64 = BLOCK_BYTES as u64;

fn check_reads(client: &mut ringfs_client::conn::Conn, handle: u64, model: &[u8]) {
    let len = model.len() as u64;
    let probes = [
        (0, 1),
        (0, len),
        (1, B),
        (B - 1, 2),
        (B, B),
        (B + 1, 3 * B),
        (len.saturating_sub(1), 1),
        (len / 2, len),
    ];
    for (off, n) in probes {
        if off >= len {
            continue;
        }
        let got =
            read(client, handle, off, n as u32).unwrap_or_else(|e| panic!("read {off}+{n}: {e:?}"));
        let end = (off + n).min(len);
        assert_eq!(got, &model[off as usize..end as usize], "read {off}+{n}");
    }
}

#[test]
fn writes_of_odd_sizes_and_offsets_read_back() {
    let env = Env::new(CHUNK);
    let cs = env.start(&[env.data_dir("d0")], &["--cores", "2"]);
    let handle = 0x10;
    let (_master, mut client) = primary_chunk(&env, &cs, handle);
    let mut model: Vec<u8> = Vec::new();
    let cases: &[(u64, usize)] = &[
        (0, 1),
        (1, 100),
        (B - 1, 2),
        (B, BLOCK_BYTES),
        (B + 1, BLOCK_BYTES - 1),
        (3 * B - 7, 3 * BLOCK_BYTES + 11),
        (10 * B, 1 << 20),
        // A hole: past the current end.
        (40 * B + 123, 5000),
        (5, 300_000),
        (CHUNK - 10, 10),
    ];
    for (i, &(off, n)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 1, n);
        let r = write(&mut client, 1, handle, 1, off, &data);
        expect_ok(&r);
        let end = off as usize + n;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
        check_reads(&mut client, handle, &model);
    }
    // Past the chunk end is refused with a typed error.
    let r = write(&mut client, 1, handle, 1, CHUNK - 1, &[1, 2]);
    assert_eq!(r.error_code(), Some(ErrorCode::OutOfRange));
    // Data that does not match its CRCs is refused before anything is written.
    let mut conn = env.conn(&cs.addr, ringfs_wire::msg::PeerKind::Client);
    let data = pattern(99, 1000);
    let mut body = ringfs_wire::msg::WriteChunk {
        epoch: 1,
        handle,
        version: 1,
        offset: 0,
        length: 1000,
        inline: true,
        block_crcs: Some(vec![0xdead_beef]),
        ..Default::default()
    };
    let r = conn
        .call(&Body::WriteChunk(Box::new(body.clone())), &data)
        .unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::ChecksumMismatch));
    body.block_crcs = Some(vec![]);
    let r = conn.call(&Body::WriteChunk(Box::new(body)), &data).unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::BadRequest));
    check_reads(&mut client, handle, &model);
    // Still the same after a restart.
    drop(client);
    let mut cs = cs;
    cs.restart(&env);
    let mut client = env.conn(&cs.addr, ringfs_wire::msg::PeerKind::Client);
    check_reads(&mut client, handle, &model);
}

#[test]
fn record_appends_land_whole_and_full_chunks_pad() {
    let env = Env::new(CHUNK);
    let cs = env.start(&[env.data_dir("d0")], &["--cores", "1"]);
    let handle = 0x20;
    let (_master, mut client) = primary_chunk(&env, &cs, handle);
    let mut model = Vec::new();
    let sizes = [
        1usize,
        7,
        4096,
        BLOCK_BYTES - 3,
        BLOCK_BYTES,
        3,
        200_000,
        1 << 20,
        17,
    ];
    for (i, &n) in sizes.iter().cycle().take(40).enumerate() {
        let data = pattern(1000 + i as u64, n);
        let r = append(&mut client, 1, handle, 1, &data);
        match &r.body {
            Body::AppendChunkReply(a) => {
                assert_eq!(a.offset, model.len() as u64, "append {i} offset");
                model.extend_from_slice(&data);
            }
            Body::ErrorReply(e) if e.code == ErrorCode::ChunkFull => {
                assert!(
                    model.len() as u64 + n as u64 > CHUNK,
                    "ChunkFull only when it does not fit"
                );
                model.resize(CHUNK as usize, 0);
                break;
            }
            other => panic!("append {i}: {other:?}"),
        }
    }
    assert_eq!(model.len() as u64, CHUNK, "the appends fill the chunk");
    check_reads(&mut client, handle, &model);
    // A full chunk refuses further appends the same way.
    let r = append(&mut client, 1, handle, 1, &[1]);
    assert_eq!(r.error_code(), Some(ErrorCode::ChunkFull));
}

fn list_all(conn: &mut ringfs_client::conn::Conn) -> Vec<ringfs_wire::msg::ChunkReport> {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..100 {
        let r = conn
            .call(
                &Body::ListChunks(Box::new(ringfs_wire::msg::ListChunks {
                    start_after: after,
                    limit: 7,
                })),
                &[],
            )
            .unwrap();
        let Body::ListChunksReply(l) = r.body else {
            panic!("{:?}", r.body)
        };
        let chunks = l.chunks.unwrap_or_default();
        if let Some(last) = chunks.last() {
            after = last.handle;
        }
        out.extend(chunks);
        if !l.more {
            return out;
        }
    }
    panic!("listing did not end");
}

#[test]
fn chunks_spread_over_data_dirs_list_delete_and_survive_restart() {
    use ringfs_wire::msg::PeerKind;
    let env = Env::new(CHUNK);
    let dirs = [env.data_dir("disk0"), env.data_dir("disk1")];
    let mut cs = env.start(&dirs, &["--cores", "2"]);
    let mut master = cs.conn(&env, PeerKind::Master);
    let mut client = cs.conn(&env, PeerKind::Client);
    let handles: Vec<u64> = (1..=20).collect();
    for &h in &handles {
        expect_ok(&create(&mut master, 1, h, 1));
        expect_ok(&lease(&mut master, 1, h, 1, 60_000, Vec::new()));
        expect_ok(&write(
            &mut client,
            1,
            h,
            1,
            0,
            &pattern(h, h as usize * 1000),
        ));
    }
    let listed = list_all(&mut client);
    assert_eq!(listed.iter().map(|c| c.handle).collect::<Vec<_>>(), handles);
    for c in &listed {
        assert_eq!(c.length_bytes, c.handle * 1000);
    }
    // Both disks hold chunks.
    for d in &dirs {
        let metas = std::fs::read_dir(d.join("chunks"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "meta")
            })
            .count();
        assert!(metas > 0, "{} holds no chunk", d.display());
    }
    // One DeleteChunk naming chunks of both cores.
    let r = master
        .call(
            &Body::DeleteChunk(Box::new(ringfs_wire::msg::DeleteChunk {
                epoch: 1,
                handles: Some(vec![2, 3, 5, 7, 11]),
                reason: ringfs_wire::msg::DeleteReason::Orphan,
            })),
            &[],
        )
        .unwrap();
    expect_ok(&r);
    let left: Vec<u64> = handles
        .iter()
        .copied()
        .filter(|h| ![2, 3, 5, 7, 11].contains(h))
        .collect();
    assert_eq!(
        list_all(&mut client)
            .iter()
            .map(|c| c.handle)
            .collect::<Vec<_>>(),
        left
    );
    // The per-core totals, kept as chunks come, grow and go (not walked),
    // are published every housekeeping tick.
    let left_bytes: u64 = left.iter().map(|h| h * 1000).sum();
    let totals_are = |cs: &Chunkd| {
        cs.metric("chunks") == left.len() as u64 && cs.metric("stored_bytes") == left_bytes
    };
    cs.wait_until("the chunk totals after the deletes", || totals_are(&cs));
    drop((master, client));
    cs.restart(&env);
    assert!(cs.ready_line.contains("chunks=15"), "{}", cs.ready_line);
    cs.wait_until("the chunk totals after a restart", || totals_are(&cs));
    let mut client = cs.conn(&env, PeerKind::Client);
    for &h in &left {
        assert_eq!(
            read(&mut client, h, 0, (h * 1000) as u32).unwrap(),
            pattern(h, h as usize * 1000)
        );
    }
    // A disk of another cluster is refused at start-up with a clear error.
    drop(client);
    cs.kill9();
    let foreign = env.data_dir("foreign");
    chunkd::identity::open_or_init(&foreign, "another-cluster", 0).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chunkd"))
        .args([
            "--config",
            env.config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(format!("{},{}", dirs[0].display(), foreign.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chunkd with a foreign data dir did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("belongs to cluster"), "{stderr}");
}

#[test]
fn no_chunk_is_created_within_the_reserve() {
    use ringfs_wire::msg::PeerKind;
    let env = Env::new(CHUNK);
    // More than any disk: every byte of the filesystem is reserved.
    env.add_chunkserver_tuning("data_dir_reserved_bytes = 4611686018427387904");
    let d0 = env.data_dir("d0");
    let cs = env.start(std::slice::from_ref(&d0), &["--cores", "2"]);
    let mut master = cs.conn(&env, PeerKind::Master);
    for handle in [1u64, 2] {
        let r = create(&mut master, 1, handle, 1);
        let e = r.error().expect("a create within the reserve is refused");
        assert_eq!(e.code, ErrorCode::NoSpace, "{:?}", e.message);
        let message = e.message.clone().unwrap_or_default();
        assert!(message.contains("data_dir_reserved_bytes"), "{message}");
    }
    // Nothing was left behind, and the server still serves.
    let mut client = cs.conn(&env, PeerKind::Client);
    assert!(list_all(&mut client).is_empty());
    let files = std::fs::read_dir(d0.join("chunks")).unwrap().count();
    assert_eq!(files, 0, "a refused create left files");
}
