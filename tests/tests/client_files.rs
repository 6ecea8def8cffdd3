//! The client library against a real cluster: round trips at every size
//! boundary, ranges, concurrent writers and record appenders, a chunkserver
//! killed mid-write, a replica corrupted on disk.

use std::collections::HashMap;
use std::time::Duration;

use ringfs_client::{ClientOptions, CreateOptions};
use ringfs_tests::*;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn put(fs: &ringfs_client::Client, rt: &tokio::runtime::Runtime, path: &str, data: &[u8]) {
    rt.block_on(async {
        let mut w = fs.writer(path, CreateOptions::default()).await.unwrap();
        // Uneven write sizes: the writer cuts its own pieces.
        for part in data.chunks(3 * MIB + 17) {
            w.write(part).await.unwrap();
        }
        let attr = w.close().await.unwrap();
        assert_eq!(attr.length_bytes, data.len() as u64);
        assert!(attr.complete);
    });
}

fn get(fs: &ringfs_client::Client, rt: &tokio::runtime::Runtime, path: &str) -> Vec<u8> {
    rt.block_on(async {
        let r = fs.reader(path).await.unwrap();
        let mut out = Vec::new();
        let n = r.copy_to(&mut out, |_| {}).await.unwrap();
        assert_eq!(n as usize, out.len());
        out
    })
}

#[test]
fn round_trips_at_every_size_boundary_and_ranges() {
    let opts = Options {
        chunk_size_bytes: 64 << 20,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _m = start_master(&env);
    let _cs: Vec<Daemon> = ["cs1", "cs2", "cs3"]
        .iter()
        .map(|n| start_chunkd(&env, n, "r"))
        .collect();
    let rt = runtime();
    let fs = fs_client(&env, ClientOptions::default());
    let sizes = [
        0,
        1,
        64 * KIB - 1,
        64 * KIB + 1,
        64 * MIB - 1,
        64 * MIB + 1,
        200 * MIB + 12_345,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let data = pattern(i as u64, size);
        let path = format!("/size-{size}");
        put(&fs, &rt, &path, &data);
        let back = get(&fs, &rt, &path);
        assert_eq!(back.len(), size, "{path}");
        assert_eq!(sha256(&back), sha256(&data), "{path}");
    }
    // Ranges of the largest file: unaligned, across blocks and chunks,
    // past the end.
    let size = sizes[sizes.len() - 1];
    let data = pattern((sizes.len() - 1) as u64, size);
    let path = format!("/size-{size}");
    rt.block_on(async {
        let r = fs.reader(&path).await.unwrap();
        assert_eq!(r.len(), size as u64);
        let c = 64 * MIB;
        for (o, n) in [
            (0, 1),
            (1, 64 * KIB),
            (64 * KIB - 3, 7),
            (c - 100, 200),
            (c - 1, 1),
            (2 * c - 5 * MIB, 10 * MIB + 3),
            (size - 10, 10),
            (size - 10, 100),
            (size + 5, 10),
        ] {
            let got = r.read_at(o as u64, n as u64).await.unwrap();
            let end = (o + n).min(size);
            let want = if o >= size { &[][..] } else { &data[o..end] };
            assert_eq!(got.len(), want.len(), "range {o}+{n}");
            assert!(got == want, "range {o}+{n} differs");
        }
    });
}

/// A self-checking record: magic, length, CRC of the payload, payload.
fn record(writer: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut payload = writer.to_le_bytes().to_vec();
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(&pattern(writer * 1_000 + seq, len));
    let mut r = b"REC1".to_vec();
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(&ringfs_wire::checksum::crc32c(&payload).to_le_bytes());
    r.extend_from_slice(&payload);
    r
}

/// Every intact record in `data`: (writer, seq) → how many times.
fn scan_records(data: &[u8]) -> HashMap<(u64, u64), usize> {
    let mut found = HashMap::new();
    let mut p = 0;
    while p + 12 <= data.len() {
        if &data[p..p + 4] == b"REC1" {
            let len = u32::from_le_bytes(data[p + 4..p + 8].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(data[p + 8..p + 12].try_into().unwrap());
            if len >= 16 && p + 12 + len <= data.len() {
                let payload = &data[p + 12..p + 12 + len];
                if ringfs_wire::checksum::crc32c(payload) == crc {
                    let w = u64::from_le_bytes(payload[..8].try_into().unwrap());
                    let s = u64::from_le_bytes(payload[8..16].try_into().unwrap());
                    *found.entry((w, s)).or_default() += 1;
                    p += 12 + len;
                    continue;
                }
            }
        }
        p += 1;
    }
    found
}

#[test]
fn concurrent_writers_and_record_appenders() {
    let opts = Options {
        chunk_size_bytes: 1 << 20,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _m = start_master(&env);
    let _cs: Vec<Daemon> = ["cs1", "cs2", "cs3"]
        .iter()
        .map(|n| start_chunkd(&env, n, "r"))
        .collect();
    let rt = runtime();
    let fs = fs_client(&env, ClientOptions::default());
    const WRITERS: u64 = 6;
    const APPENDERS: u64 = 6;
    const RECORDS: u64 = 40;
    rt.block_on(async {
        fs.create("/log", CreateOptions::default()).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let fs = fs.clone();
            tasks.spawn(async move {
                let data = pattern(100 + w, 3 * MIB + (w as usize) * 4_099);
                let mut f = fs
                    .writer(&format!("/w{w}"), CreateOptions::default())
                    .await
                    .unwrap();
                f.write(&data).await.unwrap();
                f.close().await.unwrap();
                Vec::new()
            });
        }
        for a in 0..APPENDERS {
            let fs = fs.clone();
            tasks.spawn(async move {
                let mut ap = fs.appender("/log").await.unwrap();
                let mut landed = Vec::new();
                for s in 0..RECORDS {
                    // 1 KiB to ~60 KiB: several fill a 1 MiB chunk, so
                    // appends cross chunks and pad.
                    let rec = record(a, s, 1_000 + ((a * 7 + s * 13) % 60) as usize * 1_000);
                    let offset = ap.append(&rec).await.unwrap();
                    landed.push((offset, rec));
                }
                landed
            });
        }
        let mut landed = Vec::new();
        while let Some(r) = tasks.join_next().await {
            landed.extend(r.unwrap());
        }
        for w in 0..WRITERS {
            let data = pattern(100 + w, 3 * MIB + (w as usize) * 4_099);
            let r = fs.reader(&format!("/w{w}")).await.unwrap();
            let mut back = Vec::new();
            r.copy_to(&mut back, |_| {}).await.unwrap();
            assert!(back == data, "/w{w} differs");
        }
        // Every record at the offset its append returned, intact.
        let log = fs.reader("/log").await.unwrap();
        assert!(!log.is_empty());
        for (offset, rec) in &landed {
            let got = log.read_at(*offset, rec.len() as u64).await.unwrap();
            assert!(&got == rec, "record at {offset} differs");
        }
        // And found by a reader that knows nothing of offsets.
        let mut all = Vec::new();
        log.copy_to(&mut all, |_| {}).await.unwrap();
        let found = scan_records(&all);
        for a in 0..APPENDERS {
            for s in 0..RECORDS {
                assert!(
                    found.get(&(a, s)).copied().unwrap_or(0) >= 1,
                    "record {a}/{s} missing"
                );
            }
        }
        assert!(
            log.attr.chunk_count >= 2,
            "appends crossed chunks: {}",
            log.attr.chunk_count
        );
    });
}

#[test]
fn chunkserver_killed_during_a_put() {
    let opts = Options {
        chunk_size_bytes: 1 << 20,
        lease_duration_ms: 3_000,
        chunkserver_timeout_ms: 1_500,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _m = start_master(&env);
    let mut cs: Vec<Daemon> = ["cs1", "cs2", "cs3", "cs4"]
        .iter()
        .map(|n| start_chunkd(&env, n, "r"))
        .collect();
    let rt = runtime();
    let fs = fs_client(
        &env,
        ClientOptions {
            piece_bytes: 256 << 10,
            pieces_in_flight: 4,
            ..ClientOptions::default()
        },
    );
    let data = pattern(7, 24 * MIB + 333);
    rt.block_on(async {
        let mut w = fs.writer("/big", CreateOptions::default()).await.unwrap();
        let (first, rest) = data.split_at(8 * MIB);
        w.write(first).await.unwrap();
        // Wait until part of it is acknowledged, then kill a chunkserver
        // that holds some of it.
        let deadline = std::time::Instant::now() + TIMEOUT;
        while w.progress().unwrap() < 2 * MIB as u64 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cs[1].kill9();
        w.write(rest).await.unwrap();
        let attr = w.close().await.unwrap();
        assert_eq!(attr.length_bytes, data.len() as u64);
    });
    let back = get(&fs, &rt, "/big");
    assert!(back == data, "read back differs after the chunkserver died");
    // Every chunk is brought back to three live replicas.
    let mut c = env.client();
    let ino = c.inode("/big");
    wait_for(Duration::from_secs(60), "re-replication", || {
        let chunks = c.chunks(ino).unwrap();
        chunks
            .iter()
            .all(|l| l.replicas.as_ref().map_or(0, Vec::len) >= 3)
            .then_some(())
    });
    drop(cs.remove(1));
}

/// A piece that fails for good leaves the writer failed: later writes,
/// `progress` and `close` return that error (no panic, nothing more
/// sent), and the file stays incomplete.
#[test]
fn a_failed_piece_fails_the_writer_for_good() {
    let opts = Options {
        chunk_size_bytes: 1 << 20,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _m = start_master(&env);
    let mut cs = start_chunkd(&env, "cs1", "r");
    let rt = runtime();
    let fs = fs_client(
        &env,
        ClientOptions {
            piece_bytes: 256 << 10,
            pieces_in_flight: 2,
            write_attempts: 2,
            data_call_timeout: Duration::from_secs(2),
            retry: ringfs_client::masters::RetryPolicy {
                deadline: Duration::from_secs(3),
                attempt_timeout: Duration::from_secs(2),
                ..ringfs_client::masters::RetryPolicy::default()
            },
            ..ClientOptions::default()
        },
    );
    let piece = pattern(3, 256 * KIB);
    rt.block_on(async {
        let create = CreateOptions {
            replication: 1,
            ..CreateOptions::default()
        };
        let mut w = fs.writer("/f", create).await.unwrap();
        w.write(&piece).await.unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while w.progress().unwrap() < piece.len() as u64 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The only chunkserver is gone: the next pieces fail for good.
        cs.kill9();
        let mut first = None;
        for _ in 0..64 {
            match w.write(&piece).await.and_then(|()| w.progress()) {
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => {
                    first = Some(e.to_string());
                    break;
                }
            }
        }
        let first = first.expect("a write fails once its only replica is gone");
        assert_eq!(w.write(&piece).await.unwrap_err().to_string(), first);
        assert_eq!(w.progress().unwrap_err().to_string(), first);
        assert_eq!(w.close().await.unwrap_err().to_string(), first);
    });
    let mut c = env.client();
    let attr = c.stat("/f").unwrap();
    assert!(!attr.complete, "the file stays incomplete: {attr:?}");
}

#[test]
fn corrupted_replica_is_read_around_reported_and_replaced() {
    let opts = Options {
        chunk_size_bytes: 1 << 20,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let _m = start_master(&env);
    let cs: Vec<Daemon> = ["cs1", "cs2", "cs3", "cs4"]
        .iter()
        .map(|n| start_chunkd(&env, n, "r"))
        .collect();
    let rt = runtime();
    let fs = fs_client(&env, ClientOptions::default());
    let data = pattern(9, 600 * KIB);
    put(&fs, &rt, "/f", &data);
    let mut c = env.client();
    let ino = c.inode("/f");
    let loc = c.chunks(ino).unwrap().remove(0);
    let replicas = loc.replicas.clone().unwrap();
    // The put waited for every chunkserver to register: full replication.
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    // Corrupt the replica a reader tries first.
    let bad = replicas[0].clone();
    let bad_dir = cs
        .iter()
        .zip(["cs1", "cs2", "cs3", "cs4"])
        .find(|(d, _)| Some(d.field("listen")) == bad.addr)
        .map(|(_, n)| env.path(n))
        .expect("the replica's data dir");
    let file = std::fs::read_dir(bad_dir.join("chunks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&format!("{:016x}-", loc.handle)) && n.ends_with(".data")
        })
        .expect("the chunk's data file");
    flip_byte(&file, 300 * KIB as u64 + 5);
    let back = get(&fs, &rt, "/f");
    assert!(back == data, "the intact replicas serve the right bytes");
    // Reported, then replaced by a fresh copy elsewhere.
    wait_for(Duration::from_secs(60), "the bad replica replaced", || {
        let l = c.chunks(ino).unwrap().remove(0);
        let rs = l.replicas.unwrap_or_default();
        (rs.len() >= 3 && rs.iter().all(|r| r.node_id != bad.node_id)).then_some(())
    });
    let back = get(&fs, &rt, "/f");
    assert!(back == data);
    // With three good copies again, the corrupt one is deleted from disk.
    wait_for(
        Duration::from_secs(30),
        "the corrupt replica deleted",
        || (!file.exists()).then_some(()),
    );
}

fn flip_byte(path: &std::path::Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
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
