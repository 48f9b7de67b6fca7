//! The DR transport over RDMA verbs, against perftest's `ib_write_bw` on
//! the same device and against itself over TCP on the same link, in one
//! run. Runs wherever a verbs device is up: on this project's machines,
//! inside the soft-RoCE guest (`scripts/rdma-guest.sh run -- …`), where the
//! figures show correctness and relative cost under emulation, not
//! hardware speed; on a node with an RDMA NIC, unchanged.
//!
//! Per round, each moving `--size` bytes in `--msg`-sized messages:
//!
//! 1. `ib_write_bw`: perftest's one-sided RDMA-write bandwidth, server and
//!    client on this host over the device's address: the ceiling; and
//!    `ib_send_bw`, perftest's two-sided send/receive, the verbs our
//!    stream uses.
//! 2. `stream`: our transport alone, the DR byte stream
//!    (`libckpt::dr::transport`) over RDMA and then over TCP: a sender
//!    thread writes, a receiver thread reads, in this process.
//! 3. `drain`: a whole `ckptfs drain --wait` of a checkpoint-like set
//!    (the drain harness's generator) to a fresh `ckptfs serve`, over RDMA
//!    and then over TCP: hashing, dedup, zstd and the frames included.
//!
//! CPU is counted for both ends (for the stream, this process; for the
//! others, every child waited for in the phase) and reported per GiB
//! moved. Nothing here asserts a time.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytesize::ByteSize;
use libckpt::dr::transport::{InUse, RdmaOptions, Stream, Tcp};

use crate::drain::Data;
use crate::host::{
    ckptfs_bin, log_tail, remove_dir, require_root, run_ok, stop_with_us, write_dr_key, Scratch,
};
use crate::report::{cells, opt, verdict};
use crate::stats::Figures;

const GIB: f64 = (1u64 << 30) as f64;
const JOB: &str = "rdmabench";
const FILES: u64 = 4;
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Measure the RDMA transport against ib_write_bw and against TCP.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The verbs device's IPv4 address [default: $CKPTFS_RDMA_IP, else the
    /// address of the first device's network interface].
    #[arg(long)]
    ip: Option<String>,

    /// Bytes moved per measurement, a whole number of 4 MiB.
    #[arg(long, default_value = "256MiB", value_parser = crate::parse_size)]
    size: u64,

    /// Message size: ib_write_bw's -s and ckptfs's --rdma-buffer-size.
    #[arg(long, default_value = "256KiB", value_parser = crate::parse_size)]
    msg: u64,

    /// Registered buffers per connection, each way: ckptfs's
    /// --rdma-buffers.
    #[arg(long, default_value_t = RdmaOptions::default().recv_bufs)]
    buffers: u16,

    /// Rounds; each runs every measurement once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// Directory to work in; created if missing. The run works in DIR/run,
    /// removed at the end (and DIR too, if that leaves it empty).
    #[arg(long, default_value = "/var/tmp/ckpt-rdmabench")]
    dir: PathBuf,

    /// The ckptfs binary, built with `--features rdma` [default: `ckptfs`
    /// next to this executable].
    #[arg(long, value_name = "PATH")]
    ckptfs: Option<PathBuf>,

    /// Also append the markdown report to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    require_root("it starts ckptfs serve and reads the verbs devices")?;
    ensure!(
        args.size >= 4 << 20 && args.size.is_multiple_of(4 << 20),
        "--size must be a whole number of 4 MiB (got {})",
        ByteSize::b(args.size)
    );
    let msg = u32::try_from(args.msg).context("--msg is too large")?;
    let device = first_device()?;
    let ip = match &args.ip {
        Some(ip) => ip.clone(),
        None => device_ip(&device)?,
    };
    let ckptfs = ckptfs_bin(args.ckptfs.as_deref())?;
    // A directory of our own under --dir, which may be one of the user's.
    let scratch = Scratch::new(args.dir.join("run"))?;
    let data = Data::generate(&scratch.join("data"), args.size, FILES, "rdma")?;
    let rdma = RdmaOptions {
        buf_size: msg,
        recv_bufs: args.buffers,
        send_bufs: args.buffers,
    };
    let mut fig = Figures::new(args.runs as usize);
    for round in 0..args.runs as usize {
        eprintln!("ckpt-bench rdma: round {}/{}", round + 1, args.runs);
        for (key, tool) in [("perftest", "ib_write_bw"), ("perftest_send", "ib_send_bw")] {
            let port = 18515 + 2 * round as u16 + u16::from(key == "perftest_send");
            let (mbs, cpu) = perftest(tool, &device, &ip, args.size, args.msg, port)?;
            eprintln!("  {tool}: {mbs:.1} MiB/s, {cpu:.2} CPU-s/GiB");
            fig.put(key, round, mbs);
            fig.put(&format!("{key}_cpu"), round, cpu);
        }
        for (name, t) in [("rdma", true), ("tcp", false)] {
            let port = 7600 + (round as u16) * 4 + u16::from(t);
            let (mbs, cpu, used) = stream(&ip, port, args.size, msg, &rdma, t)?;
            eprintln!("  stream over {used}: {mbs:.1} MiB/s, {cpu:.2} CPU-s/GiB");
            fig.put(&format!("stream_{name}"), round, mbs);
            fig.put(&format!("stream_{name}_cpu"), round, cpu);
        }
        for name in ["rdma", "tcp"] {
            let port = 7700 + (round as u16) * 4 + u16::from(name == "tcp");
            let dir = scratch.join(&format!("drain-{name}-{round}"));
            let (mbs, cpu) = drain(&ckptfs, &dir, &data.a, &ip, port, name, &rdma)?;
            eprintln!("  drain over {name}: {mbs:.1} MiB/s, {cpu:.2} CPU-s/GiB");
            fig.put(&format!("drain_{name}"), round, mbs);
            fig.put(&format!("drain_{name}_cpu"), round, cpu);
            remove_dir(&dir)?;
        }
    }
    // The machine's description reads --dir's filesystem: before removal.
    let report = markdown(args, &device, &ip, &fig);
    drop(scratch);
    let _ = std::fs::remove_dir(&args.dir);
    crate::report::publish(&report, args.markdown.as_deref())
}

/// MiB/s: perftest's "MB/sec" is 2^20 bytes a second, so ours is too.
fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / secs
}

fn first_device() -> anyhow::Result<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/infiniband")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.into_iter().next().context(
        "no RDMA device (/sys/class/infiniband is empty): run this inside the soft-RoCE guest, \
         `bash scripts/rdma-guest.sh run -- target/release/ckpt-bench rdma`",
    )
}

fn device_ip(device: &str) -> anyhow::Result<String> {
    if let Ok(ip) = std::env::var("CKPTFS_RDMA_IP") {
        return Ok(ip);
    }
    let ndev = fs::read_to_string(format!(
        "/sys/class/infiniband/{device}/ports/1/gid_attrs/ndevs/0"
    ))
    .with_context(|| format!("{device} has no network device"))?;
    let out = run_ok(Command::new("ip").args(["-4", "-o", "addr", "show", "dev", ndev.trim()]))?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .map(str::to_owned)
        .with_context(|| format!("{} has no IPv4 address: pass --ip", ndev.trim()))
}

/// CPU seconds (user + system) of every child waited for so far.
fn children_cpu() -> f64 {
    rusage_cpu(libc::RUSAGE_CHILDREN)
}

fn rusage_cpu(who: i32) -> f64 {
    // SAFETY: all-zero is a valid rusage, filled by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// perftest's bandwidth (`tool`: ib_write_bw, one-sided RDMA writes, or
/// ib_send_bw, two-sided sends like ours) in MiB/s (its "MB/sec" is 2^20
/// bytes) and both ends' CPU seconds per GiB.
fn perftest(
    tool: &str,
    device: &str,
    ip: &str,
    size: u64,
    msg: u64,
    port: u16,
) -> anyhow::Result<(f64, f64)> {
    let iters = (size / msg).max(5).to_string();
    let mut common: Vec<String> = [
        "-d",
        device,
        "-s",
        &msg.to_string(),
        "-n",
        &iters,
        "-p",
        &port.to_string(),
        "-F",
    ]
    .map(str::to_owned)
    .to_vec();
    // Over RoCE, perftest must be told the GID that carries IPv4 (its
    // default, index 0, is the link-local IPv6 one); InfiniBand has none.
    if let Some(gid) = roce_v4_gid(device) {
        common.extend(["-x".to_string(), gid.to_string()]);
    }
    let cpu0 = children_cpu();
    let mut server = stop_with_us(&mut Command::new(tool))
        .args(&common)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {tool} (Debian package perftest)"))?;
    // The server's out-of-band TCP port opens after its device set-up,
    // which takes seconds under emulation: retry a refused client.
    let mut client = None;
    for _ in 0..40 {
        let out = Command::new(tool)
            .args(&common)
            .arg(ip)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running the {tool} client"))?;
        let refused = !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("Couldn't connect");
        client = Some(out);
        if !refused {
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    if server.try_wait()?.is_none() && !client.as_ref().is_some_and(|c| c.status.success()) {
        let _ = server.kill();
    }
    let _ = server.wait();
    let client = client.with_context(|| format!("{tool} never ran"))?;
    let text = String::from_utf8_lossy(&client.stdout);
    ensure!(
        client.status.success(),
        "{tool} client failed ({}):\n{text}\n{}",
        client.status,
        String::from_utf8_lossy(&client.stderr)
    );
    let cpu = children_cpu() - cpu0;
    // The result row: bytes, iterations, peak, average, message rate.
    let avg = text
        .lines()
        .filter_map(|l| {
            let f: Vec<f64> = l
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            (f.len() >= 4 && f[0] as u64 == msg).then_some(f[3])
        })
        .next_back()
        .with_context(|| format!("no result row in {tool}'s output:\n{text}"))?;
    Ok((avg, cpu / (size as f64 / GIB)))
}

/// Opens one end of a stream (the receiver's runs on its own thread).
type Opener = Box<dyn FnOnce() -> anyhow::Result<Arc<dyn Stream>> + Send>;

/// The index of `device`'s RoCE v2 GID holding an IPv4 address, if any.
fn roce_v4_gid(device: &str) -> Option<u32> {
    let port = format!("/sys/class/infiniband/{device}/ports/1");
    (0..16).find(|i| {
        let gid = fs::read_to_string(format!("{port}/gids/{i}")).unwrap_or_default();
        let kind = fs::read_to_string(format!("{port}/gid_attrs/types/{i}")).unwrap_or_default();
        gid.starts_with("0000:0000:0000:0000:0000:ffff:") && kind.contains("v2")
    })
}

/// `size` bytes through the DR byte stream; MiB/s, CPU-s/GiB (both
/// threads) and what carried it.
fn stream(
    ip: &str,
    port: u16,
    size: u64,
    msg: u32,
    rdma: &RdmaOptions,
    over_rdma: bool,
) -> anyhow::Result<(f64, f64, InUse)> {
    let addr: SocketAddr = format!("{ip}:{port}").parse()?;
    let (accept, dial): (Opener, Opener) = if over_rdma {
        let listener = libckpt::dr::rdma::RdmaListener::bind(addr, *rdma)?;
        let opts = *rdma;
        (
            Box::new(move || loop {
                if let Some(s) = listener.accept(Duration::from_secs(30))? {
                    break Ok(Arc::new(s) as Arc<dyn Stream>);
                }
            }),
            Box::new(move || {
                Ok(Arc::new(libckpt::dr::rdma::connect(
                    &addr.to_string(),
                    addr,
                    &opts,
                    Duration::from_secs(30),
                )?) as Arc<dyn Stream>)
            }),
        )
    } else {
        let listener = TcpListener::bind(addr)?;
        (
            Box::new(move || Ok(Arc::new(Tcp::new(listener.accept()?.0, "")) as Arc<dyn Stream>)),
            Box::new(move || {
                Ok(Arc::new(Tcp::new(TcpStream::connect(addr)?, "")) as Arc<dyn Stream>)
            }),
        )
    };
    let cpu0 = rusage_cpu(libc::RUSAGE_SELF);
    let receiver = thread::spawn(move || -> anyhow::Result<u64> {
        let s = accept()?;
        s.set_timeout(Duration::from_secs(120))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        let mut io = libckpt::dr::transport::Io(s.clone());
        while got < size {
            let n = io.read(&mut buf)?;
            ensure!(n > 0, "the sender hung up after {got} bytes");
            got += n as u64;
        }
        s.write(b"k")?;
        s.flush()?;
        Ok(got)
    });
    let s = dial()?;
    s.set_timeout(Duration::from_secs(120))?;
    let used = s.in_use();
    let block = vec![0x5au8; msg as usize];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < size {
        let want = (size - sent).min(block.len() as u64) as usize;
        let mut off = 0;
        while off < want {
            off += s.write(&block[off..want])?;
        }
        sent += want as u64;
    }
    s.flush()?;
    let mut ack = [0u8; 1];
    ensure!(
        s.read(&mut ack)? == 1,
        "no acknowledgement from the receiver"
    );
    let secs = start.elapsed().as_secs_f64();
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))??;
    ensure!(got == size, "received {got} of {size} bytes");
    let cpu = rusage_cpu(libc::RUSAGE_SELF) - cpu0;
    Ok((mib_per_s(size, secs), cpu / (size as f64 / GIB), used))
}

/// A whole drain of `src` to a fresh receiver over `transport`; MiB/s of
/// the set's bytes and both processes' CPU-s/GiB.
fn drain(
    ckptfs: &Path,
    dir: &Path,
    src: &Path,
    ip: &str,
    port: u16,
    transport: &str,
    rdma: &RdmaOptions,
) -> anyhow::Result<(f64, f64)> {
    remove_dir(dir)?;
    fs::create_dir_all(dir)?;
    let key = dir.join("dr.key");
    write_dr_key(&key)?;
    let cache = dir.join("cache");
    run_ok(
        Command::new(ckptfs)
            .arg("--cache")
            .arg(&cache)
            .args(["put", JOB, "--set", "s1"])
            .arg(src),
    )?;
    let bytes = crate::host::tree_bytes(src);
    let addr = format!("{ip}:{port}");
    let (size, bufs) = (rdma.buf_size.to_string(), rdma.recv_bufs.to_string());
    let rdma_flags = [
        "--transport",
        transport,
        "--rdma-buffer-size",
        &size,
        "--rdma-buffers",
        &bufs,
    ];
    let cpu0 = children_cpu();
    let log = dir.join("serve.log");
    let mut serve = stop_with_us(&mut Command::new(ckptfs))
        .args(["serve", "--listen", &addr])
        .args(rdma_flags)
        .arg("--root")
        .arg(dir.join("dr-root"))
        .arg("--key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .spawn()
        .context("starting ckptfs serve")?;
    let deadline = Instant::now() + START_TIMEOUT;
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening on")
    {
        if let Some(st) = serve.try_wait()? {
            bail!("ckptfs serve exited ({st}):\n{}", log_tail(&log));
        }
        ensure!(
            Instant::now() < deadline,
            "ckptfs serve did not start:\n{}",
            log_tail(&log)
        );
        thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    let out = Command::new(ckptfs)
        .arg("--cache")
        .arg(&cache)
        .args(["--dr", &addr, "--dr-key"])
        .arg(&key)
        .args(rdma_flags)
        .args(["drain", "--wait"])
        .stdin(Stdio::null())
        .output()
        .context("running ckptfs drain")?;
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: kill(2) of our own child, by PID.
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let _ = serve.wait();
    let cpu = children_cpu() - cpu0;
    let text = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "ckptfs drain over {transport} failed:\n{text}"
    );
    ensure!(
        text.contains(&format!("over {transport}")),
        "the drain did not run over {transport}:\n{text}"
    );
    Ok((mib_per_s(bytes, secs), cpu / (bytes as f64 / GIB)))
}

fn markdown(args: &Args, device: &str, ip: &str, fig: &Figures) -> String {
    let m = crate::machine::Machine::probe(&args.dir);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## RDMA transport (`ckpt-bench rdma`)\n\n\
         Device {device} at {ip}; {} per measurement in {} messages, {} registered buffers \
         each way; {} round(s); \
         {} ({} cores), kernel {}.\n\n\
         Under soft-RoCE in a TCG-emulated guest these figures show correctness and relative \
         cost, not hardware speed: rxe computes its ICRC and copies every packet on emulated \
         CPUs. The same command runs unchanged on a node with an RDMA NIC.\n",
        ByteSize::b(args.size),
        ByteSize::b(args.msg),
        args.buffers,
        args.runs,
        m.cpu,
        m.cores,
        m.kernel,
    );
    let f1 = |x: f64| format!("{x:.1}");
    let f2 = |x: f64| format!("{x:.2}");
    let _ = writeln!(
        s,
        "| measurement | MiB/s per round | median MiB/s | CPU-s/GiB (median) |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for (key, what) in [
        ("perftest", "`ib_write_bw` (one-sided RDMA write, perftest)"),
        (
            "perftest_send",
            "`ib_send_bw` (two-sided send/receive, perftest)",
        ),
        ("stream_rdma", "DR stream over RDMA (send/recv, credits)"),
        ("stream_tcp", "DR stream over TCP"),
        ("drain_rdma", "`ckptfs drain` over RDMA"),
        ("drain_tcp", "`ckptfs drain` over TCP"),
    ] {
        let _ = writeln!(
            s,
            "| {what} | {} | {} | {} |",
            cells(&fig.get(key), f1),
            opt(fig.median(key), f1),
            opt(fig.median(&format!("{key}_cpu")), f2)
        );
    }
    let stream_ratio = fig.ratio("stream_rdma", "perftest");
    let drain_ratio = fig.ratio("drain_rdma", "perftest");
    let _ = writeln!(
        s,
        "\n- DR stream over RDMA / `ib_write_bw`: {} (target ≥ 0.8: {})\n\
         - DR stream over RDMA / `ib_send_bw`: {}\n\
         - drain over RDMA / `ib_write_bw`: {} ({})\n\
         - drain over RDMA / over TCP: {}; CPU per GiB, RDMA / TCP: {}\n\
         - stream CPU per GiB, RDMA / TCP: {}\n",
        opt(stream_ratio, f2),
        verdict(stream_ratio.map(|r| r >= 0.8)),
        opt(fig.ratio("stream_rdma", "perftest_send"), f2),
        opt(drain_ratio, f2),
        verdict(drain_ratio.map(|r| r >= 0.8)),
        opt(fig.ratio("drain_rdma", "drain_tcp"), f2),
        opt(fig.ratio("drain_rdma_cpu", "drain_tcp_cpu"), f2),
        opt(fig.ratio("stream_rdma_cpu", "stream_tcp_cpu"), f2),
    );
    s
}
