//! The writer thread: the only code that changes segment files and the
//! meta file. Commands arrive in the order the appender issued them and are
//! carried out in that order, so a truncate, purge or vote never overtakes
//! an append issued before it (openraft requires log and vote I/O to be
//! serialised).
//!
//! Group commit: the writer takes one command, then everything else already
//! queued, up to `group_commit_max_bytes` of appends; writes the records
//! with one `pwrite` and makes them durable with one `fdatasync`; then
//! calls each append's completion, in order. It does not wait for more:
//! appends that arrive during an fdatasync form the next batch, so the
//! batch grows with the load, and a lone append is never delayed. See
//! `docs/design/010-op-log-format.md` for why `group_commit_max_delay_us`
//! is not used here.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::format::{
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, encode_record, encode_segment_header,
    segment_file_name,
};
use super::meta::{self, MetaState};
use super::state::{Loc, Segment, Shared};
use super::{BATCH_HISTOGRAM_BUCKETS, COMMITTED_SAVE_INTERVAL_MS, OpLogError};
use crate::types::{LogId, Vote};

/// One entry, serialised by the appender.
pub(super) struct Record {
    pub index: u64,
    pub term: u64,
    pub node_id: u64,
    pub payload: Vec<u8>,
}

pub(super) type Done = Box<dyn FnOnce(io::Result<()>) + Send>;
pub(super) type Reply = oneshot::Sender<Result<(), OpLogError>>;

/// Holds the command's share of the queue bounds until it is carried out.
pub(super) struct Permits {
    pub _batches: OwnedSemaphorePermit,
    pub _bytes: Option<OwnedSemaphorePermit>,
}

pub(super) struct AppendCmd {
    pub seq: u64,
    pub records: Vec<Record>,
    pub bytes: u64,
    pub done: Done,
    pub _permits: Permits,
}

pub(super) enum Cmd {
    Append(AppendCmd),
    Truncate {
        seq: u64,
        index: u64,
        reply: Reply,
        _permits: Permits,
    },
    Purge {
        seq: u64,
        log_id: LogId,
        reply: Reply,
        _permits: Permits,
    },
    SaveVote {
        seq: u64,
        vote: Vote,
        reply: Reply,
        _permits: Permits,
    },
    /// No reply: the value is persisted lazily (see `save_committed`).
    SaveCommitted {
        seq: u64,
        committed: Option<LogId>,
        _permits: Permits,
    },
    Shutdown,
}

/// The segment records are appended to.
struct Active {
    first_index: u64,
    file: Arc<File>,
    len: u64,
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Cmd>,
    dir_file: File,
    active: Option<Active>,
    meta: MetaState,
    /// `meta.committed` changed since the meta file was last written.
    committed_dirty: bool,
    meta_written_at: Instant,
    buf: Vec<u8>,
    segment_bytes_max: u64,
    group_commit_max_bytes: u64,
}

fn io_err(op: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> OpLogError {
    let path = path.to_path_buf();
    move |source| OpLogError::Io { op, path, source }
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        rx: Receiver<Cmd>,
        dir_file: File,
        meta: MetaState,
        segment_bytes_max: u64,
        group_commit_max_bytes: u64,
    ) -> Writer {
        // The last segment, if any, is where the next record goes: recovery
        // left it ending at its last valid record.
        let active = {
            let mem = shared.lock();
            mem.segments
                .iter()
                .next_back()
                .map(|(&first_index, s)| Active {
                    first_index,
                    file: s.file.clone(),
                    len: s.len,
                })
        };
        Writer {
            shared,
            rx,
            dir_file,
            active,
            meta,
            committed_dirty: false,
            meta_written_at: Instant::now(),
            buf: Vec::new(),
            segment_bytes_max,
            group_commit_max_bytes,
        }
    }

    pub fn run(mut self) {
        let mut carry: Option<Cmd> = None;
        loop {
            let cmd = match carry.take() {
                Some(c) => c,
                None => match self.recv() {
                    Some(c) => c,
                    None => break,
                },
            };
            self.shared.wait_while_held();
            match cmd {
                Cmd::Append(first) => {
                    let batch = self.gather(first, &mut carry);
                    self.append_batch(batch);
                }
                Cmd::Truncate {
                    seq, index, reply, ..
                } => {
                    let r = self.guarded(|w| w.truncate(index));
                    self.finish(seq);
                    let _ = reply.send(r);
                }
                Cmd::Purge {
                    seq, log_id, reply, ..
                } => {
                    let r = self.guarded(|w| w.purge(log_id));
                    self.finish(seq);
                    let _ = reply.send(r);
                }
                Cmd::SaveVote {
                    seq, vote, reply, ..
                } => {
                    let r = self.guarded(|w| {
                        w.meta.vote = Some(vote);
                        w.write_meta()
                    });
                    self.finish(seq);
                    let _ = reply.send(r);
                }
                Cmd::SaveCommitted { seq, committed, .. } => {
                    self.note_committed(committed);
                    self.finish(seq);
                }
                Cmd::Shutdown => break,
            }
            self.save_committed_if_due(false);
        }
        self.save_committed_if_due(true);
    }

    /// The next command; while a committed id waits to be persisted, wakes
    /// up in time to persist it when nothing else comes.
    fn recv(&mut self) -> Option<Cmd> {
        loop {
            if !self.committed_dirty {
                return self.rx.recv().ok();
            }
            let due = self.meta_written_at + Duration::from_millis(COMMITTED_SAVE_INTERVAL_MS);
            match self
                .rx
                .recv_timeout(due.saturating_duration_since(Instant::now()))
            {
                Ok(c) => return Some(c),
                Err(RecvTimeoutError::Timeout) => self.save_committed_if_due(false),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// `first` plus the appends queued behind it, up to the byte bound. A
    /// committed id queued among them is absorbed (persisting it after the
    /// batch only makes it later, never earlier than the entries it
    /// covers); any other command ends the batch.
    fn gather(&mut self, first: AppendCmd, carry: &mut Option<Cmd>) -> Vec<AppendCmd> {
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while bytes < self.group_commit_max_bytes {
            match self.rx.try_recv() {
                Ok(Cmd::Append(a)) if bytes + a.bytes <= self.group_commit_max_bytes => {
                    bytes += a.bytes;
                    batch.push(a);
                }
                // Its seq needs no `finish`: only appends' seqs gate the cache.
                Ok(Cmd::SaveCommitted { committed, .. }) => self.note_committed(committed),
                Ok(other) => {
                    *carry = Some(other);
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        batch
    }

    fn note_committed(&mut self, committed: Option<LogId>) {
        if self.meta.committed != committed {
            self.meta.committed = committed;
            self.committed_dirty = true;
        }
    }

    /// Runs `f` unless the log has failed; an error fails the log.
    fn guarded(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), OpLogError>,
    ) -> Result<(), OpLogError> {
        self.shared.check_failed()?;
        let r = f(self);
        if let Err(e) = &r {
            self.shared.fail(e.to_string());
        }
        r
    }

    /// Marks command `seq` carried out (lets the cache drop what it wrote).
    fn finish(&self, seq: u64) {
        let mut mem = self.shared.lock();
        mem.written_seq = mem.written_seq.max(seq);
        mem.evict();
    }

    fn append_batch(&mut self, batch: Vec<AppendCmd>) {
        let last_seq = batch.last().map_or(0, |a| a.seq);
        let records: usize = batch.iter().map(|a| a.records.len()).sum();
        let r = self.guarded(|w| w.write_batch(&batch));
        // After a failure the entries stay cached: they are not on disk.
        if r.is_ok() {
            self.finish(last_seq);
        }
        if r.is_ok() && records > 0 {
            let st = &self.shared.stats;
            st.batches.fetch_add(1, Relaxed);
            st.records_appended.fetch_add(records as u64, Relaxed);
            st.last_batch_records.store(records as u64, Relaxed);
            let bucket = (usize::BITS - 1 - records.leading_zeros()) as usize;
            st.batch_records_histogram[bucket.min(BATCH_HISTOGRAM_BUCKETS - 1)]
                .fetch_add(1, Relaxed);
        }
        let why = r.err().map(|e| e.to_string());
        for a in batch {
            (a.done)(match &why {
                None => Ok(()),
                Some(w) => Err(io::Error::other(w.clone())),
            });
        }
    }

    fn write_batch(&mut self, batch: &[AppendCmd]) -> Result<(), OpLogError> {
        let mut new_locs: Vec<(u64, Loc)> = Vec::new();
        self.buf.clear();
        // First index of the current write: the batch mark of its records.
        let mut write_first: Option<u64> = None;
        for r in batch.iter().flat_map(|a| &a.records) {
            let rec_bytes = (RECORD_HEADER_BYTES + r.payload.len()) as u64;
            if let Some(a) = &self.active {
                let used = a.len + self.buf.len() as u64;
                if used > SEGMENT_HEADER_BYTES as u64 && used + rec_bytes > self.segment_bytes_max {
                    // Seal before the next segment exists, so a segment
                    // that has a successor is always complete on disk.
                    self.flush_buf()?;
                    self.sync_active()?;
                    self.active = None;
                }
            }
            if self.active.is_none() {
                self.create_segment(r.index)?;
                write_first = None;
            }
            let a = self.active.as_ref().expect("a segment is active");
            let batch_first = *write_first.get_or_insert(r.index);
            let offset = a.len + self.buf.len() as u64;
            new_locs.push((
                r.index,
                Loc {
                    seg: a.first_index,
                    offset: u32::try_from(offset).expect("segments stay below 4 GiB"),
                    payload_bytes: r.payload.len() as u32,
                },
            ));
            encode_record(
                &mut self.buf,
                r.index,
                r.term,
                r.node_id,
                batch_first,
                &r.payload,
            );
        }
        if !self.buf.is_empty() {
            self.flush_buf()?;
            self.sync_active()?;
        }
        // A batch far above the usual size should not pin its buffer.
        if self.buf.capacity() as u64 > 2 * self.group_commit_max_bytes {
            self.buf = Vec::new();
        }
        let mut mem = self.shared.lock();
        for (index, loc) in new_locs {
            if mem.locs.is_empty() {
                mem.disk_first = index;
            }
            assert_eq!(
                index,
                mem.disk_first + mem.locs.len() as u64,
                "op log writer: indexes must be consecutive"
            );
            mem.locs.push_back(loc);
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<(), OpLogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let a = self.active.as_mut().expect("a segment is active");
        let path = self.shared.dir.join(segment_file_name(a.first_index));
        a.file
            .write_all_at(&self.buf, a.len)
            .map_err(io_err("write", &path))?;
        a.len += self.buf.len() as u64;
        // Truncate and purge account from it; readers go by `locs`.
        if let Some(s) = self.shared.lock().segments.get_mut(&a.first_index) {
            s.len = a.len;
        }
        let st = &self.shared.stats;
        st.bytes_appended.fetch_add(self.buf.len() as u64, Relaxed);
        st.log_bytes_on_disk
            .fetch_add(self.buf.len() as u64, Relaxed);
        self.buf.clear();
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), OpLogError> {
        let a = self.active.as_ref().expect("a segment is active");
        let path = self.shared.dir.join(segment_file_name(a.first_index));
        a.file.sync_data().map_err(io_err("fdatasync", &path))?;
        self.shared.stats.data_fsyncs.fetch_add(1, Relaxed);
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), OpLogError> {
        self.dir_file
            .sync_all()
            .map_err(io_err("fsync", &self.shared.dir))?;
        self.shared.stats.other_fsyncs.fetch_add(1, Relaxed);
        Ok(())
    }

    /// A new segment whose first record will be `first_index`. The header
    /// and the directory entry are durable before any record goes in, so
    /// after a crash a segment with a bad header and nothing else is an
    /// interrupted creation, and one with more is damage.
    fn create_segment(&mut self, first_index: u64) -> Result<(), OpLogError> {
        let path = self.shared.dir.join(segment_file_name(first_index));
        // Truncate: a file of this name can only be the leftover of a
        // segment the log no longer holds (its index is not in the log).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        file.write_all_at(&encode_segment_header(first_index), 0)
            .map_err(io_err("write", &path))?;
        file.sync_data().map_err(io_err("fdatasync", &path))?;
        self.shared.stats.other_fsyncs.fetch_add(1, Relaxed);
        self.sync_dir()?;
        let file = Arc::new(file);
        let len = SEGMENT_HEADER_BYTES as u64;
        self.shared.lock().segments.insert(
            first_index,
            Segment {
                path,
                file: file.clone(),
                len,
            },
        );
        let st = &self.shared.stats;
        st.segments.fetch_add(1, Relaxed);
        st.log_bytes_on_disk.fetch_add(len, Relaxed);
        self.active = Some(Active {
            first_index,
            file,
            len,
        });
        Ok(())
    }

    /// Removes entries `index..` from disk. Later segments are unlinked,
    /// newest first, and the directory fsynced before the segment holding
    /// `index - 1` is cut: a crash in between leaves a longer log with no
    /// gap, never a cut segment followed by stale ones.
    fn truncate(&mut self, index: u64) -> Result<(), OpLogError> {
        let (doomed, cut) = {
            let mut mem = self.shared.lock();
            let end = mem.disk_first + mem.locs.len() as u64;
            if mem.locs.is_empty() || index >= end {
                return Ok(());
            }
            let index = index.max(mem.disk_first);
            let loc = mem.locs[(index - mem.disk_first) as usize];
            let keep = (index - mem.disk_first) as usize;
            mem.locs.truncate(keep);
            if mem.locs.is_empty() {
                mem.disk_first = index;
            }
            let whole = u64::from(loc.offset) == SEGMENT_HEADER_BYTES as u64;
            let from = if whole { loc.seg } else { loc.seg + 1 };
            let doomed: Vec<(u64, Segment)> = {
                let firsts: Vec<u64> = mem.segments.range(from..).map(|(&k, _)| k).collect();
                firsts
                    .into_iter()
                    .rev()
                    .filter_map(|k| mem.segments.remove(&k).map(|s| (k, s)))
                    .collect()
            };
            let cut = if whole {
                None
            } else {
                let s = mem
                    .segments
                    .get_mut(&loc.seg)
                    .expect("an indexed segment is open");
                let old_len = s.len;
                s.len = u64::from(loc.offset);
                Some((loc.seg, s.file.clone(), s.path.clone(), old_len, s.len))
            };
            (doomed, cut)
        };
        self.active = None;
        self.remove_segments(&doomed)?;
        if let Some((first_index, file, path, old_len, len)) = cut {
            file.set_len(len).map_err(io_err("truncate", &path))?;
            file.sync_data().map_err(io_err("fdatasync", &path))?;
            let st = &self.shared.stats;
            st.other_fsyncs.fetch_add(1, Relaxed);
            st.log_bytes_on_disk.fetch_sub(old_len - len, Relaxed);
            self.active = Some(Active {
                first_index,
                file,
                len,
            });
        } else {
            let mem = self.shared.lock();
            self.active = mem
                .segments
                .iter()
                .next_back()
                .map(|(&first_index, s)| Active {
                    first_index,
                    file: s.file.clone(),
                    len: s.len,
                });
        }
        Ok(())
    }

    /// Records `log_id` as purged, durably, then deletes the segments it
    /// covers. Recovery ignores entries at or below the purged id and
    /// deletes the segments that hold only those, so a crash before the
    /// deletions finish loses nothing and keeps nothing it should not.
    fn purge(&mut self, log_id: LogId) -> Result<(), OpLogError> {
        if self.meta.purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        self.meta.purged = Some(log_id);
        self.write_meta()?;
        let doomed = {
            let mut mem = self.shared.lock();
            let end = mem.disk_first + mem.locs.len() as u64;
            let firsts: Vec<u64> = mem.segments.keys().copied().collect();
            let mut doomed = Vec::new();
            for (k, &first) in firsts.iter().enumerate() {
                let next = firsts.get(k + 1).copied().unwrap_or(end);
                if next > log_id.index + 1 {
                    break;
                }
                if let Some(s) = mem.segments.remove(&first) {
                    doomed.push((first, s));
                }
            }
            let drop_n = (log_id.index + 1)
                .saturating_sub(mem.disk_first)
                .min(mem.locs.len() as u64);
            mem.locs.drain(..drop_n as usize);
            mem.disk_first += drop_n;
            if mem.locs.is_empty() {
                mem.disk_first = mem.disk_first.max(log_id.index + 1);
            }
            doomed
        };
        if self
            .active
            .as_ref()
            .is_some_and(|a| doomed.iter().any(|(k, _)| *k == a.first_index))
        {
            self.active = None;
        }
        self.remove_segments(&doomed)
    }

    fn remove_segments(&mut self, doomed: &[(u64, Segment)]) -> Result<(), OpLogError> {
        if doomed.is_empty() {
            return Ok(());
        }
        for (_, s) in doomed {
            fs::remove_file(&s.path).map_err(io_err("remove", &s.path))?;
            let st = &self.shared.stats;
            st.segments.fetch_sub(1, Relaxed);
            st.log_bytes_on_disk.fetch_sub(s.len, Relaxed);
        }
        self.sync_dir()
    }

    fn write_meta(&mut self) -> Result<(), OpLogError> {
        let dir: PathBuf = self.shared.dir.clone();
        meta::write(&dir, &self.dir_file, &self.meta)
            .map_err(io_err("write", &dir.join(meta::META_FILE)))?;
        self.shared.stats.other_fsyncs.fetch_add(2, Relaxed);
        self.committed_dirty = false;
        self.meta_written_at = Instant::now();
        Ok(())
    }

    /// Persists a changed committed id at most once per
    /// `COMMITTED_SAVE_INTERVAL_MS` (or now, at shutdown). A lost update
    /// only makes the value read back at start-up lower, which openraft
    /// accepts; writing it on every commit would add two fsyncs per batch.
    fn save_committed_if_due(&mut self, now: bool) {
        if !self.committed_dirty || self.shared.failed.get().is_some() {
            return;
        }
        let due = self.meta_written_at + Duration::from_millis(COMMITTED_SAVE_INTERVAL_MS);
        if now || Instant::now() >= due {
            // Not `guarded`: failing to persist a hint should not fail the
            // log; it is retried after the next interval.
            if let Err(e) = self.write_meta() {
                tracing::warn!("op log: persisting the committed log id: {e}");
                self.meta_written_at = Instant::now();
            }
        }
    }
}
