//! Checkpoints: the whole replicated state at one applied log index, in one
//! sectioned file; the Raft snapshot of the master (DESIGN §4). Layout byte
//! by byte and the crash-safety argument: docs/design/011-checkpoint-format.md.
//!
//! - Writing: [`Checkpointer::start`] forks; the child encodes its
//!   copy-on-write image into `checkpoint.tmp.<pid>-<n>` and fdatasyncs it;
//!   [`PendingCheckpoint::wait`] reaps the child (bounded by a deadline),
//!   renames the file to `checkpoint-<index:020>-<term:020>.ckpt`, fsyncs
//!   the directory and keeps the newest [`CHECKPOINTS_KEPT`].
//!   [`write_in_process`] and [`Checkpointer::write_now`] use the same
//!   encoder without a fork.
//! - Loading: [`load`] maps the file and hands the bytes to [`decode`],
//!   which checks every CRC and rule and decodes sections in parallel.
//!   [`load_newest`] falls back to an older checkpoint when the newest is
//!   refused, and refuses to start empty when checkpoints exist.

mod decode;
mod encode;
mod files;
mod fork;
pub mod format;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openraft::{BasicNode, StoredMembership};

pub use decode::{PARALLEL_DECODE_MIN_BYTES, decode, decode_with, peek_last_log_id};
pub use encode::{EncodeError, EncodeSummary, encode, encode_to};
pub use files::{CHECKPOINTS_KEPT, CORRUPT_SUFFIX, TMP_PREFIX, final_name, parse_name};
pub use fork::{CHILD_DEADLINE_DEFAULT, CheckpointOptions, Checkpointer, PendingCheckpoint};
pub use format::{CHECKPOINT_BYTES_MAX, DecodeError, Part, SECTION_COUNT, SECTIONS, Section};

use crate::state::State;
use crate::types::{LogId, NodeId};

/// What a checkpoint records besides the state: where in the log it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// The last log entry applied to the state; `None` before the first.
    pub last_log_id: Option<LogId>,
    /// The last membership applied (openraft needs it with a snapshot).
    pub last_membership: StoredMembership<NodeId, BasicNode>,
}

/// A published checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    pub path: PathBuf,
    pub last_log_id: Option<LogId>,
    pub bytes: u64,
    pub sections: u32,
    /// From the start of the checkpoint until it was published.
    pub duration: Duration,
    /// How long the caller was paused by `fork()`; zero in process.
    pub fork_duration: Duration,
    /// Encoding and writing (in the child when forked).
    pub encode_duration: Duration,
    /// The final fdatasync.
    pub sync_duration: Duration,
    /// The op log may be purged up to this entry and no further: the last
    /// log id of the oldest checkpoint kept, the fallback if the newest is
    /// ever refused. `None`: purge nothing.
    pub log_purge_limit: Option<LogId>,
}

/// The result of [`load_newest`].
#[derive(Debug)]
pub struct Loaded {
    pub state: State,
    pub meta: CheckpointMeta,
    pub path: PathBuf,
    /// Newer checkpoints that were refused (renamed to `*.corrupt` when
    /// their bytes were at fault), newest first.
    pub refused: Vec<PathBuf>,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {} refused: {source}", path.display())]
    Corrupt { path: PathBuf, source: DecodeError },
    #[error("the state cannot be written as a checkpoint: {0}")]
    Unencodable(String),
    #[error("cannot fork the checkpoint child: {0}")]
    Fork(std::io::Error),
    #[error("checkpoint child {pid} {status}: {report}")]
    ChildFailed {
        pid: i32,
        status: String,
        report: String,
    },
    #[error("checkpoint child {pid} did not finish within {deadline:?} and was killed")]
    ChildTimedOut { pid: i32, deadline: Duration },
    #[error(
        "no usable checkpoint in {}: all {} refused ({}); refusing to start from an empty state",
        dir.display(), refused.len(), summarize(refused)
    )]
    NoUsableCheckpoint {
        dir: PathBuf,
        refused: Vec<(PathBuf, String)>,
    },
}

fn summarize(refused: &[(PathBuf, String)]) -> String {
    refused
        .iter()
        .map(|(p, e)| format!("{}: {e}", p.display()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Writes a checkpoint to exactly `path`, in this process, with the same
/// encoder as the forked child; atomically (temp file beside it, fdatasync,
/// rename, directory fsync). Does not prune.
pub fn write_in_process(
    path: &Path,
    state: &State,
    meta: &CheckpointMeta,
) -> Result<CheckpointInfo, CheckpointError> {
    let started = Instant::now();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = files::tmp_path(dir);
    let (summary, encode, sync) = write_tmp(&tmp, state, meta)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(files::io_err("rename", &tmp, e));
    }
    files::fsync_dir(dir)?;
    Ok(CheckpointInfo {
        path: path.to_path_buf(),
        last_log_id: meta.last_log_id,
        bytes: summary.bytes,
        sections: summary.sections,
        duration: started.elapsed(),
        fork_duration: Duration::ZERO,
        encode_duration: encode,
        sync_duration: sync,
        log_purge_limit: None,
    })
}

/// Encodes into a new file at `tmp` and fdatasyncs it; removes it on error.
fn write_tmp(
    tmp: &Path,
    state: &State,
    meta: &CheckpointMeta,
) -> Result<(EncodeSummary, Duration, Duration), CheckpointError> {
    let t0 = Instant::now();
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| files::io_err("create", tmp, e))?;
    let fail = |e: CheckpointError| {
        let _ = fs::remove_file(tmp);
        e
    };
    let summary = encode_to(&file, state, meta).map_err(|e| {
        fail(match e {
            EncodeError::Io(e) => files::io_err("write", tmp, e),
            e @ EncodeError::Invalid { .. } => CheckpointError::Unencodable(e.to_string()),
        })
    })?;
    let t1 = Instant::now();
    file.sync_data()
        .map_err(|e| fail(files::io_err("fdatasync", tmp, e)))?;
    Ok((summary, t1 - t0, t1.elapsed()))
}

/// Loads one checkpoint file: maps it and decodes it (every CRC and rule
/// checked). A file with a final name must also carry that log id in its
/// header, so a renamed file is not taken for another.
pub fn load(path: &Path) -> Result<(State, CheckpointMeta), CheckpointError> {
    let file = File::open(path).map_err(|e| files::io_err("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| files::io_err("stat", path, e))?
        .len();
    let corrupt = |source: DecodeError| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    if len > CHECKPOINT_BYTES_MAX {
        return Err(corrupt(DecodeError::new(
            Part::File,
            0,
            format!("file has {len} bytes, above CHECKPOINT_BYTES_MAX"),
        )));
    }
    if len == 0 {
        return decode(&[]).map_err(corrupt);
    }
    // SAFETY: the map is only read, and checkpoint files are never written
    // once renamed to their final name (a new checkpoint is a new file), so
    // the bytes cannot change under the slice. A truncation by an outside
    // hand would raise SIGBUS, as would a disk read error: mmap's price.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| files::io_err("mmap", path, e))?;
    // Every page is read once; ask for all of them now, in the background.
    let _ = map.advise(memmap2::Advice::WillNeed);
    let (state, meta) = decode(&map).map_err(corrupt)?;
    if let Some((index, term)) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_name)
    {
        let inside = meta
            .last_log_id
            .map_or((0, 0), |l| (l.index, l.leader_id.term));
        if inside != (index, term) {
            return Err(corrupt(DecodeError::new(
                Part::Header,
                16,
                format!(
                    "file name says index {index} term {term}, header says index {} term {}",
                    inside.0, inside.1
                ),
            )));
        }
    }
    Ok((state, meta))
}

/// Loads the newest good checkpoint of `dir` (start-up only: it first
/// removes leftover temp files, which at any other time could belong to a
/// checkpoint being written).
///
/// A checkpoint that is refused is logged with its file, section and
/// offset, and the previous one is tried. When an older one loads, the
/// refused ones whose bytes were at fault are renamed to `*.corrupt`, so
/// they neither shadow nor (by pruning) push out good ones later. `Ok(None)`
/// only when `dir` holds no checkpoint at all; when all are refused, an
/// error: starting empty would lose every file.
pub fn load_newest(dir: &Path) -> Result<Option<Loaded>, CheckpointError> {
    let started = Instant::now();
    for tmp in files::remove_leftover_tmps(dir)? {
        tracing::warn!(file = %tmp.display(), "removed a leftover temp file of an unfinished checkpoint");
    }
    let candidates = files::list(dir)?;
    if candidates.is_empty() {
        return Ok(None);
    }
    let mut refused: Vec<(PathBuf, String)> = Vec::new();
    let mut corrupt: Vec<PathBuf> = Vec::new();
    for (_, _, path) in candidates {
        match load(&path) {
            Ok((state, meta)) => {
                let refused_paths: Vec<PathBuf> = refused.into_iter().map(|(p, _)| p).collect();
                for p in corrupt {
                    quarantine(&p);
                }
                tracing::info!(
                    file = %path.display(),
                    last_log_id = ?meta.last_log_id,
                    refused = refused_paths.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "loaded checkpoint"
                );
                return Ok(Some(Loaded {
                    state,
                    meta,
                    path,
                    refused: refused_paths,
                    duration: started.elapsed(),
                }));
            }
            Err(e) => {
                match &e {
                    CheckpointError::Corrupt { source, .. } => {
                        tracing::error!(
                            file = %path.display(),
                            section = %source.part,
                            offset = source.offset,
                            error = %source.what,
                            "refusing checkpoint; trying the previous one"
                        );
                        corrupt.push(path.clone());
                    }
                    other => tracing::error!(
                        file = %path.display(),
                        error = %other,
                        "cannot read checkpoint; trying the previous one"
                    ),
                }
                refused.push((path, e.to_string()));
            }
        }
    }
    Err(CheckpointError::NoUsableCheckpoint {
        dir: dir.to_path_buf(),
        refused,
    })
}

/// Renames a refused checkpoint out of the way; on failure it stays (and
/// is refused again next time), which is safe.
fn quarantine(path: &Path) {
    let mut to = path.as_os_str().to_owned();
    to.push(CORRUPT_SUFFIX);
    match fs::rename(path, &to) {
        Ok(()) => tracing::warn!(
            file = %path.display(),
            to = %Path::new(&to).display(),
            "kept the refused checkpoint for inspection"
        ),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot rename refused checkpoint")
        }
    }
}
