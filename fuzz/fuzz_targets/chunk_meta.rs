//! Any bytes as a chunk's meta file (read from disk at start-up): a typed
//! error, or a base that re-encodes to the same bytes and a log that scans
//! and replays into a state that can be written back as a new base.
//! Random bytes almost never carry valid CRCs, so each input is also tried
//! with its header, table and batch CRCs re-sealed, to reach the checks
//! behind them.
#![no_main]

use chunkd::meta::{MetaBase, MetaLayout, PAGE_BYTES, replay, scan_log};
use libfuzzer_sys::fuzz_target;
use ringfs_wire::checksum::{block_count, crc32c, crc32c_extend};

/// Inputs announcing a larger log region are scanned no further than the
/// base: zero-filling up to 16 MiB per input would slow the fuzzer and
/// reach no new code.
const MAX_FUZZ_LOG_BYTES: u64 = 1 << 20;

fn check(data: &[u8]) {
    let Ok(base) = MetaBase::decode(data) else {
        return;
    };
    let layout = base.layout();
    let log_offset = layout.log_offset as usize;
    let encoded = base.encode().expect("a decoded base encodes");
    assert_eq!(
        encoded.as_slice(),
        &data[..log_offset],
        "decode accepted a non-canonical base"
    );
    if layout.log_bytes > MAX_FUZZ_LOG_BYTES {
        return;
    }
    // The unwritten end of a preallocated file reads as zeros.
    let mut log = data[log_offset..].to_vec();
    log.resize(layout.log_bytes as usize, 0);
    let Ok(scan) = scan_log(&layout, &log) else {
        return;
    };
    assert!(scan.end_offset <= layout.log_bytes);
    assert_eq!(scan.end_offset % PAGE_BYTES as u64, 0);
    assert_eq!(scan.next_batch_seq, scan.batches + 1);
    let Ok(r) = replay(&base, &scan.records) else {
        return;
    };
    assert!(r.length_bytes <= layout.chunk_size_bytes);
    assert_eq!(r.crcs.len() as u64, block_count(r.length_bytes));
    assert!(r.durable_seq <= r.last_seq);
    assert!(r.unsettled_blocks.windows(2).all(|w| w[0] < w[1]));
    assert!(r.open_intent_blocks.windows(2).all(|w| w[0] < w[1]));
    assert!(
        r.open_intent_blocks
            .iter()
            .all(|&b| u64::from(b) < block_count(layout.chunk_size_bytes))
    );
    assert!(
        r.unsettled_blocks
            .iter()
            .all(|&b| (b as usize) < r.crcs.len())
    );
    // Compaction: the replayed state is a valid base.
    let compacted = MetaBase {
        version: r.version,
        length_bytes: r.length_bytes,
        state: r.state,
        base_seq: r.last_seq,
        crcs: r.crcs,
        ..base
    };
    let bytes = compacted
        .encode()
        .expect("a replayed state encodes as a base");
    assert_eq!(MetaBase::decode(&bytes).as_ref(), Ok(&compacted));
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Re-seals the table CRC, the header CRC and the CRC of every batch whose
/// size field is in range, trusting the header's layout fields.
fn reseal(data: &mut [u8]) -> Option<()> {
    let chunk_size = u64_at(data, 24)?;
    let log_bytes = u32_at(data, 72)?;
    let layout = MetaLayout::new(chunk_size, log_bytes).ok()?;
    let table = layout.table_offset as usize;
    let table_crc = crc32c(data.get(table..table + 4 * layout.block_count as usize)?);
    data[76..80].copy_from_slice(&table_crc.to_le_bytes());
    let header_crc = crc32c(&data[..80]);
    data[80..84].copy_from_slice(&header_crc.to_le_bytes());
    let log_end = data.len().min(layout.file_bytes as usize);
    let mut at = layout.log_offset as usize;
    while let Some(len) = u32_at(data, at + 4) {
        let len = len as usize;
        if len < PAGE_BYTES || !len.is_multiple_of(PAGE_BYTES) || at + len > log_end {
            break;
        }
        let batch = &data[at..at + len];
        let crc = crc32c_extend(crc32c(&batch[..20]), &batch[24..]);
        data[at + 20..at + 24].copy_from_slice(&crc.to_le_bytes());
        at += len;
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut sealed = data.to_vec();
    if reseal(&mut sealed).is_some() {
        check(&sealed);
    }
});
