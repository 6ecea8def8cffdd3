//! A `u64`-keyed map for keys handed out by a counter (inode numbers,
//! chunk handles): values in fixed pages indexed by the key, so an entry
//! costs its value and nothing else (design note 017).
//!
//! A hash map stores the key beside the value, keeps between 7/16 and 7/8
//! of its buckets full, and doubles at once. For 10 M single-chunk files
//! that made the inode, chunk and location tables cost 1.7× their values:
//! about 250 of the 403 bytes per file (docs/BENCHMARKS.md). Here key `k`
//! is slot `k % PAGE_SLOTS` of page `k / PAGE_SLOTS`, a page holds
//! [`PAGE_SLOTS`] values and an occupancy mask, and pages are allocated as
//! keys reach them. Counter-issued keys fill pages densely; deletions leave
//! holes that are reused only if the same keys come back, and a page is
//! freed when its last entry goes.
//!
//! Pages are dealt round-robin to [`PARTS`] parts, so a walk that must not
//! hold a lock over the whole map can take one part per lock hold
//! (`crate::chunkscan`), and a key is in the same part of every map: the
//! chunk pass walks part `i` of the chunk table and looks each handle up in
//! part `i` of the location table. Nothing ever rehashes: a new page is one
//! allocation, and a part's page directory grows by amortised doubling of a
//! vector of pointers (about 40 per part at 10 M keys).
//!
//! Keys far beyond the ones in use (a chunk report naming a handle no
//! master ever issued) would make a page each and grow the directory to
//! reach them. They go to a small ordered map in their part instead; a
//! directory grows by at most [`GROW_PAGES_MIN`] pages or by doubling per
//! insert, and when it grows, the far keys it now reaches move into pages.
//! So the memory a bad report can take is bounded by the entries it
//! brings, not by the values of their keys.
//!
//! Iteration order is unspecified but deterministic (part, then key within
//! the part's pages, then its far keys); callers that need key order sort.

use std::collections::BTreeMap;

/// Values per page; the occupancy mask is one `u64`.
pub const PAGE_SLOTS: usize = 64;
/// Parts per map. At 10 M keys a part holds about 2,400 of them.
pub const PARTS: usize = 4096;
/// A part's directory may grow by this many pages in one insert even when
/// it is small (so a part with few pages takes the next ones in order).
pub const GROW_PAGES_MIN: usize = 64;

const _: () = assert!(PAGE_SLOTS == 64 && PARTS.is_power_of_two());

#[derive(Clone, Debug)]
struct Page<V> {
    /// Bit `i` set: slot `i` holds a value. Unset slots hold `V::default()`.
    occupied: u64,
    slots: [V; PAGE_SLOTS],
}

impl<V: Default> Page<V> {
    fn new() -> Box<Page<V>> {
        Box::new(Page {
            occupied: 0,
            slots: std::array::from_fn(|_| V::default()),
        })
    }

    /// The occupied slots with their keys, in key order.
    fn iter(&self, part: usize, index: usize) -> impl Iterator<Item = (u64, &V)> {
        self.slots
            .iter()
            .enumerate()
            .filter(move |(slot, _)| self.occupied & (1 << slot) != 0)
            .map(move |(slot, v)| (key_of(part, index, slot), v))
    }
}

#[derive(Clone, Debug)]
struct Part<V> {
    /// Index `d` holds the page of keys `[(d * PARTS + part) * PAGE_SLOTS, +PAGE_SLOTS)`.
    pages: Vec<Option<Box<Page<V>>>>,
    /// Keys whose directory index is at or past `pages.len()`.
    far: BTreeMap<u64, V>,
}

impl<V> Default for Part<V> {
    fn default() -> Self {
        Part {
            pages: Vec::new(),
            far: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PagedMap<V> {
    parts: Box<[Part<V>]>,
    len: usize,
}

/// Where a key lives: its part, its directory index in the part, its slot.
#[derive(Clone, Copy)]
struct Place {
    part: usize,
    index: usize,
    slot: usize,
}

fn place(key: u64) -> Place {
    let page = key / PAGE_SLOTS as u64;
    Place {
        part: (page % PARTS as u64) as usize,
        // Saturating: such a key is far whatever the directory's length.
        index: usize::try_from(page / PARTS as u64).unwrap_or(usize::MAX),
        slot: (key % PAGE_SLOTS as u64) as usize,
    }
}

/// The first key of directory index `index` in part `part`, if there is
/// such a key (none past `u64::MAX`).
fn first_key(part: usize, index: usize) -> Option<u64> {
    (index as u64)
        .checked_mul(PARTS as u64)?
        .checked_add(part as u64)?
        .checked_mul(PAGE_SLOTS as u64)
}

fn key_of(part: usize, index: usize, slot: usize) -> u64 {
    ((index as u64 * PARTS as u64) + part as u64) * PAGE_SLOTS as u64 + slot as u64
}

impl<V> Default for PagedMap<V> {
    fn default() -> Self {
        PagedMap {
            parts: (0..PARTS).map(|_| Part::default()).collect(),
            len: 0,
        }
    }
}

impl<V: Default> PagedMap<V> {
    pub fn new() -> Self {
        PagedMap::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &u64) -> Option<&V> {
        let p = place(*key);
        let part = &self.parts[p.part];
        if p.index < part.pages.len() {
            let page = part.pages[p.index].as_deref()?;
            (page.occupied & (1 << p.slot) != 0).then(|| &page.slots[p.slot])
        } else {
            part.far.get(key)
        }
    }

    pub fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        let p = place(*key);
        let part = &mut self.parts[p.part];
        if p.index < part.pages.len() {
            let page = part.pages[p.index].as_deref_mut()?;
            (page.occupied & (1 << p.slot) != 0).then(|| &mut page.slots[p.slot])
        } else {
            part.far.get_mut(key)
        }
    }

    pub fn contains_key(&self, key: &u64) -> bool {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        let old = self.parts[place(key).part].insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value of `key`, inserted with `make` first if absent.
    pub fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> V) -> &mut V {
        if !self.contains_key(&key) {
            self.insert(key, make());
        }
        self.get_mut(&key)
            .expect("PagedMap: a key just inserted is present")
    }

    pub fn remove(&mut self, key: &u64) -> Option<V> {
        let old = self.parts[place(*key).part].remove(*key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// How many parts there are: a walk that must not hold a lock over
    /// the whole map takes them one at a time with [`PagedMap::part_iter`].
    pub fn part_count(&self) -> usize {
        self.parts.len()
    }

    /// The part `key` is in, in every map.
    pub fn part_of(key: u64) -> usize {
        place(key).part
    }

    /// Keeps the entries of part `part` for which `keep` says so; returns
    /// how many entries it looked at (a bounded walk's cost).
    pub fn retain_part(&mut self, part: usize, mut keep: impl FnMut(u64, &mut V) -> bool) -> usize {
        let p = &mut self.parts[part];
        let before = p.len();
        p.retain(part, &mut keep);
        let after = p.len();
        assert!(after <= before && before <= self.len);
        self.len = self.len - before + after;
        before
    }

    /// The entries of part `part` (< [`PagedMap::part_count`]). A key is
    /// in the same part of every map.
    pub fn part_iter(&self, part: usize) -> impl Iterator<Item = (u64, &V)> {
        self.parts[part].iter(part)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.parts.iter().enumerate().flat_map(|(i, p)| p.iter(i))
    }

    /// The entries in ascending key order (checkpoints, digests): pages
    /// taken round by round across the parts, which is key order; only if
    /// some part has far keys is the whole map collected and sorted.
    pub fn iter_by_key(&self) -> Box<dyn Iterator<Item = (u64, &V)> + '_> {
        if self.parts.iter().any(|p| !p.far.is_empty()) {
            let mut all: Vec<(u64, &V)> = self.iter().collect();
            all.sort_unstable_by_key(|&(k, _)| k);
            return Box::new(all.into_iter());
        }
        let rounds = self.parts.iter().map(|p| p.pages.len()).max().unwrap_or(0);
        Box::new((0..rounds).flat_map(move |index| {
            self.parts.iter().enumerate().flat_map(move |(part, p)| {
                p.pages
                    .get(index)
                    .and_then(|page| page.as_deref())
                    .into_iter()
                    .flat_map(move |page| page.iter(part, index))
            })
        }))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Keeps the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &mut V) -> bool) {
        let mut len = 0;
        for (i, part) in self.parts.iter_mut().enumerate() {
            part.retain(i, &mut keep);
            len += part.len();
        }
        self.len = len;
    }

    /// Pages allocated, and far keys (for the tests of the layout).
    #[cfg(test)]
    pub fn footprint(&self) -> (usize, usize) {
        let pages = self
            .parts
            .iter()
            .map(|p| p.pages.iter().flatten().count())
            .sum();
        let far = self.parts.iter().map(|p| p.far.len()).sum();
        (pages, far)
    }
}

impl<V: Default> Part<V> {
    fn len(&self) -> usize {
        let paged: u32 = self
            .pages
            .iter()
            .flatten()
            .map(|p| p.occupied.count_ones())
            .sum();
        paged as usize + self.far.len()
    }

    fn insert(&mut self, key: u64, value: V) -> Option<V> {
        let p = place(key);
        if p.index >= self.pages.len() {
            let reach = self.pages.len() + self.pages.len().max(GROW_PAGES_MIN);
            if p.index >= reach {
                return self.far.insert(key, value);
            }
            self.grow_to(p.index + 1);
        }
        let page = self.pages[p.index].get_or_insert_with(Page::new);
        let bit = 1u64 << p.slot;
        let old = std::mem::replace(&mut page.slots[p.slot], value);
        let was = page.occupied & bit != 0;
        page.occupied |= bit;
        was.then_some(old)
    }

    /// Lengthens the directory to `len` pages and moves the far keys it
    /// now reaches into pages, so that a key is in a page exactly when its
    /// index is below the directory's length.
    fn grow_to(&mut self, len: usize) {
        assert!(len > self.pages.len());
        self.pages.resize_with(len, || None);
        let Some(&first) = self.far.keys().next() else {
            return;
        };
        if place(first).index >= len {
            return;
        }
        // Within a part, key order is (index, slot) order: the keys now
        // reached are exactly those below the first key of index `len`.
        let part = place(first).part;
        let reached = match first_key(part, len) {
            Some(bound) => {
                let rest = self.far.split_off(&bound);
                std::mem::replace(&mut self.far, rest)
            }
            None => std::mem::take(&mut self.far),
        };
        for (k, v) in reached {
            let p = place(k);
            debug_assert!(p.index < len);
            let page = self.pages[p.index].get_or_insert_with(Page::new);
            page.slots[p.slot] = v;
            page.occupied |= 1 << p.slot;
        }
    }

    fn remove(&mut self, key: u64) -> Option<V> {
        let p = place(key);
        if p.index >= self.pages.len() {
            return self.far.remove(&key);
        }
        let page = self.pages[p.index].as_deref_mut()?;
        let bit = 1u64 << p.slot;
        if page.occupied & bit == 0 {
            return None;
        }
        page.occupied &= !bit;
        let old = std::mem::take(&mut page.slots[p.slot]);
        if page.occupied == 0 {
            self.pages[p.index] = None;
            self.shrink();
        }
        Some(old)
    }

    /// Drops trailing empty directory entries. Far keys all have indices
    /// at or past the old length, so they stay past the new one.
    fn shrink(&mut self) {
        while self.pages.last().is_some_and(Option::is_none) {
            self.pages.pop();
        }
    }

    fn iter(&self, part: usize) -> impl Iterator<Item = (u64, &V)> {
        let paged = self
            .pages
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_deref().map(|p| (i, p)))
            .flat_map(move |(index, page)| page.iter(part, index));
        paged.chain(self.far.iter().map(|(k, v)| (*k, v)))
    }

    fn retain(&mut self, part: usize, keep: &mut impl FnMut(u64, &mut V) -> bool) {
        for (index, entry) in self.pages.iter_mut().enumerate() {
            let Some(page) = entry.as_deref_mut() else {
                continue;
            };
            for slot in 0..PAGE_SLOTS {
                let bit = 1u64 << slot;
                if page.occupied & bit != 0
                    && !keep(key_of(part, index, slot), &mut page.slots[slot])
                {
                    page.occupied &= !bit;
                    page.slots[slot] = V::default();
                }
            }
            if page.occupied == 0 {
                *entry = None;
            }
        }
        self.shrink();
        self.far.retain(|k, v| keep(*k, v));
    }
}

impl<'a, V: Default> IntoIterator for &'a PagedMap<V> {
    type Item = (u64, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (u64, &'a V)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<V: Default> FromIterator<(u64, V)> for PagedMap<V> {
    fn from_iter<I: IntoIterator<Item = (u64, V)>>(iter: I) -> Self {
        let mut map = PagedMap::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Insert(u64, u32),
        GetOrInsert(u64, u32),
        Remove(u64),
        Retain(u32),
    }

    /// Keys near the start (dense pages), spread over several rounds of
    /// the parts, and far away (the far map and its migration).
    fn key() -> impl Strategy<Value = u64> {
        let round = (PARTS * PAGE_SLOTS) as u64;
        prop_oneof![
            0u64..300,
            (0u64..200, 0u64..4).prop_map(move |(k, r)| k + r * round + 7 * PAGE_SLOTS as u64),
            // Index 70 starts far; 40 then 100 grow the directory past it,
            // which moves it into a page.
            (
                0u64..200,
                proptest::sample::select(vec![40u64, 70, 100, 150])
            )
                .prop_map(move |(k, index)| k + index * round),
            Just(u64::MAX),
            Just(u64::MAX - 1),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (key(), any::<u32>()).prop_map(|(k, v)| Step::Insert(k, v)),
            (key(), any::<u32>()).prop_map(|(k, v)| Step::GetOrInsert(k, v)),
            key().prop_map(Step::Remove),
            (1u32..5).prop_map(Step::Retain),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(steps in proptest::collection::vec(step(), 0..600)) {
            let mut ours = PagedMap::new();
            let mut model = HashMap::new();
            for s in &steps {
                match *s {
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
            for s in &steps {
                let k = match *s {
                    Step::Insert(k, _) | Step::GetOrInsert(k, _) | Step::Remove(k) => k,
                    Step::Retain(_) => continue,
                };
                prop_assert_eq!(ours.get(&k), model.get(&k));
                prop_assert_eq!(ours.contains_key(&k), model.contains_key(&k));
            }
            let mut all: Vec<(u64, u32)> = ours.iter().map(|(k, v)| (k, *v)).collect();
            all.sort_unstable();
            let mut want: Vec<(u64, u32)> = model.into_iter().collect();
            want.sort_unstable();
            prop_assert_eq!(&all, &want);
            let by_key: Vec<(u64, u32)> = ours.iter_by_key().map(|(k, v)| (k, *v)).collect();
            prop_assert_eq!(&by_key, &want);
            let mut by_part: Vec<(u64, u32)> = (0..ours.part_count())
                .flat_map(|p| ours.part_iter(p).map(|(k, v)| (k, *v)).collect::<Vec<_>>())
                .collect();
            by_part.sort_unstable();
            prop_assert_eq!(by_part, want);
        }
    }

    #[test]
    fn a_key_is_in_the_same_part_of_every_map() {
        let a: PagedMap<u8> = (0..50_000u64).map(|k| (k, 0)).collect();
        let b: PagedMap<u8> = (0..50_000u64).rev().map(|k| (k, 1)).collect();
        for part in 0..PARTS {
            let ka: Vec<u64> = a.part_iter(part).map(|(k, _)| k).collect();
            let kb: Vec<u64> = b.part_iter(part).map(|(k, _)| k).collect();
            assert_eq!(ka, kb, "part {part}");
        }
    }

    #[test]
    fn retaining_one_part_leaves_the_others_and_keeps_the_count() {
        // Near keys and a far one (past every directory).
        let mut map: PagedMap<u64> = (0..20_000u64)
            .chain([u64::MAX - 3])
            .map(|k| (k, k))
            .collect();
        let far_part = PagedMap::<u64>::part_of(u64::MAX - 3);
        assert!(map.part_iter(far_part).any(|(k, _)| k == u64::MAX - 3));
        let part = PagedMap::<u64>::part_of(130);
        let in_part = map.part_iter(part).count();
        let looked = map.retain_part(part, |k, _| k % 2 == 0);
        assert_eq!(looked, in_part);
        assert_eq!(map.len(), map.iter().count());
        for (k, _) in map.part_iter(part) {
            assert_eq!(k % 2, 0);
            assert_eq!(PagedMap::<u64>::part_of(k), part);
        }
        assert_eq!(map.get(&131), None);
        assert_eq!(map.get(&130), Some(&130));
        let next_page = 131 + PAGE_SLOTS as u64;
        assert_eq!(map.get(&next_page), Some(&next_page));
        map.retain_part(far_part, |_, _| false);
        assert_eq!(map.get(&(u64::MAX - 3)), None);
        assert_eq!(map.len(), map.iter().count());
    }

    #[test]
    fn counter_keys_fill_whole_pages_and_removals_free_them() {
        let n = 1_000_000u64;
        let mut map: PagedMap<u32> = (1..=n).map(|k| (k, k as u32)).collect();
        let (pages, far) = map.footprint();
        assert_eq!(far, 0);
        // Keys 1..=n touch pages 0..=n/64.
        assert_eq!(pages, n as usize / PAGE_SLOTS + 1);
        for k in 1..=n {
            assert_eq!(map.remove(&k), Some(k as u32));
        }
        assert!(map.is_empty());
        assert_eq!(map.footprint(), (0, 0));
    }

    #[test]
    fn keys_out_of_order_still_land_in_pages() {
        // A full chunk report arrives in no particular order, here for 300
        // directory indices of one part: keys past a directory's reach go
        // far first and move into pages as the directory grows, so none
        // stays far once every key is in.
        let round = (PARTS * PAGE_SLOTS) as u64;
        let mut keys: Vec<u64> = (0..300u64)
            .flat_map(|index| (0..PAGE_SLOTS as u64).map(move |slot| index * round + slot))
            .collect();
        let mut x = 12_345u64;
        for i in (1..keys.len()).rev() {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            keys.swap(i, (x >> 33) as usize % (i + 1));
        }
        let mut map = PagedMap::new();
        let mut went_far = 0;
        for (i, &k) in keys.iter().enumerate() {
            map.insert(k, k);
            if i % 500 == 0 {
                went_far = went_far.max(map.footprint().1);
            }
        }
        assert!(went_far > 0, "the test never exercised the far map");
        assert_eq!(map.footprint(), (300, 0), "keys stranded in the far map");
        assert_eq!(map.len(), keys.len());
        for &k in &keys {
            assert_eq!(map.get(&k), Some(&k));
        }
    }

    #[test]
    fn a_wild_key_costs_an_entry_not_a_page() {
        let mut map: PagedMap<[u64; 32]> = PagedMap::new();
        for i in 0..1000u64 {
            map.insert(u64::MAX - i * 1_000_003, [1; 32]);
        }
        assert_eq!(map.footprint(), (0, 1000));
        assert_eq!(map.get(&u64::MAX), Some(&[1; 32]));
        assert_eq!(map.remove(&u64::MAX), Some([1; 32]));
        assert_eq!(map.len(), 999);
    }
}
