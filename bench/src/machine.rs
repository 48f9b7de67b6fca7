//! What the figures were measured on: a throughput without its machine,
//! kernel and filesystem cannot be compared with anything.

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub fs_type: String,
    pub device: String,
}

impl Machine {
    /// Best effort: an unreadable field says "unknown" rather than
    /// stopping the benchmark.
    pub fn probe(dir: &Path) -> Machine {
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let (fs_type, device) =
            findmnt(dir).unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        Machine {
            cpu,
            cores,
            kernel,
            fs_type,
            device,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} × {} cores, Linux {}, {} on {}",
            self.cpu, self.cores, self.kernel, self.fs_type, self.device
        )
    }
}

fn findmnt(dir: &Path) -> Option<(String, String)> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE", "--target"])
        .arg(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    Some((
        words.next()?.to_owned(),
        words.next().unwrap_or("?").to_owned(),
    ))
}

/// Bytes an unprivileged writer may still use under `dir`.
pub fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", dir.display()))?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer
    // that outlives the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!("statvfs {}: {e}", dir.display());
    }
    // Both are u64 on 64-bit Linux but narrower on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let (avail, frsize) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Ok(avail.saturating_mul(frsize))
}
