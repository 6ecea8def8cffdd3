//! Segment bytes: the segment header, CRC-framed records and the pure scan
//! that recovery and the fuzz target run (no I/O here). The layout is
//! documented byte by byte in `docs/design/010-op-log-format.md`.

use ringfs_wire::checksum::{crc32c, crc32c_extend};

use crate::types::Entry;

/// `b"RGFSOPSG"`: a segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RGFSOPSG";
pub const SEGMENT_FORMAT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// `b"RGOR"`: one log record.
pub const RECORD_MAGIC: [u8; 4] = *b"RGOR";
pub const RECORD_HEADER_BYTES: usize = 48;
/// Upper bound on one entry's postcard bytes. The proposer keeps a
/// proposal's ops within `PROPOSAL_BYTES_MAX` (4 MiB), and the client API
/// refuses paths over 4 KiB before proposing: an entry over this bound is
/// refused by the log, which stops Raft for good. The bound leaves room
/// and keeps record offsets within a u32.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 64 << 20;
/// Default size at which the writer starts a new segment: large enough that
/// rolls (each costs a seal fsync, a header fsync and a dir fsync) are rare,
/// small enough that purge frees space in useful steps.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Segment files are `<first index, 20 decimal digits>.seg`, so a directory
/// listing sorts them in log order.
pub const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_NAME_DIGITS: usize = 20;

pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}{SEGMENT_SUFFIX}")
}

/// The first index named by a segment file name, or `None` for any other
/// file: only the exact canonical spelling counts, so no two names map to
/// one index.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index = digits.parse().ok()?;
    (segment_file_name(index) == name).then_some(index)
}

pub fn encode_segment_header(first_index: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut b = [0u8; SEGMENT_HEADER_BYTES];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8..10].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Why a segment cannot be used. Offsets are from the start of the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("segment header: {0}")]
    Header(&'static str),
    /// A record whose CRC holds but whose content breaks a rule: the CRC
    /// says we wrote these bytes, so they reveal a bug or tampering.
    #[error("record at offset {offset}: {what}")]
    Record { offset: u64, what: String },
    /// A bad record followed by an intact record of a later write batch:
    /// that batch was written after the bad one was fsynced, so the bad
    /// record was durable (maybe acknowledged) and is damaged, not torn.
    #[error(
        "damaged record at offset {offset} ({why}) followed by index {later_index} of a later batch at offset {later_offset}"
    )]
    DamagedBeforeLater {
        offset: u64,
        why: TornReason,
        later_offset: u64,
        later_index: u64,
    },
}

/// Why the scan stopped at a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TornReason {
    /// Fewer bytes than a header, or than the header's payload length.
    Short,
    BadMagic,
    /// Payload length zero or above `RECORD_PAYLOAD_BYTES_MAX`.
    BadLength,
    BadCrc,
}

impl std::fmt::Display for TornReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TornReason::Short => "short record",
            TornReason::BadMagic => "bad magic",
            TornReason::BadLength => "bad payload length",
            TornReason::BadCrc => "CRC mismatch",
        })
    }
}

/// Where a scan stopped, past its last valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The file ends right after the last valid record.
    Clean,
    /// Only zero bytes follow (a file extended but never written).
    Zeroed,
    /// A bad record with nothing of a later batch after it: an interrupted
    /// write, or damage that cannot be told from one.
    Torn(TornReason),
}

/// One valid record, as found by the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub index: u64,
    pub term: u64,
    pub node_id: u64,
    /// Index of the first record of the write (and fdatasync) this record
    /// was part of.
    pub batch_first: u64,
    /// Offset of the record header in the file.
    pub offset: u64,
    pub payload_bytes: u32,
}

impl RecordMeta {
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + u64::from(self.payload_bytes)
    }
}

/// What the scan of one segment found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    pub first_index: u64,
    /// Valid records, indexes consecutive from `first_index`.
    pub records: Vec<RecordMeta>,
    /// Offset just past the last valid record (where the next one goes).
    pub end: u64,
    pub tail: Tail,
}

/// Appends one record (header, then payload) to `out`.
pub fn encode_record(
    out: &mut Vec<u8>,
    index: u64,
    term: u64,
    node_id: u64,
    batch_first: u64,
    payload: &[u8],
) {
    assert!(
        !payload.is_empty() && payload.len() <= RECORD_PAYLOAD_BYTES_MAX,
        "record payload of {} bytes",
        payload.len()
    );
    assert!(batch_first <= index);
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[0..4].copy_from_slice(&RECORD_MAGIC);
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&index.to_le_bytes());
    h[16..24].copy_from_slice(&term.to_le_bytes());
    h[24..32].copy_from_slice(&node_id.to_le_bytes());
    h[32..40].copy_from_slice(&batch_first.to_le_bytes());
    let crc = crc32c_extend(crc32c(&h[0..44]), payload);
    h[44..48].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// A record whose framing and CRC hold. Its content is not checked yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framed<'a> {
    pub index: u64,
    pub term: u64,
    pub node_id: u64,
    pub batch_first: u64,
    pub reserved: u32,
    pub payload: &'a [u8],
}

/// Checks the framing and CRC of the record at the start of `bytes`.
pub fn check_record(bytes: &[u8]) -> Result<Framed<'_>, TornReason> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(TornReason::Short);
    }
    if bytes[0..4] != RECORD_MAGIC {
        return Err(TornReason::BadMagic);
    }
    let payload_bytes = u32_at(bytes, 4) as usize;
    if payload_bytes == 0 || payload_bytes > RECORD_PAYLOAD_BYTES_MAX {
        return Err(TornReason::BadLength);
    }
    // Checked against the bytes at hand before anything is read or allocated.
    let Some(payload) = bytes.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_bytes) else {
        return Err(TornReason::Short);
    };
    let crc = crc32c_extend(crc32c(&bytes[0..44]), payload);
    if crc != u32_at(bytes, 44) {
        return Err(TornReason::BadCrc);
    }
    Ok(Framed {
        index: u64_at(bytes, 8),
        term: u64_at(bytes, 16),
        node_id: u64_at(bytes, 24),
        batch_first: u64_at(bytes, 32),
        reserved: u32_at(bytes, 40),
        payload,
    })
}

/// Decodes a framed record's entry and checks it against its header.
pub fn decode_entry(f: &Framed<'_>) -> Result<Entry, String> {
    if f.reserved != 0 {
        return Err("reserved header bytes are not zero".into());
    }
    let (entry, rest): (Entry, &[u8]) = postcard::take_from_bytes(f.payload)
        .map_err(|e| format!("payload does not decode: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the entry", rest.len()));
    }
    let id = &entry.log_id;
    if id.index != f.index || id.leader_id.term != f.term || id.leader_id.node_id != f.node_id {
        return Err(format!(
            "entry's log id {id} differs from the header's (T{}-N{}, {})",
            f.term, f.node_id, f.index
        ));
    }
    Ok(entry)
}

/// Decodes a segment header, returning the first index it names.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, SegmentError> {
    let Some(h) = bytes.get(..SEGMENT_HEADER_BYTES) else {
        return Err(SegmentError::Header("shorter than the header"));
    };
    if h[0..8] != SEGMENT_MAGIC {
        return Err(SegmentError::Header("bad magic"));
    }
    if crc32c(&h[0..28]) != u32_at(h, 28) {
        return Err(SegmentError::Header("CRC mismatch"));
    }
    if u16::from_le_bytes([h[8], h[9]]) != SEGMENT_FORMAT_VERSION {
        return Err(SegmentError::Header("unknown format version"));
    }
    if h[10..16] != [0; 6] || h[24..28] != [0; 4] {
        return Err(SegmentError::Header("reserved bytes are not zero"));
    }
    Ok(u64_at(h, 16))
}

/// Scans a whole segment file: the header, then records while they are
/// valid. Every record with a valid CRC must hold the next index, a
/// consistent batch mark and an entry matching its header; otherwise the
/// segment is refused. Past the last valid record the scan classifies the
/// rest ([`Tail`]); a bad record followed by an intact record of a later
/// batch is refused ([`SegmentError::DamagedBeforeLater`]).
pub fn scan_segment(bytes: &[u8]) -> Result<SegmentScan, SegmentError> {
    let first_index = decode_segment_header(bytes)?;
    let mut records = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    let mut expected = first_index;
    let mut batch_first: Option<u64> = None;
    let tail = loop {
        if at == bytes.len() {
            break Tail::Clean;
        }
        let f = match check_record(&bytes[at..]) {
            Ok(f) => f,
            Err(why) => {
                if bytes[at..].iter().all(|&b| b == 0) {
                    break Tail::Zeroed;
                }
                if let Some((later_offset, later_index)) = later_batch(bytes, at + 1, expected) {
                    return Err(SegmentError::DamagedBeforeLater {
                        offset: at as u64,
                        why,
                        later_offset: later_offset as u64,
                        later_index,
                    });
                }
                break Tail::Torn(why);
            }
        };
        let offset = at as u64;
        let bad = |what: String| SegmentError::Record { offset, what };
        if f.index != expected {
            return Err(bad(format!("index {}, expected {expected}", f.index)));
        }
        // A batch starts at its own first record and runs on until the next
        // one starts; a segment starts a batch (the writer seals the previous
        // segment before it creates the next).
        let starts_batch = batch_first != Some(f.batch_first);
        if starts_batch && f.batch_first != f.index {
            return Err(bad(format!(
                "batch mark {} is neither the current batch nor this record",
                f.batch_first
            )));
        }
        batch_first = Some(f.batch_first);
        decode_entry(&f).map_err(bad)?;
        let meta = RecordMeta {
            index: f.index,
            term: f.term,
            node_id: f.node_id,
            batch_first: f.batch_first,
            offset: at as u64,
            payload_bytes: f.payload.len() as u32,
        };
        at += meta.record_bytes() as usize;
        records.push(meta);
        let Some(next) = expected.checked_add(1) else {
            return Err(bad("index overflows".into()));
        };
        expected = next;
    };
    Ok(SegmentScan {
        first_index,
        records,
        end: at as u64,
        tail,
    })
}

/// Looks at `bytes[from..]` for an intact record that belongs to a batch
/// started after index `missing` (the first index the scan could not read).
/// Records of `missing`'s own batch are expected after a torn write, since
/// the pages of one write reach the disk in any order.
fn later_batch(bytes: &[u8], from: usize, missing: u64) -> Option<(usize, u64)> {
    let mut at = from;
    while at + RECORD_HEADER_BYTES <= bytes.len() {
        let pos = bytes[at..]
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)?;
        at += pos;
        // Cheap header checks before the CRC, which can cover up to the
        // rest of the file.
        if at + RECORD_HEADER_BYTES <= bytes.len() {
            let h = &bytes[at..at + RECORD_HEADER_BYTES];
            let index = u64_at(h, 8);
            let batch = u64_at(h, 32);
            if index >= missing
                && batch <= index
                && let Ok(f) = check_record(&bytes[at..])
            {
                if f.batch_first > missing {
                    return Some((at, f.index));
                }
                at += RECORD_HEADER_BYTES + f.payload.len();
                continue;
            }
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogId, Proposal};

    fn entry(index: u64, term: u64) -> Entry {
        let log_id = LogId::new(openraft::CommittedLeaderId::new(term, 3), index);
        let payload = if index.is_multiple_of(2) {
            openraft::EntryPayload::Normal(Proposal::default())
        } else {
            openraft::EntryPayload::Blank
        };
        Entry { log_id, payload }
    }

    pub(super) fn segment(first: u64, batches: &[u64]) -> (Vec<u8>, Vec<usize>) {
        let mut b = encode_segment_header(first).to_vec();
        let mut offsets = Vec::new();
        let mut index = first;
        for &n in batches {
            let batch_first = index;
            for _ in 0..n {
                offsets.push(b.len());
                let p = postcard::to_allocvec(&entry(index, 2)).unwrap();
                encode_record(&mut b, index, 2, 3, batch_first, &p);
                index += 1;
            }
        }
        (b, offsets)
    }

    #[test]
    fn names_round_trip_and_only_canonical_names_parse() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg"),
            Some(42)
        );
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        for bad in [
            "42.seg",
            "0000000000000000042.seg",
            "+0000000000000000042.seg",
            "00000000000000000042.seg.tmp",
            "99999999999999999999.seg",
            "oplog.meta",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn clean_segment_scans_whole() {
        let (b, offsets) = segment(7, &[1, 3, 2]);
        let s = scan_segment(&b).unwrap();
        assert_eq!(s.first_index, 7);
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(s.end, b.len() as u64);
        assert_eq!(s.records.len(), 6);
        let idx: Vec<u64> = s.records.iter().map(|r| r.index).collect();
        assert_eq!(idx, (7..13).collect::<Vec<_>>());
        let batch: Vec<u64> = s.records.iter().map(|r| r.batch_first).collect();
        assert_eq!(batch, vec![7, 8, 8, 8, 11, 11]);
        let offs: Vec<usize> = s.records.iter().map(|r| r.offset as usize).collect();
        assert_eq!(offs, offsets);
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let (b, offsets) = segment(1, &[2, 2]);
        let last = *offsets.last().unwrap();
        for cut in last..b.len() {
            let s = scan_segment(&b[..cut]).unwrap();
            assert_eq!(s.records.len(), 3, "cut {cut}");
            assert_eq!(s.end as usize, last);
            assert_eq!(
                s.tail,
                if cut == last {
                    Tail::Clean
                } else {
                    Tail::Torn(TornReason::Short)
                }
            );
        }
    }

    #[test]
    fn zeroed_tail_is_recognised() {
        let (mut b, _) = segment(1, &[2]);
        let end = b.len();
        b.resize(end + 4096, 0);
        let s = scan_segment(&b).unwrap();
        assert_eq!(
            (s.tail, s.end as usize, s.records.len()),
            (Tail::Zeroed, end, 2)
        );
    }

    #[test]
    fn damage_in_the_last_batch_is_torn_but_before_a_later_batch_is_refused() {
        let (b, offsets) = segment(1, &[2, 3]);
        // A flipped byte in the first record of the last batch, with the
        // batch's later records intact (pages persisted out of order).
        let mut torn = b.clone();
        torn[offsets[2] + 50] ^= 1;
        let s = scan_segment(&torn).unwrap();
        assert_eq!(s.tail, Tail::Torn(TornReason::BadCrc));
        assert_eq!(s.records.len(), 2);
        // The same flip in the first batch, with the second batch intact.
        let mut damaged = b.clone();
        damaged[offsets[1] + 50] ^= 1;
        match scan_segment(&damaged) {
            Err(SegmentError::DamagedBeforeLater {
                offset,
                later_index,
                ..
            }) => {
                assert_eq!(offset as usize, offsets[1]);
                assert_eq!(later_index, 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_valid_crc_over_wrong_content_is_refused() {
        // Index out of sequence.
        let mut b = encode_segment_header(1).to_vec();
        let p = postcard::to_allocvec(&entry(2, 2)).unwrap();
        encode_record(&mut b, 2, 2, 3, 2, &p);
        assert!(matches!(scan_segment(&b), Err(SegmentError::Record { .. })));
        // Header and entry disagree on the term.
        let mut b = encode_segment_header(1).to_vec();
        let p = postcard::to_allocvec(&entry(1, 2)).unwrap();
        encode_record(&mut b, 1, 9, 3, 1, &p);
        assert!(matches!(scan_segment(&b), Err(SegmentError::Record { .. })));
        // A batch mark that neither continues nor starts a batch.
        let (mut b, offsets) = segment(1, &[2]);
        b.truncate(offsets[1]);
        let p = postcard::to_allocvec(&entry(2, 2)).unwrap();
        encode_record(&mut b, 2, 2, 3, 0, &p);
        assert!(matches!(scan_segment(&b), Err(SegmentError::Record { .. })));
    }

    #[test]
    fn bad_headers_are_refused() {
        let (b, _) = segment(1, &[1]);
        for i in 0..SEGMENT_HEADER_BYTES {
            let mut d = b.clone();
            d[i] ^= 0x10;
            assert!(
                matches!(scan_segment(&d), Err(SegmentError::Header(_))),
                "byte {i}"
            );
        }
        assert!(matches!(
            scan_segment(&b[..10]),
            Err(SegmentError::Header(_))
        ));
    }
}

#[cfg(test)]
mod fuzz_seed {
    /// The fuzz corpus seed is a valid segment of two batches; regenerate
    /// with `RINGFS_WRITE_FUZZ_SEEDS=1 cargo test -p masterd --lib fuzz_seed`.
    #[test]
    fn fuzz_seed_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/oplog_segment/seed-0");
        let (want, _) = super::tests::segment(5, &[1, 2]);
        if std::env::var_os("RINGFS_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
