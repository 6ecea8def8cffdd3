//! `ringfs-bench`: the benchmark binary: `chunkd` (one chunkd on one data
//! dir against fio, issue 3), `meta` (one masterd: namespace ops/s, restart
//! time, memory per file, issue 4) and `cluster` (a local cluster through
//! the client against MooseFS and fio, issue 5); see docs/BENCHMARKS.md.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ringfs-bench", version, about = "ringfs benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One chunkd on one data dir: sequential 1 MiB writes and reads at
    /// QD 1, 8, 32 and 64 KiB random reads at QD 32, against fio in the
    /// same run.
    Chunkd(ringfs_bench::chunkd::Args),
    /// One masterd (started here, or a running one with --addr): mkdirs,
    /// creates, stats and renames from concurrent clients, with latency
    /// percentiles and group-commit figures from /metrics; then a kill -9
    /// and restart (time to ready) and resident memory per file.
    Meta(ringfs_bench::meta::Args),
    /// A `ringfs local` cluster (1 master, 3 chunkservers) through the
    /// client library: sequential write/read at replication 1 and 3 and
    /// 4 KiB small files, against the MooseFS peer and raw fio in the same
    /// run.
    Cluster(ringfs_bench::cluster::Args),
    /// A `ringfs local` cluster of 3 voters under a create load: leader
    /// kill -9 windows, graceful handover pauses, lost acknowledged creates,
    /// and creates/s with 3 voters against 1.
    Failover(ringfs_bench::failover::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Chunkd(args) => ringfs_bench::chunkd::run(args),
        Cmd::Meta(args) => ringfs_bench::meta::run(args),
        Cmd::Cluster(args) => ringfs_bench::cluster::run(args),
        Cmd::Failover(args) => ringfs_bench::failover::run(args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfs-bench: {e}");
            ExitCode::from(1)
        }
    }
}
