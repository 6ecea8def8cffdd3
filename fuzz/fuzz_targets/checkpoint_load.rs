//! Any bytes as a master checkpoint file (mapped at start-up,
//! masterd::checkpoint::decode): a typed error, or a state that re-encodes
//! to exactly the same bytes (the format is canonical) and whose digest
//! survives a second round trip. Random bytes almost never carry valid
//! CRCs, so each input is also tried with its header, section and footer
//! CRCs re-sealed, to reach the record checks behind them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use masterd::checkpoint::format::{
    FOOTER_ENTRY_BYTES, HEADER_BYTES, HEADER_CRC_OFFSET, SECTION_COUNT, TRAILER_BYTES,
};
use masterd::checkpoint::{decode_with, encode};
use ringfs_wire::checksum::crc32c;

fn check(data: &[u8]) {
    // Sequential: the same section decoders as the threaded path, without
    // spawning threads for every input.
    let Ok((state, meta)) = decode_with(data, false) else {
        return;
    };
    let bytes = encode(&state, &meta).expect("a decoded state encodes");
    assert_eq!(
        bytes.as_slice(),
        data,
        "decode accepted a non-canonical file"
    );
    let (again, meta2) = decode_with(&bytes, false).expect("a re-encoded state decodes");
    assert_eq!(again.digest(), state.digest());
    assert_eq!(meta2, meta);
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Rewrites the header CRC, every section CRC whose range lies inside the
/// file, and the footer CRC, trusting the footer's offsets.
fn reseal(data: &mut [u8]) -> Option<()> {
    let crc = crc32c(data.get(..HEADER_CRC_OFFSET)?);
    data.get_mut(HEADER_CRC_OFFSET..HEADER_BYTES)?
        .copy_from_slice(&crc.to_le_bytes());
    let footer_at = data
        .len()
        .checked_sub(SECTION_COUNT * FOOTER_ENTRY_BYTES + TRAILER_BYTES)?;
    for i in 0..SECTION_COUNT {
        let e = footer_at + i * FOOTER_ENTRY_BYTES;
        let off = usize::try_from(le64(data, e + 8)?).ok()?;
        let len = usize::try_from(le64(data, e + 16)?).ok()?;
        let end = off.checked_add(len)?;
        if end > footer_at {
            continue;
        }
        let crc = crc32c(&data[off..end]);
        data[e + 4..e + 8].copy_from_slice(&crc.to_le_bytes());
    }
    let t = data.len() - TRAILER_BYTES;
    let crc = crc32c(&data[footer_at..t + 4]);
    data[t + 4..t + 8].copy_from_slice(&crc.to_le_bytes());
    Some(())
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut sealed = data.to_vec();
    if reseal(&mut sealed).is_some() {
        check(&sealed);
    }
});
