//! The one checkpoint encoder: a `State` to bytes, streamed to any
//! `io::Write` (a file in the forked child, a `Vec` in tests and fuzzing).
//!
//! The output is canonical: every table is written in key order, so equal
//! states give byte-identical files, and the decoder can demand strictly
//! increasing keys (which also rules out duplicates without a hash set).
//! Every rule the decoder enforces on a record is checked here first, with
//! the same functions, so a checkpoint that was written is one that loads:
//! a state that breaks a rule fails the write, loudly, instead of producing
//! a file that would be refused at the next restart.

use std::collections::HashSet;
use std::io::{self, Write};

use ringfs_wire::checksum::crc32c_extend;

use super::CheckpointMeta;
use super::format::*;
use crate::namespace::{Inode, Kind, OWNERS_MAX, ROOT_INODE};
use crate::state::{CLIENTS_MAX, NODES_MAX, REQUEST_WINDOW_PER_CLIENT, State};
use crate::types::{FILE_CHUNKS_MAX, OWNER_BYTES_MAX, PATH_BYTES_MAX};

/// Bytes buffered before they are hashed and handed to the writer (1 MiB):
/// large enough that the per-call cost of the CRC and the `write` syscall
/// vanish, small enough to be irrelevant next to the state.
const FLUSH_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
    #[error("section {}: {what}", section.name())]
    Invalid { section: Section, what: String },
}

/// What [`encode_to`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeSummary {
    pub bytes: u64,
    pub sections: u32,
}

fn invalid(section: Section, what: impl Into<String>) -> EncodeError {
    EncodeError::Invalid {
        section,
        what: what.into(),
    }
}

/// Streams sections: buffers, hashes each flushed buffer into the running
/// section CRC, and records a footer entry per finished section.
struct Sink<W: Write> {
    out: W,
    buf: Vec<u8>,
    /// Bytes handed to `out` so far (the absolute offset of `buf[0]`).
    written: u64,
    section_start: u64,
    crc: u32,
    entries: Vec<FooterEntry>,
}

impl<W: Write> Sink<W> {
    fn new(out: W) -> Self {
        Sink {
            out,
            buf: Vec::with_capacity(FLUSH_BYTES + 4096),
            written: 0,
            section_start: 0,
            crc: 0,
            entries: Vec::with_capacity(SECTION_COUNT),
        }
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= FLUSH_BYTES {
            self.flush_buf()?;
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        self.crc = crc32c_extend(self.crc, &self.buf);
        self.out.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes bytes outside any section (header, footer): not hashed here.
    fn put_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        assert!(self.buf.is_empty(), "raw bytes between sections only");
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn begin(&mut self) {
        assert!(self.buf.is_empty());
        self.section_start = self.written;
        // CRC32C of the empty string; crc32c_extend(0, x) == crc32c(x).
        self.crc = 0;
    }

    fn end(&mut self, section: Section, count: u64) -> io::Result<()> {
        self.flush_buf()?;
        assert_eq!(
            self.entries.len() + 1,
            section.kind() as usize,
            "sections are written in kind order"
        );
        self.entries.push(FooterEntry {
            section,
            crc: self.crc,
            offset: self.section_start,
            length: self.written - self.section_start,
            count,
        });
        Ok(())
    }
}

/// Encodes `state` into a `Vec` (tests, fuzzing, tiny states).
pub fn encode(state: &State, meta: &CheckpointMeta) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_to(&mut out, state, meta)?;
    Ok(out)
}

/// Encodes `state` as a whole checkpoint file into `out`, from the first
/// header byte to the trailer magic. Nothing is written past an error; the
/// caller discards the partial output.
pub fn encode_to<W: Write>(
    out: W,
    state: &State,
    meta: &CheckpointMeta,
) -> Result<EncodeSummary, EncodeError> {
    let mut s = Sink::new(out);
    let header = Header {
        last_log: meta
            .last_log_id
            .map(|l| (l.index, l.leader_id.term, l.leader_id.node_id)),
        section_count: SECTION_COUNT as u32,
    };
    s.put_raw(&header.encode())?;

    // Config and counters.
    s.begin();
    if state.chunk_size_bytes == 0 || state.default_replication == 0 {
        return Err(invalid(
            Section::Config,
            "chunk size and default replication must be non-zero",
        ));
    }
    let mut rec = [0u8; CONFIG_BYTES];
    rec[0..8].copy_from_slice(&state.chunk_size_bytes.to_le_bytes());
    rec[8] = state.default_replication;
    let c = &state.counters;
    for (i, v) in [
        c.next_inode,
        c.next_handle,
        c.next_trash_id,
        c.next_node_id,
        c.ops_applied,
    ]
    .into_iter()
    .enumerate()
    {
        rec[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    s.put(&rec)?;
    s.end(Section::Config, 1)?;

    // Membership: small and rarely read, so serde (postcard) is fine here.
    s.begin();
    let m = postcard::to_stdvec(&meta.last_membership)
        .map_err(|e| invalid(Section::Membership, format!("postcard: {e}")))?;
    if m.is_empty() || m.len() > MEMBERSHIP_BYTES_MAX {
        return Err(invalid(
            Section::Membership,
            format!("{} bytes, outside 1..={MEMBERSHIP_BYTES_MAX}", m.len()),
        ));
    }
    s.put(&m)?;
    s.end(Section::Membership, 1)?;

    // Owners, in index order (an inode's owner is its index here).
    s.begin();
    let owners = &state.ns.owners;
    if owners.len() > OWNERS_MAX {
        return Err(invalid(Section::Owners, "more than OWNERS_MAX owners"));
    }
    let mut seen = HashSet::with_capacity(owners.len());
    for o in owners {
        if o.len() > OWNER_BYTES_MAX || !seen.insert(o.as_str()) {
            return Err(invalid(
                Section::Owners,
                format!("owner {o:?} is too long or appears twice"),
            ));
        }
        s.put(&(o.len() as u16).to_le_bytes())?;
        s.put(o.as_bytes())?;
    }
    s.end(Section::Owners, owners.len() as u64)?;

    // Inodes in inode order; the same order drives file chunks and dirents.
    let inodes: Vec<(u64, &Inode)> = state.ns.inodes.iter_by_key().collect();
    if !state.ns.get(ROOT_INODE).is_some_and(Inode::is_dir) {
        return Err(invalid(Section::Inodes, "no root directory"));
    }
    // One pass over the inodes (in inode order, so each is a cache miss at
    // 10 M files): it also collects what the next two sections need.
    s.begin();
    let mut handles_total = 0u64;
    let mut chunk_lists = Vec::new();
    let mut dirs = Vec::new();
    for &(ino, n) in &inodes {
        let mut rec = [0u8; INODE_BYTES];
        rec[0..8].copy_from_slice(&ino.to_le_bytes());
        rec[8..16].copy_from_slice(&n.parent.to_le_bytes());
        rec[16..24].copy_from_slice(&n.mtime_ns.to_le_bytes());
        rec[24..32].copy_from_slice(&n.ctime_ns.to_le_bytes());
        rec[32..36].copy_from_slice(&n.mode.to_le_bytes());
        if n.owner as usize >= owners.len() {
            return Err(invalid(
                Section::Inodes,
                format!(
                    "inode {ino} has owner index {} of {}",
                    n.owner,
                    owners.len()
                ),
            ));
        }
        rec[36..40].copy_from_slice(&n.owner.to_le_bytes());
        rec[40] = n.replication;
        match &n.kind {
            Kind::File(f) => {
                let count = f.chunks.len() as u64;
                if count > FILE_CHUNKS_MAX {
                    return Err(invalid(
                        Section::Inodes,
                        format!("file {ino} has {count} chunks, above FILE_CHUNKS_MAX"),
                    ));
                }
                rec[41] = INODE_KIND_FILE;
                rec[42] = u8::from(f.complete);
                rec[44..48].copy_from_slice(&(count as u32).to_le_bytes());
                rec[48..56].copy_from_slice(&f.length_bytes.to_le_bytes());
                handles_total += count;
                if count > 0 {
                    chunk_lists.push(&f.chunks);
                }
            }
            Kind::Dir(d) => {
                rec[41] = INODE_KIND_DIR;
                dirs.push((ino, &**d));
            }
        }
        s.put(&rec)?;
    }
    s.end(Section::Inodes, inodes.len() as u64)?;

    s.begin();
    for list in chunk_lists {
        for h in list {
            s.put(&h.to_le_bytes())?;
        }
    }
    s.end(Section::FileChunks, handles_total)?;

    // Directory entries: directories in inode order, names in byte order.
    s.begin();
    let mut edges = Vec::new();
    for (ino, d) in dirs {
        for (name, &child) in &d.children {
            check_name(name.as_bytes())
                .map_err(|e| invalid(Section::Dirents, format!("in directory {ino}: {e}")))?;
            let mut rec = [0u8; DIRENT_FIXED_BYTES];
            rec[0..8].copy_from_slice(&ino.to_le_bytes());
            rec[8..16].copy_from_slice(&child.to_le_bytes());
            rec[16..18].copy_from_slice(&(name.len() as u16).to_le_bytes());
            s.put(&rec)?;
            s.put(name.as_bytes())?;
            edges.push((child, ino));
        }
    }
    let dirents = edges.len() as u64;
    check_forest(&mut edges).map_err(|e| invalid(Section::Dirents, e))?;
    if let Some((child, ino)) = first_missing_child(&edges, inodes.iter().map(|&(i, _)| i)) {
        return Err(invalid(
            Section::Dirents,
            format!("an entry of directory {ino} names missing inode {child}"),
        ));
    }
    drop(edges);
    s.end(Section::Dirents, dirents)?;
    drop(inodes);

    s.begin();
    for (h, c) in state.chunks.chunks.iter_by_key() {
        let mut rec = [0u8; CHUNK_BYTES];
        rec[0..8].copy_from_slice(&h.to_le_bytes());
        rec[8..16].copy_from_slice(&c.version.to_le_bytes());
        rec[16..24].copy_from_slice(&c.inode.to_le_bytes());
        rec[24..28].copy_from_slice(&c.index.to_le_bytes());
        s.put(&rec)?;
    }
    s.end(Section::Chunks, state.chunks.chunks.len() as u64)?;

    s.begin();
    let mut leases: Vec<_> = state.chunks.leases.iter().collect();
    leases.sort_unstable_by_key(|(h, _)| **h);
    for &(&h, l) in &leases {
        let mut rec = [0u8; LEASE_BYTES];
        for (i, v) in [h, l.primary, l.version, l.granted_at_ms, l.duration_ms]
            .into_iter()
            .enumerate()
        {
            rec[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        s.put(&rec)?;
    }
    s.end(Section::Leases, leases.len() as u64)?;

    s.begin();
    for (&id, e) in &state.ns.trash {
        if e.original_path.len() > PATH_BYTES_MAX {
            return Err(invalid(
                Section::Trash,
                format!("trash entry {id} has a path above PATH_BYTES_MAX"),
            ));
        }
        let mut rec = [0u8; TRASH_FIXED_BYTES];
        for (i, v) in [id, e.inode, e.deleted_at_ms, e.purge_at_ms]
            .into_iter()
            .enumerate()
        {
            rec[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        rec[32..34].copy_from_slice(&(e.original_path.len() as u16).to_le_bytes());
        s.put(&rec)?;
        s.put(e.original_path.as_bytes())?;
    }
    s.end(Section::Trash, state.ns.trash.len() as u64)?;

    s.begin();
    if state.nodes.len() > NODES_MAX {
        return Err(invalid(Section::Nodes, "more than NODES_MAX nodes"));
    }
    for (&dir_id, &node) in &state.nodes {
        let mut rec = [0u8; NODE_BYTES];
        rec[0..8].copy_from_slice(&dir_id.to_le_bytes());
        rec[8..16].copy_from_slice(&node.to_le_bytes());
        s.put(&rec)?;
    }
    s.end(Section::Nodes, state.nodes.len() as u64)?;

    s.begin();
    if state.clients.len() > CLIENTS_MAX {
        return Err(invalid(Section::Clients, "more than CLIENTS_MAX clients"));
    }
    let mut clients: Vec<_> = state.clients.iter().collect();
    clients.sort_unstable_by_key(|(c, _)| **c);
    let mut ages: Vec<u64> = clients.iter().map(|(_, w)| w.last_seen).collect();
    ages.sort_unstable();
    if ages.windows(2).any(|w| w[0] == w[1]) {
        // The recency index (last_seen → client) would lose a client.
        return Err(invalid(Section::Clients, "two clients share a last_seen"));
    }
    for &(&id, w) in &clients {
        if w.recent.len() > REQUEST_WINDOW_PER_CLIENT {
            return Err(invalid(
                Section::Clients,
                format!("client {id} remembers more than REQUEST_WINDOW_PER_CLIENT outcomes"),
            ));
        }
        let mut rec = [0u8; CLIENT_FIXED_BYTES];
        rec[0..8].copy_from_slice(&id.to_le_bytes());
        rec[8..16].copy_from_slice(&w.last_seen.to_le_bytes());
        rec[16] = w.recent.len() as u8;
        s.put(&rec)?;
        for (seq, o) in &w.recent {
            s.put(&seq.to_le_bytes())?;
            s.put(&encode_outcome(o))?;
        }
    }
    s.end(Section::Clients, clients.len() as u64)?;

    assert_eq!(s.entries.len(), SECTION_COUNT);
    let footer = encode_footer(&s.entries);
    s.put_raw(&footer)?;
    s.out.flush()?;
    Ok(EncodeSummary {
        bytes: s.written,
        sections: SECTION_COUNT as u32,
    })
}
