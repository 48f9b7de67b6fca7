//! Shared harness of the real-mount tests: a `Mount` fixture that runs a
//! `ckptfs mount --foreground` daemon over a private cache and mount point
//! under /var/tmp and always cleans up (unmount, reap, remove) even when the
//! test panics; helpers to run commands as another user, read the set state
//! xattrs, wait for conditions with a bound, and check errno values.
//!
//! These tests need root and /dev/fuse.

#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_ckptfs");
pub const FSTYPE: &str = "fuse.ckptfs";

/// Default bound for "the daemon must get there" waits. Generous: the
/// machines are shared and noisy; a test only fails when it is exceeded.
pub const WAIT: Duration = Duration::from_secs(20);

/// Which data path a mount is asked to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    Passthrough,
    Fallback,
}

impl DataPath {
    /// What `ckptfs status --json` calls it (`data_path.mode`).
    pub fn mode(self) -> &'static str {
        match self {
            DataPath::Passthrough => "passthrough",
            DataPath::Fallback => "fallback",
        }
    }
}

/// How to start a mount.
#[derive(Debug, Clone)]
pub struct Opts {
    pub data_path: DataPath,
    /// Extra arguments after `mount MOUNTPOINT`.
    pub mount_args: Vec<String>,
    /// Put the cache on a tmpfs of this many MiB (unmounted on drop).
    pub tmpfs_cache_mib: Option<u64>,
    /// Start without `--foreground`: `ckptfs mount` returns once live.
    pub background: bool,
    /// Environment for the daemon and the CLI (S3 credentials, say).
    pub env: Vec<(String, String)>,
    /// Eviction's high and low watermarks. By default none a filesystem
    /// reaches: the fill of this host's disk is not the test's to decide.
    pub watermarks: (u8, u8),
}

impl Opts {
    pub fn new(data_path: DataPath) -> Opts {
        Opts {
            data_path,
            mount_args: Vec::new(),
            tmpfs_cache_mib: None,
            background: false,
            env: Vec::new(),
            watermarks: (100, 99),
        }
    }

    /// Evict drained sets above `high` percent of the cache's filesystem,
    /// down to `low`.
    pub fn evict_between(mut self, high: u8, low: u8) -> Opts {
        self.watermarks = (high, low);
        self
    }

    pub fn arg(mut self, a: &str) -> Opts {
        self.mount_args.push(a.to_owned());
        self
    }

    pub fn idle_commit(self, rule: &str) -> Opts {
        self.arg("--idle-commit").arg(rule)
    }

    pub fn tmpfs_cache(mut self, mib: u64) -> Opts {
        self.tmpfs_cache_mib = Some(mib);
        self
    }

    pub fn background(mut self) -> Opts {
        self.background = true;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Opts {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

enum Daemon {
    /// `--foreground`: our child.
    Child(Child),
    /// Started in the background: not our child, known by pid.
    Pid(u32),
    /// Killed or exited and reaped.
    Gone,
}

/// Watermarks no filesystem reaches: drained sets stay in the cache, for
/// tests that look at the cache after a drain.
pub const NO_EVICTION: [&str; 4] = [
    "--drain-high-watermark",
    "100",
    "--drain-low-watermark",
    "99",
];

/// A live ckptfs mount over a private cache, torn down on drop.
pub struct Mount {
    root: Option<tempfile::TempDir>,
    pub cache: PathBuf,
    pub mnt: PathBuf,
    pub log: PathBuf,
    config: PathBuf,
    pub opts: Opts,
    daemon: Daemon,
    tmpfs: bool,
    /// Daemon logs of earlier incarnations (after a kill and a remount).
    old_logs: Vec<PathBuf>,
    starts: u32,
}

impl Mount {
    pub fn start(opts: Opts) -> Mount {
        let root = tempfile::Builder::new()
            .prefix("ckptfs-mnt-")
            .tempdir_in("/var/tmp")
            .expect("temp dir under /var/tmp");
        let cache = root.path().join("cache");
        let mnt = root.path().join("mnt");
        // Other users must reach the mount point (permission tests).
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        fs::create_dir(&cache).expect("mkdir cache");
        fs::create_dir(&mnt).expect("mkdir mnt");
        let config = root.path().join("empty.toml");
        // No /etc/ckptfs.toml of this machine leaks in.
        fs::write(&config, "").expect("write empty config");
        let mut tmpfs = false;
        if let Some(mib) = opts.tmpfs_cache_mib {
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={mib}m,mode=0755"))
                .arg("tmpfs")
                .arg(&cache)
                .output()
                .expect("run mount -t tmpfs");
            assert!(
                out.status.success(),
                "mount -t tmpfs on {}: {}",
                cache.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            tmpfs = true;
        }
        let mut m = Mount {
            log: root.path().join("daemon.log"),
            root: Some(root),
            cache,
            mnt,
            config,
            opts,
            daemon: Daemon::Gone,
            tmpfs,
            old_logs: Vec::new(),
            starts: 0,
        };
        m.start_daemon();
        m
    }

    /// Shorthand: a mount on `dp` with default options.
    pub fn new(dp: DataPath) -> Mount {
        Mount::start(Opts::new(dp))
    }

    /// The temp directory holding cache, mount point and logs.
    pub fn dir(&self) -> &Path {
        self.root.as_ref().expect("temp dir").path()
    }

    /// `ckptfs` with this mount's cache and an empty configuration.
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("CKPTFS_CONFIG", &self.config)
            .env_remove("RUST_LOG")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .arg("--cache")
            .arg(&self.cache)
            // No retention surprises: tests count their sets.
            .arg("--keep")
            .arg("0")
            .arg("--drain-high-watermark")
            .arg(self.opts.watermarks.0.to_string())
            .arg("--drain-low-watermark")
            .arg(self.opts.watermarks.1.to_string());
        c
    }

    /// The arguments of `ckptfs mount` for this mount.
    fn mount_command(&self, foreground: bool) -> Command {
        let mut c = self.command();
        c.env("RUST_LOG", "info,fuser=warn")
            .arg("mount")
            .arg(&self.mnt);
        if foreground {
            c.arg("--foreground");
        }
        if self.opts.data_path == DataPath::Fallback {
            c.arg("--no-passthrough");
        }
        c.args(&self.opts.mount_args);
        c
    }

    /// Start (or, after a kill, restart) the daemon on the same cache and
    /// mount point, and wait until the mount is live.
    pub fn start_daemon(&mut self) {
        assert!(
            matches!(self.daemon, Daemon::Gone),
            "start_daemon with a daemon running"
        );
        if self.starts > 0 {
            let old = self.dir().join(format!("daemon.{}.log", self.starts));
            let _ = fs::rename(&self.log, &old);
            self.old_logs.push(old);
        }
        self.starts += 1;
        if self.opts.background {
            let out = self
                .mount_command(false)
                .stdin(Stdio::null())
                .output()
                .expect("run ckptfs mount");
            fs::write(
                &self.log,
                [out.stdout.as_slice(), out.stderr.as_slice()].concat(),
            )
            .ok();
            assert!(
                out.status.success(),
                "ckptfs mount (background) failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            // The command returns only once the mount is live.
            assert!(
                is_mounted(&self.mnt),
                "ckptfs mount returned but {} is not in /proc/self/mountinfo as {FSTYPE}",
                self.mnt.display()
            );
            let pid = self.status()["pid"].as_u64().expect("status pid") as u32;
            self.daemon = Daemon::Pid(pid);
        } else {
            let log = fs::File::create(&self.log).expect("create daemon log");
            let child = self
                .mount_command(true)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .expect("spawn ckptfs mount --foreground");
            self.daemon = Daemon::Child(child);
            let deadline = Instant::now() + WAIT;
            // After a kill the stale mount stays in the table until the new
            // daemon detaches it: wait for a mount that answers.
            while !(is_mounted(&self.mnt) && mount_answers(&self.mnt)) {
                if let Daemon::Child(c) = &mut self.daemon {
                    if let Ok(Some(st)) = c.try_wait() {
                        self.daemon = Daemon::Gone;
                        panic!(
                            "ckptfs mount --foreground exited ({st}) before {} was mounted; log:\n{}",
                            self.mnt.display(),
                            self.log_text()
                        );
                    }
                }
                if Instant::now() > deadline {
                    panic!(
                        "{} did not show up as {FSTYPE} in /proc/self/mountinfo within {WAIT:?}; \
                         daemon log:\n{}",
                        self.mnt.display(),
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.assert_data_path();
    }

    /// `status --json` says the data path we asked for.
    pub fn assert_data_path(&self) {
        let st = self.status();
        assert_eq!(
            st["data_path"]["mode"].as_str(),
            Some(self.opts.data_path.mode()),
            "data path in status: {}",
            st["data_path"]
        );
        // Every kernel with passthrough also lets the fallback path write
        // past the page cache (FUSE_DIRECT_IO_ALLOW_MMAP, 6.6).
        let writes = match self.opts.data_path {
            DataPath::Passthrough => None,
            DataPath::Fallback => Some("direct"),
        };
        assert_eq!(
            st["data_path"]["writes"].as_str(),
            writes,
            "fallback writes in status: {}",
            st["data_path"]
        );
    }

    /// After a test body: the data path is still the one asked for and no
    /// open went the other way.
    pub fn assert_data_path_held(&mut self) {
        if !self.daemon_alive() || !is_mounted(&self.mnt) {
            return;
        }
        let st = self.status();
        assert_eq!(
            st["data_path"]["mode"].as_str(),
            Some(self.opts.data_path.mode()),
            "data path changed during the test: {}",
            st["data_path"]
        );
        let c = &st["counters"];
        match self.opts.data_path {
            DataPath::Passthrough => assert_eq!(
                c["fallback_opens"].as_u64(),
                Some(0),
                "opens fell back to the daemon path: {c}"
            ),
            DataPath::Fallback => assert_eq!(
                c["passthrough_opens"].as_u64(),
                Some(0),
                "passthrough used under --no-passthrough: {c}"
            ),
        }
    }

    /// Path under the mount point.
    pub fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }

    /// Path under the cache directory.
    pub fn c(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.cache.clone()
        } else {
            self.cache.join(rel)
        }
    }

    /// Run `ckptfs ARGS` with this mount's cache.
    pub fn cli(&self, args: &[&dyn AsRef<OsStr>]) -> Output {
        let mut c = self.command();
        for a in args {
            c.arg(a.as_ref());
        }
        c.stdin(Stdio::null()).output().expect("run ckptfs")
    }

    /// Run `ckptfs ARGS` and require success; its stdout.
    pub fn cli_ok(&self, args: &[&dyn AsRef<OsStr>]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ckptfs {:?} failed: {}\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ckptfs status MOUNTPOINT --json`.
    pub fn status(&self) -> Value {
        let s = self.cli_ok(&[&"status", &self.mnt, &"--json"]);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("status JSON: {e}\n{s}"))
    }

    /// `ckptfs ls JOB --json`.
    pub fn ls(&self, job: &str) -> Value {
        let s = self.cli_ok(&[&"ls", &job, &"--json"]);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("ls JSON: {e}\n{s}"))
    }

    /// The state `ckptfs ls JOB --json` gives SET.
    pub fn ls_state(&self, job: &str, set: &str) -> Option<String> {
        // Exit 3: no such job.
        if self.cli(&[&"ls", &job, &"--json"]).status.code() == Some(3) {
            return None;
        }
        self.ls(job)
            .as_array()
            .expect("ls --json is an array")
            .iter()
            .find(|s| s["set"] == set)
            .map(|s| s["state"].as_str().unwrap_or("?").to_owned())
    }

    /// `mkdir -p MOUNT/JOB/SET`: a new live set. Returns its path.
    pub fn new_set(&self, job: &str, set: &str) -> PathBuf {
        let p = self.p(&format!("{job}/{set}"));
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", p.display()));
        p
    }

    /// `ckptfs commit MOUNT/JOB/SET`.
    pub fn commit(&self, job: &str, set: &str) -> Output {
        self.cli(&[&"commit", &self.p(&format!("{job}/{set}"))])
    }

    /// Commit once the daemon has seen every close of the set's files, and
    /// require success.
    pub fn commit_ok(&self, job: &str, set: &str) {
        self.settle(job, set);
        self.cli_ok(&[&"commit", &self.p(&format!("{job}/{set}"))]);
    }

    /// Files of JOB/SET the daemon counts as open for writing.
    pub fn open_in(&self, job: &str, set: &str) -> Vec<String> {
        let prefix = format!("{job}/{set}/");
        self.status()["open_files"]
            .as_array()
            .expect("status open_files")
            .iter()
            .filter_map(|v| v.as_str())
            .filter(|f| f.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }

    /// close(2) returns before the kernel's RELEASE reaches the daemon (see
    /// commit_right_after_close): wait up to 2 s for the daemon to have seen
    /// the closes of JOB/SET's files, so that tests about other things do
    /// not trip over that race. Does not fail.
    pub fn settle(&self, job: &str, set: &str) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.open_in(job, set).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ckptfs verify JOB SET --cache C`, required to pass.
    pub fn verify_ok(&self, job: &str, set: &str) {
        self.cli_ok(&[&"verify", &job, &set]);
    }

    /// The manifest of a complete set, read from the cache.
    pub fn manifest(&self, job: &str, set: &str) -> Value {
        let p = self.c(&format!(".ckptfs/sets/{job}/{set}/manifest.json"));
        let s = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("manifest JSON: {e}\n{s}"))
    }

    /// (path, size, mode) of every file in a set's manifest, sorted by path.
    pub fn manifest_files(&self, job: &str, set: &str) -> Vec<(String, u64, String)> {
        let m = self.manifest(job, set);
        let mut v: Vec<(String, u64, String)> = m["files"]
            .as_array()
            .expect("manifest files")
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().expect("path").to_owned(),
                    f["size"].as_u64().expect("size"),
                    f["mode"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Wait (bounded) until `user.ckptfs.state` of `path` is `want`.
    pub fn wait_state(&self, path: &Path, want: &str, within: Duration) {
        let mut last;
        let deadline = Instant::now() + within;
        loop {
            match get_state(path) {
                Ok(s) if s == want => return,
                Ok(s) => last = s,
                Err(e) => last = format!("error {e}"),
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: user.ckptfs.state still {last:?} after {within:?}, expected {want:?}\n\
                     daemon log:\n{}",
                    path.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        match &self.daemon {
            Daemon::Child(c) => c.id(),
            Daemon::Pid(p) => *p,
            Daemon::Gone => panic!("no daemon running"),
        }
    }

    pub fn daemon_alive(&mut self) -> bool {
        match &mut self.daemon {
            Daemon::Child(c) => !matches!(c.try_wait(), Ok(Some(_))),
            Daemon::Pid(p) => pid_alive(*p),
            Daemon::Gone => false,
        }
    }

    /// SIGKILL the daemon by pid and reap it.
    pub fn kill9(&mut self) {
        let pid = self.pid();
        // SAFETY: kill(2) with a pid we started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        self.wait_daemon(WAIT)
            .unwrap_or_else(|| panic!("daemon {pid} survived SIGKILL for {WAIT:?}"));
    }

    /// Send `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we started.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Wait (bounded) for the daemon to exit. `Some(status)` (None for a
    /// background daemon, which is not our child) once it is gone; `None`
    /// if it is still running after `within`.
    pub fn wait_daemon(&mut self, within: Duration) -> Option<Option<ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            match &mut self.daemon {
                Daemon::Gone => return Some(None),
                Daemon::Child(c) => {
                    if let Ok(Some(st)) = c.try_wait() {
                        self.daemon = Daemon::Gone;
                        return Some(Some(st));
                    }
                }
                Daemon::Pid(p) => {
                    if !pid_alive(*p) {
                        self.daemon = Daemon::Gone;
                        return Some(None);
                    }
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far (with earlier incarnations').
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        for (i, p) in self.old_logs.iter().enumerate() {
            s.push_str(&format!("--- daemon #{} ---\n", i + 1));
            s.push_str(&fs::read_to_string(p).unwrap_or_default());
        }
        if !self.old_logs.is_empty() {
            s.push_str(&format!("--- daemon #{} ---\n", self.old_logs.len() + 1));
        }
        s.push_str(&fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})")));
        if self.opts.background {
            let bg = self.c(".ckptfs/daemon.log");
            s.push_str("--- background daemon log ---\n");
            s.push_str(&fs::read_to_string(bg).unwrap_or_default());
        }
        s
    }

    fn teardown(&mut self) {
        if matches!(self.daemon, Daemon::Gone) && !is_mounted_or_stale(&self.mnt) {
            return;
        }
        if is_mounted_or_stale(&self.mnt) {
            let mut c = self.command();
            c.arg("umount")
                .arg(&self.mnt)
                .arg("--force")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Ok(mut child) = c.spawn() {
                if wait_child(&mut child, Duration::from_secs(40)).is_none() {
                    eprintln!("teardown: ckptfs umount --force hung; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        if self.wait_daemon(Duration::from_secs(10)).is_none() {
            let pid = self.pid();
            eprintln!("teardown: daemon {pid} still running after umount; SIGKILL");
            // SAFETY: kill(2) with a pid we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = self.wait_daemon(Duration::from_secs(10));
        }
        if is_mounted_or_stale(&self.mnt) {
            eprintln!("teardown: {} still mounted; umount -l", self.mnt.display());
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== daemon log ({}) ====\n{}\n==== end of daemon log ====",
                self.mnt.display(),
                self.log_text()
            );
        }
        self.teardown();
        if self.tmpfs {
            let _ = Command::new("umount").arg("-l").arg(&self.cache).status();
        }
        let still =
            is_mounted_or_stale(&self.mnt) || (self.tmpfs && mount_entry(&self.cache).is_some());
        if let Some(root) = self.root.take() {
            if still {
                // Never recurse into a live mount: leave the directory.
                eprintln!(
                    "teardown: leaving {} behind (still mounted)",
                    root.path().display()
                );
                let _ = root.keep();
            }
        }
    }
}

/// (fstype, source) of the mount exactly at `path`, the topmost one.
pub fn mount_entry(path: &Path) -> Option<(String, String)> {
    let table = fs::read("/proc/self/mountinfo").expect("read mountinfo");
    let want = path.as_os_str().as_bytes();
    let mut found = None;
    for line in table.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if fields.len() < 10 {
            continue;
        }
        if unescape(fields[4]) != want {
            continue;
        }
        let Some(sep) = fields.iter().skip(6).position(|f| *f == b"-") else {
            continue;
        };
        let sep = sep + 6;
        let fstype = String::from_utf8_lossy(fields.get(sep + 1).copied().unwrap_or(b"")).into();
        let source =
            String::from_utf8_lossy(&unescape(fields.get(sep + 2).copied().unwrap_or(b"")))
                .into_owned();
        found = Some((fstype, source));
    }
    found
}

fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\'
            && i + 3 < f.len()
            && f[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = (f[i + 1] - b'0') as u32 * 64
                + (f[i + 2] - b'0') as u32 * 8
                + (f[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
}

/// statfs(2) of `path` succeeds: a live mount answers it, a mount whose
/// daemon died fails it with ENOTCONN (statfs is never answered from the
/// kernel's attribute cache).
pub fn mount_answers(path: &Path) -> bool {
    let c = cpath(path);
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid path and a writable statfs.
    unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) == 0 }
}

/// `path` is a ckptfs mount (live or with a dead daemon).
pub fn is_mounted_or_stale(path: &Path) -> bool {
    mount_entry(path).is_some_and(|(t, _)| t == FSTYPE)
}

/// `path` is a ckptfs mount according to the mount table.
pub fn is_mounted(path: &Path) -> bool {
    is_mounted_or_stale(path)
}

pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited.
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Wait for a child with a bound; `None` if it is still running.
pub fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (bounded) for `cond`; panic naming `what` otherwise.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A child process (group) killed on drop: writers, sleepers.
pub struct Proc {
    pub child: Child,
    pub stderr_path: Option<PathBuf>,
}

impl Proc {
    /// Spawn `cmd` in its own process group.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.process_group(0);
        let child = cmd.spawn().expect("spawn");
        Proc {
            child,
            stderr_path: None,
        }
    }

    /// Spawn `sh -c SCRIPT sh ARGS…` in its own process group, stderr to
    /// `stderr_path`.
    pub fn sh(script: &str, args: &[&dyn AsRef<OsStr>], stderr_path: &Path) -> Proc {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script).arg("sh");
        for a in args {
            c.arg(a.as_ref());
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(stderr_path).expect("create stderr file"));
        let mut p = Proc::spawn(c);
        p.stderr_path = Some(stderr_path.to_owned());
        p
    }

    pub fn wait_within(&mut self, within: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, within)
    }

    pub fn stderr(&self) -> String {
        self.stderr_path
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) of the process group we created.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = wait_child(&mut self.child, Duration::from_secs(10));
        }
    }
}

/// Run `program ARGS` as uid/gid (no supplementary groups).
pub fn as_user(uid: u32, gid: u32, program: &str, args: &[&dyn AsRef<OsStr>]) -> Output {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    for a in args {
        c.arg(a.as_ref());
    }
    c.stdin(Stdio::null()).output().expect("run setpriv")
}

/// Run a shell script as uid/gid: `sh -c SCRIPT sh ARGS…`.
pub fn sh_as(uid: u32, gid: u32, script: &str, args: &[&dyn AsRef<OsStr>]) -> Output {
    let mut all: Vec<&dyn AsRef<OsStr>> = vec![&"-c", &script, &"sh"];
    all.extend_from_slice(args);
    as_user(uid, gid, "sh", &all)
}

/// Run a command as root; its output.
pub fn run(program: &str, args: &[&dyn AsRef<OsStr>]) -> Output {
    let mut c = Command::new(program);
    for a in args {
        c.arg(a.as_ref());
    }
    c.stdin(Stdio::null()).output().expect("run command")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// getxattr(2) of `user.ckptfs.state`.
pub fn get_state(p: &Path) -> io::Result<String> {
    getxattr(p, "user.ckptfs.state").map(|v| String::from_utf8_lossy(&v).into_owned())
}

pub fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let path = cpath(p);
    let name = CString::new(name).expect("xattr name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a writable buffer of the
    // given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn setxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let path = cpath(p);
    let name = CString::new(name).expect("xattr name");
    // SAFETY: valid NUL-terminated strings and a readable value buffer.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// statvfs(2).
pub fn statvfs(p: &Path) -> libc::statvfs {
    let path = cpath(p);
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid path and a writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(
        rc,
        0,
        "statvfs {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
    // SAFETY: statvfs succeeded.
    unsafe { st.assume_init() }
}

/// The errno of a failed operation; panics (naming `what`) if it succeeded.
pub fn errno_of<T: std::fmt::Debug>(r: io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}) but should have failed"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: error without errno: {e}")),
    }
}

/// Assert that `r` failed with `want` (an errno), naming `what`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, want: i32, what: &str) {
    let got = errno_of(r, what);
    assert_eq!(
        got,
        want,
        "{what}: failed with {} ({got}), expected {} ({want})",
        io::Error::from_raw_os_error(got),
        io::Error::from_raw_os_error(want)
    );
}

/// Deterministic test bytes: `len` bytes from `seed` (xorshift).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compare two byte strings, reporting the first difference compactly.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: {} bytes read, {} expected; first difference at offset {first}",
        got.len(),
        want.len()
    );
}

/// Run a behaviour test on a fresh mount of the given options; checks the
/// data path after the body.
pub fn run_on(opts: Opts, body: fn(&mut Mount)) {
    let mut m = Mount::start(opts);
    body(&mut m);
    m.assert_data_path_held();
}

/// Generate `NAME::passthrough` and `NAME::fallback` tests running
/// `fn NAME(&mut Mount)` on each data path, optionally with extra options:
/// `both_paths!(name);` or `both_paths!(name, |o| o.idle_commit("j=1s"));`.
#[macro_export]
macro_rules! both_paths {
    ($name:ident) => {
        $crate::both_paths!($name, |o| o);
    };
    ($name:ident, |$o:ident| $opts:expr) => {
        mod $name {
            use super::common::{run_on, DataPath, Opts};
            fn opts(dp: DataPath) -> Opts {
                let $o = Opts::new(dp);
                $opts
            }
            #[test]
            fn passthrough() {
                run_on(opts(DataPath::Passthrough), super::$name);
            }
            #[test]
            fn fallback() {
                run_on(opts(DataPath::Fallback), super::$name);
            }
        }
    };
}

pub mod netns;
pub mod rdma;
pub mod weed;
