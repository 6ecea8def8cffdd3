//! `Client`: one logical file system over the master group and the
//! chunkservers. Cheap to clone; every clone shares the links, the location
//! cache and the request-id sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringfs_wire::config::Config;
use ringfs_wire::frame::FrameLimits;
use ringfs_wire::msg::*;

use crate::error::{Error, Result};
use crate::link::Pool;
use crate::locations::LocationCache;
use crate::masters::{Masters, RetryPolicy};
use crate::mux::MuxPool;
use crate::streams::Streams;

/// Largest data section the client sends or asks for in one frame.
pub const FRAME_DATA_BYTES_MAX: usize = 16 << 20;
/// Directory entries asked for per ListDir page.
pub const LIST_PAGE_ENTRIES: u32 = 1_000;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub retry: RetryPolicy,
    /// Bound on one request to a chunkserver (a whole piece travels in it).
    pub data_call_timeout: Duration,
    /// Bytes per write or read request to a chunkserver (a multiple of 64 KiB).
    pub piece_bytes: usize,
    /// Pieces a writer or reader keeps in flight: memory is about
    /// `piece_bytes * pieces_in_flight` per open file.
    pub pieces_in_flight: usize,
    /// Attempts per piece before a write gives up (each after a fresh lease).
    pub write_attempts: u32,
    /// Pieces up to this size go inline with the write to the primary,
    /// which forwards them to the secondaries, instead of being pushed
    /// along the chain first: one round trip instead of two, where the
    /// round trip costs more than the bytes (design note 012).
    pub inline_write_max_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry: RetryPolicy::default(),
            data_call_timeout: Duration::from_secs(30),
            piece_bytes: 4 << 20,
            pieces_in_flight: 8,
            write_attempts: 8,
            inline_write_max_bytes: 128 << 10,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub masters: Masters,
    pub data: Pool,
    pub cache: LocationCache,
    pub opts: ClientOptions,
    pub chunk_size_bytes: u64,
    client_id: u64,
    seq: AtomicU64,
    streams: Streams,
}

/// What `create` should do.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateOptions {
    /// 0: the parent directory's (or the cluster's) default.
    pub replication: u8,
    /// Fail with `Exists` instead of truncating an existing file.
    pub exclusive: bool,
}

impl Client {
    pub fn new(config: &Config, opts: ClientOptions) -> Result<Client> {
        assert!(
            opts.piece_bytes > 0
                && opts
                    .piece_bytes
                    .is_multiple_of(ringfs_wire::checksum::BLOCK_BYTES)
                && opts.piece_bytes <= FRAME_DATA_BYTES_MAX,
            "piece_bytes must be a multiple of 64 KiB up to 16 MiB"
        );
        assert!(opts.pieces_in_flight > 0 && opts.write_attempts > 0);
        let file = &config.file;
        let addrs: Vec<String> = config
            .voters()
            .chain(config.shadows())
            .map(|m| m.client_addr.clone())
            .collect();
        if addrs.is_empty() {
            return Err(Error::Protocol {
                what: "config".into(),
                reason: "no masters configured".into(),
            });
        }
        let control = MuxPool::new(
            config.key.clone(),
            file.cluster_id.clone(),
            FrameLimits::CONTROL,
            opts.retry.attempt_timeout,
        );
        let data = Pool::new(
            config.key.clone(),
            file.cluster_id.clone(),
            FrameLimits::new(
                FrameLimits::CONTROL.max_meta_bytes,
                FRAME_DATA_BYTES_MAX as u32,
            ),
            opts.retry.attempt_timeout,
        );
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| Error::Protocol {
            what: "client id".into(),
            reason: e.to_string(),
        })?;
        Ok(Client {
            inner: Arc::new(Inner {
                masters: Masters::new(addrs, control, opts.retry.clone()),
                data,
                cache: LocationCache::new(),
                chunk_size_bytes: file.chunk_size_bytes,
                // Zero is the "no request id" value on the wire.
                client_id: u64::from_le_bytes(id).max(1),
                seq: AtomicU64::new(1),
                streams: Streams::new(u64::from_le_bytes(id)),
                opts,
            }),
        })
    }

    pub fn chunk_size_bytes(&self) -> u64 {
        self.inner.chunk_size_bytes
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// A fresh id for a chunkserver request or a pushed buffer (metadata
    /// mutations take theirs from a stream: [`Client::mutate`]).
    pub(crate) fn next_req(&self) -> RequestId {
        RequestId {
            client_id: self.inner.client_id,
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub(crate) async fn master(&self, what: &str, body: Body) -> Result<Body> {
        self.inner.masters.call(what, &body).await
    }

    /// Sends the metadata mutation `make` builds around its request id,
    /// retried under that id until answered or the deadline passes, on a
    /// stream no other mutation uses meanwhile (`streams`).
    pub(crate) async fn mutate(
        &self,
        what: &str,
        make: impl FnOnce(Option<RequestId>) -> Body,
    ) -> Result<Body> {
        let mut stream = self.inner.streams.lease().await;
        let body = make(Some(stream.next_req()));
        self.inner.masters.call(what, &body).await
    }

    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<Attr> {
        let make = |req| {
            Body::Mkdir(Box::new(Mkdir {
                req,
                path: Some(path.into()),
                parents,
                mode: 0o755,
                owner: owner(),
            }))
        };
        attr_of(path, self.mutate(path, make).await?)
    }

    pub async fn create(&self, path: &str, o: CreateOptions) -> Result<Attr> {
        let make = |req| {
            Body::Create(Box::new(Create {
                req,
                path: Some(path.into()),
                replication: o.replication,
                exclusive: o.exclusive,
                mode: 0o644,
                owner: owner(),
            }))
        };
        let attr = attr_of(path, self.mutate(path, make).await?)?;
        self.inner.cache.forget(attr.inode);
        Ok(attr)
    }

    pub async fn stat(&self, path: &str) -> Result<Attr> {
        let body = Body::Stat(Box::new(Stat {
            path: Some(path.into()),
            min_applied_index: self.inner.masters.seen_index(),
        }));
        attr_of(path, self.master(path, body).await?)
    }

    /// One page of a directory listing, after `start_after` (exclusive).
    pub async fn list_page(
        &self,
        path: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<(Vec<DirEntry>, bool)> {
        let body = Body::ListDir(Box::new(ListDir {
            path: Some(path.into()),
            start_after: Some(start_after.into()),
            limit,
            min_applied_index: self.inner.masters.seen_index(),
        }));
        match self.master(path, body).await? {
            Body::ListDirReply(r) => Ok((r.entries.unwrap_or_default(), r.more)),
            other => Err(unexpected(path, &other)),
        }
    }

    /// A whole directory listing, page by page, at most `entries_max` entries.
    pub async fn list(&self, path: &str, entries_max: usize) -> Result<Vec<DirEntry>> {
        let mut all = Vec::new();
        let mut after = String::new();
        // Each page is non-empty or the last, so this ends.
        loop {
            let (page, more) = self.list_page(path, &after, LIST_PAGE_ENTRIES).await?;
            if let Some(last) = page.last() {
                after = last.name.clone().unwrap_or_default();
            }
            let empty = page.is_empty();
            all.extend(page);
            if all.len() > entries_max {
                return Err(Error::Refused {
                    what: path.into(),
                    code: ErrorCode::TooLarge,
                    reason: format!("more than {entries_max} entries"),
                });
            }
            if !more || empty {
                return Ok(all);
            }
        }
    }

    pub async fn rename(&self, src: &str, dst: &str, replace: bool) -> Result<()> {
        let make = |req| {
            Body::Rename(Box::new(Rename {
                req,
                src: Some(src.into()),
                dst: Some(dst.into()),
                replace,
            }))
        };
        match self.mutate(src, make).await? {
            Body::Ack(_) | Body::AttrReply(_) => Ok(()),
            other => Err(unexpected(src, &other)),
        }
    }

    /// Moves `path` to the trash; returns its trash id.
    pub async fn delete(&self, path: &str, recursive: bool) -> Result<u64> {
        let make = |req| {
            Body::Delete(Box::new(Delete {
                req,
                path: Some(path.into()),
                recursive,
            }))
        };
        match self.mutate(path, make).await? {
            Body::DeleteReply(r) => Ok(r.trash_id),
            other => Err(unexpected(path, &other)),
        }
    }

    /// Deletes a trash entry now (its chunks become garbage), instead of
    /// at the end of the retention time.
    pub async fn purge(&self, trash_id: u64) -> Result<()> {
        let make = |req| Body::Purge(Box::new(Purge { req, trash_id }));
        match self.mutate("trash", make).await? {
            Body::Ack(_) => Ok(()),
            other => Err(unexpected("trash", &other)),
        }
    }

    /// Sets the replication goal; returns how many files changed.
    pub async fn set_replication(
        &self,
        path: &str,
        replication: u8,
        recursive: bool,
    ) -> Result<u64> {
        let make = |req| {
            Body::SetReplication(Box::new(SetReplication {
                req,
                path: Some(path.into()),
                replication,
                recursive,
            }))
        };
        match self.mutate(path, make).await? {
            Body::SetReplicationReply(r) => Ok(r.files_changed),
            other => Err(unexpected(path, &other)),
        }
    }

    /// One page of replica health under `path`.
    pub async fn fsck_page(&self, path: &str, start_after: &str, limit: u32) -> Result<FsckReply> {
        let body = Body::Fsck(Box::new(Fsck {
            path: Some(path.into()),
            start_after: Some(start_after.into()),
            limit,
        }));
        match self.master(path, body).await? {
            Body::FsckReply(r) => Ok(*r),
            other => Err(unexpected(path, &other)),
        }
    }

    pub async fn admin_status(&self) -> Result<AdminStatusReply> {
        match self
            .master("status", Body::AdminStatus(Box::default()))
            .await?
        {
            Body::AdminStatusReply(r) => Ok(*r),
            other => Err(unexpected("status", &other)),
        }
    }

    /// Hands the leadership over to master `to` (0: the most caught-up
    /// other voter), without failing a client request (design note 013).
    pub async fn admin_failover(&self, to: u64) -> Result<()> {
        let body = Body::AdminFailover(Box::new(ringfs_wire::msg::AdminFailover { to }));
        match self.master("failover", body).await? {
            Body::Ack(_) => Ok(()),
            other => Err(unexpected("failover", &other)),
        }
    }

    /// Adds a shadow master as a Raft learner, promotes a learner to voter,
    /// or removes a master from the group.
    pub async fn admin_membership(
        &self,
        op: ringfs_wire::msg::MembershipOp,
        node_id: u64,
    ) -> Result<()> {
        let body =
            Body::AdminMembership(Box::new(ringfs_wire::msg::AdminMembership { op, node_id }));
        match self.master("membership", body).await? {
            Body::Ack(_) => Ok(()),
            other => Err(unexpected("membership", &other)),
        }
    }

    /// Closes a written file: its length becomes final.
    pub(crate) async fn complete(&self, what: &str, inode: u64, length_bytes: u64) -> Result<Attr> {
        let make = |req| {
            Body::CompleteFile(Box::new(CompleteFile {
                req,
                inode,
                length_bytes,
            }))
        };
        attr_of(what, self.mutate(what, make).await?)
    }

    pub(crate) async fn get_chunks(
        &self,
        what: &str,
        inode: u64,
        first_index: u64,
    ) -> Result<GetChunksReply> {
        let body = Body::GetChunks(Box::new(GetChunks {
            inode,
            first_index,
            count: 10_000,
            min_applied_index: self.inner.masters.seen_index(),
        }));
        match self.master(what, body).await? {
            Body::GetChunksReply(r) => Ok(*r),
            other => Err(unexpected(what, &other)),
        }
    }

    pub(crate) async fn allocate(
        &self,
        what: &str,
        inode: u64,
        index: u64,
    ) -> Result<ChunkLocation> {
        let make = |req| Body::AllocateChunk(Box::new(AllocateChunk { req, inode, index }));
        location_of(what, self.mutate(what, make).await?)
    }

    pub(crate) async fn get_lease(&self, what: &str, handle: u64) -> Result<ChunkLocation> {
        let body = Body::GetLease(Box::new(GetLease {
            req: Some(self.next_req()),
            handle,
        }));
        location_of(what, self.master(what, body).await?)
    }

    /// Tells the master a replica served bad data or refused as corrupt,
    /// so it is replaced. Best effort: the read goes on either way.
    pub(crate) async fn report_bad_replica(&self, handle: u64, node_id: u64, reason: ErrorCode) {
        let body = Body::ReportBadReplica(Box::new(ReportBadReplica {
            handle,
            node_id,
            reason,
        }));
        if let Err(e) = self.inner.masters.call("report bad replica", &body).await {
            tracing::warn!(handle, node_id, error = %e, "could not report a bad replica");
        }
    }
}

fn owner() -> Option<String> {
    Some(std::env::var("USER").unwrap_or_else(|_| "ringfs".into()))
}

pub(crate) fn unexpected(what: &str, body: &Body) -> Error {
    Error::Protocol {
        what: what.into(),
        reason: format!("unexpected reply {:?}", MessageKind::of_body(body)),
    }
}

fn attr_of(what: &str, body: Body) -> Result<Attr> {
    match body {
        Body::AttrReply(r) => r.attr.map(|a| *a).ok_or_else(|| Error::Protocol {
            what: what.into(),
            reason: "reply without attributes".into(),
        }),
        other => Err(unexpected(what, &other)),
    }
}

fn location_of(what: &str, body: Body) -> Result<ChunkLocation> {
    match body {
        Body::ChunkLocationReply(r) => r.location.map(|l| *l).ok_or_else(|| Error::Protocol {
            what: what.into(),
            reason: "reply without a location".into(),
        }),
        other => Err(unexpected(what, &other)),
    }
}
