//! From owned message bodies to frame meta and back.
//!
//! Encoding builds one flatbuffers `Message` whose union tag becomes the
//! frame header's `kind`. Decoding is zero-copy: a [`BodyRef`] borrows the
//! meta bytes, and a meta whose tag disagrees with its header is refused.

use crate::frame::{self, FrameError, FrameHeader, FrameLimits};
use crate::msg::{Body, BodyRef, ErrorCode, ErrorReply, Message, MessageKind, MessageRef};
use planus::ReadAsRoot;

/// Why a frame's meta was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message has no body")]
    MissingBody,
    #[error("header says {header:?} but the meta holds {meta:?}")]
    KindMismatch {
        header: MessageKind,
        meta: MessageKind,
    },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl From<planus::Error> for MessageError {
    fn from(e: planus::Error) -> Self {
        MessageError::Malformed(e.to_string())
    }
}

/// Reusable encoder: keeps one flatbuffers builder, so steady-state encoding
/// writes the meta into memory it already has.
#[derive(Default)]
pub struct Encoder {
    builder: planus::Builder,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Encodes `body` as a `Message`; the bytes borrow the encoder.
    pub fn meta(&mut self, body: &Body) -> (MessageKind, &[u8]) {
        let kind = MessageKind::of_body(body);
        self.builder.clear();
        let union = <Body as planus::WriteAsUnion<Body>>::prepare(body, &mut self.builder);
        // MessageKind is generated from the schema text, planus' tags from its
        // parse of it: they must agree or every frame would be misrouted.
        assert_eq!(
            u16::from(union.tag()),
            kind as u16,
            "MessageKind numbering differs from planus union tags"
        );
        let message = Message::create(&mut self.builder, union);
        let bytes = self.builder.finish(message, None);
        (kind, bytes)
    }

    /// Appends a whole frame (header, meta of `body`, `data`) to `out`.
    pub fn frame(
        &mut self,
        out: &mut Vec<u8>,
        request_id: u64,
        body: &Body,
        data: &[u8],
        limits: &FrameLimits,
    ) -> Result<(), FrameError> {
        let (kind, meta) = self.meta(body);
        frame::encode_frame(out, kind, request_id, meta, data, limits)
    }

    /// Appends a frame's header and the meta of `body` to `out`, for a
    /// sender that writes the `data_len` data bytes from its own buffers
    /// (no copy of the data behind the header).
    pub fn head(
        &mut self,
        out: &mut Vec<u8>,
        request_id: u64,
        body: &Body,
        data_len: u64,
        limits: &FrameLimits,
    ) -> Result<(), FrameError> {
        let data_len = u32::try_from(data_len).map_err(|_| FrameError::DataTooLarge {
            len: u32::MAX,
            limit: limits.max_data_bytes,
        })?;
        let (kind, meta) = self.meta(body);
        let header = FrameHeader::for_meta(kind, request_id, meta, data_len);
        header.check_limits(limits)?;
        out.reserve(frame::HEADER_BYTES + meta.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(meta);
        Ok(())
    }
}

/// Parses a frame's meta (already CRC-checked against `header`) and checks
/// that it holds the kind the header announced.
pub fn decode_meta<'a>(header: &FrameHeader, meta: &'a [u8]) -> Result<BodyRef<'a>, MessageError> {
    let message = MessageRef::read_as_root(meta)?;
    let body = message.body()?.ok_or(MessageError::MissingBody)?;
    let found = MessageKind::of_body_ref(&body);
    if found != header.kind {
        return Err(MessageError::KindMismatch {
            header: header.kind,
            meta: found,
        });
    }
    Ok(body)
}

/// Decodes one complete frame from `bytes`: header, meta CRC, body.
/// Returns the body, the data section and the bytes consumed.
pub fn decode_frame_body<'a>(
    bytes: &'a [u8],
    limits: &FrameLimits,
) -> Result<(FrameHeader, BodyRef<'a>, &'a [u8], usize), MessageError> {
    let frame = frame::decode_frame(bytes, limits)?;
    let body = decode_meta(&frame.header, frame.meta)?;
    Ok((frame.header, body, frame.data, frame.encoded_len()))
}

/// An error reply body with a typed code and human context.
pub fn error_body(code: ErrorCode, message: impl Into<String>) -> Body {
    Body::ErrorReply(Box::new(ErrorReply {
        code,
        message: Some(message.into()),
        ..ErrorReply::default()
    }))
}
