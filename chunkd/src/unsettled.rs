//! The chunks of one core that may have settling to do: a durable
//! watermark not yet logged, or Intents still open in their meta log
//! (`Chunk::settle`). Housekeeping visits only these, so its cost follows
//! the chunks written since the last tick, not every chunk the core holds
//! (a chunkserver of a dozen large disks holds millions).
//!
//! A chunk marks itself whenever it writes a meta-log batch: every state
//! settling acts on starts with one. Housekeeping takes the set, settles
//! each chunk, and marks again the ones still busy; a settle that writes a
//! batch marks its chunk for one more visit, which finds nothing to do.

use std::cell::RefCell;
use std::collections::BTreeSet;

#[derive(Debug, Default)]
pub struct Unsettled {
    handles: RefCell<BTreeSet<u64>>,
}

impl Unsettled {
    pub fn mark(&self, handle: u64) {
        self.handles.borrow_mut().insert(handle);
    }

    /// Every marked handle, in order, leaving the set empty. At most one
    /// per chunk of the core: the set holds handles, not events.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.handles.borrow_mut())
            .into_iter()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.handles.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.borrow().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_empties_and_marks_are_per_handle() {
        let u = Unsettled::default();
        assert!(u.take().is_empty());
        u.mark(7);
        u.mark(3);
        u.mark(7);
        assert_eq!(u.len(), 2);
        assert_eq!(u.take(), [3, 7]);
        assert!(u.is_empty());
        u.mark(3);
        assert_eq!(u.take(), [3]);
    }
}
