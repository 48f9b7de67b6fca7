//! What every harness does to the machine between variants, and running
//! the commands it measures.
//!
//! The pause after dropping the page cache matters on thin-provisioned
//! virtual disks mounted with `discard` (like the development VM's): there
//! a write right after a large delete runs at anywhere from 0.3× to 1.3×
//! the speed it has once the discards are through.

use std::fs;
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

/// The last 20 lines of a log, for an error message.
pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
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
