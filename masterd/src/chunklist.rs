//! A file's chunk handles in 16 bytes: most files have one chunk (or none
//! yet), and at 10 M files every byte of an inode is 10 MB.
//!
//! `SmallVec<[u64; 1]>` held the one handle inline too, but in 24 bytes,
//! with no spare bit pattern, so the inode's file-or-directory tag took
//! 8 bytes more: an inode was 80 bytes, now 72 (note 017).

use std::ops::Deref;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ChunkList {
    #[default]
    Empty,
    One(u64),
    /// Two or more.
    Many(Box<Vec<u64>>),
}

// The point of the type; a layout change that loses it shows here.
const _: () = assert!(std::mem::size_of::<ChunkList>() == 16);

impl ChunkList {
    pub fn push(&mut self, handle: u64) {
        *self = match std::mem::take(self) {
            ChunkList::Empty => ChunkList::One(handle),
            ChunkList::One(first) => ChunkList::Many(Box::new(vec![first, handle])),
            ChunkList::Many(mut all) => {
                all.push(handle);
                ChunkList::Many(all)
            }
        };
    }
}

impl Deref for ChunkList {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        match self {
            ChunkList::Empty => &[],
            ChunkList::One(h) => std::slice::from_ref(h),
            ChunkList::Many(all) => all,
        }
    }
}

impl FromIterator<u64> for ChunkList {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut list = ChunkList::Empty;
        for h in iter {
            list.push(h);
        }
        list
    }
}

impl IntoIterator for ChunkList {
    type Item = u64;
    type IntoIter = std::vec::IntoIter<u64>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            ChunkList::Empty => Vec::new().into_iter(),
            ChunkList::One(h) => vec![h].into_iter(),
            ChunkList::Many(all) => all.into_iter(),
        }
    }
}

impl<'a> IntoIterator for &'a ChunkList {
    type Item = &'a u64;
    type IntoIter = std::slice::Iter<'a, u64>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_through_its_forms_and_reads_like_a_slice() {
        let mut list = ChunkList::default();
        let mut model = Vec::new();
        for h in [7u64, 3, 9, u64::MAX] {
            assert_eq!(&list[..], &model[..]);
            list.push(h);
            model.push(h);
        }
        assert_eq!(&list[..], &model[..]);
        assert_eq!(list.clone().into_iter().collect::<Vec<_>>(), model);
        assert_eq!(list.iter().copied().collect::<ChunkList>(), list);
        assert_eq!([5u64].into_iter().collect::<ChunkList>(), ChunkList::One(5));
        assert_eq!(std::iter::empty().collect::<ChunkList>(), ChunkList::Empty);
    }

    #[test]
    fn an_inode_is_72_bytes() {
        assert_eq!(std::mem::size_of::<crate::namespace::Inode>(), 72);
    }
}
