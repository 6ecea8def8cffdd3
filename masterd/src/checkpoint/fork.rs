//! Writing a checkpoint without stalling mutations: fork, and let the child
//! encode its copy-on-write image of the state while the parent goes on
//! applying the log (docs/design/011-checkpoint-format.md, "Why fork").
//!
//! The child runs only the encoder and plain syscalls (write, fdatasync,
//! _exit). It never returns into the caller's code, never touches tokio,
//! tracing, stdout or stderr, and never runs destructors: at the fork every
//! other thread of the parent vanished from the child's copy, possibly
//! holding a lock (stdout's, tracing's, a tokio driver's) that the child
//! would wait on forever. Allocation is safe: glibc's malloc takes its
//! locks around fork. Anything that still goes wrong in the child (a lock
//! we did not foresee, a full disk) is bounded by the parent's deadline.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ringfs_wire::checksum::crc32c;

use super::encode::{EncodeError, encode_to};
use super::files::{io_err, publish, tmp_path};
use super::{CheckpointError, CheckpointInfo, CheckpointMeta};
use crate::state::State;
use crate::types::LogId;

/// Default time the child has from fork to fdatasync'ed file (10 min).
/// At the encoder's measured speed (see the note) a 10 M-file state
/// encodes in well under a minute; the rest is headroom for a slow or busy
/// disk. Past it the child is killed and the checkpoint fails; the next
/// one starts from scratch.
pub const CHILD_DEADLINE_DEFAULT: Duration = Duration::from_secs(600);
/// Longest sleep between two polls of the child (20 ms): the latency added
/// to a checkpoint's completion, against wake-ups while it runs.
const POLL_MAX: Duration = Duration::from_millis(20);
/// Upper bound on the child's report through the pipe, in bytes. At most
/// PIPE_BUF so it is written in one piece and never blocks the child.
const REPORT_BYTES_MAX: usize = 4096;

/// Signals the child handles the default way (terminate) rather than with
/// the parent's inherited handlers.
const CHILD_DEFAULT_SIGNALS: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Exit codes of the child (sysexits.h values, for operators' familiarity).
const EXIT_OK: i32 = 0;
const EXIT_INVALID: i32 = 65; // EX_DATAERR: the state breaks a format rule
const EXIT_PANIC: i32 = 70; // EX_SOFTWARE: a bug
const EXIT_IO: i32 = 74; // EX_IOERR: write or fdatasync failed

#[derive(Clone, Debug)]
pub struct CheckpointOptions {
    /// Time from fork until the child must have exited; see
    /// [`CHILD_DEADLINE_DEFAULT`].
    pub deadline: Duration,
    /// Test hook: the child writes this many bytes, then sleeps until it is
    /// killed (to test a crash in the middle of a write).
    #[doc(hidden)]
    pub test_child_stall_after_bytes: Option<u64>,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        CheckpointOptions {
            deadline: CHILD_DEADLINE_DEFAULT,
            test_child_stall_after_bytes: None,
        }
    }
}

/// Starts and finishes checkpoints in a directory.
pub struct Checkpointer;

impl Checkpointer {
    /// Forks a child that writes `state` as a checkpoint into a temp file
    /// of `dir`; returns as soon as the child exists. The caller must hold
    /// `state` still only for this call (fork copies the address space at
    /// once; the child then reads its own copy-on-write image).
    pub fn start(
        dir: &Path,
        state: &State,
        meta: &CheckpointMeta,
    ) -> Result<PendingCheckpoint, CheckpointError> {
        Self::start_with(dir, state, meta, &CheckpointOptions::default())
    }

    pub fn start_with(
        dir: &Path,
        state: &State,
        meta: &CheckpointMeta,
        opts: &CheckpointOptions,
    ) -> Result<PendingCheckpoint, CheckpointError> {
        let started = Instant::now();
        let tmp = tmp_path(dir);
        // Opened here, so a bad directory or a full inode table is an error
        // now rather than an exit code later. O_CLOEXEC (Rust's default):
        // a process spawned meanwhile does not keep it.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_err("create", &tmp, e))?;
        let (report_rd, report_wr) = match pipe() {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(CheckpointError::Fork(e));
            }
        };
        // crc-fast picks its SIMD path lazily behind a once-lock; take it
        // here, not in the child, where a half-initialised lock could hang.
        let _ = crc32c(b"warm up");
        let stall = opts.test_child_stall_after_bytes;

        let fork_at = Instant::now();
        // SAFETY: fork has no memory-safety preconditions of its own; what
        // the child may do afterwards is restricted as described in the
        // module docs: it runs `child_main` and `_exit`s.
        let pid = unsafe { libc::fork() };
        // Read errno before anything (the closes below) can change it.
        let fork_err = (pid < 0).then(io::Error::last_os_error);
        if pid == 0 {
            drop(report_rd);
            let code = child_main(&file, report_wr.as_raw_fd(), state, meta, stall);
            // SAFETY: _exit ends the process without running atexit
            // handlers or destructors, which belong to the parent.
            unsafe { libc::_exit(code) };
        }
        let fork_duration = fork_at.elapsed();
        drop(report_wr);
        drop(file);
        if let Some(e) = fork_err {
            let _ = fs::remove_file(&tmp);
            return Err(CheckpointError::Fork(e));
        }
        Ok(PendingCheckpoint::new(
            pid,
            dir,
            tmp,
            meta,
            started,
            fork_duration,
            opts,
            Some(report_rd),
        ))
    }

    /// Writes a checkpoint in this process with the same encoder, then
    /// publishes it like a forked one (rename, directory fsync, prune).
    /// For tiny states and tests: the caller is stalled for the whole write.
    pub fn write_now(
        dir: &Path,
        state: &State,
        meta: &CheckpointMeta,
    ) -> Result<CheckpointInfo, CheckpointError> {
        let started = Instant::now();
        let tmp = tmp_path(dir);
        let (summary, encode, sync) = super::write_tmp(&tmp, state, meta)?;
        let (path, limit) = publish(dir, &tmp, meta.last_log_id).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        Ok(CheckpointInfo {
            path,
            last_log_id: meta.last_log_id,
            bytes: summary.bytes,
            sections: summary.sections,
            duration: started.elapsed(),
            fork_duration: Duration::ZERO,
            encode_duration: encode,
            sync_duration: sync,
            log_purge_limit: limit,
        })
    }
}

/// A checkpoint whose child is running. [`PendingCheckpoint::wait`] finishes
/// it; dropping it instead kills the child and removes its temp file.
#[derive(Debug)]
pub struct PendingCheckpoint {
    pid: libc::pid_t,
    dir: PathBuf,
    tmp: PathBuf,
    last_log_id: Option<LogId>,
    started: Instant,
    fork_duration: Duration,
    deadline: Duration,
    report: Option<OwnedFd>,
    /// Set once the child has been waited for; its pid may be reused after.
    reaped: bool,
}

impl PendingCheckpoint {
    #[allow(clippy::too_many_arguments)]
    fn new(
        pid: libc::pid_t,
        dir: &Path,
        tmp: PathBuf,
        meta: &CheckpointMeta,
        started: Instant,
        fork_duration: Duration,
        opts: &CheckpointOptions,
        report: Option<OwnedFd>,
    ) -> PendingCheckpoint {
        PendingCheckpoint {
            pid,
            dir: dir.to_path_buf(),
            tmp,
            last_log_id: meta.last_log_id,
            started,
            fork_duration,
            deadline: opts.deadline,
            report,
            reaped: false,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How long `fork()` paused the caller.
    pub fn fork_duration(&self) -> Duration {
        self.fork_duration
    }

    /// The temp file the child writes.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Blocks until the child exits or the deadline passes (then kills it),
    /// and publishes the file: rename to its final name, directory fsync,
    /// prune to the newest [`super::CHECKPOINTS_KEPT`]. Run it on a blocking
    /// thread. On any error the temp file is removed and nothing else in
    /// the directory changed.
    pub fn wait(mut self) -> Result<CheckpointInfo, CheckpointError> {
        let result = self.wait_inner();
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result
    }

    fn wait_inner(&mut self) -> Result<CheckpointInfo, CheckpointError> {
        let deadline_at = self.started + self.deadline;
        let mut nap = Duration::from_millis(1);
        let status = loop {
            let mut status = 0;
            // SAFETY: plain syscall on our own child's pid.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                self.reaped = true;
                break status;
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // ECHILD: someone else reaped it; its pid may already be
                // reused, so it must not be killed later.
                self.reaped = true;
                return Err(io_err("waitpid", &self.tmp, e));
            }
            let now = Instant::now();
            if now >= deadline_at {
                self.abort();
                return Err(CheckpointError::ChildTimedOut {
                    pid: self.pid,
                    deadline: self.deadline,
                });
            }
            std::thread::sleep(nap.min(deadline_at - now));
            nap = (nap * 2).min(POLL_MAX);
        };
        let report = self
            .report
            .take()
            .map(|fd| read_report(&fd))
            .unwrap_or_default();
        let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == EXIT_OK;
        let parsed = parse_ok_report(&report);
        let (Some((bytes, sections, encode, sync)), true) = (parsed, ok) else {
            return Err(CheckpointError::ChildFailed {
                pid: self.pid,
                status: describe_status(status),
                report: if report.is_empty() {
                    "no report".into()
                } else {
                    report
                },
            });
        };
        let (path, limit) = publish(&self.dir, &self.tmp, self.last_log_id)?;
        Ok(CheckpointInfo {
            path,
            last_log_id: self.last_log_id,
            bytes,
            sections,
            duration: self.started.elapsed(),
            fork_duration: self.fork_duration,
            encode_duration: encode,
            sync_duration: sync,
            log_purge_limit: limit,
        })
    }

    /// Kills and reaps the child (SIGKILL cannot be caught, so the blocking
    /// waitpid returns as soon as the kernel tears the child down).
    fn abort(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: plain syscalls on our own, not yet reaped child, so the
        // pid cannot have been reused.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            while libc::waitpid(self.pid, &mut status, 0) < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
        self.reaped = true;
    }
}

impl Drop for PendingCheckpoint {
    fn drop(&mut self) {
        if !self.reaped {
            self.abort();
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

// ---- the child ----

/// Everything the child does. Returns its exit code; never unwinds.
fn child_main(
    file: &File,
    report_fd: RawFd,
    state: &State,
    meta: &CheckpointMeta,
    stall_after: Option<u64>,
) -> i32 {
    // The parent's panic hook may print (stderr's lock) or log (tracing's
    // locks); in this process nobody would see it, and it could hang. The
    // payload goes into the report instead.
    std::panic::set_hook(Box::new(|_| {}));
    // The parent's handlers (tokio's) would forward a signal sent to the
    // child to the parent's runtime through a shared pipe. A stop signal
    // should just end the child; the parent sees it in the wait status.
    for sig in CHILD_DEFAULT_SIGNALS {
        // SAFETY: signal(2) with SIG_DFL is async-signal-safe.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let t0 = Instant::now();
    let run = catch_unwind(AssertUnwindSafe(|| {
        let out = ChildWriter {
            file,
            stall_after,
            written: 0,
        };
        let summary = encode_to(out, state, meta)?;
        let t1 = Instant::now();
        file.sync_data().map_err(EncodeError::Io)?;
        Ok::<_, EncodeError>((summary, t1 - t0, t1.elapsed()))
    }));
    let (code, msg) = match run {
        Ok(Ok((s, encode, sync))) => (
            EXIT_OK,
            format!(
                "ok {} {} {} {}",
                s.bytes,
                s.sections,
                encode.as_nanos(),
                sync.as_nanos()
            ),
        ),
        Ok(Err(e @ EncodeError::Invalid { .. })) => (EXIT_INVALID, format!("invalid state: {e}")),
        Ok(Err(e @ EncodeError::Io(_))) => (EXIT_IO, e.to_string()),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            (EXIT_PANIC, format!("panic in checkpoint child: {what}"))
        }
    };
    write_report(report_fd, msg.as_bytes());
    code
}

/// The child's output: the temp file, with the test stall.
struct ChildWriter<'f> {
    file: &'f File,
    stall_after: Option<u64>,
    written: u64,
}

impl Write for ChildWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut n = buf.len();
        if let Some(limit) = self.stall_after {
            let left = limit.saturating_sub(self.written);
            if left == 0 {
                loop {
                    // SAFETY: pause has no preconditions; the test kills us.
                    unsafe { libc::pause() };
                }
            }
            n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        let n = (&mut &*self.file).write(&buf[..n])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_report(fd: RawFd, msg: &[u8]) {
    let mut msg = &msg[..msg.len().min(REPORT_BYTES_MAX)];
    while !msg.is_empty() {
        // SAFETY: writes from a live slice to a pipe we own.
        let n = unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        msg = &msg[n as usize..];
    }
}

// ---- the parent ----

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // Non-blocking both ways: the parent reads after the child exited (see
    // read_report), and the child's one report (≤ PIPE_BUF) always fits
    // into the empty pipe, so its write never meets EAGAIN.
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads what the child wrote. Non-blocking: the child has exited, so its
/// report is all in the pipe, and another concurrently forked child may
/// hold a copy of the write end, so end-of-file might never come.
fn read_report(fd: &OwnedFd) -> String {
    let mut buf = vec![0u8; REPORT_BYTES_MAX];
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reads into the unused tail of a live buffer.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[len..].as_mut_ptr().cast(),
                buf.len() - len,
            )
        };
        if n > 0 {
            len += n as usize;
        } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            break;
        }
    }
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// `ok <bytes> <sections> <encode_ns> <sync_ns>`.
fn parse_ok_report(report: &str) -> Option<(u64, u32, Duration, Duration)> {
    let mut it = report.strip_prefix("ok ")?.split(' ');
    let bytes = it.next()?.parse().ok()?;
    let sections = it.next()?.parse().ok()?;
    let encode = Duration::from_nanos(it.next()?.parse().ok()?);
    let sync = Duration::from_nanos(it.next()?.parse().ok()?);
    it.next()
        .is_none()
        .then_some((bytes, sections, encode, sync))
}

fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended with wait status {status:#x}")
    }
}
