//! Clone a chunk from a peer (re-replication, DESIGN §4): pull it in
//! pieces, verify every block against the CRCs the source sent (which the
//! source itself verified before sending), write it into a new data file,
//! and only then switch to it by renaming a new meta file into place. A
//! failure at any step leaves no trace but an orphan data file, removed
//! now or at the next start.

use std::rc::Rc;

use compio::io::AsyncWriteAtExt;
use ringfs_wire::checksum::{BLOCK_BYTES, crc32c};
use ringfs_wire::msg::{Body, CloneChunk, CloneRead};

use crate::chunk::{Chunk, DataFile, LogEnd, write_meta_file};
use crate::dio::align_up;
use crate::error::{ChunkError, ChunkResult};
use crate::meta::{self, ChunkState, MetaBase};
use crate::metrics::ChecksumSource;
use crate::shard::Core;
use crate::store::{self, create_data_file, random_nonzero, remove_chunk_files};

/// Bytes pulled per CloneRead (whole blocks, well under a data frame).
const PIECE_BYTES: u64 = 8 << 20;

pub async fn clone_chunk(core: &Rc<Core>, cmd: &CloneChunk) -> ChunkResult<()> {
    if let Ok(existing) = core.store.get(cmd.handle)
        && existing.version() >= cmd.version
        && existing.state() == ChunkState::Ok
    {
        // Already here (a retried command), or newer: nothing to pull.
        return Ok(());
    }
    // Held to the end: a second clone (or a create) of the handle would
    // write the same temporary meta file.
    let _cloning = core.store.begin_clone(cmd.handle)?;
    let source = cmd
        .source
        .as_ref()
        .and_then(|s| s.addr.clone())
        .ok_or_else(|| ChunkError::BadRequest("CloneChunk without a source address".into()))?;
    let source_node = cmd.source.as_ref().map(|s| s.node_id).unwrap_or(0);
    let dir = core.store.choose_dir()?;
    let data_file_id = random_nonzero()?;
    let size = core.store.chunk_size_bytes;
    let data = create_data_file(&dir, cmd.handle, data_file_id).await?;
    let result = pull(core, cmd, &source, source_node, &data, size).await;
    let (length, crcs, allocated) = match result {
        Ok(v) => v,
        Err(e) => {
            drop(data);
            let path = dir.data_path(cmd.handle, data_file_id);
            let _ = compio::fs::remove_file(&path).await;
            return Err(e);
        }
    };
    data.sync_all()
        .await
        .map_err(|e| ChunkError::io("syncing a cloned chunk", e))?;
    let base = MetaBase {
        handle: cmd.handle,
        chunk_size_bytes: size,
        data_file_id,
        version: cmd.version,
        length_bytes: length,
        state: ChunkState::Ok,
        base_seq: 0,
        log_bytes: core.store.log_bytes,
        crcs,
    };
    // The rename of the meta file is the switch: before it, the old
    // replica (if any) stands; after it, the clone.
    let old = core.store.get(cmd.handle).ok();
    if let Some(old) = &old
        && !Rc::ptr_eq(&old.dir, &dir)
    {
        // The old replica lives on another dir: retire it first, so two
        // dirs never both hold a meta file for the handle.
        old.mark_deleted();
        remove_chunk_files(&old.dir, old.handle, old.data_file_id()).await?;
    }
    let (meta_file, _) = write_meta_file(&dir, &base, &[]).await?;
    let replayed = meta::replay(&base, &[]).map_err(|e| ChunkError::Internal(e.to_string()))?;
    let data = DataFile {
        file: data,
        allocated_bytes: allocated,
    };
    let chunk = Chunk::from_parts(
        dir.clone(),
        &core.store,
        &base,
        replayed,
        data,
        meta_file,
        LogEnd::EMPTY,
    );
    if let Some(replaced) = core.store.install(chunk)
        && Rc::ptr_eq(&replaced.dir, &dir)
    {
        let stale = dir.data_path(replaced.handle, replaced.data_file_id());
        let _ = compio::fs::remove_file(&stale).await;
    }
    Ok(())
}

/// Pulls the whole chunk into `data`; returns its length, its block CRCs
/// and how much of `data` is allocated.
async fn pull(
    core: &Rc<Core>,
    cmd: &CloneChunk,
    source: &str,
    source_node: u64,
    data: &compio::fs::File,
    size: u64,
) -> ChunkResult<(u64, Vec<u32>, u64)> {
    let buffer_bytes = core.pool.buffer_bytes() as u64;
    let mut allocated = 0u64;
    let align = 4096u64;
    let mut crcs: Vec<u32> = Vec::new();
    let mut offset = 0u64;
    let mut length = None;
    // Bounded: each round advances by at least one block or ends.
    for _ in 0..=(size / BLOCK_BYTES as u64) {
        if length.is_some_and(|l| offset >= l) {
            break;
        }
        let want = PIECE_BYTES.min(size - offset);
        let n = want.div_ceil(buffer_bytes) as usize;
        let mut pooled = core
            .pool
            .acquire(n)
            .await
            .map_err(|e| ChunkError::Internal(e.to_string()))?;
        let body = Body::CloneRead(Box::new(CloneRead {
            epoch: cmd.epoch,
            handle: cmd.handle,
            version: cmd.version,
            offset,
            length: want as u32,
        }));
        let (r, _, bufs) = core
            .peers
            .request(source, &body, Vec::new(), 0, pooled.lend())
            .await;
        let failed = |reason: String| ChunkError::ReplicaFailed {
            node: source_node,
            addr: source.to_owned(),
            reason,
        };
        let reply = match r {
            Ok(reply) => reply,
            Err(e) => {
                pooled.restore(bufs);
                return Err(failed(e.to_string()));
            }
        };
        let body = reply.head.owned_body().map_err(|e| failed(e.to_string()));
        let rr = match body {
            Ok(Body::ReadChunkReply(rr)) => rr,
            Ok(Body::ErrorReply(e)) => {
                pooled.restore(bufs);
                return Err(failed(format!(
                    "{:?}: {}",
                    e.code,
                    e.message.unwrap_or_default()
                )));
            }
            Ok(other) => {
                pooled.restore(bufs);
                return Err(failed(format!(
                    "unexpected {:?}",
                    ringfs_wire::msg::MessageKind::of_body(&other)
                )));
            }
            Err(e) => {
                pooled.restore(bufs);
                return Err(e);
            }
        };
        let chunk_length = rr.chunk_length_bytes;
        if chunk_length > size || rr.offset != offset || reply.data_len > want {
            pooled.restore(bufs);
            return Err(failed(format!(
                "reply does not match the request (length {chunk_length}, offset {}, {} bytes)",
                rr.offset, reply.data_len
            )));
        }
        if let Err(why) = check_piece(offset, reply.data_len, chunk_length) {
            pooled.restore(bufs);
            return Err(failed(why));
        }
        length = Some(chunk_length);
        let piece_crcs = rr.block_crcs.unwrap_or_default();
        let got = reply.data_len;
        if piece_crcs.len() as u64 != got.div_ceil(BLOCK_BYTES as u64) {
            pooled.restore(bufs);
            return Err(failed(format!("{} CRCs for {got} bytes", piece_crcs.len())));
        }
        // Verify every block before any of it is written.
        let mut block = 0usize;
        let mut left = got;
        for buf in &bufs {
            let in_buf = (buf.capacity() as u64).min(left) as usize;
            for piece in buf.full()[..in_buf].chunks(BLOCK_BYTES) {
                if crc32c(piece) != piece_crcs[block] {
                    core.metrics().checksum_failure(ChecksumSource::Clone);
                    pooled.restore(bufs);
                    return Err(ChunkError::ChecksumMismatch {
                        handle: cmd.handle,
                        block: offset / BLOCK_BYTES as u64 + block as u64,
                    });
                }
                block += 1;
            }
            left -= in_buf as u64;
        }
        // Write the verified piece, into allocated space (the source's
        // length at once, so a chunk is allocated in one extent run).
        let need = chunk_length.max(offset + got);
        if need > allocated {
            let to = store::next_allocation(allocated, need, size);
            if let Err(e) = store::grow_allocation(data, allocated, to, || {
                format!("a clone of chunk {:#x}", cmd.handle)
            }) {
                pooled.restore(bufs);
                return Err(e);
            }
            allocated = to;
        }
        let mut at = offset;
        let mut left = got;
        let mut back = Vec::with_capacity(bufs.len());
        let mut write_error = None;
        for mut buf in bufs {
            if left == 0 || write_error.is_some() {
                back.push(buf);
                continue;
            }
            let n = (buf.capacity() as u64).min(left);
            let io_len = align_up(n, align) as usize;
            buf.zero_range(n as usize, io_len);
            buf.set_len_bytes(io_len);
            let mut file = data;
            let compio::BufResult(r, buf) = file.write_all_at(buf, at).await;
            back.push(buf);
            if let Err(e) = r {
                write_error = Some(e);
            }
            at += n;
            left -= n;
        }
        pooled.restore(back);
        if let Some(e) = write_error {
            return Err(ChunkError::io("writing a cloned chunk", e));
        }
        crcs.extend_from_slice(&piece_crcs);
        if got == 0 {
            break;
        }
        offset += got;
    }
    let length = length.unwrap_or(0);
    if offset < length || crcs.len() as u64 != ringfs_wire::checksum::block_count(length) {
        return Err(ChunkError::Internal(format!(
            "clone pulled {offset} of {length} bytes"
        )));
    }
    Ok((length, crcs, allocated))
}

/// A piece's CRCs are of whole 64 KiB blocks from its offset, and the
/// clone's CRC table is their concatenation: so every piece must start on
/// a block and be whole blocks, but for the chunk's last, which ends
/// exactly at the chunk's length.
fn check_piece(offset: u64, got: u64, chunk_length: u64) -> Result<(), String> {
    let block = BLOCK_BYTES as u64;
    if !offset.is_multiple_of(block) {
        return Err(format!("piece at {offset} is not 64 KiB aligned"));
    }
    let end = offset.checked_add(got);
    let Some(end) = end.filter(|&end| end <= chunk_length) else {
        return Err(format!(
            "piece of {got} bytes at {offset} runs past the chunk's length {chunk_length}"
        ));
    };
    if !got.is_multiple_of(block) && end != chunk_length {
        return Err(format!(
            "piece of {got} bytes at {offset} is neither whole 64 KiB blocks nor the chunk's end ({chunk_length})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_piece;

    const B: u64 = 64 * 1024;

    #[test]
    fn pieces_must_be_whole_blocks_from_a_block_or_end_the_chunk() {
        // Whole blocks, or a short last piece ending at the length.
        assert!(check_piece(0, 8 * B, 20 * B + 7).is_ok());
        assert!(check_piece(8 * B, 12 * B + 7, 20 * B + 7).is_ok());
        assert!(check_piece(0, 100, 100).is_ok());
        assert!(check_piece(0, 0, 0).is_ok());
        // A short piece mid-chunk would shift every later block.
        assert!(check_piece(0, 8 * B - 1, 20 * B).is_err());
        // So would an unaligned offset, however it came about.
        assert!(check_piece(B + 1, B, 20 * B).is_err());
        assert!(check_piece(100, 0, 100).is_err());
        // Past the length the source itself announced.
        assert!(check_piece(0, 2 * B, B).is_err());
        assert!(check_piece(u64::MAX - B + 1, 2 * B, u64::MAX).is_err());
    }
}
