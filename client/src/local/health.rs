//! Cluster health as the masters see it: one `AdminStatus` call to the
//! first master that answers, and a bounded wait until a leader is elected
//! and enough chunkservers are registered and live.

use std::time::{Duration, Instant};

use ringfs_wire::config::Config;
use ringfs_wire::msg::{AdminStatus, Body, ChunkserverState, MasterRole as WireRole, PeerKind};
use serde::Serialize;

use super::LocalError;
use crate::conn::Conn;

/// Bound on one connect or call to a master on loopback.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two probes while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Serialize)]
pub struct MasterHealth {
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `shadow` or `unreachable`.
    pub role: String,
    pub term: u64,
    pub leader: u64,
    pub client_addr: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChunkserverHealth {
    /// The id the master assigned at registration.
    pub node_id: u64,
    pub addr: String,
    pub rack: String,
    /// `live`, `dead` or `decommissioning`.
    pub state: String,
    pub chunk_count: u64,
    pub last_heartbeat_ms_ago: u64,
}

/// One master's answer to `AdminStatus`.
#[derive(Clone, Debug, Serialize)]
pub struct Health {
    /// The master that answered.
    pub asked: String,
    /// The leader's id, if one is known.
    pub leader: Option<u64>,
    /// The highest term any master reported.
    pub term: u64,
    pub masters: Vec<MasterHealth>,
    pub chunkservers: Vec<ChunkserverHealth>,
    pub files: u64,
    pub directories: u64,
    pub chunks: u64,
}

impl Health {
    pub fn live_chunkservers(&self) -> usize {
        self.chunkservers
            .iter()
            .filter(|c| c.state == "live")
            .count()
    }

    /// The chunkserver registered at `addr`, if any.
    pub fn chunkserver(&self, addr: &str) -> Option<&ChunkserverHealth> {
        self.chunkservers.iter().find(|c| c.addr == addr)
    }

    /// A leader and at least `expected_chunkservers` live chunkservers.
    pub fn is_healthy(&self, expected_chunkservers: usize) -> bool {
        self.leader.is_some() && self.live_chunkservers() >= expected_chunkservers
    }
}

fn role_name(role: WireRole) -> &'static str {
    match role {
        WireRole::Leader => "leader",
        WireRole::Follower => "follower",
        WireRole::Candidate => "candidate",
        WireRole::Shadow => "shadow",
        WireRole::Unreachable => "unreachable",
    }
}

fn state_name(state: ChunkserverState) -> &'static str {
    match state {
        ChunkserverState::Live => "live",
        ChunkserverState::Dead => "dead",
        ChunkserverState::Decommissioning => "decommissioning",
    }
}

/// Asks one master for the cluster status.
fn ask(config: &Config, addr: &str, timeout: Duration) -> Result<Health, String> {
    let mut conn = Conn::connect(
        addr,
        &config.key,
        &config.file.cluster_id,
        PeerKind::Client,
        timeout,
    )
    .map_err(|e| e.to_string())?;
    let reply = conn
        .call(&Body::AdminStatus(Box::new(AdminStatus {})), &[])
        .map_err(|e| e.to_string())?;
    let r = match reply.body {
        Body::AdminStatusReply(r) => r,
        Body::ErrorReply(e) => {
            return Err(format!(
                "{addr} refused AdminStatus ({:?}): {}",
                e.code,
                e.message.unwrap_or_default()
            ));
        }
        other => return Err(format!("{addr} answered AdminStatus with {other:?}")),
    };
    let masters: Vec<MasterHealth> = r
        .masters
        .unwrap_or_default()
        .into_iter()
        .map(|m| MasterHealth {
            id: m.id,
            role: role_name(m.role).to_owned(),
            term: m.term,
            leader: m.leader,
            client_addr: m.client_addr.unwrap_or_default(),
        })
        .collect();
    let leader = masters
        .iter()
        .find(|m| m.role == "leader")
        .map(|m| m.id)
        .or_else(|| masters.iter().map(|m| m.leader).find(|&l| l != 0));
    let chunkservers = r
        .chunkservers
        .unwrap_or_default()
        .into_iter()
        .map(|c| ChunkserverHealth {
            node_id: c.node_id,
            addr: c.addr.unwrap_or_default(),
            rack: c.rack.unwrap_or_default(),
            state: state_name(c.state).to_owned(),
            chunk_count: c.chunk_count,
            last_heartbeat_ms_ago: c.last_heartbeat_ms_ago,
        })
        .collect();
    Ok(Health {
        asked: addr.to_owned(),
        leader,
        term: masters.iter().map(|m| m.term).max().unwrap_or(0),
        masters,
        chunkservers,
        files: r.files,
        directories: r.directories,
        chunks: r.chunks,
    })
}

/// The status from the leader (it sees every member's progress), else from
/// the first master (in config order) that answers; the error lists why
/// each one did not.
pub fn probe(config: &Config, timeout: Duration) -> Result<Health, String> {
    let mut why = Vec::new();
    let mut first = None;
    for m in &config.file.masters {
        match ask(config, &m.client_addr, timeout) {
            Ok(h) if h.leader == Some(m.id) => return Ok(h),
            Ok(h) => {
                let leader = h.leader.and_then(|l| config.master(l));
                if let Some(l) = leader
                    && let Ok(from_leader) = ask(config, &l.client_addr, timeout)
                    && from_leader.leader == Some(l.id)
                {
                    return Ok(from_leader);
                }
                first.get_or_insert(h);
            }
            Err(e) => why.push(format!("master {}: {e}", m.id)),
        }
    }
    first.ok_or_else(|| why.join("; "))
}

/// What a wait is still missing, for the error when it times out.
pub(crate) struct Missing {
    /// The node to blame (its log is shown), e.g. `master-1` or `cs-2`.
    pub node: Option<String>,
    pub what: String,
}

/// Why a wait ended without a healthy cluster.
pub(crate) enum WaitError {
    /// The timeout passed; what was still missing at the last probe.
    Timeout(Missing),
    /// `watch` failed (a daemon died).
    Watch(LocalError),
}

/// Probes until `check` passes, `watch` fails (a daemon died) or `timeout`
/// passes; every probe is bounded by [`PROBE_TIMEOUT`].
pub(crate) fn wait_until(
    config: &Config,
    timeout: Duration,
    mut check: impl FnMut(&Health) -> Result<(), Missing>,
    mut watch: impl FnMut() -> Result<(), LocalError>,
) -> Result<Health, WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        watch().map_err(WaitError::Watch)?;
        let missing = match probe(config, PROBE_TIMEOUT.min(timeout)) {
            Ok(h) => match check(&h) {
                Ok(()) => return Ok(h),
                Err(m) => m,
            },
            Err(e) => Missing {
                node: config
                    .file
                    .masters
                    .first()
                    .map(|m| format!("master-{}", m.id)),
                what: format!("no master answered: {e}"),
            },
        };
        if Instant::now() >= deadline {
            return Err(WaitError::Timeout(missing));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until a leader is elected and at least `expected_chunkservers`
/// chunkservers are registered and live, polling every 100 ms up to
/// `timeout`.
pub fn wait_healthy(
    config: &Config,
    expected_chunkservers: usize,
    timeout: Duration,
) -> Result<Health, LocalError> {
    let check = |h: &Health| {
        if h.leader.is_none() {
            Err(Missing {
                node: None,
                what: "no leader elected".into(),
            })
        } else if h.live_chunkservers() < expected_chunkservers {
            Err(Missing {
                node: None,
                what: format!(
                    "{} of {expected_chunkservers} chunkservers registered and live",
                    h.live_chunkservers()
                ),
            })
        } else {
            Ok(())
        }
    };
    wait_until(config, timeout, check, || Ok(())).map_err(|e| match e {
        WaitError::Watch(e) => e,
        WaitError::Timeout(m) => LocalError::Unavailable {
            node: m.node.unwrap_or_else(|| "cluster".into()),
            message: format!("not healthy after {} s: {}", timeout.as_secs(), m.what),
            log_file: None,
            log_tail: String::new(),
        },
    })
}
