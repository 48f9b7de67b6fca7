//! End to end: one file of `--size` bytes written as a committed set through
//! the store, on each I/O path, against `dd` writing the same bytes with
//! O_DIRECT. Every round runs every variant, in a rotating order, so that a
//! neighbour's burst of I/O hits all variants alike and position in the
//! round (a warm device, a journal commit of the previous delete) favours
//! none of them. Ratios are taken within a round, then the median over
//! rounds reported. Nothing here asserts a time: the figures are for people.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use bytesize::ByteSize;
use clap::ValueEnum;
use libckpt::io::{EngineKind, IoEngine, IoOptions, IoPath};
use libckpt::path::{JobName, RelPath, SetName};
use libckpt::store::{Store, StoreOptions};

use crate::host::settle;
use crate::machine::{self, Machine};
use crate::stats::{mb_per_s, median, median_ratio};

const MIB: u64 = 1 << 20;
/// Room left on the disk beyond the file itself: the store's metadata,
/// the filesystem's own, and whatever the neighbours write meanwhile.
const DISK_MARGIN: u64 = 512 * MIB;
const JOB: &str = "ckpt-bench";
const FILE: &str = "data.bin";

/// Compare checkpoint writes through the store with dd on the same disk.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write in; created if missing. Must be on the disk under
    /// test (not tmpfs) and have SIZE plus 512 MiB free.
    #[arg(long, default_value_os_t = crate::default_dir())]
    dir: PathBuf,

    /// Bytes per file, e.g. 4GiB; a whole number of MiB (dd writes 1 MiB blocks).
    #[arg(long, default_value = "4GiB", value_parser = crate::parse_size)]
    size: u64,

    /// Rounds; each round runs every variant once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// Also append the markdown report to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,

    /// Variants to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Variant::ALL)]
    variants: Vec<Variant>,

    /// Engine requests in flight on the io_uring path (io.queue_depth).
    #[arg(long, default_value_t = IoOptions::default().queue_depth)]
    queue_depth: u32,

    /// Engine transfer buffer size (io.buffer_size), e.g. 1MiB.
    #[arg(long, default_value_t = IoOptions::default().buffer_size as u64, value_parser = crate::parse_size)]
    buffer_size: u64,

    /// Write through the page cache instead of O_DIRECT (engine only; dd
    /// always uses oflag=direct).
    #[arg(long)]
    buffered: bool,

    /// crc32c chunk size of the store, e.g. 1MiB.
    #[arg(long, default_value_t = StoreOptions::default().chunk_size, value_parser = crate::parse_size)]
    chunk_size: u64,
}

/// One way of writing the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Variant {
    /// dd bs=1M oflag=direct
    DdDirect,
    /// dd bs=1M oflag=direct conv=fsync: dd with the durability the store gives
    DdFsync,
    /// The store on the io_uring path
    Uring,
    /// The store on the pread/pwrite path
    Fallback,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::DdDirect,
        Variant::DdFsync,
        Variant::Uring,
        Variant::Fallback,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::DdDirect => "dd oflag=direct",
            Variant::DdFsync => "dd oflag=direct conv=fsync",
            Variant::Uring => "store, io_uring",
            Variant::Fallback => "store, pread/pwrite",
        }
    }

    fn is_dd(self) -> bool {
        matches!(self, Variant::DdDirect | Variant::DdFsync)
    }
}

/// A store with the engine it was opened with; one per engine variant, so
/// each path's rings and buffers are set up once, outside the timing.
struct Target {
    store: Store,
    job: JobName,
}

impl Target {
    fn open(root: &Path, io: &IoOptions, chunk_size: u64) -> anyhow::Result<Target> {
        let engine = IoEngine::new(io).with_context(|| {
            format!(
                "starting the {} engine (leave it out with --variants if this machine cannot run it)",
                io.kind
            )
        })?;
        let want = match io.kind {
            EngineKind::Uring => IoPath::Uring,
            _ => IoPath::Fallback,
        };
        ensure!(
            engine.path() == want,
            "asked for {} but the engine runs {} ({})",
            io.kind,
            engine.path(),
            engine.fallback_reason().unwrap_or("no reason given")
        );
        let opts = StoreOptions {
            chunk_size,
            // Every set is deleted by the harness itself; retention must not
            // run inside a timed commit.
            keep: 0,
            ..Default::default()
        };
        let store = Store::open(root, Arc::new(engine), opts)
            .with_context(|| format!("opening the store at {}", root.display()))?;
        let job = JobName::new(JOB)?;
        // A previous run that was interrupted may have left its sets.
        let leftovers = store
            .sets(&job)
            .with_context(|| format!("listing leftover sets in {}", root.display()))?;
        for s in leftovers {
            store
                .delete_set(&job, &s.set)
                .with_context(|| format!("removing the leftover set {}", s.set))?;
        }
        Ok(Target { store, job })
    }

    /// Write and commit one set of one `size`-byte file; returns seconds.
    fn write_set(&self, set: &SetName, size: u64) -> anyhow::Result<f64> {
        let rel = RelPath::new(FILE)?;
        let start = Instant::now();
        let mut w = self.store.create_set(&self.job, set)?;
        let digest = w.write_file(&rel, &mut io::repeat(0).take(size))?;
        w.commit()?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(
            digest.size == size,
            "the engine wrote {} bytes of {size}",
            digest.size
        );
        self.store
            .delete_set(&self.job, set)
            .with_context(|| format!("deleting set {set}"))?;
        Ok(secs)
    }
}

/// `dd` writing `size` bytes of zeros; returns seconds around the process.
fn run_dd(out: &Path, size: u64, fsync: bool) -> anyhow::Result<f64> {
    let mut cmd = Command::new("dd");
    cmd.arg("if=/dev/zero")
        .arg(format!("of={}", out.display()))
        .arg("bs=1M")
        .arg(format!("count={}", size / MIB))
        .arg("oflag=direct");
    if fsync {
        cmd.arg("conv=fsync");
    }
    let start = Instant::now();
    let res = cmd.output().context("running dd")?;
    let secs = start.elapsed().as_secs_f64();
    if !res.status.success() {
        bail!(
            "dd failed ({}): {}",
            res.status,
            String::from_utf8_lossy(&res.stderr).trim()
        );
    }
    fs::remove_file(out).with_context(|| format!("removing {}", out.display()))?;
    Ok(secs)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.size > 0 && args.size.is_multiple_of(MIB),
        "--size must be a positive whole number of MiB (dd writes 1 MiB blocks), got {}",
        args.size
    );
    let buffer_size = usize::try_from(args.buffer_size).context("--buffer-size is too large")?;
    let mut variants = args.variants.clone();
    variants.sort();
    variants.dedup();
    ensure!(!variants.is_empty(), "no variants to run");

    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let free = machine::free_bytes(&dir)?;
    ensure!(
        free >= args.size + DISK_MARGIN,
        "{} has {} free; this run needs {} (--size plus a {} margin)",
        dir.display(),
        ByteSize(free),
        ByteSize(args.size + DISK_MARGIN),
        ByteSize(DISK_MARGIN)
    );
    let machine = Machine::probe(&dir);
    eprintln!("ckpt-bench e2e: {machine}");

    let io = |kind| IoOptions {
        kind,
        queue_depth: args.queue_depth,
        buffer_size,
        direct: !args.buffered,
    };
    let mut targets: Vec<(Variant, Target)> = Vec::new();
    for (v, kind, sub) in [
        (Variant::Uring, EngineKind::Uring, "store-uring"),
        (Variant::Fallback, EngineKind::Fallback, "store-fallback"),
    ] {
        if variants.contains(&v) {
            targets.push((v, Target::open(&dir.join(sub), &io(kind), args.chunk_size)?));
        }
    }
    let target = |v: Variant| targets.iter().find(|(tv, _)| *tv == v).map(|(_, t)| t);
    let dd_out = dir.join("dd.out");

    let runs = args.runs as usize;
    // rates[variant index][round], in MB/s.
    let mut rates: Vec<Vec<Option<f64>>> = vec![Vec::with_capacity(runs); variants.len()];
    for round in 0..runs {
        let mut row = vec![None; variants.len()];
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            let v = variants[i];
            settle();
            let secs = match v {
                Variant::DdDirect | Variant::DdFsync => {
                    run_dd(&dd_out, args.size, v == Variant::DdFsync)?
                }
                Variant::Uring | Variant::Fallback => {
                    let t = target(v).context("engine variant without a store")?;
                    let set = SetName::new(format!("round-{round}"))?;
                    t.write_set(&set, args.size)?
                }
            };
            let rate = mb_per_s(args.size, secs);
            row[i] = Some(rate);
            eprintln!(
                "round {}/{runs}: {:<28} {rate:>8.0} MB/s ({secs:.2} s)",
                round + 1,
                v.label()
            );
        }
        for (per_variant, r) in rates.iter_mut().zip(row) {
            per_variant.push(r);
        }
    }
    settle();

    let report = markdown(args, &machine, &dir, &variants, &rates);
    crate::report::publish(&report, args.markdown.as_deref())?;
    Ok(())
}

fn markdown(
    args: &Args,
    machine: &Machine,
    dir: &Path,
    variants: &[Variant],
    rates: &[Vec<Option<f64>>],
) -> String {
    let baselines: Vec<(usize, Variant)> = variants
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, v)| v.is_dd())
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### ckpt-bench e2e: {} × {} rounds in {}\n",
        ByteSize(args.size),
        args.runs,
        dir.display()
    );
    let _ = writeln!(s, "- machine: {machine}");
    let _ = writeln!(
        s,
        "- engine: queue_depth {}, buffer_size {}, {}, chunk_size {}",
        args.queue_depth,
        ByteSize(args.buffer_size),
        if args.buffered {
            "buffered"
        } else {
            "O_DIRECT"
        },
        ByteSize(args.chunk_size)
    );
    let _ = writeln!(
        s,
        "- store variants time create_set + write_file + commit (fdatasync, manifest, dir fsyncs); \
         dd is timed around the process; MB/s = 10^6 bytes/s; ratios are medians of per-round ratios\n"
    );
    let _ = write!(s, "| variant | MB/s per round | median MB/s |");
    for (_, b) in &baselines {
        let _ = write!(s, " ÷ {} |", b.label());
    }
    let _ = write!(s, "\n|---|---|---:|");
    for _ in &baselines {
        let _ = write!(s, "---:|");
    }
    s.push('\n');
    for (i, v) in variants.iter().enumerate() {
        let per_round: Vec<String> = rates[i]
            .iter()
            .map(|r| r.map_or("–".into(), |r| format!("{r:.0}")))
            .collect();
        let present: Vec<f64> = rates[i].iter().flatten().copied().collect();
        let med = median(&present).map_or("–".into(), |m| format!("{m:.0}"));
        let _ = write!(s, "| {} | {} | {med} |", v.label(), per_round.join(", "));
        for (j, _) in &baselines {
            let cell = if v.is_dd() {
                "".to_owned()
            } else {
                median_ratio(&rates[i], &rates[*j]).map_or("–".into(), |r| format!("{r:.2}×"))
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    s
}
