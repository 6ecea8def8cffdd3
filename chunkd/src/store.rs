//! The chunks one core owns: recovery at start-up, create, delete, lookup.
//!
//! Layout of a data dir (docs/design/006-chunk-meta-file.md):
//! `IDENTITY`, `EPOCH`, `chunks/<handle>.meta`, `chunks/<handle>-<id>.data`,
//! `quarantine/` (files chunkd could not trust; never deleted by chunkd).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use compio::buf::{IntoInner, IoBuf};
use compio::io::{AsyncReadAt, AsyncReadAtExt, AsyncWriteAtExt};
use ringfs_wire::checksum::{BLOCK_BYTES, crc32c};

use crate::chunk::{Chunk, ChunkSummary, DataDir, DataFile, LogEnd, write_meta_file_with};
use crate::dio::{self, AlignedBuf, align_up};
use crate::error::{ChunkError, ChunkResult};
use crate::meta::{self, ChunkState, MetaBase, MetaLayout};
use crate::openfiles::OpenFiles;
use crate::unsettled::Unsettled;

pub const CHUNKS_DIR: &str = "chunks";
pub const QUARANTINE_DIR: &str = "quarantine";

/// Files of one chunk found on disk at start-up.
#[derive(Clone, Debug)]
pub struct FoundChunk {
    pub dir_index: usize,
    pub handle: u64,
    pub meta_path: PathBuf,
}

/// Lists the chunk meta files of a dir, removing interrupted temporaries.
/// Data files are matched to their meta later; unmatched ones are removed
/// by [`remove_orphan_data_files`] once every chunk is recovered.
pub fn scan_dir(dir_index: usize, chunks_dir: &Path) -> std::io::Result<Vec<FoundChunk>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(chunks_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".meta.tmp") {
            std::fs::remove_file(entry.path())?;
            continue;
        }
        let Some(stem) = name.strip_suffix(".meta") else {
            continue;
        };
        let Ok(handle) = u64::from_str_radix(stem, 16) else {
            continue;
        };
        if stem.len() != 16 {
            continue;
        }
        found.push(FoundChunk {
            dir_index,
            handle,
            meta_path: entry.path(),
        });
    }
    found.sort_by_key(|f| f.handle);
    Ok(found)
}

/// Deletes `*.data` files that no live meta file names (a create, clone or
/// delete interrupted by a crash).
pub fn remove_orphan_data_files(
    chunks_dir: &Path,
    live: &HashSet<(u64, u64)>,
) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(chunks_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".data") else {
            continue;
        };
        let Some((h, id)) = stem.split_once('-') else {
            continue;
        };
        let (Ok(h), Ok(id)) = (u64::from_str_radix(h, 16), u64::from_str_radix(id, 16)) else {
            continue;
        };
        if !live.contains(&(h, id)) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Moves a chunk's files (meta and data) aside: chunkd cannot trust
/// them, the master will re-replicate from another copy, and an operator
/// may want to look. Nothing in quarantine is ever deleted by chunkd.
pub fn quarantine(dir: &DataDir, meta_path: &Path, reason: &str) {
    let qdir = dir.path.join(QUARANTINE_DIR);
    if let Err(e) = std::fs::create_dir_all(&qdir) {
        tracing::error!("could not create {}: {e} ({reason})", qdir.display());
        return;
    }
    let mut moved = Vec::new();
    if let Some(name) = meta_path.file_name() {
        moved.push((meta_path.to_path_buf(), qdir.join(name)));
    }
    let handle_prefix = meta_path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".meta"))
        .map(|h| format!("{h}-"));
    if let (Some(prefix), Ok(entries)) = (handle_prefix, std::fs::read_dir(&dir.chunks_dir)) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(&prefix) && name.ends_with(".data") {
                moved.push((entry.path(), qdir.join(name)));
            }
        }
    }
    for (from, to) in moved {
        match std::fs::rename(&from, &to) {
            Ok(()) => tracing::error!("quarantined {} ({reason})", to.display()),
            Err(e) => tracing::error!("could not quarantine {}: {e} ({reason})", from.display()),
        }
    }
}

/// What recovery found, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecoveryStats {
    pub chunks: u64,
    pub quarantined: u64,
    pub unsettled_blocks_checked: u64,
    /// Bytes past a chunk's length rewritten as zeros (open Intents).
    pub bytes_zeroed: u64,
    pub blocks_recomputed: u64,
    pub compacted: u64,
}

/// One core's chunk count, stored bytes and corrupt chunks, kept up to
/// date as chunks join and leave the store and as they grow or change
/// state. Gauges and heartbeats read them every tick; walking every chunk
/// instead stalled the core's data path for a cache miss per chunk (a
/// core may hold millions of small chunks).
#[derive(Debug, Default)]
pub struct Totals {
    chunks: Cell<u64>,
    bytes: Cell<u64>,
    corrupt: Cell<u64>,
}

impl Totals {
    /// (chunks, stored bytes, corrupt chunks).
    pub fn get(&self) -> (u64, u64, u64) {
        (self.chunks.get(), self.bytes.get(), self.corrupt.get())
    }

    pub(crate) fn join(&self, length: u64, corrupt: bool) {
        self.chunks.set(self.chunks.get() + 1);
        self.bytes.set(self.bytes.get() + length);
        self.corrupt.set(self.corrupt.get() + u64::from(corrupt));
    }

    pub(crate) fn leave(&self, length: u64, corrupt: bool) {
        self.chunks.set(less(self.chunks.get(), 1));
        self.bytes.set(less(self.bytes.get(), length));
        self.corrupt
            .set(less(self.corrupt.get(), u64::from(corrupt)));
    }

    pub(crate) fn resize(&self, old_length: u64, new_length: u64) {
        self.bytes
            .set(less(self.bytes.get() + new_length, old_length));
    }

    pub(crate) fn restate(&self, was_corrupt: bool, is_corrupt: bool) {
        self.corrupt.set(less(
            self.corrupt.get() + u64::from(is_corrupt),
            u64::from(was_corrupt),
        ));
    }
}

/// `a - b` for counts that cannot go below zero unless the bookkeeping is
/// wrong: loud in tests, a clamped gauge in production.
fn less(a: u64, b: u64) -> u64 {
    debug_assert!(a >= b, "chunk totals below zero: {a} - {b}");
    a.saturating_sub(b)
}

pub struct Store {
    pub dirs: Vec<Rc<DataDir>>,
    /// This core's open chunk files, bounded.
    pub open: Rc<OpenFiles>,
    /// This core's chunks with settling to do (housekeeping's work list).
    pub unsettled: Rc<Unsettled>,
    /// Counts of the chunks in `chunks` (each chunk keeps its part current).
    pub totals: Rc<Totals>,
    /// The order the scrubber takes chunks in (`crate::scrub`).
    pub scrub_order: crate::scrub::ScrubOrder,
    chunks: RefCell<BTreeMap<u64, Rc<Chunk>>>,
    /// Handles a create or a clone is writing new files for: both write
    /// the handle's meta file under one temporary name, so two at once
    /// could mix their files.
    creating: RefCell<HashSet<u64>>,
    next_dir: std::cell::Cell<usize>,
    pub chunk_size_bytes: u64,
    pub log_bytes: u32,
    /// Bytes of each data dir's filesystem that no new chunk may take.
    pub reserved_bytes: u64,
}

/// A clone's claim on its handle; see [`Store::begin_clone`].
pub struct Cloning<'a> {
    store: &'a Store,
    handle: u64,
}

impl Drop for Cloning<'_> {
    fn drop(&mut self) {
        self.store.creating.borrow_mut().remove(&self.handle);
    }
}

/// Bytes of a data dir's filesystem ringfs may still use: what an
/// unprivileged user could allocate, less the reserve.
pub fn usable_bytes(stat: &rustix::fs::StatVfs, reserved_bytes: u64) -> u64 {
    stat.f_bavail
        .saturating_mul(stat.f_frsize)
        .saturating_sub(reserved_bytes)
}

impl Store {
    pub fn new(
        dirs: Vec<Rc<DataDir>>,
        chunk_size_bytes: u64,
        log_bytes: u32,
        open_chunks_max: usize,
        reserved_bytes: u64,
    ) -> Store {
        Store {
            dirs,
            open: Rc::new(OpenFiles::new(open_chunks_max)),
            unsettled: Rc::default(),
            totals: Rc::default(),
            scrub_order: crate::scrub::ScrubOrder::default(),
            chunks: RefCell::new(BTreeMap::new()),
            creating: RefCell::new(HashSet::new()),
            next_dir: std::cell::Cell::new(0),
            chunk_size_bytes,
            log_bytes,
            reserved_bytes,
        }
    }

    pub fn get(&self, handle: u64) -> ChunkResult<Rc<Chunk>> {
        self.chunks
            .borrow()
            .get(&handle)
            .cloned()
            .ok_or(ChunkError::NotFound(handle))
    }

    pub fn len(&self) -> usize {
        self.chunks.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.borrow().is_empty()
    }

    pub fn all(&self) -> Vec<Rc<Chunk>> {
        self.chunks.borrow().values().cloned().collect()
    }

    /// (chunks, stored bytes, corrupt chunks), kept as chunks change.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.totals.get()
    }

    /// [`Store::totals`] counted the slow way, by walking every chunk: for
    /// checking the kept counts (housekeeping does in debug builds).
    pub fn totals_by_walk(&self) -> (u64, u64, u64) {
        let chunks = self.chunks.borrow();
        let (mut bytes, mut corrupt) = (0u64, 0u64);
        for c in chunks.values() {
            bytes += c.length();
            corrupt += u64::from(c.state() == ChunkState::Corrupt);
        }
        (chunks.len() as u64, bytes, corrupt)
    }

    /// Puts `chunk` in the map, counted; a chunk it replaces leaves the
    /// totals (the caller decides what else happens to it).
    fn put(&self, chunks: &mut BTreeMap<u64, Rc<Chunk>>, chunk: Rc<Chunk>) -> Option<Rc<Chunk>> {
        chunk.join_totals();
        let (handle, instance) = (chunk.handle, chunk.data_file_id());
        let old = chunks.insert(handle, chunk);
        if let Some(old) = &old {
            old.leave_totals();
        }
        self.scrub_order.push(handle, instance, Instant::now());
        self.scrub_order.compact_if_sparse(chunks.len(), |h, i| {
            chunks.get(&h).is_some_and(|c| c.data_file_id() == i)
        });
        old
    }

    /// Summaries of chunks with a handle above `start_after`, in order.
    pub fn list(&self, start_after: u64, limit: usize) -> Vec<ChunkSummary> {
        self.chunks
            .borrow()
            .range(start_after.saturating_add(1)..)
            .take(limit)
            .map(|(_, c)| c.summary())
            .collect()
    }

    /// Recovers one chunk found at start-up. Damaged metadata quarantines
    /// the chunk (it is then simply absent: the master re-replicates).
    pub async fn recover(&self, found: &FoundChunk, stats: &mut RecoveryStats) -> ChunkResult<()> {
        let dir = self.dirs[found.dir_index].clone();
        match recover_chunk(&dir, self, found, stats).await {
            Ok(chunk) => {
                let mut chunks = self.chunks.borrow_mut();
                if let Some(other) = chunks.get(&found.handle) {
                    // The same handle on two dirs: keep the newer version.
                    let (keep_new, loser) = if chunk.version() > other.version() {
                        (true, other.dir.meta_path(other.handle))
                    } else {
                        (false, found.meta_path.clone())
                    };
                    let loser_dir = if keep_new {
                        other.dir.clone()
                    } else {
                        dir.clone()
                    };
                    quarantine(&loser_dir, &loser, "duplicate handle on another data dir");
                    stats.quarantined += 1;
                    if keep_new {
                        self.put(&mut chunks, Rc::new(chunk));
                    }
                } else {
                    self.put(&mut chunks, Rc::new(chunk));
                }
                stats.chunks += 1;
                Ok(())
            }
            Err(e) => {
                quarantine(&dir, &found.meta_path, &e.to_string());
                stats.quarantined += 1;
                Ok(())
            }
        }
    }

    /// Picks a data dir for a new chunk: among the dirs with room beyond
    /// the reserve, those within 10 % (at least 1 GiB) of the most free
    /// space take turns, so equal disks fill evenly and a fuller disk is
    /// skipped.
    pub(crate) fn choose_dir(&self) -> ChunkResult<Rc<DataDir>> {
        let need = ringfs_wire::config::room_for_new_chunk_bytes(self.chunk_size_bytes);
        let free: Vec<(u64, &Rc<DataDir>)> = self
            .dirs
            .iter()
            .filter_map(|d| {
                let stat = rustix::fs::statvfs(&d.path).ok()?;
                Some((usable_bytes(&stat, self.reserved_bytes), d))
            })
            .filter(|(f, _)| *f >= need)
            .collect();
        let most = free.iter().map(|(f, _)| *f).max().ok_or_else(|| {
            ChunkError::NoSpace(format!(
                "no data dir has {need} bytes free for another chunk beyond the \
                 {} reserved (data_dir_reserved_bytes)",
                self.reserved_bytes
            ))
        })?;
        let slack = (most / 10).max(1 << 30);
        let candidates: Vec<&Rc<DataDir>> = free
            .iter()
            .filter(|(f, _)| *f + slack >= most)
            .map(|(_, d)| *d)
            .collect();
        let turn = self.next_dir.get();
        self.next_dir.set(turn.wrapping_add(1));
        Ok(candidates[turn % candidates.len()].clone())
    }

    /// Creates an empty chunk: a preallocated data file (so writes are
    /// overwrites, never extending O_DIRECT writes) and its meta file.
    /// Creating a chunk that exists with the same version is a no-op (the
    /// master retries commands).
    pub async fn create(&self, handle: u64, version: u64) -> ChunkResult<Rc<Chunk>> {
        if let Ok(existing) = self.get(handle) {
            if existing.version() == version && existing.length() == 0 {
                return Ok(existing);
            }
            return Err(ChunkError::Exists(handle));
        }
        if !self.creating.borrow_mut().insert(handle) {
            return Err(ChunkError::Busy(format!(
                "chunk {handle:#x} is being created or cloned"
            )));
        }
        let r = self.create_inner(handle, version).await;
        self.creating.borrow_mut().remove(&handle);
        let chunk = Rc::new(r?);
        self.put(&mut self.chunks.borrow_mut(), chunk.clone());
        Ok(chunk)
    }

    /// Claims `handle` for a clone until the guard drops (also when the
    /// clone's future is dropped half way). A create or another clone of
    /// the handle meanwhile gets `Busy`.
    pub fn begin_clone(&self, handle: u64) -> ChunkResult<Cloning<'_>> {
        if !self.creating.borrow_mut().insert(handle) {
            return Err(ChunkError::Busy(format!(
                "chunk {handle:#x} is being created or cloned"
            )));
        }
        Ok(Cloning {
            store: self,
            handle,
        })
    }

    async fn create_inner(&self, handle: u64, version: u64) -> ChunkResult<Chunk> {
        let dir = self.choose_dir()?;
        let data_file_id = random_nonzero()?;
        let base = MetaBase {
            handle,
            chunk_size_bytes: self.chunk_size_bytes,
            data_file_id,
            version,
            length_bytes: 0,
            state: ChunkState::Ok,
            base_seq: 0,
            log_bytes: self.log_bytes,
            crcs: Vec::new(),
        };
        // The data file is created while the meta file is written; both
        // names are durable with the directory fsync after the meta's
        // rename, before the create is acknowledged.
        let (meta_file, _, data) = write_meta_file_with(
            &dir,
            &base,
            &[],
            create_data_file(&dir, handle, data_file_id),
        )
        .await?;
        let replayed = meta::replay(&base, &[]).map_err(|e| ChunkError::Internal(e.to_string()))?;
        let data = DataFile {
            file: data,
            allocated_bytes: 0,
        };
        Ok(Chunk::from_parts(
            dir,
            self,
            &base,
            replayed,
            data,
            meta_file,
            LogEnd::EMPTY,
        ))
    }

    /// Installs a chunk built elsewhere (a clone): replaces any replica of
    /// the same handle.
    pub fn install(&self, chunk: Chunk) -> Option<Rc<Chunk>> {
        let old = self.put(&mut self.chunks.borrow_mut(), Rc::new(chunk));
        if let Some(old) = &old {
            old.mark_deleted();
        }
        old
    }

    /// Deletes a replica: the meta file first (a crash after it leaves an
    /// orphan data file, removed at the next start), then the data file.
    pub async fn delete(&self, handle: u64) -> ChunkResult<()> {
        let chunk = self
            .chunks
            .borrow_mut()
            .remove(&handle)
            .ok_or(ChunkError::NotFound(handle))?;
        chunk.mark_deleted();
        remove_chunk_files(&chunk.dir, handle, chunk.data_file_id()).await
    }
}

pub(crate) async fn remove_chunk_files(
    dir: &DataDir,
    handle: u64,
    data_file_id: u64,
) -> ChunkResult<()> {
    let meta = dir.meta_path(handle);
    match compio::fs::remove_file(&meta).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ChunkError::io(format!("removing {}", meta.display()), e)),
    }
    let data = dir.data_path(handle, data_file_id);
    match compio::fs::remove_file(&data).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ChunkError::io(format!("removing {}", data.display()), e)),
    }
    dir.sync_chunks_dir().await
}

pub(crate) fn random_nonzero() -> ChunkResult<u64> {
    loop {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| ChunkError::Internal(format!("getrandom: {e}")))?;
        let v = u64::from_le_bytes(b);
        if v != 0 {
            return Ok(v);
        }
    }
}

/// Creates an empty data file, O_DIRECT|O_DSYNC like every data file a
/// chunk writes through (a write is durable when it completes). Space is
/// allocated as data arrives ([`grow_allocation`]), so a small file's
/// chunk takes what it holds, not a whole chunk. Not synced here: the
/// directory fsync that makes the chunk's meta file durable covers the new
/// entry, the file is empty, and every write to it is O_DSYNC; recovery
/// recreates an empty chunk's data file if a crash lost it anyway.
pub(crate) async fn create_data_file(
    dir: &DataDir,
    handle: u64,
    data_file_id: u64,
) -> ChunkResult<compio::fs::File> {
    let path = dir.data_path(handle, data_file_id);
    dio::open_direct(&path, true, true)
        .await
        .map_err(|e| ChunkError::io(format!("creating {}", path.display()), e))
}

/// Smallest allocation step of a data file.
pub const ALLOCATION_MIN_BYTES: u64 = BLOCK_BYTES as u64;

/// How far to allocate a data file that holds `allocated` bytes so that
/// `need` bytes fit: at least doubling (a 64 MiB chunk written front to
/// back costs about a dozen fallocates), never past the chunk size.
pub fn next_allocation(allocated: u64, need: u64, chunk_size_bytes: u64) -> u64 {
    assert!(need <= chunk_size_bytes, "need {need} past the chunk size");
    if need <= allocated {
        return allocated;
    }
    let need = need.div_ceil(ALLOCATION_MIN_BYTES) * ALLOCATION_MIN_BYTES;
    let grown = need
        .max(allocated.saturating_mul(2))
        .min(chunk_size_bytes)
        .max(need);
    assert!(grown >= need && grown > allocated);
    grown
}

/// Allocates `[from, to)` of a data file (mode 0 also raises the size), so
/// writes there are overwrites of allocated space, never the extending
/// O_DIRECT writes the kernel hands to worker threads. `fallocate` only
/// allocates extents, so it runs on the core's thread (compio has no op for
/// it); the new size becomes durable with the next `fdatasync`, which every
/// acknowledgement waits for.
pub(crate) fn grow_allocation(
    file: &compio::fs::File,
    from: u64,
    to: u64,
    what: impl FnOnce() -> String,
) -> ChunkResult<()> {
    assert!(from < to, "allocation must grow: {from}..{to}");
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), from, to - from).map_err(|e| {
        let e: std::io::Error = e.into();
        if e.raw_os_error() == Some(28) {
            ChunkError::NoSpace(format!("allocating {}", what()))
        } else {
            ChunkError::io(format!("allocating {}", what()), e)
        }
    })
}

/// The largest meta file any layout allows (the largest chunk with the
/// largest log): about 16 MiB.
fn meta_file_bytes_max() -> u64 {
    MetaLayout::new(meta::MAX_CHUNK_SIZE_BYTES, meta::MAX_LOG_BYTES)
        .map(|l| l.file_bytes)
        .expect("the largest chunk and log sizes make a valid layout")
}

/// Reads a whole meta file, refusing one longer than any layout allows
/// before reading it: a damaged (or sparse, huge) file must not take the
/// memory of a start-up that reads thousands of them. The caller checks
/// the length against the file's own layout once its base is decoded.
fn read_meta_file(path: &Path) -> ChunkResult<Vec<u8>> {
    use std::io::Read;
    let max = meta_file_bytes_max();
    let ctx = |what: &str| format!("{what} {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| ChunkError::io(ctx("opening"), e))?;
    let size = file
        .metadata()
        .map_err(|e| ChunkError::io(ctx("stat"), e))?
        .len();
    let too_long = |size: u64| {
        ChunkError::Internal(format!(
            "{} is {size} bytes, longer than any meta file ({max} bytes)",
            path.display()
        ))
    };
    if size > max {
        return Err(too_long(size));
    }
    // One byte more than allowed tells a file that grew since the stat.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ChunkError::io(ctx("reading"), e))?;
    if bytes.len() as u64 > max {
        return Err(too_long(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Decodes, replays and checks one chunk; see the recovery argument in
/// docs/design/006-chunk-meta-file.md.
async fn recover_chunk(
    dir: &Rc<DataDir>,
    store: &Store,
    found: &FoundChunk,
    stats: &mut RecoveryStats,
) -> ChunkResult<Chunk> {
    let bytes = read_meta_file(&found.meta_path)?;
    let bad =
        |e: meta::MetaError| ChunkError::Internal(format!("{}: {e}", found.meta_path.display()));
    let base = MetaBase::decode(&bytes).map_err(bad)?;
    if base.handle != found.handle {
        return Err(ChunkError::Internal(format!(
            "{} holds handle {:#x}",
            found.meta_path.display(),
            base.handle
        )));
    }
    let layout: MetaLayout = base.layout();
    if bytes.len() as u64 > layout.file_bytes {
        return Err(ChunkError::Internal(format!(
            "{} is longer than the {} bytes its layout allows",
            found.meta_path.display(),
            layout.file_bytes
        )));
    }
    let log_start = layout.log_offset as usize;
    let log_end = (layout.log_offset + layout.log_bytes) as usize;
    if bytes.len() < log_start {
        return Err(ChunkError::Internal(format!(
            "{} is {} bytes, shorter than its base of {log_start}",
            found.meta_path.display(),
            bytes.len()
        )));
    }
    // The log is written as it fills (note 006): pages not yet written
    // are zeros.
    let mut bytes = bytes;
    bytes.resize(bytes.len().max(log_end), 0);
    let log = &bytes[log_start..log_end];
    let scan = meta::scan_log(&layout, log).map_err(bad)?;
    let mut replayed = meta::replay(&base, &scan.records).map_err(bad)?;
    let data_path = dir.data_path(base.handle, base.data_file_id);
    // An empty chunk's data file was never synced on its own (see
    // `create_data_file`): if the crash lost it, nothing was lost with it.
    let create = replayed.length_bytes == 0 && !data_path.exists();
    if create {
        tracing::warn!(
            handle = base.handle,
            "empty chunk without its data file: recreated"
        );
    }
    let data = dio::open_direct(&data_path, create, true)
        .await
        .map_err(|e| ChunkError::io(format!("opening {}", data_path.display()), e))?;
    let size = std::fs::metadata(&data_path)
        .map_err(|e| ChunkError::io(format!("stat {}", data_path.display()), e))?
        .len();
    // Every acknowledged byte lies inside the durable allocation (the
    // O_DSYNC write before an acknowledgement also made the size durable). A
    // shorter file means the last, unacknowledged, write grew it and the
    // crash lost the growth: allocate again (zeros) and let the unsettled
    // blocks below take CRCs that match what is there.
    let need = replayed
        .length_bytes
        .div_ceil(ALLOCATION_MIN_BYTES)
        .saturating_mul(ALLOCATION_MIN_BYTES);
    let mut allocated = size;
    if size < need {
        grow_allocation(&data, size, need, || data_path.display().to_string())?;
        data.sync_all()
            .await
            .map_err(|e| ChunkError::io(format!("syncing {}", data_path.display()), e))?;
        allocated = need;
        tracing::warn!(
            handle = base.handle,
            size,
            need,
            "data file shorter than its chunk's length after a crash: allocated again"
        );
    }
    // Blocks whose last write may not have reached the disk: keep what is
    // there, with a CRC that matches it (that write was never acknowledged;
    // every acknowledged byte of the block is unchanged on disk).
    let mut recomputed = 0u64;
    let align = dir.align.offset_align_bytes as u64;
    let mut scratch = AlignedBuf::zeroed(BLOCK_BYTES, dir.align.mem_align_bytes);
    for &block in &replayed.unsettled_blocks {
        let start = block as u64 * BLOCK_BYTES as u64;
        let end = (start + BLOCK_BYTES as u64).min(replayed.length_bytes);
        if end <= start {
            continue;
        }
        scratch.set_len_bytes(0);
        let io_len = align_up(end - start, align) as usize;
        let compio::BufResult(r, slice) = data.read_exact_at(scratch.slice(0..io_len), start).await;
        scratch = slice.into_inner();
        r.map_err(|e| ChunkError::io(format!("reading {}", data_path.display()), e))?;
        let crc = crc32c(&scratch.full()[..(end - start) as usize]);
        stats.unsettled_blocks_checked += 1;
        if replayed.crcs[block as usize] != crc {
            replayed.crcs[block as usize] = crc;
            recomputed += 1;
        }
    }
    stats.blocks_recomputed += recomputed;
    // Past the length, an open Intent's blocks may hold an unacknowledged
    // write whose record never reached the log; holes and pads count on
    // zeros there.
    let zeroed = zero_past_length(
        &data,
        &replayed.open_intent_blocks,
        replayed.length_bytes,
        allocated,
        dir.align,
    )
    .await
    .map_err(|e| {
        ChunkError::io(
            format!("zeroing past the length of {}", data_path.display()),
            e,
        )
    })?;
    stats.bytes_zeroed += zeroed;
    if recomputed > 0 {
        tracing::warn!(
            handle = base.handle,
            blocks = recomputed,
            "recomputed CRCs of blocks torn by an unacknowledged write"
        );
    }
    // A torn tail (non-zero bytes where the next batch goes) or recomputed
    // CRCs: start a fresh base, so the next batch never sits beside stale
    // bytes and the recomputed CRCs are durable.
    let needs_compaction = recomputed > 0
        || !scan.tail_zeroed
        || !replayed.unsettled_blocks.is_empty()
        || !replayed.open_intent_blocks.is_empty();
    let meta_file = dio::open_direct(&found.meta_path, false, true)
        .await
        .map_err(|e| ChunkError::io(format!("opening {}", found.meta_path.display()), e))?;
    let chunk = Chunk::from_parts(
        dir.clone(),
        store,
        &base,
        replayed,
        DataFile {
            file: data,
            allocated_bytes: allocated,
        },
        meta_file,
        LogEnd {
            offset: scan.end_offset,
            next_batch_seq: scan.next_batch_seq,
        },
    );
    if needs_compaction {
        chunk.compact().await?;
        stats.compacted += 1;
    }
    Ok(chunk)
}

/// Writes zeros over every byte at or past `length` (and below
/// `allocated`) of `blocks`, in runs of at most `ZERO_RUN_BYTES`. The
/// data file is O_DSYNC, so they are durable on return. Returns the
/// bytes written.
async fn zero_past_length(
    data: &compio::fs::File,
    blocks: &[u32],
    length: u64,
    allocated: u64,
    align: crate::dio::DioAlign,
) -> std::io::Result<u64> {
    const BLOCK: u64 = BLOCK_BYTES as u64;
    let sector = align.offset_align_bytes as u64;
    // Byte ranges to zero, sector aligned: a partial sector at the length
    // keeps its bytes below the length, so it is read and rewritten.
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &block in blocks {
        let start = (u64::from(block) * BLOCK).max(length);
        let end = ((u64::from(block) + 1) * BLOCK).min(allocated);
        if start >= end {
            continue;
        }
        match ranges.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => ranges.push((start, end)),
        }
    }
    let mut written = 0;
    let mut file = data;
    let mut buf = AlignedBuf::zeroed(ZERO_RUN_BYTES as usize, align.mem_align_bytes);
    for (start, end) in ranges {
        let mut at = crate::dio::align_down(start, sector);
        while at < end {
            let n = (end - at).min(ZERO_RUN_BYTES);
            let io_len = align_up(n, sector);
            buf.set_len_bytes(0);
            buf.zero_from(0);
            if at < start {
                // The sector holding the length: keep the bytes below it.
                // A file cut short inside it reads short: the rest is zeros.
                let compio::BufResult(r, slice) =
                    data.read_at(buf.slice(0..sector as usize), at).await;
                buf = slice.into_inner();
                r?;
                buf.zero_from((start - at) as usize);
            }
            buf.set_len_bytes(io_len as usize);
            let compio::BufResult(r, b) = file.write_all_at(buf, at).await;
            buf = b;
            r?;
            written += io_len;
            at += io_len;
        }
    }
    Ok(written)
}

/// Zeros written per write at recovery (`zero_past_length`).
const ZERO_RUN_BYTES: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::{ALLOCATION_MIN_BYTES as STEP, next_allocation};

    const MIB: u64 = 1 << 20;

    #[test]
    fn allocation_doubles_to_the_chunk_size_in_block_steps() {
        let chunk = 64 * MIB;
        assert_eq!(next_allocation(0, 1, chunk), STEP);
        assert_eq!(next_allocation(0, STEP + 1, chunk), 2 * STEP);
        assert_eq!(next_allocation(STEP, STEP, chunk), STEP, "already there");
        assert_eq!(next_allocation(STEP, STEP + 1, chunk), 2 * STEP);
        assert_eq!(next_allocation(4 * MIB, 4 * MIB + 1, chunk), 8 * MIB);
        assert_eq!(next_allocation(4 * MIB, 20 * MIB, chunk), 20 * MIB);
        assert_eq!(next_allocation(48 * MIB, 49 * MIB, chunk), chunk);
        assert_eq!(next_allocation(0, chunk, chunk), chunk);
        // Sequential 4 MiB writes of a whole chunk: a handful of steps.
        let (mut have, mut steps) = (0, 0);
        for end in (1..=16).map(|i| i * 4 * MIB) {
            let next = next_allocation(have, end, chunk);
            steps += u32::from(next != have);
            have = next;
        }
        assert_eq!((have, steps), (chunk, 5));
    }
}
