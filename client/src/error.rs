//! The client's typed errors. Applications branch on the variant; the
//! message is for people.

use std::time::Duration;

use ringfs_wire::msg::{ErrorCode, ErrorReply};

use crate::frames::ConnError;

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{what}: already exists")]
    Exists { what: String },
    #[error("{what}: not a directory")]
    NotDirectory { what: String },
    #[error("{what}: is a directory")]
    IsDirectory { what: String },
    #[error("{what}: directory not empty")]
    DirectoryNotEmpty { what: String },
    #[error("{what}: invalid path ({reason})")]
    InvalidPath { what: String, reason: String },
    /// No chunkserver has room for a new chunk; retrying does not help
    /// until space is freed or added.
    #[error("{what}: no space left on the chunkservers ({reason})")]
    NoSpace { what: String, reason: String },
    /// Not enough of the cluster answered in time; `retry_after` is the
    /// last hint the cluster gave (a hint, not a promise).
    #[error("{what}: unavailable ({reason}); retry in about {} ms", retry_after.as_millis())]
    Unavailable {
        what: String,
        reason: String,
        retry_after: Duration,
    },
    /// Every replica of a chunk failed its checksums or refused to serve.
    #[error("{what}: no intact replica ({reason})")]
    Corrupt { what: String, reason: String },
    /// The request was refused for a reason retrying does not fix.
    #[error("{what}: refused ({code:?}): {reason}")]
    Refused {
        what: String,
        code: ErrorCode,
        reason: String,
    },
    #[error("{what}: {reason}")]
    Protocol { what: String, reason: String },
}

impl Error {
    /// The error a typed reply stands for, about `what` (a path, a chunk).
    pub fn from_reply(what: &str, e: &ErrorReply) -> Error {
        let what = what.to_owned();
        let reason = e.message.clone().unwrap_or_default();
        match e.code {
            ErrorCode::NotFound => Error::NotFound { what },
            ErrorCode::Exists => Error::Exists { what },
            ErrorCode::NotDirectory => Error::NotDirectory { what },
            ErrorCode::IsDirectory => Error::IsDirectory { what },
            ErrorCode::DirectoryNotEmpty => Error::DirectoryNotEmpty { what },
            ErrorCode::InvalidPath | ErrorCode::RenameIntoSelf => {
                Error::InvalidPath { what, reason }
            }
            ErrorCode::NoSpace => Error::NoSpace { what, reason },
            ErrorCode::Unavailable
            | ErrorCode::Busy
            | ErrorCode::Timeout
            | ErrorCode::NotLeader
            | ErrorCode::ReadOnlyShadow => Error::Unavailable {
                what,
                reason: if reason.is_empty() {
                    format!("{:?}", e.code)
                } else {
                    reason
                },
                retry_after: Duration::from_millis(u64::from(e.retry_after_ms)),
            },
            ErrorCode::Corrupt | ErrorCode::ChecksumMismatch => Error::Corrupt { what, reason },
            code => Error::Refused { what, code, reason },
        }
    }

    pub fn unavailable(what: &str, reason: impl Into<String>, retry_after: Duration) -> Error {
        Error::Unavailable {
            what: what.to_owned(),
            reason: reason.into(),
            retry_after,
        }
    }

    pub fn from_conn(what: &str, e: &ConnError) -> Error {
        match e {
            // A peer that speaks another protocol or another cluster will
            // not start to by retrying.
            ConnError::Handshake { code, reason } => Error::Refused {
                what: what.to_owned(),
                code: *code,
                reason: reason.clone(),
            },
            other => Error::unavailable(what, other.to_string(), Duration::ZERO),
        }
    }

    /// True for errors that mean "the thing is not there".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
