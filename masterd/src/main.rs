//! `masterd --config ringfs.toml --id N --data DIR` (DESIGN §7). Prints one
//! `masterd ready ...` line on stdout once it serves; exits 0 on
//! SIGTERM/SIGINT, 1 on a start-up error, 2 on bad usage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use masterd::node::Master;
use ringfs_wire::config::Config;
use tokio::net::TcpListener;

/// Longest start-up wait for a leader before saying ready anyway.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(name = "masterd", version, about = "ringfs metadata master")]
struct Args {
    /// Cluster config file.
    #[arg(long, env = "RINGFS_CONFIG")]
    config: PathBuf,
    /// This master's id in the config.
    #[arg(long)]
    id: u64,
    /// Directory for the op log and checkpoints.
    #[arg(long)]
    data: PathBuf,
    /// Override the config's client_addr for the listener (e.g. port 0 in tests).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override the config's http_addr.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Override the config's peer_addr for the listener (the address other
    /// masters dial stays the config's).
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// Runtime worker threads (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGFS_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
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
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if args.threads > 0 {
        runtime.worker_threads(args.threads);
    }
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("masterd: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("masterd: {e}");
            ExitCode::from(1)
        }
    }
}

async fn bind(addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

async fn run(args: Args) -> Result<(), String> {
    let config = Arc::new(Config::load(&args.config).map_err(|e| e.to_string())?);
    let me = config
        .master(args.id)
        .ok_or_else(|| format!("master id {} is not in {}", args.id, args.config.display()))?;
    let listen = args
        .listen
        .map_or_else(|| me.client_addr.clone(), |a| a.to_string());
    let http = args
        .http
        .map_or_else(|| me.http_addr.clone(), |a| a.to_string());
    let peer = args
        .peer_listen
        .map_or_else(|| me.peer_addr.clone(), |a| a.to_string());
    // Bind before the (possibly long) log replay, so a port conflict fails fast.
    let listener = bind(&listen).await?;
    let http_listener = bind(&http).await?;
    let peer_listener = bind(&peer).await?;
    let master = Master::start(config.clone(), args.id, &args.data)
        .await
        .map_err(|e| e.to_string())?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let http_local = http_listener.local_addr().map_err(|e| e.to_string())?;
    let peer_local = peer_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(masterd::peer::accept_loop(master.clone(), peer_listener));
    tokio::spawn(masterd::metrics::watch_raft(master.clone()));
    tokio::spawn(masterd::server::accept_loop(master.clone(), listener));
    tokio::spawn(masterd::http::serve(master.clone(), http_listener));
    tokio::spawn(masterd::duties::run(master.clone()));
    tokio::spawn(masterd::statemachine::checkpoint_by_ops(
        master.raft.clone(),
        master.shared.clone(),
        master.tuning().checkpoint_every_ops,
        master.tuning().log_kept_behind_checkpoint_records,
    ));
    // Say "ready" once a leader is known (for a single voter, itself; a
    // shadow, once the leader has added it), so
    // the first request is not refused with NotLeader, and, on the leader,
    // once its whole log is applied: the committed index is persisted
    // lazily, so after a crash the state first replays only up to an older
    // one, and reads would miss mutations acknowledged before the crash.
    // A leader's log is committed in full once its term's first entry is.
    // Bounded.
    let mut metrics = master.raft.metrics();
    let _ = tokio::time::timeout(
        LEADER_WAIT,
        metrics.wait_for(|m| {
            let leading = m.current_leader == Some(m.id);
            let applied = m.last_applied.map(|l| l.index);
            m.current_leader.is_some() && (!leading || applied >= m.last_log_index)
        }),
    )
    .await;
    let (files, dirs) = {
        let s = master.shared.read();
        (s.ns.files, s.ns.directories)
    };
    println!(
        "masterd ready id={} listen={local} http={http_local} peer={peer_local} term={} applied={} files={files} dirs={dirs}",
        master.id,
        master.epoch(),
        master
            .shared
            .applied_index
            .load(std::sync::atomic::Ordering::Acquire),
    );
    wait_for_stop().await;
    tracing::info!("stopping");
    let _ = master.raft.shutdown().await;
    Ok(())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still stops on SIGTERM's default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
