//! The `/ckpt` filesystem against the disk it sits on: the same operation
//! done under a ckptfs mount and directly in a plain directory of the same
//! filesystem, on both data paths (kernel passthrough, and the daemon's own
//! read/write path forced with `--no-passthrough`). Both daemons stay
//! mounted for the whole run; every round runs every variant of every
//! benchmark in a rotating order, as `e2e` does, and ratios are taken
//! within a round before the median over rounds is reported. The daemons'
//! memory is read from `/proc` around each load. Nothing here asserts a
//! time: the figures are for people.

use crate::host::{ckptfs_bin, require_root};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytesize::ByteSize;
use clap::ValueEnum;
use serde_json::Value;

use crate::host::{log_tail, proc_cpu, run_ok, settle, stop_with_us};
use crate::machine::{self, Machine};
use crate::mounts::{detach, mounted_fstype};
use crate::stats::{mb_per_s, median, median_ratio};

const MIB: u64 = 1 << 20;
/// Room left on the disk beyond two big files: the store's metadata, the
/// filesystem's own, and whatever the neighbours write meanwhile.
const DISK_MARGIN: u64 = 1 << 30;
const JOB: &str = "fbench";
/// Writers of the N-1 benchmark, each on its own quarter of the file.
const WRITERS: u64 = 4;
const FSTYPE: &str = "fuse.ckptfs";
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// A little over the daemon's entry and attribute TTL (1 s).
const ENTRY_TTL: Duration = Duration::from_millis(1100);

/// Compare file I/O through a ckptfs mount with the same I/O on its disk.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to work in; created if missing. Holds the plain directory
    /// (the baseline), both caches and both mount points, so it must be on
    /// the disk under test (not tmpfs) and have twice SIZE plus 1 GiB free,
    /// and for `files` FILES × FILE_SIZE × 3 variants × RUNS more: the
    /// small files stay until the end of the run.
    #[arg(long, default_value = "/var/tmp/ckpt-fbench")]
    dir: PathBuf,

    /// Bytes of the big file (sequential write, N-1, read-back), e.g.
    /// 4GiB; a whole number of 4 MiB (four dd writers of 1 MiB blocks).
    #[arg(long, default_value = "4GiB", value_parser = crate::parse_size)]
    size: u64,

    /// Rounds; each round runs every variant of every benchmark once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// Small files written per round by the `files` benchmark.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    files: u32,

    /// Bytes per small file, e.g. 64KiB.
    #[arg(long, default_value = "64KiB", value_parser = crate::parse_size)]
    file_size: u64,

    /// Also append the markdown report to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,

    /// Benchmarks to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Bench::ALL)]
    only: Vec<Bench>,

    /// The ckptfs binary [default: `ckptfs` next to this executable].
    #[arg(long, value_name = "PATH")]
    ckptfs: Option<PathBuf>,

    /// FUSE request threads of each daemon (`ckptfs mount --threads`)
    /// [default: ckptfs's own].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

/// One benchmark of issue 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Bench {
    /// SIZE written sequentially by `dd bs=1M conv=fsync`
    Write,
    /// Four `dd` processes writing disjoint quarters of one file
    #[value(name = "n-1")]
    NToOne,
    /// FILES small files created, written and closed by one process
    Files,
    /// SIZE read back by `dd bs=1M` after dropping the page cache
    Read,
}

impl Bench {
    const ALL: [Bench; 4] = [Bench::Write, Bench::NToOne, Bench::Files, Bench::Read];

    fn name(self) -> &'static str {
        match self {
            Bench::Write => "write",
            Bench::NToOne => "n-1",
            Bench::Files => "files",
            Bench::Read => "read",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Bench::Files => "files/s",
            _ => "MB/s",
        }
    }

    /// Issue 4's target for `variant ÷ direct`.
    fn target(self, v: Variant) -> Option<f64> {
        match (self, v) {
            (_, Variant::Direct) => None,
            (Bench::Write, Variant::Passthrough) => Some(0.95),
            (Bench::Write, Variant::Fallback) => Some(0.7),
            (Bench::NToOne, _) => Some(0.9),
            (Bench::Files, _) => Some(0.5),
            (Bench::Read, _) => Some(0.9),
        }
    }
}

/// Where the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// A plain directory on the same filesystem as the caches.
    Direct,
    /// A ckptfs mount with kernel passthrough.
    Passthrough,
    /// A ckptfs mount with `--no-passthrough`: bytes go through the daemon.
    Fallback,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Direct, Variant::Passthrough, Variant::Fallback];

    fn label(self) -> &'static str {
        match self {
            Variant::Direct => "direct (plain dir)",
            Variant::Passthrough => "/ckpt passthrough",
            Variant::Fallback => "/ckpt fallback",
        }
    }

    /// Name of its cache, mount point and log, and its `data_path.mode`.
    fn mode(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Passthrough => "passthrough",
            Variant::Fallback => "fallback",
        }
    }
}

/// Resident memory of a daemon, bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    now: u64,
    peak: u64,
}

fn read_rss(pid: u32) -> anyhow::Result<Rss> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{path} has no {name}"))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("parsing {line:?} in {path}"))?;
        Ok(kib * 1024)
    };
    Ok(Rss {
        now: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// One ckptfs daemon serving its own cache at its own mount point, started
/// as a child of this process in the foreground. Unmounted and reaped on
/// drop, also when the benchmark fails half-way. (On Ctrl-C the daemon,
/// in the same process group, gets SIGINT and unmounts by itself; if this
/// process is killed, the daemon gets SIGTERM and does the same.)
struct Mount {
    variant: Variant,
    bin: PathBuf,
    config: PathBuf,
    cache: PathBuf,
    mountpoint: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The daemon's pid, as `ckptfs status` reports it.
    pid: u32,
    version: String,
    data_path: String,
    /// Whether /proc/PID/clear_refs took "5" (reset VmHWM).
    can_reset_peak: bool,
}

impl Mount {
    fn start(
        bin: &Path,
        base: &Path,
        variant: Variant,
        threads: Option<usize>,
    ) -> anyhow::Result<Mount> {
        let name = variant.mode();
        let cache = base.join(format!("cache-{name}"));
        let mountpoint = base.join(format!("mnt-{name}"));
        let log = base.join(format!("ckptfs-{name}.log"));
        // Built-in defaults, whatever /etc/ckptfs.toml or $CKPTFS_CONFIG say,
        // but no cache retention: the harness removes each set itself, the
        // small files' only at the end of the run, which retention would
        // otherwise do at a later commit.
        let config = base.join("ckptfs.toml");
        fs::write(
            &config,
            "# ckpt-bench fuse: ckptfs's built-in defaults, without cache retention\n\
             [store]\nkeep = 0\n",
        )
        .with_context(|| format!("writing {}", config.display()))?;
        if mounted_fstype(&mountpoint).as_deref() == Some(FSTYPE) {
            if fs::metadata(&mountpoint).is_ok() {
                bail!(
                    "{} is already a live ckptfs mount (another ckpt-bench fuse running?); \
                     `ckptfs umount {} --force` first",
                    mountpoint.display(),
                    mountpoint.display()
                );
            }
            // Left by a killed run: its daemon is gone (ENOTCONN).
            detach(&mountpoint)?;
        }
        // The cache of a previous run is ours to drop.
        match fs::remove_dir_all(&cache) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", cache.display())),
        }
        for d in [&cache, &mountpoint] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.env_remove("CKPTFS_CONFIG")
            .arg("--config")
            .arg(&config)
            .arg("--cache")
            .arg(&cache)
            .arg("mount")
            .arg(&mountpoint)
            .arg("--foreground");
        if variant == Variant::Fallback {
            cmd.arg("--no-passthrough");
        }
        if let Some(t) = threads {
            cmd.arg("--threads").arg(t.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        stop_with_us(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} (set --ckptfs)", bin.display()))?;
        let mut m = Mount {
            variant,
            bin: bin.to_owned(),
            config,
            cache,
            mountpoint,
            log,
            child: Some(child),
            pid: 0,
            version: String::new(),
            data_path: String::new(),
            can_reset_peak: false,
        };
        m.wait_mounted()?;
        let st = m.status()?;
        m.pid = st["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .context("`ckptfs status --json` gave no pid")?;
        m.version = st["version"].as_str().unwrap_or("?").to_owned();
        let mode = st["data_path"]["mode"].as_str().unwrap_or("?").to_owned();
        let reason = st["data_path"]["reason"].as_str().unwrap_or("").to_owned();
        ensure!(
            mode == variant.mode(),
            "{} serves the {mode} data path, not {} ({reason})",
            m.mountpoint.display(),
            variant.mode()
        );
        m.data_path = if reason.is_empty() {
            mode
        } else {
            format!("{mode} ({reason})")
        };
        m.can_reset_peak = fs::write(format!("/proc/{}/clear_refs", m.pid), "5").is_ok();
        Ok(m)
    }

    /// `ckptfs --config C --cache C …`
    fn cli(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_remove("CKPTFS_CONFIG")
            .arg("--config")
            .arg(&self.config)
            .arg("--cache")
            .arg(&self.cache);
        cmd
    }

    fn wait_mounted(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "ckptfs mount {} exited ({status}) before the mount was live:\n{}",
                        self.mountpoint.display(),
                        log_tail(&self.log)
                    );
                }
            }
            if mounted_fstype(&self.mountpoint).as_deref() == Some(FSTYPE) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not show up as {FSTYPE} in /proc/self/mountinfo within {:?}:\n{}",
                    self.mountpoint.display(),
                    MOUNT_TIMEOUT,
                    log_tail(&self.log)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn status(&self) -> anyhow::Result<Value> {
        let out = run_ok(self.cli().arg("status").arg(&self.mountpoint).arg("--json"))?;
        serde_json::from_slice(&out).context("parsing `ckptfs status --json`")
    }

    fn rss(&self) -> anyhow::Result<Rss> {
        read_rss(self.pid)
    }

    /// Start VmHWM afresh (Linux ≥ 4.0), so that the next reading is the
    /// peak of what ran in between; else it stays the lifetime peak.
    fn reset_peak(&self) {
        if self.can_reset_peak {
            let _ = fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
        }
    }

    fn set_dir(&self, set: &str) -> PathBuf {
        self.mountpoint.join(JOB).join(set)
    }

    /// `ckptfs commit M/JOB/SET`; returns seconds.
    fn commit(&self, set: &str) -> anyhow::Result<f64> {
        let start = Instant::now();
        run_ok(self.cli().arg("commit").arg(self.set_dir(set)))?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// `ckptfs rm JOB SET`, then push the frees to disk.
    ///
    /// The files go behind the kernel's back, so on the fallback path it
    /// keeps their pages (4 GiB for the big file) cached under the mount
    /// until it looks the names up again, which it does once the entry
    /// TTL has passed: wait for that and look, so that the next variant
    /// does not inherit the memory pressure.
    fn rm(&self, set: &str) -> anyhow::Result<()> {
        run_ok(self.cli().arg("rm").arg(JOB).arg(set))?;
        thread::sleep(ENTRY_TTL);
        let gone = self.set_dir(set);
        if fs::symlink_metadata(&gone).is_ok() {
            bail!("{} is still there after `ckptfs rm`", gone.display());
        }
        settle();
        Ok(())
    }

    /// Unmount, wait for the daemon to exit (killing it after a while),
    /// and detach whatever mount a killed daemon left behind.
    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let umount = self
            .cli()
            .arg("umount")
            .arg(&self.mountpoint)
            .arg("--force")
            .output();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let mut killed = false;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!(
                    "ckpt-bench fuse: the daemon of {} did not exit; killing pid {}",
                    self.mountpoint.display(),
                    child.id()
                );
                let _ = child.kill();
                let _ = child.wait();
                killed = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if mounted_fstype(&self.mountpoint).as_deref() == Some(FSTYPE) {
            detach(&self.mountpoint)?;
        }
        match umount {
            Ok(o) if o.status.success() && !killed => Ok(()),
            Ok(o) => bail!(
                "ckptfs umount {} --force: {} {}",
                self.mountpoint.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => Err(e).context("running ckptfs umount"),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "ckpt-bench fuse: cleaning up {}: {e:#}",
                self.mountpoint.display()
            );
        }
    }
}

/// `sync; echo 3 > /proc/sys/vm/drop_caches`: the next read comes from the
/// device, on every variant alike.
fn drop_caches() -> anyhow::Result<()> {
    settle();
    fs::write("/proc/sys/vm/drop_caches", "3")
        .context("dropping the page cache (needs root; leave `read` out with --only)")
}

/// `dd` with these operands; returns it unstarted, stderr captured.
fn dd(operands: &[String]) -> Command {
    let mut cmd = Command::new("dd");
    cmd.args(operands)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Wait for a dd and check it copied `want` bytes (from its summary line).
fn finish_dd(child: Child, want: u64) -> anyhow::Result<()> {
    let out = child.wait_with_output().context("waiting for dd")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("dd failed ({}): {}", out.status, err.trim());
    }
    let copied = err
        .lines()
        .find(|l| l.contains(" bytes"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    ensure!(
        copied == Some(want),
        "dd copied {copied:?} bytes, expected {want}: {}",
        err.trim()
    );
    Ok(())
}

fn dd_write_operands(file: &Path, blocks: u64, seek: u64, notrunc: bool) -> Vec<String> {
    let mut v = vec![
        "if=/dev/zero".to_owned(),
        format!("of={}", file.display()),
        "bs=1M".to_owned(),
        format!("count={blocks}"),
    ];
    if seek > 0 {
        v.push(format!("seek={seek}"));
    }
    v.push(
        if notrunc {
            "conv=notrunc,fsync"
        } else {
            "conv=fsync"
        }
        .to_owned(),
    );
    v
}

fn check_len(file: &Path, want: u64) -> anyhow::Result<()> {
    let len = fs::metadata(file)
        .with_context(|| format!("stat {}", file.display()))?
        .len();
    ensure!(
        len == want,
        "{} is {len} bytes, expected {want}",
        file.display()
    );
    Ok(())
}

/// `dd if=/dev/zero of=FILE bs=1M count=SIZE/1M conv=fsync`; seconds.
fn seq_write(file: &Path, size: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let child = dd(&dd_write_operands(file, size / MIB, 0, false))
        .spawn()
        .context("starting dd")?;
    finish_dd(child, size)?;
    let secs = start.elapsed().as_secs_f64();
    check_len(file, size)?;
    Ok(secs)
}

/// Four dd processes at once, each writing its quarter of FILE
/// (`seek=` + `conv=notrunc,fsync`); seconds from the first start to the
/// last exit.
fn n_to_one(file: &Path, size: u64) -> anyhow::Result<f64> {
    let blocks = size / MIB / WRITERS;
    let start = Instant::now();
    let mut children = Vec::new();
    for w in 0..WRITERS {
        match dd(&dd_write_operands(file, blocks, w * blocks, true)).spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                for mut c in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e).context("starting dd");
            }
        }
    }
    let mut first_err = None;
    for c in children {
        if let Err(e) = finish_dd(c, blocks * MIB) {
            first_err.get_or_insert(e);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = first_err {
        return Err(e);
    }
    check_len(file, size)?;
    Ok(secs)
}

/// `count` files of `size` bytes, each created, written in one call and
/// closed (`std::fs::write`); seconds.
fn small_files(dir: &Path, count: u32, size: u64) -> anyhow::Result<f64> {
    let buf = vec![0xa5u8; usize::try_from(size).context("--file-size is too large")?];
    let start = Instant::now();
    for i in 0..count {
        let path = dir.join(format!("f{i:06}"));
        fs::write(&path, &buf).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// `dd if=FILE of=/dev/null bs=1M`; seconds.
fn read_back(file: &Path, size: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let child = dd(&[
        format!("if={}", file.display()),
        "of=/dev/null".to_owned(),
        "bs=1M".to_owned(),
    ])
    .spawn()
    .context("starting dd")?;
    finish_dd(child, size)?;
    Ok(start.elapsed().as_secs_f64())
}

/// One variant's run of one benchmark in one round.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// MB/s, or files/s.
    rate: f64,
    secs: f64,
    /// `ckptfs commit` after the timed part (mounts only; not timed).
    commit_secs: Option<f64>,
    /// Daemon VmHWM over the timed part and the commit (mounts only).
    peak: Option<u64>,
    /// Daemon CPU seconds, user + system, over the timed part and the
    /// commit (mounts only): less noisy than the rate on a shared machine,
    /// and what the node's application does not get.
    daemon_cpu: Option<f64>,
}

/// The directory a variant works in for one benchmark and round.
struct Spot<'a> {
    mount: Option<&'a Mount>,
    set: String,
    dir: PathBuf,
}

impl<'a> Spot<'a> {
    /// A fresh set (`mkdir M/JOB/SET`) or a fresh plain directory.
    fn open(mount: Option<&'a Mount>, direct_root: &Path, set: String) -> anyhow::Result<Self> {
        let dir = match mount {
            Some(m) => {
                // `ckptfs rm` of a job's last set removes the job's
                // directory too: make it again when it is gone.
                let job = m.mountpoint.join(JOB);
                fs::create_dir_all(&job).with_context(|| format!("mkdir {}", job.display()))?;
                m.set_dir(&set)
            }
            None => {
                let d = direct_root.join(&set);
                if d.exists() {
                    fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
                }
                d
            }
        };
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(Spot { mount, set, dir })
    }

    /// Commit the set (mounts only); seconds.
    fn commit(&self) -> anyhow::Result<Option<f64>> {
        self.mount.map(|m| m.commit(&self.set)).transpose()
    }

    fn reset_peak(&self) {
        if let Some(m) = self.mount {
            m.reset_peak();
        }
    }

    fn cpu(&self) -> Option<f64> {
        self.mount.and_then(|m| proc_cpu(m.pid))
    }

    fn peak(&self) -> anyhow::Result<Option<u64>> {
        self.mount.map(|m| m.rss().map(|r| r.peak)).transpose()
    }

    fn remove(self) -> anyhow::Result<()> {
        match self.mount {
            Some(m) => m.rm(&self.set),
            None => {
                fs::remove_dir_all(&self.dir)
                    .with_context(|| format!("removing {}", self.dir.display()))?;
                settle();
                Ok(())
            }
        }
    }
}

/// Runs one variant of `bench` once. The small files are not removed
/// here but pushed onto `kept`, for the end of the run: on the development
/// VM the first 10,000 creates after a removal of tens of thousands of
/// files ran ten times slower than the next 10,000, so removing one
/// variant's files slowed whichever variant came next.
fn run_one<'a>(
    args: &Args,
    bench: Bench,
    mount: Option<&'a Mount>,
    direct_root: &Path,
    round: usize,
    kept: &mut Vec<Spot<'a>>,
) -> anyhow::Result<Sample> {
    let spot = Spot::open(mount, direct_root, format!("{}-r{round}", bench.name()))?;
    let file = spot.dir.join("data.bin");
    if bench == Bench::Read {
        // Not timed: the file to read, in a complete set, out of the cache.
        seq_write(&file, args.size)?;
        spot.commit()?;
        drop_caches()?;
    } else {
        settle();
    }
    spot.reset_peak();
    let cpu_before = spot.cpu();
    let secs = match bench {
        Bench::Write => seq_write(&file, args.size)?,
        Bench::NToOne => n_to_one(&file, args.size)?,
        Bench::Files => small_files(&spot.dir, args.files, args.file_size)?,
        Bench::Read => read_back(&file, args.size)?,
    };
    let commit_secs = if bench == Bench::Read {
        None
    } else {
        spot.commit()?
    };
    let daemon_cpu = cpu_before.zip(spot.cpu()).map(|(a, b)| b - a);
    let peak = spot.peak()?;
    if bench == Bench::Files {
        kept.push(spot);
    } else {
        spot.remove()?;
    }
    let rate = match bench {
        Bench::Files => f64::from(args.files) / secs,
        _ => mb_per_s(args.size, secs),
    };
    Ok(Sample {
        rate,
        secs,
        commit_secs,
        peak,
        daemon_cpu,
    })
}

/// What the daemons looked like, per data path, for the report.
struct DaemonReport {
    variant: Variant,
    data_path: String,
    version: String,
    idle: Rss,
    end: Rss,
    counters: Value,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.size >= WRITERS * MIB && args.size.is_multiple_of(WRITERS * MIB),
        "--size must be a positive whole number of 4 MiB (four dd writers of 1 MiB blocks), got {}",
        args.size
    );
    ensure!(args.file_size > 0, "--file-size must be positive");
    require_root("ckpt-bench fuse mounts filesystems and drops the page cache")?;
    let mut benches = args.only.clone();
    benches.sort();
    benches.dedup();
    ensure!(!benches.is_empty(), "no benchmarks to run");
    let bin = ckptfs_bin(args.ckptfs.as_deref())?;

    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let free = machine::free_bytes(&dir)?;
    let kept_files = if args.only.contains(&Bench::Files) {
        u64::from(args.files) * args.file_size * (Variant::ALL.len() as u64) * u64::from(args.runs)
    } else {
        0
    };
    let need = 2 * args.size + kept_files + DISK_MARGIN;
    ensure!(
        free >= need,
        "{} has {} free; this run needs {} (twice --size, {} of small files kept to the end, \
         and a {} margin)",
        dir.display(),
        ByteSize(free),
        ByteSize(need),
        ByteSize(kept_files),
        ByteSize(DISK_MARGIN)
    );
    let machine = Machine::probe(&dir);
    eprintln!("ckpt-bench fuse: {machine}");
    if benches.contains(&Bench::Read) {
        // Fail now rather than after the writes, but do not drop the cache
        // yet: on a VM that hands freed memory back to its host, the first
        // variant would pay for refaulting it.
        let c = c"/proc/sys/vm/drop_caches";
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
            let e = io::Error::last_os_error();
            bail!("cannot drop the page cache for `read` ({e}); leave it out with --only");
        }
    }

    let direct_root = dir.join("direct");
    match fs::remove_dir_all(&direct_root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", direct_root.display())),
    }
    fs::create_dir(&direct_root).with_context(|| format!("creating {}", direct_root.display()))?;

    // Both mounts live for the whole run; the guards unmount them on any
    // error below.
    let mut mounts: Vec<Mount> = Vec::new();
    let mut idle = Vec::new();
    for v in [Variant::Passthrough, Variant::Fallback] {
        let m = Mount::start(&bin, &dir, v, args.threads)?;
        // Let the daemon finish starting its threads before calling it idle.
        thread::sleep(Duration::from_secs(1));
        let r = m.rss()?;
        eprintln!(
            "ckpt-bench fuse: {} mounted at {} by pid {}: {}, idle RSS {}",
            v.label(),
            m.mountpoint.display(),
            m.pid,
            m.data_path,
            ByteSize(r.now)
        );
        idle.push(r);
        mounts.push(m);
    }
    let mount_of = |v: Variant| mounts.iter().find(|m| m.variant == v);

    let runs = args.runs as usize;
    let nv = Variant::ALL.len();
    let mut kept = Vec::new();
    // samples[bench][variant][round]
    let mut samples: Vec<Vec<Vec<Option<Sample>>>> =
        vec![vec![Vec::with_capacity(runs); nv]; benches.len()];
    for round in 0..runs {
        for (&bench, per_variant) in benches.iter().zip(samples.iter_mut()) {
            let mut row = vec![None; nv];
            for k in 0..nv {
                let i = (round + k) % nv;
                let v = Variant::ALL[i];
                let s = run_one(args, bench, mount_of(v), &direct_root, round, &mut kept)
                    .with_context(|| {
                        format!("round {}, {}, {}", round + 1, bench.name(), v.label())
                    })?;
                let mut line = format!(
                    "round {}/{runs}: {:<6} {:<19} {:>8.0} {} ({:.2} s)",
                    round + 1,
                    bench.name(),
                    v.label(),
                    s.rate,
                    bench.unit(),
                    s.secs
                );
                if let Some(c) = s.commit_secs {
                    let _ = write!(line, ", commit {c:.2} s");
                }
                if let Some(p) = s.peak {
                    let _ = write!(line, ", daemon peak RSS {}", ByteSize(p));
                }
                if let Some(c) = s.daemon_cpu {
                    let _ = write!(line, ", daemon CPU {c:.2} s");
                }
                eprintln!("{line}");
                row[i] = Some(s);
            }
            for (rounds, s) in per_variant.iter_mut().zip(row) {
                rounds.push(s);
            }
        }
    }

    for spot in kept {
        spot.remove()?;
    }
    let mut daemons = Vec::new();
    for (m, idle) in mounts.iter().zip(idle) {
        let st = m.status()?;
        daemons.push(DaemonReport {
            variant: m.variant,
            data_path: m.data_path.clone(),
            version: m.version.clone(),
            idle,
            end: m.rss()?,
            counters: st["counters"].clone(),
        });
    }
    for mut m in mounts {
        m.stop()?;
    }
    let _ = fs::remove_dir(&direct_root);

    let report = markdown(args, &machine, &dir, &bin, &benches, &samples, &daemons);
    crate::report::publish(&report, args.markdown.as_deref())?;
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

fn bench_title(args: &Args, bench: Bench) -> String {
    let size = ByteSize(args.size);
    match bench {
        Bench::Write => format!(
            "Sequential write, {size}: `dd if=/dev/zero of=DIR/data.bin bs=1M count={} conv=fsync`",
            args.size / MIB
        ),
        Bench::NToOne => format!(
            "N-1, {size}: {WRITERS} concurrent `dd if=/dev/zero of=DIR/data.bin bs=1M count={} seek=K×{} conv=notrunc,fsync`",
            args.size / MIB / WRITERS,
            args.size / MIB / WRITERS
        ),
        Bench::Files => format!(
            "{} files of {}: one process, `std::fs::write` each (create, write, close)",
            args.files,
            ByteSize(args.file_size)
        ),
        Bench::Read => format!(
            "Read-back, {size}: `sync; echo 3 > /proc/sys/vm/drop_caches; dd if=DIR/data.bin of=/dev/null bs=1M`"
        ),
    }
}

fn markdown(
    args: &Args,
    machine: &Machine,
    dir: &Path,
    bin: &Path,
    benches: &[Bench],
    samples: &[Vec<Vec<Option<Sample>>>],
    daemons: &[DaemonReport],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### ckpt-bench fuse: {} × {} rounds in {}\n",
        ByteSize(args.size),
        args.runs,
        dir.display()
    );
    let _ = writeln!(s, "- machine: {machine}");
    let version = daemons.first().map_or("?", |d| d.version.as_str());
    let _ = writeln!(
        s,
        "- ckptfs {version} ({}), FUSE threads: {}; built-in configuration but `store.keep = 0` \
         (no cache retention: the harness removes the sets)",
        bin.display(),
        args.threads
            .map_or("ckptfs default".to_owned(), |t| t.to_string())
    );
    for d in daemons {
        let _ = writeln!(
            s,
            "- {}: `ckptfs status --json` says data_path {}",
            d.variant.label(),
            d.data_path
        );
    }
    let _ = writeln!(
        s,
        "- baseline: the same operation in a plain directory ({}/direct) of the filesystem holding \
         the caches; every round runs every variant, rotating the order; the mounts' sets are \
         committed (`ckptfs commit`, not timed) and removed (`ckptfs rm`) after each variant, \
         the small files only at the end of the run (creates right after a large removal ran ten \
         times slower on the development VM); `sync` between variants; MB/s = 10^6 bytes/s; \
         ratios are medians of per-round ratios\n",
        dir.display()
    );
    for (b, &bench) in benches.iter().enumerate() {
        let _ = writeln!(s, "#### {}\n", bench_title(args, bench));
        let _ = writeln!(
            s,
            "| variant | {u} per round | median {u} | ÷ direct | target | commit after, median s | \
             daemon CPU, median |",
            u = bench.unit()
        );
        let _ = writeln!(s, "|---|---|---:|---:|---|---:|---:|");
        let rate = |i: usize| -> Vec<Option<f64>> {
            samples[b][i].iter().map(|x| x.map(|x| x.rate)).collect()
        };
        let direct = rate(0);
        for (i, v) in Variant::ALL.iter().enumerate() {
            let rates = rate(i);
            let per_round: Vec<String> = rates
                .iter()
                .map(|r| r.map_or("–".into(), |r| format!("{r:.0}")))
                .collect();
            let present: Vec<f64> = rates.iter().flatten().copied().collect();
            let med = median(&present).map_or("–".into(), |m| format!("{m:.0}"));
            let (ratio, target) = if *v == Variant::Direct {
                (String::new(), String::new())
            } else {
                let r = median_ratio(&rates, &direct);
                let t = bench.target(*v).map_or(String::new(), |t| {
                    let verdict = match r {
                        Some(r) if r >= t => "met",
                        Some(_) => "**missed**",
                        None => "–",
                    };
                    format!("≥ {t:.2}×: {verdict}")
                });
                (r.map_or("–".into(), |r| format!("{r:.2}×")), t)
            };
            let commits: Vec<f64> = samples[b][i]
                .iter()
                .flatten()
                .filter_map(|x| x.commit_secs)
                .collect();
            let commit = median(&commits).map_or(String::new(), |c| format!("{c:.2}"));
            let cpus: Vec<f64> = samples[b][i]
                .iter()
                .flatten()
                .filter_map(|x| x.daemon_cpu)
                .collect();
            let cpu = median(&cpus).map_or(String::new(), |c| match bench {
                Bench::Files => format!(
                    "{c:.2} s ({:.0} µs a file)",
                    c * 1e6 / f64::from(args.files)
                ),
                _ => format!("{c:.2} s"),
            });
            let _ = writeln!(
                s,
                "| {} | {} | {med} | {ratio} | {target} | {commit} | {cpu} |",
                v.label(),
                per_round.join(", ")
            );
        }
        s.push('\n');
    }

    let _ = writeln!(
        s,
        "#### Daemon memory (VmRSS / VmHWM from /proc/PID/status)\n"
    );
    let _ = write!(s, "| data path | idle after mount (RSS) |");
    for bench in benches {
        let _ = write!(s, " peak during {} |", bench.name());
    }
    let _ = writeln!(s, " RSS at the end | lifetime peak |");
    let _ = write!(s, "|---|---:|");
    for _ in benches {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s, "---:|---:|");
    for d in daemons {
        let i = Variant::ALL
            .iter()
            .position(|v| *v == d.variant)
            .unwrap_or(0);
        let verdict = if d.idle.now <= 64 * MIB {
            "≤ 64 MiB: met"
        } else {
            "≤ 64 MiB: **missed**"
        };
        let _ = write!(
            s,
            "| {} | {} ({verdict}) |",
            d.variant.label(),
            mib(d.idle.now)
        );
        for per_variant in samples {
            let peak = per_variant[i].iter().flatten().filter_map(|x| x.peak).max();
            let _ = write!(s, " {} |", peak.map_or("–".into(), mib));
        }
        let _ = writeln!(s, " {} | {} |", mib(d.end.now), mib(d.end.peak));
    }
    let _ = writeln!(
        s,
        "\nPeaks are the highest VmHWM over the rounds, reset (`echo 5 > /proc/PID/clear_refs`) \
         before each timed part and read after its commit.\n"
    );
    let _ = writeln!(
        s,
        "`ckptfs status --json` counters at the end of the run:\n"
    );
    let keys = [
        "passthrough_opens",
        "fallback_opens",
        "fallback_bytes_written",
        "fallback_bytes_read",
    ];
    let _ = writeln!(s, "| data path | {} |", keys.join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(keys.len()));
    for d in daemons {
        let cells: Vec<String> = keys
            .iter()
            .map(|k| {
                d.counters[*k]
                    .as_u64()
                    .map_or("?".into(), |n| n.to_string())
            })
            .collect();
        let _ = writeln!(s, "| {} | {} |", d.variant.label(), cells.join(" | "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_issue_4() {
        assert_eq!(Bench::Write.target(Variant::Passthrough), Some(0.95));
        assert_eq!(Bench::Write.target(Variant::Fallback), Some(0.7));
        assert_eq!(Bench::Files.target(Variant::Passthrough), Some(0.5));
        assert_eq!(Bench::Read.target(Variant::Direct), None);
    }

    #[test]
    fn dd_operands_for_a_quarter() {
        let ops = dd_write_operands(Path::new("/x/f"), 1024, 2048, true);
        assert_eq!(
            ops,
            [
                "if=/dev/zero",
                "of=/x/f",
                "bs=1M",
                "count=1024",
                "seek=2048",
                "conv=notrunc,fsync"
            ]
        );
    }
}
