//! Chunks beyond the open-files bound (docs/design/014-open-chunk-files.md),
//! against real chunkd processes: the least recently used chunks are
//! closed and reopened by name, every byte stays readable and appendable
//! across closes, restarts and deletes, and a chunkserver holding more
//! chunks than its open-files limit allows still starts and serves.

mod support;

use std::path::Path;

use ringfs_wire::msg::{Body, DeleteChunk, DeleteReason, PeerKind};
use support::*;

const CHUNK: u64 = 4 << 20;

/// Chunk files (data or meta) the process has open now, and how many of
/// them are deleted files.
fn open_chunk_files(pid: u32) -> (usize, usize) {
    let (mut open, mut deleted) = (0, 0);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let name = target.trim_end_matches(" (deleted)");
        if name.ends_with(".data") || name.ends_with(".meta") {
            open += 1;
            deleted += usize::from(target.ends_with(" (deleted)"));
        }
    }
    (open, deleted)
}

fn chunk_files_on_disk(dir: &Path, handle: u64) -> usize {
    let prefix = format!("{handle:016x}");
    std::fs::read_dir(dir.join("chunks"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .count()
}

#[test]
fn chunks_beyond_the_open_bound_are_closed_reopened_and_stay_intact() {
    const BOUND: usize = 8;
    const CHUNKS: u64 = 40;
    let env = Env::new(CHUNK);
    env.add_chunkserver_tuning(&format!("open_chunks_max = {BOUND}"));
    let d0 = env.data_dir("d0");
    let mut cs = env.start(std::slice::from_ref(&d0), &["--cores", "2"]);
    let handles: Vec<u64> = (0x100..0x100 + CHUNKS).collect();
    let mut expected: Vec<Vec<u8>> = vec![Vec::new(); handles.len()];
    {
        let mut master = cs.conn(&env, PeerKind::Master);
        let mut client = cs.conn(&env, PeerKind::Client);
        for &h in &handles {
            expect_ok(&create(&mut master, 1, h, 1));
            expect_ok(&lease(&mut master, 1, h, 1, 600_000, Vec::new()));
        }
        // Rounds over every chunk, so each is closed between its turns:
        // a first write ending mid-block (a cached tail), then appends that
        // extend that block and cross into the next, then an overwrite
        // inside the data.
        for round in 0..4u64 {
            for (i, &h) in handles.iter().enumerate() {
                let seed = round * 1000 + i as u64;
                let len = [5_000usize, 3_001, 70_000, 123][round as usize];
                let data = pattern(seed, len);
                if round == 3 {
                    let at = 1_234u64;
                    expect_ok(&write(&mut client, 1, h, 1, at, &data));
                    expected[i][at as usize..at as usize + len].copy_from_slice(&data);
                } else {
                    expect_ok(&append(&mut client, 1, h, 1, &data));
                    expected[i].extend_from_slice(&data);
                }
            }
        }
        for (i, &h) in handles.iter().enumerate() {
            let got = read(&mut client, h, 0, expected[i].len() as u32 + 10).unwrap();
            assert_eq!(got, expected[i], "chunk {h:#x} after reopens");
        }
        cs.wait_until("the open gauge to be published", || {
            cs.metric("open_chunks") > 0
        });
        assert!(cs.metric("open_chunks") as usize <= BOUND);
        assert!(
            cs.metric("chunk_reopens_total") >= CHUNKS,
            "every chunk was reopened at least once"
        );
        assert!(cs.metric("chunk_closes_total") >= CHUNKS);
        // Housekeeping may reopen a chunk to log its durable mark; in use,
        // a closed chunk's files outlive the bound only until the op ends.
        cs.wait_until("the open chunk files to fit the bound", || {
            open_chunk_files(cs.pid()).0 <= 2 * BOUND
        });

        // A deleted chunk's files are closed with it: nothing holds the
        // space of a deleted file.
        let gone = handles[CHUNKS as usize - 1];
        let r = master
            .call(
                &Body::DeleteChunk(Box::new(DeleteChunk {
                    epoch: 1,
                    handles: Some(vec![gone]),
                    reason: DeleteReason::Orphan,
                })),
                &[],
            )
            .unwrap();
        expect_ok(&r);
        assert_eq!(chunk_files_on_disk(&d0, gone), 0);
        cs.wait_until("no deleted chunk file to stay open", || {
            open_chunk_files(cs.pid()).1 == 0
        });
    }

    // Recovery opens every chunk: it too stays within the bound.
    cs.restart(&env);
    cs.wait_until("the open gauge after the restart", || {
        cs.metric("open_chunks") > 0
    });
    assert!(cs.metric("open_chunks") as usize <= BOUND);
    assert!(open_chunk_files(cs.pid()).0 <= 2 * BOUND);
    let mut master = cs.conn(&env, PeerKind::Master);
    let mut client = cs.conn(&env, PeerKind::Client);
    for (i, &h) in handles[..CHUNKS as usize - 1].iter().enumerate() {
        // Leases live in memory only: the restart dropped them.
        expect_ok(&lease(&mut master, 1, h, 1, 600_000, Vec::new()));
        let got = read(&mut client, h, 0, expected[i].len() as u32 + 10).unwrap();
        assert_eq!(got, expected[i], "chunk {h:#x} after the restart");
        // And it is still appendable from where it ended.
        let more = pattern(7_000 + i as u64, 777);
        expect_ok(&append(&mut client, 1, h, 1, &more));
        let got = read(&mut client, h, expected[i].len() as u64, 777).unwrap();
        assert_eq!(got, more, "append to chunk {h:#x} after the restart");
    }
}

#[test]
fn more_chunks_than_the_open_files_limit_are_created_recovered_and_served() {
    // With 256 descriptors, chunkd keeps 64 in reserve and at most 96
    // chunks open on its one core: 300 chunks used to need 600.
    const LIMIT: u32 = 256;
    const CHUNKS: u64 = 300;
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    let mut cs = env.start_limited(std::slice::from_ref(&d0), &["--cores", "1"], LIMIT);
    let handles: Vec<u64> = (0x1000..0x1000 + CHUNKS).collect();
    {
        let mut master = cs.conn(&env, PeerKind::Master);
        let mut client = cs.conn(&env, PeerKind::Client);
        for &h in &handles {
            expect_ok(&create(&mut master, 1, h, 1));
            expect_ok(&lease(&mut master, 1, h, 1, 600_000, Vec::new()));
            expect_ok(&write(&mut client, 1, h, 1, 0, &pattern(h, 4096)));
        }
    }
    cs.restart(&env);
    let limit: u32 = std::fs::read_to_string(format!("/proc/{}/limits", cs.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(limit, LIMIT, "the restarted chunkd runs under the limit");
    assert!(
        cs.ready_line.contains(&format!("chunks={CHUNKS}")),
        "every chunk recovered: {}",
        cs.ready_line
    );
    let mut client = cs.conn(&env, PeerKind::Client);
    for &h in &handles {
        let got = read(&mut client, h, 0, 4096).unwrap();
        assert_eq!(got, pattern(h, 4096), "chunk {h:#x}");
    }
    cs.wait_until("the open gauge", || cs.metric("open_chunks") > 0);
    assert!(cs.metric("open_chunks") <= 96);
}
