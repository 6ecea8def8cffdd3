//! Idempotency streams: the request ids of metadata mutations.
//!
//! The master remembers, per client id, the outcomes of the last
//! `REQUEST_WINDOW_PER_CLIENT` mutations it applied, so a retried mutation
//! is answered from there instead of being applied again; a retry older
//! than everything remembered is refused rather than risked. With one id
//! for a whole `Client`, a mutation stuck in retries across a failover can
//! be overtaken by that many mutations of the client's other tasks, and its
//! retry is then refused though it may never have been applied.
//!
//! So a mutation leases a stream (an id with its own sequence) for its
//! whole life, retries included, and a stream carries one mutation at a
//! time: nothing overtakes a retry within its stream. Streams are reused
//! most recently freed first, so a client with little concurrency uses few
//! ids (each costs the master a window), and their number is bounded: past
//! `STREAMS_MAX` concurrent mutations, callers wait for one to finish.

use std::sync::Mutex;

use ringfs_wire::msg::RequestId;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Metadata mutations one `Client` has in flight at once.
pub const STREAMS_MAX: usize = 64;

struct Stream {
    client_id: u64,
    /// The seq of the next mutation on this stream.
    next_seq: u64,
}

pub(crate) struct Streams {
    /// The client's random id: stream ids are derived from it.
    base: u64,
    free: Mutex<Vec<Stream>>,
    /// Streams made so far (ids are `base` mixed with this ordinal).
    made: Mutex<u64>,
    permits: Semaphore,
}

/// A stream held for one mutation; returned to the pool when dropped.
pub(crate) struct Leased<'a> {
    streams: &'a Streams,
    stream: Option<Stream>,
    _permit: SemaphorePermit<'a>,
}

impl Streams {
    pub(crate) fn new(base: u64) -> Streams {
        Streams {
            base,
            free: Mutex::new(Vec::with_capacity(STREAMS_MAX)),
            made: Mutex::new(0),
            permits: Semaphore::new(STREAMS_MAX),
        }
    }

    /// Waits for a free stream (bounded by `STREAMS_MAX`).
    pub(crate) async fn lease(&self) -> Leased<'_> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the stream semaphore is never closed");
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let stream = reused.unwrap_or_else(|| {
            let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
            *made += 1;
            assert!(*made <= STREAMS_MAX as u64, "more streams than permits");
            Stream {
                client_id: stream_id(self.base, *made),
                next_seq: 1,
            }
        });
        Leased {
            streams: self,
            stream: Some(stream),
            _permit: permit,
        }
    }
}

impl Leased<'_> {
    /// The id of the one mutation this lease is for. Called once per
    /// mutation; its retries resend the same id.
    pub(crate) fn next_req(&mut self) -> RequestId {
        let s = self.stream.as_mut().expect("held until dropped");
        let req = RequestId {
            client_id: s.client_id,
            seq: s.next_seq,
        };
        s.next_seq += 1;
        req
    }
}

impl Drop for Leased<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            self.streams
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(s);
        }
    }
}

/// Stream `ordinal`'s id: distinct per ordinal, never 0 (0 is "no id" on
/// the wire), and as unpredictable across clients as `base`.
fn stream_id(base: u64, ordinal: u64) -> u64 {
    // splitmix64 of base + ordinal: a bijection, so ordinals never collide.
    let mut z = base.wrapping_add(ordinal.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_is_held_by_one_mutation_and_reused_after() {
        let streams = Streams::new(7);
        let (a_id, b_id);
        {
            let mut a = streams.lease().await;
            let mut b = streams.lease().await;
            let (ra, rb) = (a.next_req(), b.next_req());
            assert_ne!(
                ra.client_id, rb.client_id,
                "concurrent mutations, distinct streams"
            );
            assert_eq!((ra.seq, rb.seq), (1, 1));
            (a_id, b_id) = (ra.client_id, rb.client_id);
        }
        // Most recently freed first, and its sequence goes on.
        let mut again = streams.lease().await;
        let r = again.next_req();
        assert!(r.client_id == a_id || r.client_id == b_id);
        assert_eq!(r.seq, 2);
        assert!(!streams.free.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn no_more_than_streams_max_are_leased_at_once() {
        let streams = Streams::new(0);
        let mut held = Vec::new();
        for _ in 0..STREAMS_MAX {
            held.push(streams.lease().await);
        }
        let ids: std::collections::HashSet<u64> =
            held.iter_mut().map(|l| l.next_req().client_id).collect();
        assert_eq!(ids.len(), STREAMS_MAX);
        assert!(!ids.contains(&0));
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), streams.lease()).await;
        assert!(waiting.is_err(), "a lease beyond the bound waits");
        held.pop();
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), streams.lease())
                .await
                .is_ok()
        );
    }
}
