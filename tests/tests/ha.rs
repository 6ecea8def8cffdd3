//! High availability of the master group (issue 6), on real clusters
//! started by `ringfs local up` (3 or 5 voters, shadows, 3 chunkservers,
//! real processes on loopback): a leader killed under load, a minority and
//! a majority lost, a paused leader fenced, a graceful handover under load,
//! a shadow promoted, every daemon killed at once, two of five voters lost
//! and handovers among five, the longer log taking over from a candidate
//! behind it, a follower caught up by a checkpoint, read-your-writes on a
//! shadow, voters and shadows removed and added. Every daemon is stopped
//! by PID when a test ends, passing or failing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfs_client::local::{self, NodeKind, UpOptions};
use ringfs_client::masters::RetryPolicy;
use ringfs_client::{Client, ClientOptions, CreateOptions};
use ringfs_tests::{binary, http_get, metric, pattern, runtime, sha256, wait_for};
use ringfs_wire::config::Config;
use ringfs_wire::msg::{Body, ErrorCode, PeerKind, Stat};
use rustix::process::{Pid, Signal, kill_process};

/// Bound on every wait here.
const WAIT: Duration = Duration::from_secs(30);

/// A local cluster, stopped (every PID in its cluster.json) on drop.
struct Ha {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: Option<Config>,
    masters: usize,
    shadows: usize,
}

impl Drop for Ha {
    fn drop(&mut self) {
        if let Err(e) = local::down(&self.dir) {
            eprintln!("cleanup: {e}");
        }
    }
}

impl Ha {
    fn up(masters: usize, shadows: usize) -> Ha {
        let tmp = tempfile::Builder::new()
            .prefix("ringfs-ha-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().join("cluster");
        let opts = UpOptions {
            dir: dir.clone(),
            masters,
            chunkservers: 3,
            shadows,
            bin_dir: binary("masterd").parent().map(Path::to_path_buf),
        };
        // Guard first: a failed `up` may leave daemons behind.
        let mut ha = Ha {
            _tmp: tmp,
            config: None,
            dir,
            masters,
            shadows,
        };
        // Free ports are picked by binding and releasing, so another test
        // may take one before a daemon binds it: start afresh, a few times.
        let mut started = local::up(&opts);
        for _ in 0..3 {
            match &started {
                Err(e) if e.to_string().contains("exited during start-up") => {
                    eprintln!("up failed, trying again: {e}");
                    let _ = local::down(&ha.dir);
                    let _ = std::fs::remove_dir_all(&ha.dir);
                    started = local::up(&opts);
                }
                _ => break,
            }
        }
        started.unwrap_or_else(|e| panic!("up: {e}"));
        ha.config = Some(Config::load(&ha.dir.join(local::CONFIG_FILE)).unwrap());
        ha
    }

    fn config(&self) -> &Config {
        self.config.as_ref().unwrap()
    }

    /// `ringfs local up` on this directory again: every daemon is started
    /// from its files (after `down` or a kill of them all).
    fn resume(&self) {
        let opts = UpOptions {
            dir: self.dir.clone(),
            masters: self.masters,
            chunkservers: 3,
            shadows: self.shadows,
            bin_dir: binary("masterd").parent().map(Path::to_path_buf),
        };
        // The ports are the config's: another test on this machine may have
        // taken one meanwhile (free ports are picked by binding and releasing).
        // `up` resumes again after a failed resume; a few tries, bounded.
        let mut resumed = local::up(&opts);
        for _ in 0..3 {
            match &resumed {
                Err(e) if e.to_string().contains("exited during start-up") => {
                    eprintln!("resume failed, trying again: {e}");
                    std::thread::sleep(Duration::from_millis(500));
                    resumed = local::up(&opts);
                }
                _ => break,
            }
        }
        let resumed = resumed.unwrap_or_else(|e| panic!("resume: {e}"));
        assert!(resumed.resumed);
    }

    /// Stops the cluster, changes the tuning in its config file and starts
    /// it again with it.
    fn retune(&mut self, change: impl FnOnce(&mut ringfs_wire::config::MasterTuning)) {
        local::down(&self.dir).unwrap();
        let mut file = self.config().file.clone();
        change(&mut file.master);
        std::fs::write(self.dir.join(local::CONFIG_FILE), file.to_toml()).unwrap();
        self.config = Some(Config::load(&self.dir.join(local::CONFIG_FILE)).unwrap());
        self.resume();
    }

    fn cluster(&self) -> local::cluster::Cluster {
        local::cluster::Cluster::load(&self.dir).unwrap()
    }

    fn master(&self, id: u64) -> local::cluster::Node {
        self.cluster()
            .nodes
            .into_iter()
            .find(|n| n.kind == NodeKind::Master && n.id == id)
            .unwrap()
    }

    fn client(&self, retry: RetryPolicy) -> Client {
        Client::new(
            self.config(),
            ClientOptions {
                retry,
                ..ClientOptions::default()
            },
        )
        .unwrap()
    }

    /// `GET /status` of master `id`, or `None` when it does not answer.
    fn status(&self, id: u64) -> Option<serde_json::Value> {
        serde_json::from_str(&http_get(&self.master(id).http_addr, "/status")?).ok()
    }

    /// Waits until `leader` lists `id` (a configured shadow) as a learner.
    fn wait_for_learner(&self, leader: u64, id: u64) {
        wait(&format!("master {id} to join as a learner"), || {
            let s = self.status(leader)?;
            s["learners"].as_array()?.contains(&id.into()).then_some(())
        });
    }

    fn metric(&self, id: u64, name: &str) -> u64 {
        metric(&self.master(id).http_addr, name)
    }

    /// The leader as the answering masters among `ids` agree on it.
    fn leader_among(&self, ids: &[u64]) -> u64 {
        wait(&format!("a leader among {ids:?}"), || {
            ids.iter().find_map(|&id| {
                let s = self.status(id)?;
                (s["role"] == "leader").then_some(id)
            })
        })
    }

    fn signal(&self, id: u64, signal: Signal) {
        let pid = self.master(id).pid;
        kill_process(Pid::from_raw(pid as i32).unwrap(), signal).unwrap();
    }

    /// Waits for `f` on master `id`; on a timeout, the panic shows the
    /// tail of that master's log.
    fn wait_on<T>(&self, id: u64, what: &str, mut f: impl FnMut(&Ha) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if Instant::now() >= deadline {
                let log = local::process::log_tail(&self.master(id).log_file);
                panic!("timed out waiting for {what}; master {id} log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` of master `id`; returns once it is gone.
    fn kill_master(&self, id: u64) {
        let m = self.master(id);
        self.signal(id, Signal::KILL);
        wait("the killed master to exit", || {
            local::process::reap();
            (!local::process::is_ours(m.pid, "masterd", &m.data_dir)).then_some(())
        });
    }

    /// Starts master `id` again (after a kill) and records its new PID.
    fn restart_master(&self, id: u64) {
        self.restart_master_with(id, &cluster_config(&self.dir));
    }

    /// Like `restart_master`, with the config file at `config`.
    fn restart_master_with(&self, id: u64, config: &str) {
        let mut cluster = self.cluster();
        let n = cluster
            .nodes
            .iter_mut()
            .find(|n| n.kind == NodeKind::Master && n.id == id)
            .unwrap();
        let args: Vec<String> = [
            "--config",
            config,
            "--id",
            &id.to_string(),
            "--data",
            &n.data_dir.display().to_string(),
            "--threads",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        n.pid = local::process::spawn(&binary("masterd"), &args, &n.log_file).unwrap();
        cluster.save().unwrap();
    }
}

fn cluster_config(dir: &Path) -> String {
    dir.join(local::CONFIG_FILE).display().to_string()
}

fn wait<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for(WAIT, what, f)
}

fn patient() -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_secs(30),
        ..RetryPolicy::default()
    }
}

/// What the load acknowledged: path → (sha256, bytes).
type History = Arc<Mutex<BTreeMap<String, (String, usize)>>>;

/// Writers creating and writing files until `stop`, recording every
/// acknowledged file and every failure, with the time of each ack.
struct Load {
    history: History,
    failures: Arc<Mutex<Vec<String>>>,
    acks: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Load {
    fn start(
        rt: &tokio::runtime::Runtime,
        client: &Arc<Client>,
        writers: usize,
    ) -> (Load, Vec<tokio::task::JoinHandle<()>>) {
        let load = Load {
            history: History::default(),
            failures: Arc::default(),
            acks: Arc::default(),
            stop: Arc::default(),
        };
        rt.block_on(client.mkdir("/load", true)).unwrap();
        let tasks = (0..writers)
            .map(|w| {
                let (client, history, failures, acks, stop) = (
                    client.clone(),
                    load.history.clone(),
                    load.failures.clone(),
                    load.acks.clone(),
                    load.stop.clone(),
                );
                rt.spawn(async move {
                    // Bounded: a few hundred files per writer at most.
                    for i in 0..400u64 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        let path = format!("/load/w{w}-{i}");
                        let data =
                            pattern(w as u64 * 1000 + i, 1000 + (i as usize * 7919) % 70_000);
                        let result = async {
                            let mut f = client.writer(&path, CreateOptions::default()).await?;
                            f.write(&data).await?;
                            f.close().await
                        }
                        .await;
                        match result {
                            Ok(_) => {
                                acks.lock().unwrap().push(Instant::now());
                                history
                                    .lock()
                                    .unwrap()
                                    .insert(path, (sha256(&data), data.len()));
                            }
                            Err(e) => failures.lock().unwrap().push(format!("{path}: {e}")),
                        }
                    }
                })
            })
            .collect();
        (load, tasks)
    }

    fn acked(&self) -> usize {
        self.history.lock().unwrap().len()
    }

    /// Waits until `more` writes beyond those acknowledged so far are.
    fn wait_for_more(&self, more: usize, what: &str) {
        let before = self.acked();
        wait(what, || (self.acked() >= before + more).then_some(()));
    }

    /// Stops the writers, asserts that no request of theirs failed
    /// (`during` says across what), and checks every acknowledged file.
    fn finish_without_failures(
        &self,
        rt: &tokio::runtime::Runtime,
        tasks: Vec<tokio::task::JoinHandle<()>>,
        client: &Client,
        during: &str,
    ) {
        self.finish(rt, tasks);
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "requests failed {during}: {failures:?}"
        );
        self.check(rt, client);
    }

    fn finish(&self, rt: &tokio::runtime::Runtime, tasks: Vec<tokio::task::JoinHandle<()>>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            rt.block_on(t).unwrap();
        }
    }

    /// The first acknowledgement after `t`: the end of the unavailability.
    fn first_ack_after(&self, t: Instant) -> Option<Duration> {
        self.acks
            .lock()
            .unwrap()
            .iter()
            .filter(|&&a| a > t)
            .min()
            .map(|&a| a - t)
    }

    /// Every acknowledged file is there, complete and intact.
    fn check(&self, rt: &tokio::runtime::Runtime, client: &Client) {
        let history = self.history.lock().unwrap().clone();
        assert!(!history.is_empty());
        for (path, (sha, len)) in &history {
            let data = rt.block_on(async {
                let r = client.reader(path).await?;
                r.read_at(0, r.len()).await
            });
            let data = data.unwrap_or_else(|e| panic!("{path} acknowledged but unreadable: {e}"));
            assert_eq!(data.len(), *len, "{path}");
            assert_eq!(
                &sha256(&data),
                sha,
                "{path} differs from what was acknowledged"
            );
        }
    }
}

#[test]
fn leader_killed_under_load_loses_no_acknowledged_write_and_comes_back() {
    let ha = Ha::up(3, 0);
    let rt = runtime();
    let client = Arc::new(ha.client(patient()));
    let (load, tasks) = Load::start(&rt, &client, 4);
    wait("load to start", || (load.acked() >= 20).then_some(()));
    let leader = ha.leader_among(&[1, 2, 3]);
    ha.signal(leader, Signal::KILL);
    let killed = Instant::now();
    let before = load.acked();
    wait("writes to go on after the kill", || {
        (load.acked() >= before + 40).then_some(())
    });
    load.finish(&rt, tasks);
    let window = load.first_ack_after(killed).unwrap();
    eprintln!("unavailability after the leader kill: {window:?}");
    let failures = load.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "client requests failed across the failover: {failures:?}"
    );
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let new_leader = ha.leader_among(&others);
    assert_ne!(new_leader, leader);
    load.check(&rt, &client);
    assert!(ha.metric(new_leader, "ringfs_master_elections_total") >= 1);

    // The killed master comes back as a follower and catches up.
    ha.restart_master(leader);
    let commit = ha.status(new_leader).unwrap()["commit_index"]
        .as_u64()
        .unwrap();
    wait("the restarted master to catch up", || {
        let s = ha.status(leader)?;
        (s["role"] == "follower" && s["applied_index"].as_u64()? >= commit).then_some(())
    });
}

/// A leader dies with its last entry on one follower only, and the other
/// follower, restarted without that entry, campaigns first: the follower
/// with the entry takes over at once (`masterd/src/election.rs`) rather
/// than refusing and waiting for its own timer. The follower ahead runs
/// with long timeouts (its own config file) so that the order is plain: a
/// 2.5 s lease and its own campaign 4.5-5 s after the leader's last
/// heartbeat; the one behind is started 2.6 s after the kill and, with the
/// default timeouts, campaigns about half a second after it starts.
#[test]
fn the_follower_with_the_longer_log_takes_over_from_a_candidate_behind() {
    let ha = Ha::up(3, 0);
    let rt = runtime();
    let client = ha.client(patient());
    rt.block_on(client.mkdir("/everywhere", false)).unwrap();
    let leader = ha.leader_among(&[1, 2, 3]);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let (ahead, behind) = (others[0], others[1]);

    let mut slow = ha.config().file.clone();
    slow.master.election_timeout_min_ms = 2000;
    slow.master.election_timeout_max_ms = 2500;
    let slow_config = ha.dir.join("slow-elections.toml");
    std::fs::write(&slow_config, slow.to_toml()).unwrap();
    ha.kill_master(ahead);
    ha.restart_master_with(ahead, &slow_config.display().to_string());
    let commit = ha.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    ha.wait_on(ahead, "the restarted follower to catch up", |ha| {
        let s = ha.status(ahead)?;
        (s["role"] == "follower" && s["applied_index"].as_u64()? >= commit).then_some(())
    });

    ha.kill_master(behind);
    rt.block_on(client.mkdir("/ahead-only", false)).unwrap();
    ha.kill_master(leader);
    std::thread::sleep(Duration::from_millis(2600));
    ha.restart_master(behind);

    let new = ha.leader_among(&[ahead, behind]);
    assert_eq!(new, ahead, "only the follower with every entry can win");
    assert_eq!(
        ha.metric(ahead, "ringfs_master_election_takeovers_total"),
        1,
        "the follower ahead campaigned on its own timer, not on the request"
    );
    rt.block_on(client.stat("/ahead-only")).unwrap();
    rt.block_on(client.mkdir("/after", false)).unwrap();
    ha.restart_master(leader);
    wait("the old leader to follow", || {
        let s = ha.status(leader)?;
        (s["role"] == "follower").then_some(())
    });
}

/// A follower down while the leader checkpoints and purges its log past
/// the follower's last entry catches up from a checkpoint transfer
/// (openraft's `install_snapshot` of the checkpoint file), not the log.
#[test]
fn a_follower_behind_the_purged_log_catches_up_from_a_checkpoint() {
    let mut ha = Ha::up(3, 0);
    ha.retune(|t| {
        t.checkpoint_every_records = 50;
        t.log_kept_behind_checkpoint_records = 0;
    });
    let rt = runtime();
    let client = ha.client(patient());
    rt.block_on(client.mkdir("/d", false)).unwrap();
    let leader = ha.leader_among(&[1, 2, 3]);
    let behind = if leader == 1 { 2 } else { 1 };
    ha.kill_master(behind);
    let dirs = 300;
    rt.block_on(async {
        for i in 0..dirs {
            client.mkdir(&format!("/d/{i}"), false).await?;
        }
        Ok::<_, ringfs_client::Error>(())
    })
    .unwrap();
    assert!(ha.metric(leader, "ringfs_master_checkpoints_total") >= 2);

    ha.restart_master(behind);
    let (commit, want) = {
        let s = ha.status(leader).unwrap();
        (
            s["commit_index"].as_u64().unwrap(),
            s["directories"].clone(),
        )
    };
    ha.wait_on(behind, "the follower to catch up", |ha| {
        let s = ha.status(behind)?;
        (s["role"] == "follower" && s["applied_index"].as_u64()? >= commit).then_some(())
    });
    // One or more: a transfer that started while the follower was down
    // is retried with the checkpoint it started with, then a newer one.
    assert!(
        ha.metric(behind, "ringfs_master_checkpoints_received_total") >= 1,
        "caught up without a checkpoint transfer"
    );
    assert_eq!(ha.status(behind).unwrap()["directories"], want);
    // It votes and applies like any follower afterwards.
    rt.block_on(client.mkdir("/after", false)).unwrap();
    ha.kill_master(leader);
    let new = ha.leader_among(&[1, 2, 3]);
    assert_ne!(new, leader);
    rt.block_on(client.stat("/d/299")).unwrap();
    rt.block_on(client.stat("/after")).unwrap();
}

fn raw_stat(ha: &Ha, id: u64, path: &str) -> Body {
    raw_stat_at(ha, id, path, 0)
}

/// A `Stat` straight to master `id`, not answered from a state older than
/// `min_applied_index`.
fn raw_stat_at(ha: &Ha, id: u64, path: &str, min_applied_index: u64) -> Body {
    let mut conn = ringfs_client::conn::Conn::connect(
        &ha.master(id).addr,
        &ha.config().key,
        &ha.config().file.cluster_id,
        PeerKind::Client,
        Duration::from_secs(10),
    )
    .unwrap();
    conn.call(
        &Body::Stat(Box::new(Stat {
            path: Some(path.into()),
            min_applied_index,
        })),
        &[],
    )
    .unwrap()
    .body
}

/// A `Mkdir` straight to one master's client port, with no redirect.
fn raw_mkdir(conn: &mut ringfs_client::conn::Conn, path: &str) -> ringfs_client::conn::Response {
    conn.call(
        &Body::Mkdir(Box::new(ringfs_wire::msg::Mkdir {
            path: Some(path.into()),
            ..Default::default()
        })),
        &[],
    )
    .unwrap()
}

#[test]
fn a_minority_down_is_survived_a_majority_down_refuses_writes_and_shadows_still_read() {
    let ha = Ha::up(3, 1);
    let rt = runtime();
    let client = ha.client(patient());
    rt.block_on(client.mkdir("/before", false)).unwrap();
    let leader = ha.leader_among(&[1, 2, 3]);
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();

    ha.signal(followers[0], Signal::KILL);
    rt.block_on(client.mkdir("/one-down", false)).unwrap();

    ha.signal(followers[1], Signal::KILL);
    let hasty = ha.client(RetryPolicy {
        deadline: Duration::from_secs(4),
        attempt_timeout: Duration::from_secs(4),
        ..RetryPolicy::default()
    });
    let asked = Instant::now();
    let refused = rt.block_on(hasty.mkdir("/two-down", false));
    let took = asked.elapsed();
    match refused {
        Err(e) => assert!(e.is_unavailable(), "two of three down: {e}"),
        Ok(_) => panic!("a mutation committed with two of three voters down"),
    }
    assert!(took < Duration::from_secs(20), "the refusal took {took:?}");

    // The shadow still answers reads, saying how far behind it may be.
    match raw_stat(&ha, 4, "/one-down") {
        Body::AttrReply(r) => {
            let stamp = r.stamp.unwrap();
            assert_eq!(stamp.answered_by, 4);
            assert!(stamp.applied_index > 0);
            assert!(stamp.leader_commit_index >= stamp.applied_index);
        }
        other => panic!("the shadow refused a read: {other:?}"),
    }
    // ... and refuses writes, naming the leader.
    let mut conn = ringfs_client::conn::Conn::connect(
        &ha.master(4).addr,
        &ha.config().key,
        &ha.config().file.cluster_id,
        PeerKind::Client,
        Duration::from_secs(10),
    )
    .unwrap();
    let reply = raw_mkdir(&mut conn, "/from-shadow");
    match reply.body {
        Body::ErrorReply(e) => {
            assert_eq!(e.code, ErrorCode::ReadOnlyShadow, "{e:?}");
            assert_eq!(e.leader_hint, leader);
        }
        other => panic!("a shadow took a write: {other:?}"),
    }
}

#[test]
fn a_paused_leader_cannot_commit_or_serve_stale_reads_once_replaced() {
    let ha = Ha::up(3, 0);
    let rt = runtime();
    let client = ha.client(patient());
    rt.block_on(client.mkdir("/before", false)).unwrap();
    let old = ha.leader_among(&[1, 2, 3]);
    ha.signal(old, Signal::STOP);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != old).collect();
    let new = ha.leader_among(&others);
    rt.block_on(client.mkdir("/after", false)).unwrap();
    let new_term = ha.status(new).unwrap()["term"].as_u64().unwrap();

    // Requests queued at the paused leader's client port while it sleeps.
    let old_addr = ha.master(old).addr;
    let key = ha.config().key.clone();
    let cluster_id = ha.config().file.cluster_id.clone();
    let connect = move || {
        ringfs_client::conn::Conn::connect(
            &old_addr,
            &key,
            &cluster_id,
            PeerKind::Client,
            Duration::from_secs(30),
        )
    };
    // The handshake needs the old leader awake: resume it, then race it
    // with requests before it hears of the new term.
    ha.signal(old, Signal::CONT);
    let mut mkdir_conn = connect().unwrap();
    let write = raw_mkdir(&mut mkdir_conn, "/from-old-leader");
    match write.body {
        Body::ErrorReply(e) => assert!(
            matches!(e.code, ErrorCode::NotLeader | ErrorCode::Unavailable),
            "{e:?}"
        ),
        other => panic!("the old leader acknowledged a write: {other:?}"),
    }
    // A read there either is redirected or sees the new leader's write.
    match raw_stat(&ha, old, "/after") {
        Body::AttrReply(_) => {}
        Body::ErrorReply(e) => assert!(
            matches!(e.code, ErrorCode::NotLeader | ErrorCode::Unavailable),
            "a stale read on the old leader: {e:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        rt.block_on(client.stat("/from-old-leader")),
        Err(ringfs_client::Error::NotFound { .. })
    ));
    wait("the old leader to step down", || {
        let s = ha.status(old)?;
        (s["role"] == "follower" && s["term"].as_u64()? >= new_term).then_some(())
    });
    // Every chunkserver fences commands below the new term.
    for cs in ha.cluster().chunkservers() {
        let epoch = wait("a chunkserver to see the new epoch", || {
            let v: serde_json::Value =
                serde_json::from_str(&http_get(&cs.http_addr, "/status")?).ok()?;
            let e = v["highest_epoch"].as_u64()?;
            (e >= new_term).then_some(e)
        });
        assert!(epoch >= new_term);
    }
}

#[test]
fn graceful_failover_under_load_fails_no_request() {
    let ha = Ha::up(3, 0);
    let rt = runtime();
    let client = Arc::new(ha.client(patient()));
    let (load, tasks) = Load::start(&rt, &client, 4);
    wait("load to start", || (load.acked() >= 10).then_some(()));
    let first = ha.leader_among(&[1, 2, 3]);
    let target = [1, 2, 3].into_iter().find(|&i| i != first).unwrap();
    rt.block_on(client.admin_failover(target)).unwrap();
    assert_eq!(ha.leader_among(&[1, 2, 3]), target);
    load.wait_for_more(10, "writes after the first handover");
    rt.block_on(client.admin_failover(0)).unwrap();
    let third = ha.leader_among(&[1, 2, 3]);
    assert_ne!(third, target);
    load.wait_for_more(10, "writes after the second handover");
    load.finish_without_failures(&rt, tasks, &client, "across a graceful handover");
    assert!(ha.metric(target, "ringfs_master_handovers_total") >= 1);
}

#[test]
fn a_promoted_shadow_votes_and_a_whole_cluster_kill_loses_nothing() {
    let ha = Ha::up(3, 1);
    let rt = runtime();
    let client = ha.client(patient());
    let data = pattern(42, 3 << 20);
    rt.block_on(async {
        let mut f = client.writer("/kept", CreateOptions::default()).await?;
        f.write(&data).await?;
        f.close().await
    })
    .unwrap();
    let leader = ha.leader_among(&[1, 2, 3]);
    ha.wait_for_learner(leader, 4);
    rt.block_on(client.admin_membership(ringfs_wire::msg::MembershipOp::Promote, 4))
        .unwrap();
    let voters = ha.status(leader).unwrap()["voters"].clone();
    assert_eq!(voters, serde_json::json!([1, 2, 3, 4]));
    rt.block_on(client.mkdir("/after-promotion", false))
        .unwrap();

    // Every daemon killed at once, then started again from its files.
    for n in ha.cluster().nodes {
        let _ = kill_process(Pid::from_raw(n.pid as i32).unwrap(), Signal::KILL);
    }
    wait("every daemon to be gone", || {
        ha.cluster()
            .nodes
            .iter()
            .all(|n| !local::process::is_ours(n.pid, n.kind.program_name(), &n.data_dir))
            .then_some(())
    });
    ha.resume();
    let client = ha.client(patient());
    rt.block_on(client.stat("/after-promotion")).unwrap();
    let back = rt
        .block_on(async {
            let r = client.reader("/kept").await?;
            r.read_at(0, r.len()).await
        })
        .unwrap();
    assert_eq!(sha256(&back), sha256(&data));
    let leader = ha.leader_among(&[1, 2, 3, 4]);
    assert_eq!(
        ha.status(leader).unwrap()["voters"],
        serde_json::json!([1, 2, 3, 4])
    );
}

/// Five voters (issue 6: "3 or 5"): under load the leader and a follower
/// die together and the three left, a majority, go on writing; a handover
/// among those three, then one with all five back, fails no request; no
/// acknowledged create is lost.
#[test]
fn five_voters_lose_two_and_hand_over_without_a_failed_request() {
    const ALL: [u64; 5] = [1, 2, 3, 4, 5];
    let ha = Ha::up(5, 0);
    let rt = runtime();
    let client = Arc::new(ha.client(patient()));
    let (load, tasks) = Load::start(&rt, &client, 4);
    wait("load to start", || (load.acked() >= 20).then_some(()));
    let leader = ha.leader_among(&ALL);
    let follower = ALL.into_iter().find(|&i| i != leader).unwrap();
    ha.kill_master(follower);
    ha.kill_master(leader);
    let killed = Instant::now();
    load.wait_for_more(40, "writes to go on with three voters of five");
    eprintln!(
        "unavailability after two of five died: {:?}",
        load.first_ack_after(killed).unwrap()
    );
    let survivors: Vec<u64> = ALL
        .into_iter()
        .filter(|&i| i != leader && i != follower)
        .collect();
    let second = ha.leader_among(&survivors);

    // With two voters down the target needs every survivor's vote.
    let target = survivors.iter().copied().find(|&i| i != second).unwrap();
    rt.block_on(client.admin_failover(target)).unwrap();
    assert_eq!(ha.leader_among(&survivors), target);
    load.wait_for_more(20, "writes after the handover among three");

    // Both back and caught up, then a handover in the full group.
    ha.restart_master(leader);
    ha.restart_master(follower);
    let commit = ha.status(target).unwrap()["commit_index"].as_u64().unwrap();
    for id in [leader, follower] {
        ha.wait_on(id, "a restarted voter to catch up", |ha| {
            let s = ha.status(id)?;
            (s["role"] == "follower" && s["applied_index"].as_u64()? >= commit).then_some(())
        });
    }
    rt.block_on(client.admin_failover(leader)).unwrap();
    assert_eq!(ha.leader_among(&ALL), leader);
    load.wait_for_more(20, "writes after the handover among five");
    load.finish_without_failures(&rt, tasks, &client, "with five voters");
    assert!(ha.metric(target, "ringfs_master_handovers_total") >= 1);
    assert_eq!(
        ha.status(leader).unwrap()["voters"],
        serde_json::json!([1, 2, 3, 4, 5])
    );
}

/// Read-your-writes on a shadow: a read that names the index of the
/// client's last write is answered once the shadow has applied it, and a
/// read naming an index nobody has reached is refused as behind rather
/// than answered from an older state.
#[test]
fn a_shadow_reads_a_clients_own_writes_or_says_it_is_behind() {
    let ha = Ha::up(3, 1);
    let rt = runtime();
    let client = ha.client(patient());
    let leader = ha.leader_among(&[1, 2, 3]);
    ha.wait_for_learner(leader, 4);
    rt.block_on(client.mkdir("/mine", false)).unwrap();
    let written = ha.status(leader).unwrap()["applied_index"]
        .as_u64()
        .unwrap();
    match raw_stat_at(&ha, 4, "/mine", written) {
        Body::AttrReply(r) => {
            let stamp = r.stamp.unwrap();
            assert_eq!(stamp.answered_by, 4);
            assert!(stamp.applied_index >= written, "{stamp:?}");
        }
        other => panic!("the shadow did not answer a read of its applied state: {other:?}"),
    }
    match raw_stat_at(&ha, 4, "/mine", written + 1_000_000) {
        Body::ErrorReply(e) => {
            assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
            assert!(
                e.message.as_deref().unwrap_or("").contains("behind"),
                "{e:?}"
            );
        }
        other => panic!("a read past every applied index was answered: {other:?}"),
    }
}

/// `admin masters remove` of a voter and of a shadow, and `add` of the
/// shadow again: the group shrinks and still commits, the leader refuses
/// to remove itself, and the shadow comes back and catches up.
#[test]
fn voters_and_shadows_are_removed_and_added_through_raft() {
    use ringfs_wire::msg::MembershipOp;
    let ha = Ha::up(3, 1);
    let rt = runtime();
    let client = ha.client(patient());
    let leader = ha.leader_among(&[1, 2, 3]);
    ha.wait_for_learner(leader, 4);
    let removed = [1, 2, 3].into_iter().find(|&i| i != leader).unwrap();
    rt.block_on(client.admin_membership(MembershipOp::Remove, removed))
        .unwrap();
    let left: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != removed).collect();
    assert_eq!(
        ha.status(leader).unwrap()["voters"],
        serde_json::json!(left)
    );
    rt.block_on(client.mkdir("/two-voters", false)).unwrap();

    let refused = rt.block_on(client.admin_membership(MembershipOp::Remove, leader));
    let e = refused.expect_err("the leader removed itself");
    assert!(e.to_string().contains("cannot remove itself"), "{e}");

    rt.block_on(client.admin_membership(MembershipOp::Remove, 4))
        .unwrap();
    let learners = ha.status(leader).unwrap()["learners"].clone();
    assert!(
        !learners.as_array().unwrap().contains(&4.into()),
        "{learners}"
    );
    rt.block_on(client.mkdir("/no-shadow", false)).unwrap();
    rt.block_on(client.admin_membership(MembershipOp::AddShadow, 4))
        .unwrap();
    let commit = ha.status(leader).unwrap()["commit_index"].as_u64().unwrap();
    ha.wait_on(4, "the shadow added again to catch up", |ha| {
        let s = ha.status(4)?;
        (s["applied_index"].as_u64()? >= commit).then_some(())
    });
    match raw_stat(&ha, 4, "/no-shadow") {
        Body::AttrReply(_) => {}
        other => panic!("the shadow added again does not read: {other:?}"),
    }
}
