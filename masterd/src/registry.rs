//! The chunkserver registry and chunk locations: volatile by design
//! (DESIGN §4). Every master rebuilds it from registrations and heartbeats,
//! which chunkservers send to all masters, so a new leader already knows
//! where every chunk is.
//!
//! A full report (several `Register` frames) replaces what the master knew
//! of that chunkserver; heartbeats carry increments. A chunkserver silent for
//! `chunkserver_timeout_ms` is dead and its replicas stop counting.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ringfs_wire::msg::{ChunkReport, CommandEnvelope, ReplicaState};
use smallvec::SmallVec;

use crate::shardmap::ShardMap;
use crate::types::NodeId;

/// Commands queued per chunkserver for its heartbeat replies.
pub const COMMANDS_QUEUED_MAX: usize = 4096;
/// Commands sent in one heartbeat reply.
pub const COMMANDS_PER_REPLY_MAX: usize = 64;
/// Reports buffered for one chunkserver's multi-frame full report.
pub const FULL_REPORT_CHUNKS_MAX: usize = 16 << 20;

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
    full_report: Option<Vec<ChunkReport>>,
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

#[derive(Default)]
pub struct Registry {
    pub servers: BTreeMap<NodeId, Chunkserver>,
    /// By chunk handle. A `ShardMap` for the reason the chunk table is
    /// one: at 10 M chunks a `HashMap` doubling here would rehash 1.8 GiB
    /// while the registry lock is held.
    pub locations: ShardMap<Locations>,
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
        let report = server.full_report.get_or_insert_with(Vec::new);
        let room = FULL_REPORT_CHUNKS_MAX.saturating_sub(report.len());
        report.extend_from_slice(&chunks[..chunks.len().min(room)]);
        if complete {
            let report = server.full_report.take().unwrap_or_default();
            server.chunk_count = report.len() as u64;
            let node = r.node_id;
            self.forget_node(node);
            for c in report {
                self.upsert(node, &c);
            }
        }
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
        let loc = Location {
            node,
            version: c.version,
            state: c.state,
        };
        let locs = self.locations.get_or_insert_with(c.handle, Locations::new);
        match locs.iter_mut().find(|l| l.node == node) {
            Some(l) => *l = loc,
            None => locs.push(loc),
        }
    }

    pub fn remove(&mut self, node: NodeId, handle: u64) {
        if let Some(locs) = self.locations.get_mut(&handle) {
            locs.retain(|l| l.node != node);
            if locs.is_empty() {
                self.locations.remove(&handle);
            }
        }
    }

    fn forget_node(&mut self, node: NodeId) {
        self.locations.retain(|_, locs| {
            locs.retain(|l| l.node != node);
            !locs.is_empty()
        });
    }

    /// Marks chunkservers silent for longer than `timeout` dead and drops
    /// their replicas. Returns the newly dead.
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
            if let Some(s) = self.servers.get_mut(node) {
                s.liveness = Liveness::Dead;
                s.commands.clear();
                s.full_report = None;
            }
            self.forget_node(*node);
        }
        dead
    }

    pub fn is_live(&self, node: NodeId) -> bool {
        self.servers
            .get(&node)
            .is_some_and(|s| s.liveness != Liveness::Dead)
    }

    /// Live, and its complete chunk report has arrived (not mid-report).
    pub fn fully_reported(&self, node: NodeId) -> bool {
        self.servers
            .get(&node)
            .is_some_and(|s| s.liveness != Liveness::Dead && s.full_report.is_none())
    }

    /// Replicas that can serve `version`: live servers, state Ok, same version.
    pub fn good_replicas(&self, handle: u64, version: u64) -> Locations {
        self.locations
            .get(&handle)
            .map(|locs| {
                locs.iter()
                    .filter(|l| {
                        l.version == version && l.state == ReplicaState::Ok && self.is_live(l.node)
                    })
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
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
