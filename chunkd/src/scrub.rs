//! The scrubber of one core: re-verifies every block of the chunks this
//! core owns within the scrub period, least recently verified chunk first,
//! paced at (stored bytes / period) and stepping aside while foreground
//! requests run. A bad block marks the replica corrupt and queues a report
//! for the masters, which re-replicate from a good copy.

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
    while !core.node.is_stopping() {
        if period_start.elapsed() >= period {
            period_start = Instant::now();
            verified_this_period = 0;
        }
        let progress = measure(&core, period, verified_this_period);
        core.node.publish_scrub(core.id, progress);
        // Least recently verified first.
        let Some(chunk) = core
            .store
            .all()
            .into_iter()
            .filter(|c| c.state() != ChunkState::Corrupt && c.length() > 0)
            .min_by_key(|c| c.verified_at())
        else {
            compio::time::sleep(IDLE_SLEEP).await;
            continue;
        };
        if chunk.verified_at().elapsed() < period / 2
            && progress.unverified_beyond_period_bytes == 0
        {
            // Everything was verified recently: nothing is due yet.
            compio::time::sleep(IDLE_SLEEP.min(period / 4)).await;
            continue;
        }
        let rate =
            (progress.stored_bytes as f64 / period.as_secs_f64()).max(MIN_RATE_BYTES_PER_SEC);
        let Some((_, last)) = chunk.block_range_of_length() else {
            continue;
        };
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
    }
}

/// Waits (bounded) while requests are running on this core.
async fn yield_to_foreground(core: &Core) {
    let deadline = Instant::now() + YIELD_MAX;
    while core.foreground.get() > 0 && Instant::now() < deadline {
        compio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn measure(core: &Core, period: Duration, verified_this_period: u64) -> Progress {
    let mut p = Progress {
        verified_this_period_bytes: verified_this_period,
        ..Progress::default()
    };
    for c in core.store.all() {
        let len = c.length();
        p.stored_bytes += len;
        if c.verified_at().elapsed() > period {
            p.unverified_beyond_period_bytes += len;
        }
    }
    p
}
