//! Data-dir identity: format, every malformed case, and the states a crash
//! can leave on disk.

use std::path::PathBuf;

use chunkd::identity::*;
use proptest::prelude::*;
use ringfs_wire::checksum::crc32c;
use ringfs_wire::ids::NodeId;

fn identity(node: u64, dir_id: u64) -> DirIdentity {
    DirIdentity {
        cluster_id: "c1".into(),
        node_id: NodeId(node),
        dir_id,
        created_unix_ms: 1_700_000_000_000,
    }
}

/// Re-seals the CRC after a test edits a field, so the edit reaches the
/// check it aims at.
fn reseal(bytes: &mut [u8; IDENTITY_BYTES]) {
    let crc = crc32c(&bytes[..IDENTITY_BYTES - 4]);
    bytes[IDENTITY_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
}

proptest! {
    #[test]
    fn round_trip(cluster_id in "[A-Za-z0-9._-]{1,64}", node: u64, dir_id in 1u64.., created: u64) {
        let id = DirIdentity { cluster_id, node_id: NodeId(node), dir_id, created_unix_ms: created };
        prop_assert_eq!(DirIdentity::decode(&id.encode()).unwrap(), id);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = DirIdentity::decode(&bytes);
    }

    #[test]
    fn any_bit_flip_is_refused(bit in 0usize..IDENTITY_BYTES * 8) {
        let mut bytes = identity(3, 7).encode();
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(DirIdentity::decode(&bytes).is_err());
    }
}

#[test]
fn layout_is_fixed_little_endian() {
    let b = identity(0x0102, 0x0304).encode();
    assert_eq!(&b[0..8], b"RGFSDIR\0");
    assert_eq!(u16::from_le_bytes([b[8], b[9]]), FORMAT_VERSION);
    assert_eq!(b[10], 2);
    assert_eq!(&b[16..24], &0x0102u64.to_le_bytes());
    assert_eq!(&b[24..32], &0x0304u64.to_le_bytes());
    assert_eq!(&b[32..40], &1_700_000_000_000u64.to_le_bytes());
    assert_eq!(&b[40..42], b"c1");
    assert!(b[42..108].iter().all(|&x| x == 0));
    assert_eq!(&b[108..112], &crc32c(&b[..108]).to_le_bytes());
}

#[test]
fn malformed_cases_each_give_their_error() {
    let good = identity(1, 2).encode();
    assert!(matches!(
        DirIdentity::decode(&good[..111]),
        Err(IdentityError::BadLength(111))
    ));
    assert!(matches!(
        DirIdentity::decode(&[good.as_slice(), &[0]].concat()),
        Err(IdentityError::BadLength(113))
    ));

    let mut b = good;
    b[0] = b'X';
    assert!(matches!(
        DirIdentity::decode(&b),
        Err(IdentityError::BadMagic(_))
    ));

    let mut b = good;
    b[20] ^= 1;
    assert!(matches!(
        DirIdentity::decode(&b),
        Err(IdentityError::BadCrc { .. })
    ));

    let mut b = good;
    b[8] = 2;
    reseal(&mut b);
    assert!(matches!(
        DirIdentity::decode(&b),
        Err(IdentityError::UnsupportedVersion(2))
    ));

    for len in [0u8, 65, 255] {
        let mut b = good;
        b[10] = len;
        reseal(&mut b);
        assert!(
            matches!(DirIdentity::decode(&b), Err(IdentityError::Corrupt(_))),
            "length {len}"
        );
    }
    for at in [11usize, 15, 50, 104, 107] {
        let mut b = good;
        b[at] = 1;
        reseal(&mut b);
        assert!(
            matches!(DirIdentity::decode(&b), Err(IdentityError::Corrupt(_))),
            "byte {at}"
        );
    }
    let mut b = good;
    b[24..32].copy_from_slice(&0u64.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        DirIdentity::decode(&b),
        Err(IdentityError::Corrupt(_))
    ));

    let mut b = good;
    b[40] = 0xff;
    reseal(&mut b);
    assert!(matches!(
        DirIdentity::decode(&b),
        Err(IdentityError::Corrupt(_))
    ));
}

#[test]
fn fresh_dir_is_initialised_and_reopened_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_or_init(dir.path(), "c1", 5).unwrap();
    assert_eq!(first.node_id, NodeId(0));
    assert_ne!(first.dir_id, 0);
    let again = open_or_init(dir.path(), "c1", 99).unwrap();
    assert_eq!(again, first, "reopening must not re-initialise");
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        open_or_init(other.path(), "c1", 5).unwrap().dir_id,
        first.dir_id
    );
}

#[test]
fn node_id_assignment_persists() {
    let dir = tempfile::tempdir().unwrap();
    let mut id = open_or_init(dir.path(), "c1", 5).unwrap();
    id.node_id = NodeId(42);
    id.store(dir.path()).unwrap();
    assert_eq!(
        open_or_init(dir.path(), "c1", 5).unwrap().node_id,
        NodeId(42)
    );
    assert!(!dir.path().join(IDENTITY_TMP_FILE).exists());
}

#[test]
fn another_clusters_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    open_or_init(dir.path(), "c1", 5).unwrap();
    let err = open_or_init(dir.path(), "c2", 5).unwrap_err();
    assert!(matches!(err, IdentityError::WrongCluster { .. }), "{err}");
    assert!(err.to_string().contains("c1") && err.to_string().contains("c2"));
}

#[test]
fn a_non_empty_dir_without_identity_is_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chunk-0000000000000001"), b"someone's data").unwrap();
    let err = open_or_init(dir.path(), "c1", 5).unwrap_err();
    assert!(matches!(err, IdentityError::NotEmpty { .. }), "{err}");
    assert!(!dir.path().join(IDENTITY_FILE).exists(), "nothing written");
}

/// Crash during the very first write, before the rename: only the tmp file
/// exists. Nothing was acknowledged, so the dir starts fresh.
#[test]
fn crash_before_first_rename_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(IDENTITY_TMP_FILE),
        &identity(1, 2).encode()[..50],
    )
    .unwrap();
    let id = open_or_init(dir.path(), "c1", 5).unwrap();
    assert_eq!(id.node_id, NodeId(0));
    assert!(!dir.path().join(IDENTITY_TMP_FILE).exists());
}

/// Crash while replacing the identity (recording a node id): the old file is
/// intact and wins; the torn tmp file is discarded.
#[test]
fn crash_during_replace_keeps_the_old_identity() {
    let dir = tempfile::tempdir().unwrap();
    let old = open_or_init(dir.path(), "c1", 5).unwrap();
    let mut new = old.clone();
    new.node_id = NodeId(9);
    std::fs::write(dir.path().join(IDENTITY_TMP_FILE), &new.encode()[..60]).unwrap();
    assert_eq!(open_or_init(dir.path(), "c1", 5).unwrap(), old);
}

/// A damaged identity (which the atomic rename never produces, but a disk
/// can) is refused with a clear error, never re-initialised.
#[test]
fn damaged_identity_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    open_or_init(dir.path(), "c1", 5).unwrap();
    let path = dir.path().join(IDENTITY_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = open_or_init(dir.path(), "c1", 5).unwrap_err();
    assert!(matches!(err, IdentityError::BadCrc { .. }), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the damaged file is left for the operator"
    );
    std::fs::write(&path, &bytes[..40]).unwrap();
    assert!(matches!(
        open_or_init(dir.path(), "c1", 5),
        Err(IdentityError::BadLength(40))
    ));
}

#[test]
fn dirs_of_one_node_must_agree() {
    let p = |s: &str| PathBuf::from(s);
    assert_eq!(node_of(&[]).unwrap(), NodeId(0));
    assert_eq!(
        node_of(&[
            (p("/a"), identity(0, 1)),
            (p("/b"), identity(7, 2)),
            (p("/c"), identity(7, 3))
        ])
        .unwrap(),
        NodeId(7),
        "a new disk (node 0) joins the node of the others"
    );
    let err = node_of(&[(p("/a"), identity(7, 1)), (p("/b"), identity(8, 2))]).unwrap_err();
    assert!(matches!(err, IdentityError::MixedNodes { .. }), "{err}");
    assert!(err.to_string().contains("/a") && err.to_string().contains("/b"));
    let err = node_of(&[(p("/a"), identity(7, 5)), (p("/b"), identity(7, 5))]).unwrap_err();
    assert!(
        matches!(err, IdentityError::DuplicateDir { dir_id: 5, .. }),
        "{err}"
    );
}
