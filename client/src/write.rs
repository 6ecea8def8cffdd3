//! Sequential file writes (DESIGN §5, §6). The file is cut into pieces that
//! never straddle a chunk; each piece is pushed along its chunk's replica
//! chain, then the primary is told to write it, and the primary answers once
//! every replica has it durably. Several pieces, of one or several chunks,
//! are in flight at once. A failed piece asks the master for a fresh lease
//! (which bumps the version and drops the failed replica) and is sent again:
//! rewriting the same bytes at the same offset is harmless.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfs_wire::checksum::block_checksums;
use ringfs_wire::msg::*;
use tokio::task::JoinSet;

use crate::client::{Client, unexpected};
use crate::error::{Error, Result};

/// A chunk's location as the writer last learned it.
#[derive(Clone)]
struct Slot {
    location: ChunkLocation,
    learned_at: Instant,
}

impl Slot {
    fn lease_fresh(&self) -> bool {
        crate::locations::lease_fresh(&self.location, self.learned_at)
    }
}

/// Chunks of one file being written: allocated once, shared by the pieces.
#[derive(Default)]
struct Slots {
    by_index: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<Slot>>>>>,
    /// Chunks allocated so far. The master allocates a file's chunks in
    /// index order, and pieces of a later chunk may get going first.
    allocated: tokio::sync::Mutex<u64>,
}

impl Slots {
    fn slot(&self, index: u64) -> Arc<tokio::sync::Mutex<Option<Slot>>> {
        self.by_index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(index)
            .or_default()
            .clone()
    }
}

/// An open file being written from the start. `close` makes it complete.
pub struct Writer {
    client: Client,
    path: String,
    inode: u64,
    /// Bytes not yet cut into a piece.
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    in_flight: JoinSet<Result<u64>>,
    slots: Arc<Slots>,
    /// Bytes acknowledged by every replica.
    acked_bytes: u64,
    /// The first piece's failure. Once set, nothing more is sent and every
    /// call returns it: the failed piece's bytes will never be
    /// acknowledged, so the file can only stay incomplete.
    failed: Option<Error>,
}

impl Client {
    /// Creates (or truncates, unless `exclusive`) `path` and opens it for writing.
    pub async fn writer(&self, path: &str, o: crate::client::CreateOptions) -> Result<Writer> {
        let attr = self.create(path, o).await?;
        Ok(Writer {
            client: self.clone(),
            path: path.to_owned(),
            inode: attr.inode,
            buf: Vec::new(),
            buf_offset: 0,
            in_flight: JoinSet::new(),
            slots: Arc::default(),
            acked_bytes: 0,
            failed: None,
        })
    }
}

impl Writer {
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Bytes every replica has acknowledged so far.
    pub fn acked_bytes(&self) -> u64 {
        self.acked_bytes
    }

    /// Queues `data`; returns once it is in flight (not yet durable).
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.check_failed()?;
        while !data.is_empty() {
            let want = self.next_piece_len() - self.buf.len();
            let take = want.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.next_piece_len() {
                self.send_piece().await?;
            }
        }
        Ok(())
    }

    /// Length of the piece starting at `buf_offset`: a full piece, cut
    /// short at the chunk's end so a piece never spans two chunks.
    fn next_piece_len(&self) -> usize {
        let chunk = self.client.chunk_size_bytes();
        let to_chunk_end = chunk - self.buf_offset % chunk;
        (self.client.options().piece_bytes as u64).min(to_chunk_end) as usize
    }

    /// Takes in the pieces that finished (failing on the first error) and
    /// returns the bytes acknowledged by every replica so far.
    pub fn progress(&mut self) -> Result<u64> {
        self.check_failed()?;
        while let Some(done) = self.in_flight.try_join_next() {
            self.reaped(done)?;
        }
        Ok(self.acked_bytes)
    }

    async fn send_piece(&mut self) -> Result<()> {
        self.progress()?;
        while self.in_flight.len() >= self.client.options().pieces_in_flight {
            self.reap_one().await?;
        }
        let data = std::mem::take(&mut self.buf);
        let offset = self.buf_offset;
        self.buf_offset += data.len() as u64;
        let piece = Piece {
            client: self.client.clone(),
            slots: self.slots.clone(),
            what: self.path.clone(),
            inode: self.inode,
            offset,
            data,
        };
        self.in_flight.spawn(piece.send());
        Ok(())
    }

    async fn reap_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            Some(done) => self.reaped(done),
            None => Ok(()),
        }
    }

    fn reaped(&mut self, done: Result<Result<u64>, tokio::task::JoinError>) -> Result<()> {
        let failed = match done {
            Ok(Ok(n)) => {
                self.acked_bytes += n;
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(join) => Error::Protocol {
                what: self.path.clone(),
                reason: format!("write task failed: {join}"),
            },
        };
        // The file stays incomplete: a reader never mistakes it for whole.
        self.in_flight.abort_all();
        self.failed = Some(failed.clone());
        Err(failed)
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Sends what is buffered, waits until every byte is durable on every
    /// replica, then marks the file complete with its final length.
    pub async fn close(mut self) -> Result<Attr> {
        self.check_failed()?;
        if !self.buf.is_empty() {
            self.send_piece().await?;
        }
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        let length = self.buf_offset;
        assert_eq!(self.acked_bytes, length, "every piece acknowledged");
        self.client.complete(&self.path, self.inode, length).await
    }
}

struct Piece {
    client: Client,
    slots: Arc<Slots>,
    what: String,
    inode: u64,
    /// File offset.
    offset: u64,
    data: Vec<u8>,
}

impl Piece {
    async fn send(self) -> Result<u64> {
        let chunk_size = self.client.chunk_size_bytes();
        let index = self.offset / chunk_size;
        let chunk_offset = self.offset % chunk_size;
        assert!(
            chunk_offset + self.data.len() as u64 <= chunk_size,
            "a piece spans chunks"
        );
        let crcs = block_checksums(&self.data);
        let attempts = self.client.options().write_attempts;
        let mut failed_version = None;
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                let pause = Duration::from_millis(50 << attempt.min(5));
                tokio::time::sleep(pause).await;
            }
            let location = self.location(index, failed_version.take()).await?;
            match self.try_once(&location, chunk_offset, &crcs).await {
                Ok(()) => return Ok(self.data.len() as u64),
                Err((e, bad_node)) => {
                    if let Some(node) = bad_node {
                        // Out of the chain: the next lease leaves it out
                        // and re-replication replaces it.
                        self.client
                            .report_bad_replica(location.handle, node, ErrorCode::ReplicaFailed)
                            .await;
                    }
                    tracing::debug!(what = %self.what, index, attempt, error = %e, "write piece failed; retrying with a fresh lease");
                    if !retryable(&e) {
                        return Err(e);
                    }
                    failed_version = Some(location.version);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::unavailable(&self.what, "write gave up", Duration::ZERO)))
    }

    /// The chunk's location with a live lease: allocated on first use,
    /// renewed when near its end or when an attempt at `failed_version`
    /// failed (unless another piece already renewed it).
    async fn location(&self, index: u64, failed_version: Option<u64>) -> Result<ChunkLocation> {
        self.allocate_through(index).await?;
        let slot = self.slots.slot(index);
        let mut slot = slot.lock().await;
        let what = format!("{} chunk {index}", self.what);
        let Some(current) = slot.as_ref() else {
            return Err(Error::Protocol {
                what,
                reason: "the chunk was not allocated".into(),
            });
        };
        if !current.lease_fresh() || failed_version == Some(current.location.version) {
            let handle = current.location.handle;
            let mut location = self.client.get_lease(&what, handle).await?;
            location.index = index;
            *slot = Some(Slot {
                location,
                learned_at: Instant::now(),
            });
        }
        let s = slot.as_ref().expect("set above");
        Ok(s.location.clone())
    }

    /// Allocates every chunk up to `index` not allocated yet, in order.
    /// Lock order: `allocated`, then a slot; never the other way round.
    async fn allocate_through(&self, index: u64) -> Result<()> {
        let mut allocated = self.slots.allocated.lock().await;
        while *allocated <= index {
            let next = *allocated;
            let what = format!("{} chunk {next}", self.what);
            let mut location = self.client.allocate(&what, self.inode, next).await?;
            location.index = next;
            let slot = self.slots.slot(next);
            let mut slot = slot.lock().await;
            if slot.is_none() {
                *slot = Some(Slot {
                    location,
                    learned_at: Instant::now(),
                });
            }
            *allocated += 1;
        }
        Ok(())
    }

    /// One push and write. On failure, the error and the replica to blame
    /// when one is known (named by the chain, or not reachable).
    async fn try_once(
        &self,
        location: &ChunkLocation,
        chunk_offset: u64,
        crcs: &[u32],
    ) -> Result<(), (Error, Option<u64>)> {
        let replicas = location.replicas.as_deref().unwrap_or_default();
        let Some((primary_node, primary)) = crate::locations::primary_of(location) else {
            let e = Error::unavailable(
                &self.what,
                "the primary is not among the replicas",
                Duration::ZERO,
            );
            return Err((e, None));
        };
        let refused = |e: &ErrorReply| {
            let blame = (e.code == ErrorCode::ReplicaFailed && e.failed_replica != 0)
                .then_some(e.failed_replica);
            (Error::from_reply(&self.what, e), blame)
        };
        let inner = &self.client.inner;
        let timeout = inner.opts.data_call_timeout;
        let length = u32::try_from(self.data.len()).expect("pieces are at most 16 MiB");
        let mut write = WriteChunk {
            req: Some(self.client.next_req()),
            epoch: location.epoch,
            handle: location.handle,
            version: location.version,
            offset: chunk_offset,
            length,
            inline: true,
            data_id: None,
            block_crcs: Some(crcs.to_vec()),
            secondaries: None,
        };
        let data: &[u8] =
            if replicas.len() == 1 || self.data.len() <= inner.opts.inline_write_max_bytes {
                // One replica, or a small piece: the data goes with the write,
                // one round trip; the primary forwards it to the secondaries.
                &self.data
            } else {
                // Data flow apart from control flow: push along the chain,
                // nearest first, then order the write at the primary.
                let data_id = self.client.next_req();
                let first = replicas[0].addr.clone().unwrap_or_default();
                let push = Body::PushData(Box::new(PushData {
                    data_id: Some(data_id),
                    chain: Some(replicas[1..].to_vec()),
                    block_crcs: Some(crcs.to_vec()),
                }));
                let reply = inner
                    .data
                    .call(&first, &push, &self.data, timeout)
                    .await
                    .map_err(|e| (Error::from_conn(&self.what, &e), Some(replicas[0].node_id)))?;
                match reply.body {
                    Body::PushDataReply(r) => {
                        let stored = r.stored_by.unwrap_or_default();
                        if stored.len() != replicas.len() {
                            let missing = replicas
                                .iter()
                                .map(|r| r.node_id)
                                .find(|n| !stored.contains(n));
                            let e = Error::unavailable(
                                &self.what,
                                format!(
                                    "data reached {} of {} replicas",
                                    stored.len(),
                                    replicas.len()
                                ),
                                Duration::ZERO,
                            );
                            return Err((e, missing));
                        }
                    }
                    Body::ErrorReply(e) => return Err(refused(&e)),
                    other => return Err((unexpected(&self.what, &other), None)),
                }
                write.inline = false;
                write.data_id = Some(data_id);
                &[]
            };
        let reply = inner
            .data
            .call(&primary, &Body::WriteChunk(Box::new(write)), data, timeout)
            .await
            .map_err(|e| (Error::from_conn(&self.what, &e), Some(primary_node)))?;
        match reply.body {
            Body::WriteChunkReply(_) => Ok(()),
            Body::ErrorReply(e) => Err(refused(&e)),
            other => Err((unexpected(&self.what, &other), None)),
        }
    }
}

/// Errors a fresh lease and another attempt may cure.
pub(crate) fn retryable(e: &Error) -> bool {
    match e {
        Error::Unavailable { .. } | Error::Corrupt { .. } => true,
        Error::Refused { code, .. } => matches!(
            code,
            ErrorCode::ReplicaFailed
                | ErrorCode::LeaseExpired
                | ErrorCode::NotPrimary
                | ErrorCode::StaleVersion
                | ErrorCode::StaleEpoch
                | ErrorCode::DataIdUnknown
        ),
        // A replica that lost the chunk (or never got it) says NotFound.
        Error::NotFound { .. } => true,
        _ => false,
    }
}
