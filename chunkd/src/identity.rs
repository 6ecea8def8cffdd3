//! The identity file of a data dir: which cluster, which node and which
//! disk it belongs to. Byte layout and crash-safety argument:
//! docs/design/005-data-dir-identity.md.
//!
//! A chunkd refuses a data dir of another cluster, refuses to start when
//! its dirs name different nodes (a disk moved from another machine) or
//! share a dir id (a cloned disk), and never silently re-initialises a dir
//! whose identity is unreadable: that would adopt someone else's chunks.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ringfs_wire::checksum::crc32c;
use ringfs_wire::config::CLUSTER_ID_MAX_BYTES;
use ringfs_wire::ids::NodeId;

/// File name of the identity inside a data dir.
pub const IDENTITY_FILE: &str = "IDENTITY";
/// Temporary name while a new identity is written; never read.
pub const IDENTITY_TMP_FILE: &str = "IDENTITY.tmp";
pub const MAGIC: [u8; 8] = *b"RGFSDIR\0";
pub const FORMAT_VERSION: u16 = 1;
/// Size of the identity file, fixed.
pub const IDENTITY_BYTES: usize = 112;
const CRC_OFFSET: usize = IDENTITY_BYTES - 4;
const CLUSTER_ID_OFFSET: usize = 40;

/// Who a data dir belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirIdentity {
    pub cluster_id: String,
    /// `NodeId(0)` until the master assigns one at first registration.
    pub node_id: NodeId,
    /// Random, non-zero, fixed when the dir is initialised.
    pub dir_id: u64,
    pub created_unix_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity file has {0} bytes, expected {IDENTITY_BYTES}")]
    BadLength(usize),
    #[error("not a ringfs data dir identity (bad magic {0:02x?})")]
    BadMagic([u8; 8]),
    #[error("identity format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    #[error(
        "identity checksum mismatch: stored {stored:#010x}, computed {computed:#010x}; the file is damaged"
    )]
    BadCrc { stored: u32, computed: u32 },
    #[error("identity is corrupt: {0}")]
    Corrupt(String),
    #[error("data dir {path} belongs to cluster {dir_cluster:?}, not {ours:?}")]
    WrongCluster {
        path: PathBuf,
        dir_cluster: String,
        ours: String,
    },
    #[error(
        "data dirs belong to different nodes: {first_path} is node {first}, {second_path} is node {second} \
         (a disk from another chunkserver?)"
    )]
    MixedNodes {
        first_path: PathBuf,
        first: NodeId,
        second_path: PathBuf,
        second: NodeId,
    },
    #[error("data dirs {first} and {second} have the same dir id {dir_id:#x} (a cloned disk?)")]
    DuplicateDir {
        first: PathBuf,
        second: PathBuf,
        dir_id: u64,
    },
    #[error(
        "data dir {path} has no {IDENTITY_FILE} file but is not empty (found {found:?}); refusing to adopt it. \
         Point chunkd at an empty dir or restore the identity file"
    )]
    NotEmpty { path: PathBuf, found: String },
    #[error("no system randomness: {0}")]
    Random(String),
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DirIdentity {
    pub fn encode(&self) -> [u8; IDENTITY_BYTES] {
        let id = self.cluster_id.as_bytes();
        assert!(
            (1..=CLUSTER_ID_MAX_BYTES).contains(&id.len()),
            "cluster id length is validated by the config"
        );
        assert_ne!(self.dir_id, 0, "dir ids are non-zero");
        let mut out = [0u8; IDENTITY_BYTES];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[10] = id.len() as u8;
        // 11..16 reserved, zero.
        out[16..24].copy_from_slice(&self.node_id.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.dir_id.to_le_bytes());
        out[32..40].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        out[CLUSTER_ID_OFFSET..CLUSTER_ID_OFFSET + id.len()].copy_from_slice(id);
        // 104..108 reserved, zero.
        let crc = crc32c(&out[..CRC_OFFSET]);
        out[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes an identity file's bytes. Every field is checked; any damage
    /// is a typed error, never a panic and never a guess.
    pub fn decode(bytes: &[u8]) -> Result<DirIdentity, IdentityError> {
        let b: &[u8; IDENTITY_BYTES] = bytes
            .try_into()
            .map_err(|_| IdentityError::BadLength(bytes.len()))?;
        let magic: [u8; 8] = b[0..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(IdentityError::BadMagic(magic));
        }
        let stored = u32::from_le_bytes(b[CRC_OFFSET..].try_into().expect("4 bytes"));
        let computed = crc32c(&b[..CRC_OFFSET]);
        if stored != computed {
            return Err(IdentityError::BadCrc { stored, computed });
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(IdentityError::UnsupportedVersion(version));
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let id_len = usize::from(b[10]);
        if !(1..=CLUSTER_ID_MAX_BYTES).contains(&id_len) {
            return Err(IdentityError::Corrupt(format!(
                "cluster id length {id_len}"
            )));
        }
        if b[11..16].iter().chain(&b[104..CRC_OFFSET]).any(|&x| x != 0) {
            return Err(IdentityError::Corrupt("reserved bytes are not zero".into()));
        }
        let id_field = &b[CLUSTER_ID_OFFSET..CLUSTER_ID_OFFSET + CLUSTER_ID_MAX_BYTES];
        if id_field[id_len..].iter().any(|&x| x != 0) {
            return Err(IdentityError::Corrupt(
                "cluster id padding is not zero".into(),
            ));
        }
        let cluster_id = std::str::from_utf8(&id_field[..id_len])
            .map_err(|_| IdentityError::Corrupt("cluster id is not UTF-8".into()))?
            .to_owned();
        let dir_id = u64_at(24);
        if dir_id == 0 {
            return Err(IdentityError::Corrupt("dir id is zero".into()));
        }
        Ok(DirIdentity {
            cluster_id,
            node_id: NodeId(u64_at(16)),
            dir_id,
            created_unix_ms: u64_at(32),
        })
    }

    /// Reads `dir/IDENTITY`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<DirIdentity>, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path)(e)),
        };
        // One byte more than the format, to tell "too long" from "exact".
        let mut bytes = Vec::with_capacity(IDENTITY_BYTES + 1);
        Read::by_ref(&mut file)
            .take(IDENTITY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error(&path))?;
        DirIdentity::decode(&bytes).map(Some)
    }

    /// Writes `dir/IDENTITY` atomically: a crash leaves the old file or the
    /// new one, never a mix (write tmp, fsync, rename, fsync the dir).
    pub fn store(&self, dir: &Path) -> Result<(), IdentityError> {
        let tmp = dir.join(IDENTITY_TMP_FILE);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_error(&tmp))?;
        file.write_all(&self.encode()).map_err(io_error(&tmp))?;
        file.sync_all().map_err(io_error(&tmp))?;
        drop(file);
        let path = dir.join(IDENTITY_FILE);
        fs::rename(&tmp, &path).map_err(io_error(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))
    }
}

/// Opens the identity of `dir` for `cluster_id`, initialising an empty dir
/// (node id 0, fresh random dir id). A leftover `IDENTITY.tmp` is an
/// interrupted write and is removed.
pub fn open_or_init(
    dir: &Path,
    cluster_id: &str,
    now_unix_ms: u64,
) -> Result<DirIdentity, IdentityError> {
    let tmp = dir.join(IDENTITY_TMP_FILE);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&tmp)(e)),
    }
    if let Some(identity) = DirIdentity::load(dir)? {
        if identity.cluster_id != cluster_id {
            return Err(IdentityError::WrongCluster {
                path: dir.to_path_buf(),
                dir_cluster: identity.cluster_id,
                ours: cluster_id.to_owned(),
            });
        }
        return Ok(identity);
    }
    if let Some(entry) = fs::read_dir(dir).map_err(io_error(dir))?.next() {
        let entry = entry.map_err(io_error(dir))?;
        return Err(IdentityError::NotEmpty {
            path: dir.to_path_buf(),
            found: entry.file_name().to_string_lossy().into_owned(),
        });
    }
    let identity = DirIdentity {
        cluster_id: cluster_id.to_owned(),
        node_id: NodeId(0),
        dir_id: fresh_dir_id()?,
        created_unix_ms: now_unix_ms,
    };
    identity.store(dir)?;
    Ok(identity)
}

fn fresh_dir_id() -> Result<u64, IdentityError> {
    // Bounded: a zero draw has probability 2^-64.
    for _ in 0..4 {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| IdentityError::Random(e.to_string()))?;
        let id = u64::from_le_bytes(bytes);
        if id != 0 {
            return Ok(id);
        }
    }
    Err(IdentityError::Random(
        "drew a zero dir id four times".into(),
    ))
}

/// Checks that the dirs of one chunkd belong together: one node id among
/// those assigned (0 = a newly added disk), distinct dir ids. Returns the
/// node id, `NodeId(0)` if none is assigned yet.
pub fn node_of(dirs: &[(PathBuf, DirIdentity)]) -> Result<NodeId, IdentityError> {
    let mut node: Option<(&Path, NodeId)> = None;
    for (i, (path, identity)) in dirs.iter().enumerate() {
        if let Some((other, _)) = dirs[..i].iter().find(|(_, o)| o.dir_id == identity.dir_id) {
            return Err(IdentityError::DuplicateDir {
                first: other.clone(),
                second: path.clone(),
                dir_id: identity.dir_id,
            });
        }
        if identity.node_id == NodeId(0) {
            continue;
        }
        match node {
            None => node = Some((path, identity.node_id)),
            Some((first_path, first)) if first != identity.node_id => {
                return Err(IdentityError::MixedNodes {
                    first_path: first_path.to_path_buf(),
                    first,
                    second_path: path.clone(),
                    second: identity.node_id,
                });
            }
            Some(_) => {}
        }
    }
    Ok(node.map_or(NodeId(0), |(_, id)| id))
}
