//! The background pass over every chunk, a slice at a time: replicas to
//! delete (orphaned, stale, corrupt, in excess of the goal), chunks below
//! their goal (a bounded priority queue the re-replication duty draws from),
//! and the health counts that `/metrics`, `/status` and `admin status`
//! report (design note 016).
//!
//! Why slices: judging a chunk touches gigabyte tables (its replicas, its
//! file's goal, the orphan check): 2.4 µs at 10 M chunks as the first
//! version walked hash tables, 60 ns now that they are paged by key (note
//! 017), so a whole pass there takes 0.6 s (docs/BENCHMARKS.md), still far
//! too long for one lock hold. The first version walked everything every
//! 2 s under the state's read lock and the registry lock: every commit (the apply
//! needs the write lock), every chunk lookup and every heartbeat waited
//! behind it, and a scrape of `/metrics` did the same walk again. A pass now
//! judges one part of a [`crate::pagedmap::PagedMap`] (about 1/4,096 of it)
//! per lock hold, so the locks are held for milliseconds, and the caller
//! paces the parts per tick, so a pass costs a bounded share of a core.
//!
//! A pass judges, part by part, the chunk table (each chunk against its
//! replicas and its file's goal) and the location table (replicas whose
//! handle no file owns: orphans; corrupt replicas counted). It sees every
//! entry that is there for the whole pass exactly once; entries added or
//! removed during a pass may be seen or not, and the next pass settles
//! them.
//!
//! Everything here is pure: the caller holds the locks and passes a [`View`].

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ringfs_wire::msg::{DeleteReason, ReplicaState};

use crate::chunks::ChunkMeta;
use crate::placement::{self, Candidate};
use crate::registry::{Liveness, Location, Registry};
use crate::state::State;
use crate::types::NodeId;

/// Shortest time between the starts of two passes: a small table is walked
/// whole this often; a large one as fast as [`SCAN_TIME_PER_TICK`] allows.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Time spent on the pass per duty tick (500 ms): at most a fifth of one
/// core. A pass judges a chunk in about 60–90 ns at 10 M chunks
/// (docs/BENCHMARKS.md), so a pass there takes a few ticks.
pub const SCAN_TIME_PER_TICK: Duration = Duration::from_millis(100);
/// Chunks below their goal kept in the queue; when it is full, a more
/// urgent chunk pushes out the least urgent one (a later pass finds that
/// one again).
pub const NEEDED_MAX: usize = 100_000;
/// Queue entries looked at per tick when choosing clones.
pub const CLONE_CANDIDATES_PER_TICK_MAX: usize = 10_000;

/// What a pass counted. `missing` chunks have no good replica on a server
/// that is not dead; `under_replicated` have some, fewer than the goal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub chunks: u64,
    pub under_replicated: u64,
    pub missing: u64,
    pub corrupt_replicas: u64,
}

/// The last finished pass.
#[derive(Clone, Copy, Debug)]
pub struct PassSummary {
    pub tally: Tally,
    pub finished: Instant,
    pub took: Duration,
}

/// A replica to delete.
pub type Delete = (NodeId, u64, DeleteReason);

/// A clone to start: (handle, version, source, target).
pub type CloneOrder = (u64, u64, NodeId, NodeId);

/// What a pass reads, borrowed under the caller's locks.
pub struct View<'a> {
    pub state: &'a State,
    pub reg: &'a Registry,
    pub now: Instant,
    pub wall_ms: u64,
    /// How long after a lease was granted replicas may still report the
    /// version from before it (two heartbeats and some slack).
    pub settle_ms: u64,
    /// A lease is being granted for the handle right now.
    pub granting: &'a dyn Fn(u64) -> bool,
    /// A lease handed to a client runs: its chain names the replicas, so
    /// none is trimmed.
    pub leased: &'a dyn Fn(u64) -> bool,
    /// A delete of (node, handle) was sent and may still be on its way.
    pub deleting: &'a dyn Fn(NodeId, u64) -> bool,
}

impl View<'_> {
    /// The version may still be changing: replicas reporting an older one
    /// are not stale yet, and nothing is deleted on its account.
    fn settling(&self, handle: u64) -> bool {
        self.state
            .chunks
            .leases
            .get(&handle)
            .is_some_and(|l| self.wall_ms.saturating_sub(l.granted_at_ms) < self.settle_ms)
            || (self.granting)(handle)
    }

    fn push_delete(&self, out: &mut Vec<Delete>, node: NodeId, handle: u64, why: DeleteReason) {
        if !(self.deleting)(node, handle) {
            out.push((node, handle, why));
        }
    }
}

/// Chunks below their goal with at least one good replica, most urgent
/// first: fewest live replicas, then longest exposed, then handle.
pub struct Needed {
    queue: BTreeSet<(usize, Instant, u64)>,
    entries: HashMap<u64, (usize, Instant)>,
    capacity: usize,
}

impl Default for Needed {
    fn default() -> Self {
        Needed::with_capacity(NEEDED_MAX)
    }
}

impl Needed {
    pub fn with_capacity(capacity: usize) -> Needed {
        assert!(capacity > 0);
        Needed {
            queue: BTreeSet::new(),
            entries: HashMap::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `handle` has `live` good replicas, fewer than its goal. It keeps the
    /// time it was first seen short while it stays in the queue.
    pub fn note_short(&mut self, handle: u64, live: usize, now: Instant) {
        let since = match self.entries.get(&handle).copied() {
            Some((old_live, _)) if old_live == live => return,
            Some((old_live, since)) => {
                self.queue.remove(&(old_live, since, handle));
                since
            }
            None => {
                if self.entries.len() >= self.capacity {
                    match self.queue.last().copied() {
                        // Strictly more urgent than the least urgent: a
                        // full queue of equals does not churn.
                        Some(worst) if (live, now) < (worst.0, worst.1) => {
                            self.queue.remove(&worst);
                            self.entries.remove(&worst.2);
                        }
                        _ => return,
                    }
                }
                now
            }
        };
        self.queue.insert((live, since, handle));
        self.entries.insert(handle, (live, since));
        debug_assert_eq!(self.queue.len(), self.entries.len());
        assert!(
            self.entries.len() <= self.capacity,
            "needed queue over its bound"
        );
    }

    /// `handle` is no longer (or cannot be) re-replicated from here.
    pub fn forget(&mut self, handle: u64) {
        if let Some((live, since)) = self.entries.remove(&handle) {
            self.queue.remove(&(live, since, handle));
        }
    }

    /// Handles, most urgent first.
    pub fn most_urgent(&self) -> impl Iterator<Item = u64> + '_ {
        self.queue.iter().map(|&(_, _, h)| h)
    }

    /// When `handle` was first seen short, if it is queued.
    pub fn since(&self, handle: u64) -> Option<Instant> {
        self.entries.get(&handle).map(|&(_, s)| s)
    }
}

/// Where the pass is, what it has counted so far, and the queue it feeds.
#[derive(Default)]
pub struct Scan {
    /// The next part of the tables to judge.
    part: usize,
    /// When the running pass started, by the clock (not the tick's `now`,
    /// so a pass within one tick still has a duration); `None` between
    /// passes.
    started: Option<Instant>,
    /// When the last pass started (for [`SCAN_INTERVAL`]).
    last_start: Option<Instant>,
    tally: Tally,
    pub last: Option<PassSummary>,
    pub passes: u64,
    pub needed: Needed,
}

impl Scan {
    /// A pass is running, or the interval since the last one started is up.
    pub fn due(&self, now: Instant) -> bool {
        self.started.is_some()
            || self
                .last_start
                .is_none_or(|t| now.duration_since(t) >= SCAN_INTERVAL)
    }

    /// Judges the next part of both tables (starting a pass if none runs),
    /// appending replicas to delete to `deletes`. Returns how many entries
    /// it judged. Call only when [`Scan::due`].
    pub fn step(&mut self, v: &View<'_>, deletes: &mut Vec<Delete>) -> usize {
        if self.started.is_none() {
            assert_eq!(self.part, 0);
            assert_eq!(self.tally, Tally::default());
            self.started = Some(Instant::now());
            self.last_start = Some(v.now);
        }
        // Part i of both tables: a handle is in the same part of each
        // (`crate::pagedmap`), so the lookups from one into the other stay
        // within a part that fits in cache.
        let chunks = &v.state.chunks.chunks;
        let locations = &v.reg.locations;
        assert_eq!(chunks.part_count(), locations.part_count());
        let mut judged = 0;
        for (handle, chunk) in chunks.part_iter(self.part) {
            self.judge_chunk(v, handle, chunk, deletes);
            judged += 1;
        }
        for (handle, stored) in locations.part_iter(self.part) {
            self.judge_locations(v, handle, &stored.locations(), deletes);
            judged += 1;
        }
        self.part += 1;
        if self.part == chunks.part_count() {
            self.finish();
        }
        judged
    }

    fn finish(&mut self) {
        let started = self.started.take().expect("a pass runs");
        let now = Instant::now();
        self.last = Some(PassSummary {
            tally: self.tally,
            finished: now,
            took: now.duration_since(started),
        });
        self.passes += 1;
        self.tally = Tally::default();
        self.part = 0;
    }

    fn judge_chunk(
        &mut self,
        v: &View<'_>,
        handle: u64,
        chunk: &ChunkMeta,
        deletes: &mut Vec<Delete>,
    ) {
        let goal = v
            .state
            .ns
            .get(chunk.inode)
            .map_or(0, |i| usize::from(i.replication));
        let locs = v.reg.replicas(handle);
        // One look at each replica; the rarer work below only when it found
        // something to do. Readable: current, on a server that is not dead.
        // Counted towards the goal: on a live one (a decommissioning
        // server's replicas are being copied away).
        let (mut readable, mut counted) = (0usize, 0usize);
        let (mut behind, mut flagged) = (false, false);
        for l in &locs {
            let Some(server) = v.reg.servers.get(&l.node) else {
                continue;
            };
            if server.liveness == Liveness::Dead {
                continue;
            }
            if l.version < chunk.version {
                behind = true;
            }
            match l.state {
                ReplicaState::Ok if l.version == chunk.version => {
                    readable += 1;
                    counted += usize::from(server.liveness == Liveness::Live);
                }
                ReplicaState::Corrupt | ReplicaState::Stale => flagged = true,
                _ => {}
            }
        }
        self.tally.chunks += 1;
        if readable == 0 {
            self.tally.missing += 1;
        } else if readable < goal {
            self.tally.under_replicated += 1;
        }
        if counted < goal {
            if counted == 0 {
                // Nothing to clone from; counted as missing until a
                // replica is reported again.
                self.needed.forget(handle);
            } else {
                self.needed.note_short(handle, counted, v.now);
            }
        } else {
            self.needed.forget(handle);
        }
        if !(behind && counted > 0) && !(goal > 0 && counted >= goal && (flagged || counted > goal))
        {
            return;
        }
        if v.settling(handle) {
            return;
        }
        if behind && counted > 0 {
            for l in locs
                .iter()
                .filter(|l| l.version < chunk.version && v.reg.is_live(l.node))
            {
                v.push_delete(deletes, l.node, handle, DeleteReason::Stale);
            }
        }
        if goal == 0 || counted < goal {
            return;
        }
        // At or above the goal. Corrupt replicas go only now, so a chunk is
        // never left with fewer copies than it had, bad ones included, while
        // it is being repaired. A lease does not hold them: a corrupt replica
        // refuses every write anyway. Likewise a replica a client marked
        // stale after a failed write.
        for l in locs.iter().filter(|l| v.reg.is_live(l.node)) {
            let reason = match l.state {
                ReplicaState::Corrupt => DeleteReason::Corrupt,
                ReplicaState::Stale if l.version >= chunk.version => DeleteReason::Stale,
                _ => continue,
            };
            v.push_delete(deletes, l.node, handle, reason);
        }
        if counted == goal || (v.leased)(handle) {
            return;
        }
        let holders: Vec<(NodeId, f64)> = locs
            .iter()
            .filter(|l| l.version == chunk.version && l.state == ReplicaState::Ok)
            .filter_map(|l| v.reg.servers.get(&l.node))
            .filter(|s| s.liveness == Liveness::Live)
            .map(|s| (s.node_id, s.utilisation()))
            .collect();
        for node in to_trim(&holders, goal, |n| (v.deleting)(n, handle)) {
            deletes.push((node, handle, DeleteReason::Trimmed));
        }
    }

    fn judge_locations(
        &mut self,
        v: &View<'_>,
        handle: u64,
        locs: &[Location],
        deletes: &mut Vec<Delete>,
    ) {
        self.tally.corrupt_replicas += locs
            .iter()
            .filter(|l| l.state == ReplicaState::Corrupt)
            .count() as u64;
        // Orphan: allocated once (below the counter), owned by no file now.
        // Handles above the counter may belong to an allocation this master
        // has not applied yet.
        if handle < v.state.counters.next_handle && v.state.chunks.get(handle).is_none() {
            for l in locs.iter().filter(|l| v.reg.is_live(l.node)) {
                v.push_delete(deletes, l.node, handle, DeleteReason::Orphan);
            }
        }
    }

    /// Clones for the most urgent queued chunks: at most `budget` of them,
    /// no server taking part in more than `per_server_max` (counting
    /// `busy`, the clones already running), none for a chunk `cloning`
    /// already, and none for a chunk of a file being written that is under
    /// a lease (or has one being granted): its primary forwards only to the
    /// chain it was leased with, so a copy taken mid-write would stay short
    /// at the current version and still count as good. Such a chunk waits
    /// in the queue until its writer is done and the lease ends; a later
    /// lease bumps the version, so a copy racing it ends up stale. (A
    /// complete file's chunks are cloned under a lease: only a record
    /// append could still mutate them.) Chunks found at their goal (or
    /// gone) leave the queue.
    pub fn plan_clones(
        &mut self,
        v: &View<'_>,
        mut budget: usize,
        per_server_max: usize,
        busy: &mut HashMap<NodeId, usize>,
        cloning: impl Fn(u64) -> bool,
    ) -> Vec<CloneOrder> {
        let mut out = Vec::new();
        if budget == 0 || self.needed.is_empty() {
            return out;
        }
        // A clone may grow to a whole chunk: only servers with room for one.
        let chunk_size_bytes = v.state.chunk_size_bytes;
        let candidates: Vec<Candidate> = v
            .reg
            .live_servers()
            .map(|s| Candidate::of(s, 0))
            .filter(|c| c.has_room(chunk_size_bytes))
            .collect();
        let mut settled = Vec::new();
        let examined: Vec<u64> = self
            .needed
            .most_urgent()
            .take(CLONE_CANDIDATES_PER_TICK_MAX)
            .collect();
        for handle in examined {
            if budget == 0 {
                break;
            }
            let Some(chunk) = v.state.chunks.get(handle) else {
                settled.push(handle);
                continue;
            };
            let inode = v.state.ns.get(chunk.inode);
            let goal = inode.map_or(0, |i| usize::from(i.replication));
            let being_written = inode
                .is_some_and(|i| matches!(&i.kind, crate::namespace::Kind::File(f) if !f.complete));
            let good = v.reg.good_replicas(handle, chunk.version);
            if good.len() >= goal || good.is_empty() {
                settled.push(handle);
                continue;
            }
            if cloning(handle) || (being_written && ((v.leased)(handle) || v.settling(handle))) {
                continue;
            }
            let free = |n: &NodeId| busy.get(n).copied().unwrap_or(0) < per_server_max;
            let Some(source) = good.iter().map(|l| l.node).find(free) else {
                continue;
            };
            let holders: Vec<NodeId> = v.reg.replicas(handle).iter().map(|l| l.node).collect();
            let racks: Vec<&str> = good
                .iter()
                .filter_map(|l| v.reg.servers.get(&l.node))
                .map(|s| s.rack.as_str())
                .collect();
            let open: Vec<Candidate> = candidates
                .iter()
                .filter(|c| free(&c.node))
                .cloned()
                .collect();
            let Some(&target) =
                placement::choose(&open, 1, &holders, &racks, placement::mix(handle)).first()
            else {
                continue;
            };
            *busy.entry(source).or_default() += 1;
            *busy.entry(target).or_default() += 1;
            budget -= 1;
            out.push((handle, chunk.version, source, target));
        }
        for handle in settled {
            self.needed.forget(handle);
        }
        out
    }
}

/// Which of a chunk's good replicas (node, utilisation) to delete to come
/// down to `goal`: the most utilised first. A replica whose delete is on
/// its way (`leaving`) is still reported until its server says it is gone;
/// counting it as a keeper would make the next pass trim one more.
pub fn to_trim(
    holders: &[(NodeId, f64)],
    goal: usize,
    leaving: impl Fn(NodeId) -> bool,
) -> Vec<NodeId> {
    let mut keepers: Vec<(NodeId, f64)> = holders
        .iter()
        .copied()
        .filter(|(n, _)| !leaving(*n))
        .collect();
    let staying = keepers.len();
    let excess = staying.saturating_sub(goal);
    keepers.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let out: Vec<NodeId> = keepers.into_iter().take(excess).map(|(n, _)| n).collect();
    assert_eq!(
        staying - out.len(),
        goal.min(staying),
        "trimmed below the goal"
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    use ringfs_wire::msg::{ChunkReport, DeleteReason, ReplicaState};

    use super::{Delete, Needed, Scan, View, to_trim};
    use crate::chunks::ChunkMeta;
    use crate::namespace::{File, Inode, Kind, ROOT_INODE};
    use crate::pagedmap::PARTS;
    use crate::registry::Registry;
    use crate::registry::testing::register;
    use crate::state::State;
    use crate::types::NodeId;

    const CHUNK: u64 = 64 << 20;

    /// A state of `files` files with one chunk each (handles 1..=files,
    /// version 2), replication goal 3; the handle counter past them.
    fn state(files: u64) -> State {
        let mut s = State::new(CHUNK, 3);
        let owner = s.ns.intern_owner("t");
        for i in 0..files {
            let ino = ROOT_INODE + 1 + i;
            let handle = 1 + i;
            let mut file = File {
                complete: true,
                length_bytes: 1,
                ..File::default()
            };
            file.chunks.push(handle);
            s.ns.insert(
                ino,
                Inode {
                    parent: 0,
                    mtime_ns: 0,
                    ctime_ns: 0,
                    mode: 0o644,
                    owner,
                    replication: 3,
                    kind: Kind::File(file),
                },
            );
            s.ns.link(ROOT_INODE, &format!("f{i}"), ino, 0);
            s.chunks.insert(
                handle,
                ChunkMeta {
                    version: 2,
                    inode: ino,
                    index: 0,
                },
            );
        }
        s.counters.next_handle = files + 1;
        s
    }

    fn report(handle: u64, version: u64, state: ReplicaState) -> ChunkReport {
        ChunkReport {
            handle,
            version,
            length_bytes: 1,
            state,
        }
    }

    fn view<'a>(state: &'a State, reg: &'a Registry, now: Instant) -> View<'a> {
        View {
            state,
            reg,
            now,
            wall_ms: 1_000_000,
            settle_ms: 3_000,
            granting: &|_| false,
            leased: &|_| false,
            deleting: &|_, _| false,
        }
    }

    /// Steps until the pass finishes; returns (steps, entries judged).
    fn whole_pass(scan: &mut Scan, v: &View<'_>, deletes: &mut Vec<Delete>) -> (usize, usize) {
        let passes = scan.passes;
        let (mut steps, mut judged) = (0, 0);
        while scan.passes == passes {
            assert!(steps < 2 * PARTS, "a pass takes one step per part");
            judged += scan.step(v, deletes);
            steps += 1;
        }
        (steps, judged)
    }

    #[test]
    fn a_pass_judges_every_chunk_and_replica_once() {
        use ReplicaState::{Corrupt, Ok};
        let mut s = state(7);
        s.counters.next_handle = 60;
        let mut reg = Registry::default();
        // 1: three good. 2: two good. 3: none reported. 4: four good, one
        // to trim (node 4 is the fullest). 5: three good and one a version
        // behind. 6: three good and one corrupt. 7: one good.
        // 50: an orphan (below the counter, in no file). 99: above the
        // counter (an allocation not applied here yet): left alone.
        let on = |node: NodeId| -> Vec<ChunkReport> {
            let mut c = vec![report(1, 2, Ok), report(4, 2, Ok), report(5, 2, Ok)];
            if node <= 2 {
                c.push(report(2, 2, Ok));
            }
            if node <= 3 {
                c.push(report(6, 2, Ok));
            }
            match node {
                1 => c.extend([report(7, 2, Ok), report(50, 1, Ok), report(99, 1, Ok)]),
                4 => c.extend([report(5, 1, Ok), report(6, 2, Corrupt)]),
                _ => {}
            }
            if node == 4 {
                c.retain(|r| !(r.handle == 5 && r.version == 2) && r.handle != 1);
            }
            c
        };
        for node in 1..=4 {
            register(&mut reg, node, node * 10, &on(node));
        }
        let now = Instant::now();
        let v = view(&s, &reg, now);
        let mut scan = Scan::default();
        assert!(scan.due(now));
        let mut deletes = Vec::new();
        let (steps, judged) = whole_pass(&mut scan, &v, &mut deletes);
        assert_eq!(steps, PARTS);
        assert_eq!(judged, 7 + 8, "7 chunks, then 8 handles with replicas");
        let last = scan.last.expect("a finished pass");
        assert!(last.took > Duration::ZERO, "the pass is timed by the clock");
        assert_eq!(last.tally.chunks, 7);
        assert_eq!(last.tally.missing, 1, "chunk 3");
        assert_eq!(last.tally.under_replicated, 2, "chunks 2 and 7");
        assert_eq!(last.tally.corrupt_replicas, 1, "chunk 6 on node 4");
        let got: BTreeSet<Delete> = deletes.into_iter().collect();
        let want: BTreeSet<Delete> = [
            (1, 50, DeleteReason::Orphan),
            (4, 4, DeleteReason::Trimmed),
            (4, 5, DeleteReason::Stale),
            (4, 6, DeleteReason::Corrupt),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
        let queued: Vec<u64> = scan.needed.most_urgent().collect();
        assert_eq!(queued, vec![7, 2], "fewest live replicas first");
        // Not due again until the interval is up; then a new pass.
        assert!(!scan.due(now));
        assert!(scan.due(now + super::SCAN_INTERVAL));
    }

    #[test]
    fn a_pass_in_slices_sees_each_entry_once_while_the_tables_change() {
        let mut s = state(3_000);
        let mut reg = Registry::default();
        let all: Vec<ChunkReport> = (1..=3_000)
            .map(|h| report(h, 2, ReplicaState::Ok))
            .collect();
        for node in 1..=2 {
            register(&mut reg, node, 10, &all);
        }
        let now = Instant::now();
        let mut scan = Scan::default();
        let mut deletes = Vec::new();
        let mut judged = 0;
        let mut steps = 0;
        while scan.passes == 0 {
            // Between slices (the locks are free) files go and come: the
            // pass must still end, and count only what it saw.
            if steps == PARTS / 2 {
                s.chunks.remove(1);
            }
            judged += scan.step(&view(&s, &reg, now), &mut deletes);
            steps += 1;
            assert!(steps <= 2 * PARTS);
        }
        let tally = scan.last.expect("finished").tally;
        assert!((2 * 3_000 - 1..=2 * 3_000).contains(&judged));
        assert!((2_999..=3_000).contains(&tally.chunks));
        assert_eq!(tally.under_replicated, tally.chunks, "two of three each");
        assert_eq!(scan.needed.len() as u64, tally.chunks);
    }

    #[test]
    fn nothing_is_deleted_while_a_version_settles_or_a_delete_is_on_its_way() {
        use ReplicaState::Ok;
        let s = state(1);
        let mut reg = Registry::default();
        for node in 1..=3 {
            register(&mut reg, node, 10, &[report(1, 2, Ok)]);
        }
        register(&mut reg, 4, 90, &[report(1, 1, Ok)]);
        let now = Instant::now();
        let mut scan = Scan::default();
        let mut deletes = Vec::new();
        let mut v = view(&s, &reg, now);
        v.granting = &|h| h == 1;
        whole_pass(&mut scan, &v, &mut deletes);
        assert!(deletes.is_empty(), "a lease is being granted: {deletes:?}");
        let mut v = view(&s, &reg, now + super::SCAN_INTERVAL);
        v.deleting = &|n, h| n == 4 && h == 1;
        whole_pass(&mut scan, &v, &mut deletes);
        assert!(deletes.is_empty(), "already sent: {deletes:?}");
        let v = view(&s, &reg, now + 2 * super::SCAN_INTERVAL);
        whole_pass(&mut scan, &v, &mut deletes);
        assert_eq!(deletes, vec![(4, 1, DeleteReason::Stale)]);
    }

    #[test]
    fn the_queue_keeps_the_most_urgent_within_its_bound() {
        let t0 = Instant::now();
        let t = |ms: u64| t0 + Duration::from_millis(ms);
        let mut q = Needed::with_capacity(3);
        q.note_short(10, 2, t(0));
        q.note_short(11, 1, t(1));
        q.note_short(12, 2, t(2));
        assert_eq!(q.most_urgent().collect::<Vec<_>>(), vec![11, 10, 12]);
        // Full: a less urgent chunk is not taken, a more urgent one pushes
        // out the least urgent.
        q.note_short(13, 2, t(3));
        assert_eq!(q.len(), 3);
        assert!(q.since(13).is_none());
        q.note_short(14, 1, t(4));
        assert_eq!(q.most_urgent().collect::<Vec<_>>(), vec![11, 14, 10]);
        // A change of live count keeps the exposure time.
        q.note_short(10, 1, t(9));
        assert_eq!(q.since(10), Some(t(0)));
        assert_eq!(q.most_urgent().collect::<Vec<_>>(), vec![10, 11, 14]);
        q.forget(11);
        q.forget(11);
        assert_eq!(q.most_urgent().collect::<Vec<_>>(), vec![10, 14]);
    }

    #[test]
    fn clones_go_to_the_most_urgent_within_the_throttles() {
        use ReplicaState::Ok;
        let s = state(4);
        let mut reg = Registry::default();
        // Chunks 1 and 2 have one replica, 3 has two, 4 is whole.
        register(
            &mut reg,
            1,
            10,
            &[report(1, 2, Ok), report(3, 2, Ok), report(4, 2, Ok)],
        );
        register(
            &mut reg,
            2,
            10,
            &[report(2, 2, Ok), report(3, 2, Ok), report(4, 2, Ok)],
        );
        register(&mut reg, 3, 10, &[report(4, 2, Ok)]);
        register(&mut reg, 4, 10, &[]);
        let now = Instant::now();
        let v = view(&s, &reg, now);
        let mut scan = Scan::default();
        whole_pass(&mut scan, &v, &mut Vec::new());
        assert_eq!(scan.needed.len(), 3);
        // Budget 2: the two chunks with one replica, not chunk 3.
        let mut busy = std::collections::HashMap::new();
        let orders = scan.plan_clones(&v, 2, 8, &mut busy, |_| false);
        let handles: BTreeSet<u64> = orders.iter().map(|o| o.0).collect();
        assert_eq!(handles, [1, 2].into_iter().collect());
        for (handle, version, source, target) in &orders {
            assert_eq!(*version, 2);
            assert_eq!(*source, if *handle == 1 { 1 } else { 2 });
            assert!(*target != *source);
        }
        // One clone per server at most: node 1 is the only source of 1.
        let mut busy = [(1, 1)].into_iter().collect();
        let orders = scan.plan_clones(&v, 8, 1, &mut busy, |h| h == 2);
        assert_eq!(
            orders.iter().map(|o| o.0).collect::<Vec<_>>(),
            vec![3],
            "1 has no free source, 2 is being cloned"
        );
        assert_eq!(orders[0].2, 2, "3's free source");
        // A chunk found whole leaves the queue.
        register(&mut reg, 3, 10, &[report(4, 2, Ok), report(3, 2, Ok)]);
        let v = view(&s, &reg, now);
        scan.plan_clones(&v, 8, 8, &mut Default::default(), |_| true);
        assert_eq!(scan.needed.len(), 2);
        assert!(scan.needed.since(3).is_none());
    }

    #[test]
    fn a_chunk_being_written_is_not_cloned_until_its_lease_ends() {
        use ReplicaState::Ok;
        let mut s = state(1);
        let set_complete = |s: &mut State, complete: bool| {
            let ino = s.chunks.get(1).unwrap().inode;
            match &mut s.ns.get_mut(ino).unwrap().kind {
                Kind::File(f) => f.complete = complete,
                Kind::Dir(_) => unreachable!(),
            }
        };
        set_complete(&mut s, false);
        let mut reg = Registry::default();
        register(&mut reg, 1, 10, &[report(1, 2, Ok)]);
        register(&mut reg, 2, 10, &[]);
        let now = Instant::now();
        let v = view(&s, &reg, now);
        let mut scan = Scan::default();
        whole_pass(&mut scan, &v, &mut Vec::new());
        assert_eq!(scan.needed.len(), 1);
        let leased = View {
            leased: &|h| h == 1,
            ..view(&s, &reg, now)
        };
        let orders = scan.plan_clones(&leased, 8, 8, &mut Default::default(), |_| false);
        assert!(orders.is_empty(), "a write may be running: {orders:?}");
        let granting = View {
            granting: &|h| h == 1,
            ..view(&s, &reg, now)
        };
        let orders = scan.plan_clones(&granting, 8, 8, &mut Default::default(), |_| false);
        assert!(orders.is_empty(), "a lease is being granted: {orders:?}");
        assert_eq!(scan.needed.len(), 1, "it stays queued");
        let orders = scan.plan_clones(&v, 8, 8, &mut Default::default(), |_| false);
        assert_eq!(orders, vec![(1, 2, 1, 2)], "the lease ended");
        // A complete file's chunk is repaired under a lease.
        set_complete(&mut s, true);
        let leased = View {
            leased: &|h| h == 1,
            ..view(&s, &reg, now)
        };
        let orders = scan.plan_clones(&leased, 8, 8, &mut Default::default(), |_| false);
        assert_eq!(orders, vec![(1, 2, 1, 2)]);
    }

    #[test]
    fn trims_the_most_utilised_down_to_the_goal() {
        let holders = [(1, 0.2), (2, 0.9), (3, 0.5)];
        assert_eq!(to_trim(&holders, 1, |_| false), vec![2, 3]);
        assert_eq!(to_trim(&holders, 3, |_| false), Vec::<u64>::new());
        assert_eq!(to_trim(&holders, 4, |_| false), Vec::<u64>::new());
    }

    #[test]
    fn replicas_already_being_deleted_are_not_keepers() {
        // Two deletes are on their way; utilisation changed since, so a
        // fresh ranking would pick node 1 next. Nothing more may go.
        let holders = [(1, 0.9), (2, 0.1), (3, 0.1)];
        assert_eq!(to_trim(&holders, 1, |n| n != 1), Vec::<u64>::new());
        // One of two extra deletes is on its way: one more, not two.
        let holders = [(1, 0.9), (2, 0.5), (3, 0.1)];
        assert_eq!(to_trim(&holders, 1, |n| n == 1), vec![2]);
    }
}
