//! Data flow, separate from control flow (GFS §3.2): a client pushes the
//! bytes of a mutation to the first replica, which keeps them in a bounded
//! buffer keyed by data id and passes them down the chain; the mutation
//! itself (ordered by the primary) later names the data id. Each replica
//! holds the data on the core chosen by the data id.
//!
//! Bounded: at most `push_buffer_max_bytes` and
//! [`PUSH_ENTRIES_PER_CORE_MAX`] entries per core, counting data out on its
//! way down the chain; a push beyond that gets `Busy`. Unclaimed data
//! expires after [`PUSH_TTL`].

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringfs_wire::checksum::{BLOCK_BYTES, crc32c};
use ringfs_wire::msg::{Body, PushData, PushDataReply, Replica, RequestId};

use crate::dio::AlignedBuf;
use crate::error::{ChunkError, ChunkResult};
use crate::shard::{Core, Reply, on_core, owner_core};

/// Pushed data not claimed by a mutation within this time is dropped.
pub const PUSH_TTL: Duration = Duration::from_secs(60);
/// Pieces of pushed data one core holds at once. Every piece holds at
/// least one buffer, so the byte limit binds first in practice; this one
/// bounds the map whatever the buffer size.
pub const PUSH_ENTRIES_PER_CORE_MAX: usize = 4096;
/// Most replicas a push may still name after its receiver: far above any
/// replication factor, and it bounds what one push can fan out to.
pub const PUSH_CHAIN_MAX: usize = 16;

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
    /// What this piece counts against the limit, fixed when it came in
    /// (its buffers may leave and come back meanwhile).
    held_bytes: u64,
}

#[derive(Default)]
pub struct PushStore {
    entries: RefCell<HashMap<DataKey, Pushed>>,
    /// Bytes of the entries and of the pieces lent out to be forwarded.
    bytes: Cell<u64>,
    /// Pieces lent out to be forwarded.
    lent: Cell<usize>,
}

/// A piece taken out of the store to be forwarded: it stays counted
/// (so other pushes cannot take its room meanwhile) until it is put back
/// or this is dropped.
struct Loan<'a> {
    store: &'a PushStore,
    key: DataKey,
    held_bytes: u64,
}

impl Loan<'_> {
    /// Puts the piece back if its buffers still hold all its bytes (a
    /// failed send may have lost them) and no newer push of the same id
    /// took its place; otherwise it is dropped.
    fn put_back(self, pushed: Pushed) {
        let whole = pushed.bufs.iter().map(|b| b.capacity() as u64).sum::<u64>() >= pushed.len;
        let mut entries = self.store.entries.borrow_mut();
        if whole && !entries.contains_key(&self.key) {
            entries.insert(self.key, pushed);
            // Its bytes move from the loan to the entries: counted once.
            self.store.lent.set(self.store.lent.get() - 1);
            std::mem::forget(self);
        }
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        self.store.lent.set(self.store.lent.get() - 1);
        self.store
            .bytes
            .set(self.store.bytes.get() - self.held_bytes);
    }
}

impl PushStore {
    fn insert(&self, key: DataKey, mut pushed: Pushed, max_bytes: u64) -> Result<(), Pushed> {
        pushed.held_bytes = held_bytes(&pushed.bufs);
        let mut entries = self.entries.borrow_mut();
        let replaced = entries.get(&key).map(|p| p.held_bytes);
        if replaced.is_none() && entries.len() + self.lent.get() >= PUSH_ENTRIES_PER_CORE_MAX {
            return Err(pushed);
        }
        let after = self.bytes.get() - replaced.unwrap_or(0) + pushed.held_bytes;
        if after > max_bytes {
            return Err(pushed);
        }
        entries.insert(key, pushed);
        self.bytes.set(after);
        Ok(())
    }

    pub fn take(&self, key: DataKey) -> Option<Pushed> {
        let p = self.entries.borrow_mut().remove(&key)?;
        self.bytes.set(self.bytes.get() - p.held_bytes);
        Some(p)
    }

    /// Takes a piece out to forward it, still counted.
    fn lend(&self, key: DataKey) -> Option<(Pushed, Loan<'_>)> {
        let p = self.entries.borrow_mut().remove(&key)?;
        self.lent.set(self.lent.get() + 1);
        let loan = Loan {
            store: self,
            key,
            held_bytes: p.held_bytes,
        };
        Some((p, loan))
    }

    /// Drops data older than the TTL; returns how many entries went.
    pub fn expire(&self, now: Instant) -> usize {
        let mut entries = self.entries.borrow_mut();
        let before = entries.len();
        let mut freed = 0;
        entries.retain(|_, p| {
            let keep = now.duration_since(p.at) < PUSH_TTL;
            if !keep {
                freed += p.held_bytes;
            }
            keep
        });
        self.bytes.set(self.bytes.get() - freed);
        before - entries.len()
    }

    pub fn held_bytes(&self) -> u64 {
        self.bytes.get()
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len() + self.lent.get()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn held_bytes(bufs: &[AlignedBuf]) -> u64 {
    bufs.iter().map(|b| b.capacity() as u64).sum()
}

/// The replicas a push names after this node (`me`): few, and none twice
/// or this node again, so a push cannot fan out or come back around.
fn check_chain(chain: &[Replica], me: u64) -> ChunkResult<()> {
    if chain.len() > PUSH_CHAIN_MAX {
        return Err(ChunkError::BadRequest(format!(
            "a push may name at most {PUSH_CHAIN_MAX} further replicas, not {}",
            chain.len()
        )));
    }
    let mut ids = HashSet::with_capacity(chain.len());
    let mut addrs = HashSet::with_capacity(chain.len());
    for r in chain {
        // 0 is "no id yet" (an unregistered node), never a duplicate.
        if r.node_id != 0 && r.node_id == me {
            return Err(ChunkError::BadRequest(format!(
                "the push chain names this node ({me}) again"
            )));
        }
        if r.node_id != 0 && !ids.insert(r.node_id) {
            return Err(ChunkError::BadRequest(format!(
                "the push chain names node {} twice",
                r.node_id
            )));
        }
        if let Some(addr) = &r.addr
            && !addrs.insert(addr.as_str())
        {
            return Err(ChunkError::BadRequest(format!(
                "the push chain names {addr} twice"
            )));
        }
    }
    Ok(())
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
    if len == 0 {
        // It would hold no buffer, so no byte limit would ever stop it.
        return (
            Err(ChunkError::BadRequest("PushData without data".into())),
            bufs,
        );
    }
    let chain = push.chain.clone().unwrap_or_default();
    if let Err(e) = check_chain(&chain, core.node.node_id()) {
        return (Err(e), bufs);
    }
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
        held_bytes: 0,
    };
    if let Err(p) = core.pushes.insert(key, pushed, max) {
        return (
            Err(ChunkError::Busy(format!(
                "push buffer full ({max} bytes or {PUSH_ENTRIES_PER_CORE_MAX} pieces per core)"
            ))),
            p.bufs,
        );
    }
    let mut stored_by = vec![core.node.node_id()];
    if let Some((next, rest)) = chain.split_first() {
        let addr = next.addr.clone().unwrap_or_default();
        let forward = Body::PushData(Box::new(PushData {
            data_id: Some(id),
            chain: Some(rest.to_vec()),
            block_crcs: Some(crcs),
        }));
        // Take the bytes out to send them and put them back after: the
        // mutation that claims them comes only after our reply. They stay
        // counted meanwhile, so the store never holds more than its limit.
        let Some((mut pushed, loan)) = core.pushes.lend(key) else {
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
        loan.put_back(pushed);
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

#[cfg(test)]
mod tests {
    use super::*;

    const BUF_BYTES: usize = 4096;

    fn piece(len: u64) -> Pushed {
        let n = (len as usize).div_ceil(BUF_BYTES);
        Pushed {
            bufs: (0..n)
                .map(|_| AlignedBuf::zeroed(BUF_BYTES, 4096))
                .collect(),
            len,
            crcs: Vec::new(),
            at: Instant::now(),
            held_bytes: 0,
        }
    }

    fn replica(node_id: u64, addr: &str) -> Replica {
        Replica {
            node_id,
            addr: Some(addr.to_owned()),
            rack: None,
        }
    }

    #[test]
    fn a_chain_is_short_and_names_no_node_twice() {
        let ok: Vec<_> = (1..=PUSH_CHAIN_MAX as u64)
            .map(|i| replica(i, &format!("127.0.0.1:{}", 7000 + i)))
            .collect();
        assert!(check_chain(&ok, 99).is_ok());
        assert!(check_chain(&[], 99).is_ok());
        let mut long = ok.clone();
        long.push(replica(50, "127.0.0.1:50"));
        assert!(matches!(
            check_chain(&long, 99),
            Err(ChunkError::BadRequest(_))
        ));
        // Back to this node, by id.
        let back = [replica(2, "127.0.0.1:2"), replica(99, "127.0.0.1:99")];
        assert!(matches!(
            check_chain(&back, 99),
            Err(ChunkError::BadRequest(_))
        ));
        // One node twice, by id or by address.
        let twice = [replica(2, "127.0.0.1:2"), replica(2, "127.0.0.1:3")];
        assert!(matches!(
            check_chain(&twice, 99),
            Err(ChunkError::BadRequest(_))
        ));
        let same_addr = [replica(2, "127.0.0.1:2"), replica(3, "127.0.0.1:2")];
        assert!(matches!(
            check_chain(&same_addr, 99),
            Err(ChunkError::BadRequest(_))
        ));
        // An unregistered node (id 0) is never "this node" nor a duplicate.
        let unregistered = [replica(0, "127.0.0.1:2"), replica(0, "127.0.0.1:3")];
        assert!(check_chain(&unregistered, 0).is_ok());
    }

    #[test]
    fn the_number_of_pieces_is_bounded_whatever_their_size() {
        let store = PushStore::default();
        for i in 0..PUSH_ENTRIES_PER_CORE_MAX as u64 {
            assert!(store.insert((1, i), piece(1), u64::MAX).is_ok());
        }
        assert!(store.insert((2, 0), piece(1), u64::MAX).is_err());
        // Replacing a held piece adds none.
        assert!(store.insert((1, 0), piece(1), u64::MAX).is_ok());
        assert_eq!(store.len(), PUSH_ENTRIES_PER_CORE_MAX);
        assert_eq!(
            store.held_bytes(),
            PUSH_ENTRIES_PER_CORE_MAX as u64 * BUF_BYTES as u64
        );
    }

    #[test]
    fn data_out_for_forwarding_keeps_its_room() {
        let max = 2 * BUF_BYTES as u64;
        let store = PushStore::default();
        assert!(store.insert((1, 1), piece(BUF_BYTES as u64), max).is_ok());
        let (pushed, loan) = store.lend((1, 1)).unwrap();
        assert!(store.take((1, 1)).is_none(), "not claimable while out");
        // Another push may take only the room the lent piece leaves.
        assert!(store.insert((1, 2), piece(BUF_BYTES as u64), max).is_ok());
        assert!(store.insert((1, 3), piece(1), max).is_err());
        loan.put_back(pushed);
        assert_eq!(store.held_bytes(), max);
        assert_eq!(store.len(), 2);
        assert!(store.take((1, 1)).is_some());
        assert!(store.take((1, 2)).is_some());
        assert_eq!((store.held_bytes(), store.len()), (0, 0));
    }

    #[test]
    fn data_that_lost_its_buffers_or_its_place_is_dropped_and_uncounted() {
        let store = PushStore::default();
        assert!(store.insert((1, 1), piece(5000), u64::MAX).is_ok());
        // A failed send may keep the buffers.
        let (mut pushed, loan) = store.lend((1, 1)).unwrap();
        pushed.bufs.clear();
        loan.put_back(pushed);
        assert!(store.take((1, 1)).is_none());
        assert_eq!((store.held_bytes(), store.len()), (0, 0));
        // A newer push of the same id, meanwhile, wins.
        assert!(store.insert((1, 1), piece(5000), u64::MAX).is_ok());
        let (pushed, loan) = store.lend((1, 1)).unwrap();
        assert!(store.insert((1, 1), piece(100), u64::MAX).is_ok());
        loan.put_back(pushed);
        assert_eq!(store.take((1, 1)).map(|p| p.len), Some(100));
        assert_eq!((store.held_bytes(), store.len()), (0, 0));
        // A forward whose future is dropped gives its room back.
        assert!(store.insert((1, 1), piece(5000), u64::MAX).is_ok());
        let (pushed, loan) = store.lend((1, 1)).unwrap();
        drop((pushed, loan));
        assert_eq!((store.held_bytes(), store.len()), (0, 0));
    }
}
