//! Primary leases (DESIGN §4, §5): the master grants one per chunk; while
//! it holds, this chunkserver orders the chunk's mutations. The lease runs
//! on this node's monotonic clock from the moment the grant was sent for
//! (or received, for a direct grant), shortened by a safety margin, so it
//! always ends here before the master believes it has ended.
//!
//! A lease used for a mutation lately is extended through the heartbeats
//! (GFS §3.1): the primary asks when less than half of it is left, the
//! leader commits the extension and answers with what is left of it
//! counted from its commit, and the primary counts that from when it sent
//! the heartbeat, which was earlier.

use std::rc::Rc;
use std::time::{Duration, Instant};

use ringfs_wire::ids::LEASE_EXTENSIONS_PER_HEARTBEAT_MAX;
use ringfs_wire::msg::{LeaseExtension, LeaseHeld, Replica};

use crate::error::{ChunkError, ChunkResult};
use crate::shard::{self, Core};

/// Fraction of the granted duration kept back for clock-rate differences.
const SAFETY_MARGIN_PERCENT: u32 = 5;

#[derive(Clone, Debug)]
pub struct Lease {
    pub epoch: u64,
    pub version: u64,
    pub expires_at: Instant,
    pub secondaries: Vec<Replica>,
    /// As granted, before the margin: the extension rhythm follows it.
    pub granted: Duration,
    /// When a mutation was last ordered under this lease.
    pub used_at: Option<Instant>,
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
        Lease {
            epoch,
            version,
            expires_at: counted_from + usable(granted),
            secondaries,
            granted,
            used_at: None,
        }
    }

    /// Should this lease be extended: used within the last half of its
    /// duration, and less than half of it left (but not run out: an
    /// expired lease is gone, the master must grant anew).
    pub fn wants_extension(&self, now: Instant) -> bool {
        let half = self.granted / 2;
        let left = self.remaining(now);
        self.used_at
            .is_some_and(|u| now.saturating_duration_since(u) < half)
            && left > Duration::ZERO
            && left < half
    }

    /// Applies an extension of `duration_ms` counted from `counted_from`
    /// (the send of the heartbeat that asked); never shortens the lease.
    pub fn extend(&mut self, duration_ms: u32, counted_from: Instant) {
        let until = counted_from + usable(Duration::from_millis(u64::from(duration_ms)));
        if until > self.expires_at {
            self.expires_at = until;
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

/// The leases of every core that want an extension, at most
/// `LEASE_EXTENSIONS_PER_HEARTBEAT_MAX` (the rest ask next time).
pub async fn wanting_extension(core: &Rc<Core>) -> Vec<LeaseHeld> {
    let mut all = Vec::new();
    for target in 0..core.node.cores() {
        let room = LEASE_EXTENSIONS_PER_HEARTBEAT_MAX - all.len();
        if room == 0 {
            break;
        }
        let wanted = shard::on_core(core, target, move |c| {
            let now = Instant::now();
            c.leases
                .borrow()
                .iter()
                .filter(|(_, l)| l.wants_extension(now))
                .take(room)
                .map(|(&handle, l)| LeaseHeld {
                    handle,
                    version: l.version,
                    epoch: l.epoch,
                })
                .collect::<Vec<_>>()
        })
        .await;
        all.extend(wanted.unwrap_or_default());
    }
    assert!(all.len() <= LEASE_EXTENSIONS_PER_HEARTBEAT_MAX);
    all
}

/// Applies the extensions a leader committed, each on its chunk's core, to
/// the lease they name (same version and epoch; one replaced meanwhile is
/// left alone), counted from `heartbeat_sent`.
pub async fn apply_extensions(
    core: &Rc<Core>,
    extensions: Vec<LeaseExtension>,
    heartbeat_sent: Instant,
) -> usize {
    let cores = core.node.cores();
    let mut per_core: Vec<Vec<LeaseExtension>> = vec![Vec::new(); cores];
    for e in extensions
        .into_iter()
        .take(LEASE_EXTENSIONS_PER_HEARTBEAT_MAX)
    {
        per_core[shard::owner_core(e.handle, cores)].push(e);
    }
    let mut applied = 0;
    for (target, list) in per_core.into_iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let n = shard::on_core(core, target, move |c| {
            let mut leases = c.leases.borrow_mut();
            let mut n = 0;
            for e in list {
                if let Some(l) = leases.get_mut(&e.handle)
                    && l.version == e.version
                    && l.epoch == e.epoch
                {
                    l.extend(e.duration_ms, heartbeat_sent);
                    n += 1;
                }
            }
            n
        })
        .await;
        applied += n.unwrap_or(0);
    }
    applied
}

/// A granted duration less the safety margin.
fn usable(granted: Duration) -> Duration {
    granted - granted * SAFETY_MARGIN_PERCENT / 100
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

    #[test]
    fn only_a_used_lease_past_its_half_asks_for_an_extension() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut lease = Lease::new(3, 7, 1000, t0, Vec::new());
        assert!(!lease.wants_extension(t0 + ms(600)), "never used");
        lease.used_at = Some(t0 + ms(100));
        assert!(!lease.wants_extension(t0 + ms(300)), "more than half left");
        assert!(lease.wants_extension(t0 + ms(500)));
        assert!(!lease.wants_extension(t0 + ms(700)), "idle for half of it");
        assert!(!lease.wants_extension(t0 + ms(1000)), "run out");
        // An extension counts from the heartbeat's send, with the margin,
        // and never shortens the lease.
        lease.extend(1000, t0 + ms(500));
        assert_eq!(lease.expires_at, t0 + ms(1450));
        lease.extend(100, t0 + ms(500));
        assert_eq!(lease.expires_at, t0 + ms(1450));
        assert!(lease.check(1, 7, t0 + ms(1400)).is_ok());
    }
}
