//! Chunk locations by file, cached so repeated reads skip the master.
//! Entries are dropped on any read error that may mean they are stale (a
//! replica moved, a version changed) and after a short time to live, since
//! the master re-replicates behind our back. Bounded in files.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringfs_wire::msg::ChunkLocation;

/// A lease this close to its end is renewed before use.
pub const LEASE_MARGIN: Duration = Duration::from_millis(1_000);

/// True while `loc`'s lease, learned at `learned_at`, has a margin left.
pub fn lease_fresh(loc: &ChunkLocation, learned_at: Instant) -> bool {
    let lease = Duration::from_millis(u64::from(loc.lease_remaining_ms));
    loc.primary != 0 && learned_at.elapsed() + LEASE_MARGIN < lease
}

/// The primary's node id and address, if it is among the replicas.
pub fn primary_of(loc: &ChunkLocation) -> Option<(u64, String)> {
    loc.replicas
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.node_id == loc.primary)
        .map(|r| (r.node_id, r.addr.clone().unwrap_or_default()))
}

/// Files whose locations are kept; beyond this the oldest entry goes.
pub const CACHED_FILES_MAX: usize = 4_096;
/// Locations older than this are asked for again.
pub const LOCATION_TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct FileChunks {
    /// The file's length as the master knows it (final once complete).
    pub length_bytes: u64,
    /// Chunk `i` of the file at position `i`.
    pub chunks: Vec<ChunkLocation>,
}

pub struct LocationCache {
    files: Mutex<HashMap<u64, (Instant, FileChunks)>>,
}

impl Default for LocationCache {
    fn default() -> Self {
        LocationCache::new()
    }
}

impl LocationCache {
    pub fn new() -> LocationCache {
        LocationCache {
            files: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, inode: u64) -> Option<FileChunks> {
        let map = self.files.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&inode)
            .filter(|(at, _)| at.elapsed() < LOCATION_TTL)
            .map(|(_, f)| f.clone())
    }

    pub fn put(&self, inode: u64, chunks: FileChunks) {
        let mut map = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHED_FILES_MAX
            && !map.contains_key(&inode)
            && let Some(oldest) = map.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(inode, (Instant::now(), chunks));
        debug_assert!(map.len() <= CACHED_FILES_MAX);
    }

    pub fn forget(&self, inode: u64) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&inode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_forgets() {
        let cache = LocationCache::new();
        for inode in 0..(CACHED_FILES_MAX as u64 + 10) {
            cache.put(
                inode,
                FileChunks {
                    length_bytes: inode,
                    chunks: Vec::new(),
                },
            );
        }
        assert_eq!(cache.files.lock().unwrap().len(), CACHED_FILES_MAX);
        let last = CACHED_FILES_MAX as u64 + 9;
        assert_eq!(cache.get(last).map(|f| f.length_bytes), Some(last));
        cache.forget(last);
        assert!(cache.get(last).is_none());
    }
}
