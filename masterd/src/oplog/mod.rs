//! The op log: openraft's log store (`RaftLogStorage`, storage-v2) on
//! local files. Format and crash-safety argument:
//! `docs/design/010-op-log-format.md`.
//!
//! - Entries go to segment files `<first index:020>.seg` in one directory,
//!   as CRC-framed records whose payload is the postcard `Entry`.
//! - `append` serialises the entries, puts them in an in-memory tail cache
//!   (so they are readable at once) and queues them for the writer thread,
//!   which group-commits: one write and one `fdatasync` for everything
//!   queued, then the completions in order (`writer.rs`).
//! - `truncate`, `purge` and `save_vote` go through the same queue, so they
//!   are ordered with the appends before them, and return once durable.
//! - The vote, the committed id and the last purged id live in
//!   `oplog.meta`, replaced atomically (`meta.rs`).
//! - `open` scans every segment, cuts a torn tail off the last one and
//!   refuses damage anywhere else (`recovery.rs`).
//!
//! Reads of entries that have left the cache `pread` the segment files,
//! from the async methods directly: they are rare (lagging followers,
//! re-applying after a restart) and served from the page cache.

pub mod format;
pub mod meta;
mod recovery;
mod state;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, StorageIOError};
use ringfs_wire::config::MasterTuning;
use tokio::sync::{Semaphore, oneshot};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use format::RECORD_PAYLOAD_BYTES_MAX;
pub use format::SEGMENT_BYTES_MAX;
use state::{Cached, Mem, Shared};
use writer::{AppendCmd, Cmd, Permits, Record, Writer};

/// Commands (appends, truncates, purges, votes, committed ids) queued for
/// the writer at most. An appender past it waits.
pub const WRITER_QUEUE_BATCHES_MAX: usize = 1024;
/// Entry bytes queued for the writer at most: bounds the memory held by
/// entries that are not durable yet (the cache keeps each of them too).
pub const WRITER_QUEUE_BYTES_MAX: u64 = 64 << 20;
/// Default bound on the tail cache's payload bytes. Entries not yet written
/// stay cached regardless, so the cache can exceed this by up to
/// `WRITER_QUEUE_BYTES_MAX`.
pub const CACHE_BYTES_MAX: u64 = 32 << 20;
/// Default bound on the tail cache's entry count.
pub const CACHE_ENTRIES_MAX: usize = 64 * 1024;
/// `limited_get_log_entries` stops after this many payload bytes: one
/// AppendEntries must go and come back within openraft's deadline for it,
/// the heartbeat interval (`raft_heartbeat_interval_ms`, 50 ms by default),
/// on a loaded host too. Past it the request is dropped and sent again on
/// a new connection (note 020).
pub const LIMITED_READ_BYTES_MAX: u64 = 1 << 20;
/// A changed committed id reaches the meta file within this long.
pub const COMMITTED_SAVE_INTERVAL_MS: u64 = 100;
/// Batches are counted by record count in power-of-two buckets.
pub const BATCH_HISTOGRAM_BUCKETS: usize = 16;
/// Held locked (flock) while the log is open.
pub const LOCK_FILE: &str = "LOCK";
/// Largest accepted `segment_bytes_max`: record offsets are kept in a u32.
pub const SEGMENT_BYTES_LIMIT: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum OpLogError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Damage that recovery must not repair by dropping records.
    #[error("{} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("gap in the op log: {} starts at index {found}, expected {expected}", path.display())]
    Gap {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{} is in use by another process", path.display())]
    Locked { path: PathBuf },
    #[error("entry {index}: {reason}")]
    BadEntry { index: u64, reason: String },
    #[error("invalid option: {0}")]
    BadOption(String),
    /// The writer hit an I/O error earlier; the log takes no more writes.
    #[error("op log failed earlier: {0}")]
    Failed(String),
    #[error("op log bug: {0}")]
    Internal(String),
}

/// Counters, updated by the writer with relaxed atomics.
#[derive(Debug, Default)]
pub struct OpLogStats {
    /// Records made durable.
    pub records_appended: AtomicU64,
    /// Record bytes (headers and payloads) written.
    pub bytes_appended: AtomicU64,
    /// Group commits that wrote records.
    pub batches: AtomicU64,
    /// `fdatasync`s of record data: one per batch, one more when a batch
    /// rolls to a new segment. `records_appended / data_fsyncs` is the
    /// records per fsync.
    pub data_fsyncs: AtomicU64,
    /// Every other fsync: segment headers, the directory, the meta file,
    /// truncation.
    pub other_fsyncs: AtomicU64,
    pub last_batch_records: AtomicU64,
    /// The newest committed index openraft reported (in memory; on a
    /// follower, the leader's commit index as last heard).
    pub committed_index: AtomicU64,
    /// Bucket k counts batches of 2^k to 2^(k+1) - 1 records; the last
    /// bucket is open-ended.
    pub batch_records_histogram: [AtomicU64; BATCH_HISTOGRAM_BUCKETS],
    /// Segment bytes on disk, headers included.
    pub log_bytes_on_disk: AtomicU64,
    pub segments: AtomicU64,
}

impl OpLogStats {
    /// Records per data fsync so far (0 before the first).
    pub fn records_per_fsync(&self) -> f64 {
        let syncs = self.data_fsyncs.load(Relaxed);
        if syncs == 0 {
            return 0.0;
        }
        self.records_appended.load(Relaxed) as f64 / syncs as f64
    }
}

/// How the log is sized. `OpLog::open` takes these from the config;
/// tests shrink them to exercise rolls and cache misses.
#[derive(Clone, Debug)]
pub struct OpLogOptions {
    /// Start a new segment once the next record would take the current
    /// one past this (a larger record still gets a segment of its own).
    pub segment_bytes_max: u64,
    /// One group commit writes at most this many entry bytes (one append
    /// larger than this is written alone).
    pub group_commit_max_bytes: u64,
    pub cache_bytes_max: u64,
    pub cache_entries_max: usize,
}

impl OpLogOptions {
    pub fn from_tuning(t: &MasterTuning) -> OpLogOptions {
        OpLogOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX,
            group_commit_max_bytes: t.group_commit_max_bytes.clamp(1, WRITER_QUEUE_BYTES_MAX),
            cache_bytes_max: CACHE_BYTES_MAX,
            cache_entries_max: CACHE_ENTRIES_MAX,
        }
    }
}

/// The log store. Owned by openraft's core; hands out [`OpLogReader`]s.
pub struct OpLog {
    shared: Arc<Shared>,
    /// Unbounded by type, bounded by the two semaphores below, which an
    /// appender awaits: a bounded std channel would block the runtime's
    /// thread instead of yielding it.
    tx: mpsc::Sender<Cmd>,
    queue_batches: Arc<Semaphore>,
    queue_bytes: Arc<Semaphore>,
    writer: Option<JoinHandle<()>>,
    /// The last seq handed out; commands are numbered from 1.
    seq: u64,
    vote: Option<Vote>,
    committed: Option<LogId>,
    _lock: File,
}

/// A read handle for replication tasks; cheap to clone.
#[derive(Clone)]
pub struct OpLogReader {
    shared: Arc<Shared>,
}

impl OpLog {
    /// Opens (creating if needed) the log in `dir` (`<data>/oplog`), with
    /// the group-commit bound from `tuning`. Recovers from a crash: a torn
    /// tail of the last segment is cut off (with a warning); damage
    /// anywhere else, or a missing segment, is an error.
    pub fn open(dir: &Path, tuning: &MasterTuning) -> Result<OpLog, OpLogError> {
        OpLog::open_with(dir, OpLogOptions::from_tuning(tuning))
    }

    pub fn open_with(dir: &Path, opts: OpLogOptions) -> Result<OpLog, OpLogError> {
        if opts.segment_bytes_max == 0 || opts.segment_bytes_max > SEGMENT_BYTES_LIMIT {
            return Err(OpLogError::BadOption(format!(
                "segment_bytes_max {} not in 1..={SEGMENT_BYTES_LIMIT}",
                opts.segment_bytes_max
            )));
        }
        if opts.group_commit_max_bytes == 0 {
            return Err(OpLogError::BadOption("group_commit_max_bytes is 0".into()));
        }
        let stats = Arc::new(OpLogStats::default());
        let r = recovery::recover(dir, &stats)?;
        let next = r.last_log_id.map(|l| l.index + 1);
        let after_purged = r.meta.purged.map(|p| p.index + 1);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            mem: Mutex::new(Mem {
                last_log_id: r.last_log_id,
                purged: r.meta.purged,
                cache: VecDeque::new(),
                cache_first: next.max(after_purged).unwrap_or(0),
                cache_bytes: 0,
                written_seq: 0,
                disk_first: r.disk_first,
                locs: r.locs,
                segments: r.segments,
                cache_bytes_max: opts.cache_bytes_max,
                cache_entries_max: opts.cache_entries_max,
            }),
            stats,
            failed: OnceLock::new(),
            #[cfg(test)]
            hold: (Mutex::new(false), std::sync::Condvar::new()),
        });
        let (tx, rx) = mpsc::channel();
        let w = Writer::new(
            shared.clone(),
            rx,
            r.dir_file,
            r.meta,
            opts.segment_bytes_max,
            opts.group_commit_max_bytes,
        );
        let writer = std::thread::Builder::new()
            .name("oplog-writer".into())
            .spawn(move || w.run())
            .map_err(|source| OpLogError::Io {
                op: "spawn the writer for",
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(OpLog {
            shared,
            tx,
            queue_batches: Arc::new(Semaphore::new(WRITER_QUEUE_BATCHES_MAX)),
            queue_bytes: Arc::new(Semaphore::new(WRITER_QUEUE_BYTES_MAX as usize)),
            writer: Some(writer),
            seq: 0,
            vote: r.meta.vote,
            committed: r.meta.committed,
            _lock: r.lock,
        })
    }

    pub fn stats(&self) -> Arc<OpLogStats> {
        self.shared.stats.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn reader(&self) -> OpLogReader {
        OpLogReader {
            shared: self.shared.clone(),
        }
    }

    /// The entries `start..end` that exist (purged and future ones do not).
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, OpLogError> {
        self.shared.read(start, end, None)
    }

    async fn permits(&self, bytes: u64) -> Result<Permits, OpLogError> {
        let closed = |_| OpLogError::Internal("writer queue closed".into());
        let batches = self
            .queue_batches
            .clone()
            .acquire_owned()
            .await
            .map_err(closed)?;
        let bytes = match bytes.min(WRITER_QUEUE_BYTES_MAX) {
            0 => None,
            // Fits: WRITER_QUEUE_BYTES_MAX is below u32::MAX.
            n => Some(
                self.queue_bytes
                    .clone()
                    .acquire_many_owned(n as u32)
                    .await
                    .map_err(closed)?,
            ),
        };
        Ok(Permits {
            _batches: batches,
            _bytes: bytes,
        })
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn send(&self, cmd: Cmd) -> Result<(), OpLogError> {
        self.tx
            .send(cmd)
            .map_err(|_| OpLogError::Internal("the writer thread is gone".into()))
    }

    async fn wait(rx: oneshot::Receiver<Result<(), OpLogError>>) -> Result<(), OpLogError> {
        rx.await
            .map_err(|_| OpLogError::Internal("the writer thread dropped a reply".into()))?
    }

    /// Appends `entries` (whose indexes must follow the last entry, or the
    /// purged one) and returns once they are readable; `done` runs on the
    /// writer thread once they are durable, after the `done`s of earlier
    /// appends. openraft's `append` is this with its callback.
    pub async fn append_with<I>(
        &mut self,
        entries: I,
        done: impl FnOnce(io::Result<()>) + Send + 'static,
    ) -> Result<(), OpLogError>
    where
        I: IntoIterator<Item = Entry>,
    {
        self.shared.check_failed()?;
        let mut entries: Vec<Entry> = entries.into_iter().collect();
        let (mut next, purged, last) = {
            let mem = self.shared.lock();
            (mem.next_index(), mem.purged, mem.last_log_id)
        };
        // openraft's start-up clean-up purges past the end of a log that
        // lags its snapshot; an entry at or below that point, appended to
        // the empty log, is already covered by the snapshot and is dropped.
        if let Some(p) = purged
            && last.is_none_or(|l| l.index <= p.index)
        {
            let covered = entries
                .iter()
                .take_while(|e| e.log_id.index <= p.index)
                .count();
            if covered > 0 {
                tracing::debug!(
                    "op log: dropping {covered} appended entries at or below purged {p}"
                );
                entries.drain(..covered);
            }
        }
        for e in &entries {
            if let Some(n) = next {
                assert_eq!(
                    e.log_id.index, n,
                    "op log append: index {} does not follow {}",
                    e.log_id.index, n
                );
            }
            next = Some(e.log_id.index + 1);
        }
        let mut records = Vec::with_capacity(entries.len());
        let mut bytes = 0u64;
        for e in &entries {
            let bad = |reason: String| OpLogError::BadEntry {
                index: e.log_id.index,
                reason,
            };
            let payload = postcard::to_allocvec(e).map_err(|x| bad(x.to_string()))?;
            if payload.len() > RECORD_PAYLOAD_BYTES_MAX {
                return Err(bad(format!(
                    "{} bytes encoded, more than {RECORD_PAYLOAD_BYTES_MAX}",
                    payload.len()
                )));
            }
            bytes += payload.len() as u64;
            records.push(Record {
                index: e.log_id.index,
                term: e.log_id.leader_id.term,
                node_id: e.log_id.leader_id.node_id,
                payload,
            });
        }
        let permits = self.permits(bytes).await?;
        let seq = self.next_seq();
        {
            let mut mem = self.shared.lock();
            if let Some(first) = entries.first()
                && mem.cache.is_empty()
            {
                // Normally already equal; differs only for the first entry
                // of a log that may start anywhere.
                mem.cache_first = first.log_id.index;
            }
            for (e, r) in entries.into_iter().zip(&records) {
                mem.last_log_id = Some(e.log_id);
                let bytes = r.payload.len() as u64;
                mem.cache_bytes += bytes;
                mem.cache.push_back(Cached {
                    entry: e,
                    seq,
                    bytes,
                });
            }
            mem.evict();
        }
        self.send(Cmd::Append(AppendCmd {
            seq,
            records,
            bytes,
            done: Box::new(done),
            _permits: permits,
        }))
    }

    /// Removes entries `index..`; durable on return.
    pub async fn truncate_from(&mut self, index: u64) -> Result<(), OpLogError> {
        self.shared.check_failed()?;
        let purged = self.shared.lock().purged;
        if let Some(p) = purged
            && index <= p.index
        {
            return Err(OpLogError::Internal(format!(
                "truncate at {index}, at or below the purged {p}"
            )));
        }
        let prev = match index.checked_sub(1) {
            Some(i) => self.shared.read(i, index, None)?.pop().map(|e| e.log_id),
            None => None,
        };
        let permits = self.permits(0).await?;
        let seq = self.next_seq();
        {
            let mut mem = self.shared.lock();
            if mem.last_log_id.is_some_and(|l| l.index >= index) {
                mem.last_log_id = prev;
            }
            if index < mem.cache_first {
                mem.cache.clear();
                mem.cache_bytes = 0;
                mem.cache_first = index;
            } else {
                let keep = (index - mem.cache_first) as usize;
                while mem.cache.len() > keep {
                    let c = mem.cache.pop_back().expect("longer than keep");
                    mem.cache_bytes -= c.bytes;
                }
            }
        }
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Truncate {
            seq,
            index,
            reply,
            _permits: permits,
        })?;
        Self::wait(rx).await
    }

    /// Drops entries up to and including `log_id`; durable on return.
    pub async fn purge_upto(&mut self, log_id: LogId) -> Result<(), OpLogError> {
        self.shared.check_failed()?;
        let permits = self.permits(0).await?;
        let seq = self.next_seq();
        {
            let mut mem = self.shared.lock();
            if mem.purged.is_some_and(|p| p.index >= log_id.index) {
                return Ok(());
            }
            mem.purged = Some(log_id);
            while mem
                .cache
                .front()
                .is_some_and(|c| c.entry.log_id.index <= log_id.index)
            {
                let c = mem.cache.pop_front().expect("checked");
                mem.cache_bytes -= c.bytes;
                mem.cache_first += 1;
            }
            if mem.cache.is_empty() {
                mem.cache_first = mem.cache_first.max(log_id.index + 1);
            }
        }
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Purge {
            seq,
            log_id,
            reply,
            _permits: permits,
        })?;
        Self::wait(rx).await
    }

    fn log_state(&self) -> LogState<TypeConfig> {
        let mem = self.shared.lock();
        LogState {
            last_purged_log_id: mem.purged,
            last_log_id: mem.last_or_purged(),
        }
    }
}

impl Drop for OpLog {
    /// Lets the writer finish what is queued (completions run), persist
    /// the committed id, and exit.
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Shutdown);
        if let Some(w) = self.writer.take()
            && w.join().is_err()
        {
            tracing::error!("op log writer panicked");
        }
    }
}

fn range_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

fn read_err(e: OpLogError) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: OpLogError) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl OpLogReader {
    /// The id of the last entry appended (durable or not), or of the last
    /// purged one when that is later: what openraft calls the last log id.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.shared.lock().last_or_purged()
    }
}

impl RaftLogReader<TypeConfig> for OpLogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_bounds(&range);
        self.shared.read(start, end, None).map_err(read_err)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.shared
            .read(start, end, Some(LIMITED_READ_BYTES_MAX))
            .map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for OpLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_bounds(&range);
        self.shared.read(start, end, None).map_err(read_err)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.shared
            .read(start, end, Some(LIMITED_READ_BYTES_MAX))
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for OpLog {
    type LogReader = OpLogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(self.log_state())
    }

    async fn get_log_reader(&mut self) -> OpLogReader {
        self.reader()
    }

    /// Durable on return, and after every append issued before it.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let r: Result<(), OpLogError> = async {
            self.shared.check_failed()?;
            let permits = self.permits(0).await?;
            let seq = self.next_seq();
            let (reply, rx) = oneshot::channel();
            self.send(Cmd::SaveVote {
                seq,
                vote: *vote,
                reply,
                _permits: permits,
            })?;
            Self::wait(rx).await
        }
        .await;
        r.map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote)
    }

    /// Returns at once; the writer persists the newest value within
    /// `COMMITTED_SAVE_INTERVAL_MS` and at shutdown. openraft needs no
    /// more: a committed id read back lower than the last one saved only
    /// means re-applying fewer entries at start-up.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let r: Result<(), OpLogError> = async {
            self.shared.check_failed()?;
            let permits = self.permits(0).await?;
            let seq = self.next_seq();
            self.send(Cmd::SaveCommitted {
                seq,
                committed,
                _permits: permits,
            })
        }
        .await;
        r.map_err(write_err)?;
        self.committed = committed;
        self.shared
            .stats
            .committed_index
            .fetch_max(committed.map_or(0, |c| c.index), Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        self.append_with(entries, move |r| callback.log_io_completed(r))
            .await
            .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.truncate_from(log_id.index).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purge_upto(log_id).await.map_err(write_err)
    }
}
