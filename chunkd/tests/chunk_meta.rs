//! Chunk meta file format: round trips, the log scan's torn-tail rules,
//! every rejection path, and replay (docs/design/006-chunk-meta-file.md).

use std::path::PathBuf;

use chunkd::meta::*;
use proptest::prelude::*;
use ringfs_wire::checksum::{BLOCK_BYTES, block_count, blocks_covering, crc32c, crc32c_extend};

const BLOCK: u64 = BLOCK_BYTES as u64;
const MIB: u64 = 1 << 20;

fn base(chunk_size_bytes: u64, log_bytes: u32, length_bytes: u64) -> MetaBase {
    MetaBase {
        handle: 0x0102_0304_0506_0708,
        chunk_size_bytes,
        data_file_id: 0x1111,
        version: 7,
        length_bytes,
        state: ChunkState::Ok,
        base_seq: 10,
        log_bytes,
        crcs: (0..block_count(length_bytes))
            .map(|b| 0xc0de_0000 + b as u32)
            .collect(),
    }
}

fn write(
    seq: u64,
    offset: u64,
    length: u64,
    new_length: u64,
    first_block: u32,
    crcs: &[u32],
) -> LogRecord {
    LogRecord::Write {
        seq,
        version: 7,
        offset,
        length,
        new_length,
        first_block,
        crcs: crcs.to_vec(),
    }
}

/// The whole file: base, then `batches` with seqs 1, 2, ..., then zeros.
fn file(base: &MetaBase, batches: &[Vec<LogRecord>]) -> Vec<u8> {
    let layout = base.layout();
    let mut bytes = base.encode().unwrap();
    for (i, records) in batches.iter().enumerate() {
        encode_batch(i as u64 + 1, records, &mut bytes);
    }
    assert!(
        bytes.len() as u64 <= layout.file_bytes,
        "test batches overflow the log"
    );
    bytes.resize(layout.file_bytes as usize, 0);
    bytes
}

fn scan(bytes: &[u8]) -> Result<LogScan, MetaError> {
    let layout = MetaBase::decode(bytes)?.layout();
    scan_log(&layout, &bytes[layout.log_offset as usize..])
}

/// Re-seals the header CRC after a test edits a field, so the edit reaches
/// the check it aims at.
fn reseal_header(bytes: &mut [u8]) {
    let crc = crc32c(&bytes[..80]);
    bytes[80..84].copy_from_slice(&crc.to_le_bytes());
}

fn reseal_table(bytes: &mut [u8], layout: &MetaLayout) {
    let t = layout.table_offset as usize;
    let crc = crc32c(&bytes[t..t + 4 * layout.block_count as usize]);
    bytes[76..80].copy_from_slice(&crc.to_le_bytes());
    reseal_header(bytes);
}

/// Re-seals the CRC of the batch at `at` (an offset in the file).
fn reseal_batch(bytes: &mut [u8], at: usize) {
    let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    let b = &bytes[at..at + len];
    let crc = crc32c_extend(crc32c(&b[..20]), &b[24..]);
    bytes[at + 20..at + 24].copy_from_slice(&crc.to_le_bytes());
}

// ---------------------------------------------------------------- base

#[test]
fn header_layout_is_fixed_little_endian() {
    let b = base(MIB, 8192, 70_000);
    let bytes = b.encode().unwrap();
    assert_eq!(bytes.len(), 8192, "header page + one table page");
    assert_eq!(&bytes[0..8], b"RGFSCHNK");
    assert_eq!(&bytes[8..10], &1u16.to_le_bytes());
    assert_eq!(&bytes[10..12], &[0, 0]);
    assert_eq!(&bytes[12..16], &65536u32.to_le_bytes());
    assert_eq!(&bytes[16..24], &b.handle.to_le_bytes());
    assert_eq!(&bytes[24..32], &MIB.to_le_bytes());
    assert_eq!(&bytes[32..40], &0x1111u64.to_le_bytes());
    assert_eq!(&bytes[40..48], &7u64.to_le_bytes());
    assert_eq!(&bytes[48..56], &70_000u64.to_le_bytes());
    assert_eq!(bytes[56], 0);
    assert_eq!(&bytes[64..72], &10u64.to_le_bytes());
    assert_eq!(&bytes[72..76], &8192u32.to_le_bytes());
    assert_eq!(
        &bytes[76..80],
        &crc32c(&bytes[4096..4096 + 64]).to_le_bytes()
    );
    assert_eq!(&bytes[80..84], &crc32c(&bytes[..80]).to_le_bytes());
    assert!(bytes[84..4096].iter().all(|&x| x == 0));
    assert_eq!(&bytes[4096..4100], &0xc0de_0000u32.to_le_bytes());
    assert_eq!(&bytes[4100..4104], &0xc0de_0001u32.to_le_bytes());
    assert!(
        bytes[4104..].iter().all(|&x| x == 0),
        "blocks past length have no CRC"
    );
    for (state, n) in [
        (ChunkState::Ok, 0),
        (ChunkState::Corrupt, 1),
        (ChunkState::Stale, 2),
        (ChunkState::Incomplete, 3),
    ] {
        assert_eq!(state.to_u8(), n);
        assert_eq!(ChunkState::from_u8(n), Some(state));
    }
    assert_eq!(ChunkState::from_u8(4), None);
}

fn arb_state() -> impl Strategy<Value = ChunkState> {
    prop_oneof![
        Just(ChunkState::Ok),
        Just(ChunkState::Corrupt),
        Just(ChunkState::Stale),
        Just(ChunkState::Incomplete),
    ]
}

fn arb_base() -> impl Strategy<Value = MetaBase> {
    (1u64..=64, 1u32..=16)
        .prop_flat_map(|(blocks, log_pages)| {
            let chunk = blocks * BLOCK;
            (Just(chunk), Just(log_pages * 4096), 0..=chunk)
        })
        .prop_flat_map(|(chunk, log_bytes, length)| {
            (
                any::<u64>(),
                1u64..,
                any::<u64>(),
                arb_state(),
                any::<u64>(),
                prop::collection::vec(any::<u32>(), block_count(length) as usize),
            )
                .prop_map(
                    move |(handle, data_file_id, version, state, base_seq, crcs)| MetaBase {
                        handle,
                        chunk_size_bytes: chunk,
                        data_file_id,
                        version,
                        length_bytes: length,
                        state,
                        base_seq,
                        log_bytes,
                        crcs,
                    },
                )
        })
}

proptest! {
    #[test]
    fn base_round_trips(b in arb_base()) {
        let bytes = b.encode().unwrap();
        prop_assert_eq!(bytes.len() as u64, b.layout().log_offset);
        let decoded = MetaBase::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &b);
        prop_assert_eq!(decoded.encode().unwrap(), bytes);
    }

    #[test]
    fn any_bit_flip_in_the_header_or_table_is_refused(bit in 0usize..(4096 + 64) * 8) {
        let mut bytes = base(MIB, 4096, 3 * BLOCK + 5).encode().unwrap();
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(MetaBase::decode(&bytes).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..9000)) {
        decode_scan_replay(&bytes);
    }

    /// A valid file with a few bytes overwritten, and its CRCs re-sealed
    /// or not, so that damage reaches the field and record checks.
    #[test]
    fn damaged_files_never_panic(
        edits in prop::collection::vec((0usize..16384, any::<u8>()), 1..8),
        reseal in any::<bool>(),
    ) {
        let mut bytes = fuzz_seeds()[1].clone();
        for (at, value) in edits {
            bytes[at] = value;
        }
        if reseal {
            reseal_header(&mut bytes);
            let mut at = 8192;
            while let Some(len) = bytes.get(at + 4..at + 8) {
                let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
                if len < 4096 || !len.is_multiple_of(4096) || at + len > bytes.len() {
                    break;
                }
                reseal_batch(&mut bytes, at);
                at += len;
            }
        }
        decode_scan_replay(&bytes);
    }
}

/// Everything recovery does with a file's bytes; returns whether all of it
/// accepted them.
fn decode_scan_replay(bytes: &[u8]) -> bool {
    if let Ok(b) = MetaBase::decode(bytes)
        && let layout = b.layout()
        && let Some(log) = bytes.get(layout.log_offset as usize..layout.file_bytes as usize)
        && let Ok(scan) = scan_log(&layout, log)
    {
        return replay(&b, &scan.records).is_ok();
    }
    false
}

#[test]
fn a_base_decodes_from_the_whole_file() {
    let b = base(MIB, 8192, 0);
    let bytes = file(&b, &[vec![LogRecord::Durable { seq: 10 }]]);
    assert_eq!(MetaBase::decode(&bytes).unwrap(), b);
}

#[test]
fn encode_refuses_an_inconsistent_base() {
    let mut b = base(MIB, 4096, BLOCK + 1);
    b.crcs.pop();
    assert_eq!(
        b.encode(),
        Err(MetaError::CrcCount {
            length_bytes: BLOCK + 1,
            expected: 2,
            got: 1
        })
    );
    let mut b = base(MIB, 4096, 0);
    b.data_file_id = 0;
    assert_eq!(b.encode(), Err(MetaError::ZeroDataFileId));
    let mut b = base(MIB, 4096, 0);
    b.length_bytes = MIB + 1;
    b.crcs = vec![0; 17];
    assert!(matches!(
        b.encode(),
        Err(MetaError::LengthBeyondChunk { .. })
    ));
    let b = base(MIB + 1, 4096, 0);
    assert_eq!(b.encode(), Err(MetaError::ChunkSize(MIB + 1)));
    let b = base(MIB, 100, 0);
    assert_eq!(b.encode(), Err(MetaError::LogBytes(100)));
}

#[test]
fn header_damage_each_gives_its_error() {
    let b = base(MIB, 4096, 3 * BLOCK + 5);
    let good = b.encode().unwrap();
    let layout = b.layout();
    let decode = MetaBase::decode;
    let edited = |at: usize, value: &[u8]| {
        let mut x = good.clone();
        x[at..at + value.len()].copy_from_slice(value);
        reseal_header(&mut x);
        decode(&x)
    };

    assert_eq!(
        decode(&good[..4095]),
        Err(MetaError::TooShort {
            needed: 4096,
            got: 4095
        })
    );
    assert_eq!(
        decode(&good[..8191]),
        Err(MetaError::TooShort {
            needed: 8192,
            got: 8191
        })
    );
    assert_eq!(
        decode(&[]),
        Err(MetaError::TooShort {
            needed: 4096,
            got: 0
        })
    );

    let mut x = good.clone();
    x[0] = b'X';
    assert!(matches!(decode(&x), Err(MetaError::BadMagic(_))));
    assert!(
        matches!(decode(&vec![0; 8192]), Err(MetaError::BadMagic(_))),
        "a zeroed file"
    );

    let mut x = good.clone();
    x[50] ^= 0x04;
    assert!(matches!(decode(&x), Err(MetaError::BadHeaderCrc { .. })));
    let mut x = good.clone();
    x[81] ^= 0x01;
    assert!(
        matches!(decode(&x), Err(MetaError::BadHeaderCrc { .. })),
        "the CRC itself"
    );

    assert_eq!(
        edited(8, &2u16.to_le_bytes()),
        Err(MetaError::UnsupportedVersion(2))
    );
    assert_eq!(
        edited(12, &4096u32.to_le_bytes()),
        Err(MetaError::BlockBytes(4096))
    );
    for size in [0, BLOCK + 1, 2 << 30] {
        assert_eq!(
            edited(24, &u64::to_le_bytes(size)),
            Err(MetaError::ChunkSize(size))
        );
    }
    for log in [0u32, 4095, 32 << 20] {
        assert_eq!(
            edited(72, &log.to_le_bytes()),
            Err(MetaError::LogBytes(log))
        );
    }
    assert_eq!(edited(56, &[4]), Err(MetaError::UnknownState(4)));
    assert_eq!(
        edited(48, &(MIB + 1).to_le_bytes()),
        Err(MetaError::LengthBeyondChunk {
            length_bytes: MIB + 1,
            chunk_size_bytes: MIB
        })
    );
    assert_eq!(
        edited(32, &0u64.to_le_bytes()),
        Err(MetaError::ZeroDataFileId)
    );
    for at in [10usize, 11, 57, 63, 84, 100, 4095] {
        assert_eq!(
            edited(at, &[0x20]),
            Err(MetaError::ReservedNotZero {
                offset: at,
                value: 0x20
            }),
            "byte {at}"
        );
    }

    // A smaller chunk size in the header moves nothing; the table CRC then
    // covers fewer entries and no longer matches.
    assert!(matches!(
        edited(24, &(8 * BLOCK).to_le_bytes()),
        Err(MetaError::BadTableCrc { .. })
    ));

    // The table.
    let t = layout.table_offset as usize;
    let mut x = good.clone();
    x[t + 5] ^= 0x80;
    assert!(matches!(decode(&x), Err(MetaError::BadTableCrc { .. })));
    let mut x = good.clone();
    x[t + 4 * 9..t + 4 * 10].copy_from_slice(&0xabcdu32.to_le_bytes());
    reseal_table(&mut x, &layout);
    assert_eq!(
        decode(&x),
        Err(MetaError::CrcBeyondLength {
            block: 9,
            crc: 0xabcd,
            length_bytes: 3 * BLOCK + 5
        })
    );
    let mut x = good.clone();
    x[t + 64 + 3] = 1;
    assert_eq!(
        decode(&x),
        Err(MetaError::TablePaddingNotZero {
            offset: (t + 67) as u64,
            value: 1
        })
    );
    let mut x = good.clone();
    x[8191] = 9;
    assert_eq!(
        decode(&x),
        Err(MetaError::TablePaddingNotZero {
            offset: 8191,
            value: 9
        })
    );

    let err = edited(56, &[4]).unwrap_err().to_string();
    assert!(err.contains("state 4"), "{err}");
}

// ---------------------------------------------------------------- log scan

#[test]
fn batch_layout_is_fixed_little_endian() {
    let records = [
        LogRecord::Durable { seq: 3 },
        write(11, 5, 6, 11, 0, &[0xaabb_ccdd]),
    ];
    let mut out = vec![0xee; 3]; // encode_batch appends
    encode_batch(9, &records, &mut out);
    let b = &out[3..];
    assert_eq!(b.len(), 4096);
    assert_eq!(encoded_batch_bytes(&records), 4096);
    assert_eq!(&b[0..4], b"RGLB");
    assert_eq!(&b[4..8], &4096u32.to_le_bytes());
    assert_eq!(&b[8..16], &9u64.to_le_bytes());
    assert_eq!(&b[16..20], &2u32.to_le_bytes());
    assert_eq!(
        &b[20..24],
        &crc32c_extend(crc32c(&b[..20]), &b[24..]).to_le_bytes()
    );
    // Durable: kind 2, body 8.
    assert_eq!(&b[24..32], &[2, 0, 0, 0, 8, 0, 0, 0]);
    assert_eq!(&b[32..40], &3u64.to_le_bytes());
    // Write: kind 1, body 48 + 4 CRC bytes padded to 56.
    assert_eq!(&b[40..48], &[1, 0, 0, 0, 56, 0, 0, 0]);
    let fields: Vec<u64> = b[48..88]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(fields, [11, 7, 5, 6, 11]);
    assert_eq!(&b[88..92], &0u32.to_le_bytes());
    assert_eq!(&b[92..96], &1u32.to_le_bytes());
    assert_eq!(&b[96..100], &0xaabb_ccddu32.to_le_bytes());
    assert!(b[100..].iter().all(|&x| x == 0));

    let big: Vec<LogRecord> = (0..300).map(|s| LogRecord::Durable { seq: s }).collect();
    assert_eq!(
        encoded_batch_bytes(&big),
        8192,
        "24 + 300 * 16 bytes: two pages"
    );
}

#[test]
fn empty_and_full_logs() {
    let b = base(MIB, 8192, 0);
    let s = scan(&file(&b, &[])).unwrap();
    assert_eq!(
        s,
        LogScan {
            records: vec![],
            next_batch_seq: 1,
            end_offset: 0,
            batches: 0,
            tail_zeroed: true
        }
    );
    let one = vec![LogRecord::Version { version: 8 }];
    let s = scan(&file(&b, &[one.clone(), one.clone()])).unwrap();
    assert_eq!((s.batches, s.next_batch_seq, s.end_offset), (2, 3, 8192));
    assert!(s.tail_zeroed);
    assert_eq!(s.records, [one.clone(), one].concat());

    let layout = b.layout();
    assert_eq!(
        scan_log(&layout, &[0; 4096]),
        Err(MetaError::LogRegionLength {
            expected: 8192,
            got: 4096
        })
    );
}

/// Three one-page batches; returns the file and the file offset of batch 2.
fn three_batches() -> (Vec<u8>, usize) {
    let b = base(MIB, 5 * 4096, 0);
    let bytes = file(
        &b,
        &[
            vec![write(11, 0, 10, 10, 0, &[1])],
            vec![
                LogRecord::Durable { seq: 11 },
                write(12, 10, 10, 20, 0, &[2]),
            ],
            vec![LogRecord::Durable { seq: 12 }],
        ],
    );
    (bytes, b.layout().log_offset as usize + 4096)
}

#[test]
fn scan_reads_every_intact_batch() {
    let (bytes, _) = three_batches();
    let s = scan(&bytes).unwrap();
    assert_eq!(
        (s.batches, s.next_batch_seq, s.end_offset, s.tail_zeroed),
        (3, 4, 3 * 4096, true)
    );
    assert_eq!(s.records.len(), 4);
}

#[test]
fn scan_stops_at_a_torn_or_foreign_batch() {
    let (good, second) = three_batches();
    let after_first = |bytes: &[u8]| {
        let s = scan(bytes).unwrap();
        assert_eq!((s.batches, s.next_batch_seq, s.end_offset), (1, 2, 4096));
        assert_eq!(s.records, [write(11, 0, 10, 10, 0, &[1])]);
        assert!(!s.tail_zeroed, "leftovers of batches 2 and 3 remain");
    };

    // A page never written (or zeroed): no magic.
    let mut x = good.clone();
    x[second..second + 4096].fill(0);
    after_first(&x);
    // One flipped bit anywhere in the batch, header or records or padding.
    for at in [0, 5, 9, 17, 21, 30, 60, 4000] {
        let mut x = good.clone();
        x[second + at] ^= 0x10;
        after_first(&x);
    }
    // A batch seq that does not follow (a leftover of another sequence).
    let mut x = good.clone();
    x[second + 8..second + 16].copy_from_slice(&5u64.to_le_bytes());
    reseal_batch(&mut x, second);
    after_first(&x);
    // batch_bytes out of range, even with a sealed CRC where one can be computed.
    for size in [0u32, 4095, 4097, 4 * 4096 + 4096] {
        let mut x = good.clone();
        x[second + 4..second + 8].copy_from_slice(&size.to_le_bytes());
        after_first(&x);
    }
}

#[test]
fn scan_stops_at_a_batch_torn_between_its_pages() {
    let b = base(MIB, 4 * 4096, 0);
    let many: Vec<LogRecord> = (0..300).map(|_| LogRecord::Durable { seq: 10 }).collect();
    let bytes = file(&b, &[vec![LogRecord::Version { version: 7 }], many]);
    let s = scan(&bytes).unwrap();
    assert_eq!((s.batches, s.end_offset), (2, 3 * 4096));
    // Power loss wrote the batch's first page but not its second.
    let mut x = bytes.clone();
    let second_page = b.layout().log_offset as usize + 2 * 4096;
    x[second_page..second_page + 4096].fill(0);
    let s = scan(&x).unwrap();
    assert_eq!((s.batches, s.end_offset, s.tail_zeroed), (1, 4096, false));
    // Or the second but not the first.
    let mut x = bytes;
    x[second_page - 4096..second_page].fill(0);
    let s = scan(&x).unwrap();
    assert_eq!((s.batches, s.end_offset, s.tail_zeroed), (1, 4096, false));
}

/// A batch with a valid CRC and these bytes at record offset 24 onwards.
fn sealed_batch(record_count: u32, records: &[u8]) -> Vec<u8> {
    let b = base(MIB, 8192, 0);
    let mut bytes = file(&b, &[]);
    let at = b.layout().log_offset as usize;
    bytes[at..at + 4].copy_from_slice(b"RGLB");
    bytes[at + 4..at + 8].copy_from_slice(&4096u32.to_le_bytes());
    bytes[at + 8..at + 16].copy_from_slice(&1u64.to_le_bytes());
    bytes[at + 16..at + 20].copy_from_slice(&record_count.to_le_bytes());
    bytes[at + 24..at + 24 + records.len()].copy_from_slice(records);
    reseal_batch(&mut bytes, at);
    bytes
}

fn record_error(bytes: &[u8]) -> RecordError {
    match scan(bytes) {
        Err(MetaError::Record {
            batch_seq: 1,
            problem,
            ..
        }) => problem,
        other => panic!("expected a record error, got {other:?}"),
    }
}

#[test]
fn malformed_records_under_a_valid_crc_are_errors() {
    let durable = |kind: u8, body: u32| {
        let mut r = vec![kind, 0, 0, 0];
        r.extend_from_slice(&body.to_le_bytes());
        r.extend_from_slice(&[0; 8]);
        r
    };
    scan(&sealed_batch(1, &durable(2, 8))).unwrap();

    assert_eq!(
        record_error(&sealed_batch(1, &durable(9, 8))),
        RecordError::UnknownKind(9)
    );
    assert_eq!(
        record_error(&sealed_batch(1, &durable(0, 0))),
        RecordError::UnknownKind(0)
    );
    let mut r = durable(2, 8);
    r[2] = 1;
    assert_eq!(
        record_error(&sealed_batch(1, &r)),
        RecordError::ReservedNotZero
    );
    assert_eq!(
        record_error(&sealed_batch(1, &durable(2, 16))),
        RecordError::BodyBytes {
            kind: 2,
            body_bytes: 16,
            expected: 8
        }
    );
    assert_eq!(
        record_error(&sealed_batch(1, &durable(3, 4))),
        RecordError::BodyBytes {
            kind: 3,
            body_bytes: 4,
            expected: 8
        }
    );
    assert_eq!(
        record_error(&sealed_batch(1, &durable(2, 5000))),
        RecordError::Overrun {
            needed: 5008,
            left: 4096 - 24
        }
    );
    // More records announced than present: the zero padding reads as kind 0.
    let mut two = durable(2, 8);
    two.extend(durable(2, 8));
    let err = scan(&sealed_batch(3, &two)).unwrap_err();
    assert_eq!(
        err,
        MetaError::Record {
            batch_seq: 1,
            index: 2,
            problem: RecordError::UnknownKind(0)
        }
    );
    assert!(err.to_string().contains("cannot be trusted"), "{err}");
    // Fewer announced than present: the rest is not padding.
    assert_eq!(
        scan(&sealed_batch(1, &two)),
        Err(MetaError::BatchPaddingNotZero {
            batch_seq: 1,
            offset: 40,
            value: 2
        })
    );
    // The last 8 bytes of the batch: a header with no room for the body.
    let mut fill = Vec::new();
    for _ in 0..(4096 - 24 - 8) / 16 {
        fill.extend(durable(2, 8));
    }
    fill.extend(&durable(2, 8)[..8]);
    assert_eq!(
        record_error(&sealed_batch(255, &fill)),
        RecordError::Overrun {
            needed: 16,
            left: 8
        }
    );

    // State: a known value and zero padding.
    let mut s = durable(4, 8);
    s[8] = 7;
    assert_eq!(
        record_error(&sealed_batch(1, &s)),
        RecordError::UnknownState(7)
    );
    let mut s = durable(4, 8);
    s[8] = 2;
    s[12] = 1;
    assert_eq!(
        record_error(&sealed_batch(1, &s)),
        RecordError::PaddingNotZero
    );
    let mut s = durable(4, 8);
    s[8] = 2;
    assert_eq!(
        scan(&sealed_batch(1, &s)).unwrap().records,
        [LogRecord::State {
            state: ChunkState::Stale
        }]
    );

    // Write: body size must match crc_count, padding must be zero.
    let mut w = Vec::new();
    encode_batch(1, &[write(11, 0, 1, 1, 0, &[5])], &mut w);
    let w = w[24..24 + 64].to_vec();
    scan(&sealed_batch(1, &w)).unwrap();
    let mut x = w.clone();
    x[60] = 1; // padding after the single CRC
    assert_eq!(
        record_error(&sealed_batch(1, &x)),
        RecordError::PaddingNotZero
    );
    let mut x = w.clone();
    // crc_count 2 fits the same 56-byte body: the padding reads as a CRC,
    // and the rules catch a CRC past the Write's new length.
    x[8 + 44..8 + 48].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(
        record_error(&sealed_batch(1, &x)),
        RecordError::CrcBlocksBeyondLength {
            first_block: 0,
            crc_count: 2,
            new_length: 1
        }
    );
    let mut x = w.clone();
    x[8 + 44..8 + 48].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(
        record_error(&sealed_batch(1, &x)),
        RecordError::BodyBytes {
            kind: 1,
            body_bytes: 56,
            expected: 64
        }
    );
    let mut x = w.clone();
    x[8 + 44..8 + 48].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        record_error(&sealed_batch(1, &x)),
        RecordError::BodyBytes {
            kind: 1,
            body_bytes: 56,
            expected: 48 + 4 * u64::from(u32::MAX) + 4
        }
    );
    let mut x = w.clone();
    x[4..8].copy_from_slice(&40u32.to_le_bytes());
    assert_eq!(
        record_error(&sealed_batch(1, &x[..48])),
        RecordError::BodyBytes {
            kind: 1,
            body_bytes: 40,
            expected: 48
        }
    );
}

#[test]
fn write_rules_are_checked_when_scanning() {
    let chunk = MIB;
    let cases: [(LogRecord, RecordError); 7] = [
        (write(11, 0, 1, 1, 0, &[]), RecordError::NoCrcs),
        (
            write(11, chunk - 1, 2, chunk, 15, &[1]),
            RecordError::WriteBeyondChunk {
                offset: chunk - 1,
                length: 2,
                chunk_size_bytes: chunk,
            },
        ),
        (
            write(11, u64::MAX, 2, chunk, 15, &[1]),
            RecordError::WriteBeyondChunk {
                offset: u64::MAX,
                length: 2,
                chunk_size_bytes: chunk,
            },
        ),
        (
            write(11, 0, 1, chunk + 1, 0, &[1]),
            RecordError::NewLengthBeyondChunk {
                new_length: chunk + 1,
                chunk_size_bytes: chunk,
            },
        ),
        (
            write(11, 10, 10, 15, 0, &[1]),
            RecordError::WriteBeyondNewLength {
                end: 20,
                new_length: 15,
            },
        ),
        (
            write(11, 0, 10, 10, 0, &[1, 2]),
            RecordError::CrcBlocksBeyondLength {
                first_block: 0,
                crc_count: 2,
                new_length: 10,
            },
        ),
        (
            write(11, BLOCK - 1, 2, BLOCK + 1, 1, &[1]),
            RecordError::NotCovered {
                start: BLOCK - 1,
                end: BLOCK + 1,
                first_block: 1,
                crc_count: 1,
            },
        ),
    ];
    let b = base(chunk, 8192, 0);
    for (record, problem) in cases {
        assert_eq!(
            record.check(&b.layout()),
            Err(problem.clone()),
            "{record:?}"
        );
        let bytes = file(&b, &[vec![LogRecord::Durable { seq: 10 }, record]]);
        assert_eq!(
            scan(&bytes),
            Err(MetaError::Record {
                batch_seq: 1,
                index: 1,
                problem
            })
        );
    }
    // The padding of a full chunk: offset = old length, length to the end.
    let pad = write(11, 100, chunk - 100, chunk, 0, &[9; 16]);
    assert_eq!(pad.check(&b.layout()), Ok(()));
}

// ---------------------------------------------------------------- replay

/// A Write of `[offset, offset + length)` on a chunk of `old_length`, as
/// the chunkserver logs it: CRCs for every changed block, derived from seq.
fn write_on(seq: u64, old_length: u64, offset: u64, length: u64) -> LogRecord {
    let end = offset + length;
    let new_length = old_length.max(end);
    let start = if end > old_length {
        offset.min(old_length)
    } else {
        offset
    };
    let blocks = blocks_covering(start, end - start);
    LogRecord::Write {
        seq,
        version: 7,
        offset,
        length,
        new_length,
        first_block: blocks.start as u32,
        crcs: blocks.map(|b| ((seq << 16) | b) as u32).collect(),
    }
}

#[test]
fn unsettled_blocks_are_those_of_writes_above_durable() {
    let b = base(MIB, 8192, 5 * BLOCK);
    // Writes 11..=15 each rewrite one whole block: seq 11 block 0, ... 15 block 4.
    let mut records: Vec<LogRecord> = (0..5)
        .map(|i| write_on(11 + i, 5 * BLOCK, i * BLOCK, BLOCK))
        .collect();
    records.push(LogRecord::Durable { seq: 13 });
    let r = replay(&b, &records).unwrap();
    assert_eq!(
        (r.last_seq, r.durable_seq, r.length_bytes),
        (15, 13, 5 * BLOCK)
    );
    assert_eq!(r.unsettled_blocks, [3, 4]);
    assert_eq!(r.crcs[0], 11 << 16);
    assert_eq!(r.crcs[4], (15 << 16) | 4);

    // Block 1 rewritten by 16 becomes unsettled again; block 3 rewritten by
    // 16 stays unsettled; a later Durable settles everything.
    records.push(write_on(16, 5 * BLOCK, BLOCK, 3 * BLOCK));
    let r = replay(&b, &records).unwrap();
    assert_eq!(r.unsettled_blocks, [1, 2, 3, 4]);
    records.push(LogRecord::Durable { seq: 16 });
    let r = replay(&b, &records).unwrap();
    assert_eq!((r.durable_seq, r.unsettled_blocks.len()), (16, 0));
    // A lower Durable after a higher one changes nothing.
    records.push(LogRecord::Durable { seq: 12 });
    assert_eq!(replay(&b, &records).unwrap().durable_seq, 16);
}

#[test]
fn intent_records_are_fixed_little_endian() {
    let mut out = Vec::new();
    encode_batch(
        1,
        &[
            LogRecord::Intent {
                first_block: 0x0102_0304,
                block_count: 0x0506_0708,
            },
            LogRecord::IntentsClosed,
        ],
        &mut out,
    );
    assert_eq!(
        &out[24..56],
        &[
            5, 0, 0, 0, 8, 0, 0, 0, 4, 3, 2, 1, 8, 7, 6, 5, // Intent
            6, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // IntentsClosed
        ]
    );
}

#[test]
fn malformed_intents_are_errors() {
    let record = |kind: u8, body: [u8; 8]| {
        let mut r = vec![kind, 0, 0, 0, 8, 0, 0, 0];
        r.extend_from_slice(&body);
        r
    };
    let intent = |first: u32, count: u32| {
        let mut body = [0; 8];
        body[..4].copy_from_slice(&first.to_le_bytes());
        body[4..].copy_from_slice(&count.to_le_bytes());
        record(5, body)
    };
    // The test file's chunk is 1 MiB: 16 blocks.
    scan(&sealed_batch(1, &intent(0, 16))).unwrap();
    scan(&sealed_batch(1, &intent(15, 1))).unwrap();
    for (first, count) in [(0, 0), (0, 17), (16, 1), (u32::MAX, 2)] {
        assert_eq!(
            record_error(&sealed_batch(1, &intent(first, count))),
            RecordError::IntentBeyondChunk {
                first_block: first,
                block_count: count,
                chunk_blocks: 16
            }
        );
    }
    scan(&sealed_batch(1, &record(6, [0; 8]))).unwrap();
    assert_eq!(
        record_error(&sealed_batch(1, &record(6, [0, 0, 0, 0, 0, 0, 0, 1]))),
        RecordError::PaddingNotZero
    );
    let mut short = intent(0, 1);
    short[4] = 0;
    assert_eq!(
        record_error(&sealed_batch(1, &short[..8])),
        RecordError::BodyBytes {
            kind: 5,
            body_bytes: 0,
            expected: 8
        }
    );
}

#[test]
fn open_intents_unsettle_their_blocks_until_closed() {
    // 16 blocks; 5 written.
    let b = base(MIB, 8192, 5 * BLOCK);
    let intent = |first_block, block_count| LogRecord::Intent {
        first_block,
        block_count,
    };
    let mut records = vec![intent(3, 6), write_on(11, 5 * BLOCK, 0, BLOCK)];
    records.push(LogRecord::Durable { seq: 11 });
    let r = replay(&b, &records).unwrap();
    // Below the length the Intent's blocks are unsettled although every
    // Write is durable; past it they are listed for zeroing.
    assert_eq!(r.unsettled_blocks, [3, 4]);
    assert_eq!(r.open_intent_blocks, [3, 4, 5, 6, 7, 8]);
    // Intents add up.
    records.push(intent(0, 1));
    let r = replay(&b, &records).unwrap();
    assert_eq!(r.unsettled_blocks, [0, 3, 4]);
    assert_eq!(r.open_intent_blocks, [0, 3, 4, 5, 6, 7, 8]);
    // A close ends them all; a Write above Durable still unsettles its own.
    records.push(write_on(12, 5 * BLOCK, BLOCK, BLOCK));
    records.push(LogRecord::IntentsClosed);
    let r = replay(&b, &records).unwrap();
    assert_eq!(r.unsettled_blocks, [1]);
    assert!(r.open_intent_blocks.is_empty());
    // An Intent after the close is open again.
    records.push(intent(15, 1));
    let r = replay(&b, &records).unwrap();
    assert_eq!(
        (
            r.unsettled_blocks.as_slice(),
            r.open_intent_blocks.as_slice()
        ),
        (&[1][..], &[15][..])
    );
    // Intents change neither the length, the CRCs nor the seqs.
    assert_eq!(
        (r.length_bytes, r.last_seq, r.durable_seq),
        (5 * BLOCK, 12, 11)
    );
}

#[test]
fn base_blocks_are_settled_and_durable_starts_at_base_seq() {
    let b = base(MIB, 8192, 2 * BLOCK);
    let r = replay(&b, &[]).unwrap();
    assert_eq!(
        r,
        Replayed {
            version: 7,
            length_bytes: 2 * BLOCK,
            state: ChunkState::Ok,
            crcs: b.crcs.clone(),
            last_seq: 10,
            durable_seq: 10,
            unsettled_blocks: vec![],
            open_intent_blocks: vec![],
        }
    );
    let r = replay(&b, &[LogRecord::Durable { seq: 3 }]).unwrap();
    assert_eq!(r.durable_seq, 10);
}

#[test]
fn a_write_that_grows_the_length() {
    let b = base(MIB, 8192, 100);
    // Append 70 000 bytes at 100: block 0 (partial before) and block 1 (new).
    let w = write_on(11, 100, 100, 70_000);
    assert!(matches!(&w, LogRecord::Write { first_block: 0, crcs, .. } if crcs.len() == 2));
    let r = replay(&b, std::slice::from_ref(&w)).unwrap();
    assert_eq!(r.length_bytes, 70_100);
    assert_eq!(r.crcs, [11 << 16, (11 << 16) | 1]);
    assert_eq!(r.unsettled_blocks, [0, 1]);

    // Growth past a hole: writing at 3 blocks on a 100-byte chunk changes
    // blocks 0..4 (the partial block and the zero-filled ones).
    let w = write_on(11, 100, 3 * BLOCK, 10);
    let r = replay(&b, &[w, LogRecord::Durable { seq: 11 }]).unwrap();
    assert_eq!((r.length_bytes, r.crcs.len()), (3 * BLOCK + 10, 4));
    assert!(r.unsettled_blocks.is_empty());

    // A growing Write without the CRC of the old partial block is refused:
    // that block's CRC covers 100 bytes, and now must cover a whole block.
    let w = write(11, BLOCK, 10, BLOCK + 10, 1, &[1]);
    assert_eq!(w.check(&b.layout()), Ok(()));
    assert_eq!(
        replay(&b, &[w]),
        Err(MetaError::Replay {
            index: 0,
            problem: RecordError::NotCovered {
                start: 100,
                end: BLOCK + 10,
                first_block: 1,
                crc_count: 1
            }
        })
    );
}

#[test]
fn replay_refuses_out_of_order_history() {
    let b = base(MIB, 8192, BLOCK);
    let err = |records: &[LogRecord]| replay(&b, records).unwrap_err();
    assert_eq!(
        err(&[write_on(10, BLOCK, 0, 1)]),
        MetaError::Replay {
            index: 0,
            problem: RecordError::SeqNotIncreasing {
                seq: 10,
                previous: 10
            }
        }
    );
    assert_eq!(
        err(&[write_on(12, BLOCK, 0, 1), write_on(12, BLOCK, 0, 1)]),
        MetaError::Replay {
            index: 1,
            problem: RecordError::SeqNotIncreasing {
                seq: 12,
                previous: 12
            }
        }
    );
    assert_eq!(
        err(&[LogRecord::Version { version: 6 }]),
        MetaError::Replay {
            index: 0,
            problem: RecordError::VersionBackwards {
                version: 6,
                current: 7
            }
        }
    );
    let mut old = write_on(11, BLOCK, 0, 1);
    if let LogRecord::Write { version, .. } = &mut old {
        *version = 6;
    }
    assert_eq!(
        err(&[old]),
        MetaError::Replay {
            index: 0,
            problem: RecordError::VersionBackwards {
                version: 6,
                current: 7
            }
        }
    );
    assert_eq!(
        err(&[write_on(11, BLOCK, 0, 1), LogRecord::Durable { seq: 12 }]),
        MetaError::Replay {
            index: 1,
            problem: RecordError::DurableAhead {
                seq: 12,
                last_seq: 11
            }
        }
    );
    assert_eq!(
        err(&[write(11, 0, 1, BLOCK, 0, &[])]),
        MetaError::Replay {
            index: 0,
            problem: RecordError::NoCrcs
        }
    );
    let mut bad = b.clone();
    bad.crcs.clear();
    assert!(matches!(replay(&bad, &[]), Err(MetaError::CrcCount { .. })));
}

#[test]
fn version_and_state_records() {
    let b = base(MIB, 8192, 0);
    let r = replay(
        &b,
        &[
            LogRecord::Version { version: 7 },
            LogRecord::Version { version: 9 },
            LogRecord::State {
                state: ChunkState::Stale,
            },
            LogRecord::State {
                state: ChunkState::Corrupt,
            },
        ],
    )
    .unwrap();
    assert_eq!((r.version, r.state), (9, ChunkState::Corrupt));
}

/// One step of a chunk's history for the model test.
#[derive(Clone, Debug)]
enum Step {
    Write {
        offset: u64,
        length: u64,
    },
    Durable,
    Version,
    Intent {
        first_block: u32,
        block_count: u32,
    },
    CloseIntents,
    /// Ends the current batch.
    Flush,
}

fn arb_steps(chunk: u64) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        4 => (0..chunk, 1..=3 * BLOCK).prop_map(move |(offset, len)| Step::Write {
            offset,
            length: len.min(chunk - offset),
        }),
        1 => Just(Step::Durable),
        1 => Just(Step::Version),
        1 => (0..chunk / BLOCK, 1..=4u64).prop_map(move |(first, n)| Step::Intent {
            first_block: first as u32,
            block_count: n.min(chunk / BLOCK - first) as u32,
        }),
        1 => Just(Step::CloseIntents),
        2 => Just(Step::Flush),
    ];
    prop::collection::vec(step, 0..40)
}

proptest! {
    /// Records built as a chunkserver would, written as batches, scanned
    /// back and replayed, give the state a simple model predicts.
    #[test]
    fn log_round_trip_matches_a_model(
        (blocks, start_len_frac, steps) in (1u64..=24)
            .prop_flat_map(|b| (Just(b), 0u64..=100, arb_steps(b * BLOCK))),
    ) {
        let chunk = blocks * BLOCK;
        let start_len = chunk * start_len_frac / 100;
        let b = base(chunk, 64 * 4096, start_len);
        // Model: length, and per block its CRC and the seq that set it.
        let mut length = start_len;
        let mut blocks_model: Vec<(u32, u64)> = b.crcs.iter().map(|&c| (c, 0)).collect();
        let mut open_intent = vec![false; blocks as usize];
        let (mut seq, mut durable, mut version) = (b.base_seq, b.base_seq, b.version);
        let mut batches: Vec<Vec<LogRecord>> = vec![vec![]];
        for step in steps {
            let record = match step {
                Step::Write { offset, length: len } => {
                    seq += 1;
                    let mut r = write_on(seq, length, offset, len);
                    if let LogRecord::Write { new_length, first_block, crcs, version: v, .. } = &mut r {
                        *v = version;
                        length = *new_length;
                        blocks_model.resize(block_count(length) as usize, (0, 0));
                        for (i, &c) in crcs.iter().enumerate() {
                            blocks_model[*first_block as usize + i] = (c, seq);
                        }
                    }
                    r
                }
                Step::Durable => {
                    durable = seq;
                    LogRecord::Durable { seq }
                }
                Step::Version => {
                    version += 1;
                    LogRecord::Version { version }
                }
                Step::Intent { first_block, block_count } => {
                    for b in first_block..first_block + block_count {
                        open_intent[b as usize] = true;
                    }
                    LogRecord::Intent { first_block, block_count }
                }
                Step::CloseIntents => {
                    open_intent.fill(false);
                    LogRecord::IntentsClosed
                }
                Step::Flush => {
                    batches.push(vec![]);
                    continue;
                }
            };
            batches.last_mut().unwrap().push(record);
        }
        batches.retain(|batch| !batch.is_empty());
        let all: Vec<LogRecord> = batches.concat();
        prop_assume!(batches.iter().map(|b| encoded_batch_bytes(b)).sum::<usize>() <= 64 * 4096);

        let bytes = file(&b, &batches);
        let s = scan(&bytes).unwrap();
        prop_assert_eq!(&s.records, &all);
        prop_assert_eq!(s.batches, batches.len() as u64);
        prop_assert_eq!(s.next_batch_seq, batches.len() as u64 + 1);
        prop_assert!(s.tail_zeroed);
        let r = replay(&MetaBase::decode(&bytes).unwrap(), &s.records).unwrap();
        prop_assert_eq!(r.length_bytes, length);
        prop_assert_eq!(r.version, version);
        prop_assert_eq!(r.last_seq, seq);
        prop_assert_eq!(r.durable_seq, durable);
        prop_assert_eq!(&r.crcs, &blocks_model.iter().map(|&(c, _)| c).collect::<Vec<_>>());
        let unsettled: Vec<u32> = blocks_model
            .iter()
            .enumerate()
            .filter(|&(i, &(_, s))| s > durable || open_intent[i])
            .map(|(i, _)| i as u32)
            .collect();
        prop_assert_eq!(&r.unsettled_blocks, &unsettled);
        let open: Vec<u32> = (0..blocks as u32).filter(|&i| open_intent[i as usize]).collect();
        prop_assert_eq!(&r.open_intent_blocks, &open);

        // A crash tearing the last batch loses exactly that batch.
        if let Some(last) = batches.last() {
            let mut torn = bytes.clone();
            let end = b.layout().log_offset as usize + s.end_offset as usize;
            let at = end - encoded_batch_bytes(last) + 30;
            torn[at] ^= 1;
            let t = scan(&torn).unwrap();
            prop_assert_eq!(t.records.len(), all.len() - last.len());
            prop_assert_eq!(t.next_batch_seq, batches.len() as u64);
        }
    }
}

// ---------------------------------------------------------------- fuzz seeds

/// The seed inputs of the `chunk_meta` fuzz target: small valid files.
fn fuzz_seeds() -> Vec<Vec<u8>> {
    let empty = base(MIB, 4096, 0);
    let written = base(MIB, 8192, 3 * BLOCK + 17);
    let mut incomplete = base(2 * BLOCK, 4096, 0);
    incomplete.state = ChunkState::Incomplete;
    vec![
        file(&empty, &[]),
        file(
            &written,
            &[
                vec![write_on(11, 3 * BLOCK + 17, 3 * BLOCK + 17, 100)],
                vec![
                    LogRecord::Durable { seq: 11 },
                    write_on(12, 3 * BLOCK + 117, BLOCK, 2 * BLOCK),
                    LogRecord::Version { version: 8 },
                ],
            ],
        ),
        file(
            &written,
            &[
                vec![
                    LogRecord::Intent {
                        first_block: 3,
                        block_count: 13,
                    },
                    write_on(11, 3 * BLOCK + 17, 3 * BLOCK + 17, BLOCK),
                ],
                vec![
                    LogRecord::Durable { seq: 11 },
                    LogRecord::IntentsClosed,
                    LogRecord::Intent {
                        first_block: 0,
                        block_count: 1,
                    },
                ],
            ],
        ),
        file(
            &incomplete,
            &[vec![
                write_on(11, 0, 0, 2 * BLOCK),
                LogRecord::Durable { seq: 11 },
                LogRecord::State {
                    state: ChunkState::Ok,
                },
            ]],
        ),
    ]
}

/// The committed seeds are what this build encodes. To regenerate them
/// after a format change: `RINGFS_WRITE_FUZZ_SEEDS=1 cargo test -p chunkd
/// --test chunk_meta fuzz_seeds`.
#[test]
fn fuzz_seeds_are_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/chunk_meta");
    let write = std::env::var_os("RINGFS_WRITE_FUZZ_SEEDS").is_some();
    for (i, seed) in fuzz_seeds().iter().enumerate() {
        assert!(seed.len() < 64 * 1024);
        assert!(decode_scan_replay(seed), "seed {i} is valid");
        let path = dir.join(format!("seed-{i}"));
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, seed).unwrap();
        } else {
            let on_disk =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                on_disk == *seed,
                "{} is stale; see this test's comment",
                path.display()
            );
        }
    }
}

/// Mutations of disjoint blocks run concurrently, so a record computed
/// before another extended the chunk may be logged after it: its smaller
/// new_length does not shrink the chunk.
#[test]
fn a_later_record_with_a_smaller_new_length_keeps_the_larger() {
    let base = MetaBase {
        handle: 1,
        chunk_size_bytes: 1 << 20,
        data_file_id: 9,
        version: 1,
        length_bytes: 0,
        state: ChunkState::Ok,
        base_seq: 0,
        log_bytes: DEFAULT_LOG_BYTES,
        crcs: Vec::new(),
    };
    let grow = LogRecord::Write {
        seq: 1,
        version: 1,
        offset: 0,
        length: 3 * 65536,
        new_length: 3 * 65536,
        first_block: 0,
        crcs: vec![1, 2, 3],
    };
    let inner = LogRecord::Write {
        seq: 2,
        version: 1,
        offset: 0,
        length: 10,
        new_length: 65536,
        first_block: 0,
        crcs: vec![7],
    };
    let r = replay(&base, &[grow, inner]).unwrap();
    assert_eq!(r.length_bytes, 3 * 65536);
    assert_eq!(r.crcs, vec![7, 2, 3]);
}
