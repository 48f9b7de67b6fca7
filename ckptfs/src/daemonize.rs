//! `ckptfs mount` without `--foreground`: start the daemon in the
//! background and return only once its mount is live, or with the reason
//! it failed.
//!
//! The parent re-executes itself with `--foreground` rather than forking:
//! a fork of a process that already has threads (tracing, io_uring) is
//! unsafe, and the daemon then starts exactly as it does under systemd.
//! They share a pipe whose write end the child names in `CKPTFS_READY_FD`;
//! the child writes `READY` once the mount answers, or `ERROR <message>`.
//! A child that dies first closes the pipe, which the parent sees as EOF.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Names the inherited write end of the readiness pipe in the child.
pub const READY_FD_ENV: &str = "CKPTFS_READY_FD";

/// Longest message the parent reads from the pipe; a child that writes
/// more is cut short rather than growing the parent.
const MAX_MESSAGE: usize = 64 << 10;
/// How long a child that reported an error or closed the pipe gets to
/// exit, and a stopped one gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);
/// Lines of the log quoted when the child died without a word.
const LOG_TAIL_LINES: usize = 12;

/// Start this program again with `args` (its command line after the program
/// name, e.g. `std::env::args_os().skip(1)`) plus
/// `--foreground`, detached in its own session with stdin from /dev/null
/// and stdout and stderr appended to `log`, and wait up to `timeout` for
/// it to report. Returns the daemon's pid once it is ready.
pub fn spawn_background(args: &[OsString], log: &Path, timeout: Duration) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("finding the ckptfs executable to restart")?;
    let mut cmd = Command::new(&exe);
    cmd.args(args).arg("--foreground");
    spawn_and_wait(cmd, log, timeout)
}

/// The parent side for any command that speaks the readiness protocol.
fn spawn_and_wait(mut cmd: Command, log: &Path, timeout: Duration) -> anyhow::Result<u32> {
    let log_file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log)
        .with_context(|| format!("opening the daemon log {}", log.display()))?;
    let log_start = log_file.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log_file
        .try_clone()
        .with_context(|| format!("opening the daemon log {}", log.display()))?;

    let (reader, writer) = io::pipe().context("creating the readiness pipe")?;
    // Were our stdio closed, the pipe could sit on 0–2, where the child's
    // own stdio is about to be put: move it above them (try_clone returns
    // a descriptor ≥ 3).
    let mut writer = OwnedFd::from(writer);
    if writer.as_raw_fd() <= 2 {
        writer = writer.try_clone().context("moving the readiness pipe")?;
    }
    let write_fd: RawFd = writer.as_raw_fd();

    cmd.env(READY_FD_ENV, write_fd.to_string())
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    // SAFETY: runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: setsid and fcntl are, and the
    // closure allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: the daemon outlives the shell that ran
            // `ckptfs mount` and gets no SIGHUP or terminal signals.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // The one descriptor the daemon inherits on purpose.
            if libc::fcntl(write_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    // Our copy must go, or EOF would never come when the child dies.
    drop(writer);

    let deadline = Instant::now() + timeout;
    let outcome = read_report(OwnedFd::from(reader), deadline);
    let pid = child.id();
    let see_log = || format!("see {}", log.display());
    match outcome {
        Ok(Report::Ready) => Ok(pid),
        Ok(Report::Error(msg)) => {
            let status = wait_or_stop(&mut child, Instant::now() + GRACE);
            tracing::debug!("daemon {pid} after reporting an error: {status:?}");
            bail!("{msg}")
        }
        Ok(Report::Other(line)) => {
            let _ = wait_or_stop(&mut child, Instant::now());
            bail!(
                "the ckptfs daemon (pid {pid}) sent {line:?} instead of READY on the \
                 readiness pipe; stopped it ({})",
                see_log()
            )
        }
        Ok(Report::Closed) => {
            let status = wait_or_stop(&mut child, deadline.max(Instant::now() + GRACE));
            let tail = log_tail(log, log_start);
            let how = match status {
                Some(s) => format!("exited ({}) during start-up", describe(s)),
                None => "closed its readiness pipe without a word and was stopped".to_owned(),
            };
            bail!("the ckptfs daemon (pid {pid}) {how}; {}{tail}", see_log())
        }
        Ok(Report::TimedOut) => {
            let _ = wait_or_stop(&mut child, Instant::now());
            let tail = log_tail(log, log_start);
            bail!(
                "the ckptfs daemon (pid {pid}) was not ready after {}; stopped it \
                 (a mount it left behind may need `ckptfs umount --force`); {}{tail}",
                humantime::format_duration(timeout),
                see_log()
            )
        }
        Err(e) => {
            let _ = wait_or_stop(&mut child, Instant::now());
            Err(e).context("waiting for the ckptfs daemon to start")
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Report {
    Ready,
    Error(String),
    Other(String),
    Closed,
    TimedOut,
}

/// Read the child's one line, or EOF, or nothing by `deadline`.
fn read_report(fd: OwnedFd, deadline: Instant) -> io::Result<Report> {
    let mut pipe = File::from(fd);
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            return Ok(parse_report(&buf[..end]));
        }
        if buf.len() >= MAX_MESSAGE {
            return Ok(parse_report(&buf));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Report::TimedOut);
        }
        if !wait_readable(&pipe, deadline)? {
            return Ok(Report::TimedOut);
        }
        let mut chunk = [0u8; 4096];
        match pipe.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(Report::Closed),
            // A last line without its newline still counts.
            Ok(0) => return Ok(parse_report(&buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn parse_report(line: &[u8]) -> Report {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\r');
    if line == "READY" {
        Report::Ready
    } else if let Some(msg) = line.strip_prefix("ERROR ") {
        Report::Error(msg.to_owned())
    } else {
        Report::Other(line.chars().take(200).collect())
    }
}

/// Wait until `f` is readable (or at EOF); false when `deadline` passes
/// first.
fn wait_readable(f: &File, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up, so that a sub-millisecond remainder does not spin.
        let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid, exclusively borrowed pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return Ok(true);
        }
        if rc == 0 {
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reap the child if it exits by `deadline`; otherwise stop its whole
/// session (SIGTERM, then SIGKILL after a grace period) and reap it.
/// `Some(status)` when it exited on its own.
fn wait_or_stop(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    if let Some(status) = wait_until(child, deadline) {
        return Some(status);
    }
    // The child is a session leader: its pid is its process group, and
    // helpers it started go with it.
    let pgid = child.id() as libc::pid_t;
    // SAFETY: kill takes no pointers; the group is our child's, which we
    // have not reaped yet, so the id cannot have been reused.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    if wait_until(child, Instant::now() + GRACE).is_none() {
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// The last lines the child wrote to the log, quoted for an error message.
fn log_tail(log: &Path, start: u64) -> String {
    let read = || -> io::Result<Vec<u8>> {
        let mut f = File::open(log)?;
        let end = f.metadata()?.len();
        let from = start.max(end.saturating_sub(8192));
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.take(8192).read_to_end(&mut buf)?;
        Ok(buf)
    };
    let Ok(bytes) = read() else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    format!("; its last words:\n  {}", lines[from..].join("\n  "))
}

/// The child's side: how it tells the waiting parent that it is ready or
/// why it is not.
#[derive(Debug)]
pub struct Readiness {
    pipe: File,
}

impl Readiness {
    /// The notifier, when this process was started by [`spawn_background`].
    /// Removes the variable, so that nothing the daemon starts inherits it;
    /// call it early in `main`, before any thread is started.
    pub fn from_env() -> Option<Readiness> {
        let value = std::env::var_os(READY_FD_ENV)?;
        std::env::remove_var(READY_FD_ENV);
        match Self::from_fd_str(&value.to_string_lossy()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("ignoring {READY_FD_ENV}={value:?}: {e}");
                None
            }
        }
    }

    /// Adopt the descriptor named by the variable, after checking that it
    /// is an open pipe: a stray variable in a user's environment must not
    /// make us write into some other file.
    fn from_fd_str(value: &str) -> io::Result<Readiness> {
        let fd: RawFd = value
            .trim()
            .parse()
            .ok()
            .filter(|&fd| fd > 2)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a descriptor number above 2",
                )
            })?;
        // SAFETY: F_GETFD takes no pointer; it only asks whether `fd` is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is writable memory of the size fstat fills.
        if unsafe { libc::fstat(fd, st.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat returned 0, so it initialised `st`.
        let mode = unsafe { st.assume_init() }.st_mode;
        if mode & libc::S_IFMT != libc::S_IFIFO {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is not a pipe",
            ));
        }
        // SAFETY: the parent handed this open descriptor to us alone by the
        // protocol, and nothing else in this process has adopted it (the
        // variable is read once and removed).
        let pipe = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // Keep it out of the processes the daemon starts (fusermount3):
        // one that outlived us would hold EOF back from the parent.
        // SAFETY: F_SETFD with an integer flag on the descriptor we own.
        unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(Readiness { pipe })
    }

    /// The mount is live: let the parent return.
    pub fn ready(self) {
        self.send("READY\n".to_owned());
    }

    /// Start-up failed: the parent prints `message` and exits non-zero.
    pub fn failed(self, message: &str) {
        // One line: the parent reads up to the first newline.
        let flat = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        self.send(format!("ERROR {flat}\n"));
    }

    fn send(mut self, line: String) {
        // EPIPE means the parent gave up on us (it timed out): nobody is
        // left to tell.
        if let Err(e) = self.pipe.write_all(line.as_bytes()) {
            tracing::debug!("readiness pipe: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD_ENV: &str = "CKPTFS_DAEMONIZE_TEST_CHILD";

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        cmd
    }

    fn log_in(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("daemon.log")
    }

    #[test]
    fn ready_returns_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        // dash redirects only to single-digit descriptors: go through /proc.
        let script = r#"echo "stdin $(readlink /proc/$$/fd/0)"; echo READY > /proc/self/fd/$CKPTFS_READY_FD; echo "sid $(cut -d' ' -f6 /proc/$$/stat) pid $$""#;
        let pid = spawn_and_wait(sh(script), &log, Duration::from_secs(10)).unwrap();
        reap(pid);
        let out = std::fs::read_to_string(&log).unwrap();
        assert!(out.contains("stdin /dev/null"), "{out}");
        // A session of its own: its session id is its pid.
        assert!(out.contains(&format!("sid {pid} pid {pid}")), "{out}");
    }

    #[test]
    fn error_is_reported_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo 'ERROR mount point /ckpt: not a directory' > /proc/self/fd/$CKPTFS_READY_FD; exit 1";
        let e = spawn_and_wait(sh(script), &log_in(&dir), Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.to_string(), "mount point /ckpt: not a directory");
    }

    #[test]
    fn death_before_a_word_reports_status_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        std::fs::write(&log, "an older run's line\n").unwrap();
        let script = "echo 'ckptfs: cannot open /dev/fuse: No such device' >&2; exit 3";
        let e = spawn_and_wait(sh(script), &log, Duration::from_secs(10)).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.contains("cannot open /dev/fuse"), "{msg}");
        assert!(!msg.contains("older run"), "{msg}");
        assert!(msg.contains(&*log.to_string_lossy()), "{msg}");

        let e = spawn_and_wait(sh("kill -9 $$"), &log, Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("killed by signal 9"), "{e}");
    }

    #[test]
    fn a_silent_child_is_stopped_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_in(&dir);
        // The grandchild (sleep) is in the child's session and must go too.
        let script = "sleep 60 & echo $! > \"$0\"; wait";
        let grandchild_file = dir.path().join("grandchild.pid");
        let mut cmd = sh(script);
        cmd.arg(&grandchild_file);
        let start = Instant::now();
        let e = spawn_and_wait(cmd, &log, Duration::from_millis(500)).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(e.to_string().contains("not ready after 500ms"), "{e}");
        let grandchild: i32 = std::fs::read_to_string(&grandchild_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGTERM went to the whole group; give the grandchild a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: signal 0 only probes for existence.
        while unsafe { libc::kill(grandchild, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        assert_ne!(
            unsafe { libc::kill(grandchild, 0) },
            0,
            "grandchild survived"
        );
    }

    #[test]
    fn garbage_on_the_pipe_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo 'HELLO' > /proc/self/fd/$CKPTFS_READY_FD; sleep 30";
        let start = Instant::now();
        let e = spawn_and_wait(sh(script), &log_in(&dir), Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("\"HELLO\" instead of READY"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(8));
    }

    #[test]
    fn a_missing_program_or_log_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = spawn_and_wait(
            Command::new("/nonexistent/ckptfs"),
            &log_in(&dir),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/ckptfs"), "{e:#}");
        let e = spawn_and_wait(
            sh("true"),
            &dir.path().join("no/such/dir.log"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("no/such/dir.log"), "{e:#}");
    }

    /// The real child side, end to end: this test binary re-executed as the
    /// "daemon", calling `Readiness::from_env` like `main` will.
    #[test]
    fn child_helper() {
        let Some(mode) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let r = Readiness::from_env().expect("no readiness pipe in the environment");
        assert!(std::env::var_os(READY_FD_ENV).is_none());
        match mode.to_str() {
            Some("ready") => r.ready(),
            Some("fail") => r.failed("cannot mount /ckpt:\n  device busy\n"),
            _ => drop(r),
        }
    }

    fn run_helper(mode: &str) -> anyhow::Result<u32> {
        let name = concat!(module_path!(), "::child_helper");
        let name = name.split_once("::").map_or(name, |(_, rest)| rest);
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mode);
        let dir = tempfile::tempdir().unwrap();
        spawn_and_wait(cmd, &log_in(&dir), Duration::from_secs(30))
    }

    #[test]
    fn readiness_from_env_end_to_end() {
        let pid = run_helper("ready").unwrap();
        reap(pid);
        let e = run_helper("fail").unwrap_err();
        assert_eq!(e.to_string(), "cannot mount /ckpt:; device busy");
        let e = run_helper("drop").unwrap_err();
        assert!(e.to_string().contains("exited (exit status 0)"), "{e}");
    }

    #[test]
    fn a_stray_variable_is_not_trusted() {
        assert!(Readiness::from_fd_str("x").is_err());
        assert!(Readiness::from_fd_str("1").is_err());
        assert!(Readiness::from_fd_str("987654").is_err());
        // An open descriptor that is not a pipe.
        let f = File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        let e = Readiness::from_fd_str(&fd.to_string()).unwrap_err();
        assert!(e.to_string().contains("not a pipe"), "{e}");
        // Ownership stayed with `f` (closing it must not hit EBADF).
        drop(f);
    }

    #[test]
    fn ready_and_failed_write_one_line() {
        for (send, want) in [(0, "READY\n"), (1, "ERROR a; b\n")] {
            let (mut r, w) = io::pipe().unwrap();
            let w = OwnedFd::from(w);
            let fd = w.as_raw_fd();
            // Hand the descriptor over as the protocol does.
            std::mem::forget(w);
            let n = Readiness::from_fd_str(&fd.to_string()).unwrap();
            if send == 0 {
                n.ready()
            } else {
                n.failed("a\nb")
            }
            let mut got = String::new();
            r.read_to_string(&mut got).unwrap();
            assert_eq!(got, want);
        }
    }

    fn reap(pid: u32) {
        let mut status = 0;
        // SAFETY: waits for our own child, writing its status into `status`.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    }
}
