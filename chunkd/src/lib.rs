//! ringfs chunkserver (DESIGN §5): thread-per-core compio runtimes on
//! io_uring, O_DIRECT chunk files with one CRC32C per 64 KiB block, the
//! replication pipeline and the scrubber (the chunkd issue; runtime plan in
//! docs/design/004-chunkd-runtime.md, chunk files in 006).
//!
//! Start at `daemon` (start-up), then `server` (a connection's request
//! loop), `ops` (what the owner core does with a request) and `chunk` (one
//! replica's data path).

pub mod chunk;
pub mod clone;
pub mod conn;
pub mod daemon;
pub mod dio;
pub mod epoch;
pub mod error;
pub mod groupsync;
pub mod http;
pub mod identity;
pub mod intent;
pub mod lease;
pub mod masterlink;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod openfiles;
pub mod ops;
pub mod peer;
pub mod pool;
pub mod push;
pub mod rangelock;
pub mod scrub;
pub mod server;
pub mod shard;
pub mod status;
pub mod store;
pub mod unsettled;
