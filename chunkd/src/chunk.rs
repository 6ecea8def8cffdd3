//! One chunk replica on its owner core: the O_DIRECT data file, the meta
//! file (base CRC table + mutation log, docs/design/006-chunk-meta-file.md)
//! and the in-memory state the data path works from.
//!
//! A mutation goes: lock its blocks → compute the new CRCs (reading and
//! verifying a partial block only when it is not the cached tail) → append
//! its Write record to the log (group-committed, O_DSYNC) → write the data
//! (O_DSYNC) → update the in-memory table and unlock → acknowledge. Log
//! before data is what lets recovery tell a torn, unacknowledged write from
//! corruption; inside a durable Intent (note 015) recovery already treats
//! the blocks as torn-or-not, so the data goes out alongside the record.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use compio::buf::{IntoInner, IoBuf};
use compio::io::{AsyncReadAtExt, AsyncWriteAtExt};
use local_event::Event;
use ringfs_wire::checksum::{BLOCK_BYTES, block_count, crc32c, crc32c_extend};

use crate::dio::{self, AlignedBuf, DioAlign, align_up};
use crate::error::{ChunkError, ChunkResult};
use crate::groupsync::GroupSync;
use crate::intent::{self, BlockSet};
use crate::meta::{self, ChunkState, LogRecord, MetaBase, MetaLayout};
use crate::openfiles::{ChunkFiles, OpenFiles, OpenSlot};
use crate::rangelock::RangeLock;
use crate::store;
use crate::store::Totals;
use crate::unsettled::Unsettled;

const BLOCK: u64 = BLOCK_BYTES as u64;
/// Most records one log batch takes; the rest wait for the next batch.
const BATCH_RECORDS_MAX: usize = 256;
/// Attempts to reopen a chunk's files while compactions keep replacing its
/// meta file under the reopen (each attempt is two opens).
const REOPEN_ATTEMPTS_MAX: usize = 4;

/// A data dir as one core's store sees it.
pub struct DataDir {
    pub index: usize,
    pub path: PathBuf,
    pub chunks_dir: PathBuf,
    pub align: DioAlign,
    pub dir_id: u64,
    /// Creates, renames and deletes on this core share directory fsyncs.
    pub dir_sync: GroupSync,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("index", &self.index)
            .field("path", &self.path)
            .field("dir_id", &self.dir_id)
            .finish_non_exhaustive()
    }
}

impl DataDir {
    /// fsyncs the chunks directory, so a create, rename or unlink made
    /// before this call is durable; concurrent callers share one fsync.
    pub async fn sync_chunks_dir(&self) -> ChunkResult<()> {
        let path = &self.chunks_dir;
        self.dir_sync
            .sync(|| {
                let owned = path.to_path_buf();
                async move {
                    compio::runtime::spawn_blocking(move || std::fs::File::open(&owned)?.sync_all())
                        .await
                        .unwrap_or_else(|_| Err(std::io::Error::other("dir sync task panicked")))
                }
            })
            .await
            .map_err(|e| ChunkError::Internal(format!("syncing dir {}: {e}", path.display())))
    }

    pub fn meta_path(&self, handle: u64) -> PathBuf {
        self.chunks_dir.join(format!("{handle:016x}.meta"))
    }

    /// A temporary name no other writer of this process holds: a clone
    /// and a compaction of the same handle, or a retry after a failed
    /// create, each get their own file (created exclusively), so one can
    /// never rename another's half-written bytes, or a longer stale file's
    /// tail, into place. Start-up removes every `.meta.tmp` left behind.
    pub fn meta_tmp_path(&self, handle: u64) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.chunks_dir
            .join(format!("{handle:016x}-{n:x}.meta.tmp"))
    }

    pub fn data_path(&self, handle: u64, data_file_id: u64) -> PathBuf {
        self.chunks_dir
            .join(format!("{handle:016x}-{data_file_id:016x}.data"))
    }
}

/// What a replica reports about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSummary {
    pub handle: u64,
    pub version: u64,
    pub length_bytes: u64,
    pub state: ChunkState,
}

/// The bytes of the last, partially filled block, as verified on disk: an
/// append extends its CRC and writes its head sector again without
/// reading it back. Only the bytes are kept (a 4 KiB file's chunk keeps
/// 4 KiB, not a 64 KiB block image), and only while the chunk is open
/// (`crate::openfiles`).
pub(crate) struct Tail {
    block: u64,
    bytes: Vec<u8>,
}

struct Mem {
    version: u64,
    length: u64,
    state: ChunkState,
    crcs: Vec<u32>,
    data_file_id: u64,
    /// Last seq handed to a Write record; the next gets +1.
    last_seq: u64,
    /// Last seq whose Write record is durable in the log.
    last_logged_seq: u64,
    /// Seqs whose Write record is in the log but whose data is not yet
    /// durable: the Durable watermark is just below the smallest.
    not_durable: BTreeSet<u64>,
    /// Mutations between "record durable" and "CRCs applied to memory":
    /// a compaction must wait for none, or its snapshot would miss them.
    applying: usize,
    announced_durable: u64,
    /// Serial of the last mutation ordered on this replica, since the last
    /// version change.
    ordered_serial: u64,
    /// End of the last ordered write or append (appends go after it).
    reserved_end: u64,
    /// For the scrubber: when every block was last verified.
    verified_at: Instant,
    /// Blocks the durable log holds open Intents for (note 015).
    intent_on_disk: BlockSet,
    /// Blocks a write may send data to before its record is durable: open
    /// in the durable log and in any batch in flight that restates them.
    intent_durable: BlockSet,
}

struct LogState {
    /// Next batch offset, relative to the log region.
    next_offset: u64,
    /// How much of the log region the file holds (zeros past the last
    /// batch); the rest is written, zeros and all, as batches reach it.
    written_end: u64,
    next_batch_seq: u64,
    pending: Vec<(u64, LogRecord)>,
    next_record_id: u64,
    /// Every record with an id below this is durable (or failed).
    done_below: u64,
    writing: bool,
    failed: Option<String>,
    /// The chunk version of the last Version record queued (durable or
    /// not). `Mem::version` moves only once that record is durable, so a
    /// write checked against the old version can still be on its way to
    /// the log: it must not be queued behind the new Version, or replay
    /// finds the version going backwards and refuses the whole replica.
    version_queued: u64,
}

pub struct Chunk {
    pub handle: u64,
    pub dir: Rc<DataDir>,
    layout: MetaLayout,
    /// The core's bounded set of open chunks, and this chunk's place in it:
    /// the files are opened on demand (`files`).
    open: Rc<OpenFiles>,
    open_id: u64,
    slot: Rc<OpenSlot>,
    /// The core's chunks with settling to do: this one joins it with each
    /// meta-log batch (`crate::unsettled`).
    unsettled: Rc<Unsettled>,
    /// The core's chunk count, bytes and corrupt chunks, which this chunk
    /// is part of while `counted` (it is in the store's map).
    totals: Rc<Totals>,
    counted: Cell<bool>,
    mem: RefCell<Mem>,
    locks: RangeLock,
    log: RefCell<LogState>,
    log_event: Event,
    applying_event: Event,
    serial_event: Event,
    deleted: Cell<bool>,
    /// Bytes of the data file allocated (its size): every write lands
    /// inside, so it is an overwrite. Grows, never shrinks.
    allocated_bytes: Cell<u64>,
}

/// What [`Chunk::settle`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Nothing was left to settle (or can be: a corrupt chunk, a failed log).
    Clean,
    /// A batch logged the durable watermark or closed the Intents.
    Logged,
    /// Writes were in flight: ask again later.
    Busy,
}

/// How a mutation gets its serial.
#[derive(Clone, Copy, Debug)]
pub enum Order {
    /// The primary assigns the next one.
    Assign,
    /// A secondary applies the primary's.
    Follow(u64),
}

/// A chunk's open data file and how much of it is allocated.
pub(crate) struct DataFile {
    pub file: compio::fs::File,
    pub allocated_bytes: u64,
}

/// Where the next batch of a chunk's meta log goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogEnd {
    /// Offset in the log region.
    pub offset: u64,
    pub next_batch_seq: u64,
}

impl LogEnd {
    /// The log of a meta file just written with no batches.
    pub const EMPTY: LogEnd = LogEnd {
        offset: 0,
        next_batch_seq: 1,
    };
}

/// A mutation with its place in the order; finish it with
/// `finish_write` or `finish_pad`.
pub struct Ticket {
    pub serial: u64,
    pub offset: u64,
    pub len: u64,
    version: u64,
    guard: crate::rangelock::RangeGuard,
}

pub enum Appended {
    At(Ticket),
    /// The record does not fit: this pads the chunk; answer ChunkFull.
    Full(Ticket),
}

/// Bytes to write at `offset` (already verified against the sender's CRCs).
pub struct WriteData {
    /// Pieces of at most one buffer each, in order.
    pub bufs: Vec<AlignedBuf>,
    pub len: u64,
    /// Sender's CRC per 64 KiB piece of the data from its first byte.
    pub piece_crcs: Vec<u32>,
}

pub struct WriteOutcome {
    pub new_length: u64,
    /// The buffers, for their pool.
    pub bufs: Vec<AlignedBuf>,
}

pub struct ReadOutcome {
    pub version: u64,
    pub chunk_length: u64,
    /// Chunk offset of the first returned byte (block aligned).
    pub start: u64,
    /// Bytes returned, from `start`.
    pub len: u64,
    pub crcs: Vec<u32>,
    pub bufs: Vec<AlignedBuf>,
}

fn zeros() -> &'static [u8] {
    static ZEROS: [u8; BLOCK_BYTES] = [0; BLOCK_BYTES];
    &ZEROS
}

/// CRC of `crc`'s bytes followed by `n` zero bytes.
fn extend_zeros(mut crc: u32, mut n: u64) -> u32 {
    while n > 0 {
        let k = n.min(BLOCK) as usize;
        crc = crc32c_extend(crc, &zeros()[..k]);
        n -= k as u64;
    }
    crc
}

impl Chunk {
    /// Wraps files already opened and recovered (see `store`).
    pub(crate) fn from_parts(
        dir: Rc<DataDir>,
        store: &store::Store,
        base: &MetaBase,
        replayed: meta::Replayed,
        data: DataFile,
        meta_file: compio::fs::File,
        log_end: LogEnd,
    ) -> Chunk {
        let DataFile {
            file: data,
            allocated_bytes,
        } = data;
        let layout = base.layout();
        let chunk_blocks = u32::try_from(block_count(layout.chunk_size_bytes))
            .expect("a checked base's chunk has at most 16384 blocks");
        let written_end = log_written_end(&meta_file, &layout);
        let open = &store.open;
        let (open_id, slot) = open.new_slot();
        open.install(
            open_id,
            &slot,
            ChunkFiles {
                data,
                meta: meta_file,
            },
            false,
        );
        assert_eq!(
            replayed.crcs.len() as u64,
            block_count(replayed.length_bytes),
            "replayed table does not match the length"
        );
        Chunk {
            handle: base.handle,
            dir,
            layout,
            open: open.clone(),
            open_id,
            slot,
            unsettled: store.unsettled.clone(),
            totals: store.totals.clone(),
            counted: Cell::new(false),
            mem: RefCell::new(Mem {
                version: replayed.version,
                length: replayed.length_bytes,
                state: replayed.state,
                crcs: replayed.crcs,
                data_file_id: base.data_file_id,
                last_seq: replayed.last_seq,
                last_logged_seq: replayed.last_seq,
                not_durable: BTreeSet::new(),
                applying: 0,
                announced_durable: replayed.last_seq,
                verified_at: Instant::now(),
                ordered_serial: 0,
                reserved_end: 0,
                intent_on_disk: BlockSet::new(chunk_blocks),
                intent_durable: BlockSet::new(chunk_blocks),
            }),
            locks: RangeLock::new(),
            log: RefCell::new(LogState {
                written_end,
                next_offset: log_end.offset,
                next_batch_seq: log_end.next_batch_seq,
                pending: Vec::new(),
                next_record_id: 0,
                done_below: 0,
                writing: false,
                failed: None,
                version_queued: replayed.version,
            }),
            log_event: Event::new(),
            applying_event: Event::new(),
            serial_event: Event::new(),
            deleted: Cell::new(false),
            allocated_bytes: Cell::new(allocated_bytes),
        }
    }

    /// The chunk's open files, reopened by name if the core closed them
    /// (`crate::openfiles`). The clone keeps the descriptors open for as
    /// long as the caller holds it, even if the chunk is closed meanwhile.
    pub(crate) async fn files(&self) -> ChunkResult<ChunkFiles> {
        if let Some(files) = self.open.get(self.open_id, &self.slot) {
            return Ok(files);
        }
        for _ in 0..REOPEN_ATTEMPTS_MAX {
            if self.deleted.get() {
                return Err(ChunkError::NotFound(self.handle));
            }
            let generation = self.slot.meta_generation();
            let data_path = self.dir.data_path(self.handle, self.data_file_id());
            let meta_path = self.dir.meta_path(self.handle);
            let data = dio::open_direct(&data_path, false, true)
                .await
                .map_err(|e| self.reopen_error(&data_path, e))?;
            let meta = dio::open_direct(&meta_path, false, true)
                .await
                .map_err(|e| self.reopen_error(&meta_path, e))?;
            // A compaction that renamed a new meta file over the path while
            // we opened it has installed that file itself; ours may be the
            // replaced one, whose appends recovery would never see.
            if self.slot.meta_generation() == generation && !self.deleted.get() {
                return Ok(self.open.install(
                    self.open_id,
                    &self.slot,
                    ChunkFiles { data, meta },
                    true,
                ));
            }
            if let Some(files) = self.open.get(self.open_id, &self.slot) {
                return Ok(files);
            }
        }
        Err(ChunkError::Busy(format!(
            "chunk {:#x}: its meta file kept being replaced while it was reopened",
            self.handle
        )))
    }

    /// The data file for a scrub pass: the open one, or one opened for the
    /// pass alone, so scrubbing every chunk in turn neither reorders nor
    /// floods the core's open set.
    async fn data_file_for_scan(&self) -> ChunkResult<compio::fs::File> {
        if let Some(files) = self.slot.files() {
            return Ok(files.data);
        }
        if self.deleted.get() {
            return Err(ChunkError::NotFound(self.handle));
        }
        let path = self.dir.data_path(self.handle, self.data_file_id());
        dio::open_direct(&path, false, false)
            .await
            .map_err(|e| self.reopen_error(&path, e))
    }

    fn reopen_error(&self, path: &std::path::Path, e: std::io::Error) -> ChunkError {
        if self.deleted.get() {
            ChunkError::NotFound(self.handle)
        } else {
            ChunkError::io(format!("reopening {}", path.display()), e)
        }
    }

    /// Makes `[0, end)` of the data file allocated (see `store::next_allocation`).
    fn ensure_allocated(&self, data: &compio::fs::File, end: u64) -> ChunkResult<()> {
        let have = self.allocated_bytes.get();
        let want = store::next_allocation(have, end, self.layout.chunk_size_bytes);
        if want > have {
            store::grow_allocation(data, have, want, || {
                format!("chunk {:#x} to {want} bytes", self.handle)
            })?;
            self.allocated_bytes.set(want);
        }
        Ok(())
    }

    pub fn summary(&self) -> ChunkSummary {
        let mem = self.mem.borrow();
        ChunkSummary {
            handle: self.handle,
            version: mem.version,
            length_bytes: mem.length,
            state: mem.state,
        }
    }

    pub fn version(&self) -> u64 {
        self.mem.borrow().version
    }

    pub fn length(&self) -> u64 {
        self.mem.borrow().length
    }

    pub fn state(&self) -> ChunkState {
        self.mem.borrow().state
    }

    pub fn data_file_id(&self) -> u64 {
        self.mem.borrow().data_file_id
    }

    pub fn verified_at(&self) -> Instant {
        self.mem.borrow().verified_at
    }

    /// The replica is gone (deleted or replaced): nothing more is served
    /// from it and its files are closed (at once, or by the last operation
    /// still using them), so a deleted file's space is freed.
    pub fn mark_deleted(&self) {
        self.deleted.set(true);
        self.open.forget(self.open_id, &self.slot);
        self.leave_totals();
    }

    /// The chunk is in the store's map from now on: the core's totals
    /// count it, and follow its length and state.
    pub(crate) fn join_totals(&self) {
        assert!(
            !self.counted.get(),
            "chunk {:#x} counted twice",
            self.handle
        );
        self.counted.set(true);
        let mem = self.mem.borrow();
        self.totals
            .join(mem.length, mem.state == ChunkState::Corrupt);
    }

    /// The chunk left the store's map (deleted or replaced). Idempotent.
    pub(crate) fn leave_totals(&self) {
        if self.counted.replace(false) {
            let mem = self.mem.borrow();
            self.totals
                .leave(mem.length, mem.state == ChunkState::Corrupt);
        }
    }

    fn set_length(&self, mem: &mut Mem, length: u64) {
        if self.counted.get() {
            self.totals.resize(mem.length, length);
        }
        mem.length = length;
    }

    fn set_state(&self, mem: &mut Mem, state: ChunkState) {
        if self.counted.get() {
            self.totals.restate(
                mem.state == ChunkState::Corrupt,
                state == ChunkState::Corrupt,
            );
        }
        mem.state = state;
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.get()
    }

    pub fn check_usable(&self) -> ChunkResult<()> {
        if self.deleted.get() {
            return Err(ChunkError::NotFound(self.handle));
        }
        match self.mem.borrow().state {
            ChunkState::Corrupt => Err(ChunkError::Corrupt(self.handle)),
            _ => Ok(()),
        }
    }

    /// Refuses a request carrying an older version than ours, and one
    /// carrying a newer version (then this replica is the stale one).
    pub fn check_version(&self, theirs: u64) -> ChunkResult<()> {
        let ours = self.version();
        if theirs != ours {
            return Err(ChunkError::StaleVersion { ours, theirs });
        }
        Ok(())
    }

    // ---------------------------------------------------------------- read

    /// Reads `[offset, offset + len)` widened to whole blocks (clipped to
    /// the chunk length) into `bufs`, verifying every block before
    /// returning anything. A mismatch marks the replica corrupt.
    pub async fn read(
        &self,
        min_version: u64,
        offset: u64,
        len: u64,
        mut bufs: Vec<AlignedBuf>,
        buffer_bytes: u64,
        verify: bool,
    ) -> (ChunkResult<ReadOutcome>, Vec<AlignedBuf>) {
        // A replica marked corrupt still serves the blocks that verify:
        // every block is checked anyway, and a reader whose other replicas
        // are down still gets the good ranges.
        if self.deleted.get() {
            return (Err(ChunkError::NotFound(self.handle)), bufs);
        }
        let (version, length) = {
            let mem = self.mem.borrow();
            (mem.version, mem.length)
        };
        if version < min_version {
            return (
                Err(ChunkError::StaleVersion {
                    ours: version,
                    theirs: min_version,
                }),
                bufs,
            );
        }
        if offset > length {
            return (
                Err(ChunkError::OutOfRange(format!(
                    "read at {offset} beyond the chunk length {length}"
                ))),
                bufs,
            );
        }
        let end = offset.saturating_add(len).min(length);
        let start = offset / BLOCK * BLOCK;
        let end_wide = end.div_ceil(BLOCK).saturating_mul(BLOCK).min(length);
        if end_wide <= start {
            return (
                Ok(ReadOutcome {
                    version,
                    chunk_length: length,
                    start,
                    len: 0,
                    crcs: Vec::new(),
                    bufs: Vec::new(),
                }),
                bufs,
            );
        }
        let total = end_wide - start;
        if (bufs.len() as u64) * buffer_bytes < total {
            return (
                Err(ChunkError::Internal(format!(
                    "{} buffers cannot hold {total} bytes",
                    bufs.len()
                ))),
                bufs,
            );
        }
        let first_block = start / BLOCK;
        let last_block = (end_wide - 1) / BLOCK;
        let _guard = self.locks.lock(first_block, last_block, false).await;
        // The table may have grown while we waited; blocks we cover are
        // stable now.
        let (crcs, length) = {
            let mem = self.mem.borrow();
            (
                mem.crcs[first_block as usize..=last_block as usize].to_vec(),
                mem.length,
            )
        };
        let files = match self.files().await {
            Ok(f) => f,
            Err(e) => return (Err(e), bufs),
        };
        let align = self.dir.align.offset_align_bytes as u64;
        let mut used = Vec::with_capacity(bufs.len());
        let mut at = start;
        while at < end_wide {
            let Some(mut buf) = bufs.pop() else { break };
            let piece = (end_wide - at).min(buffer_bytes);
            let io_len = align_up(piece, align) as usize;
            buf.set_len_bytes(0);
            let compio::BufResult(r, slice) =
                files.data.read_exact_at(buf.slice(0..io_len), at).await;
            let mut buf = slice.into_inner();
            if let Err(e) = r {
                bufs.push(buf);
                bufs.extend(used);
                return (
                    Err(ChunkError::io(
                        format!("reading chunk {:#x}", self.handle),
                        e,
                    )),
                    bufs,
                );
            }
            buf.set_len_bytes(piece as usize);
            // Verify this buffer's blocks (skipped only by the benchmark
            // switch that measures what verification costs).
            let checked = if verify { buf.bytes() } else { &[][..] };
            for (i, block_bytes) in checked.chunks(BLOCK_BYTES).enumerate() {
                let block = (at - start) / BLOCK + i as u64;
                if crc32c(block_bytes) != crcs[block as usize] {
                    bufs.push(buf);
                    bufs.extend(used);
                    let block_index = first_block + block;
                    self.mark_corrupt().await;
                    return (
                        Err(ChunkError::ChecksumMismatch {
                            handle: self.handle,
                            block: block_index,
                        }),
                        bufs,
                    );
                }
            }
            used.push(buf);
            at += piece;
        }
        (
            Ok(ReadOutcome {
                version,
                chunk_length: length,
                start,
                len: total,
                crcs,
                bufs: used,
            }),
            bufs,
        )
    }

    /// Verifies blocks `first..=last` against the table (the scrubber).
    /// Returns the first bad block, if any.
    pub async fn verify_blocks(
        &self,
        first: u64,
        last: u64,
        scratch: AlignedBuf,
    ) -> (ChunkResult<Option<u64>>, AlignedBuf) {
        let mut scratch = scratch;
        let _guard = self.locks.lock(first, last, false).await;
        let (crcs, length) = {
            let mem = self.mem.borrow();
            if last as usize >= mem.crcs.len() {
                return (Ok(None), scratch);
            }
            (
                mem.crcs[first as usize..=last as usize].to_vec(),
                mem.length,
            )
        };
        let data = match self.data_file_for_scan().await {
            Ok(d) => d,
            Err(e) => return (Err(e), scratch),
        };
        let align = self.dir.align.offset_align_bytes as u64;
        let per_io = (scratch.capacity() as u64 / BLOCK).max(1);
        let mut block = first;
        while block <= last {
            let n = per_io.min(last - block + 1);
            let start = block * BLOCK;
            let end = ((block + n) * BLOCK).min(length);
            let io_len = align_up(end - start, align) as usize;
            scratch.set_len_bytes(0);
            let compio::BufResult(r, slice) =
                data.read_exact_at(scratch.slice(0..io_len), start).await;
            scratch = slice.into_inner();
            if let Err(e) = r {
                return (
                    Err(ChunkError::io(
                        format!("scrubbing chunk {:#x}", self.handle),
                        e,
                    )),
                    scratch,
                );
            }
            let bytes = &scratch.full()[..(end - start) as usize];
            for (i, piece) in bytes.chunks(BLOCK_BYTES).enumerate() {
                let b = block + i as u64;
                if crc32c(piece) != crcs[(b - first) as usize] {
                    return (Ok(Some(b)), scratch);
                }
            }
            block += n;
        }
        if first == 0 && last + 1 == block_count(length) {
            self.mem.borrow_mut().verified_at = Instant::now();
        }
        (Ok(None), scratch)
    }

    pub fn block_range_of_length(&self) -> Option<(u64, u64)> {
        let n = self.mem.borrow().crcs.len() as u64;
        (n > 0).then(|| (0, n - 1))
    }

    pub fn touch_verified(&self) {
        self.mem.borrow_mut().verified_at = Instant::now();
    }

    // --------------------------------------------------------------- write

    /// Fixes the place of a write in this chunk's mutation order: assigns
    /// (primary) or takes (secondary) its serial and queues for its blocks,
    /// in one synchronous step, so overlapping mutations apply in serial
    /// order on every replica.
    pub fn begin_write(
        &self,
        version: u64,
        offset: u64,
        len: u64,
        order: Order,
    ) -> ChunkResult<Ticket> {
        self.check_usable()?;
        self.check_version(version)?;
        let size = self.layout.chunk_size_bytes;
        let end = match offset.checked_add(len) {
            Some(end) if end <= size && len > 0 => end,
            _ => {
                return Err(ChunkError::OutOfRange(format!(
                    "write of {len} bytes at {offset} outside a chunk of {size} bytes"
                )));
            }
        };
        let serial = self.take_serial(order)?;
        let first_block = offset.min(self.length()) / BLOCK;
        let guard = self.locks.enqueue(first_block, (end - 1) / BLOCK, true);
        let mut mem = self.mem.borrow_mut();
        mem.reserved_end = mem.reserved_end.max(end);
        Ok(Ticket {
            serial,
            offset,
            len,
            version,
            guard,
        })
    }

    /// The primary's record append: picks the offset (after every append
    /// already ordered), or, when the record does not fit, orders a pad to
    /// the end of the chunk instead (`Appended::Full`).
    pub fn begin_append(&self, version: u64, len: u64) -> ChunkResult<Appended> {
        self.check_usable()?;
        self.check_version(version)?;
        let size = self.layout.chunk_size_bytes;
        let offset = {
            let mem = self.mem.borrow();
            mem.reserved_end.max(mem.length)
        };
        if len == 0 || len > size {
            return Err(ChunkError::BadRequest(format!("record of {len} bytes")));
        }
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Ok(Appended::Full(self.begin_pad(version, Order::Assign)?));
        }
        Ok(Appended::At(self.begin_write(
            version,
            offset,
            len,
            Order::Assign,
        )?))
    }

    /// Orders a pad of the chunk to its end.
    pub fn begin_pad(&self, version: u64, order: Order) -> ChunkResult<Ticket> {
        self.check_usable()?;
        self.check_version(version)?;
        let size = self.layout.chunk_size_bytes;
        let serial = self.take_serial(order)?;
        let from = self.length().min(size.saturating_sub(1));
        let guard = self.locks.enqueue(from / BLOCK, (size - 1) / BLOCK, true);
        self.mem.borrow_mut().reserved_end = size;
        Ok(Ticket {
            serial,
            offset: from,
            len: size - from,
            version,
            guard,
        })
    }

    fn take_serial(&self, order: Order) -> ChunkResult<u64> {
        let mut mem = self.mem.borrow_mut();
        let serial = match order {
            Order::Assign => mem.ordered_serial + 1,
            Order::Follow(s) => {
                if s != mem.ordered_serial + 1 {
                    return Err(ChunkError::BadRequest(format!(
                        "mutation serial {s} out of order (last applied {})",
                        mem.ordered_serial
                    )));
                }
                s
            }
        };
        mem.ordered_serial = serial;
        drop(mem);
        self.serial_event.notify_all();
        Ok(serial)
    }

    /// A secondary waits until the mutation before `serial` has been
    /// ordered here, so mutations apply in the primary's order. Bounded:
    /// a gap that does not fill (the primary lost a forward) fails the
    /// mutation, and the client hears which replica failed.
    pub async fn wait_turn(&self, serial: u64, timeout: std::time::Duration) -> ChunkResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let ordered = self.mem.borrow().ordered_serial;
            if serial <= ordered {
                return Err(ChunkError::BadRequest(format!(
                    "mutation serial {serial} already applied (at {ordered})"
                )));
            }
            if serial == ordered + 1 {
                return Ok(());
            }
            let listener = self.serial_event.listen();
            if self.mem.borrow().ordered_serial + 1 >= serial {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || compio::time::timeout(left, listener).await.is_err() {
                return Err(ChunkError::Timeout(format!(
                    "mutation serial {serial} waited for {} that never came",
                    self.mem.borrow().ordered_serial + 1
                )));
            }
        }
    }

    /// Applies an ordered write: waits for its blocks, logs, writes,
    /// syncs. Returns the new chunk length.
    pub async fn finish_write(
        &self,
        ticket: Ticket,
        data: WriteData,
    ) -> (ChunkResult<u64>, Vec<AlignedBuf>) {
        if data.len != ticket.len {
            return (
                Err(ChunkError::BadRequest(format!(
                    "{} data bytes for a write of {}",
                    data.len, ticket.len
                ))),
                data.bufs,
            );
        }
        let guard = ticket.guard.wait().await;
        if let Err(e) = self
            .check_usable()
            .and_then(|_| self.check_version(ticket.version))
        {
            return (Err(e), data.bufs);
        }
        let end = ticket.offset + ticket.len;
        let r = self
            .write_locked(ticket.version, ticket.offset, end, data)
            .await;
        drop(guard);
        match r {
            // The data file is O_DSYNC: written is durable.
            Ok((seq, new_length, bufs)) => {
                self.mem.borrow_mut().not_durable.remove(&seq);
                (Ok(new_length), bufs)
            }
            Err((e, bufs)) => (Err(e), bufs),
        }
    }

    /// Applies an ordered pad. Zeros are already on disk past the length,
    /// so only the CRCs and the length change.
    pub async fn finish_pad(&self, ticket: Ticket) -> ChunkResult<()> {
        let _guard = ticket.guard.wait().await;
        self.check_usable()?;
        self.check_version(ticket.version)?;
        let size = self.layout.chunk_size_bytes;
        let length = self.length();
        if length >= size {
            return Ok(());
        }
        // Zeros past the length: allocated space reads as zeros.
        let data = self.files().await?.data;
        self.ensure_allocated(&data, size)?;
        let first_block = length / BLOCK;
        let crcs = self.zero_extension_crcs(length, size);
        let (seq, record_id) = self.queue_write_record(
            ticket.version,
            length,
            size - length,
            size,
            first_block,
            crcs.clone(),
        )?;
        self.wait_logged(record_id).await?;
        self.apply_crcs(first_block, &crcs, size, None);
        self.mem.borrow_mut().not_durable.remove(&seq);
        Ok(())
    }

    /// CRCs of blocks `block(from)..block(to - 1)` when `[from, to)` is
    /// zeros appended to the current content.
    fn zero_extension_crcs(&self, from: u64, to: u64) -> Vec<u32> {
        let mem = self.mem.borrow();
        let mut out = Vec::new();
        let mut at = from;
        while at < to {
            let block = at / BLOCK;
            let block_end = ((block + 1) * BLOCK).min(to);
            let base = if !at.is_multiple_of(BLOCK) {
                mem.crcs[block as usize]
            } else {
                0
            };
            out.push(extend_zeros(base, block_end - at));
            at = block_end;
        }
        out
    }

    #[allow(clippy::type_complexity)]
    async fn write_locked(
        &self,
        version: u64,
        offset: u64,
        end: u64,
        data: WriteData,
    ) -> Result<(u64, u64, Vec<AlignedBuf>), (ChunkError, Vec<AlignedBuf>)> {
        let files = match self.files().await {
            Ok(f) => f,
            Err(e) => return Err((e, data.bufs)),
        };
        // Before anything is logged: a full disk refuses the write cleanly.
        if let Err(e) = self.ensure_allocated(&files.data, end) {
            return Err((e, data.bufs));
        }
        let old_length = self.length();
        let new_length = old_length.max(end);
        let align = self.dir.align.offset_align_bytes as u64;
        let buffer_bytes = data
            .bufs
            .first()
            .map(|b| b.capacity() as u64)
            .unwrap_or(BLOCK);

        // Blocks between the old end and the write (a hole) read as zeros:
        // only their CRCs change.
        let mut crcs = Vec::new();
        let hole_first = old_length / BLOCK;
        let first_block;
        if offset > old_length {
            let hole_end = (offset / BLOCK * BLOCK).max(old_length);
            crcs = self.zero_extension_crcs(old_length, hole_end);
            first_block = hole_first;
        } else {
            first_block = offset / BLOCK;
        }

        let fast = offset.is_multiple_of(BLOCK)
            && (end.is_multiple_of(BLOCK) || end >= old_length)
            && buffer_bytes.is_multiple_of(BLOCK);
        let mut writes: Vec<(u64, AlignedBuf)> = Vec::new();
        let mut returned = Vec::new();
        let mut new_tail = None;
        if fast {
            // Whole blocks from the sender; its CRCs are the blocks' CRCs
            // (a short last piece ends the chunk's data).
            crcs.extend_from_slice(&data.piece_crcs);
            let mut at = offset;
            let mut left = data.len;
            for mut buf in data.bufs {
                if left == 0 {
                    returned.push(buf);
                    continue;
                }
                let piece = left.min(buffer_bytes);
                let io_len = align_up(piece, align) as usize;
                buf.zero_range(piece as usize, io_len);
                buf.set_len_bytes(io_len);
                if end == new_length && piece == left && !end.is_multiple_of(BLOCK) {
                    // Keep the new last partial block for appends.
                    let tail_start = (end / BLOCK) * BLOCK;
                    let from = (tail_start - at) as usize;
                    let n = (end - tail_start) as usize;
                    new_tail = Some(Tail {
                        block: end / BLOCK,
                        bytes: buf.full()[from..from + n].to_vec(),
                    });
                }
                writes.push((at, buf));
                at += piece;
                left -= piece;
            }
        } else {
            // Block by block: splice the new bytes into an image of each
            // block (old bytes from the cached tail or read and verified).
            let src = Gather::new(&data.bufs, buffer_bytes, data.len);
            let mut block = offset / BLOCK;
            while block * BLOCK < end {
                let b_start = block * BLOCK;
                let b_end = b_start + BLOCK;
                let old_in_block = old_length.clamp(b_start, b_end) - b_start;
                let new_cover = new_length.min(b_end) - b_start;
                let lo = offset.max(b_start) - b_start;
                let hi = end.min(b_end) - b_start;
                let needs_old = old_in_block > 0 && (lo > 0 || hi < old_in_block);
                let cached = self.take_tail_if(block, old_in_block);
                let (mut image, old_crc_prefix) = match (needs_old, cached) {
                    (true, Some(image)) => {
                        // Appending right at the old end: extend the CRC.
                        let prefix = if lo == old_in_block {
                            Some(self.mem.borrow().crcs[block as usize])
                        } else {
                            None
                        };
                        (image, prefix)
                    }
                    (true, None) => {
                        match self
                            .read_verified_block(&files.data, block, old_in_block, align)
                            .await
                        {
                            Ok(image) => {
                                let prefix = (lo == old_in_block)
                                    .then(|| self.mem.borrow().crcs[block as usize]);
                                (image, prefix)
                            }
                            Err(e) => {
                                return Err((e, data.bufs));
                            }
                        }
                    }
                    (false, _) => (
                        AlignedBuf::zeroed(BLOCK_BYTES, self.dir.align.mem_align_bytes),
                        None,
                    ),
                };
                src.copy_to(
                    offset,
                    b_start + lo,
                    &mut image.full_mut()[lo as usize..hi as usize],
                );
                // Past the new end of data the block must read as zeros.
                image.zero_from(new_cover as usize);
                let crc = match old_crc_prefix {
                    Some(prefix) => {
                        crc32c_extend(prefix, &image.full()[lo as usize..new_cover as usize])
                    }
                    None => crc32c(&image.full()[..new_cover as usize]),
                };
                crcs.push(crc);
                if b_end > new_length {
                    new_tail = Some(Tail {
                        block,
                        bytes: image.full()[..new_cover as usize].to_vec(),
                    });
                }
                // Only the sectors holding new bytes need writing.
                let io_lo = lo / align * align;
                let io_hi = align_up(hi, align);
                if io_lo > 0 {
                    image
                        .full_mut()
                        .copy_within(io_lo as usize..io_hi as usize, 0);
                }
                image.set_len_bytes((io_hi - io_lo) as usize);
                writes.push((b_start + io_lo, image));
                block += 1;
            }
            returned = data.bufs;
        }
        let expected = last_block_of(end) - first_block + 1;
        assert_eq!(
            crcs.len() as u64,
            expected,
            "CRC count for blocks {first_block}..={}",
            last_block_of(end)
        );

        // 1. The log record. Inside a durable Intent the data goes out with
        // it; otherwise the record, with an Intent for the blocks ahead, is
        // durable before any data byte moves.
        let data_first = (offset / BLOCK) as u32;
        let data_blocks = (last_block_of(end) + 1) as u32 - data_first;
        let under_intent = self
            .mem
            .borrow()
            .intent_durable
            .covers(data_first, data_blocks);
        let queued = self.queue_write_record(
            version,
            offset,
            end - offset,
            new_length,
            first_block,
            crcs.clone(),
        );
        let (seq, record_id) = match queued {
            Ok(v) => v,
            Err(e) => {
                if fast {
                    returned.extend(writes.into_iter().map(|(_, b)| b));
                }
                return Err((e, returned));
            }
        };
        let write_data = |writes: Vec<(u64, AlignedBuf)>| {
            futures_util::future::join_all(writes.into_iter().map(|(at, buf)| {
                let mut data = &files.data;
                async move {
                    let compio::BufResult(r, buf) = data.write_all_at(buf, at).await;
                    (r, buf)
                }
            }))
        };
        // 2. The data (O_DSYNC: durable when written).
        let (logged, results) = if under_intent {
            futures_util::future::join(self.wait_logged(record_id), write_data(writes)).await
        } else {
            match self.wait_logged(record_id).await {
                Ok(()) => (Ok(()), write_data(writes).await),
                Err(e) => {
                    if fast {
                        returned.extend(writes.into_iter().map(|(_, b)| b));
                    }
                    return Err((e, returned));
                }
            }
        };
        let mut failure = None;
        for (r, buf) in results {
            if let Err(e) = r {
                failure.get_or_insert(e);
            }
            // Pool buffers go back to their pool; block images are ours.
            if fast {
                returned.push(buf);
            }
        }
        if let Err(e) = logged {
            // Data went out under an Intent but its record failed: the
            // blocks may hold bytes no CRC describes.
            self.slot.tail.borrow_mut().take();
            self.mark_corrupt().await;
            return Err((e, returned));
        }
        if let Some(e) = failure {
            self.slot.tail.borrow_mut().take();
            self.finish_applying();
            self.mark_corrupt().await;
            return Err((
                ChunkError::io(format!("writing chunk {:#x}", self.handle), e),
                returned,
            ));
        }
        // 3. Visible to reads (durable, but not yet acknowledged by every
        // replica: such reads are allowed, as in GFS).
        self.apply_crcs(first_block, &crcs, new_length, new_tail);
        Ok((seq, new_length, returned))
    }

    fn take_tail_if(&self, block: u64, old_in_block: u64) -> Option<AlignedBuf> {
        let length = self.mem.borrow().length;
        let mut cached = self.slot.tail.borrow_mut();
        let matches = matches!(&*cached, Some(t) if t.block == block)
            && length == block * BLOCK + old_in_block;
        if !matches {
            return None;
        }
        let tail = cached
            .take()
            .filter(|t| t.bytes.len() as u64 == old_in_block)?;
        let mut image = AlignedBuf::zeroed(BLOCK_BYTES, self.dir.align.mem_align_bytes);
        image.full_mut()[..tail.bytes.len()].copy_from_slice(&tail.bytes);
        Some(image)
    }

    async fn read_verified_block(
        &self,
        data: &compio::fs::File,
        block: u64,
        old_in_block: u64,
        align: u64,
    ) -> ChunkResult<AlignedBuf> {
        let image = AlignedBuf::zeroed(BLOCK_BYTES, self.dir.align.mem_align_bytes);
        let io_len = align_up(old_in_block, align) as usize;
        let compio::BufResult(r, slice) = data
            .read_exact_at(image.slice(0..io_len), block * BLOCK)
            .await;
        let image = slice.into_inner();
        r.map_err(|e| ChunkError::io(format!("reading chunk {:#x}", self.handle), e))?;
        let want = self.mem.borrow().crcs[block as usize];
        if crc32c(&image.full()[..old_in_block as usize]) != want {
            self.mark_corrupt().await;
            return Err(ChunkError::ChecksumMismatch {
                handle: self.handle,
                block,
            });
        }
        Ok(image)
    }

    fn apply_crcs(&self, first_block: u64, crcs: &[u32], new_length: u64, tail: Option<Tail>) {
        let mut mem = self.mem.borrow_mut();
        // A concurrent mutation of other blocks may have extended the chunk
        // past this one's end meanwhile: lengths only grow.
        let new_length = new_length.max(mem.length);
        let needed = block_count(new_length) as usize;
        if mem.crcs.len() < needed {
            mem.crcs.resize(needed, 0);
        }
        let first = first_block as usize;
        mem.crcs[first..first + crcs.len()].copy_from_slice(crcs);
        // The cached tail is the block holding the end of data; a new end
        // (or a rewrite of that block, which always supplies a new image)
        // replaces it. A tail that does not end where the data now ends (a
        // concurrent write reached further) is dropped: the next append
        // reads that block back instead. A chunk closed meanwhile keeps
        // none: closing is what frees an idle chunk's tail.
        if tail.is_some() || new_length != mem.length {
            *self.slot.tail.borrow_mut() = tail
                .filter(|t| t.block * BLOCK + t.bytes.len() as u64 == new_length)
                .filter(|_| self.slot.is_open());
        }
        self.set_length(&mut mem, new_length);
        drop(mem);
        self.finish_applying();
    }

    fn finish_applying(&self) {
        let mut mem = self.mem.borrow_mut();
        assert!(mem.applying > 0);
        mem.applying -= 1;
        drop(mem);
        self.applying_event.notify_all();
    }

    // ----------------------------------------------------------- durability

    /// Takes the next seq and queues its Write record in one synchronous
    /// step, so records reach the log in seq order. Returns (seq, record id).
    fn queue_write_record(
        &self,
        version: u64,
        offset: u64,
        length: u64,
        new_length: u64,
        first_block: u64,
        crcs: Vec<u32>,
    ) -> ChunkResult<(u64, u64)> {
        let first_block =
            u32::try_from(first_block).map_err(|_| ChunkError::Internal("block index".into()))?;
        let seq = self.mem.borrow().last_seq + 1;
        let record = LogRecord::Write {
            seq,
            version,
            offset,
            length,
            new_length,
            first_block,
            crcs,
        };
        let id = self.log_queue(record)?;
        self.mem.borrow_mut().last_seq = seq;
        Ok((seq, id))
    }

    /// Appends `record` to the log and waits until it is durable.
    async fn log_append(&self, record: LogRecord) -> ChunkResult<()> {
        let id = self.log_queue(record)?;
        self.wait_logged(id).await
    }

    /// Queues `record` for the next batch; returns its id for `wait_logged`.
    fn log_queue(&self, record: LogRecord) -> ChunkResult<u64> {
        let mut log = self.log.borrow_mut();
        if let Some(f) = &log.failed {
            return Err(ChunkError::Internal(format!(
                "meta log failed earlier: {f}"
            )));
        }
        match &record {
            LogRecord::Write { version, .. } if *version < log.version_queued => {
                return Err(ChunkError::StaleVersion {
                    ours: log.version_queued,
                    theirs: *version,
                });
            }
            // Two bumps racing (a retried command, a new leader's): the
            // later version wins and the older is refused, never logged
            // after it.
            LogRecord::Version { version } if *version < log.version_queued => {
                return Err(ChunkError::StaleVersion {
                    ours: log.version_queued,
                    theirs: *version,
                });
            }
            LogRecord::Version { version } => log.version_queued = *version,
            _ => {}
        }
        let id = log.next_record_id;
        log.next_record_id += 1;
        log.pending.push((id, record));
        Ok(id)
    }

    /// Waits until the record `id` (and every record queued before it) is
    /// durable. The first waiter with nothing in flight writes a batch of
    /// everything pending.
    async fn wait_logged(&self, id: u64) -> ChunkResult<()> {
        loop {
            {
                let log = self.log.borrow();
                if log.done_below > id {
                    return match &log.failed {
                        Some(f) => Err(ChunkError::Internal(format!("meta log write failed: {f}"))),
                        None => Ok(()),
                    };
                }
            }
            if !self.log.borrow().writing {
                self.write_one_batch().await;
                continue;
            }
            let listener = self.log_event.listen();
            if !self.log.borrow().writing || self.log.borrow().done_below > id {
                continue;
            }
            listener.await;
        }
    }

    /// When the chunk is idle, logs the durable watermark if it moved and
    /// closes its Intents, so a restart does not re-read blocks whose
    /// writes were acknowledged long ago. Called by the housekeeping tick,
    /// not on the write path. `Busy`: the chunk was not idle, so nothing
    /// was done; ask again later.
    pub async fn settle(&self) -> ChunkResult<Settle> {
        let durable = {
            let mut mem = self.mem.borrow_mut();
            let log = self.log.borrow();
            // Idle: no record waits for the log and no data write is in
            // flight (a write counts in `applying` from its record's batch
            // to its CRC update, and its data completes in between).
            let idle = mem.applying == 0 && log.pending.is_empty() && !log.writing;
            // A failed log takes no more batches (its tail may be torn).
            if mem.state == ChunkState::Corrupt || log.failed.is_some() {
                return Ok(Settle::Clean);
            }
            if !idle {
                return Ok(Settle::Busy);
            }
            let watermark = mem.durable_watermark();
            if watermark > mem.announced_durable {
                mem.announced_durable = watermark;
                Some(watermark)
            } else if !mem.intent_on_disk.is_empty() {
                None
            } else {
                return Ok(Settle::Clean);
            }
        };
        match durable {
            Some(seq) => self.log_append(LogRecord::Durable { seq }).await?,
            // A batch of no records: it closes the Intents (no write in it
            // predicts any), still synchronously after the idle check.
            None => {
                self.write_one_batch().await;
                if let Some(f) = &self.log.borrow().failed {
                    return Err(ChunkError::Internal(format!("meta log write failed: {f}")));
                }
            }
        }
        // The batch just written marked the chunk again: the next visit
        // confirms there is nothing left.
        Ok(Settle::Logged)
    }

    async fn write_one_batch(&self) {
        let (records, last_id, offset, batch_seq, next_intents) = {
            let mut log = self.log.borrow_mut();
            assert!(!log.writing);
            let intents_open = !self.mem.borrow().intent_on_disk.is_empty();
            if log.pending.is_empty() && !intents_open {
                return;
            }
            log.writing = true;
            let take = log.pending.len().min(BATCH_RECORDS_MAX);
            let batch: Vec<(u64, LogRecord)> = log.pending.drain(..take).collect();
            // None: a batch that only restates the Intents (`settle`).
            let last_id = batch.last().map(|(id, _)| *id);
            let mut records: Vec<LogRecord> = Vec::with_capacity(batch.len() + 1);
            let mut mem = self.mem.borrow_mut();
            assert!(
                mem.intent_on_disk.covers_all_of(&mem.intent_durable),
                "writes may use only Intents the durable log holds open"
            );
            let watermark = mem.durable_watermark();
            if watermark > mem.announced_durable {
                records.push(LogRecord::Durable { seq: watermark });
                mem.announced_durable = watermark;
            }
            records.extend(batch.into_iter().map(|(_, r)| r));
            // Restate the open Intents as those this batch's writes predict
            // (note 015). Until it is durable, writes may only use blocks
            // open both before and after it.
            let mut next = self.predicted_intents(&records);
            if !log.pending.is_empty() {
                // Records left for a later batch (over BATCH_RECORDS_MAX)
                // may belong to writes whose data already went out under
                // the current Intents: those stay open until they are logged.
                next.union_with(&mem.intent_durable);
            }
            if next != mem.intent_on_disk {
                records.push(LogRecord::IntentsClosed);
                records.extend(next.intent_records());
            }
            mem.intent_durable.retain_only(&next);
            drop(mem);
            (records, last_id, log.next_offset, log.next_batch_seq, next)
        };
        let result = self.write_batch_bytes(&records, offset, batch_seq).await;
        {
            let mut log = self.log.borrow_mut();
            log.writing = false;
            if let Some(id) = last_id {
                log.done_below = id + 1;
            }
            match result {
                Ok(()) => {
                    // Whatever this batch opened or left to announce,
                    // housekeeping settles once the chunk is idle.
                    self.unsettled.mark(self.handle);
                    let mut mem = self.mem.borrow_mut();
                    mem.intent_durable = next_intents.clone();
                    mem.intent_on_disk = next_intents;
                    for r in &records {
                        match r {
                            LogRecord::Write { seq, .. } => {
                                mem.not_durable.insert(*seq);
                                mem.last_logged_seq = *seq;
                                mem.applying += 1;
                            }
                            LogRecord::Version { version } => {
                                mem.version = *version;
                                mem.ordered_serial = 0;
                                mem.reserved_end = mem.length;
                            }
                            LogRecord::State { state } => self.set_state(&mut mem, *state),
                            LogRecord::Durable { .. }
                            | LogRecord::Intent { .. }
                            | LogRecord::IntentsClosed => {}
                        }
                    }
                }
                Err(e) => log.failed = Some(e.to_string()),
            }
        }
        self.log_event.notify_all();
    }

    /// The blocks the next write of each stream in `records` would touch if
    /// it continued where its Write ended, as long again.
    fn predicted_intents(&self, records: &[LogRecord]) -> BlockSet {
        let size = self.layout.chunk_size_bytes;
        let mut next = BlockSet::new(block_count(size) as u32);
        for r in records {
            if let LogRecord::Write { offset, length, .. } = *r
                && let Some((first, count)) = intent::predicted(offset, length, size)
            {
                next.insert(first, count);
            }
        }
        next
    }

    async fn write_batch_bytes(
        &self,
        records: &[LogRecord],
        offset: u64,
        batch_seq: u64,
    ) -> ChunkResult<()> {
        let bytes = meta::encoded_batch_bytes(records) as u64;
        let (offset, batch_seq) = if offset + bytes > self.layout.log_bytes {
            self.compact().await?;
            let log = self.log.borrow();
            (log.next_offset, log.next_batch_seq)
        } else {
            (offset, batch_seq)
        };
        // After any compaction: its new meta file is the one installed.
        let file = self.files().await?.meta;
        if offset + bytes > self.layout.log_bytes {
            return Err(ChunkError::Internal(format!(
                "a log batch of {bytes} bytes does not fit in an empty log of {}",
                self.layout.log_bytes
            )));
        }
        let mut encoded = Vec::with_capacity(bytes as usize);
        meta::encode_batch(batch_seq, records, &mut encoded);
        // Past the written part of the log, the batch carries the zeros of
        // the next stretch (doubling), so most batches overwrite written
        // pages and their O_DSYNC needs no journal commit.
        let written_end = self.log.borrow().written_end;
        let write_len = if offset + bytes > written_end {
            let to = (offset + bytes)
                .max(written_end.saturating_mul(2))
                .min(self.layout.log_bytes);
            to - offset
        } else {
            bytes
        };
        assert!(write_len >= encoded.len() as u64 && offset + write_len <= self.layout.log_bytes);
        let mut buf = AlignedBuf::zeroed(write_len as usize, self.dir.align.mem_align_bytes);
        buf.full_mut()[..encoded.len()].copy_from_slice(&encoded);
        buf.set_len_bytes(write_len as usize);
        let compio::BufResult(r, _) = (&file)
            .write_all_at(buf, self.layout.log_offset + offset)
            .await;
        r.map_err(|e| {
            ChunkError::io(
                format!("appending to the meta log of chunk {:#x}", self.handle),
                e,
            )
        })?;
        let mut log = self.log.borrow_mut();
        log.next_offset = offset + bytes;
        log.next_batch_seq = batch_seq + 1;
        log.written_end = log.written_end.max(offset + write_len);
        Ok(())
    }

    /// Rewrites the meta file with the current state as its base and an
    /// empty log. Waits until no mutation is between its log record and
    /// its CRC update, so the snapshot holds every record logged so far.
    pub(crate) async fn compact(&self) -> ChunkResult<()> {
        loop {
            if self.mem.borrow().applying == 0 {
                break;
            }
            let listener = self.applying_event.listen();
            if self.mem.borrow().applying == 0 {
                break;
            }
            listener.await;
        }
        // The data of every logged write must be durable before the log
        // that describes it goes away.
        let data = self.files().await?.data;
        data.sync_data()
            .await
            .map_err(|e| ChunkError::io("fdatasync before compaction", e))?;
        let (base, intents) = {
            let mut mem = self.mem.borrow_mut();
            // Records still pending (not yet in the log) hold seqs above
            // `last_logged_seq`; they go into the fresh log after this base.
            // Data writes under a durable Intent may be in flight with
            // their records among them, their CRCs not in this base: the
            // new file carries those Intents in its first batch, so their
            // blocks stay unsettled until their records are logged again.
            let intents = mem.intent_on_disk.intent_records();
            mem.not_durable.clear();
            mem.announced_durable = mem.last_logged_seq;
            let base = MetaBase {
                handle: self.handle,
                chunk_size_bytes: self.layout.chunk_size_bytes,
                data_file_id: mem.data_file_id,
                version: mem.version,
                length_bytes: mem.length,
                state: mem.state,
                base_seq: mem.last_logged_seq,
                log_bytes: self.layout.log_bytes as u32,
                crcs: mem.crcs.clone(),
            };
            (base, intents)
        };
        let (file, log_end) = write_meta_file(&self.dir, &base, &intents).await?;
        let mut log = self.log.borrow_mut();
        log.written_end = log_written_end(&file, &self.layout);
        if !self.deleted.get() {
            self.open.replace_meta(self.open_id, &self.slot, data, file);
        }
        log.next_offset = log_end.offset;
        log.next_batch_seq = log_end.next_batch_seq;
        Ok(())
    }

    /// Persists the Corrupt state (best effort: the in-memory state flips
    /// at once, so nothing more is served from this replica).
    pub async fn mark_corrupt(&self) {
        if self.mem.borrow().state == ChunkState::Corrupt {
            return;
        }
        self.set_state(&mut self.mem.borrow_mut(), ChunkState::Corrupt);
        if let Err(e) = self
            .log_append(LogRecord::State {
                state: ChunkState::Corrupt,
            })
            .await
        {
            tracing::error!(
                handle = self.handle,
                "could not persist the corrupt mark: {e}"
            );
        }
    }

    /// Sets a new version (the master bumps it before every new lease).
    pub async fn set_version(&self, old_version: u64, new_version: u64) -> ChunkResult<()> {
        self.check_usable()?;
        let ours = self.version();
        if ours == new_version {
            return Ok(());
        }
        if ours != old_version || new_version < old_version {
            return Err(ChunkError::StaleVersion {
                ours,
                theirs: old_version,
            });
        }
        self.log_append(LogRecord::Version {
            version: new_version,
        })
        .await
    }

    /// Syncs the data file if it is open (a closed chunk has nothing
    /// unsynced: every write is synced before it is acknowledged).
    pub async fn close(&self) {
        if let Some(files) = self.open.get(self.open_id, &self.slot) {
            let _ = files.data.sync_data().await;
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.open.forget(self.open_id, &self.slot);
    }
}

impl Mem {
    /// Every Write with a seq up to this has its data durable.
    fn durable_watermark(&self) -> u64 {
        match self.not_durable.first() {
            Some(s) => s - 1,
            None => self.last_logged_seq,
        }
    }
}

fn last_block_of(end: u64) -> u64 {
    (end - 1) / BLOCK
}

/// Reads bytes of a write's data by chunk offset, across its buffers.
struct Gather<'a> {
    bufs: &'a [AlignedBuf],
    buffer_bytes: u64,
    len: u64,
}

impl<'a> Gather<'a> {
    fn new(bufs: &'a [AlignedBuf], buffer_bytes: u64, len: u64) -> Gather<'a> {
        Gather {
            bufs,
            buffer_bytes,
            len,
        }
    }

    /// Copies data bytes for chunk offsets `[at, at + out.len())`, where
    /// the data starts at chunk offset `data_offset`.
    fn copy_to(&self, data_offset: u64, at: u64, out: &mut [u8]) {
        let mut pos = at - data_offset;
        let mut done = 0usize;
        assert!(pos + out.len() as u64 <= self.len);
        while done < out.len() {
            let buf = (pos / self.buffer_bytes) as usize;
            let within = (pos % self.buffer_bytes) as usize;
            let n = (out.len() - done).min(self.buffer_bytes as usize - within);
            out[done..done + n].copy_from_slice(&self.bufs[buf].full()[within..within + n]);
            done += n;
            pos += n as u64;
        }
    }
}

/// Writes `base` as a fresh meta file (header, table, zeroed log) through
/// a temporary name, then renames it into place and syncs the dir.
/// Log bytes a new meta file starts with (several small batches).
pub const LOG_FIRST_WRITE_BYTES: u64 = 16 << 10;

/// How much of the log region `file` holds, from its size. Unknown (fstat
/// failed) counts as all of it: batches then never write zeros ahead.
fn log_written_end(file: &compio::fs::File, layout: &MetaLayout) -> u64 {
    rustix::fs::fstat(file).map_or(layout.log_bytes, |st| {
        (st.st_size.max(0) as u64)
            .saturating_sub(layout.log_offset)
            .min(layout.log_bytes)
    })
}

/// Writes `base`, and `first_batch` as the log's first batch when it is not
/// empty, to a temporary name, then renames it into place and syncs the
/// dir. Returns the file and where its log's next batch goes.
pub(crate) async fn write_meta_file(
    dir: &DataDir,
    base: &MetaBase,
    first_batch: &[LogRecord],
) -> ChunkResult<(compio::fs::File, LogEnd)> {
    let (file, log_end, ()) =
        write_meta_file_with(dir, base, first_batch, async { Ok(()) }).await?;
    Ok((file, log_end))
}

/// [`write_meta_file`], running `alongside` (a new chunk's data file
/// creation) while the temporary file is created and written, and
/// finishing it before the rename: the directory fsync that makes the meta
/// file's name durable then covers whatever `alongside` created in the
/// same directory.
pub(crate) async fn write_meta_file_with<T>(
    dir: &DataDir,
    base: &MetaBase,
    first_batch: &[LogRecord],
    alongside: impl std::future::Future<Output = ChunkResult<T>>,
) -> ChunkResult<(compio::fs::File, LogEnd, T)> {
    let layout = base.layout();
    let mut encoded = base
        .encode()
        .map_err(|e| ChunkError::Internal(format!("encoding meta of {:#x}: {e}", base.handle)))?;
    assert_eq!(encoded.len() as u64, layout.log_offset);
    let log_end = if first_batch.is_empty() {
        LogEnd::EMPTY
    } else {
        for record in first_batch {
            record.check(&layout).map_err(|e| {
                ChunkError::Internal(format!("first batch of {:#x}: {e}", base.handle))
            })?;
        }
        meta::encode_batch(1, first_batch, &mut encoded);
        LogEnd {
            offset: encoded.len() as u64 - layout.log_offset,
            next_batch_seq: 2,
        }
    };
    // The base and the first stretch of the log; the log's later pages
    // are written (with zeros ahead) as batches reach them, so a small
    // chunk's meta file stays small. Recovery reads missing pages as zeros.
    let first_log = LOG_FIRST_WRITE_BYTES
        .min(layout.log_bytes)
        .max(log_end.offset);
    let file_bytes = layout.log_offset + first_log;
    assert!(encoded.len() as u64 <= file_bytes && file_bytes <= layout.file_bytes);
    let mut buf = AlignedBuf::zeroed(file_bytes as usize, dir.align.mem_align_bytes);
    buf.full_mut()[..encoded.len()].copy_from_slice(&encoded);
    buf.set_len_bytes(file_bytes as usize);
    let tmp = dir.meta_tmp_path(base.handle);
    let path = dir.meta_path(base.handle);
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let write_tmp = async {
        let file = dio::create_new_direct(&tmp, true)
            .await
            .map_err(|e| ChunkError::io(ctx("creating"), e))?;
        // O_DSYNC: the write returns once the bytes and the size that reads
        // them back are durable, so no fsync is needed before the rename.
        let compio::BufResult(r, _) = (&file).write_all_at(buf, 0).await;
        r.map_err(|e| ChunkError::io(ctx("writing"), e))?;
        Ok::<_, ChunkError>(file)
    };
    let (file, along) = futures_util::future::join(write_tmp, alongside).await;
    let renamed = match (file, along) {
        (Ok(file), Ok(along)) => compio::fs::rename(&tmp, &path)
            .await
            .map(|()| (file, along))
            .map_err(|e| ChunkError::io(ctx("renaming"), e)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let (file, along) = match renamed {
        Ok(v) => v,
        Err(e) => {
            // Names are never reused, so a failed attempt (a full disk,
            // say) must not leave its file behind until the next start.
            let _ = compio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    dir.sync_chunks_dir().await?;
    Ok((file, log_end, along))
}
