//! ckptfs-dump and ckptfs-restore with real CRIU on a real program
//! (`tests/criu/counter.c`: counts in memory, appends each count to a log).
//!
//! Needs root and a CRIU >= 4 (scripts/install-criu.sh); without them the
//! tests that run CRIU say so and pass without running. Every process a
//! test starts is killed by pid when the test ends, pass or fail.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const DUMP: &str = env!("CARGO_BIN_EXE_ckptfs-dump");
const RESTORE: &str = env!("CARGO_BIN_EXE_ckptfs-restore");
const CKPTFS: &str = env!("CARGO_BIN_EXE_ckptfs");
/// Bound for "it must get there" waits; only exceeded on failure.
const WAIT: Duration = Duration::from_secs(30);

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when CRIU can run here; else the caller skips, saying why.
fn criu_ready(test: &str) -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let r = READY.get_or_init(|| {
        if !root() {
            return Err("not root".into());
        }
        let c = libckpt::criu::Criu::discover(None).map_err(|e| e.to_string())?;
        let r = c.check();
        if r.ok {
            Ok(())
        } else {
            Err(format!("criu check failed: {}", r.detail))
        }
    });
    match r {
        Ok(()) => true,
        Err(why) => {
            eprintln!("{test}: skipped: {why} (run scripts/install-criu.sh as root)");
            false
        }
    }
}

/// The counter, compiled once per test run.
fn counter_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("criu-counter");
        fs::create_dir_all(&dir).expect("counter dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let out = dir.join(format!("counter-{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/criu/counter.c");
        let st = Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run gcc");
        assert!(st.success(), "gcc {} failed", src.display());
        out
    })
}

/// A scratch directory with a cache, a log and the processes to kill.
struct Fixture {
    dir: tempfile::TempDir,
    pids: Vec<i32>,
    children: Vec<Child>,
    tmpfs: Option<PathBuf>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("ckptfs-criu-")
            .tempdir_in("/var/tmp")
            .expect("scratch");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        Fixture {
            dir,
            pids: Vec::new(),
            children: Vec::new(),
            tmpfs: None,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }

    fn log(&self) -> PathBuf {
        self.path().join("count.log")
    }

    /// Start the counter as `uid`, and wait until it has counted a little.
    fn start(&mut self, uid: u32, args: &[&str]) -> i32 {
        let log = self.log();
        fs::write(&log, "").expect("log");
        std::os::unix::fs::chown(&log, Some(uid), Some(uid)).expect("chown log");
        let mut cmd = Command::new(counter_bin());
        cmd.arg(&log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if uid != 0 {
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn().expect("start counter");
        let pid = child.id() as i32;
        self.children.push(child);
        self.pids.push(pid);
        wait_until("the counter starts counting", || counts(&log).len() >= 3);
        pid
    }

    /// Put the cache on a tmpfs of `mib` MiB.
    fn tmpfs_cache(&mut self, mib: u64) {
        let c = self.cache();
        fs::create_dir_all(&c).expect("cache dir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m,mode=0755"))
            .arg("tmpfs")
            .arg(&c)
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs");
        self.tmpfs = Some(c);
    }

    fn run(&self, bin: &str, args: &[&str]) -> Output {
        Command::new(bin)
            .args(args)
            .env_remove("CKPTFS_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run")
    }

    fn dump(&self, pid: i32, extra: &[&str]) -> Output {
        let cache = self.cache();
        let mut args = vec![pid.to_string(), "--job".into(), "counter".into()];
        args.push("--cache".into());
        args.push(cache.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(DUMP, &args)
    }

    /// Restore detached; returns the restored pid (tracked for the kill).
    fn restore(&mut self, args: &[&str]) -> i32 {
        let out = self.run(RESTORE, args);
        assert!(out.status.success(), "restore: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pid: i32 = stdout
            .split("as pid ")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {stdout}"));
        self.pids.push(pid);
        pid
    }

    /// SIGKILL `pid` and wait until it is gone (reaped, by us or init),
    /// so a restore can have the pid again.
    fn kill(&mut self, pid: i32) {
        // SAFETY: kill(2) with a positive pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if let Some(i) = self.children.iter().position(|c| c.id() as i32 == pid) {
            let mut c = self.children.remove(i);
            let _ = c.wait();
        }
        wait_until("the killed process is gone", || !exists(pid));
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for &pid in &self.pids {
            // SAFETY: kill(2) with a positive pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        if let Some(t) = &self.tmpfs {
            let _ = Command::new("umount").arg("-l").arg(t).status();
        }
    }
}

fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Running or sleeping: not stopped, not a zombie.
fn running(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    matches!(state, Some('R' | 'S' | 'D'))
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < WAIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The counts in the log, in order.
fn counts(log: &Path) -> Vec<u64> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn cache_arg(f: &Fixture) -> String {
    f.cache().display().to_string()
}

/// The job's set directories in the cache.
fn sets(f: &Fixture) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(f.cache().join("counter"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn manifest(f: &Fixture, set: &str) -> serde_json::Value {
    let p = f
        .cache()
        .join(".ckptfs/sets/counter")
        .join(set)
        .join("manifest.json");
    serde_json::from_slice(&fs::read(&p).expect("manifest")).expect("json")
}

/// After a restore from a dump taken while the log's last count was in
/// `lo..=hi`, the counter must go on from there: the next count written
/// is in `lo+1..=hi+1`, and the ones after it follow one by one.
fn continues(f: &Fixture, lines_before: usize, lo: u64, hi: u64) {
    let log = f.log();
    wait_until("the restored counter counts", || {
        counts(&log).len() >= lines_before + 3
    });
    let c = counts(&log);
    let next = &c[lines_before..];
    assert!(
        (lo + 1..=hi + 1).contains(&next[0]),
        "restored counter went on at {} (dumped between {lo} and {hi}); log tail {:?}",
        next[0],
        &c[lines_before.saturating_sub(3)..]
    );
    for w in next.windows(2) {
        assert_eq!(w[1], w[0] + 1, "counts after the restore: {next:?}");
    }
}

#[test]
fn dump_kill_restore_continues_from_the_dumped_count() {
    if !criu_ready("dump_kill_restore") {
        return;
    }
    let mut f = Fixture::new();
    // As root: root on these machines lacks CAP_SYS_RESOURCE, which CRIU
    // needs to read another user's rlimits (libckpt's unit tests check the
    // chown to another user).
    let pid = f.start(0, &[]);
    let out = f.dump(pid, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // Without --leave-running the tree is ended once committed.
    wait_until("the dumped process is killed", || !running(pid));
    f.kill(pid);
    let before = counts(&f.log());
    let last = *before.last().expect("counts");
    assert_eq!(before, (1..=last).collect::<Vec<_>>());

    // The dump: mode 0600, owned by the process's user, committed.
    let s = sets(&f);
    assert_eq!(s.len(), 1, "{s:?}");
    let dir = f.cache().join("counter").join(&s[0]);
    let mut files = 0;
    for e in fs::read_dir(&dir).expect("set dir").flatten() {
        let md = e.metadata().expect("md");
        assert_eq!(md.mode() & 0o777, 0o600, "{}", e.path().display());
        assert_eq!(md.uid(), 0, "{}", e.path().display());
        files += 1;
    }
    assert!(files > 5 && dir.join("inventory.img").exists());
    assert_eq!(manifest(&f, &s[0])["parent"], serde_json::Value::Null);

    let cache = cache_arg(&f);
    let rpid = f.restore(&["counter", "--detach", "--cache", &cache]);
    assert_eq!(rpid, pid, "CRIU restores the original pid");
    continues(&f, before.len(), last, last);
    // Straight on: the whole log is 1, 2, 3, … with no gap or repeat.
    let all = counts(&f.log());
    assert_eq!(all, (1..=*all.last().unwrap_or(&0)).collect::<Vec<_>>());
    f.kill(rpid);

    // Without --detach, ckptfs-restore waits for the restored tree and
    // says how it ended.
    let lines = counts(&f.log()).len();
    let waiting = Command::new(RESTORE)
        .args(["counter", "--cache", &cache])
        .env_remove("CKPTFS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ckptfs-restore");
    f.pids.push(waiting.id() as i32);
    continues(&f, lines, last, last);
    // SAFETY: kill(2) with a positive pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut waiting = waiting;
    wait_until("ckptfs-restore returns once the tree ended", || {
        matches!(waiting.try_wait(), Ok(Some(_)))
    });
    let out = waiting.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("has ended") && said.contains("signal: 9"),
        "{said}"
    );
    wait_until("the restored process is gone", || !exists(pid));
}

#[test]
fn repeated_cycles_with_leave_running_and_an_incremental_chain() {
    if !criu_ready("cycles") {
        return;
    }
    let mut f = Fixture::new();
    let mut pid = f.start(0, &["--mem", "8"]);
    let cache = cache_arg(&f);
    // Cycles: dump while it runs, kill, restore, it goes on from the dump.
    for cycle in 0..3 {
        let lo = *counts(&f.log()).last().unwrap_or(&0);
        let out = f.dump(
            pid,
            &[
                "--leave-running",
                "--incremental",
                "--full-every",
                "10",
                "--keep",
                "2",
            ],
        );
        assert!(out.status.success(), "cycle {cycle}: {}", text(&out));
        let hi = *counts(&f.log()).last().unwrap_or(&0);
        assert!(
            running(pid),
            "cycle {cycle}: --leave-running left it running"
        );
        wait_until("it counts on", || {
            counts(&f.log()).last().is_some_and(|c| *c > hi + 2)
        });
        f.kill(pid);
        let lines = counts(&f.log()).len();
        pid = f.restore(&["counter", "--detach", "--cache", &cache]);
        continues(&f, lines, lo, hi);
    }
    // Two more incremental dumps: a chain of five, the last restored.
    let mut lo = 0;
    let mut hi = 0;
    for _ in 0..2 {
        lo = *counts(&f.log()).last().unwrap_or(&0);
        let out = f.dump(
            pid,
            &[
                "--leave-running",
                "--incremental",
                "--full-every",
                "10",
                "--keep",
                "2",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        hi = *counts(&f.log()).last().unwrap_or(&0);
    }
    // keep = 2, yet all five stay: the newest needs every one before it.
    let s = sets(&f);
    assert_eq!(s.len(), 5, "{s:?}");
    let base = &s[0];
    for (k, set) in s.iter().enumerate().skip(1) {
        assert_eq!(set, &format!("{base}+{k}"));
        let parent = if k == 1 {
            base.clone()
        } else {
            format!("{base}+{}", k - 1)
        };
        assert_eq!(manifest(&f, set)["parent"], parent.as_str());
        // Incremental sets hold only changed pages.
        assert!(f
            .cache()
            .join("counter")
            .join(set)
            .join("ckptfs-pages.idx")
            .exists());
    }
    let full_bytes = manifest(&f, base)["total_bytes"].as_u64().unwrap_or(0);
    let last_bytes = manifest(&f, &s[4])["total_bytes"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(
        last_bytes * 4 < full_bytes,
        "an incremental dump of an idle 8 MiB counter stores {last_bytes} bytes, the full one {full_bytes}"
    );
    wait_until("it counts on", || {
        counts(&f.log()).last().is_some_and(|c| *c > hi + 2)
    });
    f.kill(pid);
    let lines = counts(&f.log()).len();
    let last_set = s[4].clone();
    let rpid = f.restore(&["counter", &last_set, "--detach", "--cache", &cache]);
    continues(&f, lines, lo, hi);

    // A new full dump starts a new chain; with keep 2 the old chain goes
    // once nothing kept needs it.
    let out = f.dump(
        rpid,
        &[
            "--leave-running",
            "--incremental",
            "--full-every",
            "2",
            "--keep",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = f.dump(
        rpid,
        &[
            "--leave-running",
            "--incremental",
            "--full-every",
            "2",
            "--keep",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let s = sets(&f);
    assert_eq!(s.len(), 2, "the old chain is pruned: {s:?}");
    assert!(s[1].starts_with(&s[0]) && s[1].ends_with("+1"), "{s:?}");
    f.kill(rpid);
}

#[test]
fn restore_from_the_pfs_tier_with_the_cache_wiped() {
    if !criu_ready("restore_from_pfs") {
        return;
    }
    let mut f = Fixture::new();
    let pfs = f.path().join("pfs");
    fs::create_dir(&pfs).expect("pfs");
    let config = f.path().join("ckptfs.toml");
    fs::write(
        &config,
        format!(
            "cache = \"{}\"\n[pfs]\ndir = \"{}\"\n\
             [drain]\njitter = \"0s\"\nhigh_watermark = 100\nlow_watermark = 99\n",
            f.cache().display(),
            pfs.display()
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let pid = f.start(0, &["--mem", "4"]);
    let mut lo = 0;
    let mut hi = 0;
    for _ in 0..2 {
        lo = *counts(&f.log()).last().unwrap_or(&0);
        let out = f.run(
            DUMP,
            &[
                &pid.to_string(),
                "--job",
                "counter",
                "--config",
                &config,
                "--leave-running",
                "--incremental",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        hi = *counts(&f.log()).last().unwrap_or(&0);
    }
    let out = f.run(
        CKPTFS,
        &["--config", &config, "drain", "--wait", "--timeout", "60s"],
    );
    assert!(out.status.success(), "drain: {}", text(&out));
    // A fresh node: nothing in the cache.
    fs::remove_dir_all(f.cache()).expect("wipe cache");
    f.kill(pid);
    let lines = counts(&f.log()).len();
    let out = f.run(RESTORE, &["counter", "--detach", "--config", &config]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("staged").count(),
        2,
        "both sets of the chain: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rpid: i32 = stdout
        .split("as pid ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout}"));
    f.pids.push(rpid);
    continues(&f, lines, lo, hi);
    f.kill(rpid);
}

#[test]
fn failures_commit_nothing_and_leave_the_process_running() {
    if !criu_ready("failures") {
        return;
    }
    let mut f = Fixture::new();

    // No such process: a pid that just ended.
    let mut gone = Command::new("true").spawn().expect("true");
    let gone_pid = gone.id() as i32;
    let _ = gone.wait();
    let out = f.dump(gone_pid, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("no process with pid {gone_pid}")),
        "{}",
        text(&out)
    );

    // A process CRIU will not dump: an established TCP connection without
    // --tcp-established.
    let pid = f.start(0, &["--tcp"]);
    let out = f.dump(pid, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("criu dump of pid") && msg.contains("nothing was committed"),
        "{msg}"
    );
    assert!(sets(&f).is_empty(), "{:?}", sets(&f));
    let n = counts(&f.log()).len();
    wait_until("it still counts", || counts(&f.log()).len() > n + 2);
    assert!(running(pid));

    // CRIU missing: a configured path that does not exist.
    let out = f.dump(pid, &["--criu", "/nonexistent/criu"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/criu"), "{}", text(&out));
    assert!(running(pid));
    f.kill(pid);
}

#[test]
fn a_full_disk_during_the_dump_commits_nothing() {
    if !criu_ready("disk_full") {
        return;
    }
    let mut f = Fixture::new();
    f.tmpfs_cache(8);
    let pid = f.start(0, &["--mem", "32"]);
    for extra in [&[][..], &["--leave-running"][..]] {
        let out = f.dump(pid, extra);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("nothing was committed"),
            "{}",
            text(&out)
        );
        assert!(
            sets(&f).is_empty(),
            "partial images removed: {:?}",
            sets(&f)
        );
        let n = counts(&f.log()).len();
        wait_until("it still counts", || counts(&f.log()).len() > n + 2);
        assert!(running(pid));
    }
    let out = f.run(CKPTFS, &["--cache", &cache_arg(&f), "ls", "counter"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("complete"),
        "{}",
        text(&out)
    );
    f.kill(pid);
}

#[test]
fn status_shows_criu() {
    let f = Fixture::new();
    let cache = cache_arg(&f);
    let out = f.run(
        CKPTFS,
        &["--cache", &cache, "--criu", "/nonexistent/criu", "status"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("criu:") && s.contains("/nonexistent/criu"),
        "{s}"
    );
    if !criu_ready("status_shows_criu") {
        return;
    }
    let out = f.run(CKPTFS, &["--cache", &cache, "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["criu"]["version"].as_str().is_some(), "{v}");

    // With a daemon serving the cache, its status carries CRIU's too.
    let mnt = f.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mount point");
    let mnt = mnt.to_string_lossy().into_owned();
    let out = f.run(CKPTFS, &["--cache", &cache, "mount", &mnt]);
    assert!(out.status.success(), "mount: {}", text(&out));
    let out = f.run(CKPTFS, &["--cache", &cache, "status", "--json"]);
    let umount = f.run(CKPTFS, &["--cache", &cache, "umount", "--force", &mnt]);
    assert!(umount.status.success(), "umount: {}", text(&umount));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        v["mountpoint"].as_str().is_some(),
        "not the daemon's status: {v}"
    );
    assert!(v["criu"]["version"].as_str().is_some(), "{v}");
}

#[test]
fn every_repeats_until_the_process_ends_and_skips_under_load() {
    if !criu_ready("every") {
        return;
    }
    let mut f = Fixture::new();
    let pid = f.start(0, &[]);
    let cache = cache_arg(&f);
    // Any load is above -1: the dump is skipped, and says so.
    let out = f.run(
        DUMP,
        &[
            &pid.to_string(),
            "--job",
            "counter",
            "--cache",
            &cache,
            "--skip-if-load-above=-1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("skipped: load"),
        "{}",
        text(&out)
    );
    assert!(sets(&f).is_empty());

    let mut every = Command::new(DUMP)
        .args([&pid.to_string(), "--job", "counter", "--cache", &cache])
        .args(["--every", "100ms", "--incremental", "--keep", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ckptfs-dump --every");
    f.pids.push(every.id() as i32);
    wait_until("three periodic dumps", || sets(&f).len() >= 3);
    assert!(running(pid), "--every implies --leave-running");
    f.kill(pid);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = every.try_wait().expect("wait") {
            break st;
        }
        assert!(
            t.elapsed() < WAIT,
            "ckptfs-dump --every did not stop after its process ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = every.wait_with_output().expect("output");
    assert!(status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has ended"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_corrupt_image_is_never_run() {
    if !criu_ready("corrupt") {
        return;
    }
    let mut f = Fixture::new();
    let pid = f.start(0, &["--mem", "4"]);
    let out = f.dump(pid, &[]);
    assert!(out.status.success(), "{}", text(&out));
    f.kill(pid);
    let s = sets(&f);
    let pages = f.cache().join("counter").join(&s[0]).join("pages-1.img");
    let mut bytes = fs::read(&pages).expect("pages");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&pages, bytes).expect("corrupt");
    let lines = counts(&f.log()).len();
    let out = f.run(RESTORE, &["counter", "--detach", "--cache", &cache_arg(&f)]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("corrupt"), "{}", text(&out));
    // Whatever CRIU restored was killed before it ran: it counts no more.
    wait_until("the damaged restore is gone", || !running(pid));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(counts(&f.log()).len(), lines);
    f.pids.push(pid);
}

#[test]
fn a_failure_after_criu_finished_resumes_the_process() {
    if !criu_ready("resume") {
        return;
    }
    let mut f = Fixture::new();
    let pid = f.start(0, &[]);
    let out = f.dump(pid, &["--leave-running"]);
    assert!(out.status.success(), "{}", text(&out));
    let full = sets(&f);
    // Damage the parent so the incremental step fails once CRIU has
    // dumped (and, without --leave-running, stopped) the tree.
    let pages = f.cache().join("counter").join(&full[0]).join("pages-1.img");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&pages)
        .expect("pages");
    std::io::Write::write_all(&mut file, b"x").expect("append");
    drop(file);
    let out = f.dump(pid, &["--incremental"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("not a whole number"), "{}", text(&out));
    assert_eq!(sets(&f), full, "nothing new committed");
    let n = counts(&f.log()).len();
    wait_until("the stopped tree is resumed and counts on", || {
        counts(&f.log()).len() > n + 2
    });
    assert!(running(pid));
    f.kill(pid);
}
