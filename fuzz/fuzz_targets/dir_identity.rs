//! Any bytes as a data dir's IDENTITY file (read from disk at start-up):
//! a typed error or an identity that re-encodes to the same bytes. Inputs of
//! the right length are also tried with their CRC re-sealed, to reach the
//! field checks behind it.
#![no_main]

use chunkd::identity::{DirIdentity, IDENTITY_BYTES};
use libfuzzer_sys::fuzz_target;
use ringfs_wire::checksum::crc32c;

fn check(data: &[u8]) {
    if let Ok(identity) = DirIdentity::decode(data) {
        assert_eq!(identity.encode().as_slice(), data, "decode accepted a non-canonical file");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() == IDENTITY_BYTES {
        let mut sealed = data.to_vec();
        let crc = crc32c(&sealed[..IDENTITY_BYTES - 4]);
        sealed[IDENTITY_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        check(&sealed);
    }
});
