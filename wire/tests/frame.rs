//! Frame codec: round trips, every malformed case, and no panic on any input.

use proptest::prelude::*;
use ringfs_wire::frame::{
    FrameError, FrameHeader, FrameLimits, HEADER_BYTES, MAGIC, PROTOCOL_VERSION, decode_frame,
    encode_frame,
};
use ringfs_wire::msg::MessageKind;

const LIMITS: FrameLimits = FrameLimits::CONTROL;

fn frame(kind: MessageKind, request_id: u64, meta: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, kind, request_id, meta, data, &LIMITS).expect("within limits");
    out
}

/// Rewrites the header CRC after a test edits header fields, so the edit
/// reaches the check it is aimed at instead of failing the CRC.
fn reseal(bytes: &mut [u8]) {
    let crc = ringfs_wire::checksum::crc32c(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// The header of a small Ping frame announcing `meta_len` and `data_len`,
/// re-sealed so that only the limits can refuse it.
fn header_announcing(meta_len: u32, data_len: u32) -> Vec<u8> {
    let mut header = frame(MessageKind::Ping, 1, b"m", b"")[..HEADER_BYTES].to_vec();
    header[16..20].copy_from_slice(&meta_len.to_le_bytes());
    header[20..24].copy_from_slice(&data_len.to_le_bytes());
    reseal(&mut header);
    header
}

fn any_kind() -> impl Strategy<Value = MessageKind> {
    prop::sample::select(MessageKind::ALL.to_vec())
}

proptest! {
    #[test]
    fn round_trip(kind in any_kind(), request_id: u64,
                  meta in prop::collection::vec(any::<u8>(), 1..2048),
                  data in prop::collection::vec(any::<u8>(), 0..4096),
                  trailing in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = frame(kind, request_id, &meta, &data);
        let len = bytes.len();
        bytes.extend_from_slice(&trailing);
        let f = decode_frame(&bytes, &LIMITS).unwrap();
        prop_assert_eq!(f.header.kind, kind);
        prop_assert_eq!(f.header.request_id, request_id);
        prop_assert_eq!(f.meta, &meta[..]);
        prop_assert_eq!(f.data, &data[..]);
        prop_assert_eq!(f.encoded_len(), len);
    }

    #[test]
    fn every_prefix_is_truncated(meta in prop::collection::vec(any::<u8>(), 1..256),
                                 data in prop::collection::vec(any::<u8>(), 0..256)) {
        let bytes = frame(MessageKind::Ping, 7, &meta, &data);
        for cut in 0..bytes.len() {
            match decode_frame(&bytes[..cut], &LIMITS) {
                Err(FrameError::Truncated { have, need }) => {
                    prop_assert_eq!(have, cut);
                    prop_assert!(need > cut);
                    prop_assert!(need <= bytes.len());
                }
                other => prop_assert!(false, "cut at {}: {:?}", cut, other),
            }
        }
    }

    #[test]
    fn any_single_bit_flip_in_header_or_meta_is_caught(meta in prop::collection::vec(any::<u8>(), 1..128),
                                                       bit in 0usize..(HEADER_BYTES + 128) * 8) {
        let bytes = frame(MessageKind::Stat, 1, &meta, b"");
        let bit = bit % ((HEADER_BYTES + meta.len()) * 8);
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode_frame(&bad, &LIMITS).is_err(), "flip of bit {} went unnoticed", bit);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_frame(&bytes, &LIMITS);
        let _ = ringfs_wire::message::decode_frame_body(&bytes, &LIMITS);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(kind in any_kind(), meta in prop::collection::vec(any::<u8>(), 1..512)) {
        let bytes = frame(kind, 3, &meta, b"");
        let _ = ringfs_wire::message::decode_frame_body(&bytes, &LIMITS);
    }
}

#[test]
fn header_layout_is_fixed_little_endian() {
    let bytes = frame(MessageKind::Ping, 0x0102_0304_0506_0708, b"abc", b"xy");
    assert_eq!(&bytes[0..4], b"RGFS");
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), PROTOCOL_VERSION);
    assert_eq!(
        u16::from_le_bytes([bytes[6], bytes[7]]),
        MessageKind::Ping as u16
    );
    assert_eq!(&bytes[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&bytes[16..20], &3u32.to_le_bytes());
    assert_eq!(&bytes[20..24], &2u32.to_le_bytes());
    assert_eq!(
        &bytes[24..28],
        &ringfs_wire::checksum::crc32c(b"abc").to_le_bytes()
    );
    assert_eq!(
        &bytes[28..32],
        &ringfs_wire::checksum::crc32c(&bytes[..28]).to_le_bytes()
    );
    assert_eq!(&bytes[32..], b"abcxy");
}

#[test]
fn bad_magic() {
    let mut bytes = frame(MessageKind::Ping, 1, b"m", b"");
    bytes[0] = b'X';
    assert_eq!(
        decode_frame(&bytes, &LIMITS),
        Err(FrameError::BadMagic { found: *b"XGFS" })
    );
    assert_ne!(MAGIC, *b"XGFS");
}

#[test]
fn bad_version() {
    let mut bytes = frame(MessageKind::Ping, 1, b"m", b"");
    bytes[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    reseal(&mut bytes);
    assert_eq!(
        decode_frame(&bytes, &LIMITS),
        Err(FrameError::BadVersion {
            found: PROTOCOL_VERSION + 1
        })
    );
}

#[test]
fn bad_header_crc() {
    let mut bytes = frame(MessageKind::Ping, 1, b"m", b"");
    bytes[10] ^= 0xff; // inside request id
    assert!(matches!(
        decode_frame(&bytes, &LIMITS),
        Err(FrameError::BadHeaderCrc { .. })
    ));
    let mut bytes = frame(MessageKind::Ping, 1, b"m", b"");
    bytes[30] ^= 0x01; // the CRC itself
    assert!(matches!(
        decode_frame(&bytes, &LIMITS),
        Err(FrameError::BadHeaderCrc { .. })
    ));
}

#[test]
fn unknown_kind() {
    for raw in [0u16, MessageKind::ALL.len() as u16 + 1, u16::MAX] {
        let mut bytes = frame(MessageKind::Ping, 1, b"m", b"");
        bytes[6..8].copy_from_slice(&raw.to_le_bytes());
        reseal(&mut bytes);
        assert_eq!(
            decode_frame(&bytes, &LIMITS),
            Err(FrameError::UnknownKind { found: raw })
        );
    }
}

#[test]
fn oversize_lengths_refused_from_the_header_alone() {
    let limits = FrameLimits::new(100, 1000);
    // Only the 32 header bytes exist: the refusal must not need (or allocate) the body.
    assert_eq!(
        FrameHeader::decode(&header_announcing(101, 0), &limits),
        Err(FrameError::MetaTooLarge {
            len: 101,
            limit: 100
        })
    );
    assert_eq!(
        FrameHeader::decode(&header_announcing(100, u32::MAX), &limits),
        Err(FrameError::DataTooLarge {
            len: u32::MAX,
            limit: 1000
        })
    );
    // Protocol maxima clamp configured limits.
    let clamped = FrameLimits::new(u32::MAX, u32::MAX);
    assert_eq!(
        clamped.max_meta_bytes,
        ringfs_wire::frame::META_BYTES_PROTOCOL_MAX
    );
    assert_eq!(
        clamped.max_data_bytes,
        ringfs_wire::frame::DATA_BYTES_PROTOCOL_MAX
    );
}

#[test]
fn encoder_refuses_what_the_decoder_would() {
    let limits = FrameLimits::new(4, 4);
    let mut out = Vec::new();
    assert_eq!(
        encode_frame(&mut out, MessageKind::Ping, 1, b"12345", b"", &limits),
        Err(FrameError::MetaTooLarge { len: 5, limit: 4 })
    );
    assert_eq!(
        encode_frame(&mut out, MessageKind::Ping, 1, b"1", b"12345", &limits),
        Err(FrameError::DataTooLarge { len: 5, limit: 4 })
    );
    assert_eq!(
        encode_frame(&mut out, MessageKind::Ping, 1, b"", b"", &limits),
        Err(FrameError::EmptyMeta)
    );
    assert!(out.is_empty(), "a refused frame writes nothing");
}

#[test]
fn bad_meta_crc() {
    let mut bytes = frame(MessageKind::Ping, 1, b"meta", b"data");
    bytes[HEADER_BYTES] ^= 0x80;
    assert!(matches!(
        decode_frame(&bytes, &LIMITS),
        Err(FrameError::BadMetaCrc { .. })
    ));
}

#[test]
fn truncated_header_and_body() {
    assert_eq!(
        decode_frame(&[], &LIMITS),
        Err(FrameError::Truncated {
            have: 0,
            need: HEADER_BYTES
        })
    );
    let bytes = frame(MessageKind::Ping, 1, b"meta", b"data");
    assert_eq!(
        decode_frame(&bytes[..HEADER_BYTES + 5], &LIMITS),
        Err(FrameError::Truncated {
            have: HEADER_BYTES + 5,
            need: HEADER_BYTES + 8
        })
    );
}

#[test]
fn hand_built_limits_are_clamped_to_the_protocol_maxima() {
    let limits = FrameLimits {
        max_meta_bytes: u32::MAX,
        max_data_bytes: u32::MAX,
    };
    assert_eq!(
        FrameHeader::decode(&header_announcing(1, u32::MAX), &limits),
        Err(FrameError::DataTooLarge {
            len: u32::MAX,
            limit: ringfs_wire::frame::DATA_BYTES_PROTOCOL_MAX
        })
    );
}
