//! `ringfs-bench failover`: how long the master group is unavailable when
//! its leader dies or hands over, and what replication costs (issue 6).
//!
//! On a `ringfs local` cluster (`--voters`, 3 or 5, and 3 chunkservers) under a steady
//! create load (`--writers` tasks, each creating empty files in its own
//! directory, one request at a time, through the client library):
//!
//! - `--kills` rounds: after `--settle-ms` of load, `kill -9` of the leader
//!   (by the PID in cluster.json); the *window* is the time from the kill to
//!   the first create acknowledged after it. The killed master is started
//!   again and the next round waits until it has caught up.
//! - `--handovers` rounds of `admin failover`: the *pause* is the longest
//!   gap between two acknowledged creates from the start of the handover to
//!   one second after it returned.
//! - every acknowledged create is then looked up: a missing one is a lost
//!   acknowledged mutation.
//! - creates/s with `--voters` voters against 1, `--rate-secs` each, on fresh
//!   clusters, `--rate-rounds` times. The writers are dealt to `--clients`
//!   client instances: one keeps at most 64 mutations in flight, so the
//!   rate a group sustains, rather than its commit latency, needs several.
//!
//! Every wait is bounded; only the daemons this bench started are killed,
//! by PID; the temporary directory is removed. See docs/BENCHMARKS.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfs_client::local::{self, NodeKind, UpOptions};
use ringfs_client::masters::RetryPolicy;
use ringfs_client::{Client, ClientOptions, CreateOptions};
use ringfs_wire::config::Config;
use ringfs_wire::msg::MasterRole;

type Res<T> = Result<T, String>;

/// Bound on every wait for the cluster.
const WAIT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Voting masters of the cluster under test (and of the replication
    /// cost's larger group).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    pub voters: u64,
    /// Leader kills.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Graceful handovers.
    #[arg(long, default_value_t = 10)]
    pub handovers: usize,
    /// Concurrent create loops.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Client instances the writers are dealt to, round-robin. One `Client`
    /// keeps at most `STREAMS_MAX` (64) mutations in flight, so a load of
    /// more writers than that needs more clients, as a master serving many
    /// hosts would see.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub clients: u64,
    /// Rounds of the replication-cost measurement (each a fresh 1-voter and
    /// a fresh `--voters` cluster); the median ratio and its spread are
    /// printed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub rate_rounds: u64,
    /// Load before each kill or handover.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Seconds of creates per voter count for the replication cost.
    #[arg(long, default_value_t = 10)]
    pub rate_secs: u64,
    /// Where the cluster's temporary directory goes (needs O_DIRECT).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// Directory of masterd and chunkd (default: next to this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Keep the cluster's directory (logs, data) afterwards, and print it.
    #[arg(long)]
    pub keep_dir: bool,
}

struct Cluster {
    dir: PathBuf,
    config: Option<Config>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = local::down(&self.dir) {
            eprintln!("cleanup: {e}");
        }
    }
}

impl Cluster {
    fn up(work: &Path, name: &str, voters: usize, bin_dir: &Path) -> Res<Cluster> {
        let dir = work.join(name);
        let opts = UpOptions {
            dir: dir.clone(),
            masters: voters,
            chunkservers: 3,
            shadows: 0,
            bin_dir: Some(bin_dir.to_path_buf()),
        };
        // Stopped on drop even if `up` fails half-way.
        let mut c = Cluster { dir, config: None };
        local::up(&opts).map_err(|e| format!("ringfs local up: {e}"))?;
        c.config = Some(Config::load(&c.dir.join(local::CONFIG_FILE)).map_err(|e| e.to_string())?);
        Ok(c)
    }

    fn client(&self) -> Res<Client> {
        Client::new(
            self.config.as_ref().ok_or("no config")?,
            ClientOptions {
                retry: RetryPolicy {
                    deadline: Duration::from_secs(30),
                    ..RetryPolicy::default()
                },
                ..ClientOptions::default()
            },
        )
        .map_err(|e| e.to_string())
    }

    fn master_node(&self, id: u64) -> Res<local::cluster::Node> {
        local::cluster::Cluster::load(&self.dir)
            .map_err(|e| e.to_string())?
            .nodes
            .into_iter()
            .find(|n| n.kind == NodeKind::Master && n.id == id)
            .ok_or_else(|| format!("no master {id}"))
    }

    fn restart(&self, id: u64, bin_dir: &Path) -> Res<()> {
        let mut cluster = local::cluster::Cluster::load(&self.dir).map_err(|e| e.to_string())?;
        let config = cluster.config.display().to_string();
        let n = cluster
            .nodes
            .iter_mut()
            .find(|n| n.kind == NodeKind::Master && n.id == id)
            .ok_or_else(|| format!("no master {id}"))?;
        let args: Vec<String> = vec![
            "--config".into(),
            config,
            "--id".into(),
            id.to_string(),
            "--data".into(),
            n.data_dir.display().to_string(),
            "--threads".into(),
            "2".into(),
        ];
        n.pid = local::process::spawn(&bin_dir.join("masterd"), &args, &n.log_file)
            .map_err(|e| format!("restarting master {id}: {e}"))?;
        cluster.save().map_err(|e| e.to_string())
    }
}

/// The leader and every master's (role, applied index), as the leader says.
async fn leader(client: &Client) -> Res<(u64, Vec<(u64, MasterRole, u64)>)> {
    let s = client.admin_status().await.map_err(|e| e.to_string())?;
    let masters = s.masters.unwrap_or_default();
    let leader = masters
        .iter()
        .find(|m| m.role == MasterRole::Leader)
        .map(|m| m.id)
        .ok_or("no leader in the status")?;
    Ok((
        leader,
        masters
            .iter()
            .map(|m| (m.id, m.role, m.applied_index))
            .collect(),
    ))
}

struct Load {
    /// (sent, acknowledged, path) of every acknowledged create.
    acks: Arc<Mutex<Vec<(Instant, Instant, String)>>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Bound on creates per writer (memory of the history).
const CREATES_PER_WRITER_MAX: u64 = 1_000_000;

impl Load {
    /// `writers` create loops, writer `w` on `clients[w % clients.len()]`.
    fn start(rt: &tokio::runtime::Runtime, clients: &[Arc<Client>], writers: usize) -> Res<Load> {
        assert!(!clients.is_empty(), "at least one client");
        for w in 0..writers {
            rt.block_on(clients[0].mkdir(&format!("/bench/w{w}"), true))
                .map_err(|e| e.to_string())?;
        }
        let acks: Arc<Mutex<Vec<(Instant, Instant, String)>>> = Arc::default();
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let tasks = (0..writers)
            .map(|w| {
                let (client, acks, failures, stop) = (
                    clients[w % clients.len()].clone(),
                    acks.clone(),
                    failures.clone(),
                    stop.clone(),
                );
                rt.spawn(async move {
                    for i in 0..CREATES_PER_WRITER_MAX {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let path = format!("/bench/w{w}/f{i}");
                        let o = CreateOptions {
                            exclusive: true,
                            ..CreateOptions::default()
                        };
                        let sent = Instant::now();
                        match client.create(&path, o).await {
                            Ok(_) => acks.lock().unwrap().push((sent, Instant::now(), path)),
                            Err(e) => failures.lock().unwrap().push(format!("{path}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Ok(Load {
            acks,
            failures,
            stop,
            tasks,
        })
    }

    fn count(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// The first acknowledgement of a create sent after `t`: one sent
    /// before may have been committed before `t`.
    fn first_after(&self, t: Instant) -> Option<Duration> {
        let acks = self.acks.lock().unwrap();
        acks.iter()
            .filter(|(sent, _, _)| *sent > t)
            .map(|(_, a, _)| *a - t)
            .min()
    }

    /// The longest gap between acknowledgements within `[from, to]`.
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let acks = self.acks.lock().unwrap();
        let mut times: Vec<Instant> = acks
            .iter()
            .map(|(_, a, _)| *a)
            .filter(|a| *a >= from && *a <= to)
            .collect();
        times.sort();
        let mut gap = times.first().map_or(to - from, |f| *f - from);
        for w in times.windows(2) {
            gap = gap.max(w[1] - w[0]);
        }
        gap
    }

    #[allow(clippy::type_complexity)]
    fn stop(self, rt: &tokio::runtime::Runtime) -> (Vec<(Instant, Instant, String)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = rt.block_on(t);
        }
        let acks = std::mem::take(&mut *self.acks.lock().unwrap());
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (acks, failures)
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) -> Res<()> {
    let deadline = Instant::now() + WAIT;
    while !f() {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median, min and max of a non-empty list (the upper median of an even one).
fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    assert!(!v.is_empty(), "at least one round");
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn percentiles(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "n={} p50={:.0} ms p99={:.0} ms max={:.0} ms",
        v.len(),
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    )
}

async fn lost(client: &Client, acks: &[(Instant, Instant, String)], writers: usize) -> Res<usize> {
    let mut present = BTreeSet::new();
    for w in 0..writers {
        let dir = format!("/bench/w{w}");
        for e in client
            .list(&dir, 10_000_000)
            .await
            .map_err(|e| e.to_string())?
        {
            present.insert(format!("{dir}/{}", e.name.unwrap_or_default()));
        }
    }
    Ok(acks.iter().filter(|(_, _, p)| !present.contains(p)).count())
}

fn creates_per_sec(
    rt: &tokio::runtime::Runtime,
    work: &Path,
    voters: usize,
    round: u64,
    args: &Args,
    bin_dir: &Path,
) -> Res<f64> {
    // A fresh directory each time: `ringfs local up` resumes an old one.
    let cluster = Cluster::up(work, &format!("rate-{round}-{voters}"), voters, bin_dir)?;
    let clients = (0..args.clients)
        .map(|_| cluster.client().map(Arc::new))
        .collect::<Res<Vec<_>>>()?;
    let load = Load::start(rt, &clients, args.writers)?;
    std::thread::sleep(Duration::from_secs(1));
    let (n0, t0) = (load.count(), Instant::now());
    std::thread::sleep(Duration::from_secs(args.rate_secs));
    let (n1, t1) = (load.count(), Instant::now());
    let (_, failures) = load.stop(rt);
    if !failures.is_empty() {
        return Err(format!(
            "creates failed: {:?}",
            &failures[..failures.len().min(3)]
        ));
    }
    Ok((n1 - n0) as f64 / (t1 - t0).as_secs_f64())
}

pub fn run(args: Args) -> Res<()> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .ok_or("no binary dir")?
            .to_path_buf(),
    };
    let work = tempfile::Builder::new()
        .prefix("ringfs-bench-failover-")
        .disable_cleanup(args.keep_dir)
        .tempdir_in(&args.dir)
        .map_err(|e| e.to_string())?;
    if args.keep_dir {
        println!("cluster directory (kept): {}", work.path().display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    if args.voters.is_multiple_of(2) {
        return Err(format!("--voters {}: an odd number, 3 or 5", args.voters));
    }
    let voters = args.voters as usize;
    let cluster = Cluster::up(work.path(), "ha", voters, &bin_dir)?;
    let clients = (0..args.clients)
        .map(|_| cluster.client().map(Arc::new))
        .collect::<Res<Vec<_>>>()?;
    let client = clients[0].clone();
    let load = Load::start(&rt, &clients, args.writers)?;
    let mut windows = Vec::new();
    for round in 0..args.kills {
        std::thread::sleep(Duration::from_millis(args.settle_ms));
        let (leader_id, _) = rt.block_on(leader(&client))?;
        let pid = cluster.master_node(leader_id)?.pid;
        let killed_at = std::time::SystemTime::now();
        let killed = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).ok_or("bad pid")?,
            rustix::process::Signal::KILL,
        )
        .map_err(|e| format!("kill {pid}: {e}"))?;
        wait_until("a create after the kill", || {
            load.first_after(killed).is_some()
        })?;
        let window = load.first_after(killed).expect("waited for");
        windows.push(ms(window));
        // Unix time of the kill, to find it in the masters' logs (UTC).
        let killed_unix_secs = killed_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        eprintln!(
            "kill {round}: master {leader_id} at unix {killed_unix_secs:.3}, window {:.0} ms",
            ms(window)
        );
        // Its listening ports are free once the process is gone.
        let node = cluster.master_node(leader_id)?;
        wait_until("the killed master to exit", || {
            local::process::reap();
            !local::process::is_ours(pid, "masterd", &node.data_dir)
        })?;
        cluster.restart(leader_id, &bin_dir)?;
        let mut seen = String::new();
        let caught_up = wait_until("the killed master to catch up", || {
            let status = rt.block_on(leader(&client));
            let ok = status.as_ref().is_ok_and(|(_, ms)| {
                let top = ms.iter().map(|m| m.2).max().unwrap_or(0);
                ms.iter()
                    .find(|m| m.0 == leader_id)
                    .is_some_and(|m| m.1 != MasterRole::Unreachable && m.2 + 1000 >= top)
            });
            seen = format!("{status:?}");
            ok
        });
        caught_up.map_err(|e| {
            let log = cluster
                .master_node(leader_id)
                .map(|n| local::process::log_tail(&n.log_file))
                .unwrap_or_default();
            format!("{e}; last status: {seen}; master {leader_id} log:\n{log}")
        })?;
    }
    let mut pauses = Vec::new();
    let mut calls = Vec::new();
    for round in 0..args.handovers {
        std::thread::sleep(Duration::from_millis(args.settle_ms));
        let started = Instant::now();
        rt.block_on(client.admin_failover(0))
            .map_err(|e| format!("failover: {e}"))?;
        let returned = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let pause = load.longest_gap(started, returned + Duration::from_secs(1));
        pauses.push(ms(pause));
        calls.push(ms(returned - started));
        eprintln!(
            "handover {round}: pause {:.0} ms (call {:.0} ms)",
            ms(pause),
            ms(returned - started)
        );
    }
    let (acks, failures) = load.stop(&rt);
    let lost = rt.block_on(lost(&client, &acks, args.writers))?;
    drop((client, clients));
    drop(cluster);

    // Fresh clusters per round, in the same order each round, so a drift
    // of the host's speed within a round shows in that round's ratio only.
    let mut rates = Vec::new();
    for round in 0..args.rate_rounds {
        let one = creates_per_sec(&rt, work.path(), 1, round, &args, &bin_dir)?;
        let many = creates_per_sec(&rt, work.path(), voters, round, &args, &bin_dir)?;
        eprintln!(
            "rate round {round}: 1 voter {one:.0}, {voters} voters {many:.0} creates/s, ratio {:.2}",
            many / one
        );
        rates.push((one, many));
    }

    println!(
        "failover benchmark ({voters} voters; {} writers on {} clients creating empty files)",
        args.writers, args.clients
    );
    println!(
        "  crash failover window (kill -9 of the leader to the next acknowledged create): {}",
        percentiles(windows)
    );
    println!(
        "  graceful handover pause (longest gap between acknowledged creates): {}",
        percentiles(pauses)
    );
    println!("  graceful handover call: {}", percentiles(calls));
    println!(
        "  acknowledged creates: {}, lost: {lost}, failed requests: {}",
        acks.len(),
        failures.len()
    );
    for f in failures.iter().take(5) {
        println!("    failed: {f}");
    }
    let spread = |v: Vec<f64>| {
        let (mid, lo, hi) = median_spread(v);
        format!("{mid:.2} [{lo:.2}..{hi:.2}]")
    };
    let whole = |v: Vec<f64>| {
        let (mid, lo, hi) = median_spread(v);
        format!("{mid:.0} [{lo:.0}..{hi:.0}]")
    };
    println!(
        "  creates/s over {} rounds, median [min..max]: 1 voter {}, {voters} voters {}, ratio {voters}/1 {}",
        rates.len(),
        whole(rates.iter().map(|r| r.0).collect()),
        whole(rates.iter().map(|r| r.1).collect()),
        spread(rates.iter().map(|r| r.1 / r.0).collect()),
    );
    if lost > 0 {
        return Err(format!("{lost} acknowledged creates lost"));
    }
    Ok(())
}
