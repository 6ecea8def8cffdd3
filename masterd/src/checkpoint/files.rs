//! Checkpoint file names and directory housekeeping: the final name of a
//! checkpoint, temp names, listing newest first, the rename that publishes
//! a checkpoint, and pruning to the newest [`CHECKPOINTS_KEPT`].

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::CheckpointError;
use super::decode::peek_last_log_id;
use super::format::HEADER_BYTES;
use crate::types::LogId;

/// Checkpoints kept after a new one is published: the new one and the
/// previous good one, the fallback if the new one turns out unreadable.
pub const CHECKPOINTS_KEPT: usize = 2;

const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".ckpt";
pub const TMP_PREFIX: &str = "checkpoint.tmp.";
/// Suffix given to a checkpoint refused at load while an older one was
/// good: kept for inspection, never loaded or pruned automatically.
pub const CORRUPT_SUFFIX: &str = ".corrupt";
/// Digits of each number in a final name (u64::MAX has 20).
const DIGITS: usize = 20;

/// Distinguishes temp files of one process (the pid distinguishes processes).
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// `checkpoint-<index:020>-<term:020>.ckpt`. A state with no applied entry
/// is named index 0, term 0, the oldest possible name.
pub fn final_name(last_log_id: Option<LogId>) -> String {
    let (index, term) = last_log_id.map_or((0, 0), |l| (l.index, l.leader_id.term));
    format!("{PREFIX}{index:0DIGITS$}-{term:0DIGITS$}{SUFFIX}")
}

/// (index, term) of a final name; `None` for any other name.
pub fn parse_name(name: &str) -> Option<(u64, u64)> {
    let body = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (index, term) = body.split_once('-')?;
    let digits = |s: &str| s.len() == DIGITS && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(term) {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

pub fn tmp_path(dir: &Path) -> PathBuf {
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TMP_PREFIX}{}-{seq}", std::process::id()))
}

pub fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> CheckpointError {
    CheckpointError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Final-named checkpoints in `dir`, newest (highest index, then term) first.
pub fn list(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, CheckpointError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err("list", dir, e))? {
        let entry = entry.map_err(|e| io_err("list", dir, e))?;
        let name = entry.file_name();
        if let Some((index, term)) = name.to_str().and_then(parse_name) {
            out.push((index, term, entry.path()));
        }
    }
    out.sort_unstable_by_key(|&(index, term, _)| std::cmp::Reverse((index, term)));
    Ok(out)
}

/// Removes temp files left by a checkpoint that never finished (a crash of
/// the master or of its child). Only for start-up: at any other time one
/// may belong to a checkpoint still being written.
pub fn remove_leftover_tmps(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err("list", dir, e))? {
        let entry = entry.map_err(|e| io_err("list", dir, e))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TMP_PREFIX))
        {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| io_err("remove leftover", &path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

pub fn fsync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync directory", dir, e))
}

/// Publishes a complete, fdatasync'ed temp file: renames it to its final
/// name and fsyncs the directory, so the name is durable before anyone
/// relies on it (before the op log is purged). Then prunes.
pub fn publish(
    dir: &Path,
    tmp: &Path,
    last_log_id: Option<LogId>,
) -> Result<(PathBuf, Option<LogId>), CheckpointError> {
    let path = dir.join(final_name(last_log_id));
    fs::rename(tmp, &path).map_err(|e| io_err("rename", tmp, e))?;
    fsync_dir(dir)?;
    let limit = prune(dir)?;
    Ok((path, limit))
}

/// Removes all but the newest [`CHECKPOINTS_KEPT`] checkpoints. Returns the
/// last log id of the oldest one kept: the op log may be purged up to it
/// and no further, so the fallback can still be replayed forward. `None`
/// (purge nothing) when that checkpoint has no log id or its header does
/// not read.
///
/// Removals are not fsynced: an old checkpoint that reappears after a
/// crash is older than the kept ones and goes at the next prune.
pub fn prune(dir: &Path) -> Result<Option<LogId>, CheckpointError> {
    let all = list(dir)?;
    for (_, _, path) in all.iter().skip(CHECKPOINTS_KEPT) {
        fs::remove_file(path).map_err(|e| io_err("remove old checkpoint", path, e))?;
    }
    let Some((_, _, oldest)) = all[..all.len().min(CHECKPOINTS_KEPT)].last() else {
        return Ok(None);
    };
    let mut head = [0u8; HEADER_BYTES];
    let read = File::open(oldest).and_then(|mut f| f.read_exact(&mut head));
    Ok(read
        .ok()
        .and_then(|()| peek_last_log_id(&head).ok())
        .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    #[test]
    fn names_round_trip_and_sort() {
        let id = LogId::new(CommittedLeaderId::new(7, 1), 123);
        let n = final_name(Some(id));
        assert_eq!(
            n,
            "checkpoint-00000000000000000123-00000000000000000007.ckpt"
        );
        assert_eq!(parse_name(&n), Some((123, 7)));
        assert_eq!(parse_name(&final_name(None)), Some((0, 0)));
        let max = LogId::new(CommittedLeaderId::new(u64::MAX, 1), u64::MAX);
        assert_eq!(
            parse_name(&final_name(Some(max))),
            Some((u64::MAX, u64::MAX))
        );
        for bad in [
            "checkpoint-1-2.ckpt",
            "checkpoint-00000000000000000123-00000000000000000007.ckpt.corrupt",
            "checkpoint.tmp.1-2",
            "checkpoint-0000000000000000012a-00000000000000000007.ckpt",
            "checkpoint-99999999999999999999-00000000000000000007.ckpt",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
