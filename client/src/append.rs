//! GFS record append (DESIGN §5): many clients append records to one file;
//! the primary of the file's last chunk picks each record's offset, so every
//! record lands whole, at least once (a retry after an unclear failure may
//! land it twice; readers frame their records to tell). A record that does
//! not fit pads the chunk and answers `ChunkFull`; the appender then moves
//! to the next chunk, allocating it if nobody has yet.

use std::time::{Duration, Instant};

use ringfs_wire::checksum::block_checksums;
use ringfs_wire::msg::*;

use crate::client::{Client, FRAME_DATA_BYTES_MAX, unexpected};
use crate::error::{Error, Result};
use crate::write::retryable;

/// Attempts per record: chunk changes plus retries after failures.
pub const APPEND_ATTEMPTS_MAX: u32 = 16;

/// Appends records to one file. One appender per task; many appenders (in
/// this process or others) may append to the same file at once.
pub struct Appender {
    client: Client,
    path: String,
    inode: u64,
    /// The chunk appended to last, with when its lease was learned.
    current: Option<(ChunkLocation, Instant)>,
}

impl Client {
    /// An appender for an existing file.
    pub async fn appender(&self, path: &str) -> Result<Appender> {
        let attr = self.stat(path).await?;
        if attr.kind == InodeKind::Directory {
            return Err(Error::IsDirectory { what: path.into() });
        }
        Ok(Appender {
            client: self.clone(),
            path: path.to_owned(),
            inode: attr.inode,
            current: None,
        })
    }

    /// The largest record `append` takes: a quarter chunk, as in GFS, so
    /// padding wastes at most a quarter of the space.
    pub fn record_bytes_max(&self) -> usize {
        ((self.chunk_size_bytes() / 4) as usize).min(FRAME_DATA_BYTES_MAX)
    }
}

impl Appender {
    /// Appends `record` whole; returns the file offset it landed at.
    pub async fn append(&mut self, record: &[u8]) -> Result<u64> {
        let max = self.client.record_bytes_max();
        if record.is_empty() || record.len() > max {
            return Err(Error::Refused {
                what: self.path.clone(),
                code: ErrorCode::TooLarge,
                reason: format!("a record is 1 to {max} bytes, this one {}", record.len()),
            });
        }
        let crcs = block_checksums(record);
        let mut last = None;
        for attempt in 0..APPEND_ATTEMPTS_MAX {
            let location = self.location().await?;
            match self.try_once(&location, record, &crcs).await {
                Ok(offset) => {
                    let chunk_size = self.client.chunk_size_bytes();
                    return record_file_offset(location.index, chunk_size, offset, record.len())
                        .map_err(|reason| Error::Protocol {
                            what: self.path.clone(),
                            reason,
                        });
                }
                Err(Error::Refused {
                    code: ErrorCode::ChunkFull,
                    ..
                }) => self.next_chunk(&location).await?,
                Err(e) if retryable(&e) => {
                    tracing::debug!(path = %self.path, attempt, error = %e, "append failed; retrying with a fresh lease");
                    // Renew: the next location() call asks for the lease.
                    if let Some((_, at)) = &mut self.current {
                        *at = Instant::now() - Duration::from_secs(3_600);
                    }
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::unavailable(&self.path, "the file kept filling up", Duration::ZERO)
        }))
    }

    /// The last chunk with a live lease, allocating the first chunk of an
    /// empty file.
    async fn location(&mut self) -> Result<ChunkLocation> {
        if let Some((loc, at)) = &self.current
            && crate::locations::lease_fresh(loc, *at)
        {
            return Ok(loc.clone());
        }
        let (index, handle) = match &self.current {
            Some((loc, _)) => (loc.index, Some(loc.handle)),
            None => {
                let chunks = self.client.file_chunks(&self.path, self.inode).await?;
                match chunks.chunks.last() {
                    Some(c) => (c.index, Some(c.handle)),
                    None => (0, None),
                }
            }
        };
        let mut loc = match handle {
            Some(h) => self.client.get_lease(&self.path, h).await?,
            None => self.client.allocate(&self.path, self.inode, 0).await?,
        };
        loc.index = index;
        self.current = Some((loc.clone(), Instant::now()));
        Ok(loc)
    }

    /// `full` answered ChunkFull: move to the chunk after it (allocated by
    /// us, or found if another appender got there first).
    async fn next_chunk(&mut self, full: &ChunkLocation) -> Result<()> {
        let mut loc = self
            .client
            .allocate(&self.path, self.inode, full.index + 1)
            .await?;
        loc.index = full.index + 1;
        self.current = Some((loc, Instant::now()));
        Ok(())
    }

    async fn try_once(&self, loc: &ChunkLocation, record: &[u8], crcs: &[u32]) -> Result<u64> {
        let (_, primary) = crate::locations::primary_of(loc).ok_or_else(|| {
            Error::unavailable(
                &self.path,
                "the primary is not among the replicas",
                Duration::ZERO,
            )
        })?;
        // Records are small next to a chunk: inline to the primary, which
        // forwards them with the order to the secondaries.
        let body = Body::AppendChunk(Box::new(AppendChunk {
            req: Some(self.client.next_req()),
            epoch: loc.epoch,
            handle: loc.handle,
            version: loc.version,
            length: record.len() as u32,
            inline: true,
            data_id: None,
            block_crcs: Some(crcs.to_vec()),
            secondaries: None,
        }));
        let timeout = self.client.options().data_call_timeout;
        let reply = self
            .client
            .inner
            .data
            .call(&primary, &body, record, timeout)
            .await
            .map_err(|e| Error::from_conn(&self.path, &e))?;
        match reply.body {
            Body::AppendChunkReply(r) => Ok(r.offset),
            Body::ErrorReply(e) => Err(Error::from_reply(&self.path, &e)),
            other => Err(unexpected(&self.path, &other)),
        }
    }
}

/// The file offset of a record of `len` bytes that the primary placed at
/// `offset` in chunk `index`. The primary's offset is checked, not
/// trusted: a record that does not end inside its chunk, or a file offset
/// past `u64`, is a protocol error, never a wrapped number.
fn record_file_offset(
    index: u64,
    chunk_size: u64,
    offset: u64,
    len: usize,
) -> std::result::Result<u64, String> {
    let ends_at = offset.checked_add(len as u64);
    if ends_at.is_none_or(|e| e > chunk_size) {
        return Err(format!(
            "the primary placed a {len}-byte record at {offset}, past the end of a {chunk_size}-byte chunk"
        ));
    }
    index
        .checked_mul(chunk_size)
        .and_then(|start| start.checked_add(offset))
        .ok_or_else(|| format!("chunk {index} at offset {offset} is past any file length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 64 << 20;

    #[test]
    fn a_record_offset_must_end_inside_its_chunk() {
        assert_eq!(record_file_offset(0, CHUNK, 0, 10), Ok(0));
        assert_eq!(record_file_offset(2, CHUNK, 5, 10), Ok(2 * CHUNK + 5));
        assert_eq!(
            record_file_offset(1, CHUNK, CHUNK - 10, 10),
            Ok(2 * CHUNK - 10)
        );
        for (index, offset, len) in [
            (0, CHUNK - 9, 10),
            (0, CHUNK, 1),
            (0, u64::MAX, 1),
            (u64::MAX, 0, 1),
            (u64::MAX / CHUNK + 1, 0, 1),
        ] {
            let e = record_file_offset(index, CHUNK, offset, len);
            assert!(e.is_err(), "chunk {index} offset {offset} len {len}: {e:?}");
        }
    }
}
