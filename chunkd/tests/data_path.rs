//! Writes, appends and reads of odd sizes and offsets against a real
//! chunkd process, checked against an in-memory model of the chunk.

mod support;

use ringfs_wire::checksum::BLOCK_BYTES;
use ringfs_wire::msg::{Body, ErrorCode};
use support::*;

const CHUNK: u64 = 4 << 20;
const B: u64 = BLOCK_BYTES as u64;

fn check_reads(client: &mut ringfs_client::conn::Conn, handle: u64, model: &[u8]) {
    let len = model.len() as u64;
    let probes = [
        (0, 1),
        (0, len),
        (1, B),
        (B - 1, 2),
        (B, B),
        (B + 1, 3 * B),
        (len.saturating_sub(1), 1),
        (len / 2, len),
    ];
    for (off, n) in probes {
        if off >= len {
            continue;
        }
        let got =
            read(client, handle, off, n as u32).unwrap_or_else(|e| panic!("read {off}+{n}: {e:?}"));
        let end = (off + n).min(len);
        assert_eq!(got, &model[off as usize..end as usize], "read {off}+{n}");
    }
}

#[test]
fn writes_of_odd_sizes_and_offsets_read_back() {
    let env = Env::new(CHUNK);
    let cs = env.start(&[env.data_dir("d0")], &["--cores", "2"]);
    let handle = 0x10;
    let (_master, mut client) = primary_chunk(&env, &cs, handle);
    let mut model: Vec<u8> = Vec::new();
    let cases: &[(u64, usize)] = &[
        (0, 1),
        (1, 100),
        (B - 1, 2),
        (B, BLOCK_BYTES),
        (B + 1, BLOCK_BYTES - 1),
        (3 * B - 7, 3 * BLOCK_BYTES + 11),
        (10 * B, 1 << 20),
        // A hole: past the current end.
        (40 * B + 123, 5000),
        (5, 300_000),
        (CHUNK - 10, 10),
    ];
    for (i, &(off, n)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 1, n);
        let r = write(&mut client, 1, handle, 1, off, &data);
        expect_ok(&r);
        let end = off as usize + n;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
        check_reads(&mut client, handle, &model);
    }
    // Past the chunk end is refused with a typed error.
    let r = write(&mut client, 1, handle, 1, CHUNK - 1, &[1, 2]);
    assert_eq!(r.error_code(), Some(ErrorCode::OutOfRange));
    // Data that does not match its CRCs is refused before anything is written.
    let mut conn = env.conn(&cs.addr, ringfs_wire::msg::PeerKind::Client);
    let data = pattern(99, 1000);
    let mut body = ringfs_wire::msg::WriteChunk {
        epoch: 1,
        handle,
        version: 1,
        offset: 0,
        length: 1000,
        inline: true,
        block_crcs: Some(vec![0xdead_beef]),
        ..Default::default()
    };
    let r = conn
        .call(&Body::WriteChunk(Box::new(body.clone())), &data)
        .unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::ChecksumMismatch));
    body.block_crcs = Some(vec![]);
    let r = conn.call(&Body::WriteChunk(Box::new(body)), &data).unwrap();
    assert_eq!(r.error_code(), Some(ErrorCode::BadRequest));
    check_reads(&mut client, handle, &model);
    // Still the same after a restart.
    drop(client);
    let mut cs = cs;
    cs.restart(&env);
    let mut client = env.conn(&cs.addr, ringfs_wire::msg::PeerKind::Client);
    check_reads(&mut client, handle, &model);
}

#[test]
fn record_appends_land_whole_and_full_chunks_pad() {
    let env = Env::new(CHUNK);
    let cs = env.start(&[env.data_dir("d0")], &["--cores", "1"]);
    let handle = 0x20;
    let (_master, mut client) = primary_chunk(&env, &cs, handle);
    let mut model = Vec::new();
    let sizes = [
        1usize,
        7,
        4096,
        BLOCK_BYTES - 3,
        BLOCK_BYTES,
        3,
        200_000,
        1 << 20,
        17,
    ];
    for (i, &n) in sizes.iter().cycle().take(40).enumerate() {
        let data = pattern(1000 + i as u64, n);
        let r = append(&mut client, 1, handle, 1, &data);
        match &r.body {
            Body::AppendChunkReply(a) => {
                assert_eq!(a.offset, model.len() as u64, "append {i} offset");
                model.extend_from_slice(&data);
            }
            Body::ErrorReply(e) if e.code == ErrorCode::ChunkFull => {
                assert!(
                    model.len() as u64 + n as u64 > CHUNK,
                    "ChunkFull only when it does not fit"
                );
                model.resize(CHUNK as usize, 0);
                break;
            }
            other => panic!("append {i}: {other:?}"),
        }
    }
    assert_eq!(model.len() as u64, CHUNK, "the appends fill the chunk");
    check_reads(&mut client, handle, &model);
    // A full chunk refuses further appends the same way.
    let r = append(&mut client, 1, handle, 1, &[1]);
    assert_eq!(r.error_code(), Some(ErrorCode::ChunkFull));
}
