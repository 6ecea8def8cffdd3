//! Any bytes as an op-log segment file (read from disk at start-up): a
//! typed error, or records that are consecutive, sit back to back from the
//! header on, decode, and re-encode to the same bytes, with a tail verdict
//! that matches the bytes past the end. Random bytes almost never carry
//! valid CRCs, so each input is also tried with its header and record CRCs
//! re-sealed, to reach the checks behind them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use masterd::oplog::format::{
    RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES, Tail, check_record,
    decode_entry, encode_record, scan_segment,
};
use ringfs_wire::checksum::{crc32c, crc32c_extend};

fn check(data: &[u8]) {
    let Ok(scan) = scan_segment(data) else {
        return;
    };
    let end = scan.end as usize;
    assert!(end <= data.len());
    let mut at = SEGMENT_HEADER_BYTES;
    for (k, r) in scan.records.iter().enumerate() {
        assert_eq!(r.index, scan.first_index + k as u64);
        assert_eq!(r.offset as usize, at);
        assert!(r.batch_first <= r.index);
        let next = at + r.record_bytes() as usize;
        let bytes = &data[at..next];
        let f = check_record(bytes).expect("a scanned record frames");
        decode_entry(&f).expect("a scanned record decodes");
        let mut again = Vec::new();
        encode_record(
            &mut again,
            r.index,
            r.term,
            r.node_id,
            r.batch_first,
            f.payload,
        );
        assert_eq!(again, bytes, "a scanned record is not canonical");
        at = next;
    }
    assert_eq!(at, end);
    match scan.tail {
        Tail::Clean => assert_eq!(end, data.len()),
        Tail::Zeroed => {
            assert!(end < data.len());
            assert!(data[end..].iter().all(|&b| b == 0));
        }
        Tail::Torn(_) => assert!(check_record(&data[end..]).is_err()),
    }
    // What recovery keeps after cutting the tail scans clean, the same.
    let kept = scan_segment(&data[..end]).expect("the kept prefix scans");
    assert_eq!(kept.tail, Tail::Clean);
    assert_eq!(kept.records, scan.records);
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Re-seals the header CRC and the CRC of every record whose length field
/// fits the input.
fn reseal(data: &mut [u8]) -> Option<()> {
    data.get(..SEGMENT_HEADER_BYTES)?;
    let crc = crc32c(&data[..28]);
    data[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut at = SEGMENT_HEADER_BYTES;
    while let Some(len) = u32_at(data, at + 4) {
        let len = len as usize;
        let end = at + RECORD_HEADER_BYTES + len;
        if len == 0 || len > RECORD_PAYLOAD_BYTES_MAX || end > data.len() {
            break;
        }
        let crc = crc32c_extend(
            crc32c(&data[at..at + 44]),
            &data[at + RECORD_HEADER_BYTES..end],
        );
        data[at + 44..at + 48].copy_from_slice(&crc.to_le_bytes());
        at = end;
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
