//! A version bump racing writes of the old version, against a real chunkd:
//! every write either lands before the bump or is refused as stale, and
//! after kill -9 every replica replays (none is quarantined for a version
//! going backwards in its log).

mod support;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use ringfs_wire::checksum::BLOCK_BYTES;
use ringfs_wire::msg::{Body, ErrorCode, PeerKind};
use support::*;

const CHUNK: u64 = 4 << 20;
const B: u64 = BLOCK_BYTES as u64;
/// Chunks, one race each: a race is likely but not certain to hit the
/// window on one chunk, near certain over all of them.
const RACES: u64 = 12;
const WRITERS: u64 = 6;
/// Each writer stops at the first refusal, or after this many writes.
const WRITES_PER_WRITER_MAX: usize = 5_000;

#[test]
fn a_bump_racing_old_version_writes_never_logs_them_after_it() {
    let env = Env::new(CHUNK);
    let d0 = env.data_dir("d0");
    let mut cs = env.start(
        std::slice::from_ref(&d0),
        &["--cores", "1", "--scrub-period-secs", "100000"],
    );
    let first = 0x70;
    for handle in first..first + RACES {
        let (mut master, mut client) = primary_chunk(&env, &cs, handle);
        // Written once, so the racing writes below overwrite partial
        // blocks: each reads and verifies its edge blocks first, which is
        // the wait between its version check and its log record.
        let fill = pattern(handle, (2 * WRITERS * B) as usize);
        expect_ok(&write(&mut client, 1, handle, 1, 0, &fill));
        let start = Barrier::new(WRITERS as usize + 1);
        let outcomes = std::thread::scope(|s| {
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let start = &start;
                    let mut conn = cs.conn(&env, PeerKind::Client);
                    s.spawn(move || {
                        let data = pattern(w + 1, BLOCK_BYTES);
                        let offset = 2 * w * B + 1000;
                        start.wait();
                        for n in 0..WRITES_PER_WRITER_MAX {
                            let r = write(&mut conn, 1, handle, 1, offset, &data);
                            if let Some(e) = r.error() {
                                return (n, Some(e.code));
                            }
                        }
                        (WRITES_PER_WRITER_MAX, None)
                    })
                })
                .collect();
            start.wait();
            std::thread::sleep(Duration::from_millis(30));
            expect_ok(&bump(&mut master, 1, handle, 1, 2));
            writers
                .into_iter()
                .map(|w| w.join().unwrap())
                .collect::<Vec<_>>()
        });
        for (n, code) in outcomes {
            assert!(
                n > 0,
                "chunk {handle:#x}: a writer never wrote before the bump"
            );
            // The bump also ends the lease, which is checked first.
            assert!(
                matches!(code, Some(ErrorCode::StaleVersion | ErrorCode::NotPrimary)),
                "chunk {handle:#x}: after {n} writes: {code:?}"
            );
        }
    }
    cs.kill9();
    let t = Instant::now();
    cs.restart(&env);
    assert!(t.elapsed() < TIMEOUT);
    assert!(
        cs.ready_line.contains("quarantined=0"),
        "a replica was refused at replay: {}\n{}",
        cs.ready_line,
        cs.stderr()
    );
    assert_eq!(cs.ready_field("chunks"), RACES);
    let mut client = cs.conn(&env, PeerKind::Client);
    for handle in first..first + RACES {
        match info(&mut client, handle).body {
            Body::ChunkInfoReply(i) => assert_eq!(i.report.unwrap().version, 2),
            other => panic!("chunk {handle:#x}: {other:?}"),
        }
    }
}
