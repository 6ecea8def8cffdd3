//! `ringfs local`: a real cluster (masterd, 3 chunkd) started, checked,
//! refused twice, stopped, resumed with the same key and node ids, and
//! stopped again, through the library API the CLI calls. Every daemon is
//! stopped by the guard, whatever happens.

use std::path::{Path, PathBuf};
use std::process::Command;

use ringfs_client::local::{self, LocalError, NodeKind, StopOutcome, UpOptions};
use ringfs_tests::binary;

/// Stops whatever the cluster in `dir` still runs when the test ends,
/// passing or failing: `down` signals only the recorded PIDs that still
/// are our daemons.
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = local::down(&self.0) {
            eprintln!("cleanup: {e}");
        }
    }
}

fn pid_exists(pid: u32) -> bool {
    // A zombie's cmdline is empty: it is gone for our purposes.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn options(dir: &Path) -> UpOptions {
    UpOptions {
        dir: dir.to_path_buf(),
        masters: 1,
        chunkservers: 3,
        shadows: 0,
        bin_dir: binary("masterd").parent().map(Path::to_path_buf),
    }
}

#[test]
fn up_status_refuse_down_resume_down() {
    // Under TMPDIR like the other cluster tests (it must have O_DIRECT).
    let tmp = tempfile::Builder::new()
        .prefix("ringfs-local-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("cluster");
    let _guard = Guard(dir.clone());
    let opts = options(&dir);

    // up: 4 nodes with live pids, every chunkserver registered.
    let cluster = local::up(&opts).unwrap_or_else(|e| panic!("up: {e}"));
    assert!(!cluster.resumed);
    assert_eq!(cluster.nodes.len(), 4);
    assert_eq!(cluster.masters().count(), 1);
    assert_eq!(cluster.chunkservers().count(), 3);
    for n in &cluster.nodes {
        assert!(pid_exists(n.pid), "{} pid {} not running", n.name, n.pid);
        assert!(n.addr.starts_with("127.0.0.1:"), "{}", n.addr);
        assert!(n.http_addr.starts_with("127.0.0.1:"), "{}", n.http_addr);
        assert!(n.data_dir.is_dir(), "{}", n.data_dir.display());
        assert!(n.log_file.is_file(), "{}", n.log_file.display());
        if n.kind == NodeKind::Chunkserver {
            assert!(n.node_id.is_some_and(|id| id != 0), "{n:?}");
        }
    }
    let text = cluster.describe();
    assert!(text.contains("export RINGFS_CONFIG="), "{text}");
    assert!(text.contains("ringfs put"), "{text}");

    // cluster.json on disk is what up returned.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    for (j, n) in nodes.iter().zip(&cluster.nodes) {
        assert_eq!(j["pid"].as_u64(), Some(u64::from(n.pid)));
        assert_eq!(
            j["kind"].as_str().unwrap(),
            format!("{:?}", n.kind).to_lowercase()
        );
        for field in [
            "id",
            "role",
            "addr",
            "http_addr",
            "http_port",
            "data_dir",
            "log_file",
        ] {
            assert!(!j[field].is_null(), "cluster.json node lacks {field}: {j}");
        }
    }

    // The key is private; the real ringfs binary accepts the config.
    use std::os::unix::fs::PermissionsExt;
    let key_path = dir.join("cluster.key");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read(&key_path).unwrap();
    let check = Command::new(binary("ringfs"))
        .arg("--config")
        .arg(&cluster.config)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    // status: healthy, the master leads, every chunkserver live.
    let st = local::status(&dir).unwrap();
    assert!(st.healthy(), "{}", st.describe());
    assert!(st.nodes.iter().all(|n| n.alive));
    assert_eq!(st.nodes[0].role.as_deref(), Some("leader"));
    assert!(st.describe().contains("healthy"));
    serde_json::to_string(&st).unwrap();

    // A second up refuses while the daemons run, and changes nothing.
    match local::up(&opts) {
        Err(e @ LocalError::AlreadyRunning { .. }) => {
            assert!(e.to_string().contains("ringfs local down --dir"), "{e}")
        }
        other => panic!("second up: {other:?}"),
    }
    assert_eq!(std::fs::read(&key_path).unwrap(), key);

    // down: every pid gone.
    let report = local::down(&dir).unwrap();
    assert!(report.all_stopped(), "{}", report.describe());
    assert_eq!(report.nodes.len(), 4);
    for n in &report.nodes {
        assert_eq!(n.outcome, StopOutcome::Terminated, "{}", report.describe());
        assert!(!pid_exists(n.pid), "{} pid {} still there", n.name, n.pid);
    }
    let st = local::status(&dir).unwrap();
    assert!(!st.healthy());
    assert!(st.nodes.iter().all(|n| !n.alive), "{}", st.describe());
    // A second down finds nothing to stop.
    let again = local::down(&dir).unwrap();
    assert!(
        again
            .nodes
            .iter()
            .all(|n| n.outcome == StopOutcome::NotRunning)
    );

    // up again resumes: same key, same config, same nodes and chunkserver
    // node ids, whatever counts it is asked for (the data has its layout).
    let config_text = std::fs::read(&cluster.config).unwrap();
    let other_counts = UpOptions {
        chunkservers: 2,
        ..opts.clone()
    };
    let resumed = local::up(&other_counts).unwrap_or_else(|e| panic!("resume: {e}"));
    assert!(resumed.resumed);
    assert!(resumed.describe().contains("resumed"));
    assert!(
        resumed.notes.iter().any(|n| n.contains("3 chunkservers")),
        "{:?}",
        resumed.notes
    );
    let saved = std::fs::read_to_string(dir.join("cluster.json")).unwrap();
    assert!(!saved.contains("\"notes\""), "notes are not state: {saved}");
    assert_eq!(std::fs::read(&key_path).unwrap(), key);
    assert_eq!(std::fs::read(&cluster.config).unwrap(), config_text);
    assert_eq!(resumed.cluster_id, cluster.cluster_id);
    assert_eq!(resumed.nodes.len(), 4);
    for (a, b) in cluster.nodes.iter().zip(&resumed.nodes) {
        assert_eq!((&a.name, a.id, &a.addr), (&b.name, b.id, &b.addr));
        assert_eq!(a.node_id, b.node_id, "{} got another node id", a.name);
        assert_ne!(a.pid, b.pid);
        assert!(pid_exists(b.pid));
    }
    assert!(local::status(&dir).unwrap().healthy());

    let report = local::down(&dir).unwrap();
    assert!(report.all_stopped(), "{}", report.describe());
    for n in &resumed.nodes {
        assert!(!pid_exists(n.pid), "{} pid {} still there", n.name, n.pid);
    }
}

#[test]
fn an_even_number_of_voters_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let opts = UpOptions {
        masters: 2,
        ..options(&dir)
    };
    match local::up(&opts) {
        Err(LocalError::Usage(m)) => assert!(m.contains("must be odd"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(!dir.exists());
}

#[test]
fn a_daemon_that_dies_at_start_up_is_named_with_its_log() {
    let tmp = tempfile::Builder::new()
        .prefix("ringfs-local-")
        .tempdir()
        .unwrap();
    // The real masterd and a chunkd that fails the way a bad disk would.
    let bins = tmp.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    std::os::unix::fs::symlink(binary("masterd"), bins.join("masterd")).unwrap();
    let fake = bins.join("chunkd");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'chunkd: no O_DIRECT here' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let dir = tmp.path().join("cluster");
    let _guard = Guard(dir.clone());
    let opts = UpOptions {
        bin_dir: Some(bins),
        ..options(&dir)
    };
    let started = std::time::Instant::now();
    match local::up(&opts) {
        Err(e @ LocalError::Unavailable { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("cs-"), "{text}");
            assert!(text.contains("exited during start-up"), "{text}");
            assert!(text.contains("no O_DIRECT here"), "{text}");
            assert!(text.contains("logs/cs-"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // Reported at once, not after the health timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // What up started is stopped again; the cluster stays resumable.
    let st = local::status(&dir).unwrap();
    assert!(st.nodes.iter().all(|n| !n.alive), "{}", st.describe());
    // The fake chunkds are shell scripts exiting on their own: give the
    // last of them a moment (bounded) to be gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while st.nodes.iter().any(|n| pid_exists(n.pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        st.nodes.iter().all(|n| !pid_exists(n.pid)),
        "{}",
        st.describe()
    );
    assert!(dir.join("cluster.key").exists());
}
