//! Daemon processes of a local cluster: started detached (own process
//! group, output to a log file, never waited on by the caller), recognised
//! by PID only when `/proc/PID/cmdline` still names our program and our
//! data dir (PIDs get reused), and stopped with SIGTERM, then SIGKILL.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// How often stop and liveness loops look again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// After SIGKILL the kernel needs a moment to tear the process down.
const AFTER_KILL_WAIT: Duration = Duration::from_secs(2);
/// The end of a log file shown in errors.
const LOG_TAIL_BYTES: u64 = 4096;
const LOG_TAIL_LINES: usize = 20;

/// Children this process started. Kept only to reap them once they exit:
/// an unreaped child stays a zombie whose PID still answers `kill(pid, 0)`
/// (a long-lived caller, such as a test, would see it as alive). The
/// daemons are meant to outlive a short-lived `ringfs local up`; when it
/// exits they are re-parented and reaped by init.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

fn children() -> std::sync::MutexGuard<'static, Vec<Child>> {
    // A panic while holding the lock leaves the list intact: keep using it.
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reaps every child of ours that has exited.
pub fn reap() {
    children().retain_mut(|c| matches!(c.try_wait(), Ok(None)));
}

/// If `pid` is a child of ours that has exited, reaps it and says how it ended.
pub fn exit_status(pid: u32) -> Option<String> {
    let mut list = children();
    let i = list.iter().position(|c| c.id() == pid)?;
    match list[i].try_wait() {
        // Already reaped by try_wait: wait() returns the kept status at once.
        Ok(Some(_)) => list.swap_remove(i).wait().ok().map(|s| s.to_string()),
        _ => None,
    }
}

/// Starts `program args` in its own process group, stdin from /dev/null,
/// stdout and stderr appended to `log_file`; returns its PID.
pub fn spawn(program: &Path, args: &[String], log_file: &Path) -> io::Result<u32> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)?;
    // Logs are appended across restarts: mark where this run begins.
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(
        log,
        "=== ringfs local: starting {} (unix time {now_secs}) ===",
        program.display()
    )?;
    let log2 = log.try_clone()?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // The output goes to a file: no terminal colour codes in it.
        .env("NO_COLOR", "1")
        // Own process group: a Ctrl-C in the terminal that ran `up` (or in
        // a later command of the same shell job) does not reach the daemons.
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    children().push(child);
    Ok(pid)
}

/// Whether `pid` is a running `program_name` started with `data_dir` among
/// its arguments. A zombie has an empty cmdline, so it counts as gone.
pub fn is_ours(pid: u32, program_name: &str, data_dir: &Path) -> bool {
    if pid == 0 {
        return false;
    }
    reap();
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = raw.split(|&b| b == 0).filter(|a| !a.is_empty());
    let Some(argv0) = args.next() else {
        return false;
    };
    let name = argv0.rsplit(|&b| b == b'/').next().unwrap_or(argv0);
    if name != program_name.as_bytes() {
        return false;
    }
    let dir = data_dir.as_os_str().as_encoded_bytes();
    // chunkd takes `--data A,B`: match the whole argument or one of its parts.
    args.any(|a| a == dir || a.split(|&b| b == b',').any(|p| p == dir))
}

fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    let raw = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let pid = Pid::from_raw(raw).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    rustix::process::kill_process(pid, sig).map_err(io::Error::from)
}

/// One process to stop: its PID and how to recognise it.
pub struct Target<'a> {
    pub pid: u32,
    pub program_name: &'a str,
    pub data_dir: &'a Path,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// Not running (or its PID now belongs to another process): left alone.
    NotRunning,
    /// Exited after SIGTERM.
    Terminated,
    /// Ignored SIGTERM for the whole timeout; exited after SIGKILL.
    Killed,
    /// Still there even after SIGKILL (stuck in the kernel, e.g. on a dead disk).
    StillRunning,
}

/// Sends SIGTERM to every target that is ours, waits up to `term_timeout`
/// for all of them, then SIGKILLs the rest. One outcome per target, in order.
pub fn stop_all(targets: &[Target<'_>], term_timeout: Duration) -> Vec<StopOutcome> {
    let alive = |t: &Target<'_>| is_ours(t.pid, t.program_name, t.data_dir);
    let mut outcome: Vec<StopOutcome> = targets
        .iter()
        .map(|t| {
            // A failed signal means the process is already gone.
            if alive(t) && signal(t.pid, Signal::TERM).is_ok() {
                StopOutcome::Terminated
            } else {
                StopOutcome::NotRunning
            }
        })
        .collect();
    let running = |outcome: &[StopOutcome]| -> Vec<usize> {
        (0..targets.len())
            .filter(|&i| outcome[i] != StopOutcome::NotRunning && alive(&targets[i]))
            .collect()
    };
    let deadline = Instant::now() + term_timeout;
    let mut left = running(&outcome);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(POLL_INTERVAL);
        left = running(&outcome);
    }
    for &i in &left {
        let _ = signal(targets[i].pid, Signal::KILL);
        outcome[i] = StopOutcome::Killed;
    }
    let deadline = Instant::now() + AFTER_KILL_WAIT;
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(POLL_INTERVAL);
        left.retain(|&i| alive(&targets[i]));
    }
    for &i in &left {
        outcome[i] = StopOutcome::StillRunning;
    }
    outcome
}

/// The last lines of a log file, for error messages; empty if unreadable.
pub fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut buf = Vec::new();
        f.take(LOG_TAIL_BYTES).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = read().unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeping_child_is_recognised_stopped_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("data");
        let log = dir.path().join("sleep.log");
        // `sh -c 'exec sleep 30' MARKER`: after the exec the cmdline is
        // `sleep 30`, so "30" plays the data dir.
        let pid = spawn(
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "exec sleep 30".into(),
                marker.display().to_string(),
            ],
            &log,
        )
        .unwrap();
        // After exec the cmdline is `sleep 30`: recognised as sleep, not sh.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_ours(pid, "sleep", Path::new("30")) {
            assert!(Instant::now() < deadline, "sleep never showed up");
            std::thread::sleep(POLL_INTERVAL);
        }
        assert!(!is_ours(pid, "sleep", &marker), "another data dir");
        assert!(!is_ours(pid, "chunkd", Path::new("30")), "another program");
        let outcome = stop_all(
            &[Target {
                pid,
                program_name: "sleep",
                data_dir: Path::new("30"),
            }],
            Duration::from_secs(5),
        );
        assert_eq!(outcome, [StopOutcome::Terminated]);
        assert!(!is_ours(pid, "sleep", Path::new("30")));
        assert!(children().iter().all(|c| c.id() != pid), "reaped");
    }

    #[test]
    fn unknown_pids_are_not_ours() {
        assert!(!is_ours(0, "masterd", Path::new("/x")));
        assert!(!is_ours(u32::MAX, "masterd", Path::new("/x")));
        assert!(!is_ours(std::process::id(), "masterd", Path::new("/x")));
        let outcome = stop_all(
            &[Target {
                pid: std::process::id(),
                program_name: "masterd",
                data_dir: Path::new("/x"),
            }],
            Duration::from_millis(10),
        );
        assert_eq!(outcome, [StopOutcome::NotRunning]);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path);
        assert!(tail.starts_with("line 80"), "{tail}");
        assert!(tail.ends_with("line 99"), "{tail}");
        assert_eq!(log_tail(&dir.path().join("missing")), "");
    }
}
