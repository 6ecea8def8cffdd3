//! Writes valid frames and metas as seed inputs for the fuzz targets:
//! `cargo run -p ringfs-wire --example fuzz_seeds` (from the repository root).

use ringfs_wire::frame::FrameLimits;
use ringfs_wire::message::{Encoder, error_body};
use ringfs_wire::msg::*;

fn main() -> std::io::Result<()> {
    let bodies = [
        Body::ReadChunk(Box::new(ReadChunk {
            handle: 1,
            min_version: 2,
            offset: 65_536,
            length: 4096,
        })),
        error_body(ErrorCode::NotLeader, "seed"),
        Body::Heartbeat(Box::new(Heartbeat {
            node_id: 3,
            added: Some(vec![ChunkReport {
                handle: 1,
                version: 2,
                length_bytes: 3,
                state: ReplicaState::Ok,
            }]),
            ..Default::default()
        })),
        Body::Hello(Box::new(Hello {
            protocol_version: 1,
            cluster_id: Some("fuzz".into()),
            peer_kind: PeerKind::Client,
            node_id: 0,
            client_nonce: Some(vec![5; 32]),
        })),
        Body::ListDirReply(Box::new(ListDirReply {
            entries: Some(vec![DirEntry {
                name: Some("a".into()),
                attr: Some(Box::new(Attr::default())),
            }]),
            more: true,
            stamp: None,
        })),
    ];
    let mut enc = Encoder::new();
    for (i, body) in bodies.iter().enumerate() {
        let mut frame = Vec::new();
        enc.frame(&mut frame, i as u64, body, b"data", &FrameLimits::CONTROL)
            .expect("seed within limits");
        write("frame_decode", i, &frame)?;
        let (_, meta) = enc.meta(body);
        write("message_decode", i, meta)?;
        if let Body::Hello(_) = body {
            write("handshake", i, meta)?;
        }
    }
    Ok(())
}

fn write(target: &str, i: usize, bytes: &[u8]) -> std::io::Result<()> {
    let dir = std::path::Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("seed-{i}")), bytes)
}
