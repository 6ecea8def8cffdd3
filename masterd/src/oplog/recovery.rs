//! Opening the log directory: lock it, read the meta file, scan every
//! segment, cut a torn tail off the last one, refuse anything else that is
//! damaged or missing, and rebuild the in-memory index.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::format::{
    RecordMeta, SEGMENT_HEADER_BYTES, SegmentError, Tail, parse_segment_file_name, scan_segment,
};
use super::meta::{self, META_FILE, META_TMP_FILE, MetaState};
use super::state::{Loc, Segment};
use super::{LOCK_FILE, OpLogError, OpLogStats};
use crate::types::LogId;

/// What `open` hands to the rest of the log.
pub(super) struct Recovered {
    pub lock: File,
    pub dir_file: File,
    pub meta: MetaState,
    pub last_log_id: Option<LogId>,
    pub disk_first: u64,
    pub locs: VecDeque<Loc>,
    pub segments: BTreeMap<u64, Segment>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OpLogError {
    let path = path.to_path_buf();
    move |source| OpLogError::Io { op, path, source }
}

fn sync_dir(dir_file: &File, dir: &Path, stats: &OpLogStats) -> Result<(), OpLogError> {
    dir_file.sync_all().map_err(io("fsync", dir))?;
    stats.other_fsyncs.fetch_add(1, Relaxed);
    Ok(())
}

struct Scanned {
    first_index: u64,
    path: PathBuf,
    file: File,
    len: u64,
    records: Vec<RecordMeta>,
}

pub(super) fn recover(dir: &Path, stats: &OpLogStats) -> Result<Recovered, OpLogError> {
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        // The new directory's own entry, in its parent.
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)
            .and_then(|f| f.sync_all())
            .map_err(io("fsync", parent))?;
    }
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open", &lock_path))?;
    // Two masters appending to one log would interleave records.
    lock.try_lock().map_err(|e| match e {
        fs::TryLockError::WouldBlock => OpLogError::Locked {
            path: dir.to_path_buf(),
        },
        fs::TryLockError::Error(source) => OpLogError::Io {
            op: "lock",
            path: lock_path.clone(),
            source,
        },
    })?;
    let dir_file = File::open(dir).map_err(io("open", dir))?;

    // An interrupted meta replacement: the old file is intact.
    let tmp = dir.join(META_TMP_FILE);
    if tmp.exists() {
        fs::remove_file(&tmp).map_err(io("remove", &tmp))?;
    }
    let meta = match meta::read(dir).map_err(io("read", &dir.join(META_FILE)))? {
        None => MetaState::default(),
        Some(bytes) => meta::decode(&bytes).map_err(|e| OpLogError::Corrupt {
            path: dir.join(META_FILE),
            offset: 0,
            reason: e.to_string(),
        })?,
    };
    let purged_index = meta.purged.map(|p| p.index);

    let mut firsts = Vec::new();
    for de in fs::read_dir(dir).map_err(io("list", dir))? {
        let de = de.map_err(io("list", dir))?;
        let name = de.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!("op log: ignoring {:?} in {}", name, dir.display());
            continue;
        };
        match parse_segment_file_name(name) {
            Some(first) => firsts.push(first),
            None if name == META_FILE || name == LOCK_FILE => {}
            None => tracing::warn!("op log: ignoring {name} in {}", dir.display()),
        }
    }
    firsts.sort_unstable();

    let mut scanned: Vec<Scanned> = Vec::new();
    for (k, &first) in firsts.iter().enumerate() {
        let path = dir.join(super::format::segment_file_name(first));
        let is_last = k + 1 == firsts.len();
        // A segment followed by one starting at or below `purged + 1` holds
        // only purged entries: the leftover of an interrupted purge.
        if let (Some(p), Some(&next)) = (purged_index, firsts.get(k + 1))
            && next <= p.saturating_add(1)
        {
            fs::remove_file(&path).map_err(io("remove", &path))?;
            continue;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        let corrupt = |offset: u64, reason: String| OpLogError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        let scan = match scan_segment(&bytes) {
            Ok(s) => s,
            // The writer makes a new segment's header durable before it
            // writes records, so a bad header with nothing after it is an
            // interrupted creation; nothing in it was acknowledged.
            Err(SegmentError::Header(why)) if is_last && bytes.len() <= SEGMENT_HEADER_BYTES => {
                tracing::warn!(
                    "op log: removing {} ({} bytes, {why}): an interrupted segment creation",
                    path.display(),
                    bytes.len()
                );
                drop(file);
                fs::remove_file(&path).map_err(io("remove", &path))?;
                sync_dir(&dir_file, dir, stats)?;
                continue;
            }
            Err(e) => {
                let offset = match &e {
                    SegmentError::Header(_) => 0,
                    SegmentError::Record { offset, .. }
                    | SegmentError::DamagedBeforeLater { offset, .. } => *offset,
                };
                return Err(corrupt(offset, e.to_string()));
            }
        };
        if scan.first_index != first {
            return Err(corrupt(
                0,
                format!("header names first index {}", scan.first_index),
            ));
        }
        let mut len = bytes.len() as u64;
        if scan.tail != Tail::Clean {
            if !is_last {
                // The writer seals a segment before creating the next, so
                // only the last can have been cut short by a crash.
                return Err(corrupt(
                    scan.end,
                    format!("{:?} in a segment that has a successor", scan.tail),
                ));
            }
            // A torn write was never acknowledged, so it holds nothing at
            // or below the committed index persisted in the meta file (the
            // writer saves it only after the appends queued before it are
            // durable). Entries that are must have been damaged after they
            // were acknowledged: refused, not cut, so the operator restores
            // this master from a peer (design 010, "Open").
            let kept = scan
                .records
                .last()
                .map_or(first.saturating_sub(1), |r| r.index);
            let safe = kept.max(purged_index.unwrap_or(0));
            if let Some(c) = meta.committed
                && c.index > safe
            {
                return Err(corrupt(
                    scan.end,
                    format!(
                        "{:?} tail: cutting it would drop committed entries {}..={} \
                         (the meta file says index {} is committed); refusing to start",
                        scan.tail,
                        safe + 1,
                        c.index,
                        c.index
                    ),
                ));
            }
            tracing::warn!(
                "op log: {}: cutting {} bytes after offset {} ({:?}): an interrupted write",
                path.display(),
                len - scan.end,
                scan.end,
                scan.tail
            );
            file.set_len(scan.end).map_err(io("truncate", &path))?;
            file.sync_all().map_err(io("fsync", &path))?;
            stats.other_fsyncs.fetch_add(1, Relaxed);
            len = scan.end;
        }
        if scan.records.is_empty() {
            if !is_last {
                return Err(corrupt(
                    scan.end,
                    "no records in a segment that has a successor".into(),
                ));
            }
            // Created, crash before its first batch was durable.
            drop(file);
            fs::remove_file(&path).map_err(io("remove", &path))?;
            sync_dir(&dir_file, dir, stats)?;
            continue;
        }
        scanned.push(Scanned {
            first_index: first,
            path,
            file,
            len,
            records: scan.records,
        });
    }

    // The last segment, too, may hold only purged entries.
    if let (Some(p), Some(last)) = (purged_index, scanned.last())
        && last.records.last().is_some_and(|r| r.index <= p)
    {
        let last = scanned.pop().expect("checked above");
        drop(last.file);
        fs::remove_file(&last.path).map_err(io("remove", &last.path))?;
    }
    if firsts.len() != scanned.len() {
        sync_dir(&dir_file, dir, stats)?;
    }

    let mut locs = VecDeque::new();
    let mut disk_first = purged_index.map_or(0, |p| p + 1);
    let mut last_log_id = None;
    let mut segments = BTreeMap::new();
    let mut expected: Option<u64> = None;
    for s in scanned {
        // Consecutive across segments, and the first kept entry right
        // after the purged one: a missing file is refused, not skipped.
        let want = match (expected, purged_index) {
            (Some(e), _) => Some(e),
            (None, Some(p)) if s.first_index > p + 1 => Some(p + 1),
            (None, _) => None,
        };
        if let Some(want) = want
            && want != s.first_index
        {
            return Err(OpLogError::Gap {
                path: s.path,
                expected: want,
                found: s.first_index,
            });
        }
        for r in &s.records {
            if purged_index.is_some_and(|p| r.index <= p) {
                continue;
            }
            if locs.is_empty() {
                disk_first = r.index;
            }
            locs.push_back(Loc {
                seg: s.first_index,
                offset: u32::try_from(r.offset).map_err(|_| OpLogError::Corrupt {
                    path: s.path.clone(),
                    offset: r.offset,
                    reason: "record beyond 4 GiB".into(),
                })?,
                payload_bytes: r.payload_bytes,
            });
            last_log_id = Some(LogId::new(
                openraft::CommittedLeaderId::new(r.term, r.node_id),
                r.index,
            ));
        }
        let last = s.records.last().expect("segments kept have records");
        expected = Some(last.index + 1);
        stats.segments.fetch_add(1, Relaxed);
        stats.log_bytes_on_disk.fetch_add(s.len, Relaxed);
        segments.insert(
            s.first_index,
            Segment {
                path: s.path,
                file: Arc::new(s.file),
                len: s.len,
            },
        );
    }

    Ok(Recovered {
        lock,
        dir_file,
        meta,
        last_log_id,
        disk_first,
        locs,
        segments,
    })
}
