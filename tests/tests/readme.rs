//! The README's first command (`./run`) from a clean temp dir: it starts a
//! local cluster with `ringfs local up`, does a put/get round trip and
//! leaves the cluster running; the test then stops it with `local down`.
//! The binaries come from this build (RINGFS_BIN_DIR), so the test does
//! not run a release build of its own.

use std::path::Path;
use std::process::Command;

use ringfs_tests::binary;

/// Stops the cluster whatever the test did.
struct Down<'a> {
    dir: &'a Path,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = Command::new(binary("ringfs"))
            .args(["local", "down", "--dir"])
            .arg(self.dir)
            .output();
    }
}

#[test]
fn readme_first_command_round_trips_through_a_local_cluster() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let first = readme
        .lines()
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("```"))
        .expect("a first command");
    assert!(
        first.starts_with("./run"),
        "the README starts with ./run: {first}"
    );

    let tmp = tempfile::Builder::new()
        .prefix("ringfs-readme-")
        .tempdir()
        .unwrap();
    let script = tmp.path().join("run");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../run"), &script).unwrap();
    let bin_dir = binary("ringfs").parent().unwrap().to_path_buf();
    let cluster_dir = tmp.path().join("ringfs-local");
    let _down = Down { dir: &cluster_dir };
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(tmp.path())
        .env("RINGFS_BIN_DIR", &bin_dir)
        .env("RINGFS_SAMPLE_MIB", "8")
        .env_remove("RINGFS_CONFIG")
        .env_remove("RINGFS_LOCAL_DIR")
        .output()
        .expect("run ./run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "./run failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("round trip OK"), "{stdout}");
    assert!(cluster_dir.join("cluster.json").exists());
    let status = Command::new(binary("ringfs"))
        .args(["local", "status", "--dir"])
        .arg(&cluster_dir)
        .output()
        .unwrap();
    assert!(status.status.success(), "the cluster is still healthy");
    let down = Command::new(binary("ringfs"))
        .args(["local", "down", "--dir"])
        .arg(&cluster_dir)
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}
