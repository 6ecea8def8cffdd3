//! CRC32C block math: one checksum per 64 KiB block of a chunk (or of a
//! frame's data section), verification of arbitrary byte ranges, and
//! extension of a running CRC so appends never re-read old bytes.
//!
//! All CRCs are CRC-32C (Castagnoli, iSCSI), computed by `crc-fast`, which
//! picks its SIMD path (VPCLMULQDQ / AVX-512 where present) at run time.

use std::ops::Range;

/// Size of a checksum block. Fixed by the on-disk and wire formats.
pub const BLOCK_BYTES: usize = 64 * 1024;
const BLOCK_BYTES_U64: u64 = BLOCK_BYTES as u64;

/// CRC-32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(data)
}

/// CRC-32C of `a || data`, given only `crc = crc32c(a)`.
#[inline]
pub fn crc32c_extend(crc: u32, data: &[u8]) -> u32 {
    if data.is_empty() {
        return crc;
    }
    // crc-fast's state is the pre-xorout register: undo CRC-32C's final xor.
    let mut digest =
        crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    digest.update(data);
    // Truncation is exact: a 32-bit CRC lives in the low 32 bits.
    digest.finalize() as u32
}

/// Number of blocks holding `len_bytes` bytes (the last one may be partial).
#[inline]
pub fn block_count(len_bytes: u64) -> u64 {
    len_bytes.div_ceil(BLOCK_BYTES_U64)
}

/// Indexes of the blocks that overlap `[offset, offset + len)`; empty when `len == 0`.
pub fn blocks_covering(offset: u64, len: u64) -> Range<u64> {
    if len == 0 {
        let b = offset / BLOCK_BYTES_U64;
        return b..b;
    }
    let end = offset.saturating_add(len);
    offset / BLOCK_BYTES_U64..end.div_ceil(BLOCK_BYTES_U64)
}

/// Byte range `[start, end)` of the blocks overlapping `[offset, offset + len)`,
/// clipped to `total_len`: what a reader must fetch to verify that range.
pub fn block_aligned_range(offset: u64, len: u64, total_len: u64) -> Range<u64> {
    let blocks = blocks_covering(offset, len);
    let start = (blocks.start * BLOCK_BYTES_U64).min(total_len);
    let end = (blocks.end * BLOCK_BYTES_U64).min(total_len).max(start);
    start..end
}

/// Appends one checksum per 64 KiB piece of `data` to `out`.
pub fn block_checksums_into(data: &[u8], out: &mut Vec<u32>) {
    out.reserve(data.len().div_ceil(BLOCK_BYTES));
    out.extend(data.chunks(BLOCK_BYTES).map(crc32c));
}

/// One checksum per 64 KiB piece of `data`.
pub fn block_checksums(data: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    block_checksums_into(data, &mut out);
    out
}

/// Why bytes were not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error(
        "checksum mismatch in block {block_index}: expected {expected:#010x}, computed {actual:#010x}"
    )]
    Mismatch {
        block_index: u64,
        expected: u32,
        actual: u32,
    },
    #[error("{given} block checksums given for {needed} blocks of data")]
    CountMismatch { needed: u64, given: u64 },
    #[error("range {offset}+{len} lies outside a stream of {total_len} bytes")]
    OutOfRange {
        offset: u64,
        len: u64,
        total_len: u64,
    },
    #[error("expected {expected} bytes of block-aligned data, got {got}")]
    WrongLength { expected: u64, got: u64 },
}

/// Verifies `data`, split into 64 KiB pieces from its first byte, against
/// `expected` (one CRC per piece). `first_block_index` only labels errors.
pub fn verify_blocks(
    data: &[u8],
    expected: &[u32],
    first_block_index: u64,
) -> Result<(), ChecksumError> {
    let needed = block_count(data.len() as u64);
    if needed != expected.len() as u64 {
        return Err(ChecksumError::CountMismatch {
            needed,
            given: expected.len() as u64,
        });
    }
    for (i, (piece, &want)) in data.chunks(BLOCK_BYTES).zip(expected).enumerate() {
        let actual = crc32c(piece);
        if actual != want {
            return Err(ChecksumError::Mismatch {
                block_index: first_block_index + i as u64,
                expected: want,
                actual,
            });
        }
    }
    Ok(())
}

/// Verifies the byte range `[offset, offset + len)` of a stream of
/// `total_len` bytes whose block checksums are `stored` (one per block of
/// the whole stream). `covering` must hold exactly the bytes of
/// [`block_aligned_range`]`(offset, len, total_len)`: blocks are verified
/// whole, since a CRC covers its whole block.
pub fn verify_range(
    stored: &[u32],
    total_len: u64,
    offset: u64,
    len: u64,
    covering: &[u8],
) -> Result<(), ChecksumError> {
    if offset.checked_add(len).is_none_or(|end| end > total_len) {
        return Err(ChecksumError::OutOfRange {
            offset,
            len,
            total_len,
        });
    }
    if stored.len() as u64 != block_count(total_len) {
        return Err(ChecksumError::CountMismatch {
            needed: block_count(total_len),
            given: stored.len() as u64,
        });
    }
    let range = block_aligned_range(offset, len, total_len);
    if covering.len() as u64 != range.end - range.start {
        return Err(ChecksumError::WrongLength {
            expected: range.end - range.start,
            got: covering.len() as u64,
        });
    }
    let blocks = blocks_covering(offset, len);
    // Both conversions are bounded by stored.len(), checked above.
    let wanted = &stored[blocks.start as usize..blocks.end as usize];
    verify_blocks(covering, wanted, blocks.start)
}

/// Updates `crcs`, the block checksums of a stream of `len_before` bytes,
/// to cover `len_before + appended.len()` bytes. The last partial block's
/// CRC is extended in place; old bytes are never needed.
pub fn extend_block_checksums(
    crcs: &mut Vec<u32>,
    len_before: u64,
    appended: &[u8],
) -> Result<(), ChecksumError> {
    if crcs.len() as u64 != block_count(len_before) {
        return Err(ChecksumError::CountMismatch {
            needed: block_count(len_before),
            given: crcs.len() as u64,
        });
    }
    let mut rest = appended;
    // Bounded by BLOCK_BYTES, so the cast is exact.
    let used_in_last = (len_before % BLOCK_BYTES_U64) as usize;
    if used_in_last != 0 && !rest.is_empty() {
        let take = rest.len().min(BLOCK_BYTES - used_in_last);
        let last = crcs
            .last_mut()
            .expect("a partial block exists when len_before % BLOCK != 0");
        *last = crc32c_extend(*last, &rest[..take]);
        rest = &rest[take..];
    }
    block_checksums_into(rest, crcs);
    debug_assert_eq!(
        crcs.len() as u64,
        block_count(len_before + appended.len() as u64)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // The CRC-32C check value from the catalogue of parametrised CRCs.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn covering_blocks() {
        let b = BLOCK_BYTES_U64;
        assert_eq!(blocks_covering(0, 0), 0..0);
        assert_eq!(blocks_covering(0, 1), 0..1);
        assert_eq!(blocks_covering(b - 1, 1), 0..1);
        assert_eq!(blocks_covering(b - 1, 2), 0..2);
        assert_eq!(blocks_covering(b, b), 1..2);
        assert_eq!(block_aligned_range(b + 5, 10, 3 * b), b..2 * b);
        assert_eq!(block_aligned_range(b + 5, 10, b + 20), b..b + 20);
    }

    #[test]
    fn verify_range_reports_the_bad_block() {
        let data: Vec<u8> = (0..(3 * BLOCK_BYTES + 100))
            .map(|i| (i * 7) as u8)
            .collect();
        let stored = block_checksums(&data);
        let total = data.len() as u64;
        let r = block_aligned_range(BLOCK_BYTES as u64 + 3, 70_000, total);
        let covering = &data[r.start as usize..r.end as usize];
        verify_range(&stored, total, BLOCK_BYTES as u64 + 3, 70_000, covering).unwrap();
        let mut bad = covering.to_vec();
        bad[BLOCK_BYTES + 1] ^= 0x10;
        match verify_range(&stored, total, BLOCK_BYTES as u64 + 3, 70_000, &bad) {
            Err(ChecksumError::Mismatch { block_index: 2, .. }) => {}
            other => panic!("expected a mismatch in block 2, got {other:?}"),
        }
        assert!(matches!(
            verify_range(&stored, total, total, 1, &[]),
            Err(ChecksumError::OutOfRange { .. })
        ));
        assert!(matches!(
            verify_range(&stored, total, 0, 10, &data[..10]),
            Err(ChecksumError::WrongLength { .. })
        ));
    }
}
