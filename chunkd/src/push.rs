//! Data flow, separate from control flow (GFS §3.2): a client pushes the
//! bytes of a mutation to the first replica, which keeps them in a bounded
//! buffer keyed by data id and passes them down the chain; the mutation
//! itself (ordered by the primary) later names the data id. Each replica
//! holds the data on the core chosen by the data id.
//!
//! Bounded: at most `push_buffer_max_bytes` per core; a push beyond that
//! gets `Busy`. Unclaimed data expires after [`PUSH_TTL`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringfs_wire::checksum::{BLOCK_BYTES, crc32c};
use ringfs_wire::msg::{Body, PushData, PushDataReply, RequestId};

use crate::dio::AlignedBuf;
use crate::error::{ChunkError, ChunkResult};
use crate::shard::{Core, Reply, on_core, owner_core};

/// Pushed data not claimed by a mutation within this time is dropped.
pub const PUSH_TTL: Duration = Duration::from_secs(60);

pub type DataKey = (u64, u64);

pub fn key_of(id: &RequestId) -> DataKey {
    (id.client_id, id.seq)
}

/// The core that holds a pushed piece of data.
pub fn core_of(key: DataKey, cores: usize) -> usize {
    owner_core(key.0 ^ key.1.rotate_left(32), cores)
}

/// Pushed data held on one core.
pub struct Pushed {
    pub bufs: Vec<AlignedBuf>,
    pub len: u64,
    pub crcs: Vec<u32>,
    at: Instant,
}

#[derive(Default)]
pub struct PushStore {
    entries: RefCell<HashMap<DataKey, Pushed>>,
    bytes: std::cell::Cell<u64>,
}

impl PushStore {
    fn insert(&self, key: DataKey, pushed: Pushed, max_bytes: u64) -> Result<(), Pushed> {
        let bytes = pushed.bufs.iter().map(|b| b.capacity() as u64).sum::<u64>();
        if self.bytes.get() + bytes > max_bytes {
            return Err(pushed);
        }
        if let Some(old) = self.entries.borrow_mut().insert(key, pushed) {
            self.bytes.set(self.bytes.get() - held_bytes(&old));
        }
        self.bytes.set(self.bytes.get() + bytes);
        Ok(())
    }

    pub fn take(&self, key: DataKey) -> Option<Pushed> {
        let p = self.entries.borrow_mut().remove(&key)?;
        self.bytes.set(self.bytes.get() - held_bytes(&p));
        Some(p)
    }

    /// Drops data older than the TTL; returns how many entries went.
    pub fn expire(&self, now: Instant) -> usize {
        let mut entries = self.entries.borrow_mut();
        let before = entries.len();
        let mut freed = 0;
        entries.retain(|_, p| {
            let keep = now.duration_since(p.at) < PUSH_TTL;
            if !keep {
                freed += held_bytes(p);
            }
            keep
        });
        self.bytes.set(self.bytes.get() - freed);
        before - entries.len()
    }

    pub fn held_bytes(&self) -> u64 {
        self.bytes.get()
    }
}

fn held_bytes(p: &Pushed) -> u64 {
    p.bufs.iter().map(|b| b.capacity() as u64).sum()
}

/// Receives pushed data on its holding core: verify, keep, pass it down
/// the chain, answer with everyone who now holds it.
pub async fn receive(
    core: &Rc<Core>,
    push: PushData,
    bufs: Vec<AlignedBuf>,
    len: u64,
) -> (ChunkResult<Reply>, Vec<AlignedBuf>) {
    let Some(id) = push.data_id else {
        return (
            Err(ChunkError::BadRequest("PushData without a data_id".into())),
            bufs,
        );
    };
    let crcs = push.block_crcs.clone().unwrap_or_default();
    if let Err(e) = verify(&bufs, len, &crcs) {
        return (Err(e), bufs);
    }
    let key = key_of(&id);
    let max = core.node.settings.push_buffer_max_bytes;
    let pushed = Pushed {
        bufs,
        len,
        crcs: crcs.clone(),
        at: Instant::now(),
    };
    if let Err(p) = core.pushes.insert(key, pushed, max) {
        return (
            Err(ChunkError::Busy(format!(
                "push buffer full ({max} bytes per core)"
            ))),
            p.bufs,
        );
    }
    let mut stored_by = vec![core.node.node_id()];
    let chain = push.chain.clone().unwrap_or_default();
    if let Some((next, rest)) = chain.split_first() {
        let addr = next.addr.clone().unwrap_or_default();
        let forward = Body::PushData(Box::new(PushData {
            data_id: Some(id),
            chain: Some(rest.to_vec()),
            block_crcs: Some(crcs),
        }));
        // Take the bytes out to send them and put them back after: the
        // mutation that claims them comes only after our reply.
        let Some(mut pushed) = core.pushes.take(key) else {
            return (
                Err(ChunkError::Internal("pushed data vanished".into())),
                Vec::new(),
            );
        };
        let (r, bufs, _) = core
            .peers
            .request(&addr, &forward, pushed.bufs, len, Vec::new())
            .await;
        pushed.bufs = bufs;
        let failed = |reason: String| ChunkError::ReplicaFailed {
            node: next.node_id,
            addr: addr.clone(),
            reason,
        };
        let downstream = match r {
            Ok(reply) => match reply.head.owned_body() {
                Ok(Body::PushDataReply(d)) => Ok(d.stored_by.unwrap_or_default()),
                Ok(Body::ErrorReply(e)) => Err(failed(format!(
                    "{:?}: {}",
                    e.code,
                    e.message.unwrap_or_default()
                ))),
                Ok(_) => Err(failed("unexpected reply to PushData".into())),
                Err(e) => Err(failed(e.to_string())),
            },
            Err(e) => Err(failed(e.to_string())),
        };
        if let Err(p) = core.pushes.insert(key, pushed, u64::MAX) {
            drop(p);
        }
        match downstream {
            Ok(d) => stored_by.extend(d),
            Err(e) => return (Err(e), Vec::new()),
        }
    }
    let body = Body::PushDataReply(Box::new(PushDataReply {
        data_id: Some(id),
        stored_by: Some(stored_by),
    }));
    (Ok(Reply::body(body, Vec::new())), Vec::new())
}

/// Claims pushed data for a mutation, from whichever core holds it. The
/// CRCs the mutation carries must be the ones the data was pushed with.
pub async fn claim(core: &Rc<Core>, id: &RequestId, len: u64, crcs: &[u32]) -> ChunkResult<Pushed> {
    let key = key_of(id);
    let holder = core_of(key, core.node.cores());
    let pushed = on_core(core, holder, move |c| c.pushes.take(key))
        .await
        .flatten()
        .ok_or_else(|| ChunkError::DataIdUnknown(format!("{}:{}", key.0, key.1)))?;
    if pushed.len != len || pushed.crcs != crcs {
        return Err(ChunkError::BadRequest(format!(
            "data {}:{} was pushed with {} bytes and other CRCs than the mutation names",
            key.0, key.1, pushed.len
        )));
    }
    Ok(pushed)
}

/// Checks request data against the sender's per-64 KiB CRCs.
pub fn verify(bufs: &[AlignedBuf], len: u64, crcs: &[u32]) -> ChunkResult<()> {
    if crcs.len() as u64 != len.div_ceil(BLOCK_BYTES as u64) {
        return Err(ChunkError::BadRequest(format!(
            "{} block CRCs for {len} bytes (one per 64 KiB piece)",
            crcs.len()
        )));
    }
    let mut piece = 0usize;
    let mut left = len;
    for buf in bufs {
        if left == 0 {
            break;
        }
        let in_buf = (buf.capacity() as u64).min(left) as usize;
        for p in buf.full()[..in_buf].chunks(BLOCK_BYTES) {
            if crc32c(p) != crcs[piece] {
                return Err(ChunkError::BadDataChecksum {
                    piece: piece as u64,
                });
            }
            piece += 1;
        }
        left -= in_buf as u64;
    }
    if left > 0 {
        return Err(ChunkError::BadRequest(format!("{left} data bytes missing")));
    }
    Ok(())
}
