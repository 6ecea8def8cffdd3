//! The scrubber of one core: re-verifies every block of the chunks this
//! core owns within the scrub period, least recently verified chunk first,
//! paced at (stored bytes / period) and stepping aside while foreground
//! requests run. A bad block marks the replica corrupt and queues a report
//! for the masters, which re-replicate from a good copy.
//!
//! The order is a queue ([`ScrubOrder`]), not a search: a core can own
//! millions of small chunks, and the scrubber runs on the data-path thread.
//! Until 2026-11-22 every step walked all of them twice (the least recently
//! verified, then the progress figures), so scrubbing a store of small
//! chunks cost time quadratic in their number.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringfs_wire::checksum::BLOCK_BYTES;

use crate::dio::AlignedBuf;
use crate::meta::ChunkState;
use crate::metrics::ChecksumSource;
use crate::node::ReplicaEvent;
use crate::shard::Core;

/// Blocks verified per step (one read).
const STEP_BLOCKS: u64 = 16;
/// Longest the scrubber waits for foreground requests to drain before it
/// takes its step anyway (it must still finish within the period).
const YIELD_MAX: Duration = Duration::from_millis(50);
/// Pause when there is nothing to scrub.
const IDLE_SLEEP: Duration = Duration::from_millis(200);
/// Slowest pace: even an almost empty node re-reads at least this much per
/// second, so small stores are covered well within the period.
const MIN_RATE_BYTES_PER_SEC: f64 = 1.0 * 1024.0 * 1024.0;
/// Queue entries looked at for the next due chunk before the scrubber
/// sleeps and looks again.
const LOOK_AHEAD_MAX: usize = 1024;
/// How often the progress figures are recomputed (they walk the overdue
/// head of the queue).
const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// Stale queue entries (of chunks deleted or replaced) tolerated beyond
/// the live ones before the queue is compacted.
const STALE_ENTRIES_SLACK: usize = 1024;

/// One chunk instance in the scrub queue: its handle, its data file id
/// (which tells a replaced chunk of the same handle apart), and when it
/// joined the queue: when it was stored, or last scrubbed.
#[derive(Clone, Copy, Debug)]
struct Entry {
    handle: u64,
    instance: u64,
    queued_at: Instant,
}

/// A core's chunks in the order they fall due: the order they were stored
/// or last scrubbed, which is the order of their `verified_at` (only the
/// scrubber sets it), so the head is the least recently verified.
/// Entries of deleted, replaced or corrupt chunks are dropped when met,
/// and all at once when they outnumber the live ones.
#[derive(Default)]
pub struct ScrubOrder {
    queue: RefCell<VecDeque<Entry>>,
}

/// What the scrubber needs of a chunk in the queue.
pub struct Queued {
    pub verified_at: Instant,
    pub length_bytes: u64,
    /// Known bad already: its replacement comes from the master, and
    /// nothing of it is scrubbed or counted.
    pub corrupt: bool,
}

impl ScrubOrder {
    pub fn push(&self, handle: u64, instance: u64, queued_at: Instant) {
        self.queue.borrow_mut().push_back(Entry {
            handle,
            instance,
            queued_at,
        });
    }

    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Drops the stale entries once there are more than `live` chunks
    /// plus a slack: amortised over the pushes that made them.
    pub fn compact_if_sparse(&self, live: usize, is_live: impl Fn(u64, u64) -> bool) {
        let mut q = self.queue.borrow_mut();
        if q.len() > 2 * live + STALE_ENTRIES_SLACK {
            q.retain(|e| is_live(e.handle, e.instance));
            assert!(q.len() <= live, "a chunk instance is queued twice");
        }
    }

    /// The next chunk due for scrubbing (queued longer ago than `due`),
    /// taken off the queue; the caller pushes it back once scrubbed.
    /// `None` when the head is not due (nor anything behind it), or when
    /// the first [`LOOK_AHEAD_MAX`] entries were all stale.
    pub fn next_due(
        &self,
        now: Instant,
        due: Duration,
        look: impl Fn(u64, u64) -> Option<Queued>,
    ) -> Option<(u64, u64)> {
        let mut q = self.queue.borrow_mut();
        for _ in 0..LOOK_AHEAD_MAX {
            let e = *q.front()?;
            if look(e.handle, e.instance).is_none_or(|c| c.corrupt) {
                q.pop_front();
                continue;
            }
            if now.saturating_duration_since(e.queued_at) < due {
                // Everything behind was queued later still.
                return None;
            }
            q.pop_front();
            return Some((e.handle, e.instance));
        }
        None
    }

    /// Bytes of chunks last verified longer than `period` ago. Walks only
    /// the head queued before that: everything behind it was stored or
    /// scrubbed within the period.
    pub fn overdue_bytes(
        &self,
        now: Instant,
        period: Duration,
        look: impl Fn(u64, u64) -> Option<Queued>,
    ) -> u64 {
        self.queue
            .borrow()
            .iter()
            .take_while(|e| now.saturating_duration_since(e.queued_at) > period)
            .filter_map(|e| look(e.handle, e.instance))
            .filter(|c| !c.corrupt && now.saturating_duration_since(c.verified_at) > period)
            .map(|c| c.length_bytes)
            .sum()
    }
}

/// Scrub progress of one core, folded into node metrics.
#[derive(Default, Clone, Copy, Debug)]
pub struct Progress {
    pub verified_this_period_bytes: u64,
    pub unverified_beyond_period_bytes: u64,
    pub stored_bytes: u64,
    pub corrupt_blocks_found: u64,
}

pub async fn run(core: Rc<Core>) {
    let period = core.node.settings.scrub_period;
    let mut scratch = AlignedBuf::zeroed(STEP_BLOCKS as usize * BLOCK_BYTES, 4096);
    let mut period_start = Instant::now();
    let mut verified_this_period = 0u64;
    let mut measured: Option<(Instant, Progress)> = None;
    while !core.node.is_stopping() {
        if period_start.elapsed() >= period {
            period_start = Instant::now();
            verified_this_period = 0;
        }
        let progress = match measured {
            Some((at, p)) if at.elapsed() < MEASURE_EVERY => Progress {
                verified_this_period_bytes: verified_this_period,
                ..p
            },
            _ => {
                let p = measure(&core, period, verified_this_period);
                measured = Some((Instant::now(), p));
                p
            }
        };
        core.node.publish_scrub(core.id, progress);
        // Least recently verified first; due at half the period, so every
        // chunk is verified well within it.
        let due = if progress.unverified_beyond_period_bytes > 0 {
            Duration::ZERO
        } else {
            period / 2
        };
        let next = core
            .store
            .scrub_order
            .next_due(Instant::now(), due, |h, i| look(&core, h, i));
        let Some(chunk) = next.and_then(|(h, _)| core.store.get(h).ok()) else {
            compio::time::sleep(IDLE_SLEEP.min(period / 4)).await;
            continue;
        };
        let Some((_, last)) = chunk.block_range_of_length() else {
            // Empty: all of nothing verified. Bytes written later were
            // checked against their CRCs on the way in.
            chunk.touch_verified();
            let order = &core.store.scrub_order;
            order.push(chunk.handle, chunk.data_file_id(), chunk.verified_at());
            continue;
        };
        let rate =
            (progress.stored_bytes as f64 / period.as_secs_f64()).max(MIN_RATE_BYTES_PER_SEC);
        let mut block = 0;
        let mut clean = true;
        while block <= last && !core.node.is_stopping() && !chunk.is_deleted() {
            yield_to_foreground(&core).await;
            let step_last = (block + STEP_BLOCKS - 1).min(last);
            let started = Instant::now();
            let (r, s) = chunk.verify_blocks(block, step_last, scratch).await;
            scratch = s;
            match r {
                Ok(None) => {}
                Ok(Some(bad)) => {
                    tracing::error!(
                        handle = chunk.handle,
                        block = bad,
                        "scrub: block fails its checksum"
                    );
                    core.metrics().checksum_failure(ChecksumSource::Scrub);
                    core.node.scrub_corrupt_found(core.id);
                    chunk.mark_corrupt().await;
                    core.node.report(ReplicaEvent {
                        handle: chunk.handle,
                        version: chunk.version(),
                        length_bytes: chunk.length(),
                        state: ChunkState::Corrupt,
                    });
                    clean = false;
                    break;
                }
                Err(e) => {
                    tracing::warn!(handle = chunk.handle, "scrub read failed: {e}");
                    clean = false;
                    break;
                }
            }
            let bytes = (step_last - block + 1) * BLOCK_BYTES as u64;
            verified_this_period += bytes;
            core.metrics().scrub_bytes_verified(bytes);
            // Pace: this step's bytes at `rate`.
            let due = Duration::from_secs_f64(bytes as f64 / rate);
            if let Some(rest) = due.checked_sub(started.elapsed()) {
                compio::time::sleep(rest).await;
            }
            block = step_last + 1;
        }
        if clean && block > last {
            chunk.touch_verified();
        }
        if !chunk.is_deleted() && chunk.state() != ChunkState::Corrupt {
            // Back in line. A chunk whose read failed is tried again in its
            // turn, not at once (its bytes count as verified only then).
            core.store
                .scrub_order
                .push(chunk.handle, chunk.data_file_id(), Instant::now());
        }
    }
}

/// The queue's view of chunk instance (`handle`, `instance`), if it is
/// still stored.
fn look(core: &Core, handle: u64, instance: u64) -> Option<Queued> {
    let c = core.store.get(handle).ok()?;
    (c.data_file_id() == instance).then(|| Queued {
        verified_at: c.verified_at(),
        length_bytes: c.length(),
        corrupt: c.state() == ChunkState::Corrupt,
    })
}

/// Waits (bounded) while requests are running on this core.
async fn yield_to_foreground(core: &Core) {
    let deadline = Instant::now() + YIELD_MAX;
    while core.foreground.get() > 0 && Instant::now() < deadline {
        compio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn measure(core: &Core, period: Duration, verified_this_period: u64) -> Progress {
    let (_, stored_bytes, _) = core.store.totals();
    Progress {
        verified_this_period_bytes: verified_this_period,
        unverified_beyond_period_bytes: core.store.scrub_order.overdue_bytes(
            Instant::now(),
            period,
            |h, i| look(core, h, i),
        ),
        stored_bytes,
        corrupt_blocks_found: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Chunk instances by handle: (instance, verified_at, length, corrupt).
    type Chunks = HashMap<u64, (u64, Instant, u64, bool)>;

    fn looker(chunks: &Chunks) -> impl Fn(u64, u64) -> Option<Queued> + '_ {
        |h, i| {
            let &(instance, verified_at, length_bytes, corrupt) = chunks.get(&h)?;
            (instance == i).then_some(Queued {
                verified_at,
                length_bytes,
                corrupt,
            })
        }
    }

    #[test]
    fn the_least_recently_queued_live_chunk_comes_first_and_only_when_due() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let order = ScrubOrder::default();
        let mut chunks = Chunks::new();
        for h in 1..=4u64 {
            let at = t0 + s * h as u32;
            chunks.insert(h, (100 + h, at, 4096, false));
            order.push(h, 100 + h, at);
        }
        // 1 was deleted, 2 replaced by another instance, 3 turned corrupt.
        chunks.remove(&1);
        chunks.insert(2, (999, t0, 4096, false));
        chunks.get_mut(&3).unwrap().3 = true;
        let look = looker(&chunks);
        // At t0 + 10 s with chunks due after 5 s: 4 (queued at 4 s) is.
        assert_eq!(order.next_due(t0 + s * 10, s * 5, &look), Some((4, 104)));
        assert!(order.is_empty(), "the stale and corrupt entries went");
        // Queued again now: not due until 5 s later.
        order.push(4, 104, t0 + s * 10);
        assert_eq!(order.next_due(t0 + s * 12, s * 5, &look), None);
        assert_eq!(order.len(), 1);
        assert_eq!(order.next_due(t0 + s * 16, s * 5, &look), Some((4, 104)));
    }

    #[test]
    fn overdue_bytes_walk_only_the_head_queued_before_the_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let order = ScrubOrder::default();
        let mut chunks = Chunks::new();
        for h in 1..=10u64 {
            let at = t0 + s * h as u32;
            chunks.insert(h, (h, at, h * 1000, h == 2));
            order.push(h, h, at);
        }
        let look = looker(&chunks);
        // Period 6 s at t0 + 10 s: chunks verified at 1..3 s are overdue,
        // 2 is corrupt (not counted).
        assert_eq!(order.overdue_bytes(t0 + s * 10, s * 6, &look), 1000 + 3000);
        assert_eq!(order.overdue_bytes(t0 + s * 10, s * 20, &look), 0);
    }

    #[test]
    fn stale_entries_are_compacted_once_they_outnumber_the_live() {
        let t0 = Instant::now();
        let order = ScrubOrder::default();
        // One live chunk, replaced over and over (each instance queued).
        let n = 3 * STALE_ENTRIES_SLACK as u64;
        for i in 1..=n {
            order.push(7, i, t0);
            order.compact_if_sparse(1, |h, inst| h == 7 && inst == i);
            assert!(order.len() <= 2 + STALE_ENTRIES_SLACK + 1);
        }
        order.compact_if_sparse(0, |_, _| false);
        assert!(order.len() <= STALE_ENTRIES_SLACK + 1);
    }
}
