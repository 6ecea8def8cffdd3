//! The checkpoint decoder: bytes (an mmap, or any slice) to a `State`.
//!
//! Pure and total: any input yields a `State` or a [`DecodeError`] naming
//! the part and file offset at fault, never a panic, and nothing is
//! allocated from a length or count before it is checked against the bytes
//! that must hold it. Order of checks: header (magic, CRC, version), footer
//! (magic, CRC, section layout), then each section's CRC before any of its
//! fields is read, then its records, then the rules that relate sections.
//!
//! Large inputs decode on four threads: inodes with their chunk lists,
//! directory entries, the chunk table with leases, and the small sections.
//! Nothing on the way does a hash lookup per record: the big tables are
//! paged by key (`crate::pagedmap`) and their records come in ascending
//! key order, so each insert lands next to the previous one in its part,
//! and the entries-name-inodes check is a merge of two sorted lists. At
//! 10 M files a hash lookup or insert per record is a cache miss each, and
//! those took 12 of the 15 s a load used to take.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread;

use compact_str::CompactString;
use openraft::{BasicNode, CommittedLeaderId, StoredMembership};
use ringfs_wire::checksum::crc32c;

use super::CheckpointMeta;
use super::format::*;
use crate::chunks::{ChunkMeta, ChunkTable, LeaseRecord};
use crate::namespace::{ChunkList, File, Inode, Kind, OWNERS_MAX, ROOT_INODE, TrashEntry};
use crate::pagedmap::PagedMap;
use crate::state::{
    CLIENTS_MAX, ClientWindow, Counters, NODES_MAX, REQUEST_WINDOW_PER_CLIENT, State,
};
use crate::types::{FILE_CHUNKS_MAX, LogId, NodeId, OWNER_BYTES_MAX, PATH_BYTES_MAX};

/// Inputs below this many bytes decode on the calling thread (1 MiB):
/// spawning threads costs more than decoding a small state, and the fuzzer
/// feeds small inputs by the million.
pub const PARALLEL_DECODE_MIN_BYTES: usize = 1 << 20;

/// Decodes a whole checkpoint file.
pub fn decode(bytes: &[u8]) -> Result<(State, CheckpointMeta), DecodeError> {
    decode_with(bytes, bytes.len() >= PARALLEL_DECODE_MIN_BYTES)
}

/// The header's last log id, without decoding the rest (file listings).
pub fn peek_last_log_id(bytes: &[u8]) -> Result<Option<LogId>, DecodeError> {
    Ok(Header::decode(bytes)?.last_log.map(log_id))
}

fn log_id((index, term, node): (u64, u64, u64)) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

/// Sections that relate to no other: config, membership, owners, trash,
/// nodes, clients.
struct Small {
    chunk_size_bytes: u64,
    default_replication: u8,
    counters: Counters,
    membership: StoredMembership<NodeId, BasicNode>,
    owners: Vec<String>,
    trash: BTreeMap<u64, crate::namespace::TrashEntry>,
    nodes: BTreeMap<u64, NodeId>,
    clients: HashMap<u64, ClientWindow>,
}

struct Inodes {
    map: PagedMap<Inode>,
    /// The largest owner index used, with the inode and file offset that
    /// used it, so the owners cross-check is O(1).
    max_owner: Option<(u32, u64, u64)>,
    /// The largest handle in any file's chunk list, for the counter check.
    max_handle: Option<u64>,
}

/// One directory's entries, in name order, with the file offset of its
/// first entry (for error messages).
type DirGroup = (u64, u64, BTreeMap<CompactString, u64>);

struct Dirents {
    groups: Vec<DirGroup>,
    /// Every entry as (child, parent), sorted (by `check_forest`).
    edges: Vec<(u64, u64)>,
}

pub fn decode_with(bytes: &[u8], parallel: bool) -> Result<(State, CheckpointMeta), DecodeError> {
    let header = Header::decode(bytes)?;
    if bytes.len() as u64 > CHECKPOINT_BYTES_MAX {
        return Err(DecodeError::new(
            Part::File,
            0,
            format!(
                "file has {} bytes, above CHECKPOINT_BYTES_MAX {CHECKPOINT_BYTES_MAX}",
                bytes.len()
            ),
        ));
    }
    let entries = decode_footer(bytes, header.section_count)?;
    let sec = |s: Section| -> Sec<'_> {
        let e = entries[s.kind() as usize - 1];
        debug_assert_eq!(e.section, s);
        Sec {
            entry: e,
            // decode_footer checked offset + length ≤ the footer's start.
            bytes: &bytes[e.offset as usize..(e.offset + e.length) as usize],
        }
    };

    let inodes_job = || decode_inodes(sec(Section::Inodes), sec(Section::FileChunks));
    let dirents_job = || decode_dirents(sec(Section::Dirents));
    let chunks_job = || decode_chunk_table(sec(Section::Chunks), sec(Section::Leases));
    let small_job = || decode_small(&sec);

    let (inodes, dirents, chunks, small) = if parallel {
        thread::scope(|scope| {
            let a = spawn_or_run(scope, "ckpt-inodes", inodes_job);
            let b = spawn_or_run(scope, "ckpt-dirents", dirents_job);
            let c = spawn_or_run(scope, "ckpt-chunks", chunks_job);
            let d = small_job();
            (a.join(), b.join(), c.join(), d)
        })
    } else {
        (inodes_job(), dirents_job(), chunks_job(), small_job())
    };
    let (small, mut inodes, dirents, chunks) = match (small, inodes, dirents, chunks) {
        (Ok(s), Ok(i), Ok(d), Ok(c)) => (s, i, d, c),
        (s, i, d, c) => {
            // Report the first failure in file order, whichever thread
            // finished first, so the same file always gives the same error.
            let first = [s.err(), i.err(), d.err(), c.err()]
                .into_iter()
                .flatten()
                .min_by_key(|e| (e.section(), e.offset));
            return Err(first.expect("this arm has at least one error"));
        }
    };

    // Cross-section rules.
    if let Some((owner, ino, at)) = inodes.max_owner
        && owner as usize >= small.owners.len()
    {
        return Err(DecodeError::new(
            Part::Assembly(Section::Inodes),
            at,
            format!(
                "inode {ino} has owner index {owner}, but there are {} owners",
                small.owners.len()
            ),
        ));
    }
    let inodes_at = sec(Section::Inodes).entry.offset;
    if !inodes.map.get(&ROOT_INODE).is_some_and(Inode::is_dir) {
        return Err(DecodeError::new(
            Part::Assembly(Section::Inodes),
            inodes_at,
            "no root directory",
        ));
    }
    // Every entry names an inode: a merge of the sorted children with the
    // inode section's ascending numbers. (A hash lookup per entry was 6 s
    // at 10 M entries, one cache miss each.)
    let inode_recs = sec(Section::Inodes).bytes.as_chunks::<INODE_BYTES>().0;
    if let Some((child, parent)) =
        first_missing_child(&dirents.edges, inode_recs.iter().map(|r| le64(r, 0)))
    {
        let (at, name) = dirents
            .groups
            .iter()
            .filter(|(p, _, _)| *p == parent)
            .find_map(|(_, at, children)| {
                let (name, _) = children.iter().find(|(_, c)| **c == child)?;
                Some((*at, name.clone()))
            })
            .unwrap_or((sec(Section::Dirents).entry.offset, CompactString::default()));
        return Err(DecodeError::new(
            Part::Assembly(Section::Dirents),
            at,
            format!("entry {name:?} of directory {parent} names missing inode {child}"),
        ));
    }
    check_counters(
        &small,
        inode_recs.last().map(|r| le64(r, 0)),
        sec(Section::Chunks)
            .bytes
            .as_chunks::<CHUNK_BYTES>()
            .0
            .last()
            .map(|r| le64(r, 0))
            .max(inodes.max_handle),
        sec(Section::Config).entry.offset,
    )?;
    drop(dirents.edges);
    for (parent, at, children) in dirents.groups {
        let err = |what: String| DecodeError::new(Part::Assembly(Section::Dirents), at, what);
        match inodes.map.get_mut(&parent).map(|n| &mut n.kind) {
            Some(Kind::Dir(d)) => d.children = children,
            Some(Kind::File(_)) => return Err(err(format!("entries under file {parent}"))),
            None => return Err(err(format!("entries under missing inode {parent}"))),
        }
    }

    // State::new asserts these; decode_small checked them.
    assert!(small.chunk_size_bytes > 0 && small.default_replication > 0);
    let mut state = State::new(small.chunk_size_bytes, small.default_replication);
    state.ns.inodes = inodes.map;
    state.ns.trash = small.trash;
    state.ns.owners = small.owners;
    state.chunks = chunks;
    state.counters = small.counters;
    state.nodes = small.nodes;
    state.clients = small.clients;
    state.reindex();
    let meta = CheckpointMeta {
        last_log_id: header.last_log.map(log_id),
        last_membership: small.membership,
    };
    Ok((state, meta))
}

/// Each counter must be above every id already in use: the state machine
/// hands out the counter's value as a new id, and one already taken would
/// make two inodes (chunks, trash entries, chunkservers) share it.
/// `max_handle` covers the chunk table and the files' chunk lists.
fn check_counters(
    small: &Small,
    max_inode: Option<u64>,
    max_handle: Option<u64>,
    config_at: u64,
) -> Result<(), DecodeError> {
    let c = &small.counters;
    let max_node = small.nodes.values().copied().max();
    // (counter, its value, offset in the config record, what, largest in use)
    let checks = [
        ("next_inode", c.next_inode, 16, "inode", max_inode),
        ("next_handle", c.next_handle, 24, "chunk handle", max_handle),
        (
            "next_trash_id",
            c.next_trash_id,
            32,
            "trash id",
            small.trash.last_key_value().map(|(&id, _)| id),
        ),
        ("next_node_id", c.next_node_id, 40, "node id", max_node),
    ];
    for (name, next, at, what, max) in checks {
        if let Some(max) = max
            && next <= max
        {
            return Err(DecodeError::new(
                Part::Assembly(Section::Config),
                config_at + at,
                format!("counter {name} is {next}, not above {what} {max} already in use"),
            ));
        }
    }
    Ok(())
}

/// A scoped thread, or the job's result when no thread could be made (a
/// thread limit must not make a good checkpoint unreadable).
enum Job<'scope, T> {
    Thread(thread::ScopedJoinHandle<'scope, Option<T>>),
    Done(Option<T>),
}

impl<T> Job<'_, T> {
    fn join(self) -> T {
        let out = match self {
            Job::Thread(h) => match h.join() {
                Ok(t) => t,
                // The decoders do not panic; if one did, re-raise it here
                // rather than invent a result.
                Err(p) => std::panic::resume_unwind(p),
            },
            Job::Done(t) => t,
        };
        out.expect("a decode job runs exactly once, on its thread or here")
    }
}

fn spawn_or_run<'scope, T, F>(
    scope: &'scope thread::Scope<'scope, '_>,
    name: &str,
    job: F,
) -> Job<'scope, T>
where
    T: Send + 'scope,
    F: FnOnce() -> T + Send + 'scope,
{
    // spawn_scoped drops its closure when it fails, so the job waits in a
    // slot that whichever side runs it empties.
    let slot = Arc::new(Mutex::new(Some(job)));
    let theirs = Arc::clone(&slot);
    let take = |s: &Mutex<Option<F>>| s.lock().unwrap_or_else(|p| p.into_inner()).take();
    match thread::Builder::new()
        .name(name.to_string())
        .spawn_scoped(scope, move || take(&theirs).map(|j| j()))
    {
        Ok(h) => Job::Thread(h),
        Err(_) => Job::Done(take(&slot).map(|j| j())),
    }
}

/// One section's footer entry and bytes.
#[derive(Clone, Copy)]
struct Sec<'a> {
    entry: FooterEntry,
    bytes: &'a [u8],
}

impl<'a> Sec<'a> {
    fn part(&self) -> Part {
        Part::Section(self.entry.section)
    }

    fn err(&self, rel: usize, what: impl Into<String>) -> DecodeError {
        DecodeError::new(self.part(), self.entry.offset + rel as u64, what)
    }

    /// The section's bytes, once its CRC matches.
    fn verified(&self) -> Result<&'a [u8], DecodeError> {
        let computed = crc32c(self.bytes);
        if computed != self.entry.crc {
            return Err(self.err(
                0,
                format!(
                    "section CRC mismatch: footer says {:#010x}, bytes hash to {computed:#010x}",
                    self.entry.crc
                ),
            ));
        }
        Ok(self.bytes)
    }

    /// Fixed-size records: the length must be exactly count × N.
    fn fixed<const N: usize>(&self, count_max: u64) -> Result<&'a [[u8; N]], DecodeError> {
        let bytes = self.verified()?;
        let count = self.entry.count;
        if count > count_max {
            return Err(self.err(0, format!("{count} records, above the bound {count_max}")));
        }
        if count.checked_mul(N as u64) != Some(bytes.len() as u64) {
            return Err(self.err(
                0,
                format!(
                    "{} bytes do not hold {count} records of {N} bytes",
                    bytes.len()
                ),
            ));
        }
        let (recs, rest) = bytes.as_chunks::<N>();
        debug_assert!(rest.is_empty());
        Ok(recs)
    }

    /// Variable-size records of at least `min` bytes each: the count must
    /// fit, so it bounds what is allocated for it.
    fn variable(&self, min: usize, count_max: u64) -> Result<Cursor<'a>, DecodeError> {
        let bytes = self.verified()?;
        let count = self.entry.count;
        if count > count_max {
            return Err(self.err(0, format!("{count} records, above the bound {count_max}")));
        }
        if count
            .checked_mul(min as u64)
            .is_none_or(|n| n > bytes.len() as u64)
        {
            return Err(self.err(
                0,
                format!(
                    "{} bytes cannot hold {count} records of at least {min} bytes",
                    bytes.len()
                ),
            ));
        }
        Ok(Cursor {
            sec: *self,
            bytes,
            pos: 0,
        })
    }
}

/// Reads variable-size records front to back.
struct Cursor<'a> {
    sec: Sec<'a>,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, rel: usize, what: impl Into<String>) -> DecodeError {
        self.sec.err(rel, what)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(self.err(
                self.pos,
                format!("record needs {n} bytes, {left} remain in the section"),
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn fixed<const N: usize>(&mut self) -> Result<&'a [u8; N], DecodeError> {
        let b = self.take(N)?;
        b.try_into()
            .map_err(|_| self.err(self.pos, "internal: slice length"))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos != self.bytes.len() {
            return Err(self.err(
                self.pos,
                format!(
                    "{} bytes after the last of {} records",
                    self.bytes.len() - self.pos,
                    self.sec.entry.count
                ),
            ));
        }
        Ok(())
    }
}

/// Errors when `key` is not above the previous one (order and uniqueness).
fn ascending(
    prev: &mut Option<u64>,
    key: u64,
    sec: &Sec<'_>,
    rel: usize,
    what: &str,
) -> Result<(), DecodeError> {
    if prev.is_some_and(|p| key <= p) {
        return Err(sec.err(
            rel,
            format!("{what} {key} is not above the previous one (order or duplicate)"),
        ));
    }
    *prev = Some(key);
    Ok(())
}

fn decode_small<'a>(sec: &impl Fn(Section) -> Sec<'a>) -> Result<Small, DecodeError> {
    let s = sec(Section::Config);
    let cfg = s.fixed::<CONFIG_BYTES>(1)?;
    let [rec] = cfg else {
        return Err(s.err(0, "config section holds no record"));
    };
    let chunk_size_bytes = le64(rec, 0);
    let default_replication = rec[8];
    if chunk_size_bytes == 0 || default_replication == 0 {
        return Err(s.err(0, "chunk size and default replication must be non-zero"));
    }
    if rec[9..16].iter().any(|&b| b != 0) {
        return Err(s.err(9, "reserved config bytes are not zero"));
    }
    let counters = Counters {
        next_inode: le64(rec, 16),
        next_handle: le64(rec, 24),
        next_trash_id: le64(rec, 32),
        next_node_id: le64(rec, 40),
        ops_applied: le64(rec, 48),
    };

    let s = sec(Section::Membership);
    let m = s.verified()?;
    if s.entry.count != 1 || m.is_empty() || m.len() > MEMBERSHIP_BYTES_MAX {
        return Err(s.err(
            0,
            format!(
                "membership is {} bytes in {} records; expected 1 record of 1..={MEMBERSHIP_BYTES_MAX} bytes",
                m.len(),
                s.entry.count
            ),
        ));
    }
    let (membership, rest): (StoredMembership<NodeId, BasicNode>, _) =
        postcard::take_from_bytes(m).map_err(|e| s.err(0, format!("postcard: {e}")))?;
    if !rest.is_empty() {
        return Err(s.err(m.len() - rest.len(), "bytes after the membership"));
    }
    // postcard accepts over-long varints; the file must be canonical.
    if postcard::to_stdvec(&membership).ok().as_deref() != Some(m) {
        return Err(s.err(0, "membership is not canonically encoded"));
    }

    let s = sec(Section::Owners);
    let mut c = s.variable(OWNER_FIXED_BYTES, OWNERS_MAX as u64)?;
    let mut owners = Vec::with_capacity(s.entry.count as usize);
    let mut seen = HashSet::with_capacity(s.entry.count as usize);
    for _ in 0..s.entry.count {
        let at = c.pos;
        let len = usize::from(u16::from_le_bytes(*c.fixed::<2>()?));
        if len > OWNER_BYTES_MAX {
            return Err(c.err(
                at,
                format!("owner name of {len} bytes, above OWNER_BYTES_MAX"),
            ));
        }
        let name = std::str::from_utf8(c.take(len)?)
            .map_err(|_| c.err(at + 2, "owner name is not UTF-8"))?;
        if !seen.insert(name) {
            return Err(c.err(at, format!("owner {name:?} appears twice")));
        }
        owners.push(name.to_string());
    }
    c.finish()?;

    let s = sec(Section::Trash);
    let mut c = s.variable(TRASH_FIXED_BYTES, u64::MAX)?;
    let mut trash = BTreeMap::new();
    let mut prev = None;
    for _ in 0..s.entry.count {
        let at = c.pos;
        let r = c.fixed::<TRASH_FIXED_BYTES>()?;
        let id = le64(r, 0);
        ascending(&mut prev, id, &s, at, "trash id")?;
        let len = usize::from(le16(r, 32));
        if len > PATH_BYTES_MAX {
            return Err(c.err(
                at + 32,
                format!("path of {len} bytes, above PATH_BYTES_MAX"),
            ));
        }
        let path = std::str::from_utf8(c.take(len)?)
            .map_err(|_| c.err(at + TRASH_FIXED_BYTES, "trash path is not UTF-8"))?;
        trash.insert(
            id,
            TrashEntry {
                inode: le64(r, 8),
                original_path: path.to_string(),
                deleted_at_ms: le64(r, 16),
                purge_at_ms: le64(r, 24),
            },
        );
    }
    c.finish()?;

    let s = sec(Section::Nodes);
    let recs = s.fixed::<NODE_BYTES>(NODES_MAX as u64)?;
    let mut prev = None;
    for (i, r) in recs.iter().enumerate() {
        ascending(&mut prev, le64(r, 0), &s, i * NODE_BYTES, "dir id")?;
    }
    let nodes = recs.iter().map(|r| (le64(r, 0), le64(r, 8))).collect();

    let s = sec(Section::Clients);
    let mut c = s.variable(CLIENT_FIXED_BYTES, CLIENTS_MAX as u64)?;
    let mut clients = HashMap::with_capacity(s.entry.count as usize);
    let mut ages = Vec::with_capacity(s.entry.count as usize);
    let mut prev = None;
    for _ in 0..s.entry.count {
        let at = c.pos;
        let r = c.fixed::<CLIENT_FIXED_BYTES>()?;
        let id = le64(r, 0);
        ascending(&mut prev, id, &s, at, "client id")?;
        let n = usize::from(r[16]);
        if n > REQUEST_WINDOW_PER_CLIENT {
            return Err(c.err(
                at + 16,
                format!("{n} outcomes, above REQUEST_WINDOW_PER_CLIENT"),
            ));
        }
        if r[17..].iter().any(|&b| b != 0) {
            return Err(c.err(at + 17, "reserved client bytes are not zero"));
        }
        let mut recent = VecDeque::with_capacity(n);
        for _ in 0..n {
            let at = c.pos;
            let e = c.fixed::<OUTCOME_ENTRY_BYTES>()?;
            let (seq, o) = e
                .split_first_chunk::<8>()
                .ok_or_else(|| c.err(at, "internal"))?;
            let o: &[u8; OUTCOME_ENTRY_BYTES - 8] =
                o.try_into().map_err(|_| c.err(at, "internal"))?;
            let outcome = decode_outcome(o).map_err(|e| c.err(at + 8, e))?;
            recent.push_back((u64::from_le_bytes(*seq), outcome));
        }
        let last_seen = le64(r, 8);
        ages.push((last_seen, at));
        clients.insert(id, ClientWindow { last_seen, recent });
    }
    c.finish()?;
    ages.sort_unstable();
    if let Some(w) = ages.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(s.err(
            w[1].1,
            format!(
                "two clients have last_seen {} (the recency index needs distinct ones)",
                w[0].0
            ),
        ));
    }

    Ok(Small {
        chunk_size_bytes,
        default_replication,
        counters,
        membership,
        owners,
        trash,
        nodes,
        clients,
    })
}

fn decode_inodes(s: Sec<'_>, chunks: Sec<'_>) -> Result<Inodes, DecodeError> {
    let recs = s.fixed::<INODE_BYTES>(u64::MAX)?;
    let handles = chunks.fixed::<HANDLE_BYTES>(u64::MAX)?;
    let mut handles = handles.iter();
    let mut map = PagedMap::new();
    let mut max_owner: Option<(u32, u64, u64)> = None;
    let mut max_handle: Option<u64> = None;
    let mut prev = None;
    let mut handles_used = 0usize;
    for (i, r) in recs.iter().enumerate() {
        let at = i * INODE_BYTES;
        let ino = le64(r, 0);
        ascending(&mut prev, ino, &s, at, "inode")?;
        let owner = le32(r, 36);
        if max_owner.is_none_or(|(o, _, _)| owner > o) {
            max_owner = Some((owner, ino, s.entry.offset + at as u64 + 36));
        }
        let (kind, complete, count, length) = (r[41], r[42], le32(r, 44), le64(r, 48));
        if r[43] != 0 {
            return Err(s.err(at + 43, "reserved inode byte is not zero"));
        }
        let kind = match kind {
            INODE_KIND_FILE => {
                if complete > 1 {
                    return Err(s.err(at + 42, format!("complete flag {complete}")));
                }
                if u64::from(count) > FILE_CHUNKS_MAX {
                    return Err(s.err(
                        at + 44,
                        format!("file {ino} has {count} chunks, above FILE_CHUNKS_MAX"),
                    ));
                }
                let n = count as usize;
                if handles.len() < n {
                    return Err(chunks.err(
                        handles_used * HANDLE_BYTES,
                        format!(
                            "file {ino} needs {n} handles, only {} remain",
                            handles.len()
                        ),
                    ));
                }
                let list: ChunkList = handles
                    .by_ref()
                    .take(n)
                    .map(|h| u64::from_le_bytes(*h))
                    .inspect(|&h| max_handle = max_handle.max(Some(h)))
                    .collect();
                handles_used += n;
                Kind::File(File {
                    length_bytes: length,
                    complete: complete == 1,
                    chunks: list,
                })
            }
            INODE_KIND_DIR => {
                if complete != 0 || count != 0 || length != 0 {
                    return Err(s.err(at + 42, format!("directory {ino} has file fields set")));
                }
                Kind::Dir(Box::default())
            }
            k => return Err(s.err(at + 41, format!("inode {ino} has unknown kind {k}"))),
        };
        let inode = Inode {
            parent: le64(r, 8),
            mtime_ns: le64(r, 16) as i64,
            ctime_ns: le64(r, 24) as i64,
            mode: le32(r, 32),
            owner,
            replication: r[40],
            kind,
        };
        let old = map.insert(ino, inode);
        debug_assert!(old.is_none(), "inodes are checked ascending");
    }
    if handles.len() != 0 {
        return Err(chunks.err(
            handles_used * HANDLE_BYTES,
            format!("{} handles belong to no file", handles.len()),
        ));
    }
    Ok(Inodes {
        map,
        max_owner,
        max_handle,
    })
}

fn decode_dirents(s: Sec<'_>) -> Result<Dirents, DecodeError> {
    let mut c = s.variable(DIRENT_FIXED_BYTES + 1, u64::MAX)?;
    let count = s.entry.count as usize;
    let mut edges = Vec::with_capacity(count);
    let mut groups: Vec<DirGroup> = Vec::new();
    let mut current: Vec<(CompactString, u64)> = Vec::new();
    let mut current_parent: Option<(u64, u64)> = None;
    let mut prev_name: &[u8] = &[];
    for _ in 0..count {
        let at = c.pos;
        let r = c.fixed::<DIRENT_FIXED_BYTES>()?;
        let (parent, child, len) = (le64(r, 0), le64(r, 8), usize::from(le16(r, 16)));
        let name_bytes = c.take(len)?;
        let name = check_name(name_bytes).map_err(|e| c.err(at + 16, e))?;
        match current_parent {
            Some((p, _)) if p == parent => {
                if name_bytes <= prev_name {
                    return Err(c.err(
                        at,
                        format!(
                            "entry {name:?} of directory {parent} is out of order or a duplicate"
                        ),
                    ));
                }
            }
            Some((p, _)) if parent < p => {
                return Err(c.err(at, format!("directory {parent} after directory {p}")));
            }
            _ => {
                if let Some((p, first)) = current_parent {
                    groups.push((p, first, current.drain(..).collect()));
                }
                current_parent = Some((parent, s.entry.offset + at as u64));
            }
        }
        prev_name = name_bytes;
        current.push((CompactString::from(name), child));
        edges.push((child, parent));
    }
    c.finish()?;
    if let Some((p, first)) = current_parent {
        groups.push((p, first, current.drain(..).collect()));
    }
    check_forest(&mut edges).map_err(|e| s.err(0, e))?;
    Ok(Dirents { groups, edges })
}

fn decode_chunk_table(s: Sec<'_>, l: Sec<'_>) -> Result<ChunkTable, DecodeError> {
    let recs = s.fixed::<CHUNK_BYTES>(u64::MAX)?;
    let mut chunks = PagedMap::new();
    let mut prev = None;
    for (i, r) in recs.iter().enumerate() {
        let at = i * CHUNK_BYTES;
        let handle = le64(r, 0);
        ascending(&mut prev, handle, &s, at, "chunk handle")?;
        if le32(r, 28) != 0 {
            return Err(s.err(at + 28, "reserved chunk bytes are not zero"));
        }
        let old = chunks.insert(
            handle,
            ChunkMeta {
                version: le64(r, 8),
                inode: le64(r, 16),
                index: le32(r, 24),
            },
        );
        debug_assert!(old.is_none(), "chunk handles are checked ascending");
    }
    let recs = l.fixed::<LEASE_BYTES>(u64::MAX)?;
    let mut leases = HashMap::with_capacity(recs.len());
    let mut prev = None;
    for (i, r) in recs.iter().enumerate() {
        let handle = le64(r, 0);
        ascending(&mut prev, handle, &l, i * LEASE_BYTES, "lease handle")?;
        leases.insert(
            handle,
            LeaseRecord {
                primary: le64(r, 8),
                version: le64(r, 16),
                granted_at_ms: le64(r, 24),
                duration_ms: le64(r, 32),
            },
        );
    }
    Ok(ChunkTable { chunks, leases })
}
