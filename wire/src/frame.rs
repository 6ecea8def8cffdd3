//! Frame codec: the fixed 32-byte header, then `meta` (one flatbuffers
//! `Message`), then raw `data`. Byte layout and rationale:
//! `docs/design/001-wire-frames.md`.
//!
//! Pure functions over byte slices: no I/O, no runtime; decoding never
//! allocates, encoding appends to the caller's buffer. A
//! reader decodes the header first, which checks both lengths against its
//! [`FrameLimits`] *before* it allocates anything for meta or data, then
//! reads meta and checks its CRC, then reads data straight into wherever
//! it belongs (an aligned buffer on a chunkserver). Data is protected by the
//! per-64 KiB block checksums carried in the meta, not by the header.

use crate::checksum::crc32c;
use crate::msg::MessageKind;

/// `b"RGFS"`: the first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"RGFS";
/// Wire protocol version spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_BYTES: usize = 32;
/// Bytes of the header covered by `header_crc32c` (all that precede it).
const HEADER_CRC_COVERED_BYTES: usize = 28;

/// Largest meta any peer may announce, whatever its configuration.
pub const META_BYTES_PROTOCOL_MAX: u32 = 64 << 20;
/// Largest data section any peer may announce, whatever its configuration.
pub const DATA_BYTES_PROTOCOL_MAX: u32 = 256 << 20;

/// Longest reason a handshake refusal carries: it may quote what the
/// unauthenticated peer sent (its cluster id), and must still fit
/// [`FrameLimits::HANDSHAKE`].
pub const HANDSHAKE_REASON_MAX_BYTES: usize = 1024;

/// `reason` cut to at most [`HANDSHAKE_REASON_MAX_BYTES`], on a character
/// boundary.
pub fn handshake_reason(reason: &str) -> &str {
    if reason.len() <= HANDSHAKE_REASON_MAX_BYTES {
        return reason;
    }
    let mut end = HANDSHAKE_REASON_MAX_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Per-connection limits, checked before any allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_meta_bytes: u32,
    pub max_data_bytes: u32,
}

impl FrameLimits {
    /// Control connections (client/master, master/master): metadata replies,
    /// chunk reports and Raft batches travel in meta or data of this size.
    pub const CONTROL: FrameLimits = FrameLimits {
        max_meta_bytes: 16 << 20,
        max_data_bytes: 64 << 20,
    };
    /// Data connections (to chunkservers): small meta, data up to 16 MiB.
    pub const DATA: FrameLimits = FrameLimits {
        max_meta_bytes: 1 << 20,
        max_data_bytes: 16 << 20,
    };
    /// The handshake (Hello, Challenge, Proof, Welcome, or the ErrorReply
    /// that refuses it), read before the peer is authenticated, so an
    /// unknown peer cannot make us allocate more than this. The messages
    /// are a cluster id (≤ 64 bytes), two 32-byte nonces, a 32-byte proof
    /// and a few integers; an ErrorReply's message is cut to
    /// [`HANDSHAKE_REASON_MAX_BYTES`] by the senders, so 4 KiB leaves
    /// ample room for flatbuffers overhead.
    pub const HANDSHAKE: FrameLimits = FrameLimits {
        max_meta_bytes: 4 << 10,
        max_data_bytes: 0,
    };

    /// Limits above the protocol maximum are clamped to it.
    pub fn new(max_meta_bytes: u32, max_data_bytes: u32) -> FrameLimits {
        FrameLimits {
            max_meta_bytes: max_meta_bytes.min(META_BYTES_PROTOCOL_MAX),
            max_data_bytes: max_data_bytes.min(DATA_BYTES_PROTOCOL_MAX),
        }
    }
}

/// The decoded fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: MessageKind,
    pub request_id: u64,
    pub meta_len: u32,
    pub data_len: u32,
    pub meta_crc32c: u32,
}

/// Why a frame was refused. `Truncated` only means "read more bytes" to a
/// stream reader (and is final for a datagram-like whole buffer); every
/// other variant is final for the connection: the stream position can no
/// longer be trusted, so the receiver answers `BadFrame` where it can and
/// closes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("truncated frame: have {have} bytes, need {need}")]
    Truncated { have: usize, need: usize },
    #[error(
        "bad magic {found:02x?} (expected {MAGIC:02x?}): not a ringfs peer or a desynchronised stream"
    )]
    BadMagic { found: [u8; 4] },
    #[error("unsupported protocol version {found} (this build speaks {PROTOCOL_VERSION})")]
    BadVersion { found: u16 },
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadHeaderCrc { stored: u32, computed: u32 },
    #[error("unknown message kind {found}")]
    UnknownKind { found: u16 },
    #[error("meta length {len} exceeds the limit of {limit} bytes")]
    MetaTooLarge { len: u32, limit: u32 },
    #[error("data length {len} exceeds the limit of {limit} bytes")]
    DataTooLarge { len: u32, limit: u32 },
    #[error("empty meta: every frame carries a message")]
    EmptyMeta,
    #[error("meta checksum mismatch: header says {stored:#010x}, meta hashes to {computed:#010x}")]
    BadMetaCrc { stored: u32, computed: u32 },
}

impl FrameHeader {
    /// Header for `meta` (already encoded) followed by `data_len` bytes of data.
    pub fn for_meta(kind: MessageKind, request_id: u64, meta: &[u8], data_len: u32) -> FrameHeader {
        let meta_len = u32::try_from(meta.len()).unwrap_or(u32::MAX);
        FrameHeader {
            kind,
            request_id,
            meta_len,
            data_len,
            meta_crc32c: crc32c(meta),
        }
    }

    /// Total frame size: header + meta + data.
    pub fn frame_len(&self) -> u64 {
        HEADER_BYTES as u64 + u64::from(self.meta_len) + u64::from(self.data_len)
    }

    /// Checks this header against `limits`; encoders call it so that a frame
    /// we send is one we would accept.
    pub fn check_limits(&self, limits: &FrameLimits) -> Result<(), FrameError> {
        // The fields are public: clamp here too, whoever built the limits.
        let limits = FrameLimits::new(limits.max_meta_bytes, limits.max_data_bytes);
        if self.meta_len == 0 {
            return Err(FrameError::EmptyMeta);
        }
        if self.meta_len > limits.max_meta_bytes {
            return Err(FrameError::MetaTooLarge {
                len: self.meta_len,
                limit: limits.max_meta_bytes,
            });
        }
        if self.data_len > limits.max_data_bytes {
            return Err(FrameError::DataTooLarge {
                len: self.data_len,
                limit: limits.max_data_bytes,
            });
        }
        Ok(())
    }

    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.meta_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.data_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.meta_crc32c.to_le_bytes());
        let crc = crc32c(&out[..HEADER_CRC_COVERED_BYTES]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates the first [`HEADER_BYTES`] of `bytes`. Checks,
    /// in order: length, magic, header CRC, version, kind, limits. The CRC
    /// comes before the fields it protects so that a flipped bit is reported
    /// as corruption, not as a strange version or kind.
    pub fn decode(bytes: &[u8], limits: &FrameLimits) -> Result<FrameHeader, FrameError> {
        let Some(h) = bytes.first_chunk::<HEADER_BYTES>() else {
            return Err(FrameError::Truncated {
                have: bytes.len(),
                need: HEADER_BYTES,
            });
        };
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let stored = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
        let computed = crc32c(&h[..HEADER_CRC_COVERED_BYTES]);
        if stored != computed {
            return Err(FrameError::BadHeaderCrc { stored, computed });
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::BadVersion { found: version });
        }
        let kind_raw = u16::from_le_bytes([h[6], h[7]]);
        let kind =
            MessageKind::from_u16(kind_raw).ok_or(FrameError::UnknownKind { found: kind_raw })?;
        let header = FrameHeader {
            kind,
            request_id: u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
            meta_len: u32::from_le_bytes([h[16], h[17], h[18], h[19]]),
            data_len: u32::from_le_bytes([h[20], h[21], h[22], h[23]]),
            meta_crc32c: u32::from_le_bytes([h[24], h[25], h[26], h[27]]),
        };
        header.check_limits(limits)?;
        Ok(header)
    }

    /// Checks `meta` (exactly `meta_len` bytes) against the header's CRC.
    pub fn verify_meta(&self, meta: &[u8]) -> Result<(), FrameError> {
        assert_eq!(
            meta.len(),
            self.meta_len as usize,
            "caller must pass exactly meta_len bytes"
        );
        let computed = crc32c(meta);
        if computed != self.meta_crc32c {
            return Err(FrameError::BadMetaCrc {
                stored: self.meta_crc32c,
                computed,
            });
        }
        Ok(())
    }
}

/// A whole frame borrowed from a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub header: FrameHeader,
    pub meta: &'a [u8],
    pub data: &'a [u8],
}

impl FrameRef<'_> {
    /// Bytes of the buffer this frame occupies.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.meta.len() + self.data.len()
    }
}

/// Decodes one complete frame from the start of `bytes` (which may hold more
/// after it). `Truncated` says how many bytes a complete frame needs.
pub fn decode_frame<'a>(bytes: &'a [u8], limits: &FrameLimits) -> Result<FrameRef<'a>, FrameError> {
    let header = FrameHeader::decode(bytes, limits)?;
    // Lengths are bounded by limits (< 2^32 each), so this cannot overflow usize on 64-bit.
    let meta_end = HEADER_BYTES + header.meta_len as usize;
    let frame_end = meta_end + header.data_len as usize;
    if bytes.len() < frame_end {
        return Err(FrameError::Truncated {
            have: bytes.len(),
            need: frame_end,
        });
    }
    let meta = &bytes[HEADER_BYTES..meta_end];
    header.verify_meta(meta)?;
    let frame = FrameRef {
        header,
        meta,
        data: &bytes[meta_end..frame_end],
    };
    debug_assert_eq!(frame.encoded_len(), frame_end);
    Ok(frame)
}

/// Appends a complete frame to `out`. Refuses (without writing) a frame its
/// own `limits` would refuse on receipt.
pub fn encode_frame(
    out: &mut Vec<u8>,
    kind: MessageKind,
    request_id: u64,
    meta: &[u8],
    data: &[u8],
    limits: &FrameLimits,
) -> Result<(), FrameError> {
    let data_len = u32::try_from(data.len()).map_err(|_| FrameError::DataTooLarge {
        len: u32::MAX,
        limit: limits.max_data_bytes,
    })?;
    if u32::try_from(meta.len()).is_err() {
        return Err(FrameError::MetaTooLarge {
            len: u32::MAX,
            limit: limits.max_meta_bytes,
        });
    }
    let header = FrameHeader::for_meta(kind, request_id, meta, data_len);
    header.check_limits(limits)?;
    out.reserve(HEADER_BYTES + meta.len() + data.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(meta);
    out.extend_from_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Encoder, error_body};
    use crate::msg::{Body, ErrorCode};

    #[test]
    fn the_largest_handshake_messages_fit_handshake_limits() {
        let mut out = Vec::new();
        let reason = "é".repeat(10_000);
        let cut = handshake_reason(&reason);
        assert!(cut.len() <= HANDSHAKE_REASON_MAX_BYTES && cut.len() > 1000);
        let body = error_body(ErrorCode::WrongCluster, cut);
        Encoder::new()
            .frame(&mut out, 1, &body, &[], &FrameLimits::HANDSHAKE)
            .expect("a refusal with the longest reason fits");
        let hello = Body::Hello(Box::new(crate::msg::Hello {
            cluster_id: Some("x".repeat(crate::config::CLUSTER_ID_MAX_BYTES)),
            client_nonce: Some(vec![7; 32]),
            ..Default::default()
        }));
        out.clear();
        Encoder::new()
            .frame(&mut out, 1, &hello, &[], &FrameLimits::HANDSHAKE)
            .expect("a Hello fits");
        assert_eq!(handshake_reason("short"), "short");
    }
}
