//! Tests that need to hold the writer still (`Shared::hold`), to make
//! group commit and the writer's ordering deterministic.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::Duration;

use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::types::Proposal;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Proposal::default()),
    }
}

fn opts() -> OpLogOptions {
    OpLogOptions {
        segment_bytes_max: 4096,
        group_commit_max_bytes: 1 << 20,
        cache_bytes_max: 0,
        cache_entries_max: 0,
    }
}

fn hold(log: &OpLog, on: bool) {
    *log.shared.hold.0.lock().unwrap() = on;
    log.shared.hold.1.notify_all();
}

/// Appends `first..=last`, one append each, without waiting; completions
/// report `(index, ok)` on the returned channel.
async fn append_each(
    log: &mut OpLog,
    first: u64,
    last: u64,
    term: u64,
) -> mpsc::Receiver<(u64, bool)> {
    let (tx, rx) = mpsc::channel();
    for i in first..=last {
        let tx = tx.clone();
        log.append_with([entry(i, term)], move |r| {
            let _ = tx.send((i, r.is_ok()));
        })
        .await
        .unwrap();
    }
    rx
}

fn expect_done(rx: &mpsc::Receiver<(u64, bool)>, first: u64, last: u64) {
    for i in first..=last {
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok((i, true)));
    }
}

#[tokio::test]
async fn group_commit_one_fsync_for_everything_queued() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = OpLog::open_with(
        dir.path(),
        OpLogOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            ..opts()
        },
    )
    .unwrap();
    let n = 1000u64;
    assert!(n < WRITER_QUEUE_BATCHES_MAX as u64);
    hold(&log, true);
    let rx = append_each(&mut log, 1, n, 1).await;
    // Readable before anything is durable.
    assert_eq!(log.entries(0, u64::MAX).unwrap().len() as u64, n);
    assert!(rx.try_recv().is_err());
    hold(&log, false);
    expect_done(&rx, 1, n);
    let st = log.stats();
    assert_eq!(st.records_appended.load(Relaxed), n);
    // The writer took the first append, waited at the hold while the rest
    // queued, then wrote them all with one fdatasync.
    assert_eq!(st.data_fsyncs.load(Relaxed), 1);
    assert_eq!(st.batches.load(Relaxed), 1);
    assert_eq!(st.last_batch_records.load(Relaxed), n);
    assert_eq!(st.batch_records_histogram[9].load(Relaxed), 1); // 512..1023
    assert_eq!(st.records_per_fsync(), n as f64);
    assert_eq!(log.entries(0, u64::MAX).unwrap().len() as u64, n);
}

#[tokio::test]
async fn group_commit_splits_at_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let one = postcard::to_allocvec(&entry(1, 1)).unwrap().len() as u64;
    let mut log = OpLog::open_with(
        dir.path(),
        OpLogOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            group_commit_max_bytes: 10 * one,
            ..opts()
        },
    )
    .unwrap();
    hold(&log, true);
    let rx = append_each(&mut log, 1, 95, 1).await;
    hold(&log, false);
    expect_done(&rx, 1, 95);
    let st = log.stats();
    assert_eq!(st.batches.load(Relaxed), 10);
    assert_eq!(st.data_fsyncs.load(Relaxed), 10);
    assert_eq!(st.last_batch_records.load(Relaxed), 5);
}

#[tokio::test]
async fn a_batch_spanning_segment_rolls_reads_back_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = OpLog::open_with(dir.path(), opts()).unwrap();
    hold(&log, true);
    let rx = append_each(&mut log, 1, 300, 1).await;
    hold(&log, false);
    expect_done(&rx, 1, 300);
    let st = log.stats();
    assert!(st.segments.load(Relaxed) > 3);
    assert_eq!(st.batches.load(Relaxed), 1);
    // One fdatasync per segment the batch touched: each is sealed before
    // the next exists.
    assert_eq!(st.data_fsyncs.load(Relaxed), st.segments.load(Relaxed));
    let want: Vec<Entry> = (1..=300).map(|i| entry(i, 1)).collect();
    assert_eq!(log.entries(0, 1000).unwrap(), want);
    drop(log);
    let log = OpLog::open_with(dir.path(), opts()).unwrap();
    assert_eq!(log.entries(0, 1000).unwrap(), want);
}

#[tokio::test]
async fn unwritten_entries_stay_cached_across_truncate_and_reappend() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = OpLog::open_with(dir.path(), opts()).unwrap();
    let rx = append_each(&mut log, 1, 10, 1).await;
    expect_done(&rx, 1, 10);
    hold(&log, true);
    // Queued behind the hold: 11..=20, then (after the truncate below)
    // 15..=17 of term 2, then 16..=18 of term 3.
    let rx1 = append_each(&mut log, 11, 20, 1).await;
    let releaser = std::thread::spawn({
        let shared = log.shared.clone();
        move || {
            std::thread::sleep(Duration::from_millis(50));
            *shared.hold.0.lock().unwrap() = false;
            shared.hold.1.notify_all();
        }
    });
    log.truncate_from(15).await.unwrap();
    releaser.join().unwrap();
    expect_done(&rx1, 11, 20);
    hold(&log, true);
    let rx2 = append_each(&mut log, 15, 17, 2).await;
    // With a zero cache bound, nothing written may be served from a stale
    // disk index: 15..17 come from the cache until written.
    let mut want: Vec<Entry> = (1..=14).map(|i| entry(i, 1)).collect();
    want.extend((15..=17).map(|i| entry(i, 2)));
    assert_eq!(log.entries(0, 100).unwrap(), want);
    let releaser = std::thread::spawn({
        let shared = log.shared.clone();
        move || {
            std::thread::sleep(Duration::from_millis(50));
            *shared.hold.0.lock().unwrap() = false;
            shared.hold.1.notify_all();
        }
    });
    log.truncate_from(16).await.unwrap();
    releaser.join().unwrap();
    expect_done(&rx2, 15, 17);
    let rx3 = append_each(&mut log, 16, 18, 3).await;
    expect_done(&rx3, 16, 18);
    want.truncate(15);
    want.extend((16..=18).map(|i| entry(i, 3)));
    assert_eq!(log.entries(0, 100).unwrap(), want);
    {
        let mem = log.shared.lock();
        assert!(mem.cache.is_empty(), "everything written was evicted");
        assert_eq!(mem.disk_first + mem.locs.len() as u64, 19);
    }
    drop(log);
    let log = OpLog::open_with(dir.path(), opts()).unwrap();
    assert_eq!(log.entries(0, 100).unwrap(), want);
}

#[tokio::test]
async fn the_cache_keeps_recent_entries_within_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = OpLog::open_with(
        dir.path(),
        OpLogOptions {
            cache_entries_max: 7,
            cache_bytes_max: 1 << 20,
            ..opts()
        },
    )
    .unwrap();
    let rx = append_each(&mut log, 1, 50, 1).await;
    expect_done(&rx, 1, 50);
    // Eviction runs when the writer finishes a command.
    let mem = log.shared.lock();
    assert_eq!(mem.cache.len(), 7);
    assert_eq!(mem.cache_first, 44);
}

#[tokio::test]
async fn an_empty_append_completes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = OpLog::open_with(dir.path(), opts()).unwrap();
    hold(&log, true);
    let rx = append_each(&mut log, 1, 3, 1).await;
    let (tx, rx_empty) = mpsc::channel();
    log.append_with(Vec::new(), move |r| tx.send(r.is_ok()).unwrap())
        .await
        .unwrap();
    hold(&log, false);
    expect_done(&rx, 1, 3);
    assert_eq!(rx_empty.recv_timeout(Duration::from_secs(30)), Ok(true));
}
