//! `up`: a fresh cluster (key, config, cluster.json, daemons) or a resumed
//! one (every daemon of an existing cluster.json dead), then a bounded wait
//! until it is healthy.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use ringfs_wire::config::{Config, MasterRole, VOTERS_MAX};

use super::*;

/// masterd runtime threads per master: a local cluster shares one machine.
const MASTER_THREADS: usize = 2;
/// Names of the daemon binaries.
const MASTERD: &str = "masterd";
const CHUNKD: &str = "chunkd";
/// `statfs` magic of tmpfs, which has no O_DIRECT (chunkd refuses it).
const TMPFS_MAGIC: u64 = 0x0102_1994;

fn check_options(o: &UpOptions) -> Result<(), LocalError> {
    let usage = |m: String| Err(LocalError::Usage(m));
    if o.masters == 0 || o.masters > VOTERS_MAX || o.masters.is_multiple_of(2) {
        return usage(format!(
            "--masters {}: must be odd, 1 to {VOTERS_MAX} (a Raft majority)",
            o.masters
        ));
    }
    if o.shadows > SHADOWS_MAX {
        return usage(format!("--shadows {}: at most {SHADOWS_MAX}", o.shadows));
    }
    if o.chunkservers == 0 || o.chunkservers > CHUNKSERVERS_MAX {
        return usage(format!(
            "--chunkservers {}: must be 1 to {CHUNKSERVERS_MAX}",
            o.chunkservers
        ));
    }
    Ok(())
}

/// Paths of `masterd` and `chunkd`.
struct Binaries {
    masterd: PathBuf,
    chunkd: PathBuf,
}

impl Binaries {
    fn find(bin_dir: Option<&Path>) -> Result<Binaries, LocalError> {
        let (dir, whence) = if let Some(d) = bin_dir {
            (d.to_path_buf(), "the given bin dir".to_owned())
        } else if let Some(d) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
            (PathBuf::from(d), format!("${BIN_DIR_ENV}"))
        } else {
            let exe = std::env::current_exe()
                .map_err(|e| LocalError::io("cannot find the running executable".into(), e))?;
            let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
            (dir, "ringfs".to_owned())
        };
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(LocalError::Usage(format!(
                    "{name} not found next to {whence} ({}); build the workspace: cargo build --release \
                     (or set ${BIN_DIR_ENV})",
                    dir.display()
                )))
            }
        };
        Ok(Binaries {
            masterd: find(MASTERD)?,
            chunkd: find(CHUNKD)?,
        })
    }

    fn for_kind(&self, kind: NodeKind) -> &Path {
        match kind {
            NodeKind::Master => &self.masterd,
            NodeKind::Chunkserver => &self.chunkd,
        }
    }
}

/// The arguments a node is started with.
fn node_args(c: &Cluster, n: &Node) -> Vec<String> {
    let config = c.config.display().to_string();
    let data = n.data_dir.display().to_string();
    match n.kind {
        NodeKind::Master => vec![
            "--config".into(),
            config,
            "--id".into(),
            n.id.to_string(),
            "--data".into(),
            data,
            "--threads".into(),
            MASTER_THREADS.to_string(),
        ],
        NodeKind::Chunkserver => vec![
            "--config".into(),
            config,
            "--listen".into(),
            n.addr.clone(),
            "--data".into(),
            data,
            "--http".into(),
            n.http_addr.clone(),
            // Several chunkservers share this machine: one core each.
            "--cores".into(),
            "1".into(),
        ],
    }
}

fn running_list(c: &Cluster) -> Vec<String> {
    c.nodes
        .iter()
        .filter(|n| is_alive(n))
        .map(|n| format!("{} pid {}", n.name, n.pid))
        .collect()
}

fn create_dir(path: &Path) -> Result<(), LocalError> {
    std::fs::create_dir_all(path)
        .map_err(|e| LocalError::io(format!("cannot create {}", path.display()), e))
}

fn check_not_tmpfs(dir: &Path) -> Result<(), LocalError> {
    if let Ok(fs) = rustix::fs::statfs(dir)
        && fs.f_type as u64 == TMPFS_MAGIC
    {
        return Err(LocalError::Usage(format!(
            "{} is on tmpfs, which has no O_DIRECT (chunkd needs it); choose a --dir on ext4 or xfs",
            dir.display()
        )));
    }
    Ok(())
}

/// Starts a local cluster in `opts.dir` and waits until it is healthy; or,
/// if `cluster.json` is there and every daemon is dead, restarts them.
pub fn up(opts: &UpOptions) -> Result<Cluster, LocalError> {
    check_options(opts)?;
    let bins = Binaries::find(opts.bin_dir.as_deref())?;
    create_dir(&opts.dir)?;
    let dir = opts
        .dir
        .canonicalize()
        .map_err(|e| LocalError::io(format!("cannot resolve {}", opts.dir.display()), e))?;
    check_not_tmpfs(&dir)?;
    let _lock = DirLock::take(&dir)?;
    let mut cluster = if dir.join(CLUSTER_JSON).exists() {
        let mut c = Cluster::load(&dir)?;
        let running = running_list(&c);
        if !running.is_empty() {
            return Err(LocalError::AlreadyRunning {
                dir,
                running: running.join(", "),
            });
        }
        c.resumed = true;
        c.notes.clear();
        c
    } else {
        for name in [CONFIG_FILE, config_gen::KEY_FILE] {
            if dir.join(name).exists() {
                return Err(LocalError::Refused(format!(
                    "{} holds {name} but no {CLUSTER_JSON}: not a local cluster started by \
                     `ringfs local up` (or its start was interrupted); refusing to write a new \
                     config or key over it. Choose another --dir, or remove this one if its data \
                     is not needed",
                    dir.display()
                )));
            }
        }
        create_fresh(&dir, opts)?
    };
    let config = Config::load(&cluster.config)?;
    let mut started = start(&mut cluster, &config, &bins)?;
    let layout = (
        started.masters().filter(|n| n.role == "voter").count(),
        started.masters().filter(|n| n.role == "shadow").count(),
        started.chunkservers().count(),
    );
    if started.resumed && layout != (opts.masters, opts.shadows, opts.chunkservers) {
        // A resume keeps the data's layout; say so rather than surprise.
        started.notes.push(format!(
            "resumed the existing cluster as it was ({} masters, {} shadows, {} chunkservers); \
             the requested counts apply only to a new --dir",
            layout.0, layout.1, layout.2
        ));
    }
    Ok(started)
}

/// Writes the key, the config and an initial cluster.json (no pids yet).
fn create_fresh(dir: &Path, opts: &UpOptions) -> Result<Cluster, LocalError> {
    let masters = opts.masters + opts.shadows;
    let ports = config_gen::free_ports(config_gen::ports_needed(masters, opts.chunkservers))
        .map_err(|e| LocalError::io("cannot find free loopback ports".into(), e))?;
    let mut ports = ports.into_iter();
    let cluster_id = config_gen::fresh_cluster_id().map_err(LocalError::Failed)?;
    let file = config_gen::generate(
        &cluster_id,
        opts.masters,
        opts.shadows,
        opts.chunkservers,
        &mut ports,
    )
    .map_err(LocalError::Failed)?;

    // The key first, with create-new: if anything is there, nothing is replaced.
    let key_path = dir.join(config_gen::KEY_FILE);
    crate::admin::keygen(&key_path).map_err(LocalError::Refused)?;
    let config_path = dir.join(CONFIG_FILE);
    let write_config = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&config_path)?;
        io::Write::write_all(&mut f, config_gen::to_text(&file).as_bytes())?;
        f.sync_all()
    };
    write_config()
        .map_err(|e| LocalError::io(format!("cannot write {}", config_path.display()), e))?;

    let mut nodes = Vec::new();
    for m in &file.masters {
        nodes.push(Node {
            kind: NodeKind::Master,
            id: m.id,
            name: format!("master-{}", m.id),
            role: match m.role {
                MasterRole::Voter => "voter",
                MasterRole::Shadow => "shadow",
            }
            .into(),
            addr: m.client_addr.clone(),
            peer_addr: Some(m.peer_addr.clone()),
            http_addr: m.http_addr.clone(),
            http_port: cluster::http_port(&m.http_addr),
            pid: 0,
            data_dir: PathBuf::new(),
            log_file: PathBuf::new(),
            node_id: None,
        });
    }
    for i in 1..=opts.chunkservers {
        let (Some(data), Some(http)) = (ports.next(), ports.next()) else {
            return Err(LocalError::Failed(
                "ran out of ports for chunkservers".into(),
            ));
        };
        nodes.push(Node {
            kind: NodeKind::Chunkserver,
            id: i as u64,
            name: format!("cs-{i}"),
            role: "chunkserver".into(),
            addr: format!("127.0.0.1:{data}"),
            peer_addr: None,
            http_addr: format!("127.0.0.1:{http}"),
            http_port: http,
            pid: 0,
            data_dir: PathBuf::new(),
            log_file: PathBuf::new(),
            node_id: None,
        });
    }
    let mut cluster = Cluster {
        format_version: cluster::FORMAT_VERSION,
        cluster_id,
        dir: dir.to_path_buf(),
        config: PathBuf::new(),
        key_file: PathBuf::new(),
        nodes,
        resumed: false,
        notes: Vec::new(),
    };
    cluster.rebase(dir);
    // Saved before any daemon starts: from here on `up` resumes this cluster.
    cluster.save()?;
    Ok(cluster)
}

/// Starts every node (masters first), records the pids, waits until healthy.
/// On failure stops what it started, so a retry finds every daemon dead and
/// resumes.
fn start(cluster: &mut Cluster, config: &Config, bins: &Binaries) -> Result<Cluster, LocalError> {
    create_dir(&cluster.dir.join(LOG_DIR))?;
    let mut result = Ok(());
    for i in 0..cluster.nodes.len() {
        let n = &cluster.nodes[i];
        if let Err(e) = create_dir(&n.data_dir) {
            result = Err(e);
            break;
        }
        let args = node_args(cluster, n);
        match process::spawn(bins.for_kind(n.kind), &args, &n.log_file) {
            Ok(pid) => cluster.nodes[i].pid = pid,
            Err(e) => {
                result = Err(LocalError::io(
                    format!(
                        "cannot start {} ({})",
                        n.name,
                        bins.for_kind(n.kind).display()
                    ),
                    e,
                ));
                break;
            }
        }
    }
    // Record the pids even on failure, so `down` can find what is running.
    let saved = cluster.save();
    let result = result
        .and(saved)
        .and_then(|()| wait_started(cluster, config));
    match result {
        Ok(health) => {
            for n in &mut cluster.nodes {
                if n.kind == NodeKind::Chunkserver {
                    n.node_id = health.chunkserver(&n.addr).map(|c| c.node_id);
                }
            }
            cluster.save()?;
            Ok(cluster.clone())
        }
        Err(e) => {
            stop_nodes(cluster, STOP_TIMEOUT);
            Err(e)
        }
    }
}

/// Waits for a leader and every chunkserver of `cluster` to be live, and
/// fails at once, with its log, if a daemon exits meanwhile.
fn wait_started(cluster: &Cluster, config: &Config) -> Result<Health, LocalError> {
    let unavailable = |n: &Node, message: String| LocalError::Unavailable {
        node: n.name.clone(),
        message,
        log_file: Some(n.log_file.clone()),
        log_tail: process::log_tail(&n.log_file),
    };
    let first_master = cluster.masters().next();
    let check = |h: &Health| {
        if h.leader.is_none() {
            return Err(health::Missing {
                node: first_master.map(|n| n.name.clone()),
                what: "no leader elected".into(),
            });
        }
        for n in cluster.chunkservers() {
            match h.chunkserver(&n.addr) {
                Some(c) if c.state == "live" => {}
                other => {
                    return Err(health::Missing {
                        node: Some(n.name.clone()),
                        what: format!(
                            "not registered with the master as live ({})",
                            other.map_or("not known", |c| c.state.as_str())
                        ),
                    });
                }
            }
        }
        Ok(())
    };
    let watch = || {
        for n in &cluster.nodes {
            if let Some(status) = process::exit_status(n.pid) {
                return Err(unavailable(
                    n,
                    format!(
                        "exited during start-up ({status}); the other daemons were stopped. \
                         Fix the cause and run `ringfs local up --dir {}` again (it resumes), \
                         or remove that directory to start afresh",
                        cluster.dir.display()
                    ),
                ));
            }
        }
        Ok(())
    };
    health::wait_until(config, HEALTHY_TIMEOUT, check, watch).map_err(|e| {
        let missing = match e {
            health::WaitError::Watch(e) => return e,
            health::WaitError::Timeout(missing) => missing,
        };
        {
            let what = format!(
                "cluster not healthy after {} s: {}",
                HEALTHY_TIMEOUT.as_secs(),
                missing.what
            );
            match missing
                .node
                .and_then(|name| cluster.nodes.iter().find(|n| n.name == name))
            {
                Some(n) => unavailable(n, what),
                None => LocalError::Unavailable {
                    node: "cluster".into(),
                    message: what,
                    log_file: None,
                    log_tail: String::new(),
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(masters: usize, shadows: usize, chunkservers: usize) -> UpOptions {
        UpOptions {
            dir: PathBuf::from("/nonexistent"),
            masters,
            chunkservers,
            shadows,
            bin_dir: None,
        }
    }

    #[test]
    fn replicated_masters_and_shadows_are_taken() {
        for (m, s) in [(1, 0), (3, 0), (3, 2), (5, 1), (1, 1)] {
            assert!(check_options(&opts(m, s, 3)).is_ok(), "{m} {s}");
        }
        for m in [2, 4, VOTERS_MAX + 2] {
            assert!(
                matches!(check_options(&opts(m, 0, 3)), Err(LocalError::Usage(_))),
                "{m}"
            );
        }
    }

    #[test]
    fn bad_counts_are_usage_errors() {
        for o in [
            opts(1, 0, 0),
            opts(1, 0, CHUNKSERVERS_MAX + 1),
            opts(0, 0, 1),
        ] {
            assert!(
                matches!(check_options(&o), Err(LocalError::Usage(_))),
                "{o:?}"
            );
        }
    }

    #[test]
    fn missing_binaries_say_how_to_build() {
        let dir = tempfile::tempdir().unwrap();
        match Binaries::find(Some(dir.path())) {
            Err(LocalError::Usage(m)) => assert!(m.contains("cargo build --release"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("found binaries in an empty dir"),
        }
    }

    #[test]
    fn up_refuses_a_config_without_cluster_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "precious").unwrap();
        let bins = tempfile::tempdir().unwrap();
        for b in [MASTERD, CHUNKD] {
            std::fs::write(bins.path().join(b), "").unwrap();
        }
        let o = UpOptions {
            dir: dir.path().to_path_buf(),
            bin_dir: Some(bins.path().to_path_buf()),
            ..UpOptions::default()
        };
        assert!(matches!(up(&o), Err(LocalError::Refused(_))));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap(),
            "precious"
        );
        assert!(!dir.path().join(config_gen::KEY_FILE).exists());
    }
}
