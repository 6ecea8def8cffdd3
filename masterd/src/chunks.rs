//! The chunk table (handle → version, owning file) and the committed leases.
//!
//! Locations are deliberately absent: they come from chunkserver reports and
//! live in the registry (DESIGN §4). A lease is recorded here when its version
//! bump commits, so a new leader knows who may still hold one; only the
//! leader's clock decides when a lease is over (`crate::lease`).

use std::collections::HashMap;

use crate::pagedmap::PagedMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkMeta {
    pub version: u64,
    /// Owning file; the replication goal is the file's.
    pub inode: u64,
    /// Position within the file.
    pub index: u32,
}

/// The last lease committed for a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub primary: u64,
    pub version: u64,
    pub granted_at_ms: u64,
    pub duration_ms: u64,
}

impl LeaseRecord {
    pub fn expires_at_ms(&self) -> u64 {
        self.granted_at_ms.saturating_add(self.duration_ms)
    }
}

/// Upper bound on lease records kept: older ones (long expired) are dropped
/// when this is reached. Deterministic: by expiry, then handle.
pub const LEASE_RECORDS_MAX: usize = 1 << 20;

#[derive(Clone, Debug, Default)]
pub struct ChunkTable {
    /// In pages by handle (`crate::pagedmap`): 24 bytes a chunk, and no
    /// growth of a 10 M-entry table stalls the apply path.
    pub chunks: PagedMap<ChunkMeta>,
    pub leases: HashMap<u64, LeaseRecord>,
}

impl ChunkTable {
    pub fn get(&self, handle: u64) -> Option<&ChunkMeta> {
        self.chunks.get(&handle)
    }

    pub fn insert(&mut self, handle: u64, meta: ChunkMeta) {
        let old = self.chunks.insert(handle, meta);
        assert!(old.is_none(), "chunk handle {handle} allocated twice");
    }

    pub fn remove(&mut self, handle: u64) {
        self.chunks.remove(&handle);
        self.leases.remove(&handle);
    }

    /// Records a committed lease; drops expired records first when full.
    pub fn record_lease(&mut self, handle: u64, lease: LeaseRecord) {
        if self.leases.len() >= LEASE_RECORDS_MAX && !self.leases.contains_key(&handle) {
            let now = lease.granted_at_ms;
            self.leases.retain(|_, l| l.expires_at_ms() > now);
        }
        self.leases.insert(handle, lease);
    }
}
