//! The op log against its files: round trips across segment rolls,
//! recovery from torn and damaged bytes, truncate, purge, the meta file, a
//! kill -9 of a process appending to it, and openraft's own storage suite.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use masterd::oplog::format::{parse_segment_file_name, scan_segment};
use masterd::oplog::meta::META_FILE;
use masterd::oplog::{OpLog, OpLogError, OpLogOptions};
use masterd::types::{Applied, Entry, LogId, Op, Proposal, ReqId, StorageError, TypeConfig, Vote};
use openraft::storage::{
    LogState, RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine, Snapshot,
};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, BasicNode, CommittedLeaderId, EntryPayload, RaftSnapshotBuilder, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use ringfs_wire::config::MasterTuning;

fn entry(index: u64, term: u64) -> Entry {
    let log_id = LogId::new(CommittedLeaderId::new(term, 1), index);
    let payload = if index.is_multiple_of(5) {
        EntryPayload::Blank
    } else {
        EntryPayload::Normal(Proposal {
            ops: (0..index % 7)
                .map(|k| Op::Mkdir {
                    req: ReqId {
                        client_id: index,
                        seq: k,
                    },
                    path: format!("/dir-{index}/{k}"),
                    parents: true,
                    mode: 0o755,
                    owner: "root".into(),
                    now_ns: index as i64,
                })
                .collect(),
        })
    };
    Entry { log_id, payload }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

/// Small segments and no cache beyond what is not yet written, so tests
/// roll segments and read back from disk.
fn small() -> OpLogOptions {
    OpLogOptions {
        segment_bytes_max: 2048,
        group_commit_max_bytes: 1 << 20,
        cache_bytes_max: 0,
        cache_entries_max: 0,
    }
}

fn open(dir: &Path) -> OpLog {
    OpLog::open_with(dir, small()).expect("open the op log")
}

async fn append(log: &mut OpLog, es: Vec<Entry>) {
    log.blocking_append(es).await.expect("append");
}

async fn all(log: &mut OpLog) -> Vec<Entry> {
    log.try_get_log_entries(..).await.expect("read")
}

async fn state(log: &mut OpLog) -> LogState<TypeConfig> {
    log.get_log_state().await.expect("log state")
}

fn lid(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Segment files, in log order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|d| {
            let d = d.unwrap();
            let first = parse_segment_file_name(d.file_name().to_str()?)?;
            Some((first, d.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

fn copy_dir(src: &Path, dst: &Path) {
    for d in fs::read_dir(src).unwrap() {
        let d = d.unwrap();
        if d.file_name() != "LOCK" {
            fs::copy(d.path(), dst.join(d.file_name())).unwrap();
        }
    }
}

/// A log of entries 1..=n, one append (so one batch) each, closed.
async fn one_batch_each(dir: &Path, n: u64) {
    let mut log = open(dir);
    for i in 1..=n {
        append(&mut log, vec![entry(i, 1)]).await;
    }
}

#[tokio::test]
async fn round_trip_across_segment_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    {
        let mut log = open(dir.path());
        assert_eq!(
            state(&mut log).await,
            LogState {
                last_purged_log_id: None,
                last_log_id: None
            }
        );
        let mut next = 1;
        for k in 0..60u64 {
            let es = entries(next..=next + k % 7, 3);
            next += es.len() as u64;
            want.extend(es.clone());
            append(&mut log, es).await;
        }
        assert_eq!(all(&mut log).await, want);
        assert_eq!(log.try_get_log_entries(10..20).await.unwrap(), want[9..19]);
        let st = log.stats();
        let segs = segments(dir.path()).len() as u64;
        assert!(segs > 10, "{segs} segments");
        assert_eq!(st.segments.load(std::sync::atomic::Ordering::Relaxed), segs);
        assert_eq!(
            st.records_appended
                .load(std::sync::atomic::Ordering::Relaxed),
            want.len() as u64
        );
        let on_disk: u64 = segments(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(
            st.log_bytes_on_disk
                .load(std::sync::atomic::Ordering::Relaxed),
            on_disk
        );
        // Every segment but the last stays within the bound.
        for p in &segments(dir.path())[..segs as usize - 1] {
            assert!(fs::metadata(p).unwrap().len() <= 2048);
        }
    }
    let mut log = open(dir.path());
    assert_eq!(all(&mut log).await, want);
    let last = want.last().unwrap().log_id;
    assert_eq!(state(&mut log).await.last_log_id, Some(last));
    // Appending continues where the reopened log ends.
    let more = entries(last.index + 1..=last.index + 5, 4);
    append(&mut log, more.clone()).await;
    want.extend(more);
    let mut reader = log.get_log_reader().await;
    assert_eq!(reader.try_get_log_entries(..).await.unwrap(), want);
    let limited = reader.limited_get_log_entries(3, 9).await.unwrap();
    assert!(!limited.is_empty() && limited.len() <= 6);
    assert_eq!(limited[..], want[2..2 + limited.len()]);
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(dir.path());
    assert!(matches!(
        OpLog::open_with(dir.path(), small()),
        Err(OpLogError::Locked { .. })
    ));
}

#[tokio::test]
async fn torn_tail_at_every_byte_of_the_last_record() {
    let base = tempfile::tempdir().unwrap();
    one_batch_each(base.path(), 12).await;
    let last_seg = segments(base.path()).pop().unwrap();
    let bytes = fs::read(&last_seg).unwrap();
    let scan = scan_segment(&bytes).unwrap();
    let last = *scan.records.last().unwrap();
    assert_eq!(last.index, 12);
    for cut in last.offset..bytes.len() as u64 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let seg = dir.path().join(last_seg.file_name().unwrap());
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let mut log = open(dir.path());
        assert_eq!(all(&mut log).await, entries(1..=11, 1), "cut at {cut}");
        assert_eq!(state(&mut log).await.last_log_id, Some(lid(1, 11)));
        if seg.exists() {
            assert_eq!(fs::metadata(&seg).unwrap().len(), last.offset);
        }
        if cut % 16 == 0 {
            // The repaired log takes the lost index again, and keeps it.
            append(&mut log, vec![entry(12, 2)]).await;
            drop(log);
            let mut log = open(dir.path());
            let mut want = entries(1..=11, 1);
            want.push(entry(12, 2));
            assert_eq!(all(&mut log).await, want);
        }
    }
}

#[tokio::test]
async fn zeroed_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    one_batch_each(dir.path(), 5).await;
    let seg = segments(dir.path()).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len + 8192)
        .unwrap();
    let mut log = open(dir.path());
    assert_eq!(all(&mut log).await, entries(1..=5, 1));
    assert_eq!(fs::metadata(&seg).unwrap().len(), len);
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_record_is_cut() {
    let base = tempfile::tempdir().unwrap();
    one_batch_each(base.path(), 9).await;
    let last_seg = segments(base.path()).pop().unwrap();
    let bytes = fs::read(&last_seg).unwrap();
    let last = *scan_segment(&bytes).unwrap().records.last().unwrap();
    for at in last.offset as usize..bytes.len() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let mut b = bytes.clone();
        b[at] ^= 0x40;
        fs::write(dir.path().join(last_seg.file_name().unwrap()), &b).unwrap();
        let mut log = open(dir.path());
        assert_eq!(all(&mut log).await, entries(1..=8, 1), "flip at {at}");
    }
}

#[tokio::test]
async fn a_flipped_byte_in_an_earlier_segment_is_refused() {
    let base = tempfile::tempdir().unwrap();
    one_batch_each(base.path(), 40).await;
    let segs = segments(base.path());
    assert!(segs.len() >= 3);
    let first = &segs[0];
    let bytes = fs::read(first).unwrap();
    let scan = scan_segment(&bytes).unwrap();
    // Header, a record header, a payload, the last record of the segment.
    let last = scan.records.last().unwrap();
    for at in [
        3usize,
        scan.records[1].offset as usize + 9,
        scan.records[1].offset as usize + 50,
        last.offset as usize + last.record_bytes() as usize - 1,
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let mut b = bytes.clone();
        b[at] ^= 1;
        fs::write(dir.path().join(first.file_name().unwrap()), &b).unwrap();
        match OpLog::open_with(dir.path(), small()) {
            Err(OpLogError::Corrupt { path, .. }) => {
                assert_eq!(path.file_name(), first.file_name(), "flip at {at}")
            }
            Err(e) => panic!("flip at {at}: {e}"),
            Ok(_) => panic!("flip at {at}: damage accepted"),
        }
    }
    // Cut short, too.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(base.path(), dir.path());
    fs::write(
        dir.path().join(first.file_name().unwrap()),
        &bytes[..bytes.len() - 3],
    )
    .unwrap();
    assert!(matches!(
        OpLog::open_with(dir.path(), small()),
        Err(OpLogError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn damage_before_a_later_batch_in_the_last_segment_is_refused() {
    let base = tempfile::tempdir().unwrap();
    one_batch_each(base.path(), 30).await;
    let last_seg = segments(base.path()).pop().unwrap();
    let mut bytes = fs::read(&last_seg).unwrap();
    let scan = scan_segment(&bytes).unwrap();
    assert!(scan.records.len() >= 2, "{:?}", scan.records);
    // Record k was fsynced before record k+1 was written (one batch
    // each): it may have been acknowledged, so it must not be dropped.
    let victim = scan.records[scan.records.len() - 2];
    bytes[victim.offset as usize + 60] ^= 1;
    fs::write(&last_seg, &bytes).unwrap();
    match OpLog::open_with(base.path(), small()) {
        Err(OpLogError::Corrupt { offset, .. }) => assert_eq!(offset, victim.offset),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("damage accepted"),
    }
}

#[tokio::test]
async fn a_missing_segment_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    one_batch_each(dir.path(), 40).await;
    let segs = segments(dir.path());
    fs::remove_file(&segs[1]).unwrap();
    assert!(matches!(
        OpLog::open_with(dir.path(), small()),
        Err(OpLogError::Gap { .. })
    ));
}

#[tokio::test]
async fn an_interrupted_segment_creation_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    one_batch_each(dir.path(), 6).await;
    for junk in [&b""[..], b"RGFSOPSG\x01"] {
        let stray = dir.path().join("00000000000000000007.seg");
        fs::write(&stray, junk).unwrap();
        let mut log = open(dir.path());
        assert_eq!(all(&mut log).await, entries(1..=6, 1));
        assert!(!stray.exists());
    }
}

#[tokio::test]
async fn truncate_then_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    for i in 1..=80 {
        append(&mut log, vec![entry(i, 1)]).await;
    }
    let segs_before = segments(dir.path()).len();
    log.truncate(lid(1, 50)).await.unwrap();
    assert_eq!(state(&mut log).await.last_log_id, Some(lid(1, 49)));
    assert_eq!(all(&mut log).await, entries(1..=49, 1));
    assert!(segments(dir.path()).len() < segs_before);
    append(&mut log, entries(50..=60, 2)).await;
    let mut want = entries(1..=49, 1);
    want.extend(entries(50..=60, 2));
    assert_eq!(all(&mut log).await, want);
    drop(log);
    let mut log = open(dir.path());
    assert_eq!(all(&mut log).await, want);

    // At a segment's first index: the segment goes entirely.
    let segs = segments(dir.path());
    let second_last = segs[segs.len() - 2].clone();
    let first =
        parse_segment_file_name(second_last.file_name().unwrap().to_str().unwrap()).unwrap();
    log.truncate(lid(1, first)).await.unwrap();
    assert!(!second_last.exists());
    want.truncate(first as usize - 1);
    assert_eq!(all(&mut log).await, want);
    append(&mut log, entries(first..=first + 2, 3)).await;
    want.extend(entries(first..=first + 2, 3));
    drop(log);
    let mut log = open(dir.path());
    assert_eq!(all(&mut log).await, want);

    // Everything.
    log.truncate(lid(1, 1)).await.unwrap();
    assert!(all(&mut log).await.is_empty());
    assert_eq!(state(&mut log).await.last_log_id, None);
    assert!(segments(dir.path()).is_empty());
    append(&mut log, entries(1..=3, 4)).await;
    drop(log);
    let mut log = open(dir.path());
    assert_eq!(all(&mut log).await, entries(1..=3, 4));
}

#[tokio::test]
async fn truncate_of_unwritten_entries_orders_with_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    // Appends queued without waiting, then a truncate into them, then
    // replacements: the writer must see them in this order.
    let (tx, rx) = mpsc::channel();
    for i in 1..=40 {
        let tx = tx.clone();
        log.append_with(vec![entry(i, 1)], move |r| tx.send((i, r.is_ok())).unwrap())
            .await
            .unwrap();
    }
    log.truncate(lid(1, 21)).await.unwrap();
    let mut want = entries(1..=20, 1);
    assert_eq!(all(&mut log).await, want);
    let replacements = entries(21..=30, 2);
    log.append_with(replacements.clone(), move |r| {
        tx.send((0, r.is_ok())).unwrap()
    })
    .await
    .unwrap();
    want.extend(replacements);
    assert_eq!(all(&mut log).await, want);
    let done: Vec<(u64, bool)> = (0..41)
        .map(|_| rx.recv_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    let mut order: Vec<u64> = (1..=40).collect();
    order.push(0);
    assert_eq!(
        done,
        order.into_iter().map(|i| (i, true)).collect::<Vec<_>>()
    );
    drop(log);
    let mut log = open(dir.path());
    assert_eq!(all(&mut log).await, want);
}

#[tokio::test]
async fn purge_deletes_covered_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    for i in 1..=100 {
        append(&mut log, vec![entry(i, 1)]).await;
    }
    let before = segments(dir.path());
    log.purge(lid(1, 60)).await.unwrap();
    let after = segments(dir.path());
    assert!(after.len() < before.len());
    // The first remaining segment holds 61; none before it survived.
    let first_left =
        parse_segment_file_name(after[0].file_name().unwrap().to_str().unwrap()).unwrap();
    assert!(first_left <= 61);
    let next_gone = before.iter().position(|p| *p == after[0]).unwrap();
    assert!(next_gone > 0);
    assert_eq!(all(&mut log).await, entries(61..=100, 1));
    assert_eq!(
        state(&mut log).await,
        LogState {
            last_purged_log_id: Some(lid(1, 60)),
            last_log_id: Some(lid(1, 100)),
        }
    );
    drop(log);
    let mut log = open(dir.path());
    assert_eq!(all(&mut log).await, entries(61..=100, 1));
    assert_eq!(state(&mut log).await.last_purged_log_id, Some(lid(1, 60)));

    // Beyond the end (after a snapshot install): no entries are left, and
    // the log goes on after the purged id.
    log.purge(lid(2, 150)).await.unwrap();
    assert!(segments(dir.path()).is_empty());
    assert!(all(&mut log).await.is_empty());
    assert_eq!(
        state(&mut log).await,
        LogState {
            last_purged_log_id: Some(lid(2, 150)),
            last_log_id: Some(lid(2, 150)),
        }
    );
    append(&mut log, entries(151..=155, 2)).await;
    drop(log);
    let mut log = open(dir.path());
    assert_eq!(all(&mut log).await, entries(151..=155, 2));
    assert_eq!(state(&mut log).await.last_purged_log_id, Some(lid(2, 150)));
}

#[tokio::test]
async fn leftovers_of_an_interrupted_purge_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    for i in 1..=100 {
        append(&mut log, vec![entry(i, 1)]).await;
    }
    drop(log);
    // As if the meta file was written and the crash came before deletion.
    let saved = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), saved.path());
    let mut log = open(dir.path());
    log.purge(lid(1, 60)).await.unwrap();
    drop(log);
    fs::copy(dir.path().join(META_FILE), saved.path().join(META_FILE)).unwrap();
    let mut log = open(saved.path());
    assert_eq!(all(&mut log).await, entries(61..=100, 1));
    assert_eq!(segments(saved.path()), {
        let mut v: Vec<PathBuf> = segments(dir.path())
            .iter()
            .map(|p| saved.path().join(p.file_name().unwrap()))
            .collect();
        v.sort();
        v
    });
}

#[tokio::test]
async fn vote_and_committed_round_trip_and_a_bad_meta_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = open(dir.path());
        assert_eq!(log.read_vote().await.unwrap(), None);
        assert_eq!(log.read_committed().await.unwrap(), None);
        append(&mut log, entries(1..=3, 1)).await;
        log.save_vote(&Vote::new(5, 2)).await.unwrap();
        log.save_committed(Some(lid(1, 2))).await.unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(5, 2)));
        assert_eq!(log.read_committed().await.unwrap(), Some(lid(1, 2)));
    }
    {
        let mut log = open(dir.path());
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(5, 2)));
        assert_eq!(log.read_committed().await.unwrap(), Some(lid(1, 2)));
        log.save_vote(&Vote::new_committed(6, 3)).await.unwrap();
    }
    let mut log = open(dir.path());
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(6, 3))
    );
    drop(log);
    let meta = dir.path().join(META_FILE);
    let good = fs::read(&meta).unwrap();
    for damage in [&good[..40], &[][..]] {
        fs::write(&meta, damage).unwrap();
        assert!(matches!(
            OpLog::open_with(dir.path(), small()),
            Err(OpLogError::Corrupt { .. })
        ));
    }
    let mut flipped = good.clone();
    flipped[20] ^= 4;
    fs::write(&meta, &flipped).unwrap();
    let err = OpLog::open_with(dir.path(), small()).err().unwrap();
    assert!(err.to_string().contains(META_FILE), "{err}");
}

#[tokio::test]
async fn concurrent_appends_share_fsyncs() {
    // Many appends in flight at once, as openraft issues them: each
    // returns before its entries are durable.
    let dir = tempfile::tempdir().unwrap();
    let mut log = OpLog::open(dir.path(), &MasterTuning::default()).unwrap();
    let n = 3000u64;
    let (tx, rx) = mpsc::channel();
    for i in 1..=n {
        let tx = tx.clone();
        log.append_with(vec![entry(i, 1)], move |r| tx.send((i, r.is_ok())).unwrap())
            .await
            .unwrap();
    }
    for i in 1..=n {
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), (i, true));
    }
    let st = log.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(st.records_appended.load(Relaxed), n);
    let syncs = st.data_fsyncs.load(Relaxed);
    let hist: u64 = st
        .batch_records_histogram
        .iter()
        .map(|b| b.load(Relaxed))
        .sum();
    assert_eq!(hist, st.batches.load(Relaxed));
    eprintln!(
        "{n} appends, {syncs} data fsyncs, {:.1} records per fsync",
        st.records_per_fsync()
    );
    // How much they share depends on the disk's fsync latency; the
    // deterministic check is the unit test `group_commit_*` (the writer
    // held while appends queue up).
    assert!(syncs <= n);
    assert_eq!(all(&mut log).await, entries(1..=n, 1));
}

// --- kill -9 -------------------------------------------------------------

const CHILD_DIR_ENV: &str = "RINGFS_OPLOG_CRASH_CHILD_DIR";
const CRASH_ROUNDS: usize = 3;
const ACKS_PER_ROUND: usize = 400;

/// The child's body (does nothing in a normal test run): appends without
/// waiting, printing `oplog-ack <index>` once an entry is durable, until killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = OpLogOptions {
            segment_bytes_max: 64 << 10,
            ..small()
        };
        let mut log = OpLog::open_with(Path::new(&dir), opts).unwrap();
        let start = state(&mut log).await.last_log_id.map_or(1, |l| l.index + 1);
        // Bounded: the parent kills the child long before this ends.
        for i in start..start + 10_000_000 {
            log.append_with(vec![entry(i, 1)], move |r| {
                if r.is_ok() {
                    // Straight to fd 1, past the test harness's capture.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "oplog-ack {i}");
                    let _ = out.flush();
                }
            })
            .await
            .unwrap();
        }
    });
}

#[test]
fn kill_9_loses_no_acknowledged_entry() {
    if std::env::var_os(CHILD_DIR_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked_max = 0u64;
    for round in 0..CRASH_ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    // A line cut by the kill is not trusted.
                    Ok(_) if !line.ends_with('\n') => break,
                    Ok(_) => {
                        // The harness may print on the same line first.
                        if let Some(at) = line.find("oplog-ack ") {
                            let i = line[at + "oplog-ack ".len()..].trim();
                            let _ = tx.send(i.parse::<u64>().unwrap());
                        }
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = 0;
        while seen < ACKS_PER_ROUND {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(i) => {
                    assert!(i > acked_max, "acks out of order: {i} after {acked_max}");
                    acked_max = i;
                    seen += 1;
                }
                Err(_) => break,
            }
        }
        // SIGKILL, to this child's pid only.
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        for i in rx.try_iter() {
            assert!(i > acked_max);
            acked_max = i;
            seen += 1;
        }
        assert!(seen > 0, "round {round}: the child acknowledged nothing");
        eprintln!("round {round}: killed after {seen} acks, up to index {acked_max}");

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut log = open(dir.path());
            let got = all(&mut log).await;
            assert!(
                got.len() as u64 >= acked_max,
                "round {round}: {} entries after the crash, {acked_max} acknowledged",
                got.len()
            );
            eprintln!("round {round}: {} entries after reopening", got.len());
            for (k, e) in got.iter().enumerate() {
                assert_eq!(*e, entry(k as u64 + 1, 1), "round {round}");
            }
        });
    }
}

// --- openraft's storage suite ---------------------------------------------

/// Just enough of a state machine for the suite: the applied id, the
/// membership, and snapshots that carry only their meta.
#[derive(Clone, Default)]
struct MiniSm {
    inner: Arc<Mutex<MiniSmState>>,
}

#[derive(Default)]
struct MiniSmState {
    applied: Option<LogId>,
    membership: StoredMembership<u64, BasicNode>,
    current: Option<(SnapshotMeta<u64, BasicNode>, fs::File)>,
}

fn snapshot_err(e: std::io::Error) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

impl MiniSm {
    fn current(&self) -> std::io::Result<Option<Snapshot<TypeConfig>>> {
        let s = self.inner.lock().unwrap();
        let Some((meta, f)) = &s.current else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(tokio::fs::File::from_std(f.try_clone()?)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MiniSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        {
            let mut s = self.inner.lock().unwrap();
            let meta = SnapshotMeta {
                last_log_id: s.applied,
                last_membership: s.membership.clone(),
                snapshot_id: format!("{:?}", s.applied),
            };
            s.current = Some((meta, tempfile::tempfile().map_err(snapshot_err)?));
        }
        Ok(self.current().map_err(snapshot_err)?.expect("just built"))
    }
}

impl RaftStateMachine<TypeConfig> for MiniSm {
    type SnapshotBuilder = MiniSm;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, BasicNode>), StorageError> {
        let s = self.inner.lock().unwrap();
        Ok((s.applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut s = self.inner.lock().unwrap();
        let mut out = Vec::new();
        for e in entries {
            s.applied = Some(e.log_id);
            if let EntryPayload::Membership(m) = &e.payload {
                s.membership = StoredMembership::new(Some(e.log_id), m.clone());
            }
            out.push(Applied {
                outcomes: Vec::new(),
                index: e.log_id.index,
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> MiniSm {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let f = tempfile::tempfile().map_err(snapshot_err)?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let f = snapshot.into_std().await;
        let mut s = self.inner.lock().unwrap();
        s.applied = meta.last_log_id;
        s.membership = meta.last_membership.clone();
        s.current = Some((meta.clone(), f));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.current().map_err(snapshot_err)
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, OpLog, MiniSm, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, OpLog, MiniSm), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let log = OpLog::open(dir.path(), &MasterTuning::default())
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
        Ok((dir, log, MiniSm::default()))
    }
}

/// openraft's whole storage suite (each case on a fresh log, in its own
/// runtime).
#[test]
fn openraft_storage_suite() {
    Suite::<TypeConfig, OpLog, MiniSm, Builder, tempfile::TempDir>::test_all(Builder).unwrap();
}

/// A torn tail that reaches the committed index saved in the meta file is
/// damage after acknowledgement: open refuses instead of cutting it. One
/// wholly past it is cut as before.
#[tokio::test]
async fn a_damaged_tail_at_or_below_committed_is_refused() {
    for (committed, refused) in [(12, true), (11, false), (5, false)] {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path());
            for i in 1..=12 {
                append(&mut log, vec![entry(i, 1)]).await;
            }
            log.save_committed(Some(lid(1, committed))).await.unwrap();
        }
        let seg = segments(dir.path()).pop().unwrap();
        let bytes = fs::read(&seg).unwrap();
        let last = *scan_segment(&bytes).unwrap().records.last().unwrap();
        assert_eq!(last.index, 12);
        let cut = last.offset + 10;
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        match OpLog::open_with(dir.path(), small()) {
            Err(OpLogError::Corrupt { path, reason, .. }) if refused => {
                assert_eq!(path, seg);
                assert!(
                    reason.contains("committed entries 12..=12"),
                    "committed {committed}: {reason}"
                );
                // Nothing was cut: a restore from a peer sees what was there.
                assert_eq!(fs::metadata(&seg).unwrap().len(), cut);
            }
            Ok(mut log) if !refused => {
                assert_eq!(all(&mut log).await, entries(1..=11, 1));
                assert_eq!(fs::metadata(&seg).unwrap().len(), last.offset);
                assert_eq!(log.read_committed().await.unwrap(), Some(lid(1, committed)));
            }
            Err(e) => panic!("committed {committed}: {e}"),
            Ok(_) => panic!("committed {committed}: a committed entry was cut"),
        }
    }
}
