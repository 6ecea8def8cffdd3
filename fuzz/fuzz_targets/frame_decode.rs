//! Any bytes from the network: the frame decoder and the message decoder
//! must return a typed error or a frame, never panic or over-allocate.
//! Random bytes almost never carry valid CRCs, so each input is also tried
//! with its header and meta CRCs re-sealed, to reach the checks behind them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_wire::checksum::crc32c;
use ringfs_wire::frame::{FrameLimits, HEADER_BYTES, decode_frame};
use ringfs_wire::message::decode_frame_body;

fn check(data: &[u8]) {
    for limits in [FrameLimits::CONTROL, FrameLimits::DATA, FrameLimits::new(64, 64)] {
        if let Ok(frame) = decode_frame(data, &limits) {
            assert!(frame.encoded_len() <= data.len());
            assert!(frame.meta.len() <= limits.max_meta_bytes as usize);
            assert!(frame.data.len() <= limits.max_data_bytes as usize);
        }
        let _ = decode_frame_body(data, &limits);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= HEADER_BYTES {
        let mut sealed = data.to_vec();
        let meta_len = u32::from_le_bytes([data[16], data[17], data[18], data[19]]) as usize;
        if let Some(meta) = sealed.get(HEADER_BYTES..HEADER_BYTES.saturating_add(meta_len)) {
            let crc = crc32c(meta);
            sealed[24..28].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c(&sealed[..28]);
        sealed[28..32].copy_from_slice(&crc.to_le_bytes());
        check(&sealed);
    }
});
