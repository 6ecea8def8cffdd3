//! The per-core pool of aligned I/O buffers: a fixed number allocated at
//! start-up, handed out whole per request, waited for (FIFO) when empty.
//! Memory for bulk data is therefore bounded by
//! `cores * buffer_pool_buffers_per_core * buffer_bytes`, whatever the load.
//!
//! Single-threaded by construction (`Rc`): each core owns its pool, and a
//! buffer lent to another core for disk I/O travels there and back inside
//! the request and its reply, so it always returns to the pool it came
//! from (see `shard`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::dio::AlignedBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("a request needs {needed} buffers but the pool only has {total}")]
    TooLarge { needed: usize, total: usize },
}

struct Inner {
    free: Vec<AlignedBuf>,
    /// FIFO of (ticket, buffers wanted, waker); the head is served first
    /// even if a later, smaller request would fit, so large requests are
    /// never starved.
    waiters: VecDeque<(u64, usize, Option<Waker>)>,
    next_ticket: u64,
    total: usize,
    buffer_bytes: usize,
    align: usize,
    waits: u64,
}

#[derive(Clone)]
pub struct BufferPool(Rc<RefCell<Inner>>);

impl BufferPool {
    pub fn new(buffers: usize, buffer_bytes: usize, align: usize) -> BufferPool {
        assert!(buffers > 0 && buffer_bytes > 0);
        let free = (0..buffers)
            .map(|_| AlignedBuf::zeroed(buffer_bytes, align))
            .collect();
        BufferPool(Rc::new(RefCell::new(Inner {
            free,
            waiters: VecDeque::new(),
            next_ticket: 0,
            total: buffers,
            buffer_bytes,
            align,
            waits: 0,
        })))
    }

    pub fn buffer_bytes(&self) -> usize {
        self.0.borrow().buffer_bytes
    }

    pub fn free_buffers(&self) -> usize {
        self.0.borrow().free.len()
    }

    /// How many times a request had to wait for buffers.
    pub fn waits(&self) -> u64 {
        self.0.borrow().waits
    }

    /// How many buffers hold `bytes` (at least one).
    pub fn buffers_for(&self, bytes: usize) -> usize {
        bytes.div_ceil(self.buffer_bytes()).max(1)
    }

    /// Takes `n` buffers at once (all or nothing, so two large requests can
    /// never deadlock holding half each), waiting while the pool is short.
    pub async fn acquire(&self, n: usize) -> Result<Pooled, PoolError> {
        let total = self.0.borrow().total;
        if n > total || n == 0 {
            return Err(PoolError::TooLarge { needed: n, total });
        }
        let ticket = {
            let mut inner = self.0.borrow_mut();
            if inner.waiters.is_empty() && inner.free.len() >= n {
                let at = inner.free.len() - n;
                let bufs = inner.free.split_off(at);
                return Ok(self.pooled(bufs));
            }
            inner.waits += 1;
            let t = inner.next_ticket;
            inner.next_ticket += 1;
            inner.waiters.push_back((t, n, None));
            t
        };
        // Removes our ticket if the future is dropped while waiting.
        let guard = TicketGuard {
            pool: self.clone(),
            ticket,
        };
        let bufs = poll_fn(|cx| {
            let mut inner = self.0.borrow_mut();
            let head = inner.waiters.front().map(|w| w.0);
            if head == Some(ticket) && inner.free.len() >= n {
                inner.waiters.pop_front();
                let at = inner.free.len() - n;
                let bufs = inner.free.split_off(at);
                // The next waiter may fit too.
                wake_head(&mut inner);
                return Poll::Ready(bufs);
            }
            if let Some(w) = inner.waiters.iter_mut().find(|w| w.0 == ticket) {
                w.2 = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        std::mem::forget(guard);
        Ok(self.pooled(bufs))
    }

    fn pooled(&self, bufs: Vec<AlignedBuf>) -> Pooled {
        Pooled {
            pool: self.clone(),
            owed: bufs.len(),
            bufs,
        }
    }

    fn give_back(&self, bufs: impl IntoIterator<Item = AlignedBuf>) {
        let mut inner = self.0.borrow_mut();
        for mut b in bufs {
            b.set_len_bytes(0);
            inner.free.push(b);
        }
        debug_assert!(inner.free.len() <= inner.total);
        wake_head(&mut inner);
    }

    /// A buffer that never came back (its core went away): replace it, so
    /// the pool keeps its size.
    fn replace_lost(&self, n: usize) {
        let (bytes, align) = {
            let inner = self.0.borrow();
            (inner.buffer_bytes, inner.align)
        };
        self.give_back((0..n).map(|_| AlignedBuf::zeroed(bytes, align)));
    }
}

fn wake_head(inner: &mut Inner) {
    if let Some((_, _, Some(w))) = inner.waiters.front_mut() {
        w.wake_by_ref();
    }
}

struct TicketGuard {
    pool: BufferPool,
    ticket: u64,
}

impl Drop for TicketGuard {
    fn drop(&mut self) {
        let mut inner = self.pool.0.borrow_mut();
        inner.waiters.retain(|w| w.0 != self.ticket);
        wake_head(&mut inner);
    }
}

/// Buffers taken from a pool; they go back when this is dropped.
///
/// The buffers can be moved out (for owned I/O, or to another core) and put
/// back; whatever is missing at drop is replaced with fresh allocations,
/// so the pool never shrinks.
pub struct Pooled {
    pool: BufferPool,
    bufs: Vec<AlignedBuf>,
    owed: usize,
}

impl Pooled {
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    pub fn bufs(&self) -> &[AlignedBuf] {
        &self.bufs
    }

    /// Moves the buffers out (they are `Send`, this guard is not).
    pub fn lend(&mut self) -> Vec<AlignedBuf> {
        std::mem::take(&mut self.bufs)
    }

    /// Puts lent buffers back.
    pub fn restore(&mut self, bufs: Vec<AlignedBuf>) {
        self.bufs.extend(bufs);
        assert!(
            self.bufs.len() <= self.owed,
            "more buffers restored than lent"
        );
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let bufs = std::mem::take(&mut self.bufs);
        let missing = self.owed - bufs.len();
        self.pool.give_back(bufs);
        if missing > 0 {
            self.pool.replace_lost(missing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn waits_fifo_and_returns_on_drop() {
        let pool = BufferPool::new(4, 4096, 4096);
        let a = match poll_once(pin!(pool.acquire(3))) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => panic!("should be free"),
        };
        assert_eq!(pool.free_buffers(), 1);
        let mut big = pin!(pool.acquire(2));
        assert!(poll_once(big.as_mut()).is_pending());
        // A later small request does not overtake the waiting big one.
        let mut small = pin!(pool.acquire(1));
        assert!(poll_once(small.as_mut()).is_pending());
        drop(a);
        let b = match poll_once(big.as_mut()) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => panic!("should have been served"),
        };
        assert_eq!(b.len(), 2);
        assert!(poll_once(small.as_mut()).is_ready());
        assert_eq!(pool.waits(), 2);
        match poll_once(pin!(pool.acquire(5))) {
            Poll::Ready(Err(e)) => assert_eq!(
                e,
                PoolError::TooLarge {
                    needed: 5,
                    total: 4
                }
            ),
            _ => panic!("an oversized request must fail at once"),
        }
    }

    #[test]
    fn lost_buffers_are_replaced() {
        let pool = BufferPool::new(2, 4096, 4096);
        let mut p = match poll_once(pin!(pool.acquire(2))) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => panic!(),
        };
        let lent = p.lend();
        drop(lent);
        drop(p);
        assert_eq!(pool.free_buffers(), 2);
    }
}
