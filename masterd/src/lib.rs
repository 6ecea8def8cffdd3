//! ringfs metadata master (DESIGN §4): the namespace and chunk table as a
//! state machine over a Raft-replicated op log (openraft), mmap checkpoints,
//! the chunkserver registry, leases, placement, re-replication and GC, on
//! tokio.

pub mod checkpoint;
pub mod chunks;
pub mod namespace;
pub mod oplog;
pub mod state;
pub mod types;
