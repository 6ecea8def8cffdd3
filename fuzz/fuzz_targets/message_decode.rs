//! Any meta bytes (behind a valid header and CRC): reading the flatbuffers
//! message and converting it to owned form must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use planus::ReadAsRoot;
use ringfs_wire::msg::{Body, MessageRef};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = MessageRef::read_as_root(data) {
        if let Ok(Some(body)) = message.body() {
            // Walks every field and nested table / vector / union.
            let _ = Body::try_from(body);
        }
    }
});
