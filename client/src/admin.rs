//! Operator commands that need no running cluster: key generation and
//! config checking.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use ringfs_wire::auth::ClusterKey;
use ringfs_wire::config::Config;

/// Writes a fresh cluster key to `path` with mode 0600. Refuses to replace an
/// existing file: losing the old key locks every node out of the cluster.
pub fn keygen(path: &Path) -> Result<(), String> {
    let key = ClusterKey::generate().map_err(|e| e.to_string())?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} already exists; refusing to replace a cluster key",
                path.display()
            )
        } else {
            format!("cannot create {}: {e}", path.display())
        }
    })?;
    file.write_all(key.to_hex_line().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A human summary of a validated config.
pub fn describe(config: &Config) -> String {
    let f = &config.file;
    let mut out = String::new();
    let _ = writeln!(out, "cluster {}: config valid", f.cluster_id);
    let _ = writeln!(
        out,
        "  chunk size {} MiB, default replication {}",
        f.chunk_size_bytes >> 20,
        f.default_replication
    );
    for m in &f.masters {
        let _ = writeln!(
            out,
            "  master {} ({:?}): client {}, peer {}, http {}",
            m.id, m.role, m.client_addr, m.peer_addr, m.http_addr
        );
    }
    out
}
