//! Config parsing and validation: every problem named by its field.

use std::path::Path;

use ringfs_wire::auth::ClusterKey;
use ringfs_wire::config::*;

/// A temp dir with a private key file named `cluster.key`.
fn dir_with_key() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.key");
    std::fs::write(&path, ClusterKey::generate().unwrap().to_hex_line()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

fn master(id: u64, port: u16, role: &str) -> String {
    format!(
        "[[masters]]\nid = {id}\nclient_addr = \"127.0.0.1:{}\"\npeer_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\nrole = \"{role}\"\n",
        port,
        port + 1,
        port + 2
    )
}

fn three_voters() -> String {
    format!(
        "cluster_id = \"c1\"\nkey_file = \"cluster.key\"\n{}{}{}",
        master(1, 9400, "voter"),
        master(2, 9410, "voter"),
        master(3, 9420, "voter")
    )
}

fn parse(text: &str, dir: &Path) -> Result<Config, ConfigError> {
    Config::from_toml(text, dir, "test.toml")
}

fn problems_of(text: &str) -> Vec<String> {
    let dir = dir_with_key();
    match parse(text, dir.path()) {
        Ok(_) => vec![],
        Err(e) => e.problems().iter().map(|p| p.field.clone()).collect(),
    }
}

#[test]
fn valid_config_with_defaults() {
    let dir = dir_with_key();
    let text = format!("{}{}", three_voters(), master(4, 9430, "shadow"));
    let config = parse(&text, dir.path()).unwrap();
    assert_eq!(config.file.cluster_id, "c1");
    assert_eq!(config.file.default_replication, 3);
    assert_eq!(config.file.chunk_size_bytes, 64 << 20);
    assert_eq!(config.voters().count(), 3);
    assert_eq!(config.shadows().map(|m| m.id).collect::<Vec<_>>(), [4]);
    assert_eq!(config.master(2).unwrap().peer_addr, "127.0.0.1:9411");
    assert_eq!(config.file.master, MasterTuning::default());
}

#[test]
fn load_from_file_resolves_key_relative_to_config() {
    let dir = dir_with_key();
    let path = dir.path().join("ringfs.toml");
    std::fs::write(&path, three_voters()).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.path.as_deref(), Some(path.as_path()));
    // Serialising and re-reading gives the same file.
    let again = parse(&config.file.to_toml(), dir.path()).unwrap();
    assert_eq!(again.file, config.file);
    assert_eq!(again.key, config.key);
}

#[test]
fn missing_file_is_a_read_error() {
    let err = Config::load(Path::new("/nonexistent/ringfs.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/ringfs.toml"));
}

#[test]
fn duplicate_master_ids_named() {
    let text = format!(
        "cluster_id = \"c1\"\nkey_file = \"cluster.key\"\n{}{}{}",
        master(1, 9400, "voter"),
        master(1, 9410, "voter"),
        master(3, 9420, "voter")
    );
    let dir = dir_with_key();
    let err = parse(&text, dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("masters[1].id") && msg.contains("duplicate master id 1"),
        "{msg}"
    );
}

#[test]
fn unknown_role_is_a_parse_error_with_the_field() {
    let text = three_voters().replacen("role = \"voter\"", "role = \"leader\"", 1);
    let dir = dir_with_key();
    let err = parse(&text, dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{msg}");
    assert!(
        msg.contains("role") && msg.contains("leader") && msg.contains("voter"),
        "{msg}"
    );
}

#[test]
fn unknown_field_refused() {
    let text = format!("{}\n[master]\nlease_duraton_ms = 5\n", three_voters());
    let dir = dir_with_key();
    let msg = parse(&text, dir.path()).unwrap_err().to_string();
    assert!(msg.contains("lease_duraton_ms"), "{msg}");
}

#[test]
fn chunk_size_must_be_a_multiple_of_64k() {
    for bad in [0u64, 1000, 65_537, 3 << 30] {
        let text = format!("chunk_size_bytes = {bad}\n{}", three_voters());
        assert_eq!(problems_of(&text), ["chunk_size_bytes"], "chunk size {bad}");
    }
    let text = format!("chunk_size_bytes = {}\n{}", 128 * 1024, three_voters());
    assert!(problems_of(&text).is_empty());
}

#[test]
fn missing_key_file_named() {
    let text = three_voters().replace("cluster.key", "nope.key");
    let dir = dir_with_key();
    let err = parse(&text, dir.path()).unwrap_err();
    assert_eq!(err.problems()[0].field, "key_file");
    assert!(err.to_string().contains("nope.key"), "{err}");
}

#[test]
fn all_problems_reported_at_once() {
    let text = "cluster_id = \"bad id!\"\nkey_file = \"cluster.key\"\ndefault_replication = 0\n\
                [[masters]]\nid = 0\nclient_addr = \"nohost\"\npeer_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:1\"\nrole = \"voter\"\n\
                [master]\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 400\n";
    let fields = problems_of(text);
    for want in [
        "cluster_id",
        "default_replication",
        "masters[0].id",
        "masters[0].client_addr",
        "masters[0].peer_addr",
        "master.election_timeout_min_ms",
    ] {
        assert!(
            fields.iter().any(|f| f == want),
            "{want} missing from {fields:?}"
        );
    }
}

#[test]
fn voters_must_be_odd_and_present() {
    let two = format!(
        "cluster_id = \"c1\"\nkey_file = \"cluster.key\"\n{}{}",
        master(1, 9400, "voter"),
        master(2, 9410, "voter")
    );
    assert_eq!(problems_of(&two), ["masters"]);
    let none = format!(
        "cluster_id = \"c1\"\nkey_file = \"cluster.key\"\n{}",
        master(1, 9400, "shadow")
    );
    assert_eq!(problems_of(&none), ["masters"]);
    let empty = "cluster_id = \"c1\"\nkey_file = \"cluster.key\"\nmasters = []\n";
    assert_eq!(problems_of(empty), ["masters"]);
}

#[test]
fn addresses_must_be_distinct() {
    let text = three_voters().replace("127.0.0.1:9411", "127.0.0.1:9400");
    assert_eq!(problems_of(&text), ["masters[1].peer_addr"]);
}

#[test]
fn garbage_is_a_parse_error() {
    let dir = dir_with_key();
    for text in [
        "",
        "\u{0}\u{1}",
        "cluster_id = 5",
        "[[masters]]\nid = -1",
        "masters = \"x\"",
    ] {
        assert!(
            matches!(parse(text, dir.path()), Err(ConfigError::Parse { .. })),
            "{text:?}"
        );
    }
}

#[test]
fn empty_key_file_reported_once() {
    let text = three_voters().replace("key_file = \"cluster.key\"", "key_file = \"\"");
    assert_eq!(problems_of(&text), ["key_file"]);
}

#[test]
fn lease_must_outlast_heartbeats_and_fit_the_wire() {
    let text = format!(
        "{}\n[master]\nlease_duration_ms = 500\nheartbeat_interval_ms = 1000\nchunkserver_timeout_ms = 5000\n",
        three_voters()
    );
    assert_eq!(problems_of(&text), ["master.heartbeat_interval_ms"]);
    let text = format!(
        "{}\n[master]\nlease_duration_ms = 5000000000\n",
        three_voters()
    );
    assert_eq!(problems_of(&text), ["master.lease_duration_ms"]);
}
