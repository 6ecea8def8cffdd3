//! The per-core pool of aligned I/O buffers: a fixed number allocated at
//! start-up, handed out whole per request, waited for (FIFO) when every
//! buffer is out. Memory for request data is therefore bounded by
//! `cores * buffer_pool_buffers_per_core * buffer_bytes`, whatever the load.
//!
//! Single-threaded by construction (`Rc`): each core owns its pool. The
//! bound is kept by counting buffers *lent* to live requests, not by
//! counting buffers: a request's buffers may leave it (pushed data is kept
//! for the mutation that claims it, perhaps on another core) and others may
//! come back in its reply (the claimed push's). Buffers that come back are
//! kept while `free + lent <= total` and dropped beyond; a request that
//! finds the free list short allocates the difference. In the common case
//! (a write's buffers come back in its reply) nothing is allocated: fresh
//! 1 MiB buffers cost an mmap, 256 zeroing page faults and an munmap each,
//! which was a third of chunkd's CPU on small writes.

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
    /// Buffers counted out to live `Pooled` guards, whether or not they
    /// still hold them. `free.len() + lent <= total`.
    lent: usize,
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
            lent: 0,
            buffer_bytes,
            align,
            waits: 0,
        })))
    }

    pub fn buffer_bytes(&self) -> usize {
        self.0.borrow().buffer_bytes
    }

    /// Buffers a request could take now without waiting.
    pub fn free_buffers(&self) -> usize {
        let inner = self.0.borrow();
        inner.total - inner.lent
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
            if inner.waiters.is_empty() && inner.total - inner.lent >= n {
                let bufs = take(&mut inner, n);
                drop(inner);
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
            if head == Some(ticket) && inner.total - inner.lent >= n {
                inner.waiters.pop_front();
                let bufs = take(&mut inner, n);
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

    /// Keeps what fits of buffers that were never lent by this pool (a
    /// claimed push's, come back with a reply).
    pub fn adopt(&self, bufs: Vec<AlignedBuf>) {
        if !bufs.is_empty() {
            self.give_back(0, bufs);
        }
    }

    /// Ends a loan of `lent` buffers and keeps what fits of `bufs`.
    fn give_back(&self, lent: usize, bufs: Vec<AlignedBuf>) {
        let mut inner = self.0.borrow_mut();
        assert!(
            lent <= inner.lent,
            "returning {lent} of {} lent",
            inner.lent
        );
        inner.lent -= lent;
        for mut b in bufs {
            let fits = b.capacity() == inner.buffer_bytes && b.align() == inner.align;
            if fits && inner.free.len() + inner.lent < inner.total {
                b.set_len_bytes(0);
                inner.free.push(b);
            }
        }
        assert!(inner.free.len() + inner.lent <= inner.total);
        wake_head(&mut inner);
    }
}

/// Lends `n` buffers (the caller checked they are available): free ones
/// first, fresh allocations for the rest.
fn take(inner: &mut Inner, n: usize) -> Vec<AlignedBuf> {
    assert!(inner.lent + n <= inner.total);
    let at = inner.free.len().saturating_sub(n);
    let mut bufs = inner.free.split_off(at);
    while bufs.len() < n {
        bufs.push(AlignedBuf::zeroed(inner.buffer_bytes, inner.align));
    }
    inner.lent += n;
    assert!(inner.free.len() + inner.lent <= inner.total);
    bufs
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

/// Buffers taken from a pool; they go back when this is dropped, and the
/// pool's count of lent buffers goes down by as many as were taken.
///
/// The buffers can be moved out (for owned I/O, or to another core) and put
/// back, and buffers of another request may be put back in their place
/// (see the module doc).
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

    /// Puts buffers back: the lent ones, or any others of the pool's size.
    pub fn restore(&mut self, bufs: Vec<AlignedBuf>) {
        self.bufs.extend(bufs);
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let bufs = std::mem::take(&mut self.bufs);
        self.pool.give_back(self.owed, bufs);
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

    fn ready(pool: &BufferPool, n: usize) -> Pooled {
        match poll_once(pin!(pool.acquire(n))) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => panic!("{n} buffers should be free"),
        }
    }

    #[test]
    fn lost_buffers_are_allocated_again_when_needed() {
        let pool = BufferPool::new(2, 4096, 4096);
        let mut p = ready(&pool, 2);
        let lent = p.lend();
        drop(lent);
        drop(p);
        assert_eq!(pool.free_buffers(), 2);
        assert_eq!(pool.0.borrow().free.len(), 0, "nothing allocated eagerly");
        let p = ready(&pool, 2);
        assert_eq!(p.len(), 2);
        drop(p);
        assert_eq!(pool.0.borrow().free.len(), 2);
    }

    #[test]
    fn buffers_of_another_request_are_kept_up_to_the_bound() {
        let pool = BufferPool::new(2, 4096, 4096);
        // A push's buffers leave with its data...
        let mut push = ready(&pool, 1);
        let held = push.lend();
        drop(push);
        // ...and come back with the write that claims them, which lent
        // none itself.
        let mut write = ready(&pool, 1);
        let own = write.lend();
        write.restore(own);
        write.restore(held);
        // A stranger of the wrong size is not kept, and neither is a
        // buffer beyond the bound.
        write.restore(vec![AlignedBuf::zeroed(8192, 4096)]);
        write.restore(vec![AlignedBuf::zeroed(4096, 4096)]);
        drop(write);
        assert_eq!(pool.free_buffers(), 2);
        assert_eq!(pool.0.borrow().free.len(), 2);
        assert_eq!(ready(&pool, 2).len(), 2);
    }
}
