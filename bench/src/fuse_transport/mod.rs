//! `ckpt-bench fuse-transport`: how much of a small file's cost through
//! /ckpt is the FUSE transport itself, and how much FUSE over io_uring
//! (Linux 6.14+) would take off it.
//!
//! ckptfs's mount speaks /dev/fuse through `fuser`, which has no io_uring
//! transport. So this probe mounts a minimal filesystem of its own
//! ([`memfs`]: names in memory, file bytes in a backing directory) and
//! serves it once over /dev/fuse ([`dev`], request threads as ckptfs
//! has) and once over io_uring ([`ring`], one queue per CPU). The same
//! loop of create, write, close runs through each, and into a plain
//! directory as the baseline. Each file costs the same requests either
//! way (the parent's GETATTR, LOOKUP, CREATE, GETXATTR, WRITE, FLUSH,
//! RELEASE), so the ratio between the two mounts is the transport's.
//! With `--passthrough` the files are opened as ckptfs opens them: the
//! kernel writes the backing file itself, no WRITE is sent, and the
//! requests per file are exactly ckptfs's.

mod dev;
mod memfs;
mod ring;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::host::{remove_dir, require_root, settle, wait_for};
use crate::mounts::{detach, mounted_fstype};
use crate::report::{cells, opt, publish};
use crate::stats::Figures;

const URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
const FSTYPE: &str = "fuse.ckpt-probe";
/// How long the kernel may take to INIT a mount and switch it to the ring.
const MOUNT_WAIT: Duration = Duration::from_secs(10);

/// The FUSE transport alone: /dev/fuse vs FUSE over io_uring, on the
/// small-file loop, with a minimal filesystem of the harness's own
/// (needs root; turns the fuse module's `enable_uring` on for the run).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to work in: the baseline's files, the mounts' backing
    /// files and the mount point. Put it on the disk under test.
    #[arg(long, default_value = "/var/tmp/ckpt-ftbench")]
    dir: PathBuf,

    /// Rounds; each runs every variant once, in a rotating order.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// Files written per variant and round.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    files: u32,

    /// Bytes per file; without --passthrough at most 128 KiB (one WRITE
    /// request).
    #[arg(long, default_value = "64KiB", value_parser = crate::parse_size)]
    file_size: u64,

    /// Threads reading /dev/fuse (ckptfs mounts with 4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,

    /// Open files in passthrough mode, as ckptfs does (Linux 6.9+): the
    /// kernel writes the backing files, and no WRITE request is sent.
    #[arg(long)]
    passthrough: bool,

    /// Pin the writing thread to this CPU. Unpinned, the scheduler moves
    /// it between CPUs, and io_uring's per-CPU queues help less.
    #[arg(long, value_name = "CPU")]
    pin_writer: Option<usize>,

    /// Also append the markdown report to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Direct,
    Dev,
    Uring,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Direct, Variant::Dev, Variant::Uring];

    fn key(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Dev => "dev",
            Variant::Uring => "uring",
        }
    }
}

/// Turns the fuse module's `enable_uring` on, and back to what it was.
struct UringSwitch {
    before: String,
}

impl UringSwitch {
    fn on() -> anyhow::Result<UringSwitch> {
        let before = fs::read_to_string(URING_PARAM)
            .with_context(|| {
                format!(
                    "reading {URING_PARAM}: this kernel has no FUSE over io_uring \
                     (it needs Linux 6.14+ built with CONFIG_FUSE_IO_URING)"
                )
            })?
            .trim()
            .to_owned();
        fs::write(URING_PARAM, "Y").with_context(|| format!("writing Y to {URING_PARAM}"))?;
        Ok(UringSwitch { before })
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        if let Err(e) = fs::write(URING_PARAM, &self.before) {
            eprintln!(
                "ckpt-bench fuse-transport: could not set {URING_PARAM} back to {}: {e}",
                self.before
            );
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    require_root("ckpt-bench fuse-transport mounts a FUSE filesystem")?;
    anyhow::ensure!(
        args.file_size >= 1 && (args.passthrough || args.file_size <= u64::from(dev::MAX_WRITE)),
        "--file-size must be 1 B to {} KiB (one WRITE request) without --passthrough, got {}",
        dev::MAX_WRITE >> 10,
        args.file_size
    );
    let _switch = UringSwitch::on()?;
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let mnt = dir.join("mnt");
    // A probe mount left by a killed run.
    if mounted_fstype(&mnt).as_deref() == Some(FSTYPE) {
        detach(&mnt)?;
    }
    let runs = args.runs as usize;
    let mut fig = Figures::new(runs);
    let mut requests = Figures::new(runs);
    let data = vec![0x5au8; args.file_size as usize];
    let result = (|| -> anyhow::Result<()> {
        for round in 0..runs {
            let mut order = Variant::ALL;
            order.rotate_left(round % Variant::ALL.len());
            eprintln!("round {}/{runs}", round + 1);
            for v in order {
                let back = dir.join("back");
                remove_dir(&back)?;
                remove_dir(&dir.join("direct"))?;
                fs::create_dir_all(&back)?;
                settle();
                let (rate, dev_n, ring_n) = match v {
                    Variant::Direct => (write_files(&dir.join("direct"), &data, args)?, 0, 0),
                    Variant::Dev | Variant::Uring => {
                        let wants = dev::Wants {
                            uring: v == Variant::Uring,
                            passthrough: args.passthrough,
                        };
                        mounted(&mnt, &back, wants, args.threads, |m| {
                            write_files(&m.join("r"), &data, args)
                        })?
                    }
                };
                eprintln!(
                    "  {:>6}: {rate:.0} files/s ({dev_n} requests through /dev/fuse, {ring_n} through io_uring)",
                    v.key()
                );
                fig.put(v.key(), round, rate);
                if v != Variant::Direct {
                    requests.put(&format!("{}.dev", v.key()), round, dev_n as f64);
                    requests.put(&format!("{}.ring", v.key()), round, ring_n as f64);
                }
            }
        }
        Ok(())
    })();
    // Every mount is gone by now, whichever way the rounds ended. Only
    // what the run made goes: --dir itself may be a directory of the
    // user's, so it is removed only if that leaves it empty.
    let cleaned = ["back", "direct", "mnt"]
        .iter()
        .try_for_each(|d| remove_dir(&dir.join(d)));
    let _ = fs::remove_dir(&dir);
    result?;
    publish(
        &report(args, &dir, &fig, &requests),
        args.markdown.as_deref(),
    )?;
    cleaned
}

/// Write `--files` files into `dir` (created); files per second.
fn write_files(dir: &Path, data: &[u8], args: &Args) -> anyhow::Result<f64> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (dir, data, files, pin) = (dir.to_owned(), data.to_owned(), args.files, args.pin_writer);
    thread::spawn(move || -> anyhow::Result<f64> {
        if let Some(cpu) = pin {
            ring::pin_to_cpu(cpu).with_context(|| format!("pinning the writer to CPU {cpu}"))?;
        }
        let start = Instant::now();
        for i in 0..files {
            let path = dir.join(format!("f{i:05}"));
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&data)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(f64::from(files) / start.elapsed().as_secs_f64())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the writing thread panicked"))?
}

/// Mount the probe's filesystem at `mnt` as `wants` says, run `f` on
/// it, unmount. The result, and the requests served through
/// /dev/fuse and through io_uring.
fn mounted(
    mnt: &Path,
    back: &Path,
    wants: dev::Wants,
    threads: u32,
    f: impl FnOnce(&Path) -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, u64, u64)> {
    fs::create_dir_all(mnt).with_context(|| format!("creating {}", mnt.display()))?;
    let dev = Arc::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .context("opening /dev/fuse")?,
    );
    mount(mnt, &dev)?;
    let fs = Arc::new(memfs::MemFs::new(
        back.to_owned(),
        wants.passthrough.then(|| dev.as_raw_fd()),
    ));
    let initialized = Arc::new(AtomicBool::new(false));
    let (via_dev, via_ring) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut servers = Vec::new();
    for _ in 0..threads {
        let (fs, dev, init, n) = (
            fs.clone(),
            dev.clone(),
            initialized.clone(),
            via_dev.clone(),
        );
        servers.push(thread::spawn(move || {
            dev::serve(&fs, &dev, wants, &init, &n);
            Ok(())
        }));
    }
    let counts = || {
        (
            via_dev.load(Ordering::SeqCst),
            via_ring.load(Ordering::SeqCst),
        )
    };
    let mut before = (0, 0);
    let result = (|| -> anyhow::Result<f64> {
        wait_for("the kernel's FUSE INIT", MOUNT_WAIT, || {
            initialized.load(Ordering::SeqCst)
        })?;
        if wants.uring {
            for qid in 0..cpus()? {
                let (fs, dev, n) = (fs.clone(), dev.clone(), via_ring.clone());
                servers.push(thread::spawn(move || ring::serve(&fs, &dev, qid, &n)));
            }
            // The kernel switches to the ring once every queue has an
            // entry registered. Until a lookup of a missing name (never
            // cached) comes through it, requests still use /dev/fuse.
            let mut probe = 0u32;
            wait_for("the first request through io_uring", MOUNT_WAIT, || {
                probe += 1;
                let _ = fs::symlink_metadata(mnt.join(format!(".ready-{probe}")));
                via_ring.load(Ordering::SeqCst) > 0
            })?;
        }
        before = counts();
        f(mnt)
    })();
    let after = counts();
    // The kernel then ends the connection, which stops the server threads.
    let unmounted = detach(mnt);
    for s in servers {
        match s.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("ckpt-bench fuse-transport: a ring thread stopped: {e}"),
            Err(_) => eprintln!("ckpt-bench fuse-transport: a server thread panicked"),
        }
    }
    unmounted?;
    Ok((result?, after.0 - before.0, after.1 - before.1))
}

/// Queues the kernel expects: one per possible CPU.
fn cpus() -> anyhow::Result<u16> {
    // SAFETY: sysconf reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .context("counting the CPUs")
}

fn mount(mnt: &Path, dev: &File) -> anyhow::Result<()> {
    let target = CString::new(mnt.as_os_str().as_bytes())?;
    let opts = CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        dev.as_raw_fd()
    ))?;
    let fstype = CString::new(FSTYPE)?;
    // SAFETY: every pointer is to a NUL-terminated string alive for the call.
    let rc = unsafe {
        libc::mount(
            c"ckpt-probe".as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting the probe at {}", mnt.display()));
    }
    Ok(())
}

fn report(args: &Args, dir: &Path, fig: &Figures, requests: &Figures) -> String {
    let rate = |x: f64| format!("{x:.0}");
    let ratio = |x: f64| format!("{x:.2}×");
    let mut s = format!(
        "\n## FUSE transport: /dev/fuse vs io_uring (`ckpt-bench fuse-transport`)\n\n\
         {} files of {} B per variant and round, in {}; {} round(s); {} /dev/fuse threads; \
         writer {}; files opened {}.\n\n\
         | variant | files/s per round | median |\n|---|---|---:|\n",
        args.files,
        args.file_size,
        dir.display(),
        args.runs,
        args.threads,
        args.pin_writer
            .map_or("unpinned".to_owned(), |c| format!("pinned to CPU {c}")),
        if args.passthrough {
            "in passthrough mode, as ckptfs opens them (no WRITE requests)"
        } else {
            "without passthrough (one WRITE request each)"
        },
    );
    for (v, name) in [
        (Variant::Direct, "plain directory"),
        (Variant::Dev, "mount over /dev/fuse"),
        (Variant::Uring, "mount over io_uring"),
    ] {
        s += &format!(
            "| {name} | {} | {} |\n",
            cells(&fig.get(v.key()), rate),
            opt(fig.median(v.key()), rate)
        );
    }
    s += &format!(
        "\n- io_uring ÷ /dev/fuse: **{}**\n- /dev/fuse ÷ plain: {}; io_uring ÷ plain: {}\n\
         - requests over io_uring in the io_uring mount (median per round): {} of {}\n",
        opt(fig.ratio("uring", "dev"), ratio),
        opt(fig.ratio("dev", "direct"), ratio),
        opt(fig.ratio("uring", "direct"), ratio),
        opt(requests.median("uring.ring"), rate),
        opt(
            requests
                .median("uring.ring")
                .zip(requests.median("uring.dev"))
                .map(|(a, b)| a + b),
            rate
        ),
    );
    // What one request costs beyond the plain file: the mount's time per
    // file less the plain directory's, over the requests per file.
    let files = f64::from(args.files);
    let per_request = |v: Variant| -> Option<f64> {
        let k = v.key();
        let n = requests.median(&format!("{k}.dev"))? + requests.median(&format!("{k}.ring"))?;
        let extra = 1.0 / fig.median(k)? - 1.0 / fig.median("direct")?;
        (n > 0.0).then(|| extra / (n / files) * 1e6)
    };
    let us = |x: f64| format!("{x:.1} µs");
    s += &format!(
        "- per request, beyond the plain file (medians): {} over /dev/fuse, {} over io_uring\n",
        opt(per_request(Variant::Dev), us),
        opt(per_request(Variant::Uring), us),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both transports carry the loop, each request through the one
    /// under test, and the bytes land in the backing files. Needs root
    /// and /dev/fuse (the suite runs as root); io_uring also needs a
    /// kernel that has it, else only /dev/fuse is checked.
    #[test]
    fn both_transports_carry_the_small_file_loop() {
        // SAFETY: geteuid(2) takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
            eprintln!("skipped: needs root and /dev/fuse");
            return;
        }
        let uring_ok = Path::new(URING_PARAM).exists();
        let _switch = uring_ok.then(|| UringSwitch::on().expect("enable_uring"));
        let tmp = tempfile::tempdir().expect("tempdir");
        let args = Args {
            dir: tmp.path().to_owned(),
            runs: 1,
            files: 40,
            file_size: 5000,
            threads: 2,
            passthrough: false,
            pin_writer: None,
            markdown: None,
        };
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let wants = [false, true]
            .into_iter()
            .filter(|u| !u || uring_ok)
            .flat_map(|uring| [false, true].map(|passthrough| dev::Wants { uring, passthrough }));
        for w in wants {
            let back = tmp
                .path()
                .join(format!("back-{}-{}", w.uring, w.passthrough));
            fs::create_dir_all(&back).expect("backing dir");
            let (rate, via_dev, via_ring) = mounted(&tmp.path().join("mnt"), &back, w, 2, |m| {
                write_files(&m.join("r"), &data, &args)
            })
            .expect("the loop through the mount");
            assert!(rate > 0.0);
            // GETATTR, LOOKUP, CREATE, GETXATTR, FLUSH, RELEASE per file,
            // and a WRITE unless the kernel writes the backing file itself.
            let per_file = if w.passthrough { 6 } else { 7 };
            let (used, other) = if w.uring {
                (via_ring, via_dev)
            } else {
                (via_dev, via_ring)
            };
            assert!(used >= per_file * 40, "{w:?}: {used} requests for 40 files");
            assert_eq!(other, 0, "{w:?}: requests through the other transport");
            let mut stored = 0;
            for e in fs::read_dir(&back).expect("backing files") {
                let bytes = fs::read(e.expect("entry").path()).expect("backing file");
                assert_eq!(bytes, data);
                stored += 1;
            }
            assert_eq!(stored, 40, "{w:?}");
        }
    }
}
