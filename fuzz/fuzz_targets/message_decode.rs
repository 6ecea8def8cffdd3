//! Any meta bytes (behind a valid header and CRC): reading the flatbuffers
//! message, admitting it and converting it to owned form, as every
//! receiver does (`ringfs_wire::admit`, note 022), must not panic and must
//! not allocate more than the admission bounds allow (libFuzzer's RSS
//! limit catches a copy that shared offsets blow up).
#![no_main]

use libfuzzer_sys::fuzz_target;
use planus::ReadAsRoot;
use ringfs_wire::admit;
use ringfs_wire::msg::MessageRef;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = MessageRef::read_as_root(data) {
        if let Ok(Some(body)) = message.body() {
            // Walks every field and nested table / vector / union.
            let _ = admit::to_owned(body, data.len());
        }
    }
});
