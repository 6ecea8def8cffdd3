//! Any bytes from the network: the frame decoder and the message decoder
//! must return a typed error or a frame, never panic or over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_wire::frame::{FrameLimits, decode_frame};
use ringfs_wire::message::decode_frame_body;

fuzz_target!(|data: &[u8]| {
    for limits in [FrameLimits::CONTROL, FrameLimits::DATA, FrameLimits::new(64, 64)] {
        if let Ok(frame) = decode_frame(data, &limits) {
            assert!(frame.encoded_len() <= data.len());
            assert!(frame.meta.len() <= limits.max_meta_bytes as usize);
            assert!(frame.data.len() <= limits.max_data_bytes as usize);
        }
        let _ = decode_frame_body(data, &limits);
    }
});
