//! The chunkserver's master link against fake masters speaking the
//! protocol: registration with every master, node id assignment and its
//! persistence, incremental reports, commands in heartbeat replies, epoch
//! fencing, re-registration after a master restart, and corruption reports
//! reaching every master.

#[path = "support/fake_master.rs"]
mod fake_master;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use chunkd::identity::DirIdentity;
use fake_master::{FakeMaster, Options};
use ringfs_wire::msg::{
    Body, ChunkCommand, ChunkReport, CommandEnvelope, CommandResult, CreateChunk, DeleteChunk,
    DeleteReason, ErrorCode, GrantLease, PeerKind, ReplicaState,
};
use support::*;

const CHUNK: u64 = 4 << 20;
/// The node id the fake leader hands out.
const NODE_ID: u64 = 42;

/// A config naming the fake masters (the first a voter, the rest shadows:
/// an even number of voters is refused), replacing the one `Env::new`
/// wrote.
fn point_at(env: &Env, masters: &[SocketAddr]) {
    let mut text = format!(
        "cluster_id = \"{CLUSTER}\"\nkey_file = \"cluster.key\"\nchunk_size_bytes = {}\n",
        env.chunk_size_bytes
    );
    for (i, addr) in masters.iter().enumerate() {
        let id = i + 1;
        let role = if i == 0 { "voter" } else { "shadow" };
        // Peer and HTTP addresses are never dialled by chunkd; they only
        // have to be distinct.
        text.push_str(&format!(
            "\n[[masters]]\nid = {id}\nclient_addr = \"{addr}\"\npeer_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\nrole = \"{role}\"\n",
            10 + 2 * id,
            11 + 2 * id
        ));
    }
    text.push_str("\n[chunkserver]\nbuffer_pool_buffers_per_core = 24\nbuffer_bytes = 1048576\n");
    std::fs::write(&env.config, text).unwrap();
}

fn leader() -> Options {
    Options {
        master_id: 1,
        assign_node_id: NODE_ID,
        ..Options::default()
    }
}

fn shadow() -> Options {
    Options {
        master_id: 2,
        register_error: Some(ErrorCode::ReadOnlyShadow),
        ..Options::default()
    }
}

fn results(m: &FakeMaster) -> Vec<CommandResult> {
    m.log()
        .heartbeats
        .iter()
        .flat_map(|(_, h)| h.results.clone().unwrap_or_default())
        .collect()
}

fn result_of(m: &FakeMaster, command_id: u64) -> Vec<CommandResult> {
    results(m)
        .into_iter()
        .filter(|r| r.command_id == command_id)
        .collect()
}

fn added(m: &FakeMaster) -> Vec<ChunkReport> {
    m.log()
        .heartbeats
        .iter()
        .flat_map(|(_, h)| h.added.clone().unwrap_or_default())
        .collect()
}

fn removed(m: &FakeMaster) -> Vec<u64> {
    m.log()
        .heartbeats
        .iter()
        .flat_map(|(_, h)| h.removed.clone().unwrap_or_default())
        .collect()
}

fn corrupt(m: &FakeMaster) -> Vec<ChunkReport> {
    m.log()
        .heartbeats
        .iter()
        .flat_map(|(_, h)| h.corrupt.clone().unwrap_or_default())
        .collect()
}

fn heartbeats_as(m: &FakeMaster, node_id: u64) -> usize {
    m.log()
        .heartbeats
        .iter()
        .filter(|(_, h)| h.node_id == node_id)
        .count()
}

fn command(command_id: u64, command: ChunkCommand) -> CommandEnvelope {
    CommandEnvelope {
        command_id,
        command: Some(command),
    }
}

fn create_cmd(epoch: u64, handle: u64, version: u64) -> ChunkCommand {
    ChunkCommand::CreateChunk(Box::new(CreateChunk {
        epoch,
        handle,
        version,
    }))
}

fn identity_node(dir: &Path) -> u64 {
    DirIdentity::load(dir).unwrap().unwrap().node_id.0
}

/// Two fake masters (a leader that assigns node ids, a shadow) and a
/// chunkd with two data dirs configured to use them; waits until the
/// node has its id and both masters hear heartbeats under it.
struct Cluster {
    env: Env,
    a: FakeMaster,
    b: FakeMaster,
    cs: Chunkd,
}

fn cluster(b_options: Options) -> Cluster {
    let env = Env::new(CHUNK);
    let a = FakeMaster::start(&env.key, CLUSTER, leader());
    let b = FakeMaster::start(&env.key, CLUSTER, b_options);
    point_at(&env, &[a.addr, b.addr]);
    let dirs = [env.data_dir("d0"), env.data_dir("d1")];
    let cs = env.start(&dirs, &["--cores", "2"]);
    cs.wait_until("heartbeats to both masters as the new node", || {
        heartbeats_as(&a, NODE_ID) > 0 && heartbeats_as(&b, NODE_ID) > 0
    });
    Cluster { env, a, b, cs }
}

#[test]
fn registers_with_every_master_and_keeps_the_assigned_node_id() {
    let Cluster { env, a, b, mut cs } = cluster(shadow());
    // The first registration of a fresh node carries no id; the leader's
    // reply assigns one, which every later message uses.
    let regs = a.log().registrations();
    assert_eq!(regs[0].node_id, 0, "a fresh chunkserver has no node id");
    let first = &regs[0].first;
    assert_eq!(first.listen_addr.as_deref(), Some(cs.addr.as_str()));
    let http = first.http_addr.clone().unwrap_or_default();
    assert!(http.is_empty() || http == cs.http, "http_addr {http:?}");
    assert_eq!(first.cores, 2);
    assert_eq!(first.highest_epoch, 0);
    assert!(regs[0].chunks.is_empty());
    let dirs = first.dirs.clone().unwrap();
    assert_eq!(dirs.len(), 2);
    for (dir, path) in dirs.iter().zip(&cs.data) {
        let identity = DirIdentity::load(path).unwrap().unwrap();
        assert_eq!(dir.dir_id, identity.dir_id);
        assert_eq!(
            dir.path.as_deref(),
            Some(path.display().to_string().as_str())
        );
        assert!(dir.healthy && dir.capacity_bytes > 0 && dir.used_bytes <= dir.capacity_bytes);
    }
    // Both dirs are on the test's one filesystem: the node's total counts
    // it once, not once per dir.
    assert_eq!(first.capacity_bytes, dirs[0].capacity_bytes);
    assert_eq!(dirs[0].capacity_bytes, dirs[1].capacity_bytes);
    assert!(first.used_bytes > 0 && first.used_bytes <= first.capacity_bytes);
    // The shadow refuses registrations as "read-only" yet takes them; once
    // the node has its id, it registers with the shadow under it too.
    cs.wait_until("a registration with the shadow as the new node", || {
        b.log().registrations().iter().any(|r| r.node_id == NODE_ID)
    });
    {
        let log = a.log();
        let h = &log.heartbeats.last().unwrap().1;
        assert!(h.capacity_bytes > 0 && h.used_bytes <= h.capacity_bytes);
        assert_eq!(h.dirs.as_ref().map(Vec::len), Some(2));
    }
    for path in &cs.data {
        assert_eq!(identity_node(path), NODE_ID, "{}", path.display());
    }

    // A restarted chunkd registers as the node it became, with every master.
    let before_a = a.log().registrations().len();
    let before_b = b.log().registrations().len();
    cs.restart(&env);
    assert!(
        cs.ready_line.contains(&format!("node={NODE_ID} ")),
        "{}",
        cs.ready_line
    );
    cs.wait_until("re-registration with both masters", || {
        a.log().registrations().len() > before_a && b.log().registrations().len() > before_b
    });
    for m in [&a, &b] {
        let log = m.log();
        let regs = log.registrations();
        assert!(regs[regs.len() - 1].node_id == NODE_ID, "{:?}", regs.last());
        assert_eq!(log.handshakes.last(), Some(&NODE_ID));
    }
}

#[test]
fn commands_in_heartbeat_replies_create_and_delete_chunks() {
    // Here the second master also takes registrations plainly.
    let c = cluster(Options {
        master_id: 2,
        ..Options::default()
    });
    let (a, b, cs) = (&c.a, &c.b, &c.cs);
    let handles = [0x100u64, 0x101, 0x102];
    for (i, &h) in handles.iter().enumerate() {
        a.push_command(command(i as u64 + 1, create_cmd(1, h, 1)));
    }
    cs.wait_until("results of the creates", || {
        (1..=3).all(|id| !result_of(a, id).is_empty())
    });
    for (i, &h) in handles.iter().enumerate() {
        let r = result_of(a, i as u64 + 1);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].handle, h);
        assert!(r[0].error.is_none(), "{:?}", r[0].error);
    }
    // Both masters hear of the new chunks in their incremental reports.
    for m in [a, b] {
        cs.wait_until("the new chunks in `added`", || {
            let added = added(m);
            handles.iter().all(|h| {
                added.iter().any(|r| {
                    r.handle == *h
                        && r.version == 1
                        && r.length_bytes == 0
                        && r.state == ReplicaState::Ok
                })
            })
        });
    }
    let mut conn = cs.conn(&c.env, PeerKind::Client);
    let r = info(&mut conn, 0x101);
    assert!(matches!(r.body, Body::ChunkInfoReply(_)), "{:?}", r.body);
    // Results go only to the master that sent the command.
    assert!(results(b).is_empty(), "{:?}", results(b));

    // One DeleteChunk naming two handles: a result per handle.
    a.push_command(command(
        10,
        ChunkCommand::DeleteChunk(Box::new(DeleteChunk {
            epoch: 1,
            handles: Some(vec![0x100, 0x102]),
            reason: DeleteReason::Orphan,
        })),
    ));
    cs.wait_until("results of the delete", || result_of(a, 10).len() == 2);
    let r = result_of(a, 10);
    assert_eq!(
        r.iter().map(|r| r.handle).collect::<Vec<_>>(),
        vec![0x100, 0x102]
    );
    assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
    for m in [a, b] {
        cs.wait_until("the deleted chunks in `removed`", || {
            let removed = removed(m);
            removed.contains(&0x100) && removed.contains(&0x102)
        });
        assert!(!removed(m).contains(&0x101));
    }
    let r = info(&mut conn, 0x100);
    assert_eq!(r.error_code(), Some(ErrorCode::NotFound));
}

#[test]
fn a_command_from_an_older_epoch_gets_a_stale_epoch_result() {
    let c = cluster(shadow());
    let (a, cs) = (&c.a, &c.cs);
    // In order: epoch 5 is admitted, then 3 and 4 are refused.
    a.push_command(command(1, create_cmd(5, 0x200, 1)));
    a.push_command(command(2, create_cmd(3, 0x201, 1)));
    a.push_command(command(
        3,
        ChunkCommand::GrantLease(Box::new(GrantLease {
            epoch: 4,
            handle: 0x200,
            version: 1,
            duration_ms: 60_000,
            secondaries: Some(Vec::new()),
        })),
    ));
    cs.wait_until("the three results", || {
        (1..=3).all(|id| !result_of(a, id).is_empty())
    });
    assert!(result_of(a, 1)[0].error.is_none(), "{:?}", result_of(a, 1));
    for id in [2, 3] {
        let r = &result_of(a, id)[0];
        let e = r.error.as_ref().unwrap_or_else(|| panic!("{r:?}"));
        assert_eq!(e.code, ErrorCode::StaleEpoch, "{e:?}");
        assert_eq!(e.epoch, 5, "the refusal names the highest epoch seen");
    }
    cs.wait_until("a heartbeat with the new highest epoch", || {
        a.log().heartbeats.iter().any(|(_, h)| h.highest_epoch == 5)
    });
    assert!(!added(a).iter().any(|r| r.handle == 0x201));
}

#[test]
fn a_restarted_master_gets_a_full_report_again() {
    let Cluster { env, mut a, b, cs } = cluster(shadow());
    // Chunks made over the data path (not by command): they show up in
    // heartbeats all the same.
    let handles = [0x300u64, 0x301, 0x302];
    let mut master = cs.conn(&env, PeerKind::Master);
    for &h in &handles {
        expect_ok(&create(&mut master, 1, h, 1));
    }
    expect_ok(&lease(&mut master, 1, 0x300, 1, 60_000, Vec::new()));
    let mut client = cs.conn(&env, PeerKind::Client);
    let data = pattern(7, 100_000);
    expect_ok(&write(&mut client, 1, 0x300, 1, 0, &data));
    cs.wait_until("the written length in `added`", || {
        added(&a)
            .iter()
            .any(|r| r.handle == 0x300 && r.length_bytes == data.len() as u64)
    });

    // Heartbeats carry the scrubber's progress, over every stored byte.
    cs.wait_until("scrub progress over the written bytes", || {
        a.log().heartbeats.iter().any(|(_, h)| {
            h.scrub
                .as_ref()
                .is_some_and(|s| s.bytes_stored == data.len() as u64)
        })
    });

    let b_registrations = b.log().registrations().len();
    let addr = a.addr;
    a.stop();
    drop(a);
    let a = FakeMaster::start_on(addr, &env.key, CLUSTER, leader());
    cs.wait_until("a registration with the restarted master", || {
        !a.log().registrations().is_empty()
    });
    let reg = a.log().registrations()[0].clone();
    assert_eq!(reg.node_id, NODE_ID);
    let mut got: Vec<_> = reg.chunks.iter().map(|r| r.handle).collect();
    got.sort_unstable();
    assert_eq!(got, handles, "the full report");
    let written = reg.chunks.iter().find(|r| r.handle == 0x300).unwrap();
    assert_eq!(written.length_bytes, data.len() as u64);
    assert_eq!(written.version, 1);
    cs.wait_until("heartbeats to the restarted master", || {
        heartbeats_as(&a, NODE_ID) > 0
    });
    // The full report is the baseline: later heartbeats add nothing new.
    assert!(added(&a).is_empty(), "{:?}", added(&a));
    // The other master's link never noticed.
    assert_eq!(b.log().registrations().len(), b_registrations);
}

#[test]
fn a_corrupt_replica_is_reported_to_every_master() {
    let c = cluster(shadow());
    let (env, a, b, cs) = (&c.env, &c.a, &c.b, &c.cs);
    let handle = 0x400;
    let (_master, mut client) = primary_chunk(env, cs, handle);
    let data = pattern(3, 2 * 65536);
    expect_ok(&write(&mut client, 1, handle, 1, 0, &data));
    // Flip a byte of the first block on disk, behind chunkd's back.
    let data_file = cs
        .data
        .iter()
        .flat_map(|d| std::fs::read_dir(d.join("chunks")).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{handle:016x}-")) && n.ends_with(".data"))
        })
        .expect("the chunk's data file");
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_file)
            .unwrap();
        let mut byte = [0u8; 1];
        f.seek(SeekFrom::Start(10)).unwrap();
        f.read_exact(&mut byte).unwrap();
        f.seek(SeekFrom::Start(10)).unwrap();
        f.write_all(&[byte[0] ^ 0xff]).unwrap();
        f.sync_all().unwrap();
    }
    let e = read(&mut client, handle, 0, 100).expect_err("a corrupt block is never served");
    assert_eq!(e.code, ErrorCode::ChecksumMismatch);
    for m in [a, b] {
        cs.wait_until("the corrupt replica in a heartbeat", || {
            corrupt(m)
                .iter()
                .any(|r| r.handle == handle && r.state == ReplicaState::Corrupt)
        });
    }
}

#[test]
fn a_lease_in_use_is_extended_through_heartbeats_and_an_idle_one_runs_out() {
    const LEASE_MS: u32 = 1_500;
    let env = Env::new(CHUNK);
    let a = FakeMaster::start(
        &env.key,
        CLUSTER,
        Options {
            extend_leases_ms: LEASE_MS,
            ..leader()
        },
    );
    point_at(&env, &[a.addr]);
    let cs = env.start(&[env.data_dir("d0")], &["--cores", "2"]);
    cs.wait_until("heartbeats as the new node", || {
        heartbeats_as(&a, NODE_ID) > 0
    });
    let mut master = cs.conn(&env, PeerKind::Master);
    let (busy, idle) = (0x500, 0x501);
    for handle in [busy, idle] {
        expect_ok(&create(&mut master, 1, handle, 1));
        expect_ok(&lease(&mut master, 1, handle, 1, LEASE_MS, Vec::new()));
    }
    let mut client = cs.conn(&env, PeerKind::Client);
    expect_ok(&write(&mut client, 1, idle, 1, 0, &pattern(1, 4096)));
    // Writes for three lease durations: each finds the lease extended.
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(3 * u64::from(LEASE_MS)) {
        let r = write(&mut client, 1, busy, 1, 0, &pattern(i, 4096));
        if let Some(e) = r.error() {
            panic!(
                "write {i} after {:?}: {:?} {:?}\n--- chunkd stderr ---\n{}",
                started.elapsed(),
                e.code,
                e.message,
                cs.stderr()
            );
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let asked: Vec<u64> = a
        .log()
        .heartbeats
        .iter()
        .flat_map(|(_, h)| h.extend_leases.clone().unwrap_or_default())
        .map(|l| l.handle)
        .collect();
    assert!(asked.contains(&busy), "{asked:?}");
    // The idle lease was used once, long ago: it was not kept alive.
    let r = write(&mut client, 1, idle, 1, 0, &pattern(2, 4096));
    assert_eq!(
        r.error().map(|e| e.code),
        Some(ErrorCode::LeaseExpired),
        "an idle lease runs out"
    );
}
