//! Frame codec and CRC32C micro-benchmarks. Run:
//! `cargo bench -p ringfs-bench --bench wire`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringfs_bench::{data_reply_meta, pattern, typical_control_message};
use ringfs_wire::checksum::{BLOCK_BYTES, block_checksums, crc32c, crc32c_extend, verify_blocks};
use ringfs_wire::frame::{FrameHeader, FrameLimits, HEADER_BYTES};
use ringfs_wire::message::{Encoder, decode_frame_body};
use ringfs_wire::msg::BodyRef;

fn control_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("control_frame");
    group.throughput(Throughput::Elements(1));
    let body = typical_control_message();
    let mut enc = Encoder::new();
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            enc.frame(
                &mut out,
                black_box(7),
                black_box(&body),
                &[],
                &FrameLimits::DATA,
            )
            .unwrap();
            black_box(out.len())
        })
    });
    out.clear();
    enc.frame(&mut out, 7, &body, &[], &FrameLimits::DATA)
        .unwrap();
    group.bench_function("decode", |b| {
        b.iter(|| {
            let (_, body, _, used) =
                decode_frame_body(black_box(&out), &FrameLimits::DATA).unwrap();
            let BodyRef::ReadChunk(r) = body else {
                unreachable!()
            };
            black_box((r.handle().unwrap(), r.offset().unwrap(), used))
        })
    });
    group.finish();
}

/// A 1 MiB data frame as a chunkserver sends it: block CRCs into the meta,
/// header; the data itself goes out by a vectored write, never copied. And as
/// a client receives it: header + meta decoded, every block verified.
fn data_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("data_frame_1MiB");
    let data = pattern(1 << 20);
    group.throughput(Throughput::Bytes(data.len() as u64));
    let mut enc = Encoder::new();
    group.bench_function("encode_with_block_crcs", |b| {
        b.iter(|| {
            let crcs = block_checksums(black_box(&data));
            let (kind, meta) = enc.meta(&data_reply_meta(crcs));
            let header = FrameHeader::for_meta(kind, 1, meta, data.len() as u32);
            black_box((header.encode(), meta.len()))
        })
    });
    let mut frame = Vec::new();
    enc.frame(
        &mut frame,
        1,
        &data_reply_meta(block_checksums(&data)),
        &data,
        &FrameLimits::DATA,
    )
    .unwrap();
    group.bench_function("decode_and_verify", |b| {
        b.iter(|| {
            let (_, body, payload, _) =
                decode_frame_body(black_box(&frame), &FrameLimits::DATA).unwrap();
            let BodyRef::ReadChunkReply(r) = body else {
                unreachable!()
            };
            let crcs: Vec<u32> = r.block_crcs().unwrap().unwrap().iter().collect();
            verify_blocks(payload, &crcs, 0).unwrap();
            black_box(payload.len())
        })
    });
    group.finish();

    // What a receiver does before reading the data into its own buffer.
    let mut group = c.benchmark_group("data_frame_1MiB_header");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_header_and_meta", |b| {
        b.iter(|| {
            let h =
                FrameHeader::decode(black_box(&frame[..HEADER_BYTES]), &FrameLimits::DATA).unwrap();
            let meta = &frame[HEADER_BYTES..HEADER_BYTES + h.meta_len as usize];
            h.verify_meta(meta).unwrap();
            black_box(h.data_len)
        })
    });
    group.finish();
}

fn crc(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    let block = pattern(BLOCK_BYTES);
    group.throughput(Throughput::Bytes(BLOCK_BYTES as u64));
    group.bench_function("block_64KiB", |b| b.iter(|| crc32c(black_box(&block))));
    group.bench_function("crc32c_crate_block_64KiB", |b| {
        b.iter(|| crc32c::crc32c(black_box(&block)))
    });
    let append = pattern(4096);
    group.throughput(Throughput::Bytes(append.len() as u64));
    group.bench_function("extend_4KiB", |b| {
        b.iter(|| crc32c_extend(black_box(0xdead_beef), black_box(&append)))
    });
    group.finish();
}

criterion_group!(benches, control_frames, data_frames, crc);
criterion_main!(benches);
