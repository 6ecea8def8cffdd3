//! Verified reads (DESIGN §3, §6). Requests are widened to whole 64 KiB
//! blocks so every received block can be checked against the CRC32C the
//! chunkserver sends with it; nothing unverified reaches the caller. A
//! replica that errs or sends a bad block is skipped (and a bad one reported
//! to the master); when every replica failed, the locations are fetched
//! again once, since the master may have moved the chunk meanwhile.

use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use ringfs_wire::checksum::{BLOCK_BYTES, block_count, crc32c};
use ringfs_wire::msg::*;

use crate::client::{Client, unexpected};
use crate::error::{Error, Result};
use crate::locations::FileChunks;

const BLOCK: u64 = BLOCK_BYTES as u64;

/// An open file for reading: its chunk locations and its length.
pub struct Reader {
    client: Client,
    what: String,
    pub attr: Attr,
    chunks: FileChunks,
    length_bytes: u64,
}

impl Client {
    /// Opens `path` for reading. A complete file's length is the one its
    /// writer closed it with; an incomplete one (written to, or appended to
    /// by record appends) reads up to the end of its last chunk's data.
    pub async fn reader(&self, path: &str) -> Result<Reader> {
        let attr = self.stat(path).await?;
        if attr.kind == InodeKind::Directory {
            return Err(Error::IsDirectory { what: path.into() });
        }
        // Cached locations serve a closed file they match; a file still
        // being written or appended to changes under us.
        let cached = self.inner.cache.get(attr.inode).filter(|c| {
            attr.complete
                && c.length_bytes == attr.length_bytes
                && c.chunks.len() as u64 == attr.chunk_count
        });
        let chunks = match cached {
            Some(c) => c,
            None => self.file_chunks(path, attr.inode).await?,
        };
        let mut reader = Reader {
            client: self.clone(),
            what: path.to_owned(),
            length_bytes: attr.length_bytes,
            attr,
            chunks,
        };
        if !reader.attr.complete {
            reader.length_bytes = reader.incomplete_length().await?;
        }
        Ok(reader)
    }

    /// The file's chunk list from the master; the cache is refreshed with it.
    pub(crate) async fn file_chunks(&self, what: &str, inode: u64) -> Result<FileChunks> {
        let mut chunks = Vec::new();
        let mut length_bytes = 0;
        // Pages of at most 10,000 chunks (640 TB of 64 MiB chunks each);
        // bounded by the file's own chunk count.
        for _ in 0..1_000_000 {
            let page = self.get_chunks(what, inode, chunks.len() as u64).await?;
            length_bytes = page.length_bytes;
            let got = page.chunks.unwrap_or_default();
            let done = got.is_empty();
            chunks.extend(got);
            if done || chunks.len() as u64 * self.chunk_size_bytes() >= length_bytes {
                break;
            }
        }
        let f = FileChunks {
            length_bytes,
            chunks,
        };
        self.inner.cache.put(inode, f.clone());
        Ok(f)
    }
}

impl Reader {
    pub fn len(&self) -> u64 {
        self.length_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.length_bytes == 0
    }

    /// Every chunk before the last is full; the last one's length is what
    /// its replicas hold.
    async fn incomplete_length(&self) -> Result<u64> {
        let Some(last) = self.chunks.chunks.last() else {
            return Ok(0);
        };
        let chunk_size = self.client.chunk_size_bytes();
        // The master's chunk list is trusted for its count, not for
        // arithmetic: a count that overflows is a protocol error.
        let before = (self.chunks.chunks.len() as u64 - 1)
            .checked_mul(chunk_size)
            .ok_or_else(|| Error::Protocol {
                what: self.what.clone(),
                reason: format!(
                    "{} chunks of {chunk_size} bytes overflow a file length",
                    self.chunks.chunks.len()
                ),
            })?;
        let mut best = None;
        for r in last.replicas.as_deref().unwrap_or_default() {
            let Some(addr) = r.addr.as_deref() else {
                continue;
            };
            let body = Body::GetChunkInfo(Box::new(GetChunkInfo {
                handle: last.handle,
            }));
            let timeout = self.client.options().data_call_timeout;
            if let Ok(reply) = self.client.inner.data.call(addr, &body, &[], timeout).await
                && let Body::ChunkInfoReply(info) = reply.body
                && let Some(report) = info.report
                && report.version >= last.version
            {
                // A replica that claims more than a chunk holds is at fault
                // like one that does not answer: the others decide.
                let n = match reported_chunk_length(report.length_bytes, chunk_size) {
                    Ok(n) => n,
                    Err(reason) => {
                        tracing::debug!(what = %self.what, node = r.node_id, %reason, "replica's chunk length refused; asking the next");
                        continue;
                    }
                };
                // Replicas agree on acknowledged data; the longest holds
                // everything any of them acknowledged.
                best = Some(best.unwrap_or(0).max(n));
            }
        }
        match best {
            Some(n) => before.checked_add(n).ok_or_else(|| Error::Protocol {
                what: self.what.clone(),
                reason: format!("{before} bytes before the last chunk and {n} in it overflow"),
            }),
            None if last.replicas.as_deref().unwrap_or_default().is_empty() => Ok(before),
            None => Err(Error::unavailable(
                &self.what,
                "no replica of the last chunk answered",
                Duration::ZERO,
            )),
        }
    }

    /// Reads `[offset, offset + len)` clipped to the file, verified.
    pub async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.length_bytes);
        if offset >= end {
            return Ok(Vec::new());
        }
        let parts: Vec<Vec<u8>> = stream::iter(self.pieces(offset, end))
            .map(|(o, n)| self.read_piece(o, n))
            .buffered(self.client.options().pieces_in_flight)
            .try_collect()
            .await?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        assert_eq!(out.len() as u64, end - offset);
        Ok(out)
    }

    /// Streams the whole file into `sink` in order, `pieces_in_flight`
    /// pieces at a time; `progress` sees the bytes delivered so far.
    pub async fn copy_to<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        sink: &mut W,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let mut pieces = stream::iter(self.pieces(0, self.length_bytes))
            .map(|(o, n)| self.read_piece(o, n))
            .buffered(self.client.options().pieces_in_flight);
        let mut done = 0u64;
        while let Some(piece) = pieces.next().await {
            let piece = piece?;
            sink.write_all(&piece).await.map_err(|e| Error::Protocol {
                what: self.what.clone(),
                reason: format!("writing out: {e}"),
            })?;
            done += piece.len() as u64;
            progress(done);
        }
        sink.flush().await.map_err(|e| Error::Protocol {
            what: self.what.clone(),
            reason: format!("writing out: {e}"),
        })?;
        Ok(done)
    }

    /// `[offset, end)` cut into pieces that stay inside one chunk.
    fn pieces(&self, offset: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + use<> {
        pieces(
            offset,
            end,
            self.client.chunk_size_bytes(),
            self.client.options().piece_bytes as u64,
        )
    }

    /// One piece inside one chunk, from the first replica that serves it
    /// intact; once more with fresh locations if none did.
    async fn read_piece(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        /// Bound on the location lookups of one piece.
        const LOCATION_ROUNDS_MAX: u32 = 12;
        /// Wait before asking again when no replica was listed.
        const UNLOCATED_PAUSE: Duration = Duration::from_millis(250);
        let chunk_size = self.client.chunk_size_bytes();
        let index = offset / chunk_size;
        let chunk_offset = offset % chunk_size;
        let mut location = self.chunks.chunks.get(index as usize).cloned();
        let mut last_problem = String::from("no replica");
        // Rounds in which replicas were listed and all failed: two (the
        // second with fresh locations). Rounds in which the master listed
        // none wait a little: a master that just took over learns where
        // chunks are with the chunkservers' next heartbeats.
        let mut failed_rounds = 0;
        for round in 0..LOCATION_ROUNDS_MAX {
            if round > 0 {
                if location
                    .as_ref()
                    .is_some_and(|l| l.replicas.as_deref().unwrap_or_default().is_empty())
                {
                    tokio::time::sleep(UNLOCATED_PAUSE).await;
                }
                // Maybe stale: ask the master again.
                let fresh = self.client.file_chunks(&self.what, self.attr.inode).await?;
                location = fresh.chunks.get(index as usize).cloned();
            }
            let Some(loc) = &location else {
                // A chunk never written (a hole) reads as zeros.
                if round == 0 {
                    continue;
                }
                return Ok(vec![0; len as usize]);
            };
            let replicas = loc.replicas.as_deref().unwrap_or_default();
            if replicas.is_empty() {
                last_problem = "the master knows no replica yet".into();
                self.client.inner.cache.forget(self.attr.inode);
                continue;
            }
            for r in replicas {
                match self.read_replica(loc, r, chunk_offset, len).await {
                    Ok(data) => return Ok(data),
                    Err((e, bad)) => {
                        tracing::debug!(what = %self.what, node = r.node_id, error = %e, "replica read failed; trying the next");
                        if let Some(reason) = bad {
                            self.client
                                .report_bad_replica(loc.handle, r.node_id, reason)
                                .await;
                        }
                        last_problem = e.to_string();
                    }
                }
            }
            self.client.inner.cache.forget(self.attr.inode);
            failed_rounds += 1;
            if failed_rounds == 2 {
                break;
            }
        }
        Err(Error::Corrupt {
            what: format!("{} chunk {index}", self.what),
            reason: format!("no replica served it intact; last: {last_problem}"),
        })
    }

    /// Reads from one replica and verifies every block. On failure, the
    /// error and, when the replica itself is at fault, why to report it.
    async fn read_replica(
        &self,
        loc: &ChunkLocation,
        replica: &Replica,
        chunk_offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, (Error, Option<ErrorCode>)> {
        let what = format!(
            "{} chunk {} on node {}",
            self.what, loc.index, replica.node_id
        );
        let addr = replica.addr.as_deref().unwrap_or_default();
        let start = chunk_offset / BLOCK * BLOCK;
        let end = (chunk_offset + len).div_ceil(BLOCK) * BLOCK;
        let body = Body::ReadChunk(Box::new(ReadChunk {
            handle: loc.handle,
            min_version: loc.version,
            offset: start,
            length: u32::try_from(end - start).expect("pieces are at most 16 MiB"),
        }));
        let timeout = self.client.options().data_call_timeout;
        let reply = self
            .client
            .inner
            .data
            .call(addr, &body, &[], timeout)
            .await
            .map_err(|e| (Error::from_conn(&what, &e), None))?;
        let r = match reply.body {
            Body::ReadChunkReply(r) => r,
            Body::ErrorReply(e) => {
                let report = matches!(e.code, ErrorCode::ChecksumMismatch | ErrorCode::Corrupt)
                    .then_some(e.code);
                return Err((Error::from_reply(&what, &e), report));
            }
            other => return Err((unexpected(&what, &other), None)),
        };
        let data = reply.data;
        let crcs = r.block_crcs.unwrap_or_default();
        let wanted = (end.min(r.chunk_length_bytes)).saturating_sub(start);
        if r.offset != start || data.len() as u64 != wanted {
            return Err((
                Error::Protocol {
                    what,
                    reason: format!(
                        "asked for [{start}, {end}), got {} bytes at {} (chunk length {})",
                        data.len(),
                        r.offset,
                        r.chunk_length_bytes
                    ),
                },
                None,
            ));
        }
        if crcs.len() as u64 != block_count(data.len() as u64) {
            return Err((
                Error::Protocol {
                    what,
                    reason: format!("{} checksums for {} bytes", crcs.len(), data.len()),
                },
                None,
            ));
        }
        for (i, (block, crc)) in data.chunks(BLOCK_BYTES).zip(&crcs).enumerate() {
            if crc32c(block) != *crc {
                let block_index = start / BLOCK + i as u64;
                return Err((
                    Error::Corrupt {
                        what,
                        reason: format!("block {block_index} failed its checksum"),
                    },
                    Some(ErrorCode::ChecksumMismatch),
                ));
            }
        }
        // The caller's range inside the verified blocks; past the chunk's
        // data (a short last chunk of an incomplete file) reads as zeros.
        let from = (chunk_offset - start) as usize;
        let mut out = vec![0u8; len as usize];
        let have = data.len().saturating_sub(from).min(len as usize);
        if have < len as usize && self.attr.complete {
            // A closed file's chunks hold all of its bytes: a short replica
            // is missing acknowledged data, so another one must serve.
            return Err((
                Error::Protocol {
                    what,
                    reason: format!("holds {} bytes of chunk, {} needed", data.len(), len),
                },
                None,
            ));
        }
        out[..have].copy_from_slice(&data[from..from + have]);
        Ok(out)
    }
}

/// `[offset, end)` cut into pieces of at most `piece` bytes that stay
/// inside one `chunk`-byte chunk. Lazy: a file's length may come from a
/// replica's report, and a list of its pieces would be as long as the
/// file is large; the readers take a few at a time.
fn pieces(offset: u64, end: u64, chunk: u64, piece: u64) -> impl Iterator<Item = (u64, u64)> {
    // Zero sizes would never advance; the options refuse them, this keeps
    // the iterator finite regardless.
    let (chunk, piece) = (chunk.max(1), piece.max(1));
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let to_chunk_end = chunk - at % chunk;
        let n = piece.min(to_chunk_end).min(end - at);
        let this = (at, n);
        at += n;
        Some(this)
    })
}

/// A replica's reported length of a chunk, refused past the chunk size: a
/// replica cannot hold more, and the file's length is built on it.
fn reported_chunk_length(length_bytes: u64, chunk_size: u64) -> std::result::Result<u64, String> {
    if length_bytes > chunk_size {
        return Err(format!(
            "reports {length_bytes} bytes in a chunk of {chunk_size}"
        ));
    }
    Ok(length_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 64 << 20;
    const PIECE: u64 = 4 << 20;

    #[test]
    fn pieces_stay_inside_chunks_and_cover_the_range() {
        let got: Vec<_> = pieces(CHUNK - 100, CHUNK + PIECE + 5, CHUNK, PIECE).collect();
        assert_eq!(
            got,
            vec![(CHUNK - 100, 100), (CHUNK, PIECE), (CHUNK + PIECE, 5)]
        );
        assert_eq!(pieces(10, 10, CHUNK, PIECE).count(), 0);
        assert_eq!(pieces(0, 1, 0, 0).collect::<Vec<_>>(), vec![(0, 1)]);
    }

    #[test]
    fn pieces_of_a_huge_length_are_made_as_they_are_taken() {
        // The largest length a file can claim: no list of its pieces is
        // built, only the ones taken.
        let mut all = pieces(0, u64::MAX, CHUNK, PIECE);
        assert_eq!(all.next(), Some((0, PIECE)));
        assert_eq!(all.next(), Some((PIECE, PIECE)));
        let last = pieces(u64::MAX - 3, u64::MAX, CHUNK, PIECE).collect::<Vec<_>>();
        assert_eq!(last, vec![(u64::MAX - 3, 3)]);
    }

    #[test]
    fn a_chunk_length_past_the_chunk_size_is_refused() {
        assert_eq!(reported_chunk_length(0, CHUNK), Ok(0));
        assert_eq!(reported_chunk_length(CHUNK, CHUNK), Ok(CHUNK));
        let e = reported_chunk_length(CHUNK + 1, CHUNK).unwrap_err();
        assert!(e.contains(&(CHUNK + 1).to_string()), "{e}");
        assert!(reported_chunk_length(u64::MAX, CHUNK).is_err());
    }
}
