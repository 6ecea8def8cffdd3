//! The errors of chunk operations, each mapped to one typed wire code
//! (DESIGN §3: clients branch on codes, never on text).

use ringfs_wire::msg::{ErrorCode, ErrorReply};

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {0:#x} not found")]
    NotFound(u64),
    #[error("chunk {0:#x} already exists")]
    Exists(u64),
    #[error("stale version: replica holds {ours}, request has {theirs}")]
    StaleVersion { ours: u64, theirs: u64 },
    #[error("stale epoch {theirs}: highest seen is {highest}")]
    StaleEpoch { theirs: u64, highest: u64 },
    #[error("block {block} of chunk {handle:#x} failed its checksum")]
    ChecksumMismatch { handle: u64, block: u64 },
    #[error("data sent with the request failed its checksum at piece {piece}")]
    BadDataChecksum { piece: u64 },
    #[error("replica of chunk {0:#x} is marked corrupt")]
    Corrupt(u64),
    #[error("{0}")]
    OutOfRange(String),
    #[error("record of {length} bytes at {offset} does not fit in the chunk")]
    ChunkFull { offset: u64, length: u64 },
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no primary lease for chunk {0:#x} on this chunkserver")]
    NotPrimary(u64),
    #[error("the primary lease on chunk {0:#x} has expired")]
    LeaseExpired(u64),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("pushed data {0} is not held here (evicted or never pushed)")]
    DataIdUnknown(String),
    #[error("replica {node} ({addr}) failed: {reason}")]
    ReplicaFailed {
        node: u64,
        addr: String,
        reason: String,
    },
    #[error("busy: {0}")]
    Busy(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("internal: {0}")]
    Internal(String),
}

impl ChunkError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ChunkError {
        ChunkError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ChunkError::NotFound(_) => ErrorCode::NotFound,
            ChunkError::Exists(_) => ErrorCode::Exists,
            ChunkError::StaleVersion { .. } => ErrorCode::StaleVersion,
            ChunkError::StaleEpoch { .. } => ErrorCode::StaleEpoch,
            ChunkError::ChecksumMismatch { .. } | ChunkError::BadDataChecksum { .. } => {
                ErrorCode::ChecksumMismatch
            }
            ChunkError::Corrupt(_) => ErrorCode::Corrupt,
            ChunkError::OutOfRange(_) => ErrorCode::OutOfRange,
            ChunkError::ChunkFull { .. } => ErrorCode::ChunkFull,
            ChunkError::TooLarge(_) => ErrorCode::TooLarge,
            ChunkError::BadRequest(_) => ErrorCode::BadRequest,
            ChunkError::NotPrimary(_) => ErrorCode::NotPrimary,
            ChunkError::LeaseExpired(_) => ErrorCode::LeaseExpired,
            ChunkError::NoSpace(_) => ErrorCode::NoSpace,
            ChunkError::DataIdUnknown(_) => ErrorCode::DataIdUnknown,
            ChunkError::ReplicaFailed { .. } => ErrorCode::ReplicaFailed,
            ChunkError::Busy(_) => ErrorCode::Busy,
            ChunkError::Timeout(_) => ErrorCode::Timeout,
            ChunkError::Io { .. } | ChunkError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The wire reply; `me` names this chunkserver for errors that blame a
    /// replica (a checksum mismatch here blames us).
    pub fn to_reply(&self, me_node: u64, me_addr: &str) -> ErrorReply {
        let mut reply = ErrorReply {
            code: self.code(),
            message: Some(self.to_string()),
            ..ErrorReply::default()
        };
        match self {
            ChunkError::StaleVersion { ours, .. } => reply.version = *ours,
            ChunkError::StaleEpoch { highest, .. } => reply.epoch = *highest,
            ChunkError::ChecksumMismatch { block, .. } => {
                reply.block_index = u32::try_from(*block).unwrap_or(u32::MAX);
                reply.failed_replica = me_node;
                reply.failed_replica_addr = Some(me_addr.to_owned());
            }
            ChunkError::ReplicaFailed { node, addr, .. } => {
                reply.failed_replica = *node;
                reply.failed_replica_addr = Some(addr.clone());
            }
            ChunkError::Busy(_) => reply.retry_after_ms = 50,
            _ => {}
        }
        reply
    }
}

pub type ChunkResult<T> = Result<T, ChunkError>;
