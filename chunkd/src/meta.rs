//! The meta file of one chunk: a header page, a base table of block CRCs,
//! and an append-only log of the mutations made since that base. Pure
//! bytes, no I/O: the chunkserver reads and writes the file, this module
//! encodes, decodes, scans and replays it. Byte layout and crash-safety
//! argument: docs/design/006-chunk-meta-file.md.
//!
//! Decoding never panics and never allocates more than the bytes it was
//! given can hold. Damage that a crash can cause (a torn or never-written
//! log batch) ends the log scan quietly; anything else that is wrong is a
//! typed error, and the chunk is not trusted.

use ringfs_wire::checksum::{BLOCK_BYTES, block_count, blocks_covering, crc32c, crc32c_extend};

/// Alignment and granule of everything in the file: the header, the table
/// and every log batch start on a page and fill whole pages, so O_DIRECT
/// can write each of them without read-modify-write of a neighbour.
pub const PAGE_BYTES: usize = 4096;
pub const FORMAT_VERSION: u16 = 1;
/// Log region size the chunkserver uses.
pub const DEFAULT_LOG_BYTES: u32 = 256 * 1024;
pub const MAGIC: [u8; 8] = *b"RGFSCHNK";
pub const BATCH_MAGIC: [u8; 4] = *b"RGLB";
pub const MAX_CHUNK_SIZE_BYTES: u64 = 1 << 30;
pub const MAX_LOG_BYTES: u32 = 16 << 20;
pub const BATCH_HEADER_BYTES: usize = 24;
pub const RECORD_HEADER_BYTES: usize = 8;

const PAGE: u64 = PAGE_BYTES as u64;
const BLOCK: u64 = BLOCK_BYTES as u64;
/// Header bytes covered by the header CRC; the CRC itself follows.
const HEADER_CRC_OFFSET: usize = 80;
const HEADER_USED_BYTES: usize = 84;
/// Bytes of a Write body before its CRCs.
const WRITE_FIXED_BYTES: usize = 48;
/// Body of Durable, Version and State: one u64-sized slot.
const SMALL_BODY_BYTES: usize = 8;
/// Batch header bytes outside the batch CRC: the CRC itself.
const BATCH_CRC_OFFSET: usize = 20;

const KIND_WRITE: u8 = 1;
const KIND_DURABLE: u8 = 2;
const KIND_VERSION: u8 = 3;
const KIND_STATE: u8 = 4;
const KIND_INTENT: u8 = 5;
const KIND_INTENTS_CLOSED: u8 = 6;

/// Replica state of a chunk; the numbering is the wire's `ReplicaState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkState {
    Ok,
    Corrupt,
    Stale,
    Incomplete,
}

impl ChunkState {
    pub const fn to_u8(self) -> u8 {
        match self {
            ChunkState::Ok => 0,
            ChunkState::Corrupt => 1,
            ChunkState::Stale => 2,
            ChunkState::Incomplete => 3,
        }
    }

    pub const fn from_u8(value: u8) -> Option<ChunkState> {
        match value {
            0 => Some(ChunkState::Ok),
            1 => Some(ChunkState::Corrupt),
            2 => Some(ChunkState::Stale),
            3 => Some(ChunkState::Incomplete),
            _ => None,
        }
    }
}

/// Where the parts of a meta file lie, from the chunk size and log size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaLayout {
    pub chunk_size_bytes: u64,
    /// Blocks of a full chunk: the number of table entries.
    pub block_count: u32,
    pub table_offset: u64,
    /// Table size rounded up to whole pages.
    pub table_bytes: u64,
    pub log_offset: u64,
    pub log_bytes: u64,
    pub file_bytes: u64,
}

impl MetaLayout {
    pub fn new(chunk_size_bytes: u64, log_bytes: u32) -> Result<MetaLayout, MetaError> {
        if chunk_size_bytes == 0
            || !chunk_size_bytes.is_multiple_of(BLOCK)
            || chunk_size_bytes > MAX_CHUNK_SIZE_BYTES
        {
            return Err(MetaError::ChunkSize(chunk_size_bytes));
        }
        if !(PAGE_BYTES as u32..=MAX_LOG_BYTES).contains(&log_bytes)
            || !log_bytes.is_multiple_of(PAGE_BYTES as u32)
        {
            return Err(MetaError::LogBytes(log_bytes));
        }
        // At most 1 GiB / 64 KiB = 16384 blocks, so no arithmetic below overflows.
        let blocks = chunk_size_bytes / BLOCK;
        let table_bytes = (4 * blocks).next_multiple_of(PAGE);
        let log_offset = PAGE + table_bytes;
        Ok(MetaLayout {
            chunk_size_bytes,
            block_count: blocks as u32,
            table_offset: PAGE,
            table_bytes,
            log_offset,
            log_bytes: u64::from(log_bytes),
            file_bytes: log_offset + u64::from(log_bytes),
        })
    }
}

/// The header and CRC table: the chunk's state when the file was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaBase {
    pub handle: u64,
    pub chunk_size_bytes: u64,
    /// Names the data file, `<handle:016x>-<data_file_id:016x>.data`; non-zero.
    pub data_file_id: u64,
    pub version: u64,
    pub length_bytes: u64,
    pub state: ChunkState,
    /// The last mutation seq folded into this base; log Writes continue above it.
    pub base_seq: u64,
    pub log_bytes: u32,
    /// One CRC per block of `length_bytes` (the last block may be partial).
    pub crcs: Vec<u32>,
}

impl MetaBase {
    /// Header page and table: exactly `layout().log_offset` bytes. The
    /// caller appends (or preallocates) `log_bytes` of zeros after them.
    pub fn encode(&self) -> Result<Vec<u8>, MetaError> {
        let layout = self.check()?;
        let mut out = vec![0u8; layout.log_offset as usize];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // 10..12 reserved, zero.
        out[12..16].copy_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.handle.to_le_bytes());
        out[24..32].copy_from_slice(&self.chunk_size_bytes.to_le_bytes());
        out[32..40].copy_from_slice(&self.data_file_id.to_le_bytes());
        out[40..48].copy_from_slice(&self.version.to_le_bytes());
        out[48..56].copy_from_slice(&self.length_bytes.to_le_bytes());
        out[56] = self.state.to_u8();
        // 57..64 reserved, zero.
        out[64..72].copy_from_slice(&self.base_seq.to_le_bytes());
        out[72..76].copy_from_slice(&self.log_bytes.to_le_bytes());
        let table_start = layout.table_offset as usize;
        let table = &mut out[table_start..table_start + 4 * layout.block_count as usize];
        for (slot, crc) in table.chunks_exact_mut(4).zip(&self.crcs) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
        let table_crc = crc32c(table);
        out[76..80].copy_from_slice(&table_crc.to_le_bytes());
        let header_crc = crc32c(&out[..HEADER_CRC_OFFSET]);
        out[HEADER_CRC_OFFSET..HEADER_USED_BYTES].copy_from_slice(&header_crc.to_le_bytes());
        Ok(out)
    }

    /// Decodes the header and table from the start of `bytes`, which must
    /// hold at least `log_offset` bytes (the whole file is fine). Every
    /// field is checked, and every reserved or padding byte must be zero,
    /// so an accepted base re-encodes to exactly the bytes it came from.
    pub fn decode(bytes: &[u8]) -> Result<MetaBase, MetaError> {
        let too_short = |needed: u64| MetaError::TooShort {
            needed,
            got: bytes.len() as u64,
        };
        let h = bytes.get(..PAGE_BYTES).ok_or_else(|| too_short(PAGE))?;
        let magic: [u8; 8] = h[0..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(MetaError::BadMagic(magic));
        }
        // The CRC before the fields it protects: a flipped bit reads as
        // damage, not as a strange value.
        let stored = u32_at(h, HEADER_CRC_OFFSET);
        let computed = crc32c(&h[..HEADER_CRC_OFFSET]);
        if stored != computed {
            return Err(MetaError::BadHeaderCrc { stored, computed });
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if version != FORMAT_VERSION {
            return Err(MetaError::UnsupportedVersion(version));
        }
        let block_bytes = u32_at(h, 12);
        if block_bytes != BLOCK_BYTES as u32 {
            return Err(MetaError::BlockBytes(block_bytes));
        }
        let chunk_size_bytes = u64_at(h, 24);
        let log_bytes = u32_at(h, 72);
        let layout = MetaLayout::new(chunk_size_bytes, log_bytes)?;
        let state = ChunkState::from_u8(h[56]).ok_or(MetaError::UnknownState(h[56]))?;
        let length_bytes = u64_at(h, 48);
        if length_bytes > chunk_size_bytes {
            return Err(MetaError::LengthBeyondChunk {
                length_bytes,
                chunk_size_bytes,
            });
        }
        let data_file_id = u64_at(h, 32);
        if data_file_id == 0 {
            return Err(MetaError::ZeroDataFileId);
        }
        let mut reserved = (10..12).chain(57..64).chain(HEADER_USED_BYTES..PAGE_BYTES);
        if let Some(offset) = reserved.find(|&i| h[i] != 0) {
            return Err(MetaError::ReservedNotZero {
                offset,
                value: h[offset],
            });
        }

        let table_region = bytes
            .get(layout.table_offset as usize..layout.log_offset as usize)
            .ok_or_else(|| too_short(layout.log_offset))?;
        let (table, padding) = table_region.split_at(4 * layout.block_count as usize);
        let stored = u32_at(h, 76);
        let computed = crc32c(table);
        if stored != computed {
            return Err(MetaError::BadTableCrc { stored, computed });
        }
        // Bounded by block_count, itself bounded by the chunk size rule.
        let written = block_count(length_bytes) as usize;
        let mut crcs = Vec::with_capacity(written);
        for (block, entry) in table.chunks_exact(4).enumerate() {
            let crc = u32::from_le_bytes(entry.try_into().expect("4 bytes"));
            if block < written {
                crcs.push(crc);
            } else if crc != 0 {
                return Err(MetaError::CrcBeyondLength {
                    block: block as u32,
                    crc,
                    length_bytes,
                });
            }
        }
        if let Some(at) = padding.iter().position(|&b| b != 0) {
            return Err(MetaError::TablePaddingNotZero {
                offset: layout.log_offset - padding.len() as u64 + at as u64,
                value: padding[at],
            });
        }
        Ok(MetaBase {
            handle: u64_at(h, 16),
            chunk_size_bytes,
            data_file_id,
            version: u64_at(h, 40),
            length_bytes,
            state,
            base_seq: u64_at(h, 64),
            log_bytes,
            crcs,
        })
    }

    /// Layout of this base's file. Panics if the chunk size or log size
    /// breaks the rules of [`MetaLayout::new`]: a decoded base never does.
    pub fn layout(&self) -> MetaLayout {
        MetaLayout::new(self.chunk_size_bytes, self.log_bytes)
            .expect("a MetaBase's chunk size and log size are validated when it is built")
    }

    /// The rules `decode` enforces, for a base built in memory.
    fn check(&self) -> Result<MetaLayout, MetaError> {
        let layout = MetaLayout::new(self.chunk_size_bytes, self.log_bytes)?;
        if self.length_bytes > self.chunk_size_bytes {
            return Err(MetaError::LengthBeyondChunk {
                length_bytes: self.length_bytes,
                chunk_size_bytes: self.chunk_size_bytes,
            });
        }
        if self.data_file_id == 0 {
            return Err(MetaError::ZeroDataFileId);
        }
        let expected = block_count(self.length_bytes);
        if self.crcs.len() as u64 != expected {
            return Err(MetaError::CrcCount {
                length_bytes: self.length_bytes,
                expected,
                got: self.crcs.len() as u64,
            });
        }
        Ok(layout)
    }
}

/// One mutation in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    /// Bytes `[offset, offset + length)` written (or zero-filled, for the
    /// padding of a chunk to its end); the chunk is `new_length` long after
    /// it, and blocks `first_block..first_block + crcs.len()` have these CRCs.
    Write {
        seq: u64,
        version: u64,
        offset: u64,
        length: u64,
        new_length: u64,
        first_block: u32,
        crcs: Vec<u32>,
    },
    /// Every Write with a seq up to this one has its data durable.
    Durable {
        seq: u64,
    },
    /// The chunk version was bumped to this.
    Version {
        version: u64,
    },
    State {
        state: ChunkState,
    },
    /// Data writes to blocks `first_block..first_block + block_count` may
    /// land before their Write records are durable (note 015): until an
    /// `IntentsClosed`, recovery treats these blocks as unsettled, and
    /// rewrites as zeros whatever lies past the chunk's length in them.
    Intent {
        first_block: u32,
        block_count: u32,
    },
    /// The Intents logged before this no longer apply: every data write
    /// issued under them has its Write record earlier in the log (in this
    /// batch or before), and that record covers its blocks from here on.
    /// Intents after it in the same batch are the new open set.
    IntentsClosed,
}

impl LogRecord {
    /// The rules that need only the layout, checked on every decoded
    /// record. A writer calls this before logging a record, because a
    /// record that breaks them makes the whole chunk untrusted at recovery.
    pub fn check(&self, layout: &MetaLayout) -> Result<(), RecordError> {
        if let LogRecord::Intent {
            first_block,
            block_count: count,
        } = *self
        {
            let chunk_blocks = block_count(layout.chunk_size_bytes);
            if count == 0 || u64::from(first_block) + u64::from(count) > chunk_blocks {
                return Err(RecordError::IntentBeyondChunk {
                    first_block,
                    block_count: count,
                    chunk_blocks,
                });
            }
            return Ok(());
        }
        let LogRecord::Write {
            offset,
            length,
            new_length,
            first_block,
            crcs,
            ..
        } = self
        else {
            return Ok(());
        };
        let (offset, length, new_length) = (*offset, *length, *new_length);
        let chunk_size_bytes = layout.chunk_size_bytes;
        if crcs.is_empty() {
            return Err(RecordError::NoCrcs);
        }
        let end = offset
            .checked_add(length)
            .filter(|&end| end <= chunk_size_bytes)
            .ok_or(RecordError::WriteBeyondChunk {
                offset,
                length,
                chunk_size_bytes,
            })?;
        if new_length > chunk_size_bytes {
            return Err(RecordError::NewLengthBeyondChunk {
                new_length,
                chunk_size_bytes,
            });
        }
        if end > new_length {
            return Err(RecordError::WriteBeyondNewLength { end, new_length });
        }
        let first = u64::from(*first_block);
        let crc_count = crcs.len() as u64;
        if first + crc_count > block_count(new_length) {
            return Err(RecordError::CrcBlocksBeyondLength {
                first_block: *first_block,
                crc_count,
                new_length,
            });
        }
        check_covered(offset, end, *first_block, crc_count)
    }

    /// Bytes this record takes in a batch, header included.
    pub fn encoded_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.body_bytes()
    }

    fn body_bytes(&self) -> usize {
        match self {
            LogRecord::Write { crcs, .. } => write_body_bytes(crcs.len() as u64) as usize,
            _ => SMALL_BODY_BYTES,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let kind = match self {
            LogRecord::Write { .. } => KIND_WRITE,
            LogRecord::Durable { .. } => KIND_DURABLE,
            LogRecord::Version { .. } => KIND_VERSION,
            LogRecord::State { .. } => KIND_STATE,
            LogRecord::Intent { .. } => KIND_INTENT,
            LogRecord::IntentsClosed => KIND_INTENTS_CLOSED,
        };
        let body_bytes = u32::try_from(self.body_bytes())
            .expect("a record fits in a batch, and a batch in a 16 MiB log region");
        out.extend_from_slice(&[kind, 0, 0, 0]);
        out.extend_from_slice(&body_bytes.to_le_bytes());
        let start = out.len();
        match self {
            LogRecord::Write {
                seq,
                version,
                offset,
                length,
                new_length,
                first_block,
                crcs,
            } => {
                for v in [seq, version, offset, length, new_length] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&first_block.to_le_bytes());
                // Cannot fail: body_bytes fitted in a u32 above.
                out.extend_from_slice(&(crcs.len() as u32).to_le_bytes());
                for crc in crcs {
                    out.extend_from_slice(&crc.to_le_bytes());
                }
            }
            LogRecord::Durable { seq } => out.extend_from_slice(&seq.to_le_bytes()),
            LogRecord::Version { version } => out.extend_from_slice(&version.to_le_bytes()),
            LogRecord::State { state } => out.push(state.to_u8()),
            LogRecord::Intent {
                first_block,
                block_count,
            } => {
                out.extend_from_slice(&first_block.to_le_bytes());
                out.extend_from_slice(&block_count.to_le_bytes());
            }
            // Eight reserved zero bytes.
            LogRecord::IntentsClosed => {}
        }
        out.resize(start + body_bytes as usize, 0);
    }
}

/// A Write's CRC blocks must include every block of the bytes it changes.
fn check_covered(
    start: u64,
    end: u64,
    first_block: u32,
    crc_count: u64,
) -> Result<(), RecordError> {
    if start >= end {
        return Ok(());
    }
    let needed = blocks_covering(start, end - start);
    let first = u64::from(first_block);
    if needed.start < first || needed.end > first + crc_count {
        return Err(RecordError::NotCovered {
            start,
            end,
            first_block,
            crc_count,
        });
    }
    Ok(())
}

/// Body size of a Write with `crc_count` CRCs, padded to 8 bytes. Computed
/// in u64 so an untrusted count cannot overflow it.
fn write_body_bytes(crc_count: u64) -> u64 {
    WRITE_FIXED_BYTES as u64 + (4 * crc_count).next_multiple_of(8)
}

/// Bytes `encode_batch` produces for `records`: header, records, zero
/// padding to whole pages. The writer compares it with the room left in
/// the log region.
pub fn encoded_batch_bytes(records: &[LogRecord]) -> usize {
    let used: usize =
        BATCH_HEADER_BYTES + records.iter().map(LogRecord::encoded_bytes).sum::<usize>();
    used.next_multiple_of(PAGE_BYTES)
}

/// Appends one batch to `out`, padded with zeros to whole pages. The
/// records should each pass [`LogRecord::check`] and follow the replay
/// rules; this function only lays out bytes. Panics if the batch would not
/// fit a u32 size, which no log region can hold anyway.
pub fn encode_batch(batch_seq: u64, records: &[LogRecord], out: &mut Vec<u8>) {
    let start = out.len();
    let total = encoded_batch_bytes(records);
    let batch_bytes = u32::try_from(total).expect("a batch fits in a 16 MiB log region");
    let count = u32::try_from(records.len()).expect("a batch fits in a 16 MiB log region");
    out.reserve(total);
    out.extend_from_slice(&BATCH_MAGIC);
    out.extend_from_slice(&batch_bytes.to_le_bytes());
    out.extend_from_slice(&batch_seq.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // the CRC, sealed below
    for record in records {
        record.encode(out);
    }
    out.resize(start + total, 0);
    let batch = &out[start..];
    let crc = batch_crc(batch);
    out[start + BATCH_CRC_OFFSET..start + BATCH_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// CRC of a whole batch except the CRC field itself.
fn batch_crc(batch: &[u8]) -> u32 {
    crc32c_extend(
        crc32c(&batch[..BATCH_CRC_OFFSET]),
        &batch[BATCH_HEADER_BYTES..],
    )
}

/// What the log region holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogScan {
    /// Records of the valid batches, in order.
    pub records: Vec<LogRecord>,
    /// Seq of the next batch to write (1 for an empty log).
    pub next_batch_seq: u64,
    /// Where the next batch goes, relative to the log region.
    pub end_offset: u64,
    /// Valid batches found.
    pub batches: u64,
    /// Whether every byte from `end_offset` to the end of the region is
    /// zero. When it is not, a torn batch lies there, and the chunkserver
    /// writes a fresh meta file before appending, so no later batch ever
    /// sits beside leftovers of a torn one (design note 006).
    pub tail_zeroed: bool,
}

/// Scans the log region (`log` is the whole region, `layout.log_bytes`
/// long). The scan ends quietly at the first batch whose framing is not
/// intact (magic, size, seq, CRC): the torn or never-written tail. A batch
/// whose CRC holds but whose records are malformed is an error: the CRC
/// says we wrote those bytes, so they reveal a bug or tampering.
pub fn scan_log(layout: &MetaLayout, log: &[u8]) -> Result<LogScan, MetaError> {
    if log.len() as u64 != layout.log_bytes {
        return Err(MetaError::LogRegionLength {
            expected: layout.log_bytes,
            got: log.len() as u64,
        });
    }
    let mut scan = LogScan {
        records: Vec::new(),
        next_batch_seq: 1,
        end_offset: 0,
        batches: 0,
        tail_zeroed: false,
    };
    let mut at = 0usize;
    while let Some(batch_bytes) = intact_batch(&log[at..], scan.next_batch_seq) {
        let batch = &log[at..at + batch_bytes];
        decode_records(layout, scan.next_batch_seq, batch, &mut scan.records)?;
        at += batch_bytes;
        scan.next_batch_seq += 1;
        scan.batches += 1;
    }
    scan.end_offset = at as u64;
    scan.tail_zeroed = log[at..].iter().all(|&b| b == 0);
    Ok(scan)
}

/// Size of the batch at the start of `rest` if its framing is intact and
/// its seq is `batch_seq`; `None` marks the end of the log.
fn intact_batch(rest: &[u8], batch_seq: u64) -> Option<usize> {
    if rest.len() < BATCH_HEADER_BYTES || rest[0..4] != BATCH_MAGIC {
        return None;
    }
    let batch_bytes = u32_at(rest, 4) as usize;
    if batch_bytes < PAGE_BYTES
        || !batch_bytes.is_multiple_of(PAGE_BYTES)
        || batch_bytes > rest.len()
    {
        return None;
    }
    if u64_at(rest, 8) != batch_seq {
        return None;
    }
    let batch = &rest[..batch_bytes];
    (u32_at(batch, BATCH_CRC_OFFSET) == batch_crc(batch)).then_some(batch_bytes)
}

fn decode_records(
    layout: &MetaLayout,
    batch_seq: u64,
    batch: &[u8],
    out: &mut Vec<LogRecord>,
) -> Result<(), MetaError> {
    let count = u32_at(batch, 16);
    let mut at = BATCH_HEADER_BYTES;
    // An untrusted count, but each record takes at least 16 bytes or ends
    // the loop with an error, so the batch size bounds the work.
    for index in 0..count {
        let (record, used) =
            decode_record(layout, &batch[at..]).map_err(|problem| MetaError::Record {
                batch_seq,
                index,
                problem,
            })?;
        out.push(record);
        at += used;
    }
    if let Some(i) = batch[at..].iter().position(|&b| b != 0) {
        return Err(MetaError::BatchPaddingNotZero {
            batch_seq,
            offset: (at + i) as u64,
            value: batch[at + i],
        });
    }
    Ok(())
}

/// Decodes the record at the start of `rest`; returns it and its size.
fn decode_record(layout: &MetaLayout, rest: &[u8]) -> Result<(LogRecord, usize), RecordError> {
    let left = rest.len() as u64;
    if rest.len() < RECORD_HEADER_BYTES {
        return Err(RecordError::Overrun {
            needed: RECORD_HEADER_BYTES as u64,
            left,
        });
    }
    let kind = rest[0];
    if rest[1..4] != [0; 3] {
        return Err(RecordError::ReservedNotZero);
    }
    let body_bytes = u32_at(rest, 4);
    let needed = RECORD_HEADER_BYTES as u64 + u64::from(body_bytes);
    let body = rest
        .get(RECORD_HEADER_BYTES..needed as usize)
        .ok_or(RecordError::Overrun { needed, left })?;
    let wrong_size = |expected: u64| RecordError::BodyBytes {
        kind,
        body_bytes,
        expected,
    };
    let record = match kind {
        KIND_WRITE => {
            if body.len() < WRITE_FIXED_BYTES {
                return Err(wrong_size(WRITE_FIXED_BYTES as u64));
            }
            let crc_count = u32_at(body, 44);
            let expected = write_body_bytes(u64::from(crc_count));
            if u64::from(body_bytes) != expected {
                return Err(wrong_size(expected));
            }
            // The size check above proves the CRCs are within `body`.
            let crc_end = WRITE_FIXED_BYTES + 4 * crc_count as usize;
            if body[crc_end..].iter().any(|&b| b != 0) {
                return Err(RecordError::PaddingNotZero);
            }
            LogRecord::Write {
                seq: u64_at(body, 0),
                version: u64_at(body, 8),
                offset: u64_at(body, 16),
                length: u64_at(body, 24),
                new_length: u64_at(body, 32),
                first_block: u32_at(body, 40),
                crcs: body[WRITE_FIXED_BYTES..crc_end]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            }
        }
        KIND_DURABLE | KIND_VERSION | KIND_STATE => {
            if body.len() != SMALL_BODY_BYTES {
                return Err(wrong_size(SMALL_BODY_BYTES as u64));
            }
            let value = u64_at(body, 0);
            match kind {
                KIND_DURABLE => LogRecord::Durable { seq: value },
                KIND_VERSION => LogRecord::Version { version: value },
                _ => {
                    if body[1..].iter().any(|&b| b != 0) {
                        return Err(RecordError::PaddingNotZero);
                    }
                    let state =
                        ChunkState::from_u8(body[0]).ok_or(RecordError::UnknownState(body[0]))?;
                    LogRecord::State { state }
                }
            }
        }
        KIND_INTENT | KIND_INTENTS_CLOSED => {
            if body.len() != SMALL_BODY_BYTES {
                return Err(wrong_size(SMALL_BODY_BYTES as u64));
            }
            if kind == KIND_INTENT {
                LogRecord::Intent {
                    first_block: u32_at(body, 0),
                    block_count: u32_at(body, 4),
                }
            } else {
                if body.iter().any(|&b| b != 0) {
                    return Err(RecordError::PaddingNotZero);
                }
                LogRecord::IntentsClosed
            }
        }
        other => return Err(RecordError::UnknownKind(other)),
    };
    record.check(layout)?;
    Ok((record, needed as usize))
}

/// The chunk's state after replaying the log over its base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    pub version: u64,
    pub length_bytes: u64,
    pub state: ChunkState,
    /// One CRC per block of `length_bytes`.
    pub crcs: Vec<u32>,
    /// Seq of the last Write, or the base's `base_seq` if none.
    pub last_seq: u64,
    /// Highest Durable seq, at least the base's `base_seq`: every Write
    /// folded into a base was durable when the base was written.
    pub durable_seq: u64,
    /// Blocks below the length whose CRC was last set by a Write above
    /// `durable_seq`, or that an open Intent covers; sorted and distinct:
    /// their data may not match their CRC, so the chunkserver re-reads them
    /// and recomputes a CRC that does not match.
    pub unsettled_blocks: Vec<u32>,
    /// Blocks covered by an Intent not followed by an `IntentsClosed`,
    /// sorted and distinct, also past the length: bytes past the length in
    /// them may hold an unacknowledged write and must be zeroed.
    pub open_intent_blocks: Vec<u32>,
}

/// Folds `records` (in log order) into `base`. Besides the per-record rules
/// of [`LogRecord::check`]: Write seqs increase and exceed `base_seq`, a
/// version never goes back, a length never shrinks, a Write that grows the
/// length carries the CRCs of every block that growth changes, and a
/// Durable seq never runs ahead of the Writes logged before it.
pub fn replay(base: &MetaBase, records: &[LogRecord]) -> Result<Replayed, MetaError> {
    let layout = base.check()?;
    let mut r = Replayed {
        version: base.version,
        length_bytes: base.length_bytes,
        state: base.state,
        crcs: base.crcs.clone(),
        last_seq: base.base_seq,
        durable_seq: base.base_seq,
        unsettled_blocks: Vec::new(),
        open_intent_blocks: Vec::new(),
    };
    // Blocks of open Intents, over the whole chunk.
    let mut open_intent = vec![false; block_count(layout.chunk_size_bytes) as usize];
    // Seq of the Write that last set each block's CRC; 0 is the base, which
    // is never above durable_seq.
    let mut set_by = vec![0u64; r.crcs.len()];
    for (index, record) in records.iter().enumerate() {
        record
            .check(&layout)
            .and_then(|()| r.apply(record, &mut set_by))
            .map_err(|problem| MetaError::Replay { index, problem })?;
        match *record {
            LogRecord::Intent {
                first_block,
                block_count,
            } => {
                // check() bounded the range by the chunk's blocks.
                let first = first_block as usize;
                open_intent[first..first + block_count as usize].fill(true);
            }
            LogRecord::IntentsClosed => open_intent.fill(false),
            _ => {}
        }
    }
    r.unsettled_blocks = set_by
        .iter()
        .enumerate()
        .filter(|&(block, &seq)| seq > r.durable_seq || open_intent[block])
        .map(|(block, _)| block as u32)
        .collect();
    r.open_intent_blocks = open_intent
        .iter()
        .enumerate()
        .filter(|&(_, &open)| open)
        .map(|(block, _)| block as u32)
        .collect();
    Ok(r)
}

impl Replayed {
    /// Applies one record that passed `LogRecord::check`.
    fn apply(&mut self, record: &LogRecord, set_by: &mut Vec<u64>) -> Result<(), RecordError> {
        match record {
            LogRecord::Write {
                seq,
                version,
                new_length,
                first_block,
                crcs,
                ..
            } => {
                if *seq <= self.last_seq {
                    return Err(RecordError::SeqNotIncreasing {
                        seq: *seq,
                        previous: self.last_seq,
                    });
                }
                self.check_version(*version)?;
                // Mutations of disjoint blocks run concurrently, so a record
                // may carry a smaller new_length than one logged before it
                // (it was computed before the other extended the chunk):
                // lengths only grow, the larger wins.
                let new_length = &(*new_length).max(self.length_bytes);
                // Growth changes the old partial last block and every new
                // one; a block left without its CRC would read as corrupt.
                check_covered(
                    self.length_bytes,
                    *new_length,
                    *first_block,
                    crcs.len() as u64,
                )?;
                // check() bounded these by block_count(new_length) <= 16384.
                let blocks = block_count(*new_length) as usize;
                self.crcs.resize(blocks, 0);
                set_by.resize(blocks, 0);
                let first = *first_block as usize;
                self.crcs[first..first + crcs.len()].copy_from_slice(crcs);
                set_by[first..first + crcs.len()].fill(*seq);
                self.length_bytes = *new_length;
                self.version = *version;
                self.last_seq = *seq;
            }
            LogRecord::Durable { seq } => {
                if *seq > self.last_seq {
                    return Err(RecordError::DurableAhead {
                        seq: *seq,
                        last_seq: self.last_seq,
                    });
                }
                self.durable_seq = self.durable_seq.max(*seq);
            }
            LogRecord::Version { version } => {
                self.check_version(*version)?;
                self.version = *version;
            }
            LogRecord::State { state } => self.state = *state,
            LogRecord::Intent { .. } | LogRecord::IntentsClosed => {}
        }
        Ok(())
    }

    fn check_version(&self, version: u64) -> Result<(), RecordError> {
        if version < self.version {
            return Err(RecordError::VersionBackwards {
                version,
                current: self.version,
            });
        }
        Ok(())
    }
}

/// Why a meta file, or a base built in memory, is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("meta file has {got} bytes, needs at least {needed}")]
    TooShort { needed: u64, got: u64 },
    #[error("not a ringfs chunk meta file (bad magic {0:02x?})")]
    BadMagic([u8; 8]),
    #[error(
        "meta header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}; the header is damaged"
    )]
    BadHeaderCrc { stored: u32, computed: u32 },
    #[error("meta format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("block_bytes is {0}, expected {BLOCK_BYTES}")]
    BlockBytes(u32),
    #[error(
        "chunk_size_bytes {0} is not a non-zero multiple of {BLOCK_BYTES} of at most {MAX_CHUNK_SIZE_BYTES}"
    )]
    ChunkSize(u64),
    #[error("log_bytes {0} is not a multiple of {PAGE_BYTES} in {PAGE_BYTES}..={MAX_LOG_BYTES}")]
    LogBytes(u32),
    #[error("state {0} is not a chunk state (0 ok, 1 corrupt, 2 stale, 3 incomplete)")]
    UnknownState(u8),
    #[error("length_bytes {length_bytes} exceeds chunk_size_bytes {chunk_size_bytes}")]
    LengthBeyondChunk {
        length_bytes: u64,
        chunk_size_bytes: u64,
    },
    #[error("data_file_id is zero")]
    ZeroDataFileId,
    #[error("header byte {offset} is reserved and must be zero, found {value:#04x}")]
    ReservedNotZero { offset: usize, value: u8 },
    #[error("{got} block CRCs given for length_bytes {length_bytes}, which has {expected} blocks")]
    CrcCount {
        length_bytes: u64,
        expected: u64,
        got: u64,
    },
    #[error(
        "CRC table checksum mismatch: stored {stored:#010x}, computed {computed:#010x}; the table is damaged"
    )]
    BadTableCrc { stored: u32, computed: u32 },
    #[error(
        "CRC table entry {block} is {crc:#010x}, but the block lies beyond length_bytes {length_bytes} \
         (only written blocks have CRCs)"
    )]
    CrcBeyondLength {
        block: u32,
        crc: u32,
        length_bytes: u64,
    },
    #[error("CRC table padding byte at file offset {offset} is {value:#04x}, must be zero")]
    TablePaddingNotZero { offset: u64, value: u8 },
    #[error("log region has {got} bytes, the layout says {expected}")]
    LogRegionLength { expected: u64, got: u64 },
    #[error(
        "log batch {batch_seq} has a valid CRC but record {index} is malformed: {problem}; \
         the chunk cannot be trusted"
    )]
    Record {
        batch_seq: u64,
        index: u32,
        problem: RecordError,
    },
    #[error(
        "log batch {batch_seq} has a valid CRC but padding byte {offset} is {value:#04x}, must be zero; \
         the chunk cannot be trusted"
    )]
    BatchPaddingNotZero {
        batch_seq: u64,
        offset: u64,
        value: u8,
    },
    #[error("replaying log record {index}: {problem}")]
    Replay { index: usize, problem: RecordError },
}

/// What is wrong with one log record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("needs {needed} bytes but {left} remain in the batch")]
    Overrun { needed: u64, left: u64 },
    #[error("record header bytes 1..4 are reserved and must be zero")]
    ReservedNotZero,
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("kind {kind} has body_bytes {body_bytes}, expected {expected}")]
    BodyBytes {
        kind: u8,
        body_bytes: u32,
        expected: u64,
    },
    #[error("record padding is not zero")]
    PaddingNotZero,
    #[error("state {0} is not a chunk state (0 ok, 1 corrupt, 2 stale, 3 incomplete)")]
    UnknownState(u8),
    #[error("Write has no block CRCs")]
    NoCrcs,
    #[error("Write offset {offset} + length {length} exceeds chunk_size_bytes {chunk_size_bytes}")]
    WriteBeyondChunk {
        offset: u64,
        length: u64,
        chunk_size_bytes: u64,
    },
    #[error("Write new_length {new_length} exceeds chunk_size_bytes {chunk_size_bytes}")]
    NewLengthBeyondChunk {
        new_length: u64,
        chunk_size_bytes: u64,
    },
    #[error("Write ends at byte {end}, beyond its new_length {new_length}")]
    WriteBeyondNewLength { end: u64, new_length: u64 },
    #[error(
        "Write CRCs for blocks {first_block}..{first_block}+{crc_count} lie beyond the blocks of new_length {new_length}"
    )]
    CrcBlocksBeyondLength {
        first_block: u32,
        crc_count: u64,
        new_length: u64,
    },
    #[error(
        "Write CRCs for blocks {first_block}..{first_block}+{crc_count} do not cover bytes {start}..{end}, which it changes"
    )]
    NotCovered {
        start: u64,
        end: u64,
        first_block: u32,
        crc_count: u64,
    },
    #[error(
        "Write seq {seq} does not follow seq {previous} (seqs increase from the base's base_seq)"
    )]
    SeqNotIncreasing { seq: u64, previous: u64 },
    #[error("version {version} is below the current version {current}")]
    VersionBackwards { version: u64, current: u64 },
    #[error("Durable seq {seq} is beyond the last Write seq {last_seq}")]
    DurableAhead { seq: u64, last_seq: u64 },
    #[error(
        "Intent for blocks {first_block}..{first_block}+{block_count} is empty or beyond the chunk's {chunk_blocks} blocks"
    )]
    IntentBeyondChunk {
        first_block: u32,
        block_count: u32,
        chunk_blocks: u64,
    },
}

/// Callers pass offsets inside bytes whose length they checked.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_the_default_chunk() {
        let l = MetaLayout::new(64 << 20, DEFAULT_LOG_BYTES).unwrap();
        assert_eq!(l.block_count, 1024);
        assert_eq!((l.table_offset, l.table_bytes), (4096, 4096));
        assert_eq!(l.log_offset, 8192);
        assert_eq!(l.file_bytes, 8192 + 256 * 1024);
        let big = MetaLayout::new(MAX_CHUNK_SIZE_BYTES, MAX_LOG_BYTES).unwrap();
        assert_eq!(big.block_count, 16384);
        assert_eq!(big.table_bytes, 65536);
        let small = MetaLayout::new(BLOCK, 4096).unwrap();
        assert_eq!((small.table_bytes, small.file_bytes), (4096, 12288));
    }

    #[test]
    fn layout_rules() {
        for size in [0, BLOCK - 1, BLOCK + 4096, MAX_CHUNK_SIZE_BYTES + BLOCK] {
            assert_eq!(MetaLayout::new(size, 4096), Err(MetaError::ChunkSize(size)));
        }
        for log in [0, 4095, 4097, MAX_LOG_BYTES + 4096] {
            assert_eq!(MetaLayout::new(BLOCK, log), Err(MetaError::LogBytes(log)));
        }
    }

    #[test]
    fn record_sizes_are_multiples_of_eight() {
        for n in 1..6u64 {
            let r = LogRecord::Write {
                seq: 1,
                version: 1,
                offset: 0,
                length: 1,
                new_length: 1,
                first_block: 0,
                crcs: vec![7; n as usize],
            };
            assert_eq!(
                r.encoded_bytes(),
                8 + 48 + (4 * n as usize).next_multiple_of(8)
            );
            let mut out = Vec::new();
            r.encode(&mut out);
            assert_eq!(out.len(), r.encoded_bytes());
        }
        assert_eq!(LogRecord::Durable { seq: 1 }.encoded_bytes(), 16);
        assert_eq!(encoded_batch_bytes(&[]), PAGE_BYTES);
    }
}
