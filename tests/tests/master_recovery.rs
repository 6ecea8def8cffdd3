//! Damaged op log and checkpoints: a clean recovery or a clear refusal,
//! never silent loss of acknowledged records.

use std::path::{Path, PathBuf};

use ringfs_tests::*;

fn files_in(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

/// Starts masterd on the damaged data dir, expecting it to refuse; returns
/// what it said. Bounded: a refusing master exits at once.
fn start_refused(env: &Env) -> String {
    let mut child = std::process::Command::new(binary("masterd"))
        .args([
            "--config",
            &env.config.display().to_string(),
            "--id",
            "1",
            "--data",
        ])
        .arg(env.path("master1"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for(TIMEOUT, "masterd to exit", || child.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    if exited.success() {
        let _ = child.kill();
    }
    assert!(
        !exited.success(),
        "a master with damaged state must not start; it said:\n{err}"
    );
    err
}

fn populate(env: &Env, n: usize) -> Vec<String> {
    let mut c = env.client();
    c.mkdir("/r", false).unwrap();
    (0..n)
        .map(|i| {
            let p = format!("/r/f{i}");
            c.create(&p).unwrap();
            p
        })
        .collect()
}

fn all_present(env: &Env, paths: &[String]) {
    let mut c = env.client();
    let listed = c.list("/r").unwrap();
    assert_eq!(
        listed.len(),
        paths.len(),
        "every acknowledged create is present"
    );
}

#[test]
fn torn_log_tail_recovers_every_acknowledged_record() {
    let env = Env::new(&Options::default());
    let mut m = start_master(&env);
    let paths = populate(&env, 500);
    m.kill9();
    // A write torn by the crash: garbage after the last whole record.
    let segs = files_in(&env.path("master1").join("oplog"), ".seg");
    let last = segs.last().expect("a log segment");
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    std::io::Write::write_all(&mut f, &[0xC3; 777]).unwrap();
    drop(f);
    m.restart();
    all_present(&env, &paths);
    // And it keeps taking writes after the truncation.
    env.client().create("/r/after").unwrap();
}

#[test]
fn corruption_inside_the_log_is_refused_clearly() {
    let env = Env::new(&Options::default());
    let mut m = start_master(&env);
    populate(&env, 300);
    m.kill9();
    let segs = files_in(&env.path("master1").join("oplog"), ".seg");
    let first = segs.first().expect("a log segment");
    let len = std::fs::metadata(first).unwrap().len();
    flip_byte(first, len / 3);
    let err = start_refused(&env);
    assert!(
        err.contains(".seg"),
        "the error names the damaged file: {err}"
    );
}

#[test]
fn damaged_checkpoint_falls_back_to_the_previous_one() {
    let opts = Options {
        checkpoint_every_records: 200,
        ..Options::default()
    };
    let env = Env::new(&opts);
    let mut m = start_master(&env);
    let paths = populate(&env, 1000);
    let ckpt_dir = env.path("master1").join("checkpoints");
    wait_for(TIMEOUT, "two checkpoints", || {
        (files_in(&ckpt_dir, ".ckpt").len() >= 2).then_some(())
    });
    m.kill9();
    let ckpts = files_in(&ckpt_dir, ".ckpt");
    let newest = ckpts.last().unwrap();
    let len = std::fs::metadata(newest).unwrap().len();
    flip_byte(newest, len / 2);
    m.restart();
    all_present(&env, &paths);
    assert!(m.log_text().contains("checkpoint"), "the refusal is logged");
    m.kill9();
    // Every checkpoint damaged: refuse to start rather than start empty.
    for c in files_in(&ckpt_dir, ".ckpt") {
        let len = std::fs::metadata(&c).unwrap().len();
        flip_byte(&c, len / 2);
    }
    assert!(start_refused(&env).contains("checkpoint"));
}
