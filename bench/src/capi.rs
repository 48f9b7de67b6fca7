//! The C API (libckpt.so, issue 6) from a C program's point of view, in one
//! run:
//!
//! 1. `block`: how long the application is blocked in `ckpt_checkpoint()`
//!    for SIZE bytes of protected memory, against a raw `write(2)` loop of
//!    the same bytes to a file on the same filesystem, with and without
//!    `fsync` (the library's commit makes the set durable, so the fsync
//!    variants are the fair ones), through the page cache and with
//!    O_DIRECT (as the library writes by default, `io.direct`). Each variant
//!    is its own process (bench/c/ckpt_block.c) that fills its buffer
//!    before the clock starts.
//! 2. `drain`: the heat solver (examples/heatdis.c) in embedded mode,
//!    checkpointing every EVERY steps, with a PFS tier configured, so that
//!    the library's drain thread copies each checkpoint while the solver
//!    computes, against the same run with no tier. The figure is the step
//!    rate, checkpoints included (steps / wall time of the time loop).
//!
//! Every round runs every variant of every benchmark, in a rotating order,
//! with `sync`, the page cache dropped and a pause before each one, like
//! `ckpt-bench drain`; ratios are taken within a round, then the median over
//! rounds is reported. The C programs are compiled with the machine's `cc`
//! against the libckpt.so found with --lib. Nothing here asserts a time.

use crate::host::tree_bytes;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use bytesize::ByteSize;
use clap::ValueEnum;

use crate::host::quiesce;
use crate::machine::{self, Machine};
use crate::stats::{median, median_ratio};

/// The programs, built into the binary so that it runs from anywhere.
const BLOCK_C: &str = include_str!("../c/ckpt_block.c");
const HEATDIS_C: &str = include_str!("../../examples/heatdis.c");
const CKPT_H: &str = include_str!("../../include/ckpt.h");
/// Pause after dropping the page cache; see [`quiesce`].
const QUIET: Duration = Duration::from_secs(5);
const MIB: u64 = 1 << 20;

/// Measure libckpt's C API: time blocked in ckpt_checkpoint vs write(2),
/// and the solver's step rate with the embedded drain running.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory to work in (cache, PFS tier, raw files, the compiled
    /// programs); created if missing, emptied at the end. Must be on the
    /// disk under test and have twice SIZE plus 1 GiB free.
    #[arg(long, default_value = "/var/tmp/ckpt-capi-bench")]
    dir: PathBuf,

    /// Bytes of protected memory for `block`, e.g. 1GiB.
    #[arg(long, default_value = "1GiB", value_parser = crate::parse_size)]
    size: u64,

    /// Rounds; each round runs every variant of every benchmark once.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// Directory holding libckpt.so [default: the directory of this
    /// executable, where `cargo build --release -p ckpt-capi` puts it].
    #[arg(long, value_name = "DIR")]
    lib: Option<PathBuf>,

    /// Benchmarks to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Bench::ALL)]
    only: Vec<Bench>,

    /// Heat solver grid points per side (`drain`); a checkpoint is
    /// (GRID+2)² × 8 bytes.
    #[arg(long, default_value_t = 2048)]
    grid: u32,

    /// Heat solver steps per run (`drain`).
    #[arg(long, default_value_t = 1000)]
    steps: u32,

    /// Checkpoint every this many steps (`drain`).
    #[arg(long, default_value_t = 50)]
    every: u32,

    /// Where the PFS tier lives [default: DIR/pfs, the same disk as the
    /// cache: the worst case for the solver, whose checkpoints compete
    /// with the drain's reads and writes].
    #[arg(long, value_name = "DIR")]
    pfs_dir: Option<PathBuf>,

    /// Also append the markdown report to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Bench {
    /// Time blocked in ckpt_checkpoint vs write(2) (+ fsync).
    Block,
    /// Solver step rate with and without the embedded drain.
    Drain,
}

impl Bench {
    const ALL: [Bench; 2] = [Bench::Block, Bench::Drain];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockVariant {
    Ckpt,
    DirectFsync,
    RawFsync,
    Raw,
}

impl BlockVariant {
    const ALL: [BlockVariant; 4] = [
        BlockVariant::Ckpt,
        BlockVariant::DirectFsync,
        BlockVariant::RawFsync,
        BlockVariant::Raw,
    ];

    fn label(self) -> &'static str {
        match self {
            BlockVariant::Ckpt => "ckpt_checkpoint (libckpt, embedded)",
            BlockVariant::DirectFsync => "write(2) O_DIRECT + fsync",
            BlockVariant::RawFsync => "write(2) + fsync",
            BlockVariant::Raw => "write(2)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DrainVariant {
    NoTier,
    Draining,
}

impl DrainVariant {
    const ALL: [DrainVariant; 2] = [DrainVariant::NoTier, DrainVariant::Draining];

    fn label(self) -> &'static str {
        match self {
            DrainVariant::NoTier => "embedded, no tier (no drain)",
            DrainVariant::Draining => "embedded, PFS tier (drain thread running)",
        }
    }
}

/// One heat solver run's figures, from its --stats line.
#[derive(Debug, Clone, Copy)]
struct HeatStats {
    steps: f64,
    secs: f64,
    ckpts: f64,
    ckpt_secs: f64,
}

impl HeatStats {
    fn rate(&self) -> f64 {
        self.steps / self.secs
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.size >= MIB && args.size.is_multiple_of(4096),
        "--size must be a whole number of 4 KiB pages, at least 1 MiB"
    );
    ensure!(
        args.every > 0 && args.steps > args.every,
        "--steps must exceed --every > 0"
    );
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("ckpt-bench capi drops the page cache between variants: run it as root");
    }
    let lib = match &args.lib {
        Some(l) => l.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("executable directory")?
            .to_owned(),
    };
    ensure!(
        lib.join("libckpt.so").is_file(),
        "{}/libckpt.so not found: build it (cargo build --release -p ckpt-capi) or name its directory with --lib",
        lib.display()
    );
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let need = 2 * args.size + (1 << 30);
    let free = machine::free_bytes(&dir)?;
    ensure!(
        free >= need,
        "{} has {} free, the benchmark needs {}",
        dir.display(),
        ByteSize(free),
        ByteSize(need)
    );
    let machine = Machine::probe(&dir);
    let bin = dir.join("bin");
    let (block_exe, heat_exe) = compile(&bin, &lib)?;
    let work = dir.join("work");
    let pfs = args.pfs_dir.clone().unwrap_or_else(|| dir.join("pfs"));

    let runs = args.runs as usize;
    let mut blocked: Vec<Vec<Option<f64>>> = vec![vec![None; runs]; BlockVariant::ALL.len()];
    let mut heat: Vec<Vec<Option<HeatStats>>> = vec![vec![None; runs]; DrainVariant::ALL.len()];
    let mut drained_bytes: Vec<u64> = Vec::new();
    for round in 0..runs {
        if args.only.contains(&Bench::Block) {
            for k in 0..BlockVariant::ALL.len() {
                let i = (k + round) % BlockVariant::ALL.len();
                let v = BlockVariant::ALL[i];
                reset(&work)?;
                quiesce(QUIET)?;
                let secs = block_run(&block_exe, &work, v, args.size)?;
                eprintln!(
                    "round {}/{runs}: block {:<38} {secs:.3} s",
                    round + 1,
                    v.label()
                );
                blocked[i][round] = Some(secs);
            }
        }
        if args.only.contains(&Bench::Drain) {
            for k in 0..DrainVariant::ALL.len() {
                let i = (k + round) % DrainVariant::ALL.len();
                let v = DrainVariant::ALL[i];
                reset(&work)?;
                reset(&pfs)?;
                quiesce(QUIET)?;
                let st = heat_run(&heat_exe, &work, &pfs, v, args)?;
                if v == DrainVariant::Draining {
                    let b = tree_bytes(&pfs);
                    ensure!(
                        b > 0,
                        "round {}: the PFS tier {} is empty after the run: nothing drained",
                        round + 1,
                        pfs.display()
                    );
                    drained_bytes.push(b);
                }
                eprintln!(
                    "round {}/{runs}: drain {:<44} {:.1} steps/s ({} steps in {:.2} s, {} checkpoints {:.2} s)",
                    round + 1,
                    v.label(),
                    st.rate(),
                    st.steps,
                    st.secs,
                    st.ckpts,
                    st.ckpt_secs
                );
                heat[i][round] = Some(st);
            }
        }
    }
    remove(&work)?;
    if args.pfs_dir.is_none() {
        remove(&pfs)?;
    }

    let report = markdown(args, &machine, &dir, &blocked, &heat, &drained_bytes);
    crate::report::publish(&report, args.markdown.as_deref())?;
    Ok(())
}

/// Write the C sources out and compile them against libckpt.so in `lib`.
fn compile(bin: &Path, lib: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(bin.join("include"))?;
    fs::write(bin.join("include/ckpt.h"), CKPT_H)?;
    // Programs ask the loader for the soname, libckpt.so.0; cargo leaves
    // only libckpt.so: link to it under that name, and point the rpath there.
    let libdir = bin.join("lib");
    remove(&libdir)?;
    fs::create_dir_all(&libdir)?;
    let so = lib.canonicalize()?.join("libckpt.so");
    for name in ["libckpt.so", "libckpt.so.0"] {
        std::os::unix::fs::symlink(&so, libdir.join(name))
            .with_context(|| format!("linking {}", libdir.join(name).display()))?;
    }
    let mut out = Vec::new();
    for (name, src) in [("ckpt_block", BLOCK_C), ("heatdis", HEATDIS_C)] {
        let c = bin.join(format!("{name}.c"));
        fs::write(&c, src)?;
        let exe = bin.join(name);
        let status = Command::new("cc")
            .args(["-O2", "-g", "-Wall"])
            .arg(format!("-I{}", bin.join("include").display()))
            .arg("-o")
            .arg(&exe)
            .arg(&c)
            .arg(format!("-L{}", libdir.display()))
            .arg(format!("-Wl,-rpath,{}", libdir.display()))
            .arg("-lckpt")
            .status()
            .context("running cc")?;
        ensure!(status.success(), "cc {} failed: {status}", c.display());
        out.push(exe);
    }
    Ok((out.remove(0), out.remove(0)))
}

/// A libckpt configuration: embedded mode, cache under `work`, and the PFS
/// tier when asked for. The drain starts at once (no jitter): the worst
/// case for the solver. The cache keeps every set (`store.keep = 0`) in
/// both variants: no retention runs inside the timed loop, and none races
/// the solver's next checkpoint (with a tier, the drain's cache retention
/// can delete a set a rank is joining; see /work/notes/capi-results.md).
fn config(work: &Path, pfs: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut s = format!(
        "cache = \"{}\"\n\n[store]\nkeep = 0\n\n[api]\nmode = \"embedded\"\nfinalize_timeout = \"30m\"\n",
        work.join("cache").display()
    );
    if let Some(p) = pfs {
        let _ = write!(
            s,
            "\n[pfs]\ndir = \"{}\"\n\n[drain]\njitter = \"0s\"\n",
            p.display()
        );
    }
    let path = work.join("ckpt.toml");
    fs::write(&path, s).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn block_run(exe: &Path, work: &Path, v: BlockVariant, size: u64) -> anyhow::Result<f64> {
    let mut c = Command::new(exe);
    match v {
        BlockVariant::Ckpt => {
            let cfg = config(work, None)?;
            c.arg("ckpt").arg(cfg).arg("bench").arg(size.to_string());
        }
        BlockVariant::DirectFsync | BlockVariant::RawFsync | BlockVariant::Raw => {
            c.arg("raw").arg(work.join("raw.bin")).arg(size.to_string());
            if v != BlockVariant::Raw {
                c.arg("fsync");
            }
            if v == BlockVariant::DirectFsync {
                c.arg("direct");
            }
        }
    }
    let out = output(&mut c)?;
    out.lines()
        .find_map(|l| l.strip_prefix("blocked "))
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("no 'blocked SECONDS' line from {}: {out}", exe.display()))
}

fn heat_run(
    exe: &Path,
    work: &Path,
    pfs: &Path,
    v: DrainVariant,
    args: &Args,
) -> anyhow::Result<HeatStats> {
    let cfg = config(work, (v == DrainVariant::Draining).then_some(pfs))?;
    let mut c = Command::new(exe);
    c.arg(format!("--config={}", cfg.display()))
        .arg("--job=bench")
        .arg(format!("--n={}", args.grid))
        .arg(format!("--steps={}", args.steps))
        .arg(format!("--every={}", args.every))
        .arg("--stats");
    // One rank, whatever launcher the benchmark runs under.
    for v in [
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "PMI_RANK",
        "PMI_SIZE",
        "PMIX_RANK",
        "PMIX_SIZE",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_STEP_NUM_TASKS",
    ] {
        c.env_remove(v);
    }
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "{} failed: {}\n{stderr}",
        exe.display(),
        out.status
    );
    parse_stats(&stderr).with_context(|| format!("no --stats line in: {stderr}"))
}

/// "heatdis: rank 0: 1000 steps in 12.3 s (81.3 steps/s), 19 checkpoints 1.2 s"
fn parse_stats(s: &str) -> Option<HeatStats> {
    let l = s.lines().find(|l| l.contains(" steps in "))?;
    let words: Vec<&str> = l.split_whitespace().collect();
    let at = |w: &str| words.iter().position(|x| *x == w);
    let steps = words.get(at("steps")? - 1)?.parse().ok()?;
    let secs = words.get(at("in")? + 1)?.parse().ok()?;
    let c = at("checkpoints")?;
    let ckpts = words.get(c - 1)?.parse().ok()?;
    let ckpt_secs = words.get(c + 1)?.parse().ok()?;
    Some(HeatStats {
        steps,
        secs,
        ckpts,
        ckpt_secs,
    })
}

fn output(c: &mut Command) -> anyhow::Result<String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    ensure!(
        out.status.success(),
        "{c:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn remove(p: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

fn reset(p: &Path) -> anyhow::Result<()> {
    remove(p)?;
    fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))
}

fn fmt_round<T: Copy>(xs: &[Option<T>], f: impl Fn(T) -> String) -> String {
    xs.iter()
        .map(|x| x.map_or("–".into(), &f))
        .collect::<Vec<_>>()
        .join(", ")
}

fn markdown(
    args: &Args,
    machine: &Machine,
    dir: &Path,
    blocked: &[Vec<Option<f64>>],
    heat: &[Vec<Option<HeatStats>>],
    drained: &[u64],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### ckpt-bench capi: {} rounds in {}\n",
        args.runs,
        dir.display()
    );
    let _ = writeln!(s, "- machine: {machine}");
    let _ = writeln!(
        s,
        "- `sync`, page cache dropped and a {} s pause before every variant; variants in a rotating order; ratios are medians of per-round ratios\n",
        QUIET.as_secs()
    );
    if args.only.contains(&Bench::Block) {
        let _ = writeln!(
            s,
            "#### Time blocked writing {} of memory\n\n| variant | seconds per round | median s | ckpt_checkpoint ÷ variant |\n|---|---|---:|---:|",
            ByteSize(args.size)
        );
        for (i, v) in BlockVariant::ALL.iter().enumerate() {
            let present: Vec<f64> = blocked[i].iter().flatten().copied().collect();
            let ratio = if *v == BlockVariant::Ckpt {
                String::new()
            } else {
                median_ratio(&blocked[0], &blocked[i]).map_or("–".into(), |r| format!("{r:.3}×"))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {ratio} |",
                v.label(),
                fmt_round(&blocked[i], |x| format!("{x:.3}")),
                median(&present).map_or("–".into(), |m| format!("{m:.3}"))
            );
        }
        s.push('\n');
    }
    if args.only.contains(&Bench::Drain) {
        let ckpt_bytes = (u64::from(args.grid) + 2).pow(2) * 8;
        let _ = writeln!(
            s,
            "#### Heat solver step rate with the embedded drain\n\n\
             examples/heatdis.c, {0}² grid, {1} steps, a checkpoint ({2}) every {3} steps; \
             steps/s = steps ÷ wall time of the time loop, checkpoints included; \
             drained per run: {4}\n\n\
             | variant | steps/s per round | median steps/s | s in ckpt_checkpoint (median) | ÷ no tier |\n|---|---|---:|---:|---:|",
            args.grid,
            args.steps,
            ByteSize(ckpt_bytes),
            args.every,
            fmt_round(
                &drained.iter().map(|b| Some(*b)).collect::<Vec<_>>(),
                |b| ByteSize(b).to_string()
            )
        );
        let rates: Vec<Vec<Option<f64>>> = heat
            .iter()
            .map(|r| r.iter().map(|x| x.map(|h| h.rate())).collect())
            .collect();
        for (i, v) in DrainVariant::ALL.iter().enumerate() {
            let present: Vec<f64> = rates[i].iter().flatten().copied().collect();
            let ck: Vec<f64> = heat[i].iter().flatten().map(|h| h.ckpt_secs).collect();
            let ratio = if *v == DrainVariant::NoTier {
                String::new()
            } else {
                median_ratio(&rates[i], &rates[0]).map_or("–".into(), |r| format!("{r:.3}×"))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {ratio} |",
                v.label(),
                fmt_round(&rates[i], |x| format!("{x:.1}")),
                median(&present).map_or("–".into(), |m| format!("{m:.1}")),
                median(&ck).map_or("–".into(), |m| format!("{m:.2}"))
            );
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_line_parses() {
        let st = parse_stats(
            "heatdis: rank 0: restarted from version 3\n\
             heatdis: rank 0: 1000 steps in 12.500000 s (80.000 steps/s), 19 checkpoints 1.250000 s\n",
        )
        .expect("parses");
        assert_eq!(st.steps, 1000.0);
        assert_eq!(st.secs, 12.5);
        assert_eq!(st.ckpts, 19.0);
        assert_eq!(st.ckpt_secs, 1.25);
        assert_eq!(st.rate(), 80.0);
        assert!(parse_stats("nothing here").is_none());
    }
}
