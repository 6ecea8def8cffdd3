//! ringfs chunkserver (DESIGN §5): thread-per-core compio runtimes on
//! io_uring, O_DIRECT chunk files with one CRC32C per 64 KiB block, the
//! replication pipeline and the scrubber (the chunkd issue; runtime plan in
//! docs/design/004-chunkd-runtime.md).

pub mod http;
pub mod identity;
pub mod meta;
pub mod metrics;
pub mod chunk;
pub mod dio;
pub mod epoch;
pub mod error;
pub mod pool;
pub mod rangelock;
pub mod store;
