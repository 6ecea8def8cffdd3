//! ringfs chunkserver (DESIGN §5), built by the chunkd issue: thread-per-core
//! compio runtimes on io_uring, O_DIRECT chunk files with one CRC32C per
//! 64 KiB block, the replication pipeline and the scrubber. It speaks the
//! protocol in `ringfs-wire`; this crate holds no code yet.
