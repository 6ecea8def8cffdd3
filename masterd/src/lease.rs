//! Primary leases (DESIGN §4) and the allocation of new chunks.
//!
//! Rules, in the order they are applied:
//! - a chunk's version is bumped and committed before a new primary lease,
//!   and every up-to-date replica is told the new version before the
//!   primary is told it holds the lease;
//! - a new primary is never named while an older lease may still run:
//!   this master counts a lease from the moment the primary acknowledged it
//!   (the holder counts from when it received it, minus a margin, so it
//!   always stops first), and a master that just became leader waits out
//!   one lease duration for chunks whose committed lease record may be live;
//! - leases and commands carry the epoch (the Raft term).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use ringfs_wire::ids::LEASE_EXTENSIONS_PER_HEARTBEAT_MAX;
use ringfs_wire::msg::{
    Body, BumpVersion, ErrorCode, GrantLease, LeaseExtension, LeaseHeld, Replica, RevokeLease,
};

use crate::allocate;
use crate::node::{Master, now_ms};
use crate::proposer::ProposeError;
use crate::registry::Location;
use crate::types::{Done, Fail, NodeId, Op};

/// Lease grants serialised per chunk through this many locks.
const GRANT_LOCKS: usize = 64;
/// Longest a heartbeat waits for its extensions to commit; past it they
/// are asked for again with the next heartbeat.
const EXTEND_COMMIT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a lease or allocation could not be had.
#[derive(Debug)]
pub enum LeaseError {
    Fail(Fail),
    Propose(ProposeError),
    /// Retry after this long (a previous lease may run; no replica up).
    Unavailable {
        retry_after: Duration,
        why: String,
    },
    /// No chunkserver has room for a new chunk: retrying does not help
    /// until space is freed or added.
    NoSpace {
        why: String,
    },
}

impl From<ProposeError> for LeaseError {
    fn from(e: ProposeError) -> Self {
        LeaseError::Propose(e)
    }
}

impl From<Fail> for LeaseError {
    fn from(e: Fail) -> Self {
        LeaseError::Fail(e)
    }
}

/// A lease as the leader tracks it.
#[derive(Clone, Debug)]
pub struct LiveLease {
    pub primary: NodeId,
    pub version: u64,
    /// From when the grant was sent: what clients are told.
    pub client_expires: Instant,
    /// From when the primary acknowledged: when a new primary may be named.
    pub expires: Instant,
    pub epoch: u64,
    /// The primary and the secondaries it was told to forward to.
    pub holders: Vec<NodeId>,
}

pub struct Leases {
    pub duration: Duration,
    live: Mutex<HashMap<u64, LiveLease>>,
    grant_locks: Vec<tokio::sync::Mutex<()>>,
    /// When this master last became leader (monotonic and wall-clock
    /// milliseconds), and in which term.
    leader_since: Mutex<Option<(u64, Instant, u64)>>,
    /// Chunks (inode, index) whose allocation is being committed and whose
    /// first lease is being granted: nobody else grants for them meanwhile.
    allocating: Mutex<HashMap<(u64, u64), u32>>,
}

/// Marks an allocation in progress until dropped.
pub(crate) struct Allocating<'a> {
    leases: &'a Leases,
    key: (u64, u64),
}

impl Drop for Allocating<'_> {
    fn drop(&mut self) {
        let mut map = self
            .leases
            .allocating
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// A chunk's location answer.
pub struct Located {
    pub handle: u64,
    pub version: u64,
    pub replicas: Vec<Location>,
    pub lease: Option<LiveLease>,
}

impl Leases {
    pub fn new(duration: Duration) -> Leases {
        Leases {
            duration,
            live: Mutex::new(HashMap::new()),
            grant_locks: (0..GRANT_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            leader_since: Mutex::new(None),
            allocating: Mutex::new(HashMap::new()),
        }
    }

    pub fn live(&self, handle: u64, now: Instant) -> Option<LiveLease> {
        let map = self.live.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&handle).filter(|l| l.client_expires > now).cloned()
    }

    /// A lease that may still run on its holder (`expires` not passed).
    pub fn running(&self, handle: u64, now: Instant) -> Option<LiveLease> {
        let map = self.live.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&handle).filter(|l| l.expires > now).cloned()
    }

    fn record(&self, handle: u64, lease: LiveLease) {
        let mut map = self.live.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(handle, lease);
    }

    pub fn forget(&self, handle: u64) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&handle);
    }

    /// Drops expired leases (bounded memory).
    pub fn sweep(&self, now: Instant) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, l| l.expires > now);
    }

    /// Called whenever this master sees itself leading `term`.
    pub fn note_leader(&self, term: u64, now: Instant) {
        let mut since = self.leader_since.lock().unwrap_or_else(|e| e.into_inner());
        if since.is_none_or(|(t, _, _)| t != term) {
            *since = Some((term, now, now_ms()));
            // Leases granted in earlier terms are not ours to extend; the
            // ones granted in this term (perhaps before this first call)
            // stay, or a running lease would be handed to another primary.
            self.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, l| l.epoch == term);
        }
    }

    pub fn leading_for(&self, now: Instant) -> Duration {
        let since = self.leader_since.lock().unwrap_or_else(|e| e.into_inner());
        since.map_or(Duration::ZERO, |(_, at, _)| {
            now.saturating_duration_since(at)
        })
    }

    /// Wall-clock ms at which this master began leading (0: not leading).
    fn leading_since_ms(&self) -> u64 {
        let since = self.leader_since.lock().unwrap_or_else(|e| e.into_inner());
        since.map_or(u64::MAX, |(_, _, ms)| ms)
    }

    /// Marks chunk `index` of `inode` as being allocated until the mark drops.
    pub(crate) fn mark_allocating(&self, inode: u64, index: u64) -> Allocating<'_> {
        self.allocating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((inode, index))
            .and_modify(|n| *n += 1)
            .or_insert(1);
        Allocating {
            leases: self,
            key: (inode, index),
        }
    }

    fn allocating(&self, inode: u64, index: u64) -> bool {
        self.allocating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(inode, index))
    }

    /// Serialises grants of `handle`: held while its version may change.
    pub(crate) async fn grant_turn(&self, handle: u64) -> tokio::sync::MutexGuard<'_, ()> {
        self.grant_locks[(handle as usize) % GRANT_LOCKS]
            .lock()
            .await
    }

    /// True while a grant or allocation may be changing the chunk's version.
    pub fn granting(&self, handle: u64) -> bool {
        self.grant_locks[(handle as usize) % GRANT_LOCKS]
            .try_lock()
            .is_err()
    }

    pub fn count(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn replica_of(master: &Master, node: NodeId) -> Option<Replica> {
    let reg = master.registry();
    let s = reg.servers.get(&node)?;
    Some(Replica {
        node_id: node,
        addr: Some(s.listen_addr.clone()),
        rack: Some(s.rack.clone()),
    })
}

pub(crate) fn addr_of(master: &Master, node: NodeId) -> Option<String> {
    master
        .registry()
        .servers
        .get(&node)
        .map(|s| s.listen_addr.clone())
}

/// How soon a client asks again for a lease whose earlier-term holder could
/// not be reached to revoke it.
pub const REVOKE_RETRY: Duration = Duration::from_millis(500);

/// Asks `holder` to drop any lease it holds on `handle`, under this
/// master's epoch; true once it has.
async fn revoke(master: &Master, handle: u64, holder: NodeId) -> Result<(), String> {
    let Some(addr) = addr_of(master, holder) else {
        return Err(format!("node {holder} is not registered"));
    };
    let body = Body::RevokeLease(Box::new(RevokeLease {
        epoch: master.epoch(),
        handle,
    }));
    match master.cs.command(&addr, &body).await {
        Ok(()) => {
            master
                .metrics
                .leases_revoked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            tracing::info!(handle, holder, error = %e, "lease not revoked; waiting it out");
            Err(e.to_string())
        }
    }
}

/// The current primary lease of `handle`, granting one if none is live.
pub async fn get_lease(master: &Master, handle: u64) -> Result<Located, LeaseError> {
    let _turn = master.leases.grant_turn(handle).await;
    master.leases.note_leader(master.epoch(), Instant::now());
    let (version, record, inode, index) = {
        let state = master.shared.read();
        let chunk = state.chunks.get(handle).ok_or(Fail::NotFound)?;
        let record = state.chunks.leases.get(&handle).copied();
        (chunk.version, record, chunk.inode, u64::from(chunk.index))
    };
    if master.leases.allocating(inode, index) {
        // Its allocation is granting the first lease right now.
        return Err(LeaseError::Unavailable {
            retry_after: Duration::from_millis(20),
            why: format!("chunk {handle} is being allocated"),
        });
    }
    let now = Instant::now();
    let good = master.registry().good_replicas(handle, version);
    // A running lease whose primary is still good but whose chain lost a
    // replica (a client reported it) is granted again to the same primary
    // with a bumped version: only the holder is named, so no second primary
    // can appear, and the lost replica becomes stale.
    let mut same_primary = None;
    if let Some(lease) = master.leases.running(handle, now) {
        let primary_good = good.iter().any(|l| l.node == lease.primary);
        if lease.version == version && lease.client_expires > now && primary_good {
            let chain_good = lease
                .holders
                .iter()
                .all(|h| good.iter().any(|l| l.node == *h));
            if chain_good {
                return Ok(Located {
                    handle,
                    version,
                    replicas: good.to_vec(),
                    lease: Some(lease),
                });
            }
            same_primary = Some(lease.primary);
        } else {
            // The holder may still act as primary until its lease runs out:
            // nobody else may be named before then.
            return Err(LeaseError::Unavailable {
                retry_after: lease.expires.saturating_duration_since(now),
                why: format!("the lease of primary {} has not expired yet", lease.primary),
            });
        }
    }
    // A lease committed by an earlier leader (or by us before a restart)
    // may still run on its holder: wait it out.
    let duration = master.leases.duration;
    // Records this leader wrote itself are covered by the live map (a grant
    // whose answer was lost is kept there as running), so only older ones
    // are waited out.
    let since_ms = master.leases.leading_since_ms();
    if let Some(r) = record.filter(|r| same_primary.is_none() && r.granted_at_ms < since_ms) {
        let leading = master.leases.leading_for(now);
        let wall_left = r.expires_at_ms().saturating_sub(now_ms());
        if leading < duration && wall_left > 0 {
            // Take it back: once the holder has admitted this
            // term and dropped the lease, nothing of an earlier term runs
            // there (it refuses older grants), and only the recorded holder
            // can hold one: a grant is committed before it is sent, and a
            // new primary is never named while the previous lease runs. A
            // holder that cannot be reached is waited out.
            // (Pointing clients at the holder instead would be wrong when
            // the old leader died between committing a grant and sending
            // it: the holder would answer NotPrimary forever.)
            if let Err(e) = revoke(master, handle, r.primary).await {
                // Asked again at each retry: a holder that registers or
                // comes back meanwhile is revoked then, not waited out.
                let retry_after = (duration - leading)
                    .min(Duration::from_millis(wall_left))
                    .min(REVOKE_RETRY);
                return Err(LeaseError::Unavailable {
                    retry_after,
                    why: format!(
                        "a lease from an earlier term may still run on node {} (not revoked: {e})",
                        r.primary
                    ),
                });
            }
        }
    }
    let mut good = good;
    if good.is_empty() {
        // Perhaps its allocation committed and the leader died before
        // creating any replica, or every chosen server was out of space:
        // then nothing was ever written to it.
        allocate::recreate_unborn(master, handle, version, record).await?;
        good = master.registry().good_replicas(handle, version);
    }
    let primary = same_primary.unwrap_or_else(|| pick_primary(master, handle, &good));
    let committed = master
        .proposer
        .propose(Op::GrantLease {
            handle,
            primary,
            expected_version: version,
            now_ms: now_ms(),
            duration_ms: duration.as_millis() as u64,
        })
        .await?;
    let new_version = match committed.outcome? {
        Done::Version(v) => v,
        other => unreachable_outcome(other)?,
    };
    let epoch = master.epoch();
    // Tell every up-to-date replica its new version; the ones that do not
    // answer are left stale (reports will show it; GC and re-replication fix it).
    let bumps = good.iter().map(|l| {
        let body = Body::BumpVersion(Box::new(BumpVersion {
            epoch,
            handle,
            old_version: version,
            new_version,
        }));
        let addr = addr_of(master, l.node);
        async move {
            let ok = match addr {
                Some(a) => master.cs.command(&a, &body).await.is_ok(),
                None => false,
            };
            (l.node, ok)
        }
    });
    let bumped: Vec<NodeId> = join_all(bumps)
        .await
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(n, _)| n)
        .collect();
    {
        let mut reg = master.registry();
        for n in &bumped {
            reg.update_replica(handle, *n, |l| l.version = new_version);
        }
    }
    if !bumped.contains(&primary) {
        return Err(LeaseError::Unavailable {
            retry_after: Duration::from_millis(200),
            why: format!("primary {primary} did not take version {new_version}"),
        });
    }
    let lease = grant(master, handle, new_version, primary, &bumped, epoch).await?;
    let replicas = master
        .registry()
        .good_replicas(handle, new_version)
        .to_vec();
    Ok(Located {
        handle,
        version: new_version,
        replicas,
        lease: Some(lease),
    })
}

/// Tells `primary` it holds the lease; records it once acknowledged.
pub(crate) async fn grant(
    master: &Master,
    handle: u64,
    version: u64,
    primary: NodeId,
    holders: &[NodeId],
    epoch: u64,
) -> Result<LiveLease, LeaseError> {
    let duration = master.leases.duration;
    let secondaries: Vec<Replica> = holders
        .iter()
        .filter(|&&n| n != primary)
        .filter_map(|&n| replica_of(master, n))
        .collect();
    let body = Body::GrantLease(Box::new(GrantLease {
        epoch,
        handle,
        version,
        duration_ms: u32::try_from(duration.as_millis()).unwrap_or(u32::MAX),
        secondaries: Some(secondaries),
    }));
    let addr = addr_of(master, primary).ok_or_else(|| LeaseError::Unavailable {
        retry_after: Duration::from_millis(200),
        why: format!("primary {primary} is not registered"),
    })?;
    let sent = Instant::now();
    if let Err(e) = master.cs.command(&addr, &body).await {
        // The grant may have arrived and only the answer been lost: count
        // the lease as running on `primary` (but not give it to clients),
        // so nobody else is named before it would have run out.
        master.leases.record(
            handle,
            LiveLease {
                primary,
                version,
                client_expires: sent,
                expires: Instant::now() + duration,
                epoch,
                holders: holders.to_vec(),
            },
        );
        return Err(LeaseError::Unavailable {
            retry_after: duration,
            why: format!("lease grant to {primary}: {e}"),
        });
    }
    let lease = LiveLease {
        primary,
        version,
        client_expires: sent + duration,
        expires: Instant::now() + duration,
        epoch,
        holders: holders.to_vec(),
    };
    master.leases.record(handle, lease.clone());
    Ok(lease)
}

fn pick_primary(master: &Master, handle: u64, good: &[Location]) -> NodeId {
    let reg = master.registry();
    let load = |node: NodeId| reg.servers.get(&node).map_or(u32::MAX, |s| s.ops_in_flight);
    // Equally loaded (idle) servers take turns by chunk, not lowest id first.
    let seed = crate::placement::mix(handle);
    good.iter()
        .min_by_key(|l| (load(l.node), crate::placement::mix(l.node ^ seed), l.node))
        .map(|l| l.node)
        .unwrap_or(0)
}

pub(crate) fn unreachable_outcome<T>(other: Done) -> Result<T, LeaseError> {
    Err(LeaseError::Unavailable {
        retry_after: Duration::from_millis(100),
        why: format!("unexpected outcome {other:?}"),
    })
}

/// Extends the leases `node` holds and asked to keep (GFS §3.1): the ones
/// this leader granted it, at the version it names, still running. The
/// extension is committed first, so a later leader waits it out like any
/// grant, and a deposed leader (no quorum) cannot extend anything. Each is
/// answered with what is left of it counted from the proposal; the holder
/// counts that from the send of its heartbeat, which came earlier, so it
/// stops before this master would name anyone else.
pub async fn extend(master: &Master, node: NodeId, held: &[LeaseHeld]) -> Vec<LeaseExtension> {
    if held.is_empty() || !master.is_leader() {
        return Vec::new();
    }
    let epoch = master.epoch();
    let now = Instant::now();
    master.leases.note_leader(epoch, now);
    let mine: Vec<(u64, u64)> =
        held.iter()
            .take(LEASE_EXTENSIONS_PER_HEARTBEAT_MAX)
            .filter(|h| h.epoch == epoch)
            .filter(|h| {
                master.leases.running(h.handle, now).is_some_and(|l| {
                    l.primary == node && l.version == h.version && l.epoch == epoch
                })
            })
            .map(|h| (h.handle, h.version))
            .collect();
    if mine.is_empty() {
        return Vec::new();
    }
    let duration = master.leases.duration;
    let proposed = Instant::now();
    let granted_at_ms = now_ms();
    let op = Op::ExtendLeases {
        primary: node,
        leases: mine.clone(),
        now_ms: granted_at_ms,
        duration_ms: duration.as_millis() as u64,
    };
    match tokio::time::timeout(EXTEND_COMMIT_TIMEOUT, master.proposer.propose(op)).await {
        Ok(Ok(c)) if matches!(c.outcome, Ok(Done::Extended(_))) => {}
        other => {
            tracing::debug!(
                node,
                leases = mine.len(),
                ?other,
                "lease extension not committed"
            );
            return Vec::new();
        }
    }
    // What the commit extended: the records that now carry this proposal.
    let extended: Vec<(u64, u64)> = {
        let state = master.shared.read();
        mine.into_iter()
            .filter(|(h, v)| {
                state.chunks.leases.get(h).is_some_and(|r| {
                    r.primary == node && r.version == *v && r.granted_at_ms == granted_at_ms
                })
            })
            .collect()
    };
    let until = proposed + duration;
    let left = duration.saturating_sub(proposed.elapsed());
    let mut out = Vec::with_capacity(extended.len());
    {
        let mut live = master.leases.live.lock().unwrap_or_else(|e| e.into_inner());
        for (handle, version) in extended {
            let Some(l) = live.get_mut(&handle) else {
                continue;
            };
            if l.primary != node || l.version != version || l.epoch != epoch {
                continue;
            }
            l.expires = l.expires.max(until);
            l.client_expires = l.client_expires.max(until);
            out.push(LeaseExtension {
                handle,
                version,
                epoch,
                duration_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
            });
        }
    }
    master.metrics.leases_extended(out.len() as u64);
    out
}

/// How a lease error reads on the wire.
pub fn error_code(e: &LeaseError) -> ErrorCode {
    match e {
        LeaseError::Fail(f) => f.code(),
        LeaseError::Propose(ProposeError::NotLeader { .. }) => ErrorCode::NotLeader,
        LeaseError::Propose(ProposeError::Busy) => ErrorCode::Busy,
        LeaseError::Propose(ProposeError::Stopped(_) | ProposeError::Unavailable(_)) => {
            ErrorCode::Unavailable
        }
        LeaseError::Unavailable { .. } => ErrorCode::Unavailable,
        LeaseError::NoSpace { .. } => ErrorCode::NoSpace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(primary: NodeId, epoch: u64, now: Instant) -> LiveLease {
        LiveLease {
            primary,
            version: 1,
            client_expires: now + Duration::from_secs(3),
            expires: now + Duration::from_secs(3),
            epoch,
            holders: vec![primary],
        }
    }

    #[test]
    fn first_sight_of_leadership_keeps_this_terms_leases() {
        let leases = Leases::new(Duration::from_secs(3));
        let now = Instant::now();
        leases.record(1, lease(7, 2, now));
        leases.record(2, lease(8, 1, now));
        // Granted in term 2 before anyone called note_leader: still running.
        leases.note_leader(2, now);
        assert_eq!(leases.running(1, now).map(|l| l.primary), Some(7));
        assert!(leases.running(2, now).is_none(), "term 1 lease dropped");
        // Same term again: nothing changes.
        leases.note_leader(2, now + Duration::from_secs(1));
        assert_eq!(
            leases.leading_for(now + Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert!(leases.live(1, now).is_some());
        // A later term drops it.
        leases.note_leader(3, now);
        assert!(leases.running(1, now).is_none());
    }
}
