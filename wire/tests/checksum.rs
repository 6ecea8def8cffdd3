//! CRC32C block math cross-checked against the `crc32c` crate.

use proptest::prelude::*;
use ringfs_wire::checksum::*;

fn reference_blocks(data: &[u8]) -> Vec<u32> {
    data.chunks(BLOCK_BYTES).map(crc32c::crc32c).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn crc_matches_reference(data in prop::collection::vec(any::<u8>(), 0..10_000)) {
        prop_assert_eq!(crc32c(&data), crc32c::crc32c(&data));
    }

    #[test]
    fn extend_matches_reference(a in prop::collection::vec(any::<u8>(), 0..5000),
                                b in prop::collection::vec(any::<u8>(), 0..5000)) {
        let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
        prop_assert_eq!(crc32c_extend(crc32c(&a), &b), crc32c::crc32c(&whole));
        prop_assert_eq!(crc32c_extend(crc32c::crc32c(&a), &b), crc32c::crc32c_append(crc32c::crc32c(&a), &b));
    }

    #[test]
    fn block_checksums_match_reference(len in 0usize..(3 * BLOCK_BYTES + 10), seed: u8) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        prop_assert_eq!(block_checksums(&data), reference_blocks(&data));
        prop_assert_eq!(block_count(len as u64), reference_blocks(&data).len() as u64);
    }

    /// Appends in arbitrary pieces give the same checksums as hashing the whole.
    #[test]
    fn appends_extend_block_checksums(pieces in prop::collection::vec(0usize..100_000, 1..6), seed: u8) {
        let total: usize = pieces.iter().sum();
        let data: Vec<u8> = (0..total).map(|i| (i as u8) ^ seed ^ (i >> 9) as u8).collect();
        let mut crcs = Vec::new();
        let mut len = 0usize;
        for piece in pieces {
            extend_block_checksums(&mut crcs, len as u64, &data[len..len + piece]).unwrap();
            len += piece;
            prop_assert_eq!(&crcs, &reference_blocks(&data[..len]));
        }
    }

    /// Any range verifies on intact data and fails on a flipped byte inside its blocks.
    #[test]
    fn verify_range_detects_flips(total in 1usize..(4 * BLOCK_BYTES), a: u64, b: u64, flip: u64) {
        let data: Vec<u8> = (0..total).map(|i| (i * 13 + 7) as u8).collect();
        let stored = reference_blocks(&data);
        let total = total as u64;
        let offset = a % total;
        let len = b % (total - offset + 1);
        let range = block_aligned_range(offset, len, total);
        let covering = &data[range.start as usize..range.end as usize];
        prop_assert!(verify_range(&stored, total, offset, len, covering).is_ok());
        if !covering.is_empty() {
            let mut bad = covering.to_vec();
            let at = (flip % bad.len() as u64) as usize;
            bad[at] ^= 0x01;
            let is_mismatch = matches!(
                verify_range(&stored, total, offset, len, &bad),
                Err(ChecksumError::Mismatch { .. })
            );
            prop_assert!(is_mismatch);
        }
    }
}

#[test]
fn extend_refuses_an_inconsistent_vector() {
    let mut crcs = vec![1, 2];
    assert!(matches!(
        extend_block_checksums(&mut crcs, 10, b"x"),
        Err(ChecksumError::CountMismatch {
            needed: 1,
            given: 2
        })
    ));
}

#[test]
fn verify_blocks_counts_pieces() {
    let data = vec![0u8; BLOCK_BYTES + 1];
    assert!(matches!(
        verify_blocks(&data, &[crc32c(&data[..BLOCK_BYTES])], 0),
        Err(ChecksumError::CountMismatch {
            needed: 2,
            given: 1
        })
    ));
    assert!(verify_blocks(&data, &block_checksums(&data), 0).is_ok());
}
