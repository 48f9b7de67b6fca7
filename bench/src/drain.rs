//! The drain to the lower tiers, against the tools a site would otherwise
//! use, in one run (issue 5, "Benchmarks"):
//!
//! 1. `push`: a set of realistic checkpoint-like data drained to a
//!    `ckptfs serve` on loopback (`ckptfs drain --wait`, no mount), against
//!    `rsync -az` and `rsync -a` of the same files to an rsync daemon on
//!    loopback.
//! 2. `delta`: a second set with 10 % of its 1 MiB chunks changed in place,
//!    drained after the first to the same receiver: bytes sent, from the
//!    drain's log and from the receiver's chunk store.
//! 3. `writer`: `dd conv=fsync` into a `/ckpt` mount while a rate-limited
//!    drain (to the DR site, and to a PFS directory) runs, against the same
//!    `dd` into a mount with no tier.
//! 4. `rpo`: commit → on the PFS and on the DR site, from a mount that
//!    drains to one tier alone and from one that drains to both at once,
//!    against the time each tier's transfer takes for the same bytes
//!    (`cp -r` + `sync` for the PFS, the `push` drain of the same round
//!    for the DR site).
//! 5. `rto`: an empty cache → the set restored from the PFS, against
//!    `cp -r` of the same files.
//!
//! Every round runs every variant of every benchmark, in a rotating order,
//! with the page cache dropped (and a pause for the disk to finish the
//! previous variant's deletes) before each timed transfer; ratios are taken
//! within a round, then the median over rounds is reported. Nothing here
//! asserts a time: the figures are for people.

use crate::host::{ckptfs_bin, remove_dir, require_root, tree_bytes, Scratch};
use crate::report::{cells, mib, opt, verdict};
use crate::stats::Figures;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytesize::ByteSize;
use clap::ValueEnum;
use serde_json::Value;

use crate::host::{log_field, log_tail, quiesce, run_ok, settle, stop_with_us};
use crate::machine::{self, Machine};
use crate::mounts::{detach, mounted_fstype};
use crate::stats::mb_per_s;

const MIB: u64 = 1 << 20;
/// The store's chunk size (ckptfs's default), and the unit of change of
/// the second set.
pub(crate) const CHUNK: u64 = MIB;
/// Files per set: one per "rank".
const FILES: u64 = 8;
const JOB: &str = "dbench";
const SET_A: &str = "a";
const SET_B: &str = "b";
/// The set the writer benchmark writes while the drain runs.
const SET_W: &str = "w";
/// Share of set B's chunks that differ from set A's.
pub(crate) const CHANGED_PERCENT: u64 = 10;
/// Bump when the generator changes: data kept with --keep-data is redone.
pub(crate) const GENERATOR: &str = "ckpt-bench drain data v2";
const FSTYPE: &str = "fuse.ckptfs";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a drain may take before the benchmark gives up on it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1200);
/// How often the RPO benchmark asks the daemon.
const POLL: Duration = Duration::from_millis(50);
/// Pause before each timed transfer; see [`quiesce`].
const QUIET: Duration = Duration::from_secs(5);
/// Room left on the disk beyond the benchmark's own peak.
const DISK_MARGIN: u64 = 1 << 30;

/// Measure the drain to the lower tiers against rsync, dd and cp.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory to work in; created if missing, removed at the end (but
    /// for the data with --keep-data). Must be on the disk under test and
    /// have six times SIZE plus 1 GiB free.
    #[arg(long, default_value = "/var/tmp/ckpt-dbench")]
    dir: PathBuf,

    /// Bytes per set, e.g. 2GiB, a whole number of 8 MiB (8 files of whole
    /// 1 MiB chunks). The writer benchmark's dd writes twice this.
    #[arg(long, default_value = "2GiB", value_parser = crate::parse_size)]
    size: u64,

    /// Rounds; each round runs every variant of every benchmark once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// The ckptfs binary [default: `ckptfs` next to this executable].
    #[arg(long, value_name = "PATH")]
    ckptfs: Option<PathBuf>,

    /// Also append the markdown report to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,

    /// Benchmarks to run, comma-separated. `delta` and `rpo` also run the
    /// ckptfs side of `push` (the first set, and the DR tier's rate).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Bench::ALL)]
    only: Vec<Bench>,

    /// Drain rate limit while the writer benchmark's dd runs (--dr-rate,
    /// --pfs-rate), e.g. 100MiB.
    #[arg(long, default_value = "100MiB", value_parser = crate::parse_size)]
    rate: u64,

    /// Keep the generated sets in DIR/data; a later run with the same
    /// --size reuses them instead of generating them again.
    #[arg(long)]
    keep_data: bool,

    /// Where the lower tiers keep their bytes: the PFS directories, the DR
    /// receivers' roots and the rsync module [default: DIR/work, the same
    /// disk as the cache]. A diagnostic: e.g. /dev/shm/ckpt-dbench stands
    /// for tiers on other machines, whose writes and fsyncs do not load
    /// this disk (and are free).
    #[arg(long, value_name = "DIR")]
    tiers_dir: Option<PathBuf>,

    /// Run the mount daemons (and so their drain) under `nice -n 19 ionice
    /// -c 3`. A diagnostic for the writer benchmark: what the drain costs
    /// the writer when the drain only gets what the writer leaves.
    #[arg(long)]
    nice_daemon: bool,
}

/// One benchmark of issue 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Bench {
    /// The first set: ckptfs drain to `ckptfs serve` vs rsync -az / -a
    Push,
    /// The second set, 10 % of its chunks changed: bytes sent
    Delta,
    /// dd into /ckpt while a rate-limited drain runs vs idle
    Writer,
    /// Commit → on PFS and DR (each tier alone, and both at once) vs each tier's measured rate
    Rpo,
    /// Empty cache → restored from PFS vs cp -r
    Rto,
}

impl Bench {
    const ALL: [Bench; 5] = [
        Bench::Push,
        Bench::Delta,
        Bench::Writer,
        Bench::Rpo,
        Bench::Rto,
    ];
}

// ---------------------------------------------------------------------------
// The data: deterministic, checkpoint-like.
// ---------------------------------------------------------------------------

/// What a run of chunks holds, as a simulation's checkpoint would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// f64 field: smooth in space plus noise in the low mantissa bits.
    F64,
    /// f32 field stored with 14 significant mantissa bits.
    F32,
    /// i32 mesh connectivity (slowly increasing node ids) and material
    /// ids in runs.
    Int,
    /// An array of 48-byte particle records: id, type, flags, position,
    /// velocity, padding.
    Records,
    /// 4 KiB pages, 70 % of them zero (ghost cells, unused blocks), the
    /// rest f64 field.
    Sparse,
    /// Allocated and never written.
    Zero,
}

/// Share of the chunks of each kind, in percent.
const KINDS: [(Kind, u64); 6] = [
    (Kind::F64, 45),
    (Kind::F32, 15),
    (Kind::Int, 15),
    (Kind::Records, 10),
    (Kind::Sparse, 10),
    (Kind::Zero, 5),
];

/// splitmix64's finalizer: a good 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) fn seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x5eed_c4e7_f500_0000, |h, p| {
        mix(h ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    })
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The layout of one file: a run of arrays, each of one kind and 1–24
/// chunks long. Per chunk: its kind and its index within its array.
pub(crate) fn layout(file: u64, chunks: u64) -> Vec<(Kind, u64)> {
    let mut rng = Rng(seed(&[1, file]));
    let mut out = Vec::with_capacity(chunks as usize);
    while (out.len() as u64) < chunks {
        let mut pick = rng.below(100);
        let kind = KINDS
            .iter()
            .find(|(_, share)| {
                let hit = pick < *share;
                pick = pick.saturating_sub(*share);
                hit
            })
            .map_or(Kind::F64, |(k, _)| *k);
        let len = 1 + rng.below(24);
        for i in 0..len {
            if (out.len() as u64) < chunks {
                out.push((kind, i));
            }
        }
    }
    out
}

/// A smooth field over the array's element index, different per array
/// (`phase`) and per version of the data (a later time step).
fn field(i: u64, phase: f64) -> f64 {
    let x = i as f64;
    280.0
        + 35.0 * (x * 2.1e-4 + phase).sin()
        + 7.5 * (x * 3.3e-3 + 1.7 * phase).cos()
        + 0.8 * (x * 4.1e-2).sin()
}

/// Chunk `chunk` of file `file`, `version` 0 (set A) or 1 (a chunk of set
/// B that changed). Deterministic in its arguments.
fn fill(buf: &mut [u8], file: u64, chunk: u64, kind: Kind, index: u64, version: u64) {
    let mut rng = Rng(seed(&[2, file, chunk, version]));
    // Element indices continue across the chunks of one array.
    let phase = (seed(&[3, file, chunk - index]) % 1000) as f64 * 1e-2 + version as f64 * 0.37;
    match kind {
        Kind::Zero => buf.fill(0),
        Kind::F64 => {
            let base = index * (buf.len() as u64 / 8);
            for (k, out) in buf.chunks_exact_mut(8).enumerate() {
                let v = field(base + k as u64, phase) * (1.0 + 1e-7 * (rng.unit() - 0.5));
                out.copy_from_slice(&v.to_le_bytes());
            }
        }
        Kind::F32 => {
            let base = index * (buf.len() as u64 / 4);
            for (k, out) in buf.chunks_exact_mut(4).enumerate() {
                let v = field(base + k as u64, phase) as f32 * (1.0 + 1e-4 * (rng.unit() as f32));
                // 14 significant mantissa bits, as a code that stores
                // single precision it only trusts to 1e-4 would.
                let bits = v.to_bits() & !((1u32 << 9) - 1);
                out.copy_from_slice(&bits.to_le_bytes());
            }
        }
        Kind::Int => {
            if (file + chunk - index).is_multiple_of(2) {
                // Hexahedra of a structured 96 × 96 block: 8 node ids each.
                let nx = 97u64;
                let first = index * (buf.len() as u64 / 32) + version * 7;
                for (e, out) in (first..).zip(buf.chunks_exact_mut(32)) {
                    let b = e + e / 96 + (e / (96 * 96)) * nx;
                    let plane = nx * nx;
                    let nodes = [
                        b,
                        b + 1,
                        b + nx + 1,
                        b + nx,
                        b + plane,
                        b + plane + 1,
                        b + plane + nx + 1,
                        b + plane + nx,
                    ];
                    for (o, n) in out.chunks_exact_mut(4).zip(nodes) {
                        o.copy_from_slice(&(n as u32).to_le_bytes());
                    }
                }
            } else {
                // Material ids, in runs.
                let mut left = 0u64;
                let mut id = 0u32;
                for out in buf.chunks_exact_mut(4) {
                    if left == 0 {
                        left = 1 + rng.below(400);
                        id = rng.below(12) as u32;
                    }
                    left -= 1;
                    out.copy_from_slice(&id.to_le_bytes());
                }
            }
        }
        Kind::Records => {
            let per = buf.len() as u64 / 48;
            // The tail that holds no whole record.
            let whole = buf.len() - buf.len() % 48;
            buf[whole..].fill(0);
            for (k, out) in buf.chunks_exact_mut(48).enumerate() {
                let id = (file << 40) | (index * per + k as u64);
                let t = rng.below(4) as u32;
                let x = field(id & 0xff_ffff, phase);
                let p = [
                    x as f32,
                    (x * 0.5 + rng.unit()) as f32,
                    (k % 1024) as f32 * 0.01,
                ];
                let v = [(rng.unit() - 0.5) as f32, (rng.unit() - 0.5) as f32, 0.0f32];
                out[..8].copy_from_slice(&id.to_le_bytes());
                out[8..12].copy_from_slice(&t.to_le_bytes());
                out[12..16].copy_from_slice(&0x0001_0003u32.to_le_bytes());
                for (j, f) in p.iter().chain(&v).enumerate() {
                    out[16 + 4 * j..20 + 4 * j].copy_from_slice(&f.to_le_bytes());
                }
                out[40..].fill(0);
            }
        }
        Kind::Sparse => {
            let base = index * (buf.len() as u64 / 8);
            for (p, page) in buf.chunks_exact_mut(4096).enumerate() {
                if rng.below(10) < 7 {
                    page.fill(0);
                    continue;
                }
                for (k, out) in page.chunks_exact_mut(8).enumerate() {
                    let i = base + (p * 512 + k) as u64;
                    let v = field(i, phase) * (1.0 + 1e-7 * (rng.unit() - 0.5));
                    out.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

/// The chunks of set B that differ from set A's: exactly
/// `CHANGED_PERCENT` % of all chunks, chosen among those that are not
/// all-zero (a zero chunk "changed" to zeros would not be a change).
pub(crate) fn changed_chunks(files: u64, chunks_per_file: u64) -> Vec<Vec<bool>> {
    let layouts: Vec<_> = (0..files).map(|f| layout(f, chunks_per_file)).collect();
    let mut candidates: Vec<(u64, u64, u64)> = Vec::new();
    for (f, l) in layouts.iter().enumerate() {
        for (c, (kind, _)) in l.iter().enumerate() {
            if *kind != Kind::Zero {
                candidates.push((seed(&[4, f as u64, c as u64]), f as u64, c as u64));
            }
        }
    }
    candidates.sort_unstable();
    let want = (files * chunks_per_file * CHANGED_PERCENT).div_ceil(100) as usize;
    let mut out = vec![vec![false; chunks_per_file as usize]; files as usize];
    for (_, f, c) in candidates.into_iter().take(want) {
        out[f as usize][c as usize] = true;
    }
    out
}

/// The files of a set of `files` ranks in `dir`.
pub(crate) fn set_files(dir: &Path, files: u64) -> Vec<PathBuf> {
    (0..files).map(|f| dir.join(rank_name(f))).collect()
}

pub(crate) fn rank_name(f: u64) -> String {
    format!("rank-{f:02}.bin")
}

/// Sets A and B in `data/{a,b}/rank-NN.bin`, made unless a previous run
/// with the same parameters left them (`--keep-data`).
pub(crate) struct Data {
    pub(crate) a: PathBuf,
    pub(crate) b: PathBuf,
    pub(crate) size: u64,
    pub(crate) chunks: u64,
    pub(crate) changed: u64,
    /// Files of set B with at least one changed chunk.
    pub(crate) changed_files: u64,
    /// Chunks of each kind in set A.
    pub(crate) kinds: Vec<(Kind, u64)>,
}

impl Data {
    fn files(dir: &Path) -> Vec<PathBuf> {
        set_files(dir, FILES)
    }

    fn prepare(root: &Path, size: u64) -> anyhow::Result<Data> {
        Data::generate(root, size, FILES, "drain")
    }

    /// Sets A and B of `files` files, `size` bytes each set, under `root`;
    /// `harness` names the caller in messages.
    pub(crate) fn generate(
        root: &Path,
        size: u64,
        files: u64,
        harness: &str,
    ) -> anyhow::Result<Data> {
        let chunks_per_file = size / files / CHUNK;
        let layouts: Vec<_> = (0..files).map(|f| layout(f, chunks_per_file)).collect();
        let changed = changed_chunks(files, chunks_per_file);
        let kinds = KINDS
            .iter()
            .map(|(k, _)| {
                let n = layouts.iter().flatten().filter(|(c, _)| c == k).count();
                (*k, n as u64)
            })
            .collect();
        let data = Data {
            a: root.join(SET_A),
            b: root.join(SET_B),
            size,
            chunks: files * chunks_per_file,
            changed: changed.iter().flatten().filter(|c| **c).count() as u64,
            changed_files: changed.iter().filter(|f| f.iter().any(|c| *c)).count() as u64,
            kinds,
        };
        let stamp = root.join("STAMP");
        let want = format!("{GENERATOR} size={size} files={files} chunk={CHUNK}\n");
        if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str())
            && set_files(&data.a, files)
                .iter()
                .chain(&set_files(&data.b, files))
                .all(|p| fs::metadata(p).is_ok_and(|m| m.len() == size / files))
        {
            eprintln!(
                "ckpt-bench {harness}: reusing the data in {}",
                root.display()
            );
            return Ok(data);
        }
        remove_dir(root)?;
        fs::create_dir_all(&data.a)?;
        fs::create_dir_all(&data.b)?;
        let start = Instant::now();
        let workers = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        thread::scope(|s| -> anyhow::Result<()> {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let (layouts, changed, data) = (&layouts, &changed, &data);
                    s.spawn(move || -> anyhow::Result<()> {
                        for f in (w..files).step_by(workers as usize) {
                            write_file(&data.a.join(rank_name(f)), f, &layouts[f as usize], None)?;
                            write_file(
                                &data.b.join(rank_name(f)),
                                f,
                                &layouts[f as usize],
                                Some(&changed[f as usize]),
                            )?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
            }
            Ok(())
        })?;
        settle();
        fs::write(&stamp, want)?;
        eprintln!(
            "ckpt-bench {harness}: generated 2 × {} in {:.1} s",
            ByteSize(size),
            start.elapsed().as_secs_f64()
        );
        Ok(data)
    }
}

pub(crate) fn write_file(
    path: &Path,
    file: u64,
    layout: &[(Kind, u64)],
    changed: Option<&[bool]>,
) -> anyhow::Result<()> {
    let mut out = io::BufWriter::with_capacity(
        4 * CHUNK as usize,
        File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut buf = vec![0u8; CHUNK as usize];
    for (c, (kind, index)) in layout.iter().enumerate() {
        let version = u64::from(changed.is_some_and(|ch| ch[c]));
        fill(&mut buf, file, c as u64, *kind, *index, version);
        out.write_all(&buf)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Compressed size of the files with `zstd -3` (one stream, as a user
/// would compress the set), or `None` without a zstd binary.
fn zstd_size(files: &[PathBuf]) -> Option<u64> {
    let mut child = Command::new("zstd")
        .args(["-3", "-T0", "-q", "-c"])
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut out = child.stdout.take()?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    child.wait().ok()?.success().then_some(total)
}

// ---------------------------------------------------------------------------
// Processes, mounts, the disk.
// ---------------------------------------------------------------------------

/// A background process of ours (a receiver, an rsync daemon): stopped
/// with SIGTERM, then SIGKILL, by its pid, and reaped, also when the
/// benchmark fails half-way.
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = stop_with_us(cmd)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// Wait until something accepts connections on 127.0.0.1:`port`.
    fn wait_port(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "{} exited ({status}) before listening on {addr}:\n{}",
                        self.name,
                        log_tail(&self.log)
                    );
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {addr} within {START_TIMEOUT:?}:\n{}",
                    self.name,
                    log_tail(&self.log)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of our own unreaped child: it cannot
            // have been recycled for another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!(
                    "ckpt-bench drain: {} (pid {}) ignored SIGTERM; killing it",
                    self.name,
                    child.id()
                );
                child.kill()?;
                child.wait()?;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("ckpt-bench drain: stopping {}: {e:#}", self.name);
        }
    }
}

/// A TCP port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// How to run the ckptfs binary with the built-in defaults, whatever
/// /etc/ckptfs.toml or $CKPTFS_CONFIG say.
struct Ckptfs {
    bin: PathBuf,
    config: PathBuf,
    key: PathBuf,
    /// Mount daemons run under `nice -n 19 ionice -c 3`.
    nice_daemon: bool,
}

impl Ckptfs {
    fn setup(bin: PathBuf, dir: &Path, nice_daemon: bool) -> anyhow::Result<Ckptfs> {
        let config = dir.join("ckptfs.toml");
        fs::write(&config, "# ckpt-bench drain: ckptfs's built-in defaults\n")
            .with_context(|| format!("writing {}", config.display()))?;
        let key = dir.join("dr.key");
        crate::host::write_dr_key(&key)?;
        Ok(Ckptfs {
            bin,
            config,
            key,
            nice_daemon,
        })
    }

    /// `ckptfs --config EMPTY --cache CACHE`
    fn cmd(&self, cache: &Path) -> Command {
        self.cmd_in(Command::new(&self.bin), cache)
    }

    /// The same for a mount daemon, with `nice` and `ionice` in front
    /// when asked (both exec ckptfs: the pid stays the daemon's).
    fn daemon_cmd(&self, cache: &Path) -> Command {
        if !self.nice_daemon {
            return self.cmd(cache);
        }
        let mut cmd = Command::new("nice");
        cmd.args(["-n", "19", "ionice", "-c", "3"]).arg(&self.bin);
        self.cmd_in(cmd, cache)
    }

    fn cmd_in(&self, mut cmd: Command, cache: &Path) -> Command {
        cmd.env_remove("CKPTFS_CONFIG")
            .env_remove("RUST_LOG")
            .arg("--config")
            .arg(&self.config)
            .arg("--cache")
            .arg(cache);
        cmd
    }

    /// `ckptfs put JOB DATA/* --set SET` into `cache` (not timed).
    fn put(&self, cache: &Path, src: &Path, set: &str) -> anyhow::Result<()> {
        run_ok(
            self.cmd(cache)
                .arg("put")
                .arg(JOB)
                .args(Data::files(src))
                .arg("--set")
                .arg(set),
        )?;
        Ok(())
    }

    /// `ckptfs serve --root ROOT --listen 127.0.0.1:PORT --key KEY`, once
    /// it accepts connections.
    fn serve(&self, root: &Path, log: &Path) -> anyhow::Result<(Proc, u16)> {
        let port = free_port()?;
        let mut cmd = Command::new(&self.bin);
        cmd.env_remove("CKPTFS_CONFIG")
            .env("RUST_LOG", "warn")
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .arg("--root")
            .arg(root)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--key")
            .arg(&self.key);
        let mut p = Proc::spawn("ckptfs serve", &mut cmd, log)?;
        p.wait_port(port)?;
        Ok((p, port))
    }

    /// The flags naming a DR tier at 127.0.0.1:`port`.
    fn dr_flags(&self, port: u16) -> Vec<String> {
        vec![
            "--dr".into(),
            format!("127.0.0.1:{port}"),
            "--dr-key".into(),
            self.key.display().to_string(),
        ]
    }

    fn version(&self) -> String {
        run_ok(Command::new(&self.bin).arg("--version"))
            .map(|o| String::from_utf8_lossy(&o).trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    }
}

/// One `ckptfs drain --wait` in the foreground (embedded drain, no mount);
/// seconds and what its log says of each set it drained.
struct Drained {
    secs: f64,
    /// set → bytes_sent, from `RUST_LOG=libckpt=info`'s `drained` line.
    sent: HashMap<String, u64>,
    /// The DR push's zstd level at the end of the last set, from its
    /// `set pushed to the DR site` line.
    level: Option<i32>,
}

fn drain_wait(ck: &Ckptfs, cache: &Path, tier: &[String], log: &Path) -> anyhow::Result<Drained> {
    let mut cmd = ck.cmd(cache);
    cmd.env("RUST_LOG", "libckpt=info")
        .args(tier)
        .args(["--drain-jitter", "0s", "drain", "--wait"])
        .arg("--timeout")
        .arg(format!("{}s", DRAIN_TIMEOUT.as_secs()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).with_context(|| format!("creating {}", log.display()))?);
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    let secs = start.elapsed().as_secs_f64();
    let text = fs::read_to_string(log).unwrap_or_default();
    ensure!(
        status.success(),
        "{cmd:?} failed ({status}):\n{}",
        log_tail(log)
    );
    Ok(Drained {
        secs,
        sent: parse_drained(&text),
        level: text
            .lines()
            .rev()
            .filter(|l| l.contains("set pushed to the DR site"))
            .find_map(|l| log_field(l, "zstd_level")?.parse().ok()),
    })
}

/// `… drained tier=dr job=J set=S bytes_read=N bytes_sent=N skipped=N`
/// lines: set → bytes_sent.
fn parse_drained(log: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for line in log.lines().filter(|l| l.contains(" drained ")) {
        if let (Some(set), Some(sent)) = (log_field(line, "set"), log_field(line, "bytes_sent")) {
            if let Ok(n) = sent.parse() {
                out.insert(set.to_owned(), n);
            }
        }
    }
    out
}

/// The files of a DR receiver's chunk store: name → size.
fn chunk_files(root: &Path) -> anyhow::Result<HashMap<PathBuf, u64>> {
    let mut out = HashMap::new();
    let dir = root.join("chunks");
    let Ok(fans) = fs::read_dir(&dir) else {
        return Ok(out);
    };
    for fan in fans {
        let fan = fan?;
        if !fan.file_type()?.is_dir() {
            continue;
        }
        for e in fs::read_dir(fan.path())? {
            let e = e?;
            if e.file_name().as_bytes().starts_with(b".") {
                continue;
            }
            out.insert(e.path(), e.metadata()?.len());
        }
    }
    Ok(out)
}

fn record_size(root: &Path, set: &str) -> anyhow::Result<u64> {
    let p = root.join("sets").join(JOB).join(format!("{set}.json"));
    Ok(fs::metadata(&p)
        .with_context(|| format!("the receiver has no record {}", p.display()))?
        .len())
}

/// A ckptfs mount of our own, in the foreground: unmounted and reaped on
/// drop, also when the benchmark fails half-way.
struct Mount<'a> {
    ck: &'a Ckptfs,
    cache: PathBuf,
    mountpoint: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl<'a> Mount<'a> {
    fn start(
        ck: &'a Ckptfs,
        cache: &Path,
        mountpoint: &Path,
        tier: &[String],
        log: &Path,
    ) -> anyhow::Result<Mount<'a>> {
        if mounted_fstype(mountpoint).as_deref() == Some(FSTYPE) {
            // Left by a killed run.
            detach(mountpoint)?;
        }
        fs::create_dir_all(cache)?;
        fs::create_dir_all(mountpoint)?;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = ck.daemon_cmd(cache);
        cmd.env("RUST_LOG", "libckpt=info")
            .args(tier)
            .args(["--drain-jitter", "0s", "mount"])
            .arg(mountpoint)
            .arg("--foreground")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = stop_with_us(&mut cmd)
            .spawn()
            .with_context(|| format!("starting {cmd:?} (set --ckptfs)"))?;
        let mut m = Mount {
            ck,
            cache: cache.to_owned(),
            mountpoint: mountpoint.to_owned(),
            log: log.to_owned(),
            child: Some(child),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = m.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    m.child = None;
                    bail!(
                        "ckptfs mount {} exited ({status}) before the mount was live:\n{}",
                        mountpoint.display(),
                        log_tail(log)
                    );
                }
            }
            if mounted_fstype(mountpoint).as_deref() == Some(FSTYPE) {
                return Ok(m);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not show up as {FSTYPE} within {START_TIMEOUT:?}:\n{}",
                    mountpoint.display(),
                    log_tail(log)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn status(&self) -> anyhow::Result<Value> {
        let out = run_ok(
            self.ck
                .cmd(&self.cache)
                .arg("status")
                .arg(&self.mountpoint)
                .arg("--json"),
        )?;
        serde_json::from_slice(&out).context("parsing `ckptfs status --json`")
    }

    /// `ckptfs commit M/JOB/SET`.
    fn commit(&self, set: &str) -> anyhow::Result<()> {
        run_ok(
            self.ck
                .cmd(&self.cache)
                .arg("commit")
                .arg(self.mountpoint.join(JOB).join(set)),
        )?;
        Ok(())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let umount = self
            .ck
            .cmd(&self.cache)
            .arg("umount")
            .arg(&self.mountpoint)
            .arg("--force")
            .stdin(Stdio::null())
            .output();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let mut killed = false;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!(
                    "ckpt-bench drain: the daemon of {} did not exit; killing pid {}",
                    self.mountpoint.display(),
                    child.id()
                );
                child.kill()?;
                child.wait()?;
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
                "ckptfs umount {} --force: {} {}\n{}",
                self.mountpoint.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim(),
                log_tail(&self.log)
            ),
            Err(e) => Err(e).context("running ckptfs umount"),
        }
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "ckpt-bench drain: cleaning up {}: {e:#}",
                self.mountpoint.display()
            );
        }
    }
}

/// The `drain[]` entry of `tier` in a daemon's status.
fn tier_status<'v>(status: &'v Value, tier: &str) -> anyhow::Result<&'v Value> {
    status["drain"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["tier"] == tier))
        .with_context(|| format!("`ckptfs status --json` shows no drain to {tier}: {status}"))
}

/// The pending entry of JOB/`set` on `tier`, if the set is not there yet.
fn pending<'v>(status: &'v Value, tier: &str, set: &str) -> anyhow::Result<Option<&'v Value>> {
    Ok(tier_status(status, tier)?["pending"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["job"] == JOB && p["set"] == set)))
}

/// Which tiers benchmark 4's mount drains to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RpoTiers {
    /// Both at once, as a node configured with both runs.
    Both,
    /// The PFS alone: the machine's disk and cores are the PFS drain's,
    /// as they would be on a cluster where the DR site is elsewhere.
    PfsAlone,
    /// The DR site alone.
    DrAlone,
}

impl RpoTiers {
    fn label(self) -> &'static str {
        match self {
            RpoTiers::Both => "both tiers",
            RpoTiers::PfsAlone => "PFS alone",
            RpoTiers::DrAlone => "DR alone",
        }
    }

    /// The figure's key for `tier` ("pfs" or "dr") in this variant.
    fn key(self, tier: &str) -> String {
        match self {
            RpoTiers::Both => format!("rpo.{tier}.secs"),
            _ => format!("rpo.{tier}_alone.secs"),
        }
    }
}

/// An rsync daemon on loopback with one writable module, `bench`.
struct Rsyncd {
    proc: Proc,
    port: u16,
    module: PathBuf,
}

impl Rsyncd {
    fn start(dir: &Path, tiers: &Path) -> anyhow::Result<Rsyncd> {
        let module = tiers.join("rsync-module");
        fs::create_dir_all(&module)?;
        let port = free_port()?;
        let config = dir.join("rsyncd.conf");
        fs::write(
            &config,
            format!(
                "use chroot = no\nlog file = {}\n[bench]\n    path = {}\n    read only = no\n    \
                 uid = root\n    gid = root\n",
                dir.join("rsyncd.log").display(),
                module.display()
            ),
        )?;
        let mut cmd = Command::new("rsync");
        cmd.arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", config.display()))
            .arg(format!("--port={port}"))
            .arg("--address=127.0.0.1");
        let mut proc = Proc::spawn("rsync --daemon", &mut cmd, &dir.join("rsyncd.out"))
            .context("is rsync installed? (apt-get install -y rsync)")?;
        proc.wait_port(port)?;
        Ok(Rsyncd { proc, port, module })
    }

    /// `rsync FLAGS --stats SRC/ rsync://127.0.0.1:PORT/bench/DEST/`:
    /// seconds, and the bytes the client sent (its `--stats`).
    fn push(&self, flags: &str, src: &Path, dest: &str) -> anyhow::Result<(f64, u64)> {
        let mut cmd = Command::new("rsync");
        cmd.arg(flags)
            .arg("--stats")
            .arg(format!("{}/", src.display()))
            .arg(format!("rsync://127.0.0.1:{}/bench/{dest}/", self.port));
        let start = Instant::now();
        let out = run_ok(&mut cmd)?;
        let secs = start.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out);
        let sent = text
            .lines()
            .find_map(|l| l.strip_prefix("Total bytes sent:"))
            .map(|n| n.trim().replace(',', ""))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no `Total bytes sent` in rsync --stats:\n{text}"))?;
        Ok((secs, sent))
    }

    /// The compression `rsync -z` negotiates with this daemon.
    fn negotiated(&self, src: &Path) -> String {
        let probe = self.module.join(".probe");
        let out = Command::new("rsync")
            .args(["-az", "--debug=NSTR", "--dry-run"])
            .arg(src.join(rank_name(0)))
            .arg(format!("rsync://127.0.0.1:{}/bench/.probe", self.port))
            .stdin(Stdio::null())
            .output();
        let _ = fs::remove_file(probe);
        out.ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .and_then(|t| {
                t.lines()
                    .find(|l| l.contains("compress"))
                    .map(|l| l.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into())
    }
}

/// A command timed around its process; seconds.
fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let start = Instant::now();
    run_ok(cmd)?;
    Ok(start.elapsed().as_secs_f64())
}

/// `sync` timed: what a copy left dirty in the page cache, written.
fn timed_sync() -> f64 {
    let start = Instant::now();
    settle();
    start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------
// The benchmarks.
// ---------------------------------------------------------------------------

struct Ctx<'a> {
    args: &'a Args,
    ck: &'a Ckptfs,
    data: &'a Data,
    work: PathBuf,
    /// Where the tiers' bytes go (--tiers-dir).
    tiers: PathBuf,
    logs: PathBuf,
    rsyncd: Option<Rsyncd>,
    fig: Figures,
}

impl Ctx<'_> {
    fn has(&self, b: Bench) -> bool {
        self.args.only.contains(&b)
    }

    fn log(&self, name: &str, round: usize) -> PathBuf {
        self.logs.join(format!("{name}-r{round}.log"))
    }

    /// A fresh directory for a tier's bytes, removed when dropped.
    fn tier_dir(&self, name: &str) -> anyhow::Result<Scratch> {
        Scratch::new(self.tiers.join(name))
    }

    fn say(&self, round: usize, what: &str) {
        eprintln!("round {}/{}: {what}", round + 1, self.args.runs);
    }

    /// Benchmarks 1 and 2, ckptfs side: set A drained to a fresh receiver,
    /// then set B after it.
    fn push_ckptfs(&mut self, round: usize) -> anyhow::Result<()> {
        let s = Scratch::new(self.work.join("push-ckptfs"))?;
        let t = self.tier_dir("push-dr")?;
        let (cache, root) = (s.join("cache"), t.join("root"));
        self.ck.put(&cache, &self.data.a, SET_A)?;
        let (mut serve, port) = self.ck.serve(&root, &self.log("serve-push", round))?;
        let tier = self.ck.dr_flags(port);
        quiesce(QUIET)?;
        let d = drain_wait(self.ck, &cache, &tier, &self.log("drain-a", round))?;
        let chunks_a = chunk_files(&root)?;
        let stored_a = chunks_a.values().sum::<u64>() + record_size(&root, SET_A)?;
        let sent_a = d.sent.get(SET_A).copied();
        self.fig.put("push.ckptfs.secs", round, d.secs);
        self.fig.put("push.ckptfs.stored", round, stored_a as f64);
        self.fig
            .put("push.ckptfs.distinct", round, chunks_a.len() as f64);
        if let Some(n) = sent_a {
            self.fig.put("push.ckptfs.sent", round, n as f64);
        }
        if let Some(l) = d.level {
            self.fig.put("push.ckptfs.level", round, f64::from(l));
        }
        self.say(
            round,
            &format!(
                "ckptfs drain → serve       {:>6.2} s {:>6.0} MB/s, sent {}, stored {} in {} chunks",
                d.secs,
                mb_per_s(self.data.size, d.secs),
                sent_a.map_or("?".into(), |n| ByteSize(n).to_string()),
                ByteSize(stored_a),
                chunks_a.len()
            ),
        );
        if self.has(Bench::Delta) {
            self.ck.put(&cache, &self.data.b, SET_B)?;
            quiesce(QUIET)?;
            let d = drain_wait(self.ck, &cache, &tier, &self.log("drain-b", round))?;
            let after = chunk_files(&root)?;
            let new: u64 = after
                .iter()
                .filter(|(p, _)| !chunks_a.contains_key(*p))
                .map(|(_, n)| n)
                .sum();
            let stored_b = new + record_size(&root, SET_B)?;
            let sent_b = d.sent.get(SET_B).copied();
            self.fig.put("delta.ckptfs.secs", round, d.secs);
            self.fig.put("delta.ckptfs.stored", round, stored_b as f64);
            self.fig.put(
                "delta.ckptfs.new_chunks",
                round,
                (after.len() - chunks_a.len()) as f64,
            );
            if let Some(n) = sent_b {
                self.fig.put("delta.ckptfs.sent", round, n as f64);
            }
            self.say(
                round,
                &format!(
                    "ckptfs drain of set B      {:>6.2} s, sent {} ({:.2} % of the set), {} new chunks",
                    d.secs,
                    sent_b.map_or("?".into(), |n| ByteSize(n).to_string()),
                    100.0 * sent_b.unwrap_or(stored_b) as f64 / self.data.size as f64,
                    after.len() - chunks_a.len()
                ),
            );
        }
        serve.stop()?;
        Ok(())
    }

    /// Benchmark 1 (and 2, for reference), rsync side.
    fn push_rsync(&mut self, round: usize, compress: bool) -> anyhow::Result<()> {
        let rsyncd = self
            .rsyncd
            .as_ref()
            .context("the rsync daemon is not running")?;
        let (flags, name) = if compress {
            ("-az", "rsync_z")
        } else {
            ("-a", "rsync")
        };
        let dest = format!("r{round}-{name}");
        let out = rsyncd.module.join(&dest);
        remove_dir(&out)?;
        quiesce(QUIET)?;
        let (secs, wire) = rsyncd.push(flags, &self.data.a, &dest)?;
        let sync = timed_sync();
        let key = |k: &str| -> &'static str {
            match (compress, k) {
                (true, "secs") => "push.rsync_z.secs",
                (true, "sync") => "push.rsync_z.sync",
                (true, _) => "push.rsync_z.wire",
                (false, "secs") => "push.rsync.secs",
                (false, "sync") => "push.rsync.sync",
                (false, _) => "push.rsync.wire",
            }
        };
        self.fig.put(key("secs"), round, secs);
        self.fig.put(key("sync"), round, secs + sync);
        self.fig.put(key("wire"), round, wire as f64);
        self.say(
            round,
            &format!(
                "rsync {flags:<3} → daemon         {secs:>6.2} s {:>6.0} MB/s (+ sync {sync:.2} s), sent {}",
                mb_per_s(self.data.size, secs),
                ByteSize(wire)
            ),
        );
        if compress && self.has(Bench::Delta) {
            // rsync's own delta transfer of set B onto its copy of set A.
            quiesce(QUIET)?;
            let (secs, wire) = rsyncd.push(flags, &self.data.b, &dest)?;
            self.fig.put("delta.rsync_z.secs", round, secs);
            self.fig.put("delta.rsync_z.wire", round, wire as f64);
            self.say(
                round,
                &format!(
                    "rsync -az of set B onto A  {secs:>6.2} s, sent {}",
                    ByteSize(wire)
                ),
            );
        }
        remove_dir(&out)?;
        settle();
        Ok(())
    }

    /// Benchmark 3, one variant: `dd` of twice SIZE into a mount whose
    /// cache holds set A, draining at `--rate` to `tier` (or not at all).
    fn writer(&mut self, round: usize, tier: Option<&'static str>) -> anyhow::Result<()> {
        let name = tier.unwrap_or("idle");
        let s = Scratch::new(self.work.join(format!("writer-{name}")))?;
        let t = self.tier_dir(&format!("writer-{name}"))?;
        let (cache, mp) = (s.join("cache"), s.join("mnt"));
        quiesce(QUIET)?;
        // Not timed: the previously committed set that drains meanwhile
        // (in the idle variant too, so the caches are alike).
        self.ck.put(&cache, &self.data.a, SET_A)?;
        let rate = self.args.rate.to_string();
        let mut flags: Vec<String> = Vec::new();
        let mut serve = None;
        match tier {
            Some("dr") => {
                let (p, port) = self
                    .ck
                    .serve(&t.join("root"), &self.log("serve-writer", round))?;
                serve = Some(p);
                flags.extend(self.ck.dr_flags(port));
                flags.extend(["--dr-rate".into(), rate]);
            }
            Some(_) => {
                let pfs = t.join("pfs");
                fs::create_dir_all(&pfs)?;
                flags.extend(["--pfs".into(), pfs.display().to_string()]);
                flags.extend(["--pfs-rate".into(), rate]);
            }
            None => {}
        }
        let m = Mount::start(
            self.ck,
            &cache,
            &mp,
            &flags,
            &self.log(&format!("mount-writer-{name}"), round),
        )?;
        // Wait for the drain to be moving bytes.
        let mut done_before = 0u64;
        if let Some(t) = tier {
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                let st = m.status()?;
                let ts = tier_status(&st, t)?;
                let moving = pending(&st, t, SET_A)?.is_some_and(|p| p["state"] == "in_flight")
                    && ts["in_flight_bytes_done"].as_u64().unwrap_or(0) > 0;
                if moving {
                    done_before = ts["in_flight_bytes_done"].as_u64().unwrap_or(0);
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "the drain to {t} did not start within {START_TIMEOUT:?}: {ts}"
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
        let dir = mp.join(JOB).join(SET_W);
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let bytes = 2 * self.data.size;
        let start = Instant::now();
        run_ok(
            Command::new("dd")
                .arg("if=/dev/zero")
                .arg(format!("of={}", dir.join("f").display()))
                .arg("bs=1M")
                .arg(format!("count={}", bytes / MIB))
                .arg("conv=fsync"),
        )?;
        let secs = start.elapsed().as_secs_f64();
        let len = fs::metadata(dir.join("f"))?.len();
        ensure!(len == bytes, "dd wrote {len} bytes of {bytes}");
        let rate = mb_per_s(bytes, secs);
        let key_rate: &'static str = match tier {
            Some("dr") => "writer.dr.mbs",
            Some(_) => "writer.pfs.mbs",
            None => "writer.idle.mbs",
        };
        self.fig.put(key_rate, round, rate);
        let mut note = String::new();
        if let Some(t) = tier {
            let st = m.status()?;
            let still = pending(&st, t, SET_A)?.is_some();
            let done_after = tier_status(&st, t)?["in_flight_bytes_done"]
                .as_u64()
                .unwrap_or(0);
            let drained = done_after.saturating_sub(done_before);
            let (k_over, k_rate): (&'static str, &'static str) = if t == "dr" {
                ("writer.dr.overlap", "writer.dr.drain_mbs")
            } else {
                ("writer.pfs.overlap", "writer.pfs.drain_mbs")
            };
            self.fig.put(k_over, round, f64::from(u8::from(still)));
            if still {
                self.fig.put(k_rate, round, mb_per_s(drained, secs));
            }
            let _ = write!(
                note,
                ", drain {} during dd ({:.0} MB/s){}",
                if still { "running" } else { "FINISHED" },
                mb_per_s(drained, secs),
                if still { "" } else { " — not a valid sample" }
            );
        }
        self.say(
            round,
            &format!("dd into /ckpt, drain {name:<5} {secs:>6.2} s {rate:>6.0} MB/s{note}"),
        );
        drop(m);
        if let Some(mut p) = serve {
            p.stop()?;
        }
        Ok(())
    }

    /// Benchmark 4: set A written into a mount draining at full speed to
    /// `tiers` (both, or one alone), committed, and watched until each
    /// tier holds it. A variant with the PFS leaves its copy in `pfs` for
    /// benchmark 5.
    fn rpo(&mut self, round: usize, pfs: &Path, tiers: RpoTiers) -> anyhow::Result<()> {
        let s = Scratch::new(self.work.join("rpo"))?;
        let (cache, mp) = (s.join("cache"), s.join("mnt"));
        let (to_pfs, to_dr) = (tiers != RpoTiers::DrAlone, tiers != RpoTiers::PfsAlone);
        if to_pfs {
            remove_dir(pfs)?;
            fs::create_dir_all(pfs)?;
        }
        quiesce(QUIET)?;
        let t = self.tier_dir("rpo-dr")?;
        let mut flags = Vec::new();
        let mut serve = None;
        if to_dr {
            let (srv, port) = self
                .ck
                .serve(&t.join("root"), &self.log("serve-rpo", round))?;
            serve = Some(srv);
            flags.extend(self.ck.dr_flags(port));
        }
        if to_pfs {
            flags.extend(["--pfs".into(), pfs.display().to_string()]);
        }
        let m = Mount::start(self.ck, &cache, &mp, &flags, &self.log("mount-rpo", round))?;
        let dir = mp.join(JOB).join(SET_A);
        fs::create_dir_all(&dir)?;
        // Not timed: the application writing its checkpoint.
        run_ok(Command::new("cp").args(Data::files(&self.data.a)).arg(&dir))?;
        let c0 = Instant::now();
        m.commit(SET_A)?;
        let t0 = Instant::now();
        let commit = t0 - c0;
        let watched: Vec<&str> = [(to_pfs, "pfs"), (to_dr, "dr")]
            .into_iter()
            .filter_map(|(on, t)| on.then_some(t))
            .collect();
        let mut on: Vec<Option<f64>> = vec![None; watched.len()];
        while on.iter().any(Option::is_none) {
            let st = m.status()?;
            let now = t0.elapsed().as_secs_f64();
            for (i, t) in watched.iter().enumerate() {
                if on[i].is_none() {
                    match pending(&st, t, SET_A)? {
                        None => on[i] = Some(now),
                        Some(p) if p["state"] == "failed" => {
                            bail!("the drain to {t} failed: {p}")
                        }
                        Some(_) => {}
                    }
                }
            }
            ensure!(
                t0.elapsed() < DRAIN_TIMEOUT,
                "the set did not drain within {DRAIN_TIMEOUT:?}"
            );
            thread::sleep(POLL);
        }
        let mut said = Vec::new();
        for (t, secs) in watched.iter().zip(&on) {
            let secs = secs.unwrap_or(f64::NAN);
            self.fig.put(&tiers.key(t), round, secs);
            said.push(format!("on {} after {secs:.2} s", t.to_uppercase()));
        }
        self.say(
            round,
            &format!(
                "RPO ({}): commit {:.2} s, then {}",
                tiers.label(),
                commit.as_secs_f64(),
                said.join(", ")
            ),
        );
        drop(m);
        if let Some(mut serve) = serve {
            serve.stop()?;
        }
        Ok(())
    }

    /// Benchmark 4's PFS baseline: `cp -r` of the set to a directory on the
    /// same filesystem as the PFS tier, then `sync` (the tier's copy is
    /// durable when it counts as done).
    fn rpo_cp(&mut self, round: usize) -> anyhow::Result<()> {
        let s = self.tier_dir("rpo-cp")?;
        let to = s.join(SET_A);
        quiesce(QUIET)?;
        let copy = timed(Command::new("cp").arg("-r").arg(&self.data.a).arg(&to))?;
        let sync = timed_sync();
        ensure!(
            tree_bytes(&to) == self.data.size,
            "cp -r copied a short set"
        );
        self.fig.put("rpo.cp.secs", round, copy + sync);
        self.say(
            round,
            &format!(
                "cp -r to the PFS dir + sync {:>6.2} s ({copy:.2} + {sync:.2})",
                copy + sync
            ),
        );
        Ok(())
    }

    /// Benchmark 5, one variant, from the PFS copy in `pfs`.
    fn rto(&mut self, round: usize, pfs: &Path, restore: bool) -> anyhow::Result<()> {
        let s = Scratch::new(self.work.join("rto"))?;
        let to = s.join("restored");
        quiesce(QUIET)?;
        if restore {
            let secs = timed(
                self.ck
                    .cmd(&s.join("empty-cache"))
                    .arg("--pfs")
                    .arg(pfs)
                    .args(["restore", JOB, SET_A, "--to"])
                    .arg(&to),
            )?;
            ensure!(tree_bytes(&to) == self.data.size, "the restore is short");
            self.fig.put("rto.restore.secs", round, secs);
            self.say(
                round,
                &format!(
                    "ckptfs restore from PFS     {secs:>6.2} s {:>6.0} MB/s",
                    mb_per_s(self.data.size, secs)
                ),
            );
        } else {
            let copy = timed(
                Command::new("cp")
                    .arg("-r")
                    .arg(pfs.join(JOB).join(SET_A))
                    .arg(&to),
            )?;
            let sync = timed_sync();
            ensure!(
                tree_bytes(&to) == self.data.size,
                "cp -r copied a short set"
            );
            self.fig.put("rto.cp.secs", round, copy);
            self.fig.put("rto.cp_sync.secs", round, copy + sync);
            self.say(
                round,
                &format!(
                    "cp -r from PFS              {copy:>6.2} s {:>6.0} MB/s (+ sync {sync:.2} s)",
                    mb_per_s(self.data.size, copy)
                ),
            );
        }
        Ok(())
    }

    /// Benchmark 5's source when benchmark 4 did not run: set A drained to
    /// `pfs` (not timed).
    fn pfs_copy(&self, pfs: &Path) -> anyhow::Result<()> {
        let s = Scratch::new(self.work.join("pfs-prep"))?;
        let cache = s.join("cache");
        remove_dir(pfs)?;
        fs::create_dir_all(pfs)?;
        self.ck.put(&cache, &self.data.a, SET_A)?;
        let tier = vec!["--pfs".to_owned(), pfs.display().to_string()];
        drain_wait(self.ck, &cache, &tier, &self.logs.join("pfs-prep.log"))?;
        Ok(())
    }

    fn round(&mut self, round: usize) -> anyhow::Result<()> {
        // Neighbours share the cores: say how busy the machine was.
        let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        self.say(
            round,
            &format!(
                "load average {}",
                load.split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        );
        // Rotate a list of variants by the round number.
        fn rotated<T: Copy>(v: &[T], round: usize) -> Vec<T> {
            (0..v.len()).map(|k| v[(round + k) % v.len()]).collect()
        }
        let ckptfs_side = self.has(Bench::Push) || self.has(Bench::Delta) || self.has(Bench::Rpo);
        let mut push: Vec<u8> = Vec::new();
        if ckptfs_side {
            push.push(0);
        }
        if self.has(Bench::Push) || self.has(Bench::Delta) {
            push.extend([1, 2]);
        }
        for v in rotated(&push, round) {
            match v {
                0 => self.push_ckptfs(round)?,
                1 => self.push_rsync(round, true)?,
                _ => self.push_rsync(round, false)?,
            }
        }
        if self.has(Bench::Writer) {
            for t in rotated(&[None, Some("dr"), Some("pfs")], round) {
                self.writer(round, t)?;
            }
        }
        let pfs = self.tiers.join("pfs");
        if self.has(Bench::Rpo) {
            let variants = [
                Some(RpoTiers::Both),
                Some(RpoTiers::PfsAlone),
                Some(RpoTiers::DrAlone),
                None,
            ];
            for v in rotated(&variants, round) {
                match v {
                    Some(tiers) => self.rpo(round, &pfs, tiers)?,
                    None => self.rpo_cp(round)?,
                }
            }
        }
        if self.has(Bench::Rto) {
            if !self.has(Bench::Rpo) {
                self.pfs_copy(&pfs)?;
            }
            for v in rotated(&[true, false], round) {
                self.rto(round, &pfs, v)?;
            }
        }
        remove_dir(&pfs)?;
        settle();
        Ok(())
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.size >= FILES * CHUNK && args.size.is_multiple_of(FILES * CHUNK),
        "--size must be a positive whole number of 8 MiB (8 files of whole 1 MiB chunks), got {}",
        args.size
    );
    require_root("ckpt-bench drain mounts filesystems and drops the page cache")?;
    let mut only = args.only.clone();
    only.sort();
    only.dedup();
    ensure!(!only.is_empty(), "no benchmark to run");
    let bin = ckptfs_bin(args.ckptfs.as_deref())?;

    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let data_dir = dir.join("data");
    let data_kept = tree_bytes(&data_dir);
    let free = machine::free_bytes(&dir)? + data_kept;
    let need = 6 * args.size + DISK_MARGIN;
    ensure!(
        free >= need,
        "{} has {} free; this run needs {} (six times --size plus {})",
        dir.display(),
        ByteSize(free),
        ByteSize(need),
        ByteSize(DISK_MARGIN)
    );
    let machine = Machine::probe(&dir);
    eprintln!("ckpt-bench drain: {machine}");

    let work = dir.join("work");
    let logs = dir.join("logs");
    // Under a directory of our own, so that the cleanup never removes
    // what --tiers-dir names.
    let tiers = match &args.tiers_dir {
        Some(d) => d.join("ckpt-dbench-tiers"),
        None => work.join("tiers"),
    };
    remove_dir(&work)?;
    remove_dir(&logs)?;
    remove_dir(&tiers)?;
    fs::create_dir_all(&work)?;
    fs::create_dir_all(&logs)?;
    fs::create_dir_all(&tiers).with_context(|| format!("creating {}", tiers.display()))?;
    let tiers = tiers.canonicalize()?;
    let result = (|| -> anyhow::Result<String> {
        let data = Data::prepare(&data_dir, args.size)?;
        let zstd = zstd_size(&Data::files(&data.a));
        if let Some(z) = zstd {
            eprintln!(
                "ckpt-bench drain: zstd -3 compresses set A {:.2}:1",
                data.size as f64 / z as f64
            );
        }
        let ck = Ckptfs::setup(bin.clone(), &dir, args.nice_daemon)?;
        let a = Args {
            only: only.clone(),
            ..args.clone()
        };
        let mut ctx = Ctx {
            args: &a,
            ck: &ck,
            data: &data,
            work: work.clone(),
            tiers: tiers.clone(),
            logs: logs.clone(),
            rsyncd: None,
            fig: Figures::new(args.runs as usize),
        };
        let mut rsync = String::new();
        if ctx.has(Bench::Push) || ctx.has(Bench::Delta) {
            let r = Rsyncd::start(&work, &tiers)?;
            rsync = format!(
                "{}; `-z` negotiates: {}",
                run_ok(Command::new("rsync").arg("--version"))
                    .map(|o| String::from_utf8_lossy(&o)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_owned())
                    .unwrap_or_default(),
                r.negotiated(&data.a)
            );
            ctx.rsyncd = Some(r);
        }
        for round in 0..args.runs as usize {
            ctx.round(round)?;
        }
        if let Some(mut r) = ctx.rsyncd.take() {
            r.proc.stop()?;
        }
        let info = Info {
            machine: &machine,
            dir: &dir,
            tiers: &tiers,
            ckptfs: ck.version(),
            rsync,
            zstd,
        };
        Ok(markdown(&a, &info, &data, &ctx.fig))
    })();
    remove_dir(&work)?;
    remove_dir(&tiers)?;
    if result.is_ok() {
        remove_dir(&logs)?;
    } else {
        eprintln!("ckpt-bench drain: logs kept in {}", logs.display());
    }
    if !args.keep_data {
        remove_dir(&data_dir)?;
    }
    let _ = fs::remove_file(dir.join("ckptfs.toml"));
    let _ = fs::remove_file(dir.join("dr.key"));
    if !args.keep_data && result.is_ok() {
        let _ = fs::remove_dir(&dir);
    }
    settle();
    let report = result?;
    crate::report::publish(&report, args.markdown.as_deref())?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The report.
// ---------------------------------------------------------------------------

struct Info<'a> {
    machine: &'a Machine,
    dir: &'a Path,
    tiers: &'a Path,
    ckptfs: String,
    rsync: String,
    zstd: Option<u64>,
}

fn markdown(args: &Args, info: &Info<'_>, data: &Data, fig: &Figures) -> String {
    let size = data.size as f64;
    let has = |b| args.only.contains(&b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### ckpt-bench drain: {} sets × {} rounds in {}\n",
        ByteSize(data.size),
        args.runs,
        info.dir.display()
    );
    let _ = writeln!(s, "- machine: {}", info.machine);
    let _ = writeln!(s, "- {}", info.ckptfs);
    if args.tiers_dir.is_some() {
        let _ = writeln!(
            s,
            "- **diagnostic**: the tiers (PFS dirs, DR roots, rsync module) in {} ({})",
            info.tiers.display(),
            Machine::probe(info.tiers).fs_type
        );
    }
    if args.nice_daemon {
        let _ = writeln!(
            s,
            "- **diagnostic**: mount daemons run under `nice -n 19 ionice -c 3`"
        );
    }
    if !info.rsync.is_empty() {
        let _ = writeln!(s, "- {}", info.rsync);
    }
    let kinds: Vec<String> = data
        .kinds
        .iter()
        .map(|(k, n)| format!("{k:?} {n}"))
        .collect();
    let _ = writeln!(
        s,
        "- data: {FILES} files × {}, {} chunks of 1 MiB ({}); `zstd -3` of the whole set: {}",
        ByteSize(data.size / FILES),
        data.chunks,
        kinds.join(", "),
        info.zstd.map_or("zstd not installed".into(), |z| format!(
            "{:.2}:1",
            size / z as f64
        ))
    );
    let _ = writeln!(
        s,
        "- set B: {} of the {} chunks ({:.1} %) rewritten in place, the rest identical",
        data.changed,
        data.chunks,
        100.0 * data.changed as f64 / data.chunks as f64
    );
    let _ = writeln!(
        s,
        "- `sync`, page cache dropped and a {} s pause before every timed transfer; MB/s = 10^6 bytes/s; ratios are medians of per-round ratios\n",
        QUIET.as_secs()
    );

    if has(Bench::Push) {
        let _ = writeln!(
            s,
            "#### 1. Drain of set A to `ckptfs serve` vs rsync (loopback)\n"
        );
        let _ = writeln!(
            s,
            "| variant | seconds per round | median s | median MB/s | bytes on the wire (median) | its time ÷ ckptfs's |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
        let rows: [(&str, &str, &str); 5] = [
            (
                "ckptfs drain → ckptfs serve",
                "push.ckptfs.secs",
                "push.ckptfs.sent",
            ),
            (
                "rsync -az → rsyncd",
                "push.rsync_z.secs",
                "push.rsync_z.wire",
            ),
            (
                "rsync -az, then sync",
                "push.rsync_z.sync",
                "push.rsync_z.wire",
            ),
            ("rsync -a → rsyncd", "push.rsync.secs", "push.rsync.wire"),
            ("rsync -a, then sync", "push.rsync.sync", "push.rsync.wire"),
        ];
        for (label, k, w) in rows {
            let med = fig.median(k);
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} |",
                cells(&fig.get(k), |x| format!("{x:.2}")),
                opt(med, |m| format!("{m:.2}")),
                opt(med, |m| format!("{:.0}", size / 1e6 / m)),
                opt(fig.median(w), |b| format!("{} MiB", mib(b))),
                if k == "push.ckptfs.secs" {
                    String::new()
                } else {
                    opt(fig.ratio(k, "push.ckptfs.secs"), |r| format!("{r:.2}×"))
                }
            );
        }
        let levels = fig.get("push.ckptfs.level");
        if levels.iter().any(Option::is_some) {
            let _ = writeln!(
                s,
                "\nThe push's zstd level (`--dr-zstd-level`, default auto) when set A was done, per round: {}.",
                cells(&levels, |l| format!("{l:.0}"))
            );
        }
        let stored = fig.median("push.ckptfs.stored");
        let _ = writeln!(
            s,
            "\nThe receiver stored {} MiB for set A (chunk files + record, median), {:.2}:1, in {} distinct chunks of {}.",
            opt(stored, mib),
            stored.map_or(f64::NAN, |b| size / b),
            opt(fig.median("push.ckptfs.distinct"), |n| format!("{n:.0}")),
            data.chunks
        );
        let r = fig.ratio("push.rsync_z.secs", "push.ckptfs.secs");
        let _ = writeln!(
            s,
            "Target ckptfs ≥ 2× faster than `rsync -az`: {} ({}).\n",
            verdict(r.map(|r| r >= 2.0)),
            opt(r, |r| format!("{r:.2}×"))
        );
    }

    if has(Bench::Delta) {
        let _ = writeln!(
            s,
            "#### 2. Set B (10 % of chunks changed) drained after set A\n"
        );
        let _ = writeln!(
            s,
            "| round | bytes_sent (drain log) | new bytes at the receiver (chunks + record) | new chunks | ÷ set size | seconds | rsync -az of B onto A: bytes sent, seconds |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        let g = |k: &str, r: usize| fig.get(k)[r];
        for r in 0..args.runs as usize {
            let sent = g("delta.ckptfs.sent", r);
            let stored = g("delta.ckptfs.stored", r);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r + 1,
                opt(sent, |b| format!("{b:.0} ({} MiB)", mib(b))),
                opt(stored, |b| format!("{b:.0} ({} MiB)", mib(b))),
                opt(g("delta.ckptfs.new_chunks", r), |n| format!("{n:.0}")),
                opt(sent.or(stored), |b| format!("{:.2} %", 100.0 * b / size)),
                opt(g("delta.ckptfs.secs", r), |x| format!("{x:.2}")),
                match (g("delta.rsync_z.wire", r), g("delta.rsync_z.secs", r)) {
                    (Some(b), Some(t)) => format!("{} MiB, {t:.2} s", mib(b)),
                    _ => "–".into(),
                }
            );
        }
        let worst = fig
            .get("delta.ckptfs.sent")
            .iter()
            .zip(fig.get("delta.ckptfs.stored"))
            .filter_map(|(a, b)| a.or(b))
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let _ = writeln!(
            s,
            "\nTarget bytes sent ≤ 12 % of the set: {} (worst round {}).\n",
            verdict(worst.map(|w| w <= 0.12 * size)),
            opt(worst, |w| format!("{:.2} %", 100.0 * w / size))
        );
    }

    if has(Bench::Writer) {
        let _ = writeln!(
            s,
            "#### 3. `dd` of {} into /ckpt while set A drains at {}/s vs idle\n",
            ByteSize(2 * data.size),
            ByteSize(args.rate)
        );
        let _ = writeln!(
            s,
            "| variant | MB/s per round | median MB/s | ÷ idle | drain still running at the end of dd | drain MB/s during dd (median) |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
        for (label, k, over, dr) in [
            ("idle (mount without tiers)", "writer.idle.mbs", "", ""),
            (
                "draining to `ckptfs serve`",
                "writer.dr.mbs",
                "writer.dr.overlap",
                "writer.dr.drain_mbs",
            ),
            (
                "draining to a PFS dir",
                "writer.pfs.mbs",
                "writer.pfs.overlap",
                "writer.pfs.drain_mbs",
            ),
        ] {
            let overlap = fig.get(over);
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} |",
                cells(&fig.get(k), |x| format!("{x:.0}")),
                opt(fig.median(k), |m| format!("{m:.0}")),
                if over.is_empty() {
                    String::new()
                } else {
                    opt(fig.ratio(k, "writer.idle.mbs"), |r| format!("{r:.2}×"))
                },
                if over.is_empty() {
                    String::new()
                } else {
                    format!(
                        "{}/{} rounds",
                        overlap.iter().flatten().filter(|x| **x > 0.5).count(),
                        overlap.iter().flatten().count()
                    )
                },
                if dr.is_empty() {
                    String::new()
                } else {
                    opt(fig.median(dr), |m| format!("{m:.0}"))
                }
            );
        }
        let r = [
            fig.ratio("writer.dr.mbs", "writer.idle.mbs"),
            fig.ratio("writer.pfs.mbs", "writer.idle.mbs"),
        ];
        let _ = writeln!(
            s,
            "\nTarget writer ≥ 0.9× idle: draining to DR {} ({}), to PFS {} ({}).\n",
            verdict(r[0].map(|r| r >= 0.9)),
            opt(r[0], |r| format!("{r:.2}×")),
            verdict(r[1].map(|r| r >= 0.9)),
            opt(r[1], |r| format!("{r:.2}×"))
        );
    }

    if has(Bench::Rpo) {
        let _ = writeln!(
            s,
            "#### 4. RPO: `ckptfs commit` returning → set A on each tier\n"
        );
        let _ = writeln!(
            s,
            "| tier | commit → on tier, s per round | baseline: that tier alone, s per round | goal 1.2 × baseline + 1 s, per round | median ÷ baseline | rounds within goal |"
        );
        let _ = writeln!(s, "|---|---|---|---|---:|---:|");
        let mut met = Vec::new();
        for (label, k, b) in [
            (
                "PFS, draining alone (baseline `cp -r` + `sync`)",
                "rpo.pfs_alone.secs",
                "rpo.cp.secs",
            ),
            (
                "DR, draining alone (baseline: the push drain of §1)",
                "rpo.dr_alone.secs",
                "push.ckptfs.secs",
            ),
            (
                "PFS, both tiers draining at once",
                "rpo.pfs.secs",
                "rpo.cp.secs",
            ),
            (
                "DR, both tiers draining at once",
                "rpo.dr.secs",
                "push.ckptfs.secs",
            ),
        ] {
            let (got, base) = (fig.get(k), fig.get(b));
            let goal: Vec<Option<f64>> = base.iter().map(|x| x.map(|x| 1.2 * x + 1.0)).collect();
            let within: Vec<bool> = got
                .iter()
                .zip(&goal)
                .filter_map(|(g, l)| Some(g.as_ref()? <= l.as_ref()?))
                .collect();
            let ok = within.iter().filter(|w| **w).count();
            met.push((!within.is_empty()).then_some(ok == within.len()));
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {ok}/{} |",
                cells(&got, |x| format!("{x:.2}")),
                cells(&base, |x| format!("{x:.2}")),
                cells(&goal, |x| format!("{x:.2}")),
                opt(fig.ratio(k, b), |r| format!("{r:.2}×")),
                within.len()
            );
        }
        let _ = writeln!(
            s,
            "\nGoal ≤ 1.2 × (bytes ÷ tier rate) + 1 s, each tier alone: PFS {}, DR {}; both at once: PFS {}, DR {} (polling `ckptfs status --json` every {} ms). Both at once, the two drains and the DR receiver share this machine's 2 cores and one disk.\n",
            verdict(met[0]),
            verdict(met[1]),
            verdict(met[2]),
            verdict(met[3]),
            POLL.as_millis()
        );
    }

    if has(Bench::Rto) {
        let _ = writeln!(
            s,
            "#### 5. RTO: empty cache → set A restored from the PFS\n"
        );
        let _ = writeln!(
            s,
            "| variant | seconds per round | median s | median MB/s | restore ÷ it |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|");
        for (label, k) in [
            ("ckptfs restore --from the PFS tier", "rto.restore.secs"),
            ("cp -r from the PFS dir", "rto.cp.secs"),
            ("cp -r, then sync", "rto.cp_sync.secs"),
        ] {
            let med = fig.median(k);
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} |",
                cells(&fig.get(k), |x| format!("{x:.2}")),
                opt(med, |m| format!("{m:.2}")),
                opt(med, |m| format!("{:.0}", size / 1e6 / m)),
                if k == "rto.restore.secs" {
                    String::new()
                } else {
                    opt(fig.ratio("rto.restore.secs", k), |r| format!("{r:.2}×"))
                }
            );
        }
        let r = fig.ratio("rto.restore.secs", "rto.cp.secs");
        let rs = fig.ratio("rto.restore.secs", "rto.cp_sync.secs");
        let _ = writeln!(
            s,
            "\nGoal restore ≤ 1.1× `cp -r`: {} ({}); against `cp -r` + `sync`: {} ({}).\n",
            verdict(r.map(|r| r <= 1.1)),
            opt(r, |r| format!("{r:.2}×")),
            verdict(rs.map(|r| r <= 1.1)),
            opt(rs, |r| format!("{r:.2}×"))
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic_and_mixed() {
        let a = layout(3, 256);
        assert_eq!(a, layout(3, 256));
        assert_eq!(a.len(), 256);
        let all: Vec<_> = (0..FILES).flat_map(|f| layout(f, 256)).collect();
        assert!(KINDS.iter().all(|(k, _)| all.iter().any(|(c, _)| c == k)));
        assert_eq!(KINDS.iter().map(|(_, s)| s).sum::<u64>(), 100);
    }

    #[test]
    fn exactly_ten_percent_change_and_never_a_zero_chunk() {
        let ch = changed_chunks(FILES, 256);
        let n: usize = ch.iter().flatten().filter(|c| **c).count();
        assert_eq!(n, (8 * 256 * 10usize).div_ceil(100));
        for (f, row) in ch.iter().enumerate() {
            let l = layout(f as u64, 256);
            for (c, changed) in row.iter().enumerate() {
                assert!(!*changed || l[c].0 != Kind::Zero);
            }
        }
    }

    #[test]
    fn a_changed_chunk_differs_and_an_unchanged_one_does_not() {
        let mut a = vec![0u8; CHUNK as usize];
        // Whatever the buffer held before, from another kind or version.
        let mut b = vec![0xa5u8; CHUNK as usize];
        for kind in [Kind::F64, Kind::F32, Kind::Int, Kind::Records, Kind::Sparse] {
            fill(&mut a, 1, 5, kind, 2, 0);
            fill(&mut b, 1, 5, kind, 2, 0);
            assert_eq!(a, b, "{kind:?}");
            fill(&mut b, 1, 5, kind, 2, 1);
            assert_ne!(a, b, "{kind:?}");
        }
    }

    #[test]
    fn drained_lines_are_parsed() {
        let log = "2026-11-27T10:00:00Z  INFO libckpt::drain: drained tier=dr job=dbench set=b \
                   bytes_read=2147483648 bytes_sent=123456 skipped=1843\n\
                   2026-11-27T10:00:00Z  INFO libckpt::drain: drain started tier=dr\n";
        let m = parse_drained(log);
        assert_eq!(m.get("b"), Some(&123456));
        assert_eq!(m.len(), 1);
    }
}
