//! The cluster configuration file (DESIGN §7): one TOML file describes a
//! cluster, and every daemon and client reads it through this module, so
//! they all read it the same way.
//!
//! ```toml
//! cluster_id = "prod-eu1"
//! key_file = "cluster.key"          # relative to this file; mode 0600
//! default_replication = 3
//! chunk_size_bytes = 67108864       # a multiple of 64 KiB
//!
//! [[masters]]
//! id = 1
//! client_addr = "10.0.0.1:9400"     # clients and chunkservers
//! peer_addr = "10.0.0.1:9401"       # other masters (Raft)
//! http_addr = "10.0.0.1:9402"       # GET /metrics, GET /status
//! role = "voter"                    # or "shadow" (read-only learner)
//!
//! [master]                           # optional tuning; defaults in docs/design/003-configuration.md
//! lease_duration_ms = 60000
//! ```
//!
//! Validation collects every problem, each naming its field.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::ClusterKey;
use crate::checksum::BLOCK_BYTES;
use crate::ids::DEFAULT_CHUNK_SIZE_BYTES;

/// Upper bound on masters listed in one config (voters and shadows).
pub const MASTERS_MAX: usize = 64;
/// Upper bound on voting masters: Raft quorums beyond this only add latency.
pub const VOTERS_MAX: usize = 9;
pub const REPLICATION_MAX: u8 = 16;
pub const CHUNK_SIZE_MAX_BYTES: u64 = 1 << 30;
pub const CLUSTER_ID_MAX_BYTES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasterRole {
    /// A Raft voter: leader or hot standby.
    Voter,
    /// A Raft learner: read-only shadow master.
    Shadow,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterConfig {
    pub id: u64,
    /// `host:port` for clients and chunkservers.
    pub client_addr: String,
    /// `host:port` for the other masters (Raft traffic).
    pub peer_addr: String,
    /// `host:port` of the HTTP endpoint (`/metrics`, `/status`).
    pub http_addr: String,
    pub role: MasterRole,
    /// Optional rack label, for operators' eyes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
}

/// Master tuning. Every field has a default; unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterTuning {
    pub lease_duration_ms: u64,
    /// Chunkservers heartbeat this often (the master tells them at registration).
    pub heartbeat_interval_ms: u64,
    /// A chunkserver silent this long is dead.
    pub chunkserver_timeout_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub raft_heartbeat_interval_ms: u64,
    /// Group commit: one fdatasync covers what arrived within this window...
    pub group_commit_max_delay_us: u64,
    /// ...or this many bytes, whichever comes first.
    pub group_commit_max_bytes: u64,
    /// Deleted files stay restorable this long.
    pub trash_retention_secs: u64,
    /// Checkpoint after this many log records.
    pub checkpoint_every_records: u64,
    /// Also checkpoint once this many ops were applied since the last
    /// checkpoint (a record holds a batch of ops): bounds the replay of a
    /// restart.
    pub checkpoint_every_ops: u64,
    /// Log records kept behind the previous checkpoint (openraft's own
    /// purge keeps them behind the newest, beyond `checkpoint_every_records`;
    /// whichever purges more wins): a follower at most this far behind
    /// catches up from the log; one further behind gets the checkpoint (a
    /// transfer of the whole file).
    pub log_kept_behind_checkpoint_records: u64,
    pub rereplication_per_chunkserver_max: u32,
    pub rereplication_cluster_max: u32,
}

impl Default for MasterTuning {
    fn default() -> Self {
        MasterTuning {
            lease_duration_ms: 60_000,
            heartbeat_interval_ms: 1_000,
            chunkserver_timeout_ms: 10_000,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            raft_heartbeat_interval_ms: 50,
            group_commit_max_delay_us: 2_000,
            group_commit_max_bytes: 4 << 20,
            trash_retention_secs: 24 * 3600,
            checkpoint_every_records: 1_000_000,
            checkpoint_every_ops: 1_000_000,
            log_kept_behind_checkpoint_records: 10_000,
            rereplication_per_chunkserver_max: 4,
            rereplication_cluster_max: 64,
        }
    }
}

/// Chunkserver tuning. Every field has a default; unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkserverTuning {
    /// Every stored byte is verified within this period.
    pub scrub_period_secs: u64,
    /// Aligned I/O buffers per core; requests wait when they run out.
    pub buffer_pool_buffers_per_core: u32,
    pub buffer_bytes: u32,
    /// Pushed data waiting for its mutation, per core.
    pub push_buffer_max_bytes: u64,
    /// Chunks whose two files stay open, over all cores; the least recently
    /// used are closed beyond it and reopened on their next use. 0: as many
    /// as the open-files limit allows (a quarter of it, at most 8192, is
    /// kept for sockets and the rest).
    pub open_chunks_max: u64,
    /// Bytes of each data dir's filesystem that ringfs leaves free: no new
    /// chunk is placed where less than this plus [`room_for_new_chunk_bytes`]
    /// is available, and chunkservers report it as used.
    pub data_dir_reserved_bytes: u64,
}

/// Free bytes a data dir needs, beyond its reserve, to take a new chunk:
/// the chunk at full size and a sixteenth more for its meta file and the
/// filesystem's own blocks. The master places new chunks only on
/// chunkservers reporting this much free, and a chunkserver creates one
/// only in a data dir that has it.
pub fn room_for_new_chunk_bytes(chunk_size_bytes: u64) -> u64 {
    chunk_size_bytes.saturating_add(chunk_size_bytes / 16)
}

impl Default for ChunkserverTuning {
    fn default() -> Self {
        ChunkserverTuning {
            scrub_period_secs: 7 * 24 * 3600,
            buffer_pool_buffers_per_core: 64,
            buffer_bytes: 1 << 20,
            push_buffer_max_bytes: 256 << 20,
            open_chunks_max: 0,
            data_dir_reserved_bytes: 0,
        }
    }
}

fn default_replication() -> u8 {
    3
}

fn default_chunk_size_bytes() -> u64 {
    DEFAULT_CHUNK_SIZE_BYTES
}

/// The file as written. [`Config`] is the validated form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub cluster_id: String,
    /// Relative paths are relative to the config file's directory.
    pub key_file: PathBuf,
    #[serde(default = "default_replication")]
    pub default_replication: u8,
    #[serde(default = "default_chunk_size_bytes")]
    pub chunk_size_bytes: u64,
    pub masters: Vec<MasterConfig>,
    #[serde(default)]
    pub master: MasterTuning,
    #[serde(default)]
    pub chunkserver: ChunkserverTuning,
}

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `masters[1].id`.
    pub field: String,
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.field, self.problem)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path} has {} problem(s):\n{}", .problems.len(), list(.problems))]
    Invalid {
        path: String,
        problems: Vec<FieldError>,
    },
}

fn list(problems: &[FieldError]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The field problems, if this is a validation error.
    pub fn problems(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// A validated configuration with its cluster key loaded.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: ConfigFile,
    pub key: ClusterKey,
    /// Where the file was read from (`None` when parsed from a string).
    pub path: Option<PathBuf>,
}

impl Config {
    /// Reads, parses and validates `path`, then loads its key file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::from_toml(&text, base_dir, &path.display().to_string())?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates `text`; a relative key file is found under `base_dir`.
    /// `shown_as` names the source in errors.
    pub fn from_toml(text: &str, base_dir: &Path, shown_as: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown_as.to_owned(),
            message: e.to_string(),
        })?;
        let mut problems = file.validate();
        // An empty key_file is already reported by validate(): nothing to load.
        let key = if file.key_file.as_os_str().is_empty() {
            None
        } else {
            match ClusterKey::load(&file.key_file_path(base_dir)) {
                Ok(key) => Some(key),
                Err(e) => {
                    problems.push(FieldError {
                        field: "key_file".into(),
                        problem: e.to_string(),
                    });
                    None
                }
            }
        };
        match key {
            Some(key) if problems.is_empty() => Ok(Config {
                file,
                key,
                path: None,
            }),
            _ => Err(ConfigError::Invalid {
                path: shown_as.to_owned(),
                problems,
            }),
        }
    }

    pub fn master(&self, id: u64) -> Option<&MasterConfig> {
        self.file.masters.iter().find(|m| m.id == id)
    }

    pub fn voters(&self) -> impl Iterator<Item = &MasterConfig> {
        self.file
            .masters
            .iter()
            .filter(|m| m.role == MasterRole::Voter)
    }

    pub fn shadows(&self) -> impl Iterator<Item = &MasterConfig> {
        self.file
            .masters
            .iter()
            .filter(|m| m.role == MasterRole::Shadow)
    }
}

impl ConfigFile {
    pub fn key_file_path(&self, base_dir: &Path) -> PathBuf {
        if self.key_file.is_absolute() {
            self.key_file.clone()
        } else {
            base_dir.join(&self.key_file)
        }
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a ConfigFile always serialises")
    }

    /// Every problem found, each naming its field; empty when valid.
    /// The key file is checked by [`Config::from_toml`], not here.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        let mut bad = |field: String, problem: String| problems.push(FieldError { field, problem });

        let id = &self.cluster_id;
        if id.is_empty() || id.len() > CLUSTER_ID_MAX_BYTES {
            bad(
                "cluster_id".into(),
                format!("must be 1 to {CLUSTER_ID_MAX_BYTES} bytes, is {}", id.len()),
            );
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            bad(
                "cluster_id".into(),
                format!("{id:?} may hold only letters, digits, '.', '_' and '-'"),
            );
        }
        if self.key_file.as_os_str().is_empty() {
            bad("key_file".into(), "must name the cluster key file".into());
        }
        if !(1..=REPLICATION_MAX).contains(&self.default_replication) {
            bad(
                "default_replication".into(),
                format!(
                    "must be 1 to {REPLICATION_MAX}, is {}",
                    self.default_replication
                ),
            );
        }
        let block = BLOCK_BYTES as u64;
        if self.chunk_size_bytes == 0
            || !self.chunk_size_bytes.is_multiple_of(block)
            || self.chunk_size_bytes > CHUNK_SIZE_MAX_BYTES
        {
            bad(
                "chunk_size_bytes".into(),
                format!(
                    "must be a non-zero multiple of 64 KiB ({block}) up to {CHUNK_SIZE_MAX_BYTES}, is {}",
                    self.chunk_size_bytes
                ),
            );
        }

        if self.masters.is_empty() {
            bad("masters".into(), "at least one master is required".into());
        }
        if self.masters.len() > MASTERS_MAX {
            bad(
                "masters".into(),
                format!("at most {MASTERS_MAX} masters, has {}", self.masters.len()),
            );
        }
        let voters = self
            .masters
            .iter()
            .filter(|m| m.role == MasterRole::Voter)
            .count();
        if !self.masters.is_empty() && voters == 0 {
            bad(
                "masters".into(),
                "at least one master must have role = \"voter\"".into(),
            );
        } else if voters.is_multiple_of(2) && voters > 0 {
            bad(
                "masters".into(),
                format!(
                    "{voters} voters tolerate no more failures than {}; use an odd number (1, 3, 5...)",
                    voters - 1
                ),
            );
        } else if voters > VOTERS_MAX {
            bad(
                "masters".into(),
                format!("at most {VOTERS_MAX} voters, has {voters}"),
            );
        }
        let mut ids: HashMap<u64, usize> = HashMap::new();
        let mut addrs: HashMap<&str, String> = HashMap::new();
        for (i, m) in self.masters.iter().enumerate() {
            if m.id == 0 {
                bad(
                    format!("masters[{i}].id"),
                    "must be at least 1 (0 means \"none\" on the wire)".into(),
                );
            } else if let Some(first) = ids.insert(m.id, i) {
                bad(
                    format!("masters[{i}].id"),
                    format!("duplicate master id {} (also masters[{first}])", m.id),
                );
            }
            for (name, addr) in [
                ("client_addr", &m.client_addr),
                ("peer_addr", &m.peer_addr),
                ("http_addr", &m.http_addr),
            ] {
                let field = format!("masters[{i}].{name}");
                if let Err(problem) = check_host_port(addr) {
                    bad(field, problem);
                } else if let Some(first) = addrs.insert(addr.as_str(), field.clone()) {
                    bad(field, format!("address {addr} is already used by {first}"));
                }
            }
        }

        let t = &self.master;
        let positive = [
            ("master.lease_duration_ms", t.lease_duration_ms),
            ("master.heartbeat_interval_ms", t.heartbeat_interval_ms),
            (
                "master.raft_heartbeat_interval_ms",
                t.raft_heartbeat_interval_ms,
            ),
            ("master.group_commit_max_bytes", t.group_commit_max_bytes),
            (
                "master.checkpoint_every_records",
                t.checkpoint_every_records,
            ),
            ("master.checkpoint_every_ops", t.checkpoint_every_ops),
            (
                "master.rereplication_per_chunkserver_max",
                u64::from(t.rereplication_per_chunkserver_max),
            ),
            (
                "master.rereplication_cluster_max",
                u64::from(t.rereplication_cluster_max),
            ),
            (
                "chunkserver.scrub_period_secs",
                self.chunkserver.scrub_period_secs,
            ),
            (
                "chunkserver.buffer_pool_buffers_per_core",
                u64::from(self.chunkserver.buffer_pool_buffers_per_core),
            ),
            (
                "chunkserver.push_buffer_max_bytes",
                self.chunkserver.push_buffer_max_bytes,
            ),
        ];
        for (field, value) in positive {
            if value == 0 {
                bad(field.into(), "must be greater than 0".into());
            }
        }
        if t.chunkserver_timeout_ms < t.heartbeat_interval_ms.saturating_mul(2) {
            bad(
                "master.chunkserver_timeout_ms".into(),
                format!(
                    "must be at least twice master.heartbeat_interval_ms ({}), is {}",
                    t.heartbeat_interval_ms, t.chunkserver_timeout_ms
                ),
            );
        }
        if t.election_timeout_min_ms >= t.election_timeout_max_ms {
            bad(
                "master.election_timeout_min_ms".into(),
                format!(
                    "must be below master.election_timeout_max_ms ({}), is {}",
                    t.election_timeout_max_ms, t.election_timeout_min_ms
                ),
            );
        }
        if t.raft_heartbeat_interval_ms >= t.election_timeout_min_ms {
            bad(
                "master.raft_heartbeat_interval_ms".into(),
                format!(
                    "must be below master.election_timeout_min_ms ({}), is {}",
                    t.election_timeout_min_ms, t.raft_heartbeat_interval_ms
                ),
            );
        }
        // These travel as u32 milliseconds (RegisterReply, GrantLease).
        for (field, value) in [
            ("master.lease_duration_ms", t.lease_duration_ms),
            ("master.heartbeat_interval_ms", t.heartbeat_interval_ms),
        ] {
            if value > u64::from(u32::MAX) {
                bad(
                    field.into(),
                    format!("must be at most {} ms, is {value}", u32::MAX),
                );
            }
        }
        if t.heartbeat_interval_ms >= t.lease_duration_ms {
            bad(
                "master.heartbeat_interval_ms".into(),
                format!(
                    "must be below master.lease_duration_ms ({}) so leases can be renewed, is {}",
                    t.lease_duration_ms, t.heartbeat_interval_ms
                ),
            );
        }
        let buffer = self.chunkserver.buffer_bytes;
        if buffer == 0 || !(buffer as usize).is_multiple_of(BLOCK_BYTES) {
            bad(
                "chunkserver.buffer_bytes".into(),
                format!("must be a non-zero multiple of 64 KiB, is {buffer}"),
            );
        }
        problems
    }
}

/// `host:port` with a non-empty host and a port from 1 to 65535.
fn check_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{addr:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{addr:?} needs a port from 1 to 65535")),
        Ok(_) => Ok(()),
    }
}
