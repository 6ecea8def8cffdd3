//! `oplog.meta`: the vote, the committed log id and the last purged log id,
//! 88 bytes with a CRC, replaced atomically (temp file, fsync, rename,
//! fsync the directory) so a crash leaves the old or the new file, never a
//! mix. Layout in `docs/design/010-op-log-format.md`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use openraft::{CommittedLeaderId, LeaderId};
use ringfs_wire::checksum::crc32c;

use crate::types::{LogId, Vote};

pub const META_FILE: &str = "oplog.meta";
pub const META_TMP_FILE: &str = "oplog.meta.tmp";
pub const META_BYTES: usize = 88;
pub const META_MAGIC: [u8; 8] = *b"RGFSOPMT";
pub const META_FORMAT_VERSION: u16 = 1;

const FLAG_VOTE: u16 = 1;
const FLAG_VOTE_COMMITTED: u16 = 1 << 1;
const FLAG_COMMITTED: u16 = 1 << 2;
const FLAG_PURGED: u16 = 1 << 3;
const FLAGS_KNOWN: u16 = FLAG_VOTE | FLAG_VOTE_COMMITTED | FLAG_COMMITTED | FLAG_PURGED;

/// What the meta file holds. A fresh log has none of the three.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaState {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("{0} bytes, expected {META_BYTES}")]
    BadLength(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("CRC mismatch: the file is damaged")]
    BadCrc,
    #[error("unknown format version {0}")]
    BadVersion(u16),
    #[error("unknown flags {0:#x}")]
    BadFlags(u16),
    #[error("reserved or absent fields are not zero")]
    NotZero,
}

fn put_log_id(b: &mut [u8], at: usize, id: &LogId) {
    b[at..at + 8].copy_from_slice(&id.leader_id.term.to_le_bytes());
    b[at + 8..at + 16].copy_from_slice(&id.leader_id.node_id.to_le_bytes());
    b[at + 16..at + 24].copy_from_slice(&id.index.to_le_bytes());
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn log_id_at(b: &[u8], at: usize) -> LogId {
    LogId::new(
        CommittedLeaderId::new(u64_at(b, at), u64_at(b, at + 8)),
        u64_at(b, at + 16),
    )
}

pub fn encode(m: &MetaState) -> [u8; META_BYTES] {
    let mut b = [0u8; META_BYTES];
    b[0..8].copy_from_slice(&META_MAGIC);
    b[8..10].copy_from_slice(&META_FORMAT_VERSION.to_le_bytes());
    let mut flags = 0u16;
    if let Some(v) = &m.vote {
        flags |= FLAG_VOTE;
        if v.committed {
            flags |= FLAG_VOTE_COMMITTED;
        }
        b[16..24].copy_from_slice(&v.leader_id.term.to_le_bytes());
        b[24..32].copy_from_slice(&v.leader_id.node_id.to_le_bytes());
    }
    if let Some(c) = &m.committed {
        flags |= FLAG_COMMITTED;
        put_log_id(&mut b, 32, c);
    }
    if let Some(p) = &m.purged {
        flags |= FLAG_PURGED;
        put_log_id(&mut b, 56, p);
    }
    b[10..12].copy_from_slice(&flags.to_le_bytes());
    let crc = crc32c(&b[0..84]);
    b[84..88].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a meta file. Every byte is checked or required to be zero, so
/// an accepted file re-encodes to the same bytes.
pub fn decode(b: &[u8]) -> Result<MetaState, MetaError> {
    if b.len() != META_BYTES {
        return Err(MetaError::BadLength(b.len()));
    }
    if b[0..8] != META_MAGIC {
        return Err(MetaError::BadMagic);
    }
    if crc32c(&b[0..84]) != u32::from_le_bytes([b[84], b[85], b[86], b[87]]) {
        return Err(MetaError::BadCrc);
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != META_FORMAT_VERSION {
        return Err(MetaError::BadVersion(version));
    }
    let flags = u16::from_le_bytes([b[10], b[11]]);
    if flags & !FLAGS_KNOWN != 0 || (flags & FLAG_VOTE_COMMITTED != 0 && flags & FLAG_VOTE == 0) {
        return Err(MetaError::BadFlags(flags));
    }
    let zero = |r: std::ops::Range<usize>| b[r].iter().all(|&x| x == 0);
    if !zero(12..16) || !zero(80..84) {
        return Err(MetaError::NotZero);
    }
    let vote = if flags & FLAG_VOTE != 0 {
        Some(Vote {
            leader_id: LeaderId::new(u64_at(b, 16), u64_at(b, 24)),
            committed: flags & FLAG_VOTE_COMMITTED != 0,
        })
    } else if zero(16..32) {
        None
    } else {
        return Err(MetaError::NotZero);
    };
    let committed = if flags & FLAG_COMMITTED != 0 {
        Some(log_id_at(b, 32))
    } else if zero(32..56) {
        None
    } else {
        return Err(MetaError::NotZero);
    };
    let purged = if flags & FLAG_PURGED != 0 {
        Some(log_id_at(b, 56))
    } else if zero(56..80) {
        None
    } else {
        return Err(MetaError::NotZero);
    };
    Ok(MetaState {
        vote,
        committed,
        purged,
    })
}

/// Reads `dir/oplog.meta`; a missing file is a fresh log.
pub fn read(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(dir.join(META_FILE)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `dir/oplog.meta` atomically. Two fsyncs: the temp file's data
/// before the rename (or the rename could expose an empty file), the
/// directory after it (or the rename itself could be lost).
pub fn write(dir: &Path, dir_file: &File, m: &MetaState) -> io::Result<()> {
    let tmp = dir.join(META_TMP_FILE);
    let mut f = File::create(&tmp)?;
    f.write_all(&encode(m))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(META_FILE))?;
    dir_file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lid(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    #[test]
    fn round_trip_every_combination() {
        let votes = [
            None,
            Some(Vote::new(3, 1)),
            Some(Vote::new_committed(u64::MAX, 2)),
        ];
        for vote in votes {
            for committed in [None, Some(lid(1, 2, 3))] {
                for purged in [None, Some(lid(0, 0, 0)), Some(lid(4, 5, u64::MAX))] {
                    let m = MetaState {
                        vote,
                        committed,
                        purged,
                    };
                    let b = encode(&m);
                    assert_eq!(decode(&b), Ok(m));
                }
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let m = MetaState {
            vote: Some(Vote::new(3, 1)),
            committed: Some(lid(1, 2, 3)),
            purged: None,
        };
        let b = encode(&m);
        for i in 0..META_BYTES * 8 {
            let mut d = b;
            d[i / 8] ^= 1 << (i % 8);
            assert!(decode(&d).is_err(), "bit {i}");
        }
        assert_eq!(decode(&b[..87]), Err(MetaError::BadLength(87)));
    }

    #[test]
    fn absent_fields_must_be_zero() {
        let mut b = encode(&MetaState::default());
        b[60] = 1;
        let crc = crc32c(&b[0..84]);
        b[84..88].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&b), Err(MetaError::NotZero));
    }
}

#[cfg(test)]
mod fuzz_seed {
    use super::*;

    /// The fuzz corpus seed is a valid file; regenerate with
    /// `RINGFS_WRITE_FUZZ_SEEDS=1 cargo test -p masterd --lib fuzz_seed`.
    #[test]
    fn fuzz_seed_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/oplog_meta/seed-0");
        let want = encode(&MetaState {
            vote: Some(Vote::new_committed(4, 2)),
            committed: Some(LogId::new(CommittedLeaderId::new(4, 2), 90)),
            purged: Some(LogId::new(CommittedLeaderId::new(3, 1), 40)),
        });
        if std::env::var_os("RINGFS_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::write(&path, want).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
