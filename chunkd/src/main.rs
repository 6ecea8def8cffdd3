//! `chunkd --config ringfs.toml --listen ADDR --data DIR[,DIR...] [--rack R]`
//! (DESIGN §7). Prints one `chunkd ready ...` line on stdout once it
//! serves; exits 0 on SIGTERM/SIGINT, 1 on a start-up error, 2 on bad
//! usage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chunkd::daemon::Daemon;
use chunkd::node::Settings;
use clap::Parser;
use ringfs_wire::config::Config;

#[derive(Parser, Debug)]
#[command(name = "chunkd", version, about = "ringfs chunkserver")]
struct Args {
    /// Cluster config file.
    #[arg(long, env = "RINGFS_CONFIG")]
    config: PathBuf,
    /// Data listener, host:port (every core accepts on it).
    #[arg(long)]
    listen: SocketAddr,
    /// Data dirs, one per disk, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    data: Vec<PathBuf>,
    /// Rack name, for placement.
    #[arg(long, default_value = "")]
    rack: String,
    /// HTTP address for /metrics and /status (off when absent).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Cores to run on (0 = every CPU this process may use).
    #[arg(long, default_value_t = 0)]
    cores: usize,
    /// Address other nodes use to reach this one (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Override the config's scrub period (seconds), e.g. to scrub fast in tests.
    #[arg(long)]
    scrub_period_secs: Option<u64>,
    /// Benchmark only: do not verify CRCs on reads (measures their cost).
    #[arg(long, hide = true)]
    bench_skip_read_verify: bool,
    /// Benchmark only: SIGUSR1 turns read verification off, SIGUSR2 back
    /// on, so one process (one cache state) can run both sides of an A/B.
    #[arg(long, hide = true)]
    bench_read_verify_signals: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGFS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chunkd: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let file = &config.file;
    let tuning = &file.chunkserver;
    let settings = Settings {
        cluster_id: file.cluster_id.clone(),
        listen: args.listen,
        advertise: args.advertise.unwrap_or_default(),
        http: args.http,
        cores: args.cores,
        dirs: args.data,
        rack: args.rack,
        chunk_size_bytes: file.chunk_size_bytes,
        buffer_bytes: tuning.buffer_bytes as usize,
        buffers_per_core: tuning.buffer_pool_buffers_per_core as usize,
        push_buffer_max_bytes: tuning.push_buffer_max_bytes,
        scrub_period: Duration::from_secs(
            args.scrub_period_secs
                .unwrap_or(tuning.scrub_period_secs)
                .max(1),
        ),
        masters: file.masters.iter().map(|m| m.client_addr.clone()).collect(),
        heartbeat_interval: Duration::from_millis(file.master.heartbeat_interval_ms.max(10)),
        bench_skip_read_verify: args.bench_skip_read_verify,
        open_chunks_max: tuning.open_chunks_max,
        data_dir_reserved_bytes: tuning.data_dir_reserved_bytes,
    };
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut wanted = vec![SIGTERM, SIGINT];
    if args.bench_read_verify_signals {
        wanted.extend([SIGUSR1, SIGUSR2]);
    }
    let mut signals = signal_hook::iterator::Signals::new(&wanted)
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    raise_open_files_limit();
    let daemon = Daemon::start(settings, config.key.clone())?;
    let r = &daemon.recovery;
    println!(
        "chunkd ready listen={} http={} node={} cores={} chunks={} recomputed_blocks={} quarantined={} zeroed_bytes={} checked_blocks={}",
        daemon.listen,
        daemon
            .http
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        daemon.node.node_id(),
        daemon.node.cores(),
        r.chunks,
        r.blocks_recomputed,
        r.quarantined,
        r.bytes_zeroed,
        r.unsettled_blocks_checked,
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    for sig in signals.forever() {
        match sig {
            SIGUSR1 | SIGUSR2 => {
                let on = sig == SIGUSR2;
                daemon.node.set_read_verify(on);
                tracing::warn!(on, "benchmark switch: read verification");
            }
            _ => {
                tracing::info!("signal {sig}: shutting down");
                break;
            }
        }
    }
    daemon.stop();
    Ok(())
}

/// Every open chunk holds two descriptors (its data and meta files), so a
/// soft limit of 1024, the usual default, would stop a chunkserver at
/// about 500 chunks: raise it to the hard limit, as servers do.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if limit.current != limit.maximum
        && let Err(e) = setrlimit(Resource::Nofile, raised)
    {
        tracing::warn!(error = %e, "could not raise the open-files limit");
    }
    let now = getrlimit(Resource::Nofile).current;
    tracing::info!(
        open_files_max = now,
        "open-files limit (bounds the chunks kept open, two files each)"
    );
}
