//! The open files of one core's chunks, bounded: least recently used
//! chunks are closed first and reopened by name on their next use.
//!
//! A chunk is two files (data and meta), so keeping every chunk open puts a
//! ceiling of half the open-files limit on the chunks a chunkserver can hold
//! and recover at start-up: a disk of 4 KiB files holds millions of chunks.
//! Closing costs nothing durable: every acknowledged write was fdatasync'd
//! on its own, and `fdatasync` acts on the inode, not on the descriptor.
//! With the files goes the cached tail block of an idle chunk (up to 64 KiB
//! of memory each), which the next append reads back and verifies.
//!
//! An operation clones the files it works with (compio's `File` is a
//! shared descriptor), so closing a chunk in use waits for nothing: the
//! descriptor is released when the last clone is dropped. Chunks in use
//! can therefore briefly exceed the bound, by at most the operations in
//! flight on the core. See docs/design/014-open-chunk-files.md.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use lru::LruCache;

use crate::chunk::Tail;

/// Open chunks per core when the open-files limit allows no more.
pub const OPEN_CHUNKS_PER_CORE_MIN: usize = 16;

/// A chunk's two open files. Cheap to clone (shared descriptors).
#[derive(Clone, Debug)]
pub struct ChunkFiles {
    pub data: compio::fs::File,
    pub meta: compio::fs::File,
}

/// What a chunk holds only while it is open.
#[derive(Default)]
pub struct OpenSlot {
    files: RefCell<Option<ChunkFiles>>,
    /// The verified bytes of the last partial block (see `chunk`).
    pub(crate) tail: RefCell<Option<Tail>>,
    /// Bumped when the meta file is replaced (compaction), so a reopen that
    /// raced with it does not install a descriptor of the replaced file.
    meta_generation: Cell<u64>,
}

impl OpenSlot {
    pub fn is_open(&self) -> bool {
        self.files.borrow().is_some()
    }

    /// The files if open, without touching the LRU order.
    pub fn files(&self) -> Option<ChunkFiles> {
        self.files.borrow().clone()
    }

    pub fn meta_generation(&self) -> u64 {
        self.meta_generation.get()
    }

    fn close(&self) {
        self.files.borrow_mut().take();
        self.tail.borrow_mut().take();
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenFilesStats {
    pub open_chunks: u64,
    pub reopens: u64,
    pub closes: u64,
}

pub struct OpenFiles {
    lru: RefCell<LruCache<u64, Rc<OpenSlot>>>,
    open_chunks_max: usize,
    next_id: Cell<u64>,
    reopens: Cell<u64>,
    closes: Cell<u64>,
}

impl OpenFiles {
    pub fn new(open_chunks_max: usize) -> OpenFiles {
        assert!(open_chunks_max >= 1, "at least one chunk must stay open");
        OpenFiles {
            lru: RefCell::new(LruCache::unbounded()),
            open_chunks_max,
            next_id: Cell::new(1),
            reopens: Cell::new(0),
            closes: Cell::new(0),
        }
    }

    pub fn open_chunks_max(&self) -> usize {
        self.open_chunks_max
    }

    /// A fresh, closed slot and its id (unique on this core).
    pub fn new_slot(&self) -> (u64, Rc<OpenSlot>) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        (id, Rc::new(OpenSlot::default()))
    }

    /// The files of an open slot, which becomes the most recently used.
    pub fn get(&self, id: u64, slot: &OpenSlot) -> Option<ChunkFiles> {
        let files = slot.files.borrow().clone()?;
        self.lru.borrow_mut().promote(&id);
        Some(files)
    }

    /// Opens `slot` with `files` (a first open or a reopen), closing the
    /// least recently used chunks beyond the bound. If the slot was opened
    /// meanwhile by another task, those files win and `files` is dropped.
    pub fn install(
        &self,
        id: u64,
        slot: &Rc<OpenSlot>,
        files: ChunkFiles,
        reopen: bool,
    ) -> ChunkFiles {
        let files = {
            let mut have = slot.files.borrow_mut();
            match have.as_ref() {
                Some(existing) => existing.clone(),
                None => {
                    *have = Some(files.clone());
                    if reopen {
                        self.reopens.set(self.reopens.get() + 1);
                    }
                    files
                }
            }
        };
        self.lru.borrow_mut().put(id, slot.clone());
        self.close_beyond_bound(id);
        files
    }

    /// Replaces an open slot's meta file (compaction renamed a new one over
    /// it) and reopens the slot if it was closed meanwhile.
    pub fn replace_meta(
        &self,
        id: u64,
        slot: &Rc<OpenSlot>,
        data: compio::fs::File,
        meta: compio::fs::File,
    ) {
        slot.meta_generation.set(slot.meta_generation.get() + 1);
        *slot.files.borrow_mut() = Some(ChunkFiles { data, meta });
        self.lru.borrow_mut().put(id, slot.clone());
        self.close_beyond_bound(id);
    }

    /// Closes a slot for good (the chunk is deleted or replaced).
    pub fn forget(&self, id: u64, slot: &OpenSlot) {
        self.lru.borrow_mut().pop(&id);
        slot.close();
    }

    fn close_beyond_bound(&self, keep: u64) {
        let mut lru = self.lru.borrow_mut();
        while lru.len() > self.open_chunks_max {
            let Some((id, victim)) = lru.pop_lru() else {
                break;
            };
            // `keep` was just made most recently used and the bound is at
            // least one, so it is never the least recently used.
            assert_ne!(id, keep, "closed the chunk being opened");
            victim.close();
            self.closes.set(self.closes.get() + 1);
        }
        assert!(lru.len() <= self.open_chunks_max);
    }

    pub fn stats(&self) -> OpenFilesStats {
        OpenFilesStats {
            open_chunks: self.lru.borrow().len() as u64,
            reopens: self.reopens.get(),
            closes: self.closes.get(),
        }
    }
}

/// Open chunks per core for an open-files limit: two files per chunk, a
/// reserve for sockets, rings and the process's own files.
pub fn open_chunks_per_core(open_files_max: u64, cores: usize) -> usize {
    let reserve = (open_files_max / 4).clamp(64, 8192);
    let chunks = open_files_max.saturating_sub(reserve) / 2 / cores.max(1) as u64;
    usize::try_from(chunks)
        .unwrap_or(usize::MAX)
        .max(OPEN_CHUNKS_PER_CORE_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_a_reserve_and_splits_across_cores() {
        // The shell default of 1024: 256 reserved, 384 chunks on one core.
        assert_eq!(open_chunks_per_core(1024, 1), 384);
        assert_eq!(open_chunks_per_core(1024, 2), 192);
        // systemd's LimitNOFILE in deploy/: 8192 reserved.
        assert_eq!(open_chunks_per_core(1 << 20, 4), ((1 << 20) - 8192) / 8);
        // A tiny limit still leaves each core some chunks.
        assert_eq!(open_chunks_per_core(100, 8), OPEN_CHUNKS_PER_CORE_MIN);
    }
}
