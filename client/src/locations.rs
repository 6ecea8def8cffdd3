//! Chunk locations by file, cached so repeated reads skip the master.
//! Entries are dropped on any read error that may mean they are stale (a
//! replica moved, a version changed) and after a short time to live, since
//! the master re-replicates behind our back. Bounded in files.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringfs_wire::msg::ChunkLocation;

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
