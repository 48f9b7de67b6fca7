//! `ckptfs-dump` / `ckptfs-restore` against plain CRIU, in one run
//! (issue 7, "Benchmarks"):
//!
//! 1. `dump`: a process with `--mem` of resident memory (default 2 GiB,
//!    distinct pages) dumped by `ckptfs-dump --leave-running` into the
//!    store, against `criu dump --leave-running` into a directory on the
//!    same disk, alone and followed by `sync` (ckptfs commits durably);
//!    and how long each froze the process (the longest gap between two
//!    lines of its log, written every millisecond with a timestamp).
//! 2. `incremental`: the process rewrites 10 % of its pages, then
//!    `ckptfs-dump --incremental`: bytes stored against the full dump's.
//! 3. `restore`: `ckptfs-restore --detach` of the full set (every chunk
//!    verified, then CRIU) against `criu restore --restore-detached` from
//!    the plain images; and, for the record, of the incremental set
//!    (its page images rebuilt first).
//! 4. `dump and stop`: the same full dump without `--leave-running`,
//!    `ckptfs-dump`'s default, where the tree is killed once dumped and
//!    the images can be written back while CRIU writes them. Each side
//!    dumps a fresh process of its own. Then the disk's floor: as many
//!    bytes written with O_DIRECT and synced, which no dump that returns
//!    with its images durable can beat.
//!
//! Every timed step starts with the page cache written back and dropped.
//! Ratios are taken within a round; the median over rounds is reported.
//! Nothing here asserts a time: the figures are for people.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytesize::ByteSize;
use serde_json::Value;

use crate::host::{quiesce, settle, stop_with_us};
use crate::stats::{median, median_ratio};

const JOB: &str = "cbench";

/// Flags of `ckpt-bench criu`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resident memory of the dumped process.
    #[arg(long, default_value = "2GiB", value_parser = crate::parse_size)]
    pub mem: u64,
    /// Rounds; the median over them is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Working directory, on the disk under test (not tmpfs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The criu to compare with [default: the one ckptfs-dump finds].
    #[arg(long)]
    pub criu: Option<PathBuf>,
    /// Directory holding ckptfs-dump and ckptfs-restore [default: beside
    /// this binary].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// One round's figures (seconds, bytes).
#[derive(Debug, Default)]
struct Round {
    ckptfs_freeze: f64,
    criu_freeze: f64,
    ckptfs_dump: f64,
    criu_dump: f64,
    criu_dump_sync: f64,
    full_bytes: u64,
    plain_bytes: u64,
    incr_bytes: u64,
    ckptfs_restore: f64,
    criu_restore: f64,
    ckptfs_restore_incr: f64,
    stop_ckptfs: f64,
    stop_criu: f64,
    stop_criu_sync: f64,
    /// The same number of bytes written with O_DIRECT and fdatasync'ed:
    /// the least any dump that returns with its images durable can take.
    disk_floor: f64,
}

fn timed(cmd: &mut Command, what: &str) -> anyhow::Result<(f64, String)> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// SIGKILL and wait until the pid is free again (for the next restore).
fn kill(pid: i32, child: Option<&mut Child>) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a positive pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    if let Some(c) = child {
        let _ = c.wait();
    }
    let t = Instant::now();
    while alive(pid) {
        ensure!(
            t.elapsed() < Duration::from_secs(120),
            "pid {pid} does not go away"
        );
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn log_lines(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The counter's log is polled: at most this long for any step.
const STEP_WAIT: Duration = Duration::from_secs(300);

fn wait_for(what: &str, cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    crate::host::wait_for(what, STEP_WAIT, cond)
}

/// The longest gap, in seconds, between two stamped lines of the
/// counter's log after line `from`: how long the dump froze it (it writes
/// a line every millisecond while it runs). Waits for it to have run on.
fn freeze(log: &Path, from: usize) -> anyhow::Result<f64> {
    let stamps = || -> Vec<i64> {
        log_lines(log)
            .iter()
            .skip(from)
            .filter_map(|l| {
                // "COUNT NS"; not the "touched N" lines.
                let (count, ns) = l.split_once(' ')?;
                count.parse::<u64>().ok()?;
                ns.parse().ok()
            })
            .collect()
    };
    let before = stamps().len();
    wait_for("the counter to go on after the dump", || {
        stamps().len() > before + 20
    })?;
    let s = stamps();
    let gap = s.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    Ok(gap as f64 / 1e9)
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn compile_counter(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ckptfs/tests/criu/counter.c");
    let out = dir.join("counter");
    let st = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .context("running gcc")?;
    ensure!(st.success(), "gcc {} failed", src.display());
    Ok(out)
}

fn manifest_bytes(cache: &Path, set: &str) -> anyhow::Result<u64> {
    let p = cache
        .join(".ckptfs/sets")
        .join(JOB)
        .join(set)
        .join("manifest.json");
    let v: Value = serde_json::from_slice(&fs::read(&p).with_context(|| p.display().to_string())?)?;
    Ok(v["total_bytes"].as_u64().unwrap_or(0))
}

fn set_of(json_out: &str) -> anyhow::Result<String> {
    let v: Value = serde_json::from_str(json_out.trim()).context("ckptfs-dump --json output")?;
    v["set"]
        .as_str()
        .map(str::to_owned)
        .context("no set in ckptfs-dump's output")
}

fn pid_of(json_out: &str) -> anyhow::Result<i32> {
    let v: Value = serde_json::from_str(json_out.trim()).context("ckptfs-restore --json output")?;
    v["pid"]
        .as_i64()
        .map(|p| p as i32)
        .context("no pid in ckptfs-restore's output")
}

/// Start the counter with `--mem` resident, logging to `log`; returns
/// once its memory is filled.
fn start_counter(args: &Args, bins: &Bins, log: &Path) -> anyhow::Result<Child> {
    let mib = (args.mem >> 20).to_string();
    let mut child = stop_with_us(&mut Command::new(&bins.counter))
        .arg(log)
        .args(["--mem", &mib, "--interval-ms", "1", "--stamp"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the counter")?;
    if let Err(e) = wait_for("the counter to fill its memory", || {
        !log_lines(log).is_empty()
    }) {
        let _ = kill(child.id() as i32, Some(&mut child));
        return Err(e);
    }
    Ok(child)
}

/// Plain `criu dump` of `pid` into `plain` (`--leave-running` if
/// `leave`): seconds until it returned, and until its images were also
/// written back. `between` runs after the dump, before the `sync` (the
/// freeze is read from the counter's log then).
fn plain_dump(
    bins: &Bins,
    pid: i32,
    plain: &Path,
    work: &Path,
    leave: bool,
    between: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let mut cmd = Command::new(&bins.criu);
    cmd.args(["dump", "-t", &pid.to_string()]);
    if leave {
        cmd.arg("--leave-running");
    }
    cmd.arg("-D")
        .arg(plain)
        .arg("-W")
        .arg(work)
        .args(["-o", if leave { "dump.log" } else { "dump-stop.log" }]);
    let t = Instant::now();
    timed(&mut cmd, "criu dump")?;
    let dumped = t.elapsed().as_secs_f64();
    between()?;
    settle();
    Ok((dumped, t.elapsed().as_secs_f64()))
}

/// Step 4: a fresh process dumped without `--leave-running` by each
/// tool, the order alternating between rounds; CRIU kills the tree.
fn dump_and_stop(
    args: &Args,
    bins: &Bins,
    rd: &Path,
    n: usize,
    r: &mut Round,
) -> anyhow::Result<()> {
    let cache = rd.join("cache");
    let plain = rd.join("plain-stop");
    let work = rd.join("work");
    for step in 0..2 {
        let log = rd.join(format!("stop-{step}.log"));
        let mut child = start_counter(args, bins, &log)?;
        let pid = child.id() as i32;
        let result = (|| -> anyhow::Result<()> {
            quiesce(Duration::from_secs(1))?;
            if (step == 0) == (n % 2 == 1) {
                fs::create_dir_all(&plain)?;
                (r.stop_criu, r.stop_criu_sync) =
                    plain_dump(bins, pid, &plain, &work, false, || Ok(()))?;
            } else {
                let (secs, _) = timed(
                    Command::new(&bins.dump)
                        .arg(pid.to_string())
                        .args(["--job", JOB, "--keep", "0", "--json", "--cache"])
                        .arg(&cache)
                        .arg("--criu")
                        .arg(&bins.criu),
                    "ckptfs-dump (no --leave-running)",
                )?;
                r.stop_ckptfs = secs;
            }
            Ok(())
        })();
        // The dump killed it; reap it (or stop it, had the dump failed).
        kill(pid, Some(&mut child))?;
        result?;
    }
    quiesce(Duration::from_secs(1))?;
    let floor = rd.join("floor.bin");
    r.disk_floor = durable_write(&floor, args.mem)?;
    fs::remove_file(&floor)?;
    Ok(())
}

/// Write `bytes` of incompressible data to `path` with O_DIRECT, then
/// `fdatasync`: seconds from open to synced. What the disk needs to make
/// a dump of that size durable, whatever writes it.
fn durable_write(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 4 << 20;
    const ALIGN: usize = 4096;
    let mut raw = vec![0u8; BLOCK + ALIGN];
    let skip = raw.as_ptr().align_offset(ALIGN);
    let buf = &mut raw[skip..skip + BLOCK];
    // Not zeros: a virtual disk may store zero blocks for free.
    crate::host::fill_random(buf)?;
    let t = Instant::now();
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("opening {} with O_DIRECT", path.display()))?;
    let mut at = 0u64;
    while at < bytes {
        f.write_all_at(buf, at)
            .with_context(|| format!("writing {}", path.display()))?;
        at += BLOCK as u64;
    }
    f.sync_data()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(t.elapsed().as_secs_f64())
}

fn round(args: &Args, bins: &Bins, dir: &Path, n: usize) -> anyhow::Result<Round> {
    let mut r = Round::default();
    let rd = dir.join(format!("round-{n}"));
    let _ = fs::remove_dir_all(&rd);
    fs::create_dir_all(&rd)?;
    let cache = rd.join("cache");
    let plain = rd.join("plain");
    let work = rd.join("work");
    fs::create_dir_all(&plain)?;
    fs::create_dir_all(&work)?;
    let log = rd.join("count.log");
    let mut child = start_counter(args, bins, &log)?;
    let pid = child.id() as i32;
    let result = (|| -> anyhow::Result<()> {
        let cache_s = cache.display().to_string();
        let pid_s = pid.to_string();
        let dump_args = |extra: &[&str]| {
            let mut c = Command::new(&bins.dump);
            c.args([
                &pid_s, "--job", JOB, "--cache", &cache_s, "--keep", "0", "--json",
            ])
            .arg("--criu")
            .arg(&bins.criu)
            .arg("--leave-running")
            .args(extra);
            c
        };
        // Warm-up: the criu check, the store's directories. Its set stays
        // until the round's directory goes: deleting 2 GiB here put the
        // disk's discards under whichever dump came first (it ran up to
        // 2× slower, ckptfs-dump or criu alike).
        timed(&mut dump_args(&[]), "ckptfs-dump (warm-up)")?;

        // 1. Full dumps, the order alternating between rounds.
        let mut full_set = String::new();
        let plain_first = n % 2 == 1;
        for step in 0..2 {
            quiesce(Duration::from_secs(1))?;
            let from = log_lines(&log).len();
            if (step == 0) == plain_first {
                (r.criu_dump, r.criu_dump_sync) =
                    plain_dump(bins, pid, &plain, &work, true, || {
                        r.criu_freeze = freeze(&log, from)?;
                        Ok(())
                    })?;
            } else {
                let (secs, out) = timed(&mut dump_args(&[]), "ckptfs-dump")?;
                r.ckptfs_dump = secs;
                r.ckptfs_freeze = freeze(&log, from)?;
                full_set = set_of(&out)?;
            }
        }
        r.full_bytes = manifest_bytes(&cache, &full_set)?;
        r.plain_bytes = dir_bytes(&plain);

        // 2. 10 % of the pages rewritten, then an incremental dump.
        let touched = log_lines(&log)
            .iter()
            .filter(|l| l.starts_with("touched"))
            .count();
        // SAFETY: kill(2) with a positive pid.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        wait_for("the counter to rewrite 10% of its pages", || {
            log_lines(&log)
                .iter()
                .filter(|l| l.starts_with("touched"))
                .count()
                > touched
        })?;
        quiesce(Duration::from_secs(1))?;
        let (_, out) = timed(
            &mut dump_args(&["--incremental"]),
            "ckptfs-dump --incremental",
        )?;
        let incr_set = set_of(&out)?;
        r.incr_bytes = manifest_bytes(&cache, &incr_set)?;

        // 3. Restores, from the full images; then the incremental set.
        kill(pid, Some(&mut child))?;
        for step in 0..2 {
            quiesce(Duration::from_secs(1))?;
            if (step == 0) == plain_first {
                let pidfile = work.join("restored.pid");
                let _ = fs::remove_file(&pidfile);
                let (secs, _) = timed(
                    Command::new(&bins.criu)
                        .args(["restore", "--restore-detached", "-D"])
                        .arg(&plain)
                        .arg("-W")
                        .arg(&work)
                        .args(["-o", "restore.log", "--pidfile"])
                        .arg(&pidfile),
                    "criu restore",
                )?;
                r.criu_restore = secs;
                let rpid: i32 = fs::read_to_string(&pidfile)?.trim().parse()?;
                kill(rpid, None)?;
            } else {
                let (secs, out) = timed(
                    Command::new(&bins.restore)
                        .args([JOB, &full_set, "--detach", "--json", "--cache", &cache_s])
                        .arg("--criu")
                        .arg(&bins.criu),
                    "ckptfs-restore",
                )?;
                r.ckptfs_restore = secs;
                kill(pid_of(&out)?, None)?;
            }
        }
        quiesce(Duration::from_secs(1))?;
        let (secs, out) = timed(
            Command::new(&bins.restore)
                .args([JOB, &incr_set, "--detach", "--json", "--cache", &cache_s])
                .arg("--criu")
                .arg(&bins.criu),
            "ckptfs-restore (incremental)",
        )?;
        r.ckptfs_restore_incr = secs;
        kill(pid_of(&out)?, None)?;
        dump_and_stop(args, bins, &rd, n, &mut r)
    })();
    if alive(pid) {
        let _ = kill(pid, Some(&mut child));
    }
    let _ = fs::remove_dir_all(&rd);
    result.map(|()| r)
}

struct Bins {
    dump: PathBuf,
    restore: PathBuf,
    ckptfs: PathBuf,
    criu: PathBuf,
    counter: PathBuf,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    // SAFETY: geteuid cannot fail.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "ckpt-bench criu runs CRIU and drops the page cache: run it as root"
    );
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("locating ckpt-bench")?
            .to_owned(),
    };
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| crate::default_dir().join("criu"));
    fs::create_dir_all(&dir)?;
    let criu = match &args.criu {
        Some(c) => c.clone(),
        None => libckpt::criu::Criu::discover(None)?.path,
    };
    let bins = Bins {
        dump: bin_dir.join("ckptfs-dump"),
        restore: bin_dir.join("ckptfs-restore"),
        ckptfs: bin_dir.join("ckptfs"),
        counter: compile_counter(&dir)?,
        criu,
    };
    for b in [&bins.dump, &bins.restore, &bins.ckptfs] {
        ensure!(
            b.exists(),
            "{} is missing: cargo build --release -p ckptfs",
            b.display()
        );
    }
    println!(
        "criu bench: {} resident, {} rounds, in {} ({})",
        ByteSize::b(args.mem),
        args.rounds,
        dir.display(),
        bins.criu.display()
    );
    let mut rounds = Vec::new();
    for n in 0..args.rounds {
        let r = round(args, &bins, &dir, n)?;
        println!(
            "round {n}: dump ckptfs {:.2} s, criu {:.2} s (+sync {:.2} s); process frozen \
             ckptfs {:.3} s, criu {:.3} s; full {} (criu {}), \
             incremental {}; restore ckptfs {:.2} s, criu {:.2} s, incremental {:.2} s; \
             dump and stop: ckptfs {:.2} s, criu {:.2} s (+sync {:.2} s); \
             durable write of as many bytes {:.2} s",
            r.ckptfs_dump,
            r.criu_dump,
            r.criu_dump_sync,
            r.ckptfs_freeze,
            r.criu_freeze,
            ByteSize::b(r.full_bytes),
            ByteSize::b(r.plain_bytes),
            ByteSize::b(r.incr_bytes),
            r.ckptfs_restore,
            r.criu_restore,
            r.ckptfs_restore_incr,
            r.stop_ckptfs,
            r.stop_criu,
            r.stop_criu_sync,
            r.disk_floor
        );
        rounds.push(r);
    }
    let col = |f: fn(&Round) -> f64| rounds.iter().map(|r| Some(f(r))).collect::<Vec<_>>();
    let med = |f: fn(&Round) -> f64| {
        median(&rounds.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    let show = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.3}"));
    let dump_vs_criu = median_ratio(&col(|r| r.ckptfs_dump), &col(|r| r.criu_dump));
    let dump_vs_sync = median_ratio(&col(|r| r.ckptfs_dump), &col(|r| r.criu_dump_sync));
    let freeze_vs = median_ratio(&col(|r| r.ckptfs_freeze), &col(|r| r.criu_freeze));
    let incr_share = median_ratio(&col(|r| r.incr_bytes as f64), &col(|r| r.full_bytes as f64));
    let restore_vs = median_ratio(&col(|r| r.ckptfs_restore), &col(|r| r.criu_restore));
    let stop_vs_criu = median_ratio(&col(|r| r.stop_ckptfs), &col(|r| r.stop_criu));
    let stop_vs_sync = median_ratio(&col(|r| r.stop_ckptfs), &col(|r| r.stop_criu_sync));
    let stop_vs_floor = median_ratio(&col(|r| r.stop_ckptfs), &col(|r| r.disk_floor));
    let floor_vs_criu = median_ratio(&col(|r| r.disk_floor), &col(|r| r.stop_criu));
    println!("\nmedians over {} rounds:", rounds.len());
    println!(
        "  full dump: ckptfs-dump {:.2} s, criu dump {:.2} s, criu dump + sync {:.2} s",
        med(|r| r.ckptfs_dump),
        med(|r| r.criu_dump),
        med(|r| r.criu_dump_sync)
    );
    println!(
        "  ratio ckptfs-dump / criu dump: {} (target <= 1.1); / (criu dump + sync): {}",
        show(dump_vs_criu),
        show(dump_vs_sync)
    );
    println!(
        "  process frozen (--leave-running): ckptfs-dump {:.3} s, criu dump {:.3} s, ratio {}",
        med(|r| r.ckptfs_freeze),
        med(|r| r.criu_freeze),
        show(freeze_vs)
    );
    println!(
        "  incremental after 10% changed: {} of the full dump's bytes (target <= 0.2)",
        show(incr_share)
    );
    println!(
        "  restore: ckptfs-restore {:.2} s, criu restore {:.2} s, ratio {} (target <= 1.1); \
         incremental set {:.2} s",
        med(|r| r.ckptfs_restore),
        med(|r| r.criu_restore),
        show(restore_vs),
        med(|r| r.ckptfs_restore_incr)
    );
    println!(
        "  dump and stop (no --leave-running, ckptfs-dump's default): ckptfs-dump {:.2} s, \
         criu dump {:.2} s, criu dump + sync {:.2} s; ratio {} (target <= 1.1), / (criu dump + sync): {}",
        med(|r| r.stop_ckptfs),
        med(|r| r.stop_criu),
        med(|r| r.stop_criu_sync),
        show(stop_vs_criu),
        show(stop_vs_sync)
    );
    println!(
        "  durable write of {} (O_DIRECT, fdatasync): {:.2} s; ckptfs-dump (dump and stop) / it: {}; \
         it / criu dump: {} (a durable dump cannot beat this ratio)",
        ByteSize::b(args.mem),
        med(|r| r.disk_floor),
        show(stop_vs_floor),
        show(floor_vs_criu)
    );
    Ok(())
}
