//! A per-chunk lock over ranges of 64 KiB blocks, FIFO among conflicting
//! requests. Writes take their blocks exclusively from before they read a
//! partial block until their data is on disk and the CRC table updated;
//! reads take theirs shared, so a read never sees new bytes with an old
//! CRC (which would look like corruption). Writes to disjoint blocks run
//! concurrently. Core-local (the chunk's owner core), so no atomics.

use std::cell::RefCell;
use std::rc::Rc;

use local_event::Event;

#[derive(Clone, Copy, Debug)]
struct Entry {
    id: u64,
    first: u64,
    /// Inclusive.
    last: u64,
    exclusive: bool,
    granted: bool,
}

impl Entry {
    fn conflicts(&self, other: &Entry) -> bool {
        (self.exclusive || other.exclusive) && self.first <= other.last && other.first <= self.last
    }
}

#[derive(Default)]
struct Inner {
    /// In arrival order: granted entries and waiters.
    queue: Vec<Entry>,
    next_id: u64,
}

#[derive(Clone, Default)]
pub struct RangeLock {
    inner: Rc<RefCell<Inner>>,
    event: Rc<Event>,
}

pub struct RangeGuard {
    lock: RangeLock,
    id: u64,
}

impl RangeLock {
    pub fn new() -> RangeLock {
        RangeLock::default()
    }

    /// Locks blocks `first..=last`. Granted once no earlier entry in the
    /// queue (granted or waiting) conflicts, so conflicting requests are
    /// served in arrival order. Cancel-safe: dropping the future removes
    /// the request.
    pub async fn lock(&self, first: u64, last: u64, exclusive: bool) -> RangeGuard {
        self.enqueue(first, last, exclusive).wait().await
    }

    /// Takes a place in the queue now (synchronously, so the caller can
    /// fix an order, e.g. a mutation serial, in the same step) and returns
    /// the guard to wait on.
    pub fn enqueue(&self, first: u64, last: u64, exclusive: bool) -> RangeGuard {
        assert!(first <= last, "empty block range {first}..={last}");
        let mut inner = self.inner.borrow_mut();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.queue.push(Entry {
            id,
            first,
            last,
            exclusive,
            granted: false,
        });
        RangeGuard {
            lock: self.clone(),
            id,
        }
    }

    fn try_grant(&self, id: u64) -> bool {
        let mut inner = self.inner.borrow_mut();
        let Some(pos) = inner.queue.iter().position(|e| e.id == id) else {
            unreachable!("a waiting range lock entry vanished")
        };
        let me = inner.queue[pos];
        if inner.queue[..pos].iter().any(|e| e.conflicts(&me)) {
            return false;
        }
        inner.queue[pos].granted = true;
        true
    }

    /// Entries held or waited for (for metrics and tests).
    pub fn queued(&self) -> usize {
        self.inner.borrow().queue.len()
    }
}

impl RangeGuard {
    /// Waits until the range is granted; dropping the guard at any point
    /// gives up its place.
    pub async fn wait(self) -> RangeGuard {
        loop {
            if self.lock.try_grant(self.id) {
                return self;
            }
            let listener = self.lock.event.listen();
            if self.lock.try_grant(self.id) {
                return self;
            }
            listener.await;
        }
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        self.lock
            .inner
            .borrow_mut()
            .queue
            .retain(|e| e.id != self.id);
        self.lock.event.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn ready<F: Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        match f.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    #[test]
    fn disjoint_writes_share_overlapping_wait_in_order() {
        let lock = RangeLock::new();
        let a = ready(pin!(lock.lock(0, 3, true))).unwrap();
        let b = ready(pin!(lock.lock(4, 7, true))).unwrap();
        let mut c = pin!(lock.lock(3, 4, false));
        assert!(ready(c.as_mut()).is_none());
        // A later read of block 9 is not blocked by the waiting read.
        let d = ready(pin!(lock.lock(9, 9, false))).unwrap();
        // A later write of block 0 waits behind the queued read of 3..=4?
        // No: it conflicts only with `a`.
        let mut e = pin!(lock.lock(0, 0, true));
        assert!(ready(e.as_mut()).is_none());
        drop(a);
        assert!(ready(c.as_mut()).is_none(), "still blocked by b");
        drop(b);
        let c = ready(c.as_mut()).unwrap();
        let e = ready(e.as_mut()).unwrap();
        drop((c, d, e));
        assert_eq!(lock.queued(), 0);
    }

    #[test]
    fn readers_share() {
        let lock = RangeLock::new();
        let a = ready(pin!(lock.lock(0, 10, false))).unwrap();
        let b = ready(pin!(lock.lock(5, 6, false))).unwrap();
        drop((a, b));
    }
}
