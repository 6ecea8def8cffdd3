//! ringfs cluster tests. The harness (real masterd and chunkd processes on
//! 127.0.0.0/8, cleaned up by PID) and the cluster, fault and failover tests
//! land here with the client issue, once there are daemons to start.
