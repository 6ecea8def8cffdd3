//! The `ringfs` binary as an operator runs it.

use std::process::Command;

/// `ringfs --config CONFIG config check`.
fn config_check(config: &std::path::Path) -> std::process::Output {
    ringfs()
        .arg("--config")
        .arg(config)
        .args(["config", "check"])
        .output()
        .unwrap()
}

fn ringfs() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringfs"));
    cmd.env_remove("RINGFS_CONFIG");
    cmd
}

#[test]
fn keygen_then_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let out = ringfs().arg("keygen").arg(&key).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // A second keygen must not replace the key.
    let before = std::fs::read(&key).unwrap();
    let out = ringfs().arg("keygen").arg(&key).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing"));
    assert_eq!(std::fs::read(&key).unwrap(), before);

    let config = dir.path().join("ringfs.toml");
    std::fs::write(
        &config,
        "cluster_id = \"cli\"\nkey_file = \"cluster.key\"\n[[masters]]\nid = 1\n\
         client_addr = \"127.0.0.1:9400\"\npeer_addr = \"127.0.0.1:9401\"\nhttp_addr = \"127.0.0.1:9402\"\nrole = \"voter\"\n",
    )
    .unwrap();
    let out = config_check(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cluster cli: config valid"));

    // RINGFS_CONFIG works as well as --config.
    let out = ringfs()
        .env("RINGFS_CONFIG", &config)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn config_check_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ringfs.toml");
    std::fs::write(
        &config,
        "cluster_id = \"x\"\nkey_file = \"missing.key\"\nchunk_size_bytes = 1000\nmasters = []\n",
    )
    .unwrap();
    let out = config_check(&config);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in ["`chunk_size_bytes`", "`masters`", "`key_file`"] {
        assert!(err.contains(field), "{field} not named in: {err}");
    }
}

#[test]
fn missing_config_and_bad_usage() {
    let out = ringfs()
        .env_remove("RINGFS_CONFIG")
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no config is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = ringfs().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn local_status_without_a_cluster_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let out = ringfs()
        .args(["local", "status", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ringfs()
        .args(["local", "up", "--chunkservers", "0", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
}
