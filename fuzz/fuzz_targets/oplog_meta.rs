//! The op log's meta file reader (masterd::oplog::meta::decode): any bytes
//! give a state or a typed error, never a panic; an accepted file
//! re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use masterd::oplog::meta;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = meta::decode(data) {
        assert_eq!(meta::encode(&m).as_slice(), data);
    }
});
