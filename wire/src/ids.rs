//! Identifiers and fixed units shared by every crate (DESIGN §2).

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                $name(v)
            }
        }
    };
}

id_type!(
    /// A chunk, allocated by the master through the op log; never reused.
    ChunkHandle
);
id_type!(
    /// Bumped (and committed) by the master before every new primary lease;
    /// a replica with a lower version is stale.
    ChunkVersion
);
id_type!(
    /// The Raft term of the master leader that issued a command or lease.
    /// Chunkservers persist the highest seen and refuse lower ones.
    Epoch
);
id_type!(
    /// Masters are configured (1, 2, 3...); a chunkserver gets its id at
    /// first registration. 0 means "none" on the wire.
    NodeId
);

/// Default chunk size (a cluster setting, `chunk_size_bytes`).
pub const DEFAULT_CHUNK_SIZE_BYTES: u64 = 64 << 20;
/// Checksum block size, fixed by the formats.
pub const CHECKSUM_BLOCK_BYTES: u64 = crate::checksum::BLOCK_BYTES as u64;
/// Lease extensions one heartbeat may ask for (`Heartbeat.extend_leases`);
/// a master ignores the rest.
pub const LEASE_EXTENSIONS_PER_HEARTBEAT_MAX: usize = 4096;
