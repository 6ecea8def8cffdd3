//! ringfs metadata master (DESIGN §4): the namespace and chunk table as a
//! state machine over a Raft-replicated op log (openraft), mmap checkpoints,
//! the chunkserver registry, leases, placement, re-replication and GC, on
//! tokio.

pub mod allocate;
pub mod checkpoint;
pub mod chunklist;
pub mod chunks;
pub mod chunkscan;
pub mod client_api;
/// Frames and the handshake over tokio streams, shared with the client library.
pub use ringfs_client::frames as conn;
pub mod cscmd;
pub mod cslink;
pub mod duties;
pub mod election;
pub mod failover;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod oplog;
pub mod pagedmap;
pub mod peer;
pub mod placement;
pub mod proposer;
pub mod raftnet;
pub mod registry;
pub mod server;
pub mod state;
pub mod statemachine;
pub mod types;
