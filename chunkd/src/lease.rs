//! Primary leases (DESIGN §4, §5): the master grants one per chunk; while
//! it holds, this chunkserver orders the chunk's mutations. The lease runs
//! on this node's monotonic clock from the moment the grant was sent for
//! (or received, for a direct grant), shortened by a safety margin, so it
//! always ends here before the master believes it has ended.

use std::time::{Duration, Instant};

use ringfs_wire::msg::Replica;

use crate::error::{ChunkError, ChunkResult};

/// Fraction of the granted duration kept back for clock-rate differences.
const SAFETY_MARGIN_PERCENT: u32 = 5;

#[derive(Clone, Debug)]
pub struct Lease {
    pub epoch: u64,
    pub version: u64,
    pub expires_at: Instant,
    pub secondaries: Vec<Replica>,
}

impl Lease {
    pub fn new(
        epoch: u64,
        version: u64,
        duration_ms: u32,
        counted_from: Instant,
        secondaries: Vec<Replica>,
    ) -> Lease {
        let granted = Duration::from_millis(u64::from(duration_ms));
        let usable = granted - granted * SAFETY_MARGIN_PERCENT / 100;
        Lease {
            epoch,
            version,
            expires_at: counted_from + usable,
            secondaries,
        }
    }

    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    /// May this node order a mutation of `version` now?
    pub fn check(&self, handle: u64, version: u64, now: Instant) -> ChunkResult<()> {
        if now >= self.expires_at {
            return Err(ChunkError::LeaseExpired(handle));
        }
        if version != self.version {
            return Err(ChunkError::StaleVersion {
                ours: self.version,
                theirs: version,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_early_by_the_margin() {
        let t0 = Instant::now();
        let lease = Lease::new(3, 7, 1000, t0, Vec::new());
        assert!(lease.check(1, 7, t0 + Duration::from_millis(900)).is_ok());
        assert!(matches!(
            lease.check(1, 7, t0 + Duration::from_millis(960)),
            Err(ChunkError::LeaseExpired(1))
        ));
        assert!(matches!(
            lease.check(1, 6, t0),
            Err(ChunkError::StaleVersion { ours: 7, theirs: 6 })
        ));
    }
}
