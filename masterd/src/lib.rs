//! ringfs metadata master (DESIGN §4), built by the masterd issue: namespace,
//! the op log as a Raft log (openraft), mmap checkpoints, chunkserver
//! registry, leases, placement, re-replication and GC, on tokio. It speaks
//! the protocol in `ringfs-wire`; this crate holds no code yet.
