//! Messages through frames: kinds, round trips, refusal of mismatched kinds.

use ringfs_wire::frame::{FrameLimits, HEADER_BYTES, decode_frame, encode_frame};
use ringfs_wire::message::{Encoder, MessageError, decode_frame_body, decode_meta, error_body};
use ringfs_wire::msg::*;

fn read_request() -> Body {
    Body::ReadChunk(Box::new(ReadChunk {
        handle: 42,
        min_version: 7,
        offset: 65_535,
        length: 1 << 20,
    }))
}

#[test]
fn kinds_are_dense_and_named() {
    for (i, kind) in MessageKind::ALL.iter().enumerate() {
        assert_eq!(*kind as usize, i + 1, "union tags start at 1");
        assert_eq!(MessageKind::from_u16(*kind as u16), Some(*kind));
        assert!(!kind.name().is_empty());
    }
    assert_eq!(MessageKind::from_u16(0), None);
}

#[test]
fn body_round_trip_through_a_frame() {
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    let data = vec![0xabu8; 3000];
    enc.frame(&mut out, 99, &read_request(), &data, &FrameLimits::DATA)
        .unwrap();
    let (header, body, got_data, used) = decode_frame_body(&out, &FrameLimits::DATA).unwrap();
    assert_eq!(header.kind, MessageKind::ReadChunk);
    assert_eq!(header.request_id, 99);
    assert_eq!(got_data, &data[..]);
    assert_eq!(used, out.len());
    let BodyRef::ReadChunk(r) = body else {
        panic!("wrong body {body:?}")
    };
    assert_eq!(r.handle().unwrap(), 42);
    assert_eq!(r.min_version().unwrap(), 7);
    assert_eq!(r.offset().unwrap(), 65_535);
    assert_eq!(r.length().unwrap(), 1 << 20);
    // Owned conversion round-trips too.
    assert_eq!(Body::try_from(body).unwrap(), read_request());
}

#[test]
fn error_replies_carry_typed_codes() {
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    let mut reply = ErrorReply {
        code: ErrorCode::NotLeader,
        message: Some("follower".into()),
        leader_hint: 3,
        leader_addr: Some("127.0.0.1:9400".into()),
        ..Default::default()
    };
    enc.frame(
        &mut out,
        1,
        &Body::ErrorReply(Box::new(reply.clone())),
        b"",
        &FrameLimits::CONTROL,
    )
    .unwrap();
    let (_, body, _, _) = decode_frame_body(&out, &FrameLimits::CONTROL).unwrap();
    let BodyRef::ErrorReply(e) = body else {
        panic!()
    };
    assert_eq!(e.code().unwrap(), ErrorCode::NotLeader);
    assert_eq!(e.leader_hint().unwrap(), 3);
    assert_eq!(e.leader_addr().unwrap(), Some("127.0.0.1:9400"));
    reply.code = ErrorCode::Exists;
    let Body::ErrorReply(built) = error_body(ErrorCode::Exists, "x") else {
        panic!()
    };
    assert_eq!(built.code, ErrorCode::Exists);
}

#[test]
fn header_kind_must_match_the_meta() {
    let mut enc = Encoder::new();
    let (_, meta) = enc.meta(&read_request());
    let meta = meta.to_vec();
    let mut out = Vec::new();
    encode_frame(
        &mut out,
        MessageKind::Ping,
        5,
        &meta,
        b"",
        &FrameLimits::DATA,
    )
    .unwrap();
    let frame = decode_frame(&out, &FrameLimits::DATA).unwrap();
    assert_eq!(
        decode_meta(&frame.header, frame.meta).err(),
        Some(MessageError::KindMismatch {
            header: MessageKind::Ping,
            meta: MessageKind::ReadChunk
        })
    );
}

#[test]
fn garbage_meta_is_malformed_not_a_panic() {
    let mut out = Vec::new();
    let garbage = [0xffu8; 64];
    encode_frame(
        &mut out,
        MessageKind::Ping,
        5,
        &garbage,
        b"",
        &FrameLimits::DATA,
    )
    .unwrap();
    assert!(matches!(
        decode_frame_body(&out, &FrameLimits::DATA),
        Err(MessageError::Malformed(_))
    ));
    assert_eq!(out.len(), HEADER_BYTES + 64);
}

#[test]
fn chunk_commands_nest_in_heartbeat_replies() {
    let reply = Body::HeartbeatReply(Box::new(HeartbeatReply {
        epoch: 4,
        commands: Some(vec![CommandEnvelope {
            command_id: 1,
            command: Some(ChunkCommand::GrantLease(Box::new(GrantLease {
                epoch: 4,
                handle: 10,
                version: 2,
                duration_ms: 60_000,
                secondaries: Some(vec![Replica {
                    node_id: 2,
                    addr: Some("127.0.0.1:9700".into()),
                    rack: None,
                }]),
            }))),
        }]),
        extended_leases: Some(vec![LeaseExtension {
            handle: 11,
            version: 3,
            epoch: 4,
            duration_ms: 59_000,
        }]),
    }));
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    enc.frame(&mut out, 1, &reply, b"", &FrameLimits::CONTROL)
        .unwrap();
    let (_, body, _, _) = decode_frame_body(&out, &FrameLimits::CONTROL).unwrap();
    assert_eq!(Body::try_from(body).unwrap(), reply);
}

#[test]
fn a_head_followed_by_its_data_is_the_whole_frame() {
    let body = Body::Ping(Box::new(ringfs_wire::msg::Ping { sent_at_us: 3 }));
    let data = vec![0x5a_u8; 70_000];
    let mut enc = Encoder::new();
    let mut whole = Vec::new();
    enc.frame(&mut whole, 9, &body, &data, &FrameLimits::DATA)
        .expect("frame");
    let mut head = vec![0xee]; // appended to, not overwritten
    enc.head(&mut head, 9, &body, data.len() as u64, &FrameLimits::DATA)
        .expect("head");
    head.extend_from_slice(&data);
    assert_eq!(&head[1..], &whole[..]);
    // Data over the frame limit is refused before anything is appended.
    let mut refused = Vec::new();
    let too_long = u64::from(FrameLimits::CONTROL.max_data_bytes) + 1;
    assert!(
        enc.head(&mut refused, 9, &body, too_long, &FrameLimits::CONTROL)
            .is_err()
    );
    assert!(
        enc.head(&mut refused, 9, &body, u64::MAX, &FrameLimits::DATA)
            .is_err()
    );
    assert!(refused.is_empty());
}
