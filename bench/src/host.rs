//! What every harness does to the machine between variants, and running
//! the commands it measures.
//!
//! The pause after dropping the page cache matters on thin-provisioned
//! virtual disks mounted with `discard` (like the development VM's): there
//! a write right after a large delete runs at anywhere from 0.3× to 1.3×
//! the speed it has once the discards are through.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context};

/// Push the previous variant's writes and deletes to disk, so that they
/// are not billed to the next one.
pub fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`, then `pause`: the next read
/// comes from the device, and the device is done with the previous
/// variant's deletes, for every variant alike.
pub fn quiesce(pause: Duration) -> anyhow::Result<()> {
    settle();
    fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (needs root)")?;
    thread::sleep(pause);
    Ok(())
}

/// Clock ticks per second, the unit of /proc's CPU times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64).max(1.0)
}

/// User + system CPU seconds of process `pid` (all its threads), from
/// /proc.
pub fn proc_cpu(pid: u32) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14,
    // stime 15.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, s): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((u + s) / clock_ticks())
}

/// The last 20 lines of a log, for an error message.
pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `name=value` in a ckptfs tracing log line: the value.
pub fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// Run `cmd` to completion; its stdout, or an error with its stderr.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Poll `cond` every 20 ms until it holds; an error naming `what` after
/// `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while !cond() {
        anyhow::ensure!(
            start.elapsed() < limit,
            "no sign of {what} within {limit:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Have the process `cmd` starts get SIGTERM should this harness die
/// without cleaning up (killed, or interrupted with Ctrl-C): a daemon or
/// a mount of ckptfs then stops (and unmounts) by itself, and an rsync
/// daemon or a receiver does not keep its port for the next run. The
/// signal comes when the spawning *thread* exits, so spawn from the
/// thread that also stops the child.
pub fn stop_with_us(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The `ckptfs` binary beside this harness's own (same build profile).
pub fn default_ckptfs() -> anyhow::Result<std::path::PathBuf> {
    let me = std::env::current_exe().context("locating ckpt-bench")?;
    Ok(me.with_file_name("ckptfs"))
}

/// The ckptfs binary to measure: `given` (`--ckptfs`), else the one
/// beside this harness; it must exist.
pub fn ckptfs_bin(given: Option<&Path>) -> anyhow::Result<std::path::PathBuf> {
    let bin = match given {
        Some(p) => p.to_owned(),
        None => default_ckptfs()?,
    };
    anyhow::ensure!(
        bin.is_file(),
        "no ckptfs binary at {}: build it (`cargo build --release -p ckptfs`) or give --ckptfs PATH",
        bin.display()
    );
    Ok(bin)
}

/// Refuse to run unless root: `why` says what the harness does that needs it.
pub fn require_root(why: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    let uid = unsafe { libc::geteuid() };
    anyhow::ensure!(uid == 0, "{why}: run it as root");
    Ok(())
}

/// Remove a directory tree; one that is not there is fine.
pub fn remove_dir(p: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

/// Fill `buf` from /dev/urandom.
pub fn fill_random(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

/// A DR shared key at `path`: 32 random bytes as hex, mode 0600,
/// replacing any earlier one.
pub fn write_dr_key(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    fill_random(&mut raw)?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{hex}\n").as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Bytes of the regular files under `p`.
pub fn tree_bytes(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The work directory of one step: removed (and its frees synced) when
/// the step ends, whichever way.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(p: std::path::PathBuf) -> anyhow::Result<Scratch> {
        remove_dir(&p)?;
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Scratch(p))
    }

    pub fn join(&self, s: &str) -> std::path::PathBuf {
        self.0.join(s)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_dir(&self.0) {
            eprintln!("ckpt-bench: {e:#}");
        }
        settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cpu_reads_our_own_stat() {
        // Burn a little CPU so that the figure cannot be a parse of zeros.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let cpu = proc_cpu(std::process::id()).expect("our own /proc/PID/stat");
        assert!(cpu > 0.0, "{cpu}");
        assert!(proc_cpu(u32::MAX).is_none());
    }
}
