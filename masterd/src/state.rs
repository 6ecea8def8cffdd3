//! The replicated state: namespace, chunk table, leases, node ids and the
//! idempotency table, and the deterministic `apply` of every op.
//!
//! Determinism is the contract (asserted by digest tests): `apply` reads
//! only the state and the op. Hash-map iteration order is never observable:
//! whatever is iterated to produce an effect is a `BTreeMap` or sorted.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::chunks::{ChunkMeta, ChunkTable, LeaseRecord};
use crate::namespace::{File, Inode, Kind, NO_PARENT, Namespace, ROOT_INODE, TrashEntry};
use crate::types::{Done, Fail, NodeId, Op, Outcome, ReqId};

/// Outcomes remembered per client for retried requests. At least the
/// requests one connection may have in flight (`server`), since pipelined
/// requests reach the log in any order. The client library sends each
/// mutation on a stream of its own until answered (`client::streams`), so
/// a retry is never overtaken by more than this many of its client id.
pub const REQUEST_WINDOW_PER_CLIENT: usize = 64;
/// Clients remembered; the least recently seen is forgotten beyond this.
pub const CLIENTS_MAX: usize = 4_096;
/// Node ids remembered by registration key.
pub const NODES_MAX: usize = 65_536;

/// Counters that allocate identifiers. Never reset, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub next_inode: u64,
    pub next_handle: u64,
    pub next_trash_id: u64,
    pub next_node_id: u64,
    /// Ops applied so far: the recency clock of the idempotency table.
    pub ops_applied: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            next_inode: ROOT_INODE + 1,
            next_handle: 1,
            next_trash_id: 1,
            next_node_id: 1,
            ops_applied: 0,
        }
    }
}

/// How a new file is made (Create's fields besides path and owner).
#[derive(Clone, Copy, Debug)]
struct NewFile {
    replication: u8,
    exclusive: bool,
    mode: u32,
}

/// What a client's recent mutations returned, for retries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientWindow {
    pub last_seen: u64,
    pub recent: VecDeque<(u64, Outcome)>,
}

#[derive(Clone, Debug)]
pub struct State {
    pub ns: Namespace,
    pub chunks: ChunkTable,
    pub counters: Counters,
    /// Chunkserver registration key (first data dir id) → node id.
    pub nodes: BTreeMap<u64, NodeId>,
    pub clients: HashMap<u64, ClientWindow>,
    /// Recency index of `clients`: last_seen → client id.
    clients_by_age: BTreeMap<u64, u64>,
    pub chunk_size_bytes: u64,
    pub default_replication: u8,
}

impl State {
    pub fn new(chunk_size_bytes: u64, default_replication: u8) -> State {
        assert!(chunk_size_bytes > 0 && default_replication > 0);
        State {
            ns: Namespace::new(default_replication),
            chunks: ChunkTable::default(),
            counters: Counters::default(),
            nodes: BTreeMap::new(),
            clients: HashMap::new(),
            clients_by_age: BTreeMap::new(),
            chunk_size_bytes,
            default_replication,
        }
    }

    /// Rebuilds derived indexes after a checkpoint load.
    pub fn reindex(&mut self) {
        self.ns.reindex_owners();
        self.ns.recount();
        self.clients_by_age = self
            .clients
            .iter()
            .map(|(&c, w)| (w.last_seen, c))
            .collect();
    }

    /// Applies one op. Retried requests get their first outcome back.
    pub fn apply(&mut self, op: &Op) -> Outcome {
        self.counters.ops_applied += 1;
        let req = op.req();
        if req.client_id != 0
            && let Some(done) = self.replay(req)
        {
            return done;
        }
        let outcome = self.execute(op);
        if req.client_id != 0 {
            self.remember(req, outcome.clone());
        }
        outcome
    }

    fn replay(&mut self, req: ReqId) -> Option<Outcome> {
        let w = self.clients.get(&req.client_id)?;
        if let Some((_, o)) = w.recent.iter().find(|(s, _)| *s == req.seq) {
            return Some(o.clone());
        }
        // Older than everything remembered: its outcome is forgotten, and
        // applying it again could repeat its effect. The lowest seq, not the
        // first applied: pipelined requests of one client arrive out of order.
        let lowest = w.recent.iter().map(|(s, _)| *s).min()?;
        (req.seq < lowest && w.recent.len() == REQUEST_WINDOW_PER_CLIENT)
            .then_some(Err(Fail::BadRequest))
    }

    fn remember(&mut self, req: ReqId, outcome: Outcome) {
        let now = self.counters.ops_applied;
        if !self.clients.contains_key(&req.client_id)
            && self.clients.len() >= CLIENTS_MAX
            && let Some((_, oldest)) = self.clients_by_age.pop_first()
        {
            self.clients.remove(&oldest);
        }
        let w = self.clients.entry(req.client_id).or_default();
        self.clients_by_age.remove(&w.last_seen);
        w.last_seen = now;
        self.clients_by_age.insert(now, req.client_id);
        if w.recent.len() == REQUEST_WINDOW_PER_CLIENT
            && let Some(i) = w
                .recent
                .iter()
                .enumerate()
                .min_by_key(|(_, (s, _))| *s)
                .map(|(i, _)| i)
        {
            // Forget the lowest seq: a retry of a newer one must still find it.
            w.recent.remove(i);
        }
        w.recent.push_back((req.seq, outcome));
    }

    fn alloc_inode(&mut self) -> u64 {
        let ino = self.counters.next_inode;
        self.counters.next_inode += 1;
        ino
    }

    fn execute(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Mkdir {
                path,
                parents,
                mode,
                owner,
                now_ns,
                ..
            } => self.mkdir(path, *parents, *mode, owner, *now_ns),
            Op::Create {
                path,
                replication,
                exclusive,
                mode,
                owner,
                now_ns,
                trash_retention_ms,
                ..
            } => {
                let how = NewFile {
                    replication: *replication,
                    exclusive: *exclusive,
                    mode: *mode,
                };
                self.create(path, how, owner, *now_ns, *trash_retention_ms)
            }
            Op::Rename {
                src,
                dst,
                replace,
                now_ns,
                trash_retention_ms,
                ..
            } => self.rename(src, dst, *replace, *now_ns, *trash_retention_ms),
            Op::Delete {
                path,
                recursive,
                now_ms,
                purge_at_ms,
                ..
            } => {
                let ino = self.ns.lookup(path)?;
                if ino == ROOT_INODE {
                    return Err(Fail::InvalidPath);
                }
                let inode = self.ns.get(ino).ok_or(Fail::NotFound)?;
                if !*recursive && inode.dir().is_some_and(|d| !d.children.is_empty()) {
                    return Err(Fail::DirectoryNotEmpty);
                }
                let (parent, name) = self.ns.lookup_parent(path)?;
                let now_ns = (*now_ms as i64).saturating_mul(1_000_000);
                self.ns.unlink(parent, name, now_ns);
                let id = self.trash(ino, path, *now_ms, *purge_at_ms);
                Ok(Done::Trashed(id))
            }
            Op::Restore {
                trash_id,
                dst_path,
                now_ns,
                ..
            } => {
                let entry = self.ns.trash.get(trash_id).ok_or(Fail::NotFound)?;
                let dst = if dst_path.is_empty() {
                    entry.original_path.clone()
                } else {
                    dst_path.clone()
                };
                let ino = entry.inode;
                let (parent, name) = self.ns.lookup_parent(&dst)?;
                if self.ns.lookup(&dst).is_ok() {
                    return Err(Fail::Exists);
                }
                self.ns.trash.remove(trash_id);
                self.ns.link(parent, name, ino, *now_ns);
                Ok(Done::Inode(ino))
            }
            Op::Purge {
                trash_id, now_ms, ..
            } => {
                let due: Vec<u64> = if *trash_id == 0 {
                    self.ns
                        .trash
                        .iter()
                        .filter(|(_, e)| e.purge_at_ms <= *now_ms)
                        .map(|(&id, _)| id)
                        .collect()
                } else if self.ns.trash.contains_key(trash_id) {
                    vec![*trash_id]
                } else {
                    return Err(Fail::NotFound);
                };
                for id in &due {
                    if let Some(entry) = self.ns.trash.remove(id) {
                        for handle in self.ns.purge_subtree(entry.inode) {
                            self.chunks.remove(handle);
                        }
                    }
                }
                Ok(Done::Purged(due.len() as u64))
            }
            Op::SetReplication {
                path,
                replication,
                recursive,
                ..
            } => {
                if *replication == 0 || *replication > ringfs_wire::config::REPLICATION_MAX {
                    return Err(Fail::BadRequest);
                }
                let ino = self.ns.lookup(path)?;
                let targets = if *recursive {
                    self.ns.subtree(ino)
                } else {
                    vec![ino]
                };
                let mut files = 0;
                for t in targets {
                    if let Some(inode) = self.ns.get_mut(t) {
                        inode.replication = *replication;
                        files += u64::from(!inode.is_dir());
                    }
                }
                Ok(Done::Changed(files))
            }
            Op::AllocateChunk {
                inode,
                index,
                replicas,
                now_ns,
                lease_duration_ms,
                ..
            } => {
                let file = self
                    .ns
                    .get(*inode)
                    .ok_or(Fail::NotFound)?
                    .file()
                    .ok_or(Fail::IsDirectory)?;
                if let Some(&handle) = usize::try_from(*index)
                    .ok()
                    .and_then(|i| file.chunks.get(i))
                {
                    // Two writers raced for the same index: both get the one chunk.
                    let version = self.chunks.get(handle).map_or(0, |c| c.version);
                    return Ok(Done::JoinedChunk { handle, version });
                }
                let index32 = u32::try_from(*index).map_err(|_| Fail::OutOfRange)?;
                let handle = self.counters.next_handle;
                self.ns.add_chunk(*inode, *index, handle, *now_ns)?;
                self.counters.next_handle += 1;
                self.chunks.insert(
                    handle,
                    ChunkMeta {
                        version: 1,
                        inode: *inode,
                        index: index32,
                    },
                );
                // The first lease commits with the allocation, so a leader
                // elected after it waits the lease out like any other.
                if let Some(&primary) = replicas.first() {
                    self.chunks.record_lease(
                        handle,
                        LeaseRecord {
                            primary,
                            version: 1,
                            granted_at_ms: u64::try_from(*now_ns / 1_000_000).unwrap_or(0),
                            duration_ms: *lease_duration_ms,
                        },
                    );
                }
                Ok(Done::Chunk { handle, version: 1 })
            }
            Op::GrantLease {
                handle,
                primary,
                expected_version,
                now_ms,
                duration_ms,
            } => {
                let chunk = self.chunks.chunks.get_mut(handle).ok_or(Fail::NotFound)?;
                if chunk.version != *expected_version {
                    return Err(Fail::StaleVersion);
                }
                chunk.version += 1;
                let version = chunk.version;
                self.chunks.record_lease(
                    *handle,
                    LeaseRecord {
                        primary: *primary,
                        version,
                        granted_at_ms: *now_ms,
                        duration_ms: *duration_ms,
                    },
                );
                Ok(Done::Version(version))
            }
            Op::ExtendLeases {
                primary,
                leases,
                now_ms,
                duration_ms,
            } => {
                let mut extended = 0;
                for &(handle, version) in leases {
                    let current = self
                        .chunks
                        .get(handle)
                        .is_some_and(|c| c.version == version)
                        && self
                            .chunks
                            .leases
                            .get(&handle)
                            .is_some_and(|r| r.primary == *primary && r.version == version);
                    if current {
                        self.chunks.record_lease(
                            handle,
                            LeaseRecord {
                                primary: *primary,
                                version,
                                granted_at_ms: *now_ms,
                                duration_ms: *duration_ms,
                            },
                        );
                        extended += 1;
                    }
                }
                Ok(Done::Extended(extended))
            }
            Op::CompleteFile {
                inode,
                length_bytes,
                now_ns,
                ..
            } => {
                let chunk_size = self.chunk_size_bytes;
                let node = self.ns.get_mut(*inode).ok_or(Fail::NotFound)?;
                let Kind::File(f) = &mut node.kind else {
                    return Err(Fail::IsDirectory);
                };
                if *length_bytes > (f.chunks.len() as u64).saturating_mul(chunk_size) {
                    return Err(Fail::OutOfRange);
                }
                f.length_bytes = *length_bytes;
                f.complete = true;
                node.mtime_ns = *now_ns;
                Ok(Done::Inode(*inode))
            }
            Op::AssignNodeId { dir_id } => {
                if let Some(&id) = self.nodes.get(dir_id) {
                    return Ok(Done::NodeId(id));
                }
                if self.nodes.len() >= NODES_MAX {
                    return Err(Fail::TooLarge);
                }
                let id = self.counters.next_node_id;
                self.counters.next_node_id += 1;
                self.nodes.insert(*dir_id, id);
                Ok(Done::NodeId(id))
            }
        }
    }

    fn trash(&mut self, ino: u64, path: &str, now_ms: u64, purge_at_ms: u64) -> u64 {
        let id = self.counters.next_trash_id;
        self.counters.next_trash_id += 1;
        let entry = TrashEntry {
            inode: ino,
            original_path: path.to_string(),
            deleted_at_ms: now_ms,
            purge_at_ms,
        };
        self.ns.trash.insert(id, entry);
        id
    }

    fn mkdir(&mut self, path: &str, parents: bool, mode: u32, owner: &str, now_ns: i64) -> Outcome {
        let parts = crate::namespace::components(path)?;
        if parts.is_empty() {
            return if parents {
                Ok(Done::Inode(ROOT_INODE))
            } else {
                Err(Fail::Exists)
            };
        }
        let owner = self.ns.intern_owner(owner);
        let mut dir = ROOT_INODE;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let node = self.ns.get(dir).ok_or(Fail::NotFound)?;
            let d = node.dir().ok_or(Fail::NotDirectory)?;
            let replication = node.replication;
            match d.children.get(*part).copied() {
                Some(existing) => {
                    let is_dir = self.ns.get(existing).is_some_and(Inode::is_dir);
                    if last {
                        return if parents && is_dir {
                            Ok(Done::Inode(existing))
                        } else {
                            Err(Fail::Exists)
                        };
                    }
                    if !is_dir {
                        return Err(Fail::NotDirectory);
                    }
                    dir = existing;
                }
                None if !last && !parents => return Err(Fail::NotFound),
                None => {
                    let ino = self.alloc_inode();
                    let inode = Inode {
                        parent: NO_PARENT,
                        mtime_ns: now_ns,
                        ctime_ns: now_ns,
                        mode,
                        owner,
                        replication,
                        kind: Kind::Dir(Box::default()),
                    };
                    self.ns.insert(ino, inode);
                    self.ns.link(dir, part, ino, now_ns);
                    dir = ino;
                }
            }
        }
        Ok(Done::Inode(dir))
    }

    fn create(
        &mut self,
        path: &str,
        how: NewFile,
        owner: &str,
        now_ns: i64,
        retention_ms: u64,
    ) -> Outcome {
        let NewFile {
            replication,
            exclusive,
            mode,
        } = how;
        if replication > ringfs_wire::config::REPLICATION_MAX {
            return Err(Fail::BadRequest);
        }
        let (parent, name) = self.ns.lookup_parent(path)?;
        if let Some(existing) = self
            .ns
            .get(parent)
            .and_then(Inode::dir)
            .and_then(|d| d.children.get(name).copied())
        {
            if exclusive {
                return Err(Fail::Exists);
            }
            if self.ns.get(existing).is_some_and(Inode::is_dir) {
                return Err(Fail::IsDirectory);
            }
            // Truncation keeps the old contents recoverable: the old file
            // goes to the trash like a delete would send it.
            self.ns.unlink(parent, name, now_ns);
            let now_ms = u64::try_from(now_ns / 1_000_000).unwrap_or(0);
            self.trash(existing, path, now_ms, now_ms.saturating_add(retention_ms));
        }
        let goal = if replication == 0 {
            self.ns
                .get(parent)
                .map_or(self.default_replication, |p| p.replication)
        } else {
            replication
        };
        let owner = self.ns.intern_owner(owner);
        let ino = self.alloc_inode();
        let inode = Inode {
            parent: NO_PARENT,
            mtime_ns: now_ns,
            ctime_ns: now_ns,
            mode,
            owner,
            replication: goal,
            kind: Kind::File(File::default()),
        };
        self.ns.insert(ino, inode);
        self.ns.link(parent, name, ino, now_ns);
        Ok(Done::Inode(ino))
    }

    fn rename(
        &mut self,
        src: &str,
        dst: &str,
        replace: bool,
        now_ns: i64,
        retention_ms: u64,
    ) -> Outcome {
        let (src_parent, src_name) = self.ns.lookup_parent(src)?;
        let ino = self.ns.lookup(src)?;
        let (dst_parent, dst_name) = self.ns.lookup_parent(dst)?;
        if src_parent == dst_parent && src_name == dst_name {
            return Ok(Done::Ok);
        }
        let src_is_dir = self.ns.get(ino).is_some_and(Inode::is_dir);
        if src_is_dir && self.ns.is_within(dst_parent, ino) {
            return Err(Fail::RenameIntoSelf);
        }
        let existing = self
            .ns
            .get(dst_parent)
            .and_then(Inode::dir)
            .and_then(|d| d.children.get(dst_name).copied());
        if let Some(victim) = existing {
            if !replace {
                return Err(Fail::Exists);
            }
            let victim_node = self.ns.get(victim).ok_or(Fail::NotFound)?;
            match (src_is_dir, victim_node.dir()) {
                (true, None) => return Err(Fail::NotDirectory),
                (false, Some(_)) => return Err(Fail::IsDirectory),
                (true, Some(d)) if !d.children.is_empty() => return Err(Fail::DirectoryNotEmpty),
                _ => {}
            }
            // The replaced entry stays recoverable from the trash.
            self.ns.unlink(dst_parent, dst_name, now_ns);
            let now_ms = u64::try_from(now_ns / 1_000_000).unwrap_or(0);
            self.trash(victim, dst, now_ms, now_ms.saturating_add(retention_ms));
        }
        self.ns.unlink(src_parent, src_name, now_ns);
        self.ns.link(dst_parent, dst_name, ino, now_ns);
        Ok(Done::Ok)
    }

    /// A digest of the whole replicated state, independent of hash-map
    /// order: two masters that applied the same log have equal digests.
    pub fn digest(&self) -> u64 {
        let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut put = |bytes: &[u8]| d.update(bytes);
        let c = &self.counters;
        for v in [
            c.next_inode,
            c.next_handle,
            c.next_trash_id,
            c.next_node_id,
            c.ops_applied,
        ] {
            put(&v.to_le_bytes());
        }
        for (ino, n) in self.ns.inodes.iter_by_key() {
            put(&ino.to_le_bytes());
            put(&n.parent.to_le_bytes());
            put(&n.mtime_ns.to_le_bytes());
            put(&n.ctime_ns.to_le_bytes());
            put(&n.mode.to_le_bytes());
            put(self.ns.owner_name(n.owner).as_bytes());
            put(&[n.replication]);
            match &n.kind {
                Kind::File(f) => {
                    put(&f.length_bytes.to_le_bytes());
                    put(&[u8::from(f.complete)]);
                    for h in &f.chunks {
                        put(&h.to_le_bytes());
                    }
                }
                Kind::Dir(dir) => {
                    for (name, child) in &dir.children {
                        put(name.as_bytes());
                        put(&child.to_le_bytes());
                    }
                }
            }
        }
        for (h, c) in self.chunks.chunks.iter_by_key() {
            for v in [h, c.version, c.inode, u64::from(c.index)] {
                put(&v.to_le_bytes());
            }
        }
        let mut leases: Vec<_> = self.chunks.leases.iter().collect();
        leases.sort_unstable_by_key(|(h, _)| **h);
        for (h, l) in leases {
            for v in [*h, l.primary, l.version, l.granted_at_ms, l.duration_ms] {
                put(&v.to_le_bytes());
            }
        }
        for (id, e) in &self.ns.trash {
            for v in [*id, e.inode, e.deleted_at_ms, e.purge_at_ms] {
                put(&v.to_le_bytes());
            }
            put(e.original_path.as_bytes());
        }
        for (k, v) in &self.nodes {
            put(&k.to_le_bytes());
            put(&v.to_le_bytes());
        }
        let mut clients: Vec<_> = self.clients.iter().collect();
        clients.sort_unstable_by_key(|(c, _)| **c);
        for (c, w) in clients {
            put(&c.to_le_bytes());
            put(&w.last_seen.to_le_bytes());
            for (seq, o) in &w.recent {
                put(&seq.to_le_bytes());
                put(format!("{o:?}").as_bytes());
            }
        }
        d.finalize()
    }

    /// Where a chunk's replication goal comes from.
    pub fn goal_of(&self, handle: u64) -> Option<u8> {
        let c = self.chunks.get(handle)?;
        self.ns.get(c.inode).map(|i| i.replication)
    }
}
