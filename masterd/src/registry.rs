//! The chunkserver registry and chunk locations: volatile by design
//! (DESIGN §4). Every master rebuilds it from registrations and heartbeats,
//! which chunkservers send to all masters, so a new leader already knows
//! where every chunk is.
//!
//! A full report (several `Register` frames) replaces what the master knew
//! of that chunkserver; heartbeats carry increments. A chunkserver silent for
//! `chunkserver_timeout_ms` is dead and its replicas stop counting.
//!
//! Replacing a chunkserver's replicas (its full report, or its death) is
//! done one part of the location table per step, [`REPLACE_STEP_ENTRIES`]
//! entries at most, and the caller lets go of the registry lock between
//! steps: at 10 M chunks the whole walk held the lock for 68 ms on a death
//! and 1.4 s on a full report, and every lookup, heartbeat and allocation
//! waited behind it. While a replacement runs, increments for parts it has
//! not reached yet go into its report as well, so they survive it; a dead
//! node's replicas are hidden from [`Registry::replicas`] at once.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ringfs_wire::msg::{ChunkReport, CommandEnvelope, ReplicaState};
use smallvec::SmallVec;

use crate::pagedmap::PagedMap;
use crate::types::NodeId;

/// Commands queued per chunkserver for its heartbeat replies.
pub const COMMANDS_QUEUED_MAX: usize = 4096;
/// Commands sent in one heartbeat reply.
pub const COMMANDS_PER_REPLY_MAX: usize = 64;
/// Reports buffered for one chunkserver's multi-frame full report.
pub const FULL_REPORT_CHUNKS_MAX: usize = 16 << 20;
/// Entries one replacement step looks at (the part's entries walked plus
/// the reported ones applied) before it ends: about 2 ms of lock hold.
pub const REPLACE_STEP_ENTRIES: usize = 16_384;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Live,
    Dead,
    Decommissioning,
}

#[derive(Clone, Debug)]
pub struct Chunkserver {
    pub node_id: NodeId,
    pub listen_addr: String,
    pub http_addr: String,
    pub rack: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub ops_in_flight: u32,
    pub chunk_count: u64,
    pub last_heartbeat: Instant,
    pub liveness: Liveness,
    pub scrub_unverified_bytes: u64,
    pub commands: VecDeque<CommandEnvelope>,
    /// A full report is being received (between the first and the last Register frame).
    full_report: Option<PartedReport>,
}

impl Chunkserver {
    /// Used fraction, for least-utilised-first placement.
    pub fn utilisation(&self) -> f64 {
        if self.capacity_bytes == 0 {
            1.0
        } else {
            self.used_bytes as f64 / self.capacity_bytes as f64
        }
    }
}

/// One replica as reported. Its length is not kept: nothing decides on
/// it, and at 10 M chunks of 3 replicas it cost about 40 B per chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub node: NodeId,
    pub version: u64,
    pub state: ReplicaState,
}

pub type Locations = SmallVec<[Location; 3]>;

/// The replicas of one chunk as stored: 24 bytes for the usual case of up
/// to three replicas at one version on nodes whose ids fit 32 bits (ids are
/// issued by a counter from 1), a pointer to a list otherwise (a replica
/// left behind at an older version, a goal above three, a clone in
/// progress). At 10 M chunks the list form for all of them cost 149 B per
/// chunk with its hash table, the packed form in a page 24 (note 017).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replicas {
    Packed {
        version: u64,
        nodes: [u32; 3],
        states: [ReplicaState; 3],
        count: u8,
    },
    Listed(Box<Locations>),
}

// The point of the packed form; a layout change that loses it shows here.
const _: () = assert!(std::mem::size_of::<Replicas>() == 24);

impl Default for Replicas {
    fn default() -> Self {
        Replicas::Packed {
            version: 0,
            nodes: [0; 3],
            states: [ReplicaState::Ok; 3],
            count: 0,
        }
    }
}

impl Replicas {
    /// The most compact form of `locs`, which names each node at most once
    /// (`upsert` keeps it so; `remove_node` relies on it).
    pub fn of(locs: &[Location]) -> Replicas {
        // A handful of replicas, so the quadratic check is cheap enough to
        // keep in release builds.
        assert!(
            locs.iter()
                .enumerate()
                .all(|(i, l)| locs[..i].iter().all(|m| m.node != l.node)),
            "a chunk's replicas name a node twice: {locs:?}"
        );
        let packable = locs.len() <= 3
            && locs
                .iter()
                .all(|l| l.version == locs[0].version && u32::try_from(l.node).is_ok());
        if !packable {
            return Replicas::Listed(Box::new(locs.iter().copied().collect()));
        }
        let mut packed = Replicas::default();
        if let Replicas::Packed {
            version,
            nodes,
            states,
            count,
        } = &mut packed
        {
            for (i, l) in locs.iter().enumerate() {
                *version = l.version;
                nodes[i] = l.node as u32;
                states[i] = l.state;
            }
            *count = locs.len() as u8;
        }
        packed
    }

    pub fn locations(&self) -> Locations {
        match self {
            Replicas::Packed {
                version,
                nodes,
                states,
                count,
            } => (0..usize::from(*count))
                .map(|i| Location {
                    node: NodeId::from(nodes[i]),
                    version: *version,
                    state: states[i],
                })
                .collect(),
            Replicas::Listed(locs) => (**locs).clone(),
        }
    }

    /// Drops the replica on `node`, if any, keeping the compact form.
    /// The packed case is checked in place: a chunkserver's death walks
    /// every chunk with this (10 M chunks: 0.2 s under the registry lock
    /// when each was unpacked into a list and packed again).
    pub fn remove_node(&mut self, node: NodeId) {
        if let Replicas::Packed {
            nodes,
            states,
            count,
            ..
        } = self
        {
            let n = usize::from(*count);
            let Some(at) = nodes[..n].iter().position(|&x| NodeId::from(x) == node) else {
                return;
            };
            nodes.copy_within(at + 1..n, at);
            states.copy_within(at + 1..n, at);
            nodes[n - 1] = 0;
            states[n - 1] = ReplicaState::Ok;
            *count -= 1;
            if *count == 0 {
                *self = Replicas::default();
            }
            return;
        }
        let mut locs = self.locations();
        locs.retain(|l| l.node != node);
        *self = Replicas::of(&locs);
    }

    pub fn len(&self) -> usize {
        match self {
            Replicas::Packed { count, .. } => usize::from(*count),
            Replicas::Listed(locs) => locs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Default)]
pub struct Registry {
    pub servers: BTreeMap<NodeId, Chunkserver>,
    /// By chunk handle, in pages like the chunk table (`crate::pagedmap`):
    /// the chunk pass walks part `i` of both.
    pub locations: PagedMap<Replicas>,
    /// Chunkservers whose replicas are being replaced, oldest first; at
    /// most one per node.
    replacing: VecDeque<Replacement>,
}

/// A full report as it arrives, frame by frame, already cut by part of the
/// location table, so its completion costs no walk over it. Within a part
/// reports stay in arrival order: applied in that order, the last report
/// of a handle wins.
#[derive(Clone, Debug)]
struct PartedReport {
    by_part: Vec<Vec<ChunkReport>>,
    len: usize,
}

impl PartedReport {
    fn new(parts: usize) -> PartedReport {
        PartedReport {
            by_part: vec![Vec::new(); parts],
            len: 0,
        }
    }

    /// Adds a frame's reports, up to [`FULL_REPORT_CHUNKS_MAX`] in all.
    fn extend(&mut self, chunks: &[ChunkReport]) {
        let room = FULL_REPORT_CHUNKS_MAX.saturating_sub(self.len);
        for c in &chunks[..chunks.len().min(room)] {
            self.by_part[PagedMap::<Replicas>::part_of(c.handle)].push(*c);
        }
        self.len += chunks.len().min(room);
        assert!(self.len <= FULL_REPORT_CHUNKS_MAX);
    }
}

/// One chunkserver's replicas being replaced, a part of the location
/// table per step.
struct Replacement {
    node: NodeId,
    /// What the node's entries become, per part, in the order reported
    /// (the last report of a handle wins). Empty after a death: nothing.
    by_part: Vec<Vec<ChunkReport>>,
    /// Parts below this one are done.
    next_part: usize,
}

impl Replacement {
    /// The report of the part `handle` is in, if this replacement has not
    /// reached that part yet.
    fn pending(&mut self, handle: u64) -> Option<&mut Vec<ChunkReport>> {
        let part = PagedMap::<Replicas>::part_of(handle);
        if part < self.next_part {
            return None;
        }
        self.by_part.get_mut(part)
    }
}

/// What a registration frame said about the chunkserver itself.
pub struct Registration<'a> {
    pub node_id: NodeId,
    pub listen_addr: &'a str,
    pub http_addr: &'a str,
    pub rack: &'a str,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
}

impl Registry {
    /// Takes one `Register` frame. The chunk set is replaced when the last
    /// frame of the report (`complete`) arrives, so a report cut short by a
    /// reconnect never leaves half of it applied.
    pub fn register(
        &mut self,
        r: &Registration<'_>,
        chunks: &[ChunkReport],
        complete: bool,
        now: Instant,
    ) {
        assert!(r.node_id != 0, "registration without a node id");
        let server = self
            .servers
            .entry(r.node_id)
            .or_insert_with(|| Chunkserver {
                node_id: r.node_id,
                listen_addr: String::new(),
                http_addr: String::new(),
                rack: String::new(),
                capacity_bytes: 0,
                used_bytes: 0,
                ops_in_flight: 0,
                chunk_count: 0,
                last_heartbeat: now,
                liveness: Liveness::Live,
                scrub_unverified_bytes: 0,
                commands: VecDeque::new(),
                full_report: None,
            });
        server.listen_addr = r.listen_addr.to_string();
        server.http_addr = r.http_addr.to_string();
        server.rack = r.rack.to_string();
        server.capacity_bytes = r.capacity_bytes;
        server.used_bytes = r.used_bytes;
        server.last_heartbeat = now;
        if server.liveness == Liveness::Dead {
            server.liveness = Liveness::Live;
        }
        let parts = self.locations.part_count();
        let report = server
            .full_report
            .get_or_insert_with(|| PartedReport::new(parts));
        report.extend(chunks);
        if complete {
            let report = server
                .full_report
                .take()
                .unwrap_or_else(|| PartedReport::new(parts));
            server.chunk_count = report.len as u64;
            self.start_replacement(r.node_id, Some(report));
        }
    }

    /// Queues the replacement of `node`'s replicas by `report` (`None`: by
    /// nothing, it died), instead of one it may have queued before.
    fn start_replacement(&mut self, node: NodeId, report: Option<PartedReport>) {
        self.replacing.retain(|r| r.node != node);
        let by_part = report.map_or_else(Vec::new, |r| r.by_part);
        assert!(by_part.is_empty() || by_part.len() == self.locations.part_count());
        self.replacing.push_back(Replacement {
            node,
            by_part,
            next_part: 0,
        });
        assert!(self.replacing.len() <= self.servers.len());
    }

    /// Runs queued replacements for up to `budget` entries (at least one
    /// part); true while some remain. Callers drop the registry lock
    /// between steps. The report lists used up go to `spent`, for the
    /// caller to free after it let go of the lock: freeing the last of a
    /// 10 M-chunk report hands ~300 MiB back to the kernel (the allocator
    /// trims its heap), 20 ms under the lock when it was done here.
    pub fn replace_step(&mut self, budget: usize, spent: &mut Vec<Vec<ChunkReport>>) -> bool {
        let mut looked = 0;
        while looked < budget {
            let parts = self.locations.part_count();
            let Some(job) = self.replacing.front_mut() else {
                return false;
            };
            let (node, part) = (job.node, job.next_part);
            assert!(part < parts);
            let report = job.by_part.get_mut(part).map(std::mem::take);
            // The part counts as done from here on: increments for it now
            // go to the table only.
            job.next_part += 1;
            if job.next_part == parts {
                self.replacing.pop_front();
            }
            looked += self.locations.retain_part(part, |_, stored| {
                stored.remove_node(node);
                !stored.is_empty()
            });
            let report = report.unwrap_or_default();
            for c in &report {
                debug_assert_eq!(PagedMap::<Replicas>::part_of(c.handle), part);
                self.upsert(node, c);
                looked += 1;
            }
            spent.push(report);
        }
        !self.replacing.is_empty()
    }

    /// Whether a replacement is queued or under way.
    pub fn replacing(&self) -> bool {
        !self.replacing.is_empty()
    }

    /// Runs every queued replacement to its end under one hold (tests).
    pub fn finish_replacements(&mut self) {
        while self.replace_step(usize::MAX, &mut Vec::new()) {}
    }

    /// The not-yet-applied report of `node`'s part holding `handle`.
    fn pending(&mut self, node: NodeId, handle: u64) -> Option<&mut Vec<ChunkReport>> {
        self.replacing
            .iter_mut()
            .find(|r| r.node == node)?
            .pending(handle)
    }

    /// Takes a heartbeat's increments. Unknown senders must register first.
    pub fn heartbeat(
        &mut self,
        node: NodeId,
        added: &[ChunkReport],
        removed: &[u64],
        corrupt: &[ChunkReport],
        now: Instant,
    ) -> bool {
        let Some(server) = self.servers.get_mut(&node) else {
            return false;
        };
        server.last_heartbeat = now;
        if server.liveness == Liveness::Dead {
            // It came back without re-registering (a network partition
            // healed): its replicas are unknown again until a full report.
            return false;
        }
        for c in added.iter().chain(corrupt) {
            self.upsert(node, c);
        }
        for h in removed {
            self.remove(node, *h);
        }
        if let Some(s) = self.servers.get_mut(&node) {
            s.chunk_count = s
                .chunk_count
                .saturating_add(added.len() as u64)
                .saturating_sub(removed.len() as u64);
        }
        true
    }

    fn upsert(&mut self, node: NodeId, c: &ChunkReport) {
        if let Some(report) = self.pending(node, c.handle) {
            // After the reported ones: it wins over them when applied.
            report.push(*c);
        }
        let loc = Location {
            node,
            version: c.version,
            state: c.state,
        };
        let stored = self
            .locations
            .get_or_insert_with(c.handle, Replicas::default);
        let mut locs = stored.locations();
        match locs.iter_mut().find(|l| l.node == node) {
            Some(l) => *l = loc,
            None => locs.push(loc),
        }
        *stored = Replicas::of(&locs);
    }

    pub fn remove(&mut self, node: NodeId, handle: u64) {
        if let Some(report) = self.pending(node, handle) {
            report.retain(|r| r.handle != handle);
        }
        if let Some(stored) = self.locations.get_mut(&handle) {
            stored.remove_node(node);
            if stored.is_empty() {
                self.locations.remove(&handle);
            }
        }
    }

    /// Changes the replica of `handle` on `node`, if there is one, with
    /// `change` (in a pending replacement's report too); false if there is
    /// none.
    pub fn update_replica(
        &mut self,
        handle: u64,
        node: NodeId,
        change: impl Fn(&mut Location),
    ) -> bool {
        let mut found = false;
        // The last report of the handle is the one that will count.
        if let Some(report) = self.pending(node, handle)
            && let Some(r) = report.iter_mut().rev().find(|r| r.handle == handle)
        {
            let mut l = Location {
                node,
                version: r.version,
                state: r.state,
            };
            change(&mut l);
            (r.version, r.state) = (l.version, l.state);
            found = true;
        }
        let Some(stored) = self.locations.get_mut(&handle) else {
            return found;
        };
        let mut locs = stored.locations();
        let Some(l) = locs.iter_mut().find(|l| l.node == node) else {
            return found;
        };
        change(l);
        *stored = Replicas::of(&locs);
        true
    }

    /// The replicas reported for `handle` (none if it is unknown), on
    /// chunkservers not dead: a dead one's linger until its replacement
    /// reaches them.
    pub fn replicas(&self, handle: u64) -> Locations {
        let mut locs = self
            .locations
            .get(&handle)
            .map(Replicas::locations)
            .unwrap_or_default();
        locs.retain(|l| self.is_live(l.node));
        locs
    }

    /// Marks chunkservers silent for longer than `timeout` dead and queues
    /// the removal of their replicas. Returns the newly dead.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<NodeId> {
        let dead: Vec<NodeId> = self
            .servers
            .values()
            .filter(|s| {
                s.liveness != Liveness::Dead
                    && now.saturating_duration_since(s.last_heartbeat) > timeout
            })
            .map(|s| s.node_id)
            .collect();
        for node in &dead {
            self.declare_dead(*node);
        }
        dead
    }

    /// `node` is dead: its commands and any report half received go, its
    /// replicas are hidden now and dropped by a replacement.
    fn declare_dead(&mut self, node: NodeId) {
        let Some(s) = self.servers.get_mut(&node) else {
            return;
        };
        s.liveness = Liveness::Dead;
        s.commands.clear();
        s.full_report = None;
        self.start_replacement(node, None);
    }

    pub fn is_live(&self, node: NodeId) -> bool {
        self.servers
            .get(&node)
            .is_some_and(|s| s.liveness != Liveness::Dead)
    }

    /// Live, and its complete chunk report has arrived and been applied
    /// (not mid-report, not mid-replacement).
    pub fn fully_reported(&self, node: NodeId) -> bool {
        self.servers
            .get(&node)
            .is_some_and(|s| s.liveness != Liveness::Dead && s.full_report.is_none())
            && !self.replacing.iter().any(|r| r.node == node)
    }

    /// Replicas that can serve `version`: live servers, state Ok, same version.
    pub fn good_replicas(&self, handle: u64, version: u64) -> Locations {
        let mut locs = self.replicas(handle);
        locs.retain(|l| {
            l.version == version && l.state == ReplicaState::Ok && self.is_live(l.node)
        });
        locs
    }

    pub fn live_servers(&self) -> impl Iterator<Item = &Chunkserver> {
        self.servers
            .values()
            .filter(|s| s.liveness == Liveness::Live)
    }

    /// Queues a command for the next heartbeat reply; false when the queue is full.
    pub fn queue_command(&mut self, node: NodeId, command: CommandEnvelope) -> bool {
        match self.servers.get_mut(&node) {
            Some(s) if s.commands.len() < COMMANDS_QUEUED_MAX => {
                s.commands.push_back(command);
                true
            }
            _ => false,
        }
    }

    pub fn take_commands(&mut self, node: NodeId) -> Vec<CommandEnvelope> {
        match self.servers.get_mut(&node) {
            Some(s) => {
                let n = s.commands.len().min(COMMANDS_PER_REPLY_MAX);
                s.commands.drain(..n).collect()
            }
            None => Vec::new(),
        }
    }
}

/// Shared by the unit tests of this module and of `crate::chunkscan`.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// What a chunkserver on loopback says of itself (utilisation `used`
    /// of 100).
    pub fn registration(node: NodeId, used: u64) -> Registration<'static> {
        Registration {
            node_id: node,
            listen_addr: "127.0.0.1:1",
            http_addr: "127.0.0.1:2",
            rack: "",
            // `used` percent of 100 TiB: utilisation as given, and room
            // for any chunk on every server below 100.
            capacity_bytes: 100 << 40,
            used_bytes: used << 40,
        }
    }

    /// Registers `node` (utilisation `used` of 100) with its full report.
    pub fn register(reg: &mut Registry, node: NodeId, used: u64, chunks: &[ChunkReport]) {
        reg.register(&registration(node, used), chunks, true, Instant::now());
        reg.finish_replacements();
    }
}

#[cfg(test)]
mod tests {
    use super::testing::register;
    use super::*;
    use proptest::prelude::*;

    fn loc(node: NodeId, version: u64, state: ReplicaState) -> Location {
        Location {
            node,
            version,
            state,
        }
    }

    fn location() -> impl Strategy<Value = Location> {
        (
            prop_oneof![
                1u64..6,
                Just(u64::from(u32::MAX)),
                Just(u64::from(u32::MAX) + 1)
            ],
            prop_oneof![1u64..3, Just(u64::MAX)],
            proptest::sample::select(ReplicaState::ENUM_VALUES.to_vec()),
        )
            .prop_map(|(n, v, s)| loc(n, v, s))
    }

    /// Up to `max` replicas on distinct nodes, as the registry keeps them.
    fn replica_list(max: usize) -> impl Strategy<Value = Vec<Location>> {
        proptest::collection::vec(location(), 0..max).prop_map(|mut locs| {
            let mut seen = Vec::new();
            locs.retain(|l| {
                let new = !seen.contains(&l.node);
                seen.push(l.node);
                new
            });
            locs
        })
    }

    proptest! {
        #[test]
        fn replicas_keep_what_they_are_given(locs in replica_list(6)) {
            let stored = Replicas::of(&locs);
            prop_assert_eq!(stored.locations().to_vec(), locs.clone());
            prop_assert_eq!(stored.len(), locs.len());
            let packable = locs.len() <= 3
                && locs.iter().all(|l| l.version == locs[0].version && l.node <= u64::from(u32::MAX));
            prop_assert_eq!(matches!(stored, Replicas::Packed { .. }), packable);
        }
    }

    proptest! {
        #[test]
        fn removing_a_node_matches_the_list(
            locs in replica_list(6),
            node in prop_oneof![1u64..6, Just(u64::from(u32::MAX) + 1)],
        ) {
            let mut stored = Replicas::of(&locs);
            stored.remove_node(node);
            let want: Vec<Location> = locs.iter().copied().filter(|l| l.node != node).collect();
            prop_assert_eq!(stored.locations().to_vec(), want.clone());
            // Still the most compact form (so equal to a fresh one).
            prop_assert_eq!(stored, Replicas::of(&want));
        }
    }

    #[test]
    #[should_panic(expected = "name a node twice")]
    fn a_node_named_twice_is_refused() {
        let twice = [loc(2, 7, ReplicaState::Ok), loc(2, 7, ReplicaState::Ok)];
        let _ = Replicas::of(&twice);
    }

    #[test]
    fn the_usual_replicas_pack_and_the_odd_ones_are_listed() {
        let ok = ReplicaState::Ok;
        let three = [
            loc(1, 7, ok),
            loc(2, 7, ReplicaState::Corrupt),
            loc(3, 7, ok),
        ];
        assert!(matches!(
            Replicas::of(&three),
            Replicas::Packed { count: 3, .. }
        ));
        let behind = [loc(1, 7, ok), loc(2, 6, ok)];
        assert!(matches!(Replicas::of(&behind), Replicas::Listed(_)));
        let four = [three.as_slice(), &[loc(4, 7, ok)]].concat();
        assert!(matches!(Replicas::of(&four), Replicas::Listed(_)));
        let big_id = [loc(1 << 32, 7, ok)];
        assert!(matches!(Replicas::of(&big_id), Replicas::Listed(_)));
        assert!(Replicas::default().is_empty());
    }

    fn report(handle: u64, version: u64) -> ChunkReport {
        ChunkReport {
            handle,
            version,
            length_bytes: 0,
            state: ReplicaState::Ok,
        }
    }

    #[test]
    fn reports_heartbeats_and_deaths_move_replicas_between_forms() {
        let mut reg = Registry::default();
        for node in 1..=3 {
            register(&mut reg, node, 0, &[report(10, 1), report(11, 1)]);
        }
        assert!(matches!(
            reg.locations.get(&10),
            Some(Replicas::Packed { count: 3, .. })
        ));
        // A replica left behind at version 1 while two move to 2: listed.
        for node in 1..=2 {
            assert!(reg.update_replica(10, node, |l| l.version = 2));
        }
        assert!(matches!(reg.locations.get(&10), Some(Replicas::Listed(_))));
        assert_eq!(reg.good_replicas(10, 2).len(), 2);
        // The stale one deleted: packed again.
        assert!(reg.heartbeat(3, &[], &[10], &[], Instant::now()));
        assert!(matches!(
            reg.locations.get(&10),
            Some(Replicas::Packed { count: 2, .. })
        ));
        assert!(!reg.update_replica(10, 3, |l| l.version = 9));
        // A fourth copy (a clone), then node 1 dies.
        register(&mut reg, 4, 0, &[report(11, 1)]);
        assert_eq!(reg.replicas(11).len(), 4);
        let later = Instant::now() + Duration::from_secs(60);
        for node in 2..=4 {
            reg.heartbeat(node, &[], &[], &[], later);
        }
        assert_eq!(reg.expire(later, Duration::from_secs(30)), vec![1]);
        // Hidden at once, dropped by the replacement's steps.
        let nodes: Vec<NodeId> = reg.replicas(11).iter().map(|l| l.node).collect();
        assert_eq!(nodes, vec![2, 3, 4]);
        assert!(reg.replacing());
        assert_eq!(reg.locations.get(&11).map(Replicas::len), Some(4));
        reg.finish_replacements();
        assert!(!reg.replacing());
        assert!(matches!(
            reg.locations.get(&11),
            Some(Replicas::Packed { count: 3, .. })
        ));
        // Every replica of 10 gone: the entry goes.
        reg.remove(2, 10);
        assert_eq!(reg.locations.len(), 1);
        assert!(reg.replicas(10).is_empty());
    }
}

/// Replacements run in steps must end where applying each at once would
/// have, whatever arrives between the steps.
#[cfg(test)]
mod replacement_tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Event {
        /// A full report: (handle, version) pairs, repeats allowed.
        Report(NodeId, Vec<(u64, u64)>),
        Heartbeat(NodeId, Vec<(u64, u64)>, Vec<u64>),
        Bump(NodeId, u64, u64),
        Corrupt(NodeId, u64),
        Die(NodeId),
        Step(usize),
    }

    /// Spread over every part (64 keys a page, 4,096 parts).
    fn handle() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..300_000, 0u64..200]
    }

    fn event() -> impl Strategy<Value = Event> {
        let node = 1u64..=4;
        let pairs = |n| proptest::collection::vec((handle(), 1u64..4), 0..n);
        prop_oneof![
            2 => (node.clone(), pairs(400)).prop_map(|(n, r)| Event::Report(n, r)),
            4 => (node.clone(), pairs(20), proptest::collection::vec(handle(), 0..10))
                .prop_map(|(n, a, r)| Event::Heartbeat(n, a, r)),
            2 => (node.clone(), handle(), 1u64..6).prop_map(|(n, h, v)| Event::Bump(n, h, v)),
            1 => (node.clone(), handle()).prop_map(|(n, h)| Event::Corrupt(n, h)),
            1 => node.prop_map(Event::Die),
            4 => (1usize..3_000).prop_map(Event::Step),
        ]
    }

    fn chunk(handle: u64, version: u64, state: ReplicaState) -> ChunkReport {
        ChunkReport {
            handle,
            version,
            length_bytes: 0,
            state,
        }
    }

    /// The model: every replica by handle, each change applied at once.
    type Model = HashMap<u64, BTreeMap<NodeId, (u64, ReplicaState)>>;

    fn forget(model: &mut Model, node: NodeId) {
        for locs in model.values_mut() {
            locs.remove(&node);
        }
        model.retain(|_, l| !l.is_empty());
    }

    fn table(reg: &Registry) -> Model {
        let mut out = Model::new();
        for (handle, stored) in reg.locations.iter() {
            let locs = stored.locations();
            assert!(!locs.is_empty(), "an empty entry is kept for {handle}");
            out.insert(
                handle,
                locs.iter()
                    .map(|l| (l.node, (l.version, l.state)))
                    .collect(),
            );
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn stepped_replacements_end_where_whole_ones_would(
            events in proptest::collection::vec(event(), 1..40),
        ) {
            let mut reg = Registry::default();
            let mut model = Model::new();
            let mut live: HashMap<NodeId, bool> = HashMap::new();
            let now = Instant::now();
            for e in events {
                match e {
                    Event::Report(node, pairs) => {
                        let r = super::testing::registration(node, 0);
                        let report: Vec<ChunkReport> = pairs
                            .iter()
                            .map(|&(h, v)| chunk(h, v, ReplicaState::Ok))
                            .collect();
                        reg.register(&r, &report, true, now);
                        forget(&mut model, node);
                        for (h, v) in pairs {
                            model.entry(h).or_default().insert(node, (v, ReplicaState::Ok));
                        }
                        live.insert(node, true);
                    }
                    Event::Heartbeat(node, added, removed) => {
                        let added: Vec<ChunkReport> = added
                            .iter()
                            .map(|&(h, v)| chunk(h, v, ReplicaState::Ok))
                            .collect();
                        let known = reg.heartbeat(node, &added, &removed, &[], now);
                        prop_assert_eq!(known, live.get(&node) == Some(&true));
                        if known {
                            for c in &added {
                                model.entry(c.handle).or_default().insert(node, (c.version, c.state));
                            }
                            for h in &removed {
                                if let Some(locs) = model.get_mut(h) {
                                    locs.remove(&node);
                                    if locs.is_empty() {
                                        model.remove(h);
                                    }
                                }
                            }
                        }
                    }
                    Event::Bump(node, handle, version) => {
                        let replacing = reg.replacing.iter().any(|r| r.node == node);
                        let found = reg.update_replica(handle, node, |l| l.version = version);
                        let in_model = model.get_mut(&handle).and_then(|l| l.get_mut(&node));
                        // While the node's replacement runs, parts it has not
                        // reached still hold its old replicas (hidden if it
                        // died), and those can be found and changed too.
                        if !replacing {
                            prop_assert_eq!(found, in_model.is_some());
                        }
                        if let Some(entry) = in_model {
                            entry.0 = version;
                        }
                    }
                    Event::Corrupt(node, handle) => {
                        if let Some(entry) = model.get_mut(&handle).and_then(|l| l.get_mut(&node)) {
                            let c = chunk(handle, entry.0, ReplicaState::Corrupt);
                            if reg.heartbeat(node, &[], &[], &[c], now) {
                                entry.1 = ReplicaState::Corrupt;
                            }
                        }
                    }
                    Event::Die(node) => {
                        if live.get(&node) == Some(&true) {
                            reg.declare_dead(node);
                            forget(&mut model, node);
                            live.insert(node, false);
                        }
                    }
                    Event::Step(budget) => {
                        reg.replace_step(budget, &mut Vec::new());
                    }
                }
                // Whatever is half done, lookups never name a dead node.
                for h in model.keys().take(20) {
                    for l in reg.replicas(*h) {
                        prop_assert_eq!(live.get(&l.node), Some(&true));
                    }
                }
            }
            reg.finish_replacements();
            prop_assert!(!reg.replacing());
            prop_assert_eq!(table(&reg), model);
            prop_assert_eq!(reg.locations.len(), reg.locations.iter().count());
        }
    }
}
