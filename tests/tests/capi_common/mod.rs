//! Shared harness of the C API tests: the library built once per test
//! binary (`cargo build -p ckpt-capi -p ckptfs` into the target directory
//! these tests were built in), C and Fortran programs compiled with the
//! real gcc and gfortran against it, processes run with a bound and killed
//! by pid, a `ckptfs mount --foreground` daemon that is always unmounted
//! and reaped, and configurations for both modes.
//!
//! Env: CKPT_CAPI_LIB_DIR uses a libckpt.so built elsewhere (no cargo
//! build); CKPT_CAPI_SEED fixes the seed of the random kills (printed on
//! every run).

#![allow(dead_code)]

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bound on any one program of these tests: far beyond what they need, so
/// that only a hang trips it. Never a performance assertion.
pub const RUN_BOUND: Duration = Duration::from_secs(300);
/// Bound for a daemon to come up or go away.
pub const DAEMON_BOUND: Duration = Duration::from_secs(30);

/// The workspace root (this crate is `tests/` in it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// `<target>/<profile>`: where this test binary was built (it runs from
/// `<target>/<profile>/deps/`), and where cargo puts libckpt.so for the
/// same profile.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in <target>/<profile>/deps")
        .to_owned()
}

/// What `cargo build` was run for the library, once per test binary.
pub struct Built {
    /// Directory holding libckpt.so and libckpt.a.
    pub lib_dir: PathBuf,
    /// The ckptfs binary.
    pub ckptfs: PathBuf,
    /// The cargo profile (`dev`, `release`, …) of `lib_dir`.
    pub profile: String,
}

/// The library and the ckptfs binary, built (once) for this test binary's
/// profile into its target directory. Panics with cargo's output when the
/// build fails: a test that cannot get the library fails, it never skips.
pub fn built() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    BUILT
        .get_or_init(build)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build() -> Result<Built, String> {
    let pdir = profile_dir();
    let name = pdir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let profile = if name == "debug" {
        "dev".to_owned()
    } else {
        name
    };
    if let Ok(dir) = std::env::var("CKPT_CAPI_LIB_DIR") {
        let lib_dir = PathBuf::from(dir);
        let ckptfs = lib_dir.join("ckptfs");
        for f in [lib_dir.join("libckpt.so"), ckptfs.clone()] {
            if !f.exists() {
                return Err(format!(
                    "CKPT_CAPI_LIB_DIR={}: {} is missing",
                    lib_dir.display(),
                    f.display()
                ));
            }
        }
        return Ok(Built {
            lib_dir,
            ckptfs,
            profile,
        });
    }
    let target = pdir.parent().expect("target dir").to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace())
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--profile",
            &profile,
            "-p",
            "ckpt-capi",
            "-p",
            "ckptfs",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --profile {profile} -p ckpt-capi -p ckptfs (CARGO_TARGET_DIR={}) failed: {}\n{}",
            target.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let built = Built {
        lib_dir: pdir.clone(),
        ckptfs: pdir.join("ckptfs"),
        profile,
    };
    for f in [built.lib_dir.join("libckpt.so"), built.ckptfs.clone()] {
        if !f.exists() {
            return Err(format!(
                "cargo build succeeded but {} is missing",
                f.display()
            ));
        }
    }
    Ok(built)
}

/// A private directory under /var/tmp (the node's disk, not tmpfs).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("temp dir under /var/tmp")
}

fn run_compiler(mut c: Command, what: &str) {
    let out = c.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("{what}: cannot run the compiler: {e} (gcc and gfortran must be installed)")
    });
    assert!(
        out.status.success(),
        "{what} failed: {}\n{:?}\n{}{}",
        out.status,
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `dir/lib`, holding `libckpt.so` and `libckpt.so.0` (its soname, which
/// linked programs ask the loader for) as links to the built library: cargo
/// leaves only `libckpt.so` in the target directory.
pub fn private_lib(dir: &Path) -> PathBuf {
    let lib = dir.join("lib");
    if !lib.exists() {
        fs::create_dir(&lib).expect("mkdir lib");
        let so = built().lib_dir.join("libckpt.so");
        for name in ["libckpt.so", "libckpt.so.0"] {
            std::os::unix::fs::symlink(&so, lib.join(name)).expect("symlink libckpt.so");
        }
    }
    lib
}

/// Compile the C program `src` (relative to the workspace) into `dir`,
/// linked against libckpt.so with an rpath to it; the executable's path.
pub fn cc(src: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let lib = private_lib(dir);
    let src = workspace().join(src);
    let exe = dir.join(src.file_stem().expect("source name"));
    let mut c = Command::new("gcc");
    c.args(["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(workspace().join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .args(extra)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lckpt", "-lpthread"]);
    run_compiler(c, &format!("gcc {}", src.display()));
    exe
}

/// Compile the Fortran program `src` with include/ckpt.f90 (the module and
/// its wrappers, built in `dir`) into `dir`; the executable's path, named
/// `<stem>_f`.
pub fn fc(src: &str, dir: &Path) -> PathBuf {
    let lib = private_lib(dir);
    let module = workspace().join("include/ckpt.f90");
    let obj = dir.join("ckpt.o");
    if !obj.exists() {
        let mut c = Command::new("gfortran");
        c.args(["-O2", "-g", "-Wall", "-std=f2008", "-c"])
            .arg("-J")
            .arg(dir)
            .arg("-o")
            .arg(&obj)
            .arg(&module);
        run_compiler(c, "gfortran include/ckpt.f90");
    }
    let src = workspace().join(src);
    let exe = dir.join(format!(
        "{}_f",
        src.file_stem().expect("source name").to_string_lossy()
    ));
    let mut c = Command::new("gfortran");
    c.args(["-O2", "-g", "-Wall"])
        .arg("-I")
        .arg(dir)
        .arg("-J")
        .arg(dir)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg(&obj)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lckpt");
    run_compiler(c, &format!("gfortran {}", src.display()));
    exe
}

/// The launcher variables libckpt takes a rank and size from.
pub const LAUNCHER_VARS: &[&str] = &[
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_RANK",
    "PMI_SIZE",
    "PMIX_RANK",
    "PMIX_SIZE",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
];

/// Run `c` as a single rank, whatever launcher the tests run under.
pub fn single_rank(c: &mut Command) -> &mut Command {
    for v in LAUNCHER_VARS {
        c.env_remove(v);
    }
    c
}

/// How the library runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Mounted,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Mounted => "mounted",
        }
    }
}

/// Write a libckpt configuration for `cache` in `mode`, with a PFS tier
/// directory if given; its path. The `[api]` table comes last, so that
/// [`add_key`] can append to it.
pub fn write_config(dir: &Path, cache: &Path, mode: Mode, pfs: Option<&Path>) -> PathBuf {
    let mut s = format!("cache = \"{}\"\n", cache.display());
    if let Some(p) = pfs {
        s.push_str(&format!("\n[pfs]\ndir = \"{}\"\n", p.display()));
        // Watermarks no disk reaches: the host's fill must not evict what
        // a test reads back.
        s.push_str("\n[drain]\njitter = \"0s\"\nhigh_watermark = 100\nlow_watermark = 99\n");
    }
    s.push_str(&format!("\n[api]\nmode = \"{}\"\n", mode.as_str()));
    let path = dir.join(format!("ckpt-{}.toml", mode.as_str()));
    fs::write(&path, s).expect("write config");
    path
}

/// Append `line` (a key of the last table, `[api]`) to a configuration.
pub fn add_key(config: &Path, line: &str) {
    let mut s = fs::read_to_string(config).expect("read config");
    s.push_str(line);
    s.push('\n');
    fs::write(config, s).expect("write config");
}

/// How a program run ended, and what it said.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn killed_by(&self) -> Option<i32> {
        self.status.signal()
    }

    #[track_caller]
    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what}: {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// A child in its own process group, SIGKILLed (the group) on drop.
pub struct Proc {
    pub child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    /// Spawn `cmd` with stdout and stderr into files under `dir`.
    pub fn spawn(mut cmd: Command, dir: &Path, tag: &str) -> Proc {
        let out = dir.join(format!("{tag}.stdout"));
        let err = dir.join(format!("{tag}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(fs::File::create(&err).expect("stderr file"))
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc { child, out, err }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL the process (not its group: the kill a rank gets).
    pub fn kill9(&self) {
        // SAFETY: kill(2) of a child we spawned and have not reaped.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
    }

    /// Wait for the end (bounded by RUN_BOUND, then SIGKILL and panic).
    pub fn wait(mut self) -> Run {
        let status = wait_bounded(&mut self.child, RUN_BOUND).unwrap_or_else(|| {
            // SAFETY: kill(2) of the process group we created.
            unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
            panic!(
                "{} still running after {RUN_BOUND:?}; stderr:\n{}",
                self.pid(),
                fs::read_to_string(&self.err).unwrap_or_default()
            )
        });
        Run {
            status,
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) of the process group we created.
            unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
            let _ = wait_bounded(&mut self.child, Duration::from_secs(10));
        }
    }
}

/// Run `cmd` to its end (bounded); its outcome.
pub fn run(cmd: Command, dir: &Path, tag: &str) -> Run {
    Proc::spawn(cmd, dir, tag).wait()
}

pub fn wait_bounded(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The seed of this run's random choices: CKPT_CAPI_SEED, else random;
/// printed so that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("CKPT_CAPI_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{test}: seed {seed}; rerun with CKPT_CAPI_SEED={seed}");
    seed
}

/// Pids of the live processes running the executable `exe`.
pub fn running(exe: &Path) -> Vec<u32> {
    let exe = exe.canonicalize().unwrap_or_else(|_| exe.to_owned());
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe)
                && !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                    st.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
        })
        .collect()
}

/// Wait (bounded) until no process runs `exe`: a launcher may return
/// before the ranks it killed are gone. Returns how many there were.
pub fn wait_gone(exe: &Path) -> usize {
    let first = running(exe).len();
    let deadline = Instant::now() + DAEMON_BOUND;
    loop {
        let left = running(exe);
        if left.is_empty() {
            return first;
        }
        assert!(
            Instant::now() < deadline,
            "processes {left:?} of {} still run {DAEMON_BOUND:?} after their launcher exited",
            exe.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ckptfs ARGS --cache CACHE` with an empty configuration; its output.
pub fn ckptfs(cache: &Path, args: &[&dyn AsRef<OsStr>]) -> Output {
    let b = built();
    let empty = cache.with_extension("empty.toml");
    fs::write(&empty, "").expect("empty config");
    let mut c = Command::new(&b.ckptfs);
    c.env("CKPTFS_CONFIG", &empty)
        .env_remove("RUST_LOG")
        .arg("--cache")
        .arg(cache);
    for a in args {
        c.arg(a.as_ref());
    }
    c.stdin(Stdio::null()).output().expect("run ckptfs")
}

/// `ckptfs latest JOB` over an empty cache with the PFS tier `pfs`: the
/// newest complete set that reached the tier, if any.
pub fn latest_on_pfs(pfs: &Path, job: &str) -> Option<String> {
    let empty = tempdir("ckpt-capi-empty-");
    let cache = empty.path().join("cache");
    fs::create_dir(&cache).expect("mkdir empty cache");
    let out = ckptfs(&cache, &[&"--pfs", &pfs, &"latest", &job]);
    match out.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        Some(3) => None,
        _ => panic!(
            "ckptfs --pfs {} latest {job}: {}\n{}",
            pfs.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `ckptfs ls JOB --json`: (set, state) pairs.
pub fn sets(cache: &Path, job: &str) -> Vec<(String, String)> {
    let out = ckptfs(cache, &[&"ls", &job, &"--json"]);
    if out.status.code() == Some(3) {
        return Vec::new(); // no such job
    }
    assert!(
        out.status.success(),
        "ckptfs ls {job}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("ckptfs ls --json gives JSON");
    v.as_array()
        .expect("ls --json is an array")
        .iter()
        .map(|s| {
            (
                s["set"].as_str().unwrap_or("?").to_owned(),
                s["state"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// `ckptfs verify JOB SET` passes.
#[track_caller]
pub fn verify_ok(cache: &Path, job: &str, set: &str) {
    let out = ckptfs(cache, &[&"verify", &job, &set]);
    assert!(
        out.status.success(),
        "ckptfs verify {job} {set}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The store set of checkpoint NAME, version V.
pub fn set_name(name: &str, version: u32) -> String {
    format!("{name}.v{version:010}")
}

// ---------------------------------------------------------------------------
// A real `ckptfs mount --foreground` over a private cache.

/// A live mount, unmounted and reaped on drop (also when the test panics).
pub struct Mount {
    root: Option<tempfile::TempDir>,
    pub cache: PathBuf,
    pub mnt: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Mount {
    pub fn start() -> Mount {
        Mount::start_with(&[])
    }

    /// A mount whose daemon gets `global` (e.g. `--pfs DIR`) before
    /// `mount`.
    pub fn start_with(global: &[String]) -> Mount {
        assert!(
            Path::new("/dev/fuse").exists(),
            "mounted mode needs /dev/fuse (and root); this machine has none"
        );
        let b = built();
        let root = tempdir("ckpt-capi-mnt-");
        let cache = root.path().join("cache");
        let mnt = root.path().join("mnt");
        fs::create_dir(&cache).expect("mkdir cache");
        fs::create_dir(&mnt).expect("mkdir mnt");
        let empty = root.path().join("empty.toml");
        fs::write(&empty, "").expect("empty config");
        let log = root.path().join("daemon.log");
        let logf = fs::File::create(&log).expect("daemon log");
        let child = Command::new(&b.ckptfs)
            .env("CKPTFS_CONFIG", &empty)
            .env("RUST_LOG", "info,fuser=warn")
            .arg("--cache")
            .arg(&cache)
            .args(["--keep", "0"])
            .args(global)
            .arg("mount")
            .arg(&mnt)
            .arg("--foreground")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .expect("spawn ckptfs mount --foreground");
        let mut m = Mount {
            root: Some(root),
            cache,
            mnt,
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + DAEMON_BOUND;
        while !(is_mounted(&m.mnt) && answers(&m.mnt)) {
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    m.child = None;
                    panic!(
                        "ckptfs mount exited ({st}) before mounting; log:\n{}",
                        m.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not mounted within {DAEMON_BOUND:?}; log:\n{}",
                m.mnt.display(),
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn dir(&self) -> &Path {
        self.root.as_ref().expect("temp dir").path()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn teardown(&mut self) {
        if is_mounted(&self.mnt) {
            let b = built();
            let mut c = Command::new(&b.ckptfs);
            c.env_remove("RUST_LOG")
                .arg("--cache")
                .arg(&self.cache)
                .arg("umount")
                .arg(&self.mnt)
                .arg("--force")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Ok(mut u) = c.spawn() {
                if wait_bounded(&mut u, DAEMON_BOUND).is_none() {
                    let _ = u.kill();
                    let _ = u.wait();
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            if wait_bounded(&mut child, Duration::from_secs(10)).is_none() {
                eprintln!("teardown: daemon {} still running; SIGKILL", child.id());
                // SAFETY: kill(2) of the daemon we spawned and have not reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                let _ = wait_bounded(&mut child, Duration::from_secs(10));
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== daemon log ====\n{}\n==== end ====", self.log_text());
        }
        self.teardown();
        if let Some(root) = self.root.take() {
            if is_mounted(&self.mnt) {
                eprintln!(
                    "teardown: leaving {} (still mounted)",
                    root.path().display()
                );
                let _ = root.keep();
            }
        }
    }
}

/// `path` is the mount point of a ckptfs mount (live or stale).
pub fn is_mounted(path: &Path) -> bool {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    table.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 4 && f[4] == want && l.contains(" - fuse.ckptfs ")
    })
}

/// statfs(2) answers: the daemon is serving the mount.
fn answers(path: &Path) -> bool {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid NUL-terminated path and a writable statfs.
    unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) == 0 }
}
