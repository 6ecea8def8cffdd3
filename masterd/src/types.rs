//! The Raft type configuration and what travels in the op log.
//!
//! One log entry carries a [`Proposal`]: a batch of [`Op`]s that the leader
//! collected while the previous batch was being committed (application-level
//! group commit, on top of the log's own fsync batching). Applying a proposal
//! yields one [`Outcome`] per op, in order.
//!
//! Every input that is not a pure function of the state and the op is inside
//! the op: the leader's wall-clock time (`now_ms`, `now_ns`), placement
//! choices, the retention deadline. Identifiers (inodes, chunk handles, node
//! ids, trash ids) are allocated by the state machine from counters, so
//! every master that applies the same log ends in the same state.

use std::fmt;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// ringfs's Raft: node ids are master ids from the config, entries carry proposals.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Upper bound on ops in one proposal (one log entry).
pub const PROPOSAL_OPS_MAX: usize = 4096;
/// Upper bound on a path, in bytes.
pub const PATH_BYTES_MAX: usize = 4096;
/// Upper bound on one path component, in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// Upper bound on an owner name, in bytes.
pub const OWNER_BYTES_MAX: usize = 64;
/// Upper bound on chunks per file (16 Ki × 64 MiB = 1 TiB at the default size).
pub const FILE_CHUNKS_MAX: u64 = 1 << 20;
/// Upper bound on the encoded ops of one proposal. One log record holds at
/// most 64 MiB (`oplog::format::RECORD_PAYLOAD_BYTES_MAX`: over it the log
/// refuses the append and openraft stops for good) and one AppendEntries
/// frame 64 MiB (`raftnet::PAYLOAD_BYTES_MAX`, up to 16 entries); 4 MiB
/// keeps an entry far below both, and still takes 4096 typical ops (about
/// 100 bytes each) in one proposal.
pub const PROPOSAL_BYTES_MAX: usize = 4 << 20;

/// Idempotency key of a mutation (wire `RequestId`); `client_id == 0` means none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReqId {
    pub client_id: u64,
    pub seq: u64,
}

/// One log entry's application data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub ops: Vec<Op>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal of {} ops", self.ops.len())
    }
}

/// A mutation, with everything its effect depends on besides the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Mkdir {
        req: ReqId,
        path: String,
        parents: bool,
        mode: u32,
        owner: String,
        now_ns: i64,
    },
    Create {
        req: ReqId,
        path: String,
        /// 0 = the parent directory's default.
        replication: u8,
        exclusive: bool,
        mode: u32,
        owner: String,
        now_ns: i64,
        /// A truncated file goes to the trash until now + this.
        trash_retention_ms: u64,
    },
    Rename {
        req: ReqId,
        src: String,
        dst: String,
        replace: bool,
        now_ns: i64,
        /// A replaced destination goes to the trash until now + this.
        trash_retention_ms: u64,
    },
    /// Moves the subtree to the trash until `purge_at_ms`.
    Delete {
        req: ReqId,
        path: String,
        recursive: bool,
        now_ms: u64,
        purge_at_ms: u64,
    },
    Restore {
        req: ReqId,
        trash_id: u64,
        /// Empty = the original path.
        dst_path: String,
        now_ns: i64,
    },
    /// Purges one trash entry, or (`trash_id == 0`) every entry due by `now_ms`.
    Purge {
        req: ReqId,
        trash_id: u64,
        now_ms: u64,
    },
    SetReplication {
        req: ReqId,
        path: String,
        replication: u8,
        recursive: bool,
    },
    /// Adds chunk `index` (the next one) to a file. The handle comes from the
    /// state's counter; the replicas were chosen by the leader's placement.
    AllocateChunk {
        req: ReqId,
        inode: u64,
        index: u64,
        /// The first is the primary of the chunk's first lease.
        replicas: Vec<NodeId>,
        now_ns: i64,
        lease_duration_ms: u64,
    },
    /// Bumps a chunk's version and records the new primary lease
    /// (DESIGN §2: committed before the lease is granted).
    GrantLease {
        handle: u64,
        primary: NodeId,
        /// The version the leader saw; a mismatch means another grant won.
        expected_version: u64,
        now_ms: u64,
        duration_ms: u64,
    },
    CompleteFile {
        req: ReqId,
        inode: u64,
        length_bytes: u64,
        now_ns: i64,
    },
    /// Gives a chunkserver its permanent node id.
    AssignNodeId {
        /// Identifies the registration this answers (its first data dir's id).
        dir_id: u64,
    },
    /// Extends the primary leases `primary` holds and asked to keep
    /// (heartbeat), each (handle, version) only if its record still names
    /// that primary and version; committed before the primary hears of it,
    /// so a later leader waits the extension out like any grant.
    ExtendLeases {
        primary: NodeId,
        leases: Vec<(u64, u64)>,
        now_ms: u64,
        duration_ms: u64,
    },
}

impl Op {
    pub fn req(&self) -> ReqId {
        match self {
            Op::Mkdir { req, .. }
            | Op::Create { req, .. }
            | Op::Rename { req, .. }
            | Op::Delete { req, .. }
            | Op::Restore { req, .. }
            | Op::Purge { req, .. }
            | Op::SetReplication { req, .. }
            | Op::AllocateChunk { req, .. }
            | Op::CompleteFile { req, .. } => *req,
            Op::GrantLease { .. } | Op::AssignNodeId { .. } | Op::ExtendLeases { .. } => {
                ReqId::default()
            }
        }
    }

    /// The op's postcard size, as it is encoded in a proposal.
    pub fn encoded_bytes(&self) -> usize {
        // Size flavor: counts without allocating; an op always encodes.
        postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default()).unwrap_or(0)
    }

    /// Refuses client-supplied fields above their bounds. Runs before the
    /// op is proposed: apply would refuse them too, but only after the op
    /// travelled through the log, and enough oversized ops in one proposal
    /// made an entry the log cannot take, which stops Raft for good.
    pub fn check_bounds(&self) -> Result<(), Oversized> {
        match self {
            Op::Mkdir { path, owner, .. } | Op::Create { path, owner, .. } => {
                check_path("path", path)?;
                check_len("owner", owner, OWNER_BYTES_MAX)
            }
            Op::Rename { src, dst, .. } => {
                check_path("source path", src)?;
                check_path("destination path", dst)
            }
            Op::Delete { path, .. } | Op::SetReplication { path, .. } => check_path("path", path),
            Op::Restore { dst_path, .. } => check_path("destination path", dst_path),
            // No client-supplied variable-size field; the master bounds
            // replica lists and lease lists itself.
            Op::Purge { .. }
            | Op::AllocateChunk { .. }
            | Op::GrantLease { .. }
            | Op::CompleteFile { .. }
            | Op::AssignNodeId { .. }
            | Op::ExtendLeases { .. } => Ok(()),
        }
    }

    /// Short name, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Mkdir { .. } => "mkdir",
            Op::Create { .. } => "create",
            Op::Rename { .. } => "rename",
            Op::Delete { .. } => "delete",
            Op::Restore { .. } => "restore",
            Op::Purge { .. } => "purge",
            Op::SetReplication { .. } => "set_replication",
            Op::AllocateChunk { .. } => "allocate_chunk",
            Op::GrantLease { .. } => "grant_lease",
            Op::CompleteFile { .. } => "complete_file",
            Op::AssignNodeId { .. } => "assign_node_id",
            Op::ExtendLeases { .. } => "extend_leases",
        }
    }
}

/// A client-supplied field above its bound ([`Op::check_bounds`]); on
/// the wire `TooLarge`, as apply would answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Oversized {
    pub field: &'static str,
    /// A path component rather than the whole path.
    pub component: bool,
    pub len_bytes: usize,
    pub max_bytes: usize,
}

impl fmt::Display for Oversized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = if self.component {
            " has a name of"
        } else {
            " is"
        };
        write!(
            f,
            "{}{part} {} bytes, above the limit of {} bytes",
            self.field, self.len_bytes, self.max_bytes
        )
    }
}

fn check_len(field: &'static str, value: &str, max_bytes: usize) -> Result<(), Oversized> {
    if value.len() > max_bytes {
        return Err(Oversized {
            field,
            component: false,
            len_bytes: value.len(),
            max_bytes,
        });
    }
    Ok(())
}

/// Lengths only: the rest of a path's validity is apply's to judge.
fn check_path(field: &'static str, path: &str) -> Result<(), Oversized> {
    check_len(field, path, PATH_BYTES_MAX)?;
    match path.split('/').map(str::len).max() {
        Some(n) if n > NAME_BYTES_MAX => Err(Oversized {
            field,
            component: true,
            len_bytes: n,
            max_bytes: NAME_BYTES_MAX,
        }),
        _ => Ok(()),
    }
}

/// Why a mutation was refused. Maps one to one onto wire error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Fail {
    NotFound,
    Exists,
    NotDirectory,
    IsDirectory,
    DirectoryNotEmpty,
    InvalidPath,
    RenameIntoSelf,
    BadRequest,
    OutOfRange,
    StaleVersion,
    TooLarge,
}

impl Fail {
    pub fn code(self) -> ringfs_wire::msg::ErrorCode {
        use ringfs_wire::msg::ErrorCode;
        match self {
            Fail::NotFound => ErrorCode::NotFound,
            Fail::Exists => ErrorCode::Exists,
            Fail::NotDirectory => ErrorCode::NotDirectory,
            Fail::IsDirectory => ErrorCode::IsDirectory,
            Fail::DirectoryNotEmpty => ErrorCode::DirectoryNotEmpty,
            Fail::InvalidPath => ErrorCode::InvalidPath,
            Fail::RenameIntoSelf => ErrorCode::RenameIntoSelf,
            Fail::BadRequest => ErrorCode::BadRequest,
            Fail::OutOfRange => ErrorCode::OutOfRange,
            Fail::StaleVersion => ErrorCode::StaleVersion,
            Fail::TooLarge => ErrorCode::TooLarge,
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a successful op produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Done {
    /// Mkdir, Create, Restore, CompleteFile: the inode it names.
    Inode(u64),
    /// Delete: the trash entry.
    Trashed(u64),
    /// SetReplication: files changed.
    Changed(u64),
    /// Purge: entries purged.
    Purged(u64),
    /// AllocateChunk: the new chunk.
    Chunk { handle: u64, version: u64 },
    /// AllocateChunk: the index already had a chunk (a racing writer made
    /// it); the caller joins it rather than creating replicas of its own.
    JoinedChunk { handle: u64, version: u64 },
    /// GrantLease: the chunk's new version.
    Version(u64),
    /// AssignNodeId.
    NodeId(NodeId),
    /// Rename.
    Ok,
    /// ExtendLeases: how many leases were extended.
    Extended(u64),
}

pub type Outcome = Result<Done, Fail>;

/// The response of applying one entry: one outcome per op of its proposal
/// (empty for blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub outcomes: Vec<Outcome>,
    /// The log index the outcomes were applied at (read-your-writes stamps).
    pub index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rename(src: String, dst: String) -> Op {
        Op::Rename {
            req: ReqId::default(),
            src,
            dst,
            replace: false,
            now_ns: 0,
            trash_retention_ms: 0,
        }
    }

    #[test]
    fn client_fields_over_their_bounds_are_refused() {
        let long_path = format!("/{}", "a/".repeat(8 << 20));
        let long_name = format!("/d/{}", "n".repeat(NAME_BYTES_MAX + 1));
        let e = rename(long_path.clone(), "/x".into())
            .check_bounds()
            .unwrap_err();
        assert_eq!((e.field, e.component), ("source path", false));
        assert_eq!(
            (e.len_bytes, e.max_bytes),
            (long_path.len(), PATH_BYTES_MAX)
        );
        let e = rename("/x".into(), long_name.clone())
            .check_bounds()
            .unwrap_err();
        assert_eq!((e.field, e.component), ("destination path", true));
        assert_eq!(
            e.to_string(),
            format!("destination path has a name of 256 bytes, above the limit of 255 bytes")
        );
        let e = Op::Mkdir {
            req: ReqId::default(),
            path: "/ok".into(),
            parents: false,
            mode: 0,
            owner: "o".repeat(OWNER_BYTES_MAX + 1),
            now_ns: 0,
        }
        .check_bounds()
        .unwrap_err();
        assert_eq!(e.field, "owner");
        let e = Op::Restore {
            req: ReqId::default(),
            trash_id: 1,
            dst_path: long_path,
            now_ns: 0,
        }
        .check_bounds()
        .unwrap_err();
        assert_eq!(e.field, "destination path");

        // At the bounds, and invalid but short paths, go on to apply.
        let name = "n".repeat(NAME_BYTES_MAX);
        let at_bound = format!("/{}", [name.as_str(); 16].join("/"));
        assert_eq!(at_bound.len(), PATH_BYTES_MAX);
        assert_eq!(rename(at_bound.clone(), at_bound).check_bounds(), Ok(()));
        assert_eq!(rename("relative".into(), "".into()).check_bounds(), Ok(()));
    }
}
