//! The in-memory side of the log, shared by the appender (`OpLog`), the
//! writer thread and readers: the tail cache, the index of where each
//! written entry lives, the open segment files, and reads.
//!
//! Two views live under one mutex. The appender's view (`last_log_id`,
//! `purged`, the cache) changes as soon as `append`, `truncate` or `purge`
//! is called; the writer's view (`locs`, `segments`) changes once the
//! writer has carried a command out. Readers take entries at or above
//! `cache_first` from the cache and older ones through `locs`, so they
//! never see a writer view that lags the appender's.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::format::{RECORD_HEADER_BYTES, check_record, decode_entry};
use super::{OpLogError, OpLogStats};
use crate::types::{Entry, LogId};

/// Upper bound on one `pread` when reading old entries back, so a large
/// range is read in pieces of bounded memory beyond the result itself.
pub const READ_RUN_BYTES_MAX: u64 = 4 << 20;

/// Where a written entry lives: 16 bytes per entry in memory.
#[derive(Clone, Copy, Debug)]
pub(super) struct Loc {
    /// The segment's first index (its key in `Mem::segments`).
    pub seg: u64,
    /// Offset of the record header. Segments stay below 4 GiB: they roll
    /// at `segment_bytes_max` (≤ 1 GiB) and a record is at most 64 MiB.
    pub offset: u32,
    pub payload_bytes: u32,
}

pub(super) struct Segment {
    pub path: PathBuf,
    /// Read and write; readers `pread` through a clone of the `Arc`, so a
    /// segment deleted by purge stays readable for a reader holding it.
    pub file: Arc<File>,
    pub len: u64,
}

pub(super) struct Cached {
    pub entry: Entry,
    /// The appender command that put it here; see `Mem::evict`.
    pub seq: u64,
    pub bytes: u64,
}

pub(super) struct Mem {
    // The appender's view.
    /// The last entry appended; may be at or below `purged`.
    pub last_log_id: Option<LogId>,
    pub purged: Option<LogId>,
    /// Entries `cache_first..`: every entry the writer has not written yet,
    /// plus recent written ones up to the cache bounds.
    pub cache: VecDeque<Cached>,
    pub cache_first: u64,
    pub cache_bytes: u64,
    // The writer's view.
    /// The last command the writer has carried out.
    pub written_seq: u64,
    /// Index of `locs[0]`; when `locs` is empty, the next index to write.
    pub disk_first: u64,
    pub locs: VecDeque<Loc>,
    pub segments: BTreeMap<u64, Segment>,
    // Bounds.
    pub cache_bytes_max: u64,
    pub cache_entries_max: usize,
}

impl Mem {
    /// The index the next appended entry must have; `None` for a log that
    /// has never held an entry or had one purged (it may start anywhere).
    pub fn next_index(&self) -> Option<u64> {
        let after_last = self.last_log_id.map(|l| l.index + 1);
        let after_purged = self.purged.map(|p| p.index + 1);
        after_last.max(after_purged)
    }

    /// The last appended entry's id, or the last purged one's when that is
    /// not older (a log purged up to its end by a snapshot).
    pub fn last_or_purged(&self) -> Option<LogId> {
        match (self.last_log_id, self.purged) {
            (Some(l), Some(p)) if p.index >= l.index => Some(p),
            (l, p) => l.or(p),
        }
    }

    /// Drops written entries from the front of the cache while it is over
    /// its bounds. An entry put in by command `seq <= written_seq` has
    /// been written by that command, and any later rewrite of its index
    /// would have come from a later append that replaced it here; so its
    /// `locs` slot holds exactly this entry and reads can go to disk.
    pub fn evict(&mut self) {
        while self.cache_bytes > self.cache_bytes_max || self.cache.len() > self.cache_entries_max {
            match self.cache.front() {
                Some(c) if c.seq <= self.written_seq => {
                    self.cache_bytes -= c.bytes;
                    self.cache.pop_front();
                    self.cache_first += 1;
                }
                _ => break,
            }
        }
    }

    /// Index of the first entry held in memory or on disk, if any.
    fn first_present(&self) -> Option<u64> {
        let disk = (!self.locs.is_empty()).then_some(self.disk_first);
        let cache = (!self.cache.is_empty()).then_some(self.cache_first);
        match (disk, cache) {
            (Some(d), Some(c)) => Some(d.min(c)),
            (d, c) => d.or(c),
        }
    }
}

/// State shared by `OpLog`, its readers and the writer thread.
pub(super) struct Shared {
    pub dir: PathBuf,
    pub mem: Mutex<Mem>,
    pub stats: Arc<OpLogStats>,
    /// Set once when the writer hits an I/O error. An fsync error is not
    /// retryable (the kernel may have dropped the dirty pages), so the log
    /// refuses every later write and the master must restart and recover.
    pub failed: OnceLock<String>,
    #[cfg(test)]
    pub hold: (Mutex<bool>, std::sync::Condvar),
}

/// Consecutive records of one segment, read with one `pread`.
struct Run {
    path: PathBuf,
    file: Arc<File>,
    start: u64,
    end: u64,
    /// Index of the first record, then each record's loc.
    first_index: u64,
    locs: Vec<Loc>,
}

struct Plan {
    /// Entries read from disk come first, then `cached`.
    runs: Vec<Run>,
    cached: Vec<Entry>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Mem> {
        // A panic while holding the lock leaves `Mem` as consistent as any
        // single step does; the writer fails the log on errors instead.
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn check_failed(&self) -> Result<(), OpLogError> {
        match self.failed.get() {
            Some(why) => Err(OpLogError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    pub fn fail(&self, why: String) {
        tracing::error!("op log failed: {why}");
        let _ = self.failed.set(why);
    }

    #[cfg(test)]
    pub fn wait_while_held(&self) {
        let mut held = self.hold.0.lock().unwrap();
        while *held {
            held = self.hold.1.wait(held).unwrap();
        }
    }

    #[cfg(not(test))]
    #[inline]
    pub fn wait_while_held(&self) {}

    /// Entries `start..end` that exist, in order, from the first present
    /// one on; with `limit_bytes`, stops once that many payload bytes are
    /// gathered (always returning at least one entry when any exists).
    pub fn read(
        &self,
        start: u64,
        end: u64,
        limit_bytes: Option<u64>,
    ) -> Result<Vec<Entry>, OpLogError> {
        // Optimistic: pread outside the lock. A truncate can cut and
        // rewrite the bytes meanwhile; the CRC and index checks catch
        // that, and the second try holds the lock across the reads, which
        // the writer must take before it cuts anything.
        let plan = self.plan(&self.lock(), start, end, limit_bytes)?;
        if let Ok(entries) = read_plan(plan) {
            return Ok(entries);
        }
        let mem = self.lock();
        let plan = self.plan(&mem, start, end, limit_bytes)?;
        let entries = read_plan(plan)?;
        drop(mem);
        Ok(entries)
    }

    fn plan(
        &self,
        mem: &Mem,
        start: u64,
        end: u64,
        limit_bytes: Option<u64>,
    ) -> Result<Plan, OpLogError> {
        let mut plan = Plan {
            runs: Vec::new(),
            cached: Vec::new(),
        };
        let after_purged = mem.purged.map_or(0, |p| p.index + 1);
        let Some(first) = mem.first_present() else {
            return Ok(plan);
        };
        let lo = start.max(after_purged).max(first);
        let hi = end.min(mem.last_log_id.map_or(0, |l| l.index + 1));
        let mut bytes = 0u64;
        let mut i = lo;
        while i < hi {
            if let Some(limit) = limit_bytes
                && bytes >= limit
                && i > lo
            {
                break;
            }
            if i >= mem.cache_first {
                let Some(c) = mem.cache.get((i - mem.cache_first) as usize) else {
                    return Err(hole(i));
                };
                bytes += c.bytes;
                plan.cached.push(c.entry.clone());
            } else {
                let Some(loc) = i
                    .checked_sub(mem.disk_first)
                    .and_then(|k| mem.locs.get(k as usize))
                else {
                    return Err(hole(i));
                };
                let rec = RECORD_HEADER_BYTES as u64 + u64::from(loc.payload_bytes);
                bytes += u64::from(loc.payload_bytes);
                let offset = u64::from(loc.offset);
                match plan.runs.last_mut() {
                    Some(r)
                        if r.locs.last().is_some_and(|l| l.seg == loc.seg)
                            && r.end == offset
                            && r.end + rec - r.start <= READ_RUN_BYTES_MAX =>
                    {
                        r.end += rec;
                        r.locs.push(*loc);
                    }
                    _ => {
                        let Some(seg) = mem.segments.get(&loc.seg) else {
                            return Err(hole(i));
                        };
                        plan.runs.push(Run {
                            path: seg.path.clone(),
                            file: seg.file.clone(),
                            start: offset,
                            end: offset + rec,
                            first_index: i,
                            locs: vec![*loc],
                        });
                    }
                }
            }
            i += 1;
        }
        Ok(plan)
    }
}

fn hole(index: u64) -> OpLogError {
    OpLogError::Internal(format!("entry {index} is neither cached nor on disk"))
}

fn read_plan(plan: Plan) -> Result<Vec<Entry>, OpLogError> {
    let mut out = Vec::with_capacity(
        plan.runs.iter().map(|r| r.locs.len()).sum::<usize>() + plan.cached.len(),
    );
    let mut buf = Vec::new();
    for run in plan.runs {
        buf.clear();
        buf.resize((run.end - run.start) as usize, 0);
        run.file
            .read_exact_at(&mut buf, run.start)
            .map_err(|source| OpLogError::Io {
                op: "read",
                path: run.path.clone(),
                source,
            })?;
        for (k, loc) in run.locs.iter().enumerate() {
            let index = run.first_index + k as u64;
            let at = (u64::from(loc.offset) - run.start) as usize;
            let corrupt = |reason: String| OpLogError::Corrupt {
                path: run.path.clone(),
                offset: u64::from(loc.offset),
                reason,
            };
            let f = check_record(&buf[at..]).map_err(|why| corrupt(why.to_string()))?;
            if f.index != index || f.payload.len() != loc.payload_bytes as usize {
                return Err(corrupt(format!(
                    "holds index {} ({} bytes), expected {index} ({} bytes)",
                    f.index,
                    f.payload.len(),
                    loc.payload_bytes
                )));
            }
            out.push(decode_entry(&f).map_err(corrupt)?);
        }
    }
    out.extend(plan.cached);
    Ok(out)
}
