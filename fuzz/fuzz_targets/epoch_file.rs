//! The EPOCH file reader (chunkd::epoch::decode): any bytes give a value
//! or a typed error, never a panic; an accepted file re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(epoch) = chunkd::epoch::decode(data) {
        assert_eq!(chunkd::epoch::encode(epoch).as_slice(), data);
    }
});
