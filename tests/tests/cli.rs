//! The `ringfs` command line against a real cluster: every file command,
//! human and JSON output, and the exit codes scripts rely on.

use std::path::Path;
use std::process::{Command, Output};

use ringfs_tests::*;
use serde_json::Value;

struct Cli<'a> {
    env: &'a Env,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(binary("ringfs"))
            .arg("--config")
            .arg(&self.env.config)
            .args(args)
            .output()
            .expect("run ringfs")
    }

    /// Runs with `--json`, expects success, parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "ringfs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ringfs {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ringfs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A master and three chunkservers, stopped when dropped.
fn start_cluster(env: &Env) -> Vec<Daemon> {
    let mut daemons = vec![start_master(env)];
    daemons.extend(
        ["cs1", "cs2", "cs3"]
            .iter()
            .map(|n| start_chunkd(env, n, "r")),
    );
    daemons
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

#[test]
fn file_commands_output_and_exit_codes() {
    let env = Env::new(&Options::default());
    let _daemons = start_cluster(&env);
    let cli = Cli { env: &env };
    let local = env.path("local");
    let data = pattern(3, 2_500_000);
    write(&local.join("in"), &data);

    // Not-yet-registered chunkservers make the first put wait, not fail.
    cli.json(&["mkdir", "-p", "/a/b"]);
    let put = cli.json(&["put", local.join("in").to_str().unwrap(), "/a/b/f"]);
    assert_eq!(put["length_bytes"], data.len() as u64);
    let out = local.join("out");
    cli.ok(&["get", "/a/b/f", out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "get returns what put wrote"
    );
    let cat = Command::new(binary("ringfs"))
        .arg("--config")
        .arg(&env.config)
        .args(["cat", "/a/b/f", "--offset", "1000000", "--length", "70000"])
        .output()
        .unwrap();
    assert!(cat.status.success());
    assert!(cat.stdout == data[1_000_000..1_070_000]);

    let stat = cli.json(&["stat", "/a/b/f"]);
    assert_eq!(stat["kind"], "file");
    assert_eq!(stat["length_bytes"], data.len() as u64);
    assert_eq!(stat["complete"], true);
    assert!(cli.ok(&["stat", "/a/b/f"]).contains("length"));

    let ls = cli.json(&["ls", "-R", "/"]);
    let paths: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/a", "/a/b", "/a/b/f"]);
    let long = cli.ok(&["ls", "-l", "/a/b"]);
    assert!(long.starts_with("-rw-r--r--"), "{long}");

    cli.json(&["mv", "/a/b/f", "/a/g"]);
    let set = cli.json(&["setrep", "2", "/a/g"]);
    assert_eq!(set["files_changed"], 1);
    assert_eq!(cli.json(&["stat", "/a/g"])["replication"], 2);
    let fsck = cli.json(&["fsck", "/"]);
    assert_eq!(fsck["files_checked"].as_u64(), Some(1));

    // The master times every request it answers, per kind.
    let created = metric(
        &env.master_http,
        "ringfs_master_requests_total{op=\"create\"}",
    );
    assert!(created >= 1);
    assert_eq!(
        metric(
            &env.master_http,
            "ringfs_master_request_latency_seconds_count{op=\"create\"}"
        ),
        created
    );

    let status = cli.json(&["admin", "status"]);
    assert_eq!(status["masters"][0]["role"], "leader");
    assert_eq!(status["chunkservers"].as_array().unwrap().len(), 3);
    assert!(cli.ok(&["admin", "status"]).contains("chunkservers"));

    cli.json(&["rm", "-r", "/a"]);
    // Exit codes: 3 not found, 1 refused, 2 usage.
    assert_eq!(cli.run(&["stat", "/a"]).status.code(), Some(3));
    assert_eq!(
        cli.run(&["get", "/nope", "/dev/null"]).status.code(),
        Some(3)
    );
    cli.ok(&["mkdir", "/d"]);
    assert_eq!(cli.run(&["mkdir", "/d"]).status.code(), Some(1));
    assert_eq!(cli.run(&["setrep", "0", "/d"]).status.code(), Some(2));
    assert_eq!(cli.run(&["frobnicate"]).status.code(), Some(2));
    let no_config = Command::new(binary("ringfs"))
        .args(["ls", "/"])
        .env_remove("RINGFS_CONFIG")
        .output()
        .unwrap();
    assert_eq!(no_config.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_config.stderr).contains("RINGFS_CONFIG"));
    // A failed get leaves nothing under the asked-for name.
    assert!(!local.join("missing").exists());
    assert_eq!(
        cli.run(&["get", "/d", local.join("missing").to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );
    assert!(!local.join("missing").exists());
}

#[test]
fn unreachable_cluster_exits_unavailable() {
    let env = Env::new(&Options::default());
    // No master runs: the client gives up after its deadline with 69.
    let out = Command::new(binary("ringfs"))
        .arg("--config")
        .arg(&env.config)
        .args(["stat", "/"])
        .env("RINGFS_DEADLINE_MS", "1500")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_cluster_refuses_new_chunks_with_no_space() {
    // Every byte of every data dir reserved: no chunkserver has room.
    let env = Env::new(&Options {
        data_dir_reserved_bytes: 1 << 62,
        ..Options::default()
    });
    let _daemons = start_cluster(&env);
    let cli = Cli { env: &env };
    let local = env.path("local");
    write(&local.join("big"), &pattern(5, 2_500_000));
    write(&local.join("empty"), b"");

    // Metadata and a file with no chunk need no space.
    cli.json(&["mkdir", "/a"]);
    let put = cli.json(&["put", local.join("empty").to_str().unwrap(), "/a/empty"]);
    assert_eq!(put["length_bytes"], 0);
    // The chunkservers report the reserve as used.
    let status = cli.json(&["admin", "status"]);
    for cs in status["chunkservers"].as_array().unwrap() {
        assert_eq!(cs["used_bytes"], cs["capacity_bytes"], "{cs}");
    }
    // A write that needs a chunk fails with a typed error that says why,
    // long before the command's deadline: no retrying against a full disk.
    let out = cli.run(&[
        "--deadline-ms",
        "30000",
        "put",
        local.join("big").to_str().unwrap(),
        "/a/big",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no space left"), "{stderr}");
    assert!(stderr.contains("data_dir_reserved_bytes"), "{stderr}");
    // What it created stays incomplete, never a short file that looks whole.
    assert_eq!(cli.json(&["stat", "/a/big"])["complete"], false);
    assert_eq!(cli.json(&["stat", "/a/empty"])["complete"], true);
}

/// `fsck` pages through the master's walk by its cursor: an unhealthy
/// file past the first page (1000 files) is found, and one before a full
/// page of healthy files does not make it ask for the same page forever.
#[test]
fn fsck_pages_past_healthy_files_and_ends() {
    let env = Env::new(&Options {
        default_replication: 1,
        ..Options::default()
    });
    let _m = start_master(&env);
    let _cs = start_chunkd(&env, "cs1", "r");
    let mut c = env.client();
    wait_for(TIMEOUT, "a chunkserver to register", || {
        (!c.status().chunkservers.unwrap_or_default().is_empty()).then_some(())
    });
    // A goal of two with one chunkserver: under-replicated for good (a
    // replica reported corrupt can come back with the server's report).
    let spoil = |c: &mut Client, path: &str| {
        c.create(path).unwrap();
        let ino = c.inode(path);
        c.allocate(ino, 0).unwrap();
        c.set_replication(path, 2, false).unwrap();
    };
    c.mkdir("/a", false).unwrap();
    c.mkdir("/b", false).unwrap();
    c.mkdir("/c", false).unwrap();
    spoil(&mut c, "/a/bad");
    for i in 0..1001 {
        c.create(&format!("/b/f{i:04}")).unwrap();
    }
    spoil(&mut c, "/c/bad");

    let mut child = Command::new(binary("ringfs"))
        .arg("--config")
        .arg(&env.config)
        .args(["--json", "fsck", "/"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("fsck did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "unhealthy files make fsck fail");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["files_checked"].as_u64(), Some(1003), "{report}");
    assert_eq!(report["healthy"], false);
    let paths: Vec<&str> = report["unhealthy_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/a/bad", "/c/bad"], "{report}");

    // Healthy files only, more than a page: all checked, exit 0.
    let b = cli_json_ok(&env, &["fsck", "/b"]);
    assert_eq!(b["files_checked"].as_u64(), Some(1001), "{b}");
    assert_eq!(b["healthy"], true);
}

fn cli_json_ok(env: &Env, args: &[&str]) -> Value {
    Cli { env }.json(args)
}
