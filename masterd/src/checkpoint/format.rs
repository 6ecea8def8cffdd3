//! The checkpoint file's byte layout: constants, the header and footer, the
//! fixed outcome encoding, and the rules that both the encoder and the
//! decoder apply (one definition, so that whatever the encoder accepts the
//! decoder accepts too). Layout byte by byte: docs/design/011-checkpoint-format.md.
//!
//! All integers are little-endian. The file is
//! `header (64) | section 1 | … | section 11 | footer entries (32 each) | trailer (16)`,
//! with the sections back to back in kind order.

use std::fmt;

use ringfs_wire::checksum::crc32c;

use crate::namespace::ROOT_INODE;
use crate::types::{Done, Fail, NAME_BYTES_MAX, Outcome};

pub const MAGIC: [u8; 8] = *b"RGFSCKPT";
pub const TRAILER_MAGIC: [u8; 8] = *b"RGCKPEND";
pub const FORMAT_VERSION: u16 = 1;

pub const HEADER_BYTES: usize = 64;
/// The header CRC covers bytes `0..HEADER_CRC_OFFSET` (everything before it).
pub const HEADER_CRC_OFFSET: usize = 60;
pub const FOOTER_ENTRY_BYTES: usize = 32;
pub const TRAILER_BYTES: usize = 16;

/// Upper bound on a checkpoint file, in bytes (1 TiB). At about 150 bytes
/// per single-chunk file this is thousands of times the 10 M-file target;
/// a larger length field is damage, and refusing it keeps every offset
/// computation far from overflow.
pub const CHECKPOINT_BYTES_MAX: u64 = 1 << 40;
/// Upper bound on the postcard-encoded membership, in bytes (64 KiB): a
/// membership names at most a few dozen masters.
pub const MEMBERSHIP_BYTES_MAX: usize = 64 * 1024;

/// Fixed record sizes, in bytes.
pub const CONFIG_BYTES: usize = 56;
pub const INODE_BYTES: usize = 56;
pub const HANDLE_BYTES: usize = 8;
/// A directory entry's fixed part: parent, child, name length.
pub const DIRENT_FIXED_BYTES: usize = 18;
pub const CHUNK_BYTES: usize = 32;
pub const LEASE_BYTES: usize = 40;
/// A trash entry's fixed part: id, inode, deleted_at, purge_at, path length.
pub const TRASH_FIXED_BYTES: usize = 34;
pub const NODE_BYTES: usize = 16;
/// A client window's fixed part: client id, last_seen, entry count, reserved.
pub const CLIENT_FIXED_BYTES: usize = 24;
pub const OUTCOME_ENTRY_BYTES: usize = 32;
/// An owner name's fixed part: its length.
pub const OWNER_FIXED_BYTES: usize = 2;

// Length and count fields are as narrow as the namespace's bounds allow.
const _: () = assert!(crate::types::NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(crate::types::PATH_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(crate::types::OWNER_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(crate::types::FILE_CHUNKS_MAX <= u32::MAX as u64);
const _: () = assert!(crate::state::REQUEST_WINDOW_PER_CLIENT <= u8::MAX as usize);

pub const INODE_KIND_FILE: u8 = 1;
pub const INODE_KIND_DIR: u8 = 2;

/// The sections of format version 1, in file order; the discriminant is
/// the kind stored in the footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Section {
    Config = 1,
    Membership = 2,
    Owners = 3,
    Inodes = 4,
    FileChunks = 5,
    Dirents = 6,
    Chunks = 7,
    Leases = 8,
    Trash = 9,
    Nodes = 10,
    Clients = 11,
}

/// Every section, in file order.
pub const SECTIONS: [Section; 11] = [
    Section::Config,
    Section::Membership,
    Section::Owners,
    Section::Inodes,
    Section::FileChunks,
    Section::Dirents,
    Section::Chunks,
    Section::Leases,
    Section::Trash,
    Section::Nodes,
    Section::Clients,
];
pub const SECTION_COUNT: usize = SECTIONS.len();

impl Section {
    pub fn kind(self) -> u32 {
        self as u32
    }

    pub fn name(self) -> &'static str {
        match self {
            Section::Config => "config",
            Section::Membership => "membership",
            Section::Owners => "owners",
            Section::Inodes => "inodes",
            Section::FileChunks => "file_chunks",
            Section::Dirents => "dirents",
            Section::Chunks => "chunks",
            Section::Leases => "leases",
            Section::Trash => "trash",
            Section::Nodes => "nodes",
            Section::Clients => "clients",
        }
    }
}

/// Where in the file a decode error was found: the header, the footer, one
/// section, or the cross-section checks done once every section decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    File,
    Header,
    Footer,
    Section(Section),
    /// A rule that relates sections (an owner index, a directory's parent).
    Assembly(Section),
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::File => f.write_str("file"),
            Part::Header => f.write_str("header"),
            Part::Footer => f.write_str("footer"),
            Part::Section(s) => write!(f, "section {}", s.name()),
            Part::Assembly(s) => write!(f, "section {} (cross-check)", s.name()),
        }
    }
}

/// Why a checkpoint's bytes were refused: which part, the absolute file
/// offset of the record or field at fault, and what rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{part} at offset {offset}: {what}")]
pub struct DecodeError {
    pub part: Part,
    pub offset: u64,
    pub what: String,
}

impl DecodeError {
    pub fn new(part: Part, offset: u64, what: impl Into<String>) -> DecodeError {
        DecodeError {
            part,
            offset,
            what: what.into(),
        }
    }

    /// The section at fault, if the error is inside one.
    pub fn section(&self) -> Option<Section> {
        match self.part {
            Part::Section(s) | Part::Assembly(s) => Some(s),
            Part::File | Part::Header | Part::Footer => None,
        }
    }
}

/// The header's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// (index, term, leader node id) of the last applied entry, if any.
    pub last_log: Option<(u64, u64, u64)>,
    pub section_count: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let (has, (index, term, node)) = match self.last_log {
            Some(l) => (1u8, l),
            None => (0u8, (0, 0, 0)),
        };
        b[10] = has;
        b[12..16].copy_from_slice(&self.section_count.to_le_bytes());
        b[16..24].copy_from_slice(&index.to_le_bytes());
        b[24..32].copy_from_slice(&term.to_le_bytes());
        b[32..40].copy_from_slice(&node.to_le_bytes());
        let crc = crc32c(&b[..HEADER_CRC_OFFSET]);
        b[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Checks, in order: magic, CRC (before any field it protects is
    /// trusted), version, then the fields and the reserved bytes.
    pub fn decode(bytes: &[u8]) -> Result<Header, DecodeError> {
        let err = |offset: usize, what: String| DecodeError::new(Part::Header, offset as u64, what);
        let Some(b) = bytes.first_chunk::<HEADER_BYTES>() else {
            return Err(err(
                0,
                format!(
                    "file has {} bytes, shorter than the {HEADER_BYTES}-byte header",
                    bytes.len()
                ),
            ));
        };
        if b[0..8] != MAGIC {
            return Err(err(
                0,
                format!("not a ringfs checkpoint (magic {:02x?})", &b[0..8]),
            ));
        }
        let stored = le32(b, HEADER_CRC_OFFSET);
        let computed = crc32c(&b[..HEADER_CRC_OFFSET]);
        if stored != computed {
            return Err(err(
                HEADER_CRC_OFFSET,
                format!("header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"),
            ));
        }
        let version = le16(b, 8);
        if version != FORMAT_VERSION {
            return Err(err(
                8,
                format!(
                    "format version {version} is not supported (this build reads {FORMAT_VERSION})"
                ),
            ));
        }
        let section_count = le32(b, 12);
        if section_count as usize != SECTION_COUNT {
            return Err(err(
                12,
                format!("section count {section_count}, format version 1 has {SECTION_COUNT}"),
            ));
        }
        let ids = (le64(b, 16), le64(b, 24), le64(b, 32));
        let last_log = match b[10] {
            1 => Some(ids),
            0 if ids == (0, 0, 0) => None,
            0 => {
                return Err(err(
                    16,
                    "no last log id, but its fields are not zero".into(),
                ));
            }
            f => return Err(err(10, format!("has-last-log-id flag is {f}, not 0 or 1"))),
        };
        if b[11] != 0 || b[40..HEADER_CRC_OFFSET].iter().any(|&x| x != 0) {
            return Err(err(11, "reserved header bytes are not zero".into()));
        }
        Ok(Header {
            last_log,
            section_count,
        })
    }
}

/// One footer entry: where a section is and what its bytes must hash to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FooterEntry {
    pub section: Section,
    pub crc: u32,
    pub offset: u64,
    pub length: u64,
    /// Records in the section (for fixed-size records, length / size).
    pub count: u64,
}

impl FooterEntry {
    pub fn encode(&self) -> [u8; FOOTER_ENTRY_BYTES] {
        let mut b = [0u8; FOOTER_ENTRY_BYTES];
        b[0..4].copy_from_slice(&self.section.kind().to_le_bytes());
        b[4..8].copy_from_slice(&self.crc.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.length.to_le_bytes());
        b[24..32].copy_from_slice(&self.count.to_le_bytes());
        b
    }
}

/// The footer bytes (entries then trailer) for `entries`.
pub fn encode_footer(entries: &[FooterEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * FOOTER_ENTRY_BYTES + TRAILER_BYTES);
    for e in entries {
        out.extend_from_slice(&e.encode());
    }
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&TRAILER_MAGIC);
    out
}

/// Reads and checks the footer of a whole file whose header said
/// `section_count`: trailer magic, count, footer CRC, then that the
/// sections are the format's, in order, back to back from the header to
/// the footer (so every byte of the file belongs to exactly one part).
pub fn decode_footer(bytes: &[u8], section_count: u32) -> Result<Vec<FooterEntry>, DecodeError> {
    let len = bytes.len();
    let footer_bytes = section_count as usize * FOOTER_ENTRY_BYTES + TRAILER_BYTES;
    if len < HEADER_BYTES + footer_bytes {
        return Err(DecodeError::new(
            Part::File,
            len as u64,
            format!(
                "file has {len} bytes, too short for a header and a footer of {section_count} sections \
                 (torn or truncated write)"
            ),
        ));
    }
    let trailer_at = len - TRAILER_BYTES;
    let err = |offset: usize, what: String| DecodeError::new(Part::Footer, offset as u64, what);
    let t = &bytes[trailer_at..];
    if t[8..16] != TRAILER_MAGIC {
        return Err(err(
            trailer_at + 8,
            "no trailer magic at the end of the file (torn or truncated write)".into(),
        ));
    }
    let count = le32(t, 0);
    if count != section_count {
        return Err(err(
            trailer_at,
            format!("trailer says {count} sections, header says {section_count}"),
        ));
    }
    let footer_at = len - footer_bytes;
    let stored = le32(t, 4);
    let computed = crc32c(&bytes[footer_at..trailer_at + 4]);
    if stored != computed {
        return Err(err(
            trailer_at + 4,
            format!("footer CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    let mut entries = Vec::with_capacity(SECTION_COUNT);
    let mut expect_offset = HEADER_BYTES as u64;
    for (i, (raw, &section)) in bytes[footer_at..trailer_at]
        .chunks_exact(FOOTER_ENTRY_BYTES)
        .zip(SECTIONS.iter())
        .enumerate()
    {
        let at = footer_at + i * FOOTER_ENTRY_BYTES;
        let kind = le32(raw, 0);
        if kind != section.kind() {
            return Err(err(
                at,
                format!(
                    "entry {i} is section kind {kind}, expected {} ({})",
                    section.kind(),
                    section.name()
                ),
            ));
        }
        let e = FooterEntry {
            section,
            crc: le32(raw, 4),
            offset: le64(raw, 8),
            length: le64(raw, 16),
            count: le64(raw, 24),
        };
        if e.offset != expect_offset {
            return Err(err(
                at + 8,
                format!(
                    "section {} starts at {}, expected {expect_offset} (sections are back to back)",
                    section.name(),
                    e.offset
                ),
            ));
        }
        // `footer_at` bounds the sum, so it cannot overflow past the check.
        if e.length > footer_at as u64 - e.offset {
            return Err(err(
                at + 16,
                format!(
                    "section {} has length {} and would run past the footer at {footer_at}",
                    section.name(),
                    e.length
                ),
            ));
        }
        expect_offset = e.offset + e.length;
        entries.push(e);
    }
    if expect_offset != footer_at as u64 {
        return Err(err(
            footer_at,
            format!("sections end at {expect_offset}, but the footer starts at {footer_at}"),
        ));
    }
    Ok(entries)
}

/// The tag byte of an outcome entry; Done variants then Fail.
pub fn encode_outcome(o: &Outcome) -> [u8; OUTCOME_ENTRY_BYTES - 8] {
    let (tag, code, a, b): (u8, u8, u64, u64) = match o {
        Ok(Done::Inode(x)) => (1, 0, *x, 0),
        Ok(Done::Trashed(x)) => (2, 0, *x, 0),
        Ok(Done::Changed(x)) => (3, 0, *x, 0),
        Ok(Done::Purged(x)) => (4, 0, *x, 0),
        Ok(Done::Chunk { handle, version }) => (5, 0, *handle, *version),
        Ok(Done::JoinedChunk { handle, version }) => (10, 0, *handle, *version),
        Ok(Done::Version(x)) => (6, 0, *x, 0),
        Ok(Done::NodeId(x)) => (7, 0, *x, 0),
        Ok(Done::Ok) => (8, 0, 0, 0),
        Ok(Done::Extended(x)) => (11, 0, *x, 0),
        Err(f) => (9, fail_code(*f), 0, 0),
    };
    let mut out = [0u8; OUTCOME_ENTRY_BYTES - 8];
    out[0] = tag;
    out[1] = code;
    out[8..16].copy_from_slice(&a.to_le_bytes());
    out[16..24].copy_from_slice(&b.to_le_bytes());
    out
}

/// Inverse of [`encode_outcome`]; fields a variant does not use must be zero.
pub fn decode_outcome(b: &[u8; OUTCOME_ENTRY_BYTES - 8]) -> Result<Outcome, String> {
    let (tag, code, a, bb) = (b[0], b[1], le64(b, 8), le64(b, 16));
    if b[2..8].iter().any(|&x| x != 0) {
        return Err("reserved outcome bytes are not zero".into());
    }
    let uses = match tag {
        1..=4 | 6 | 7 | 11 => (false, true, false),
        5 | 10 => (false, true, true),
        8 => (false, false, false),
        9 => (true, false, false),
        t => return Err(format!("unknown outcome tag {t}")),
    };
    if (!uses.0 && code != 0) || (!uses.1 && a != 0) || (!uses.2 && bb != 0) {
        return Err(format!("outcome tag {tag} has non-zero unused fields"));
    }
    Ok(match tag {
        1 => Ok(Done::Inode(a)),
        2 => Ok(Done::Trashed(a)),
        3 => Ok(Done::Changed(a)),
        4 => Ok(Done::Purged(a)),
        5 => Ok(Done::Chunk {
            handle: a,
            version: bb,
        }),
        6 => Ok(Done::Version(a)),
        7 => Ok(Done::NodeId(a)),
        8 => Ok(Done::Ok),
        10 => Ok(Done::JoinedChunk {
            handle: a,
            version: bb,
        }),
        11 => Ok(Done::Extended(a)),
        _ => Err(fail_from_code(code).ok_or_else(|| format!("unknown failure code {code}"))?),
    })
}

/// Stable on-disk codes of [`Fail`]; never renumbered (append only).
pub fn fail_code(f: Fail) -> u8 {
    match f {
        Fail::NotFound => 1,
        Fail::Exists => 2,
        Fail::NotDirectory => 3,
        Fail::IsDirectory => 4,
        Fail::DirectoryNotEmpty => 5,
        Fail::InvalidPath => 6,
        Fail::RenameIntoSelf => 7,
        Fail::BadRequest => 8,
        Fail::OutOfRange => 9,
        Fail::StaleVersion => 10,
        Fail::TooLarge => 11,
    }
}

pub fn fail_from_code(code: u8) -> Option<Fail> {
    Some(match code {
        1 => Fail::NotFound,
        2 => Fail::Exists,
        3 => Fail::NotDirectory,
        4 => Fail::IsDirectory,
        5 => Fail::DirectoryNotEmpty,
        6 => Fail::InvalidPath,
        7 => Fail::RenameIntoSelf,
        8 => Fail::BadRequest,
        9 => Fail::OutOfRange,
        10 => Fail::StaleVersion,
        11 => Fail::TooLarge,
        _ => return None,
    })
}

/// A directory entry name, as the namespace accepts it (namespace.rs,
/// `valid_name`): non-empty, not `.` or `..`, no `/` or NUL, at most
/// [`NAME_BYTES_MAX`] bytes of UTF-8.
pub fn check_name(bytes: &[u8]) -> Result<&str, &'static str> {
    if bytes.is_empty() || bytes.len() > NAME_BYTES_MAX {
        return Err("name length is 0 or above NAME_BYTES_MAX");
    }
    let name = std::str::from_utf8(bytes).map_err(|_| "name is not UTF-8")?;
    if name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err("name is '.', '..', or contains '/' or NUL");
    }
    Ok(name)
}

/// Checks that directory entries form a forest: no inode is the child of
/// two entries, the root is nobody's child, and following entries upward
/// from any child ends (no cycle). The namespace walks subtrees without a
/// bound (`Namespace::subtree`), so a cycle would hang the master; a tree
/// built by the state machine never has one.
///
/// `edges` is (child, parent); it is sorted here. O(n log n), no hashing.
pub fn check_forest(edges: &mut [(u64, u64)]) -> Result<(), String> {
    edges.sort_unstable();
    for w in edges.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(format!(
                "inode {} is the child of both {} and {}",
                w[0].0, w[0].1, w[1].1
            ));
        }
    }
    if edges.binary_search_by_key(&ROOT_INODE, |e| e.0).is_ok() {
        return Err("the root directory is some directory's child".into());
    }
    // 0 = not visited, 1 = on the current upward walk, 2 = ends at a root.
    let mut mark = vec![0u8; edges.len()];
    let mut walk = Vec::new();
    for start in 0..edges.len() {
        let mut i = start;
        loop {
            match mark[i] {
                2 => break,
                1 => {
                    return Err(format!(
                        "directory entries form a cycle through inode {}",
                        edges[i].0
                    ));
                }
                _ => {}
            }
            mark[i] = 1;
            walk.push(i);
            match edges.binary_search_by_key(&edges[i].1, |e| e.0) {
                Ok(up) => i = up,
                Err(_) => break,
            }
        }
        for &j in &walk {
            mark[j] = 2;
        }
        walk.clear();
    }
    Ok(())
}

/// The first (child, parent) of `edges` whose child is not in `inodes`.
/// `edges` is sorted by child (as `check_forest` leaves it) and `inodes`
/// ascends: one merge, no lookups, since a hash lookup per entry is a
/// cache miss each at 10 M entries (seconds in all).
pub fn first_missing_child(
    edges: &[(u64, u64)],
    inodes: impl Iterator<Item = u64>,
) -> Option<(u64, u64)> {
    let mut inos = inodes.peekable();
    for &(child, parent) in edges {
        while inos.next_if(|&ino| ino < child).is_some() {}
        if inos.peek() != Some(&child) {
            return Some((child, parent));
        }
    }
    None
}

pub fn le16(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    x.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(x)
}

pub fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

pub fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for last_log in [None, Some((7, 3, 2)), Some((u64::MAX, u64::MAX, u64::MAX))] {
            let h = Header {
                last_log,
                section_count: SECTION_COUNT as u32,
            };
            assert_eq!(Header::decode(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn every_outcome_round_trips() {
        let mut all: Vec<Outcome> = vec![
            Ok(Done::Inode(1)),
            Ok(Done::Trashed(2)),
            Ok(Done::Changed(3)),
            Ok(Done::Purged(4)),
            Ok(Done::Chunk {
                handle: 5,
                version: 6,
            }),
            Ok(Done::Version(7)),
            Ok(Done::NodeId(8)),
            Ok(Done::Ok),
            Ok(Done::JoinedChunk {
                handle: 9,
                version: 10,
            }),
            Ok(Done::Extended(11)),
        ];
        for code in 1..=11 {
            all.push(Err(fail_from_code(code).expect("known code")));
        }
        for o in all {
            let b = encode_outcome(&o);
            assert_eq!(decode_outcome(&b), Ok(o.clone()));
            if let Err(f) = o {
                assert_eq!(fail_from_code(fail_code(f)), Some(f));
            }
        }
    }

    /// The forest rules, the slow and obvious way: follow each child's
    /// parent chain; more steps than entries means a cycle.
    fn forest_reference(edges: &[(u64, u64)]) -> bool {
        let mut parent = std::collections::BTreeMap::new();
        for &(c, p) in edges {
            if parent.insert(c, p).is_some() {
                return false;
            }
        }
        if parent.contains_key(&ROOT_INODE) {
            return false;
        }
        parent.keys().all(|&start| {
            let mut at = start;
            for _ in 0..=edges.len() {
                match parent.get(&at) {
                    Some(&p) => at = p,
                    None => return true,
                }
            }
            false
        })
    }

    proptest::proptest! {
        #[test]
        fn forest_check_agrees_with_the_reference(
            distinct in proptest::collection::btree_map(1u64..60, 1u64..60, 0..40),
            extra in proptest::collection::vec((1u64..60, 1u64..60), 0..2),
        ) {
            // Mostly distinct children (cycles and roots are what vary),
            // sometimes a child twice.
            let mut edges: Vec<(u64, u64)> = distinct.into_iter().chain(extra).collect();
            let want = forest_reference(&edges);
            proptest::prop_assert_eq!(check_forest(&mut edges).is_ok(), want);
        }
    }

    #[test]
    fn forest_rules() {
        assert!(check_forest(&mut []).is_ok());
        assert!(check_forest(&mut [(2, 1), (3, 2), (4, 2), (5, 4)]).is_ok());
        // A detached subtree (in the trash) is still a tree.
        assert!(check_forest(&mut [(20, 10), (30, 20)]).is_ok());
        assert!(check_forest(&mut [(2, 1), (2, 3)]).is_err());
        assert!(check_forest(&mut [(1, 2)]).is_err());
        assert!(check_forest(&mut [(2, 3), (3, 4), (4, 2)]).is_err());
        assert!(check_forest(&mut [(5, 5)]).is_err());
    }

    #[test]
    fn names() {
        assert!(check_name(b"a").is_ok());
        assert!(check_name("é".repeat(127).as_bytes()).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0", &[0xff], &[b'x'; 256]] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
