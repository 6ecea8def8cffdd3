//! Durability of the master: every acknowledged mutation survives kill -9,
//! across checkpoints and log replay.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringfs_tests::*;

#[test]
fn kill9_during_creates_loses_no_acknowledged_create() {
    // Checkpoints every few hundred records, so the restart loads one and
    // replays the log tail behind it.
    let opts = Options {
        checkpoint_every_records: 300,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let mut m = start_master(&env);
    env.client().mkdir("/load", false).unwrap();
    for round in 0..3 {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let mut c = env.client();
                let acked = acked.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    for i in 0..200_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let path = format!("/load/r{round}-w{w}-{i}");
                        let req = Some(c.next_req());
                        let body =
                            ringfs_wire::msg::Body::Create(Box::new(ringfs_wire::msg::Create {
                                req,
                                path: Some(path.clone()),
                                replication: 0,
                                exclusive: true,
                                mode: 0o644,
                                owner: Some("t".into()),
                            }));
                        match c.conn.call(&body, &[]) {
                            Ok(r) if r.error().is_none() => acked.lock().unwrap().push(path),
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        // Let a few thousand creates through, then pull the plug.
        wait_for(TIMEOUT, "creates to flow", || {
            (acked.lock().unwrap().len() > 1500 * (round + 1)).then_some(())
        });
        m.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        m.restart();
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty());
        let mut c = env.client();
        let listed: std::collections::HashSet<String> = c
            .list("/load")
            .unwrap()
            .into_iter()
            .map(|n| format!("/load/{n}"))
            .collect();
        let missing: Vec<_> = acked.iter().filter(|p| !listed.contains(*p)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged creates lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        eprintln!(
            "round {round}: {} acknowledged creates all present after kill -9",
            acked.len()
        );
    }
    // A checkpoint was written along the way (the restart loaded one).
    let checkpoints = std::fs::read_dir(env.path("master1").join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ckpt"))
        .count();
    assert!(checkpoints >= 1, "no checkpoint written");
    let _ = Duration::ZERO;
}

#[test]
fn clean_restart_keeps_everything_and_sigterm_exits_zero() {
    let env = Env::new(&Options::default());
    let mut m = start_master(&env);
    let mut c = env.client();
    c.mkdir("/x/y", true).unwrap();
    c.create("/x/y/f").unwrap();
    let t = c.delete("/x/y/f", false).unwrap();
    assert_eq!(m.terminate(), Some(0));
    m.restart();
    let mut c = env.client();
    assert!(c.stat("/x/y").is_ok());
    c.restore(t, "").unwrap();
    assert!(c.stat("/x/y/f").is_ok());
}

#[test]
fn checkpoints_follow_applied_ops_when_records_carry_batches() {
    // The record-count policy is out of reach; only the op count can
    // trigger a checkpoint. Eight writers put several ops in a record.
    let opts = Options {
        checkpoint_every_records: 1_000_000_000,
        checkpoint_every_ops: 400,
        log_kept_behind_checkpoint_records: 0,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let mut m = start_master(&env);
    let http = m.field("http");
    env.client().mkdir("/d", false).unwrap();
    // Two waves of 8 x 60 creates, each past the op count: each wave ends
    // in a checkpoint of its own (the count is checked every second).
    for wave in 1..=2u64 {
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let mut c = env.client();
                std::thread::spawn(move || {
                    for i in 0..60 {
                        c.create(&format!("/d/v{wave}-w{w}-{i}")).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let deadline = std::time::Instant::now() + TIMEOUT;
        while metric(&http, "ringfs_master_checkpoints_total") < wave {
            assert!(
                std::time::Instant::now() < deadline,
                "wave {wave}: no checkpoint by op count (ops since the last: {}); master log:\n{}",
                metric(&http, "ringfs_master_ops_since_checkpoint"),
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(metric(&http, "ringfs_master_ops_since_checkpoint") < 400);
    }
    // With the second checkpoint, the log behind the first one goes: the
    // first checkpoint plus the log still reach the present.
    let first_checkpoint_index = {
        let mut names: Vec<String> = std::fs::read_dir(env.path("master1").join("checkpoints"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".ckpt"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        // checkpoint-<index:020>-<term:020>.ckpt
        names[0]["checkpoint-".len().."checkpoint-".len() + 20]
            .parse::<u64>()
            .unwrap()
    };
    wait_for(TIMEOUT, "the log purged up to the first checkpoint", || {
        let status = http_get(&http, "/status")?;
        let v: serde_json::Value = serde_json::from_str(&status).ok()?;
        (v["purged_index"].as_u64()? >= first_checkpoint_index).then_some(())
    });
    // The restart loads the newest one and replays what follows it.
    m.kill9();
    m.restart();
    let listed = env.client().list("/d").unwrap();
    assert_eq!(listed.len(), 2 * 8 * 60);
}
