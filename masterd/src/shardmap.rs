//! A `u64`-keyed hash map in [`SHARDS`] independent parts, so that growing
//! never rehashes the whole table at once.
//!
//! A `HashMap` doubles when it is 7/8 full, moving every entry while the
//! caller waits. For the inode table of 7.3 M entries (88 bytes each), that
//! is a 1.5 GiB allocation and a rehash on the state machine's apply path:
//! `ringfs-bench meta` at 10 M files saw one commit take over 3 s at exactly
//! that point, and its client got `Unavailable`. In 4,096 parts, each part
//! grows on its own at ~1/4,096 of the size (well under a millisecond),
//! and a walk can take one part per hold of a lock (about 3 ms at 10 M
//! chunks, `crate::chunkscan`; with 1,024 parts it was 10 ms). Parts are
//! picked by a random hash, so they fill at slightly different rates and
//! their growth spreads over time: with a fixed spread of keys, sequential
//! inode numbers would fill every part in lockstep, and the parts would all
//! grow within the same few hundred inserts.
//!
//! Every map in the process picks parts with the same random key, so a key
//! lives in the same part of every map: a walk over part `i` of the chunk
//! table that looks each handle up in the location table stays within part
//! `i` of that one, which fits in cache (`crate::chunkscan`). The fill of
//! the parts stays random for each map.
//!
//! Iteration order is unspecified, as with `HashMap`: callers that need a
//! deterministic order (checkpoints, digests) sort.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;

/// Parts per map: each holds ~1/4,096 of the entries. An empty part costs
/// 48 bytes, so an empty map costs 192 KiB.
pub const SHARDS: usize = 4096;

/// The part picker every map in the process shares (module doc).
static PICK: LazyLock<RandomState> = LazyLock::new(RandomState::new);

#[derive(Clone, Debug)]
pub struct ShardMap<V> {
    shards: Box<[HashMap<u64, V>]>,
    pick: RandomState,
    len: usize,
}

impl<V> Default for ShardMap<V> {
    fn default() -> Self {
        ShardMap::with_capacity(0)
    }
}

impl<V> ShardMap<V> {
    pub fn new() -> Self {
        ShardMap::default()
    }

    /// Room for `capacity` entries without growing (checkpoint loads know
    /// their count).
    pub fn with_capacity(capacity: usize) -> Self {
        // A little over an even share: parts fill unevenly.
        let per_shard = capacity.div_ceil(SHARDS);
        let per_shard = per_shard + per_shard / 8;
        ShardMap {
            shards: (0..SHARDS)
                .map(|_| HashMap::with_capacity(per_shard))
                .collect(),
            pick: PICK.clone(),
            len: 0,
        }
    }

    fn shard(&self, key: u64) -> usize {
        shard_of(&self.pick, key)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &u64) -> Option<&V> {
        self.shards[self.shard(*key)].get(key)
    }

    pub fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        let s = self.shard(*key);
        self.shards[s].get_mut(key)
    }

    pub fn contains_key(&self, key: &u64) -> bool {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        let s = self.shard(key);
        let old = self.shards[s].insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value of `key`, inserted with `make` first if absent.
    pub fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> V) -> &mut V {
        let s = self.shard(key);
        match self.shards[s].entry(key) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                self.len += 1;
                v.insert(make())
            }
        }
    }

    pub fn remove(&mut self, key: &u64) -> Option<V> {
        let s = self.shard(*key);
        let old = self.shards[s].remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// How many parts there are: a walk that must not hold a lock over
    /// the whole map takes them one at a time with [`ShardMap::shard_iter`].
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The entries of part `shard` (< [`ShardMap::shard_count`]). A key
    /// is in the same part of every map.
    pub fn shard_iter(&self, shard: usize) -> impl Iterator<Item = (&u64, &V)> {
        self.shards[shard].iter()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// Keeps the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&u64, &mut V) -> bool) {
        for s in self.shards.iter_mut() {
            s.retain(&mut keep);
        }
        self.len = self.shards.iter().map(HashMap::len).sum();
    }

    /// Entries of the fullest part (for tests of the spread).
    pub fn largest_shard_len(&self) -> usize {
        self.shards.iter().map(HashMap::len).max().unwrap_or(0)
    }
}

/// Builds a [`ShardMap`] from many entries with distinct keys, part by
/// part (checkpoint loads).
///
/// Inserting 10 M entries one by one into a 1 GiB table is a cache and TLB
/// miss per insert: a checkpoint load of 10 M inodes spent 7 s there. The
/// builder first appends each entry to its part's staging vector (4,096
/// sequential write streams), then builds each part from its vector while
/// the part (about 1 MiB at 10 M entries) stays in cache. A part's staging
/// vector is freed as soon as its table is built, so the peak memory is
/// about one copy of the entries, not two.
pub struct ShardMapBuilder<V> {
    staged: Vec<Vec<(u64, V)>>,
    pick: RandomState,
    len: usize,
}

impl<V> ShardMapBuilder<V> {
    /// `expected_len` sizes the staging vectors; more entries are fine.
    pub fn with_capacity(expected_len: usize) -> Self {
        let per_shard = expected_len.div_ceil(SHARDS);
        let per_shard = per_shard + per_shard / 8;
        ShardMapBuilder {
            staged: (0..SHARDS).map(|_| Vec::with_capacity(per_shard)).collect(),
            pick: PICK.clone(),
            len: 0,
        }
    }

    /// Adds an entry. Keys must be distinct: `finish` asserts it.
    pub fn push(&mut self, key: u64, value: V) {
        let s = shard_of(&self.pick, key);
        self.staged[s].push((key, value));
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> ShardMap<V> {
        let mut shards = Vec::with_capacity(SHARDS);
        for part in self.staged {
            let n = part.len();
            // A little room to grow, as with_capacity gives a fresh map.
            let mut map = HashMap::with_capacity(n + n / 8);
            map.extend(part);
            assert_eq!(map.len(), n, "ShardMapBuilder was given a key twice");
            shards.push(map);
        }
        ShardMap {
            shards: shards.into_boxed_slice(),
            pick: self.pick,
            len: self.len,
        }
    }
}

fn shard_of(pick: &RandomState, key: u64) -> usize {
    // The top bits of a SipHash of the key (SHARDS is a power of two).
    (pick.hash_one(key) >> (64 - SHARDS.trailing_zeros())) as usize
}

impl<'a, V> IntoIterator for &'a ShardMap<V> {
    type Item = (&'a u64, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a u64, &'a V)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<V> FromIterator<(u64, V)> for ShardMap<V> {
    fn from_iter<I: IntoIterator<Item = (u64, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut map = ShardMap::with_capacity(iter.size_hint().0);
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Insert(u64, u32),
        GetOrInsert(u64, u32),
        Remove(u64),
        Retain(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..500, any::<u32>()).prop_map(|(k, v)| Step::Insert(k, v)),
            (0u64..500, any::<u32>()).prop_map(|(k, v)| Step::GetOrInsert(k, v)),
            (0u64..500).prop_map(Step::Remove),
            (1u32..5).prop_map(Step::Retain),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(steps in proptest::collection::vec(step(), 0..400)) {
            let mut ours = ShardMap::new();
            let mut model = HashMap::new();
            for s in steps {
                match s {
                    Step::Insert(k, v) => prop_assert_eq!(ours.insert(k, v), model.insert(k, v)),
                    Step::GetOrInsert(k, v) => {
                        let ours = ours.get_or_insert_with(k, || v);
                        *ours = ours.wrapping_add(1);
                        let model = model.entry(k).or_insert(v);
                        *model = model.wrapping_add(1);
                        prop_assert_eq!(*ours, *model);
                    }
                    Step::Remove(k) => prop_assert_eq!(ours.remove(&k), model.remove(&k)),
                    Step::Retain(m) => {
                        ours.retain(|_, v| *v % m != 0);
                        model.retain(|_, v| *v % m != 0);
                    }
                }
                prop_assert_eq!(ours.len(), model.len());
            }
            for k in 0..500u64 {
                prop_assert_eq!(ours.get(&k), model.get(&k));
                prop_assert_eq!(ours.contains_key(&k), model.contains_key(&k));
            }
            let mut all: Vec<(u64, u32)> = ours.iter().map(|(k, v)| (*k, *v)).collect();
            all.sort_unstable();
            let mut want: Vec<(u64, u32)> = model.into_iter().collect();
            want.sort_unstable();
            prop_assert_eq!(all, want);
        }
    }

    proptest! {
        #[test]
        fn the_builder_makes_the_map_inserts_make(keys in proptest::collection::btree_set(any::<u64>(), 0..3000)) {
            let mut b = ShardMapBuilder::with_capacity(keys.len() / 2);
            for &k in &keys {
                b.push(k, k ^ 0x5a5a);
            }
            prop_assert_eq!(b.len(), keys.len());
            let mut built = b.finish();
            prop_assert_eq!(built.len(), keys.len());
            for &k in &keys {
                prop_assert_eq!(built.get(&k), Some(&(k ^ 0x5a5a)));
            }
            let mut all: Vec<u64> = built.iter().map(|(k, _)| *k).collect();
            all.sort_unstable();
            prop_assert_eq!(all, keys.iter().copied().collect::<Vec<_>>());
            // It goes on as an ordinary map.
            built.insert(u64::MAX, 1);
            prop_assert_eq!(built.len(), keys.len() + usize::from(!keys.contains(&u64::MAX)));
        }
    }

    #[test]
    #[should_panic(expected = "given a key twice")]
    fn the_builder_refuses_a_key_twice() {
        let mut b = ShardMapBuilder::with_capacity(2);
        b.push(7, ());
        b.push(7, ());
        b.finish();
    }

    #[test]
    fn a_key_is_in_the_same_part_of_every_map() {
        let a: ShardMap<u8> = (0..5_000u64).map(|k| (k, 0)).collect();
        let mut b = ShardMapBuilder::with_capacity(10);
        for k in (0..5_000u64).rev() {
            b.push(k, 1u8);
        }
        let b = b.finish();
        for shard in 0..SHARDS {
            let mut ka: Vec<u64> = a.shard_iter(shard).map(|(k, _)| *k).collect();
            let mut kb: Vec<u64> = b.shard_iter(shard).map(|(k, _)| *k).collect();
            ka.sort_unstable();
            kb.sort_unstable();
            assert_eq!(ka, kb, "part {shard}");
        }
    }

    #[test]
    fn sequential_keys_spread_over_the_parts() {
        // Inode numbers are sequential: no part may take a run of them.
        let map: ShardMap<()> = (1..=200_000u64).map(|k| (k, ())).collect();
        assert_eq!(map.len(), 200_000);
        let even = 200_000 / SHARDS;
        // Binomial spread: the fullest of 4,096 parts is ~4 sigma above
        // the mean (sigma ~7 here); twice the mean never happens.
        assert!(
            map.largest_shard_len() < 2 * even,
            "{}",
            map.largest_shard_len()
        );
        let mut m = map;
        *m.get_mut(&7).unwrap() = ();
        assert!(m.remove(&7).is_some() && m.remove(&7).is_none());
        assert_eq!(m.len(), 199_999);
    }
}
