//! Which criu to run, and whether it works here.
//!
//! Candidates: the configured path (`[criu] path`, `--criu`), and only it
//! when set; otherwise `criu` on the PATH and the wrapper that
//! `scripts/install-criu.sh` writes ([`PRIVATE_CRIU`]), the newest of those
//! that run and are at least [`MIN_VERSION`]. `criu check` runs at first use
//! and its result is kept in the cache (per criu, version and kernel), so
//! `ckptfs status` can show it without running CRIU.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::CriuError;
use crate::durable;

/// Where `scripts/install-criu.sh` puts its wrapper.
pub const PRIVATE_CRIU: &str = "/opt/ckptfs/criu/bin/criu";
/// The oldest CRIU ckptfs drives.
pub const MIN_VERSION: Version = Version {
    major: 4,
    minor: 0,
    patch: 0,
};
/// The first CRIU that dumps processes with TCP sockets on current kernels.
pub const TCP_VERSION: Version = Version {
    major: 4,
    minor: 2,
    patch: 0,
};
const CHECK_FILE: &str = "criu-check.json";

/// A CRIU version, as `criu --version` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch > 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

impl Version {
    /// From `criu --version` output: a line `Version: X.Y[.Z]`.
    pub fn parse(text: &str) -> Option<Version> {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))?;
        let mut parts = line.trim().split(['.', '-', ' ']);
        let mut num = || parts.next().and_then(|p| p.parse::<u32>().ok());
        let major = num()?;
        let minor = num().unwrap_or(0);
        let patch = num().unwrap_or(0);
        Some(Version {
            major,
            minor,
            patch,
        })
    }
}

/// A criu that runs and is new enough.
#[derive(Debug, Clone)]
pub struct Criu {
    pub path: PathBuf,
    pub version: Version,
    /// "config", "PATH" or "private prefix".
    pub origin: &'static str,
}

/// What `criu check` said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub path: PathBuf,
    pub version: String,
    /// The kernel release it was checked on.
    pub kernel: String,
    pub ok: bool,
    /// Its last lines of output (errors when it failed).
    pub detail: String,
    /// `criu check --feature mem_dirty_track`: could CRIU's own memory
    /// tracking (pre-dump, --track-mem) work here?
    pub mem_dirty_track: bool,
    #[serde(with = "humantime_serde")]
    pub checked: SystemTime,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The last `n` non-empty lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Criu {
    /// Find the criu to use (see the module docs).
    pub fn discover(configured: Option<&Path>) -> Result<Criu, CriuError> {
        if let Some(p) = configured {
            let c = Criu::probe(p, "config")?;
            return c.new_enough();
        }
        let mut candidates: Vec<(PathBuf, &'static str)> = Vec::new();
        if let Some(p) = on_path("criu") {
            candidates.push((p, "PATH"));
        }
        candidates.push((PathBuf::from(PRIVATE_CRIU), "private prefix"));
        let mut tried = Vec::new();
        let mut best: Option<Criu> = None;
        for (p, origin) in candidates {
            match Criu::probe(&p, origin).and_then(Criu::new_enough) {
                Ok(c) => {
                    if best.as_ref().is_none_or(|b| c.version > b.version) {
                        best = Some(c);
                    }
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
        best.ok_or(CriuError::NotFound { tried })
    }

    /// Run `path --version`.
    pub fn probe(path: &Path, origin: &'static str) -> Result<Criu, CriuError> {
        let unusable = |message: String| CriuError::Unusable {
            path: path.to_owned(),
            origin,
            message,
        };
        if !path.exists() {
            return Err(unusable("no such file".into()));
        }
        let out = Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| unusable(e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match Version::parse(&text) {
            Some(version) if out.status.success() => Ok(Criu {
                path: path.to_owned(),
                version,
                origin,
            }),
            _ => Err(unusable(format!(
                "`--version` gave {}: {}",
                out.status,
                tail(
                    &format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
                    3
                )
            ))),
        }
    }

    fn new_enough(self) -> Result<Criu, CriuError> {
        if self.version < MIN_VERSION {
            return Err(CriuError::TooOld {
                path: self.path,
                version: self.version,
                min: MIN_VERSION,
            });
        }
        Ok(self)
    }

    /// A command running this criu.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.stdin(Stdio::null());
        c
    }

    /// Run `criu check` (and the dirty-tracking feature check) now.
    pub fn check(&self) -> CheckReport {
        let run = |args: &[&str]| {
            self.command()
                .args(args)
                .output()
                .map(|o| {
                    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&o.stderr));
                    (o.status.success(), text)
                })
                .unwrap_or_else(|e| (false, e.to_string()))
        };
        let (ok, text) = run(&["check"]);
        let (mem_dirty_track, _) = run(&["check", "--feature", "mem_dirty_track"]);
        CheckReport {
            path: self.path.clone(),
            version: self.version.to_string(),
            kernel: kernel_release(),
            ok,
            detail: tail(&text, if ok { 1 } else { 6 }),
            mem_dirty_track,
            checked: SystemTime::now(),
        }
    }

    /// The check result kept in the cache for this criu, version and
    /// kernel, if any.
    pub fn cached_check(&self, cache_root: &Path) -> Option<CheckReport> {
        let bytes = std::fs::read(check_file(cache_root)).ok()?;
        let r: CheckReport = serde_json::from_slice(&bytes).ok()?;
        (r.path == self.path
            && r.version == self.version.to_string()
            && r.kernel == kernel_release())
        .then_some(r)
    }

    /// `criu check` at first use: the kept result when there is one, else
    /// run it and keep it. An error when CRIU says it cannot work here.
    pub fn ensure_checked(&self, cache_root: &Path) -> Result<CheckReport, CriuError> {
        let r = match self.cached_check(cache_root) {
            Some(r) => r,
            None => {
                let r = self.check();
                let body = serde_json::to_vec_pretty(&r).unwrap_or_default();
                if let Err(e) = durable::write_atomic(&check_file(cache_root), &body, 0o644) {
                    tracing::warn!(error = %e, "could not keep the criu check result");
                }
                r
            }
        };
        if !r.ok {
            return Err(CriuError::CheckFailed {
                path: self.path.clone(),
                detail: r.detail,
            });
        }
        Ok(r)
    }
}

fn check_file(cache_root: &Path) -> PathBuf {
    cache_root.join(crate::store::META_DIR).join(CHECK_FILE)
}

/// CRIU's state for `ckptfs status`: which criu, and what its check said
/// (without running CRIU's check: that happens at first use).
pub fn status(configured: Option<&Path>, cache_root: &Path) -> serde_json::Value {
    match Criu::discover(configured) {
        Err(e) => serde_json::json!({ "error": e.to_string() }),
        Ok(c) => {
            let check = c.cached_check(cache_root);
            serde_json::json!({
                "path": c.path,
                "origin": c.origin,
                "version": c.version.to_string(),
                "check": check.as_ref().map(|r| if r.ok { "ok" } else { "failed" }),
                "check_detail": check.as_ref().filter(|r| !r.ok).map(|r| r.detail.clone()),
                "mem_dirty_track": check.as_ref().map(|r| r.mem_dirty_track),
                "tcp_capable": c.version >= TCP_VERSION,
            })
        }
    }
}

/// One line of `ckptfs status` from [`status`]'s value.
pub fn status_line(v: &serde_json::Value) -> String {
    if let Some(e) = v["error"].as_str() {
        return format!("criu:        none ({e})");
    }
    let check = match v["check"].as_str() {
        Some("ok") => "check ok".to_owned(),
        Some(_) => format!(
            "check FAILED: {}",
            v["check_detail"]
                .as_str()
                .unwrap_or("?")
                .replace('\n', " / ")
        ),
        None => "not checked yet (checked at the first dump)".to_owned(),
    };
    let track = match v["mem_dirty_track"].as_bool() {
        Some(true) => "; kernel dirty-page tracking available",
        Some(false) => "; no kernel dirty-page tracking: incremental dumps dedup pages",
        None => "",
    };
    format!(
        "criu:        {} {} ({}), {check}{track}",
        v["path"].as_str().unwrap_or("?"),
        v["version"].as_str().unwrap_or("?"),
        v["origin"].as_str().unwrap_or("?"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = |s| Version::parse(s);
        assert_eq!(
            v("Version: 4.2.1\nGitID: v4.2.1\n"),
            Some(Version {
                major: 4,
                minor: 2,
                patch: 1
            })
        );
        assert_eq!(
            v("Version: 3.17").map(|v| v.to_string()).as_deref(),
            Some("3.17")
        );
        assert!(v("Version: 3.17").unwrap() < MIN_VERSION);
        assert!(v("Version: 4.1").unwrap() < TCP_VERSION);
        assert_eq!(v("criu 4"), None);
        assert_eq!(v("Version: x"), None);
    }

    #[test]
    fn a_configured_path_that_does_not_exist_is_a_clear_error() {
        let e = Criu::discover(Some(Path::new("/nonexistent/criu"))).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/criu") && msg.contains("no such file"),
            "{msg}"
        );
    }

    #[test]
    fn tails() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("", 2), "");
    }
}
