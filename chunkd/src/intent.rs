//! Write intents (docs/design/015-write-intents.md): which blocks of a chunk
//! may take data writes before those writes' log records are durable.
//!
//! Each log batch restates the open Intents as the blocks the next write
//! of every stream in it would touch if the stream goes on sequentially
//! (`predicted`). A write wholly inside the durable Intents sends its data
//! alongside its record (one device round trip); any other write waits
//! for its record first (two). Recovery treats open-Intent blocks as
//! unsettled, so what a crash can leave unverified is about one write
//! ahead of each stream, as with the Writes not yet marked Durable.

use ringfs_wire::checksum::BLOCK_BYTES;

use crate::meta::LogRecord;

const BLOCK: u64 = BLOCK_BYTES as u64;

/// Most Intent records one restatement or compaction writes; past it, one
/// Intent spans them all (more blocks unsettled after a crash, but a
/// bounded batch).
pub const CARRIED_RUNS_MAX: usize = 64;

/// The blocks of the write that would follow a write of `length` bytes at
/// `offset` in a chunk of `chunk_size_bytes`: as long, right after it. As
/// (first_block, block_count); `None` at the chunk's end.
pub fn predicted(offset: u64, length: u64, chunk_size_bytes: u64) -> Option<(u32, u32)> {
    let end = offset.checked_add(length)?;
    if length == 0 || end >= chunk_size_bytes {
        return None;
    }
    let next_end = end.saturating_add(length).min(chunk_size_bytes);
    let first = end / BLOCK;
    let last = (next_end - 1) / BLOCK;
    Some((
        u32::try_from(first).ok()?,
        u32::try_from(last - first + 1).ok()?,
    ))
}

/// A set of a chunk's blocks, one bit each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSet {
    words: Vec<u64>,
}

impl BlockSet {
    pub fn new(chunk_blocks: u32) -> BlockSet {
        BlockSet {
            words: vec![0; (chunk_blocks as usize).div_ceil(64)],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    pub fn contains(&self, block: u32) -> bool {
        let (w, b) = (block as usize / 64, block % 64);
        self.words.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    /// Whether every block of `first..first + count` is in the set.
    pub fn covers(&self, first: u32, count: u32) -> bool {
        (first..first + count).all(|b| self.contains(b))
    }

    pub fn insert(&mut self, first: u32, count: u32) {
        for block in first..first + count {
            self.words[block as usize / 64] |= 1 << (block % 64);
        }
    }

    /// Whether every block of `other` is in this set.
    pub fn covers_all_of(&self, other: &BlockSet) -> bool {
        self.words.len() == other.words.len()
            && self
                .words
                .iter()
                .zip(&other.words)
                .all(|(a, b)| b & !a == 0)
    }

    /// Adds every block of `other`.
    pub fn union_with(&mut self, other: &BlockSet) {
        assert_eq!(self.words.len(), other.words.len());
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// Keeps only the blocks also in `other`.
    pub fn retain_only(&mut self, other: &BlockSet) {
        assert_eq!(self.words.len(), other.words.len());
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    /// Maximal runs of set blocks, in order, as (first_block, block_count).
    pub fn runs(&self) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        let bits = self.words.len() as u32 * 64;
        let mut block = 0;
        while block < bits {
            if !self.contains(block) {
                block += 1;
                continue;
            }
            let start = block;
            while block < bits && self.contains(block) {
                block += 1;
            }
            out.push((start, block - start));
        }
        out
    }

    /// The Intent records that announce at least this set, at most
    /// `CARRIED_RUNS_MAX` of them.
    pub fn intent_records(&self) -> Vec<LogRecord> {
        let mut runs = self.runs();
        if runs.len() > CARRIED_RUNS_MAX {
            let first = runs[0].0;
            let (last, n) = runs[runs.len() - 1];
            runs = vec![(first, last + n - first)];
        }
        runs.into_iter()
            .map(|(first_block, block_count)| LogRecord::Intent {
                first_block,
                block_count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(s: &BlockSet) -> u32 {
        s.words.iter().map(|w| w.count_ones()).sum()
    }

    #[test]
    fn the_prediction_is_the_next_write_of_a_sequential_stream() {
        const MIB: u64 = 1 << 20;
        let chunk = 64 * MIB;
        assert_eq!(predicted(0, MIB, chunk), Some((16, 16)));
        // An append to a partial block continues in that block.
        assert_eq!(predicted(0, 100, chunk), Some((0, 1)));
        assert_eq!(predicted(BLOCK - 10, 20, chunk), Some((1, 1)));
        assert_eq!(predicted(BLOCK - 10, 5, chunk), Some((0, 1)));
        // Clipped at the chunk's end; nothing after it.
        assert_eq!(predicted(chunk - 3 * MIB, 2 * MIB, chunk), Some((1008, 16)));
        assert_eq!(predicted(chunk - MIB, MIB, chunk), None);
        assert_eq!(predicted(0, 0, chunk), None);
        assert_eq!(predicted(u64::MAX, 2, chunk), None);
    }

    #[test]
    fn sets_count_cover_and_list_runs() {
        let mut s = BlockSet::new(200);
        assert!(s.is_empty() && s.runs().is_empty());
        s.insert(3, 4);
        s.insert(5, 4); // overlaps
        s.insert(130, 1);
        s.insert(199, 1);
        assert_eq!(len(&s), 8);
        assert!(s.covers(3, 6) && !s.covers(2, 2) && !s.covers(8, 2));
        assert_eq!(s.runs(), vec![(3, 6), (130, 1), (199, 1)]);
        assert!(!s.contains(200), "past the end is never in the set");
        let mut sub = BlockSet::new(200);
        sub.insert(4, 2);
        assert!(s.covers_all_of(&sub) && !sub.covers_all_of(&s));
        let mut t = s.clone();
        t.retain_only(&sub);
        assert_eq!((t.runs(), len(&t)), (vec![(4, 2)], 2));
        let mut u = BlockSet::new(200);
        u.insert(199, 1);
        u.insert(0, 1);
        u.union_with(&t);
        assert_eq!((u.runs(), len(&u)), (vec![(0, 1), (4, 2), (199, 1)], 4));
        t.retain_only(&BlockSet::new(200));
        assert!(t.is_empty() && !t.contains(4));
    }

    #[test]
    fn too_many_runs_are_carried_as_one_covering_intent() {
        let mut s = BlockSet::new(1024);
        for i in 0..CARRIED_RUNS_MAX as u32 {
            s.insert(i * 2, 1);
        }
        assert_eq!(s.intent_records().len(), CARRIED_RUNS_MAX);
        s.insert(500, 3);
        assert_eq!(
            s.intent_records(),
            vec![LogRecord::Intent {
                first_block: 0,
                block_count: 503
            }]
        );
    }
}
