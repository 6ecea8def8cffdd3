//! A `u64`-keyed hash map in [`SHARDS`] independent parts, so that growing
//! never rehashes the whole table at once.
//!
//! A `HashMap` doubles when it is 7/8 full, moving every entry while the
//! caller waits. For the inode table of 7.3 M entries (88 bytes each), that
//! is a 1.5 GiB allocation and a rehash on the state machine's apply path:
//! `ringfs-bench meta` at 10 M files saw one commit take over 3 s at exactly
//! that point, and its client got `Unavailable`. In 1,024 parts, each part
//! grows on its own at ~1/1,024 of the size (about a millisecond). Parts are
//! picked by a random hash, so they fill at slightly different rates and
//! their growth spreads over time: with a fixed spread of keys, sequential
//! inode numbers would fill every part in lockstep, and the parts would all
//! grow within the same few hundred inserts.
//!
//! Iteration order is unspecified, as with `HashMap`: callers that need a
//! deterministic order (checkpoints, digests) sort.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// Parts per map: each holds ~1/1,024 of the entries. An empty part costs
/// 48 bytes, so an empty map costs 48 KiB.
pub const SHARDS: usize = 1024;

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
            pick: RandomState::new(),
            len: 0,
        }
    }

    fn shard(&self, key: u64) -> usize {
        // The top bits of a SipHash of the key (SHARDS is a power of two).
        (self.pick.hash_one(key) >> (64 - SHARDS.trailing_zeros())) as usize
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

    pub fn remove(&mut self, key: &u64) -> Option<V> {
        let s = self.shard(*key);
        let old = self.shards[s].remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
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
        Remove(u64),
        Retain(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..500, any::<u32>()).prop_map(|(k, v)| Step::Insert(k, v)),
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

    #[test]
    fn sequential_keys_spread_over_the_parts() {
        // Inode numbers are sequential: no part may take a run of them.
        let map: ShardMap<()> = (1..=200_000u64).map(|k| (k, ())).collect();
        assert_eq!(map.len(), 200_000);
        let even = 200_000 / SHARDS;
        // Binomial spread: the fullest of 1,024 parts is ~4 sigma above
        // the mean (sigma ~14 here); twice the mean never happens.
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
