//! The S3 tier against the tools a site would otherwise use, on a real
//! SeaweedFS server on loopback, in one run:
//!
//! 1. `push`: a set of checkpoint-like data (drain's generator, 4 files)
//!    drained by `ckptfs drain --wait` to a fresh bucket prefix, against
//!    `rclone copy --checksum` of the same files to another prefix, and
//!    against a raw parallel PUT of the same bytes as 1 MiB objects,
//!    uncompressed, with `object_store` (the client ckptfs uses): the
//!    server's ingest limit.
//! 2. `delta`: a second set with 10 % of its 1 MiB chunks changed,
//!    drained after the first to the same prefix (bytes sent, from the
//!    drain's log and from the bucket), against `rclone copy --checksum`
//!    of its files onto rclone's copy of the first (every changed file
//!    goes up whole).
//! 3. `restore`: an empty cache → the last set restored from S3
//!    (`ckptfs restore --from s3`), against `rclone copy` of the files
//!    back into an empty directory.
//!
//! Every round runs on a fresh server (its own data directory, removed
//! afterwards) and runs every variant once, in a rotating order, with the
//! page cache dropped before each timed transfer; ratios are taken within
//! a round, then the median over rounds is reported. Besides wall time,
//! each transfer's CPU is recorded (client, server, and everything else
//! busy on the machine meanwhile): on a small machine the client and the
//! server share the cores, and neighbours show up as "others". Nothing here asserts a time: the figures are for
//! people.

use crate::host::{ckptfs_bin, log_field, remove_dir, require_root, tree_bytes, Scratch};
use crate::report::{cells, mib, opt, verdict};
use crate::stats::Figures;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use bytesize::ByteSize;
use clap::ValueEnum;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::drain::{seed, Data, CHUNK};
use crate::host::{clock_ticks, log_tail, proc_cpu, quiesce, run_ok, settle, stop_with_us};
use crate::machine::{self, Machine};
use crate::stats::mb_per_s;

const MIB: u64 = 1 << 20;
/// Files per set: one per "rank".
const FILES: u64 = 4;
const JOB: &str = "s3bench";
const SET_A: &str = "s1";
const SET_B: &str = "s2";
const BUCKET: &str = "ckpt-bench";
/// Pause before each timed transfer; see [`quiesce`].
const QUIET: Duration = Duration::from_secs(5);
/// Longest the server may take to serve S3 requests.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Between SIGTERM and SIGKILL for the server.
const STOP_TIMEOUT: Duration = Duration::from_secs(25);
/// Longest one `weed shell` command may run.
const SHELL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a drain may take before the benchmark gives up on it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1200);
/// Room left on the disk beyond the benchmark's own peak.
const DISK_MARGIN: u64 = 1 << 30;
/// What this machine sets for HTTPS clients; rclone 1.60 fails with
/// `LoadCustomCABundleError` on some of them, and none is needed over
/// plain HTTP on loopback.
const CA_VARS: [&str; 12] = [
    "AWS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NIX_SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "HTTPLIB2_CA_CERTS",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
];

/// Measure the S3 tier against rclone and a raw parallel PUT, on a
/// SeaweedFS server on loopback.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory to work in; created if missing, removed at the end (but
    /// for the data with --keep-data). Must be on the disk under test and
    /// have nine times SIZE plus 1 GiB free.
    #[arg(long, default_value = "/var/tmp/ckpt-s3bench")]
    dir: PathBuf,

    /// Bytes per set, e.g. 2GiB, a whole number of 4 MiB (4 files of whole
    /// 1 MiB chunks).
    #[arg(long, default_value = "2GiB", value_parser = crate::parse_size)]
    size: u64,

    /// Rounds; each round runs every variant of every benchmark once, on
    /// a fresh server.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// The ckptfs binary [default: `ckptfs` next to this executable].
    #[arg(long, value_name = "PATH")]
    ckptfs: Option<PathBuf>,

    /// SeaweedFS's `weed` [default: $WEED, then
    /// /opt/ckptfs/seaweedfs/bin/weed, then `weed` on the PATH].
    #[arg(long, value_name = "PATH")]
    weed: Option<PathBuf>,

    /// Requests in flight: ckptfs's --s3-parallel, rclone's --transfers
    /// and the raw PUT's.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: u32,

    /// ckptfs's --s3-zstd-level: a level, or `auto`.
    #[arg(
        long,
        default_value = "3",
        value_name = "N|auto",
        allow_hyphen_values = true
    )]
    zstd_level: libckpt::dr::level::ZstdLevel,

    /// Also append the markdown report to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,

    /// Benchmarks to run, comma-separated. `delta` and `restore` also run
    /// (and report) ckptfs's and rclone's uploads of the first set; only
    /// `push` runs the raw PUT.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Bench::ALL)]
    only: Vec<Bench>,

    /// Keep the generated sets in DIR/data; a later run with the same
    /// --size reuses them instead of generating them again.
    #[arg(long)]
    keep_data: bool,

    /// Where the server keeps its data [default: DIR/server, the same
    /// disk as the cache]. A diagnostic: e.g. /dev/shm/ckpt-s3bench takes
    /// the server's disk out of the picture.
    #[arg(long, value_name = "DIR")]
    server_dir: Option<PathBuf>,
}

/// One benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Bench {
    /// The first set: ckptfs drain vs rclone copy vs raw parallel PUT
    Push,
    /// The second set, 10 % of its chunks changed: bytes sent, time
    Delta,
    /// Empty cache → restored from S3 vs rclone copy back
    Restore,
}

impl Bench {
    const ALL: [Bench; 3] = [Bench::Push, Bench::Delta, Bench::Restore];
}

// ---------------------------------------------------------------------------
// The data: drain's generator, in 4 files.
// ---------------------------------------------------------------------------

/// Sets A and B: drain's generator over `FILES` files.
fn set_files(dir: &Path) -> Vec<PathBuf> {
    crate::drain::set_files(dir, FILES)
}

// ---------------------------------------------------------------------------
// What a transfer cost: wall time, CPU of the client and of the server,
// and what else kept the cores busy meanwhile.
// ---------------------------------------------------------------------------

fn timeval_secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 * 1e-6
}

/// User + system CPU seconds of `who` (RUSAGE_SELF or RUSAGE_CHILDREN).
fn rusage_cpu(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid
    // rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    timeval_secs(ru.ru_utime) + timeval_secs(ru.ru_stime)
}

/// (busy, total) jiffies of all cores, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user);
    // steal counts as busy: the host gave the time to someone else.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

#[derive(Debug, Clone, Copy)]
struct Snap {
    at: Instant,
    client: f64,
    server: f64,
    busy: (u64, u64),
}

impl Snap {
    fn now(server_pid: u32) -> Snap {
        Snap {
            at: Instant::now(),
            client: rusage_cpu(libc::RUSAGE_CHILDREN) + rusage_cpu(libc::RUSAGE_SELF),
            server: proc_cpu(server_pid).unwrap_or(0.0),
            busy: machine_jiffies(),
        }
    }

    fn usage(&self, server_pid: u32) -> Usage {
        let end = Snap::now(server_pid);
        let (b, t) = (
            end.busy.0.saturating_sub(self.busy.0),
            end.busy.1.saturating_sub(self.busy.1),
        );
        let (client_cpu, server_cpu) = (end.client - self.client, end.server - self.server);
        Usage {
            secs: end.at.duration_since(self.at).as_secs_f64(),
            client_cpu,
            server_cpu,
            others_cpu: (b as f64 / clock_ticks() - client_cpu - server_cpu).max(0.0),
            busy: if t > 0 { b as f64 / t as f64 } else { f64::NAN },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    secs: f64,
    client_cpu: f64,
    server_cpu: f64,
    /// Busy CPU seconds of the whole machine that were neither the
    /// client's nor the server's: neighbours, the kernel's writeback,
    /// time the hypervisor stole.
    others_cpu: f64,
    /// Share of all cores' time busy (anyone's), 0–1.
    busy: f64,
}

impl Usage {
    fn note(&self) -> String {
        format!(
            "cpu client {:.1} s, server {:.1} s, others {:.1} s (machine {:.0} % busy)",
            self.client_cpu,
            self.server_cpu,
            self.others_cpu,
            100.0 * self.busy
        )
    }
}

// ---------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------

/// Access key and secret of the server's one identity, made per run.
#[derive(Clone)]
struct Creds {
    key: String,
    secret: String,
}

impl Creds {
    fn random() -> anyhow::Result<Creds> {
        let mut raw = [0u8; 30];
        crate::host::fill_random(&mut raw)?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        Ok(Creds {
            key: format!("CKB{}", hex(&raw[..10]).to_uppercase()),
            secret: hex(&raw[10..]),
        })
    }
}

/// The `weed` to run: --weed, $WEED, the install script's, the PATH's.
fn find_weed(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        ensure!(p.is_file(), "--weed {}: no such file", p.display());
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("WEED").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "$WEED={}: no such file", p.display());
        return Ok(p);
    }
    let installed = PathBuf::from("/opt/ckptfs/seaweedfs/bin/weed");
    if installed.is_file() {
        return Ok(installed);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("weed");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "no SeaweedFS `weed` (not in $WEED, /opt/ckptfs/seaweedfs/bin/weed nor on the PATH): \
         run scripts/install-seaweedfs.sh, or give --weed"
    )
}

/// A pseudo-random number, good enough to spread port choices.
fn jitter() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    seed(&[t, u64::from(std::process::id())])
}

/// Four ports for the server: each free, and so is each one's gRPC port
/// (port + 10000, SeaweedFS's convention), with no gRPC Unix socket of
/// another server lying around under that number.
fn server_ports() -> anyhow::Result<[u16; 4]> {
    let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
    let mut out: Vec<u16> = Vec::new();
    let mut r = jitter();
    for _ in 0..2000 {
        r = seed(&[r]);
        let p = 20000 + (r % 25000) as u16;
        let g = p + 10000;
        let sock_free = grpc_sockets(&[p]).is_empty();
        if !out.iter().any(|q| q.abs_diff(p) < 2 || q.abs_diff(g) < 2)
            && free(p)
            && free(g)
            && sock_free
        {
            out.push(p);
            if out.len() == 4 {
                return Ok([out[0], out[1], out[2], out[3]]);
            }
        }
    }
    bail!("found no four free pairs of ports (P, P + 10000) on 127.0.0.1")
}

/// The Unix sockets SeaweedFS makes in /tmp for ports `ports` and their
/// gRPC ports (`seaweedfs-master-grpc-29333.sock`, `seaweedfs-s3-18333.sock`…).
fn grpc_sockets(ports: &[u16]) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir("/tmp") else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("seaweedfs-")
                && ports.iter().any(|p| {
                    n.ends_with(&format!("-{p}.sock"))
                        || n.ends_with(&format!("-{}.sock", p + 10000))
                })
        })
        .map(|e| e.path())
        .collect()
}

/// `weed server` with master, volume, filer and S3 gateway in one
/// process: stopped by its pid (SIGTERM, then SIGKILL) and reaped when
/// dropped, also when the benchmark fails half-way.
struct Weed {
    bin: PathBuf,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    /// Where glog writes (by default /tmp, where nothing removes them).
    logdir: PathBuf,
    master: u16,
    s3: u16,
    ports: [u16; 4],
}

impl Weed {
    fn start(bin: &Path, dir: &Path, log: &Path, creds: &Creds) -> anyhow::Result<Weed> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("s3.json");
        let json = serde_json::json!({
            "identities": [{
                "name": "bench",
                "credentials": [{"accessKey": creds.key, "secretKey": creds.secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        fs::write(&config, json.to_string())
            .with_context(|| format!("writing {}", config.display()))?;
        let data = dir.join("data");
        fs::create_dir_all(&data)?;
        let ports = server_ports()?;
        let [master, volume, filer, s3] = ports;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg(format!("-logdir={}", dir.display()))
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .arg("-ip=127.0.0.1")
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.config={}", config.display()))
            // Not in /tmp, where nothing removes them (the gRPC ones cannot
            // move: see `stop`).
            .arg(format!(
                "-filer.localSocket={}",
                dir.join("filer.sock").display()
            ))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            // Off: listeners on fixed ports, the phone-home, the pause
            // before the volume server stops.
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                "-volume.preStopSeconds=0",
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = stop_with_us(&mut cmd)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Weed {
            bin: bin.to_owned(),
            pid: child.id(),
            child: Some(child),
            log: log.to_owned(),
            logdir: dir.to_owned(),
            master,
            s3,
            ports,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3)
    }

    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                self.child = None;
                bail!("weed server exited ({status}):\n{}", log_tail(&self.log));
            }
        }
        Ok(())
    }

    /// Wait for the S3 port, create the bucket with `weed shell`, then
    /// wait until S3 requests on it succeed.
    fn ready(&mut self, client: &S3Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.s3));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            self.alive()?;
            ensure!(
                Instant::now() < deadline,
                "weed server did not listen on {addr} within {START_TIMEOUT:?}:\n{}",
                log_tail(&self.log)
            );
            thread::sleep(Duration::from_millis(100));
        }
        let mut last: String;
        loop {
            self.alive()?;
            match self.shell(&format!("s3.bucket.create -name {BUCKET}")) {
                // A retry after a create whose answer got lost finds it.
                Ok(out) if out.contains("created bucket") || out.contains("already exists") => {
                    break
                }
                Ok(out) => last = out,
                Err(e) => last = format!("{e:#}"),
            }
            ensure!(
                Instant::now() < deadline,
                "weed shell could not create bucket {BUCKET} within {START_TIMEOUT:?}: {last}\n{}",
                log_tail(&self.log)
            );
            thread::sleep(Duration::from_millis(500));
        }
        loop {
            self.alive()?;
            match client.probe() {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            ensure!(
                Instant::now() < deadline,
                "S3 on {} did not answer within {START_TIMEOUT:?}: {last}\n{}",
                self.endpoint(),
                log_tail(&self.log)
            );
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// One `weed shell` command; its output.
    fn shell(&self, command: &str) -> anyhow::Result<String> {
        let mut child = Command::new(&self.bin)
            .arg(format!("-logdir={}", self.logdir.display()))
            .arg("shell")
            .arg(format!("-master=127.0.0.1:{}", self.master))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting weed shell")?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "{command}");
        }
        let (mut so, mut se) = (child.stdout.take(), child.stderr.take());
        let reader = thread::spawn(move || {
            let mut s = String::new();
            if let Some(o) = so.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            if let Some(e) = se.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        let deadline = Instant::now() + SHELL_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("`weed shell` ({command}) did not finish within {SHELL_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(50));
        };
        let out = reader.join().unwrap_or_default();
        ensure!(
            status.success(),
            "`weed shell` ({command}): {status}: {out}"
        );
        Ok(out)
    }

    fn version(bin: &Path) -> String {
        run_ok(Command::new(bin).arg("version"))
            .map(|o| String::from_utf8_lossy(&o).trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of our own unreaped child: it
            // cannot have been recycled for another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!(
                    "ckpt-bench s3: weed server (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
                    child.id()
                );
                child.kill()?;
                child.wait()?;
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // Ours: the ports were free and no socket named them when the
        // server started.
        for p in grpc_sockets(&self.ports) {
            let _ = fs::remove_file(p);
        }
        Ok(())
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("ckpt-bench s3: stopping weed server: {e:#}");
        }
    }
}

// ---------------------------------------------------------------------------
// The bucket, through object_store (as ckptfs reaches it).
// ---------------------------------------------------------------------------

struct S3Client {
    rt: tokio::runtime::Runtime,
    store: Arc<AmazonS3>,
    /// No retries, short deadlines: for readiness probes.
    probe: Arc<AmazonS3>,
}

impl S3Client {
    fn new(endpoint: &str, creds: &Creds, parallel: usize) -> anyhow::Result<S3Client> {
        let build = |retries: usize, timeout: Duration| {
            AmazonS3Builder::new()
                .with_bucket_name(BUCKET)
                .with_region("us-east-1")
                .with_endpoint(endpoint)
                .with_access_key_id(&creds.key)
                .with_secret_access_key(&creds.secret)
                .with_virtual_hosted_style_request(false)
                .with_retry(RetryConfig {
                    backoff: BackoffConfig::default(),
                    max_retries: retries,
                    retry_timeout: Duration::from_secs(120),
                })
                .with_client_options(
                    ClientOptions::new()
                        .with_allow_http(true)
                        .with_timeout(timeout)
                        .with_connect_timeout(Duration::from_secs(10))
                        .with_pool_max_idle_per_host(parallel * 2),
                )
                .build()
                .context("building the S3 client")
        };
        // Two workers, as ckptfs's S3 runtime has.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ckpt-bench-s3")
            .enable_all()
            .build()
            .context("starting a tokio runtime")?;
        Ok(S3Client {
            rt,
            store: Arc::new(build(6, Duration::from_secs(60))?),
            probe: Arc::new(build(0, Duration::from_secs(5))?),
        })
    }

    /// A list, a PUT and a DELETE on the bucket, each once: the server is
    /// up, the bucket exists, and the first write (which makes the
    /// bucket's volumes) is not billed to a timed variant.
    fn probe(&self) -> anyhow::Result<()> {
        let s = &self.probe;
        self.rt.block_on(async {
            let _: Vec<_> = s
                .list(Some(&Key::from("probe")))
                .try_collect()
                .await
                .context("listing the bucket")?;
            let k = Key::from("probe/warm-up");
            s.put(&k, PutPayload::from(vec![0x5au8; MIB as usize]))
                .await
                .context("PUT of a probe object")?;
            s.delete(&k).await.context("DELETE of the probe object")?;
            anyhow::Ok(())
        })
    }

    /// (objects, bytes) under `prefix/`.
    fn usage(&self, prefix: &str) -> anyhow::Result<(u64, u64)> {
        let metas: Vec<_> = self
            .rt
            .block_on(self.store.list(Some(&Key::from(prefix))).try_collect())
            .with_context(|| format!("listing s3://{BUCKET}/{prefix}/"))?;
        Ok((
            metas.len() as u64,
            metas
                .iter()
                .map(|m: &object_store::ObjectMeta| m.size)
                .sum(),
        ))
    }

    /// The files as 1 MiB objects `prefix/FILE/NNNNNN`, uncompressed,
    /// `parallel` PUTs in flight, read by one thread as they go; bytes
    /// sent.
    fn raw_put(&self, files: &[PathBuf], prefix: &str, parallel: usize) -> anyhow::Result<u64> {
        let (tx, rx) = tokio::sync::mpsc::channel::<(Key, Vec<u8>)>(parallel * 2);
        thread::scope(|scope| {
            let reader = scope.spawn(move || -> anyhow::Result<()> {
                for f in files {
                    let name = f.file_name().map_or("f".into(), |n| n.to_string_lossy());
                    let mut file =
                        File::open(f).with_context(|| format!("opening {}", f.display()))?;
                    for k in 0.. {
                        let mut buf = vec![0u8; CHUNK as usize];
                        let n = read_full(&mut file, &mut buf)
                            .with_context(|| format!("reading {}", f.display()))?;
                        if n == 0 {
                            break;
                        }
                        buf.truncate(n);
                        let key = Key::from(format!("{prefix}/{name}/{k:06}"));
                        if tx.blocking_send((key, buf)).is_err() {
                            // The uploads failed; their error is reported.
                            return Ok(());
                        }
                    }
                }
                Ok(())
            });
            let store = &self.store;
            let sent = self.rt.block_on(async {
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|p| (p, rx)) },
                )
                .map(|(key, buf)| async move {
                    let n = buf.len() as u64;
                    store
                        .put(&key, PutPayload::from(buf))
                        .await
                        .with_context(|| format!("PUT s3://{BUCKET}/{key}"))?;
                    anyhow::Ok(n)
                })
                .buffer_unordered(parallel)
                .try_fold(0u64, |a, n| futures::future::ready(Ok(a + n)))
                .await
            });
            let read = reader
                .join()
                .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
            let sent = sent?;
            read?;
            Ok(sent)
        })
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// The clients under test.
// ---------------------------------------------------------------------------

/// Environment a client must not see: the CA variables rclone trips on,
/// AWS settings (profiles, endpoints, tokens) and rclone's own.
fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("AWS_") || k.starts_with("RCLONE_") || CA_VARS.contains(&k.as_str()) {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// ckptfs with its built-in defaults and the S3 tier at `prefix`.
struct Ckptfs {
    bin: PathBuf,
    config: PathBuf,
    endpoint: String,
    creds: Creds,
    parallel: u32,
    zstd_level: libckpt::dr::level::ZstdLevel,
}

/// What one `ckptfs drain --wait` did.
struct Drained {
    usage: Usage,
    /// `drained` line of the set: bytes_read, bytes_sent, skipped.
    report: Option<(u64, u64, u64)>,
}

impl Ckptfs {
    fn cmd(&self, cache: &Path, prefix: &str) -> Command {
        let mut cmd = Command::new(&self.bin);
        clean_env(&mut cmd)
            .env_remove("CKPTFS_CONFIG")
            .env_remove("RUST_LOG")
            .env("AWS_ACCESS_KEY_ID", &self.creds.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.creds.secret)
            .arg("--config")
            .arg(&self.config)
            .arg("--cache")
            .arg(cache)
            .arg("--s3")
            .arg(format!("s3://{BUCKET}/{prefix}"))
            .arg("--s3-endpoint")
            .arg(&self.endpoint)
            .arg("--s3-parallel")
            .arg(self.parallel.to_string())
            .arg("--s3-zstd-level")
            .arg(self.zstd_level.to_string());
        cmd
    }

    /// `ckptfs put JOB FILES… --set SET` into `cache` (not timed).
    fn put(&self, cache: &Path, prefix: &str, src: &Path, set: &str) -> anyhow::Result<()> {
        run_ok(
            self.cmd(cache, prefix)
                .arg("put")
                .arg(JOB)
                .args(set_files(src))
                .arg("--set")
                .arg(set),
        )?;
        Ok(())
    }

    fn drain(
        &self,
        cache: &Path,
        prefix: &str,
        set: &str,
        log: &Path,
        server: u32,
    ) -> anyhow::Result<Drained> {
        let mut cmd = self.cmd(cache, prefix);
        cmd.env("RUST_LOG", "libckpt=info")
            .args(["--drain-jitter", "0s", "drain", "--wait"])
            .arg("--timeout")
            .arg(format!("{}s", DRAIN_TIMEOUT.as_secs()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).with_context(|| format!("creating {}", log.display()))?);
        let snap = Snap::now(server);
        let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
        let usage = snap.usage(server);
        ensure!(
            status.success(),
            "{cmd:?} failed ({status}):\n{}",
            log_tail(log)
        );
        let text = fs::read_to_string(log).unwrap_or_default();
        Ok(Drained {
            usage,
            report: parse_drained(&text).remove(set),
        })
    }

    fn version(&self) -> String {
        run_ok(Command::new(&self.bin).arg("--version"))
            .map(|o| String::from_utf8_lossy(&o).trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    }
}

/// `… drained tier=s3 job=J set=S bytes_read=N bytes_sent=N skipped=N`
/// lines: set → (bytes_read, bytes_sent, skipped).
fn parse_drained(log: &str) -> HashMap<String, (u64, u64, u64)> {
    let mut out = HashMap::new();
    for line in log.lines().filter(|l| l.contains(" drained ")) {
        let num = |name: &str| log_field(line, name).and_then(|v| v.parse::<u64>().ok());
        if let (Some(set), Some(r), Some(s), Some(k)) = (
            log_field(line, "set"),
            num("bytes_read"),
            num("bytes_sent"),
            num("skipped"),
        ) {
            out.insert(set.to_owned(), (r, s, k));
        }
    }
    out
}

/// rclone with a config of its own naming the server as remote `bench`.
struct Rclone {
    config: PathBuf,
    parallel: u32,
}

impl Rclone {
    fn setup(dir: &Path, endpoint: &str, creds: &Creds, parallel: u32) -> anyhow::Result<Rclone> {
        let config = dir.join("rclone.conf");
        fs::write(
            &config,
            format!(
                "[bench]\ntype = s3\nprovider = Other\nenv_auth = false\naccess_key_id = {}\n\
                 secret_access_key = {}\nendpoint = {endpoint}\nregion = us-east-1\n\
                 force_path_style = true\nno_check_bucket = true\n",
                creds.key, creds.secret
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        Ok(Rclone { config, parallel })
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("rclone");
        clean_env(&mut cmd)
            .arg("--config")
            .arg(&self.config)
            .arg("--transfers")
            .arg(self.parallel.to_string());
        cmd
    }

    /// `rclone copy --checksum SRC bench:BUCKET/PREFIX`.
    fn upload(&self, src: &Path, prefix: &str) -> anyhow::Result<()> {
        run_ok(
            self.cmd()
                .arg("copy")
                .arg("--checksum")
                .arg(src)
                .arg(format!("bench:{BUCKET}/{prefix}")),
        )
        .context(
            "is rclone installed? (scripts/install-seaweedfs.sh, or apt-get install -y rclone)",
        )?;
        Ok(())
    }

    /// `rclone copy bench:BUCKET/PREFIX DEST`.
    fn download(&self, prefix: &str, dest: &Path) -> anyhow::Result<()> {
        run_ok(
            self.cmd()
                .arg("copy")
                .arg(format!("bench:{BUCKET}/{prefix}"))
                .arg(dest),
        )?;
        Ok(())
    }

    fn version() -> String {
        let mut cmd = Command::new("rclone");
        clean_env(&mut cmd).arg("version");
        run_ok(&mut cmd)
            .map(|o| {
                String::from_utf8_lossy(&o)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|_| "rclone: unknown version".into())
    }
}

// ---------------------------------------------------------------------------
// Files and directories.
// ---------------------------------------------------------------------------

/// Whether the files of `got` (found anywhere below it, by name) hold the
/// same bytes as those of `want`.
fn same_files(want: &Path, got: &Path) -> anyhow::Result<bool> {
    fn find(dir: &Path, name: &std::ffi::OsStr) -> Option<PathBuf> {
        for e in fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(f) = find(&p, name) {
                    return Some(f);
                }
            } else if e.file_name() == name {
                return Some(p);
            }
        }
        None
    }
    for w in set_files(want) {
        let Some(g) = w.file_name().and_then(|n| find(got, n)) else {
            return Ok(false);
        };
        let (mut a, mut b) = (File::open(&w)?, File::open(&g)?);
        let (mut x, mut y) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
        loop {
            let (n, m) = (read_full(&mut a, &mut x)?, read_full(&mut b, &mut y)?);
            if n != m || x[..n] != y[..m] {
                return Ok(false);
            }
            if n == 0 {
                break;
            }
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------------------
// The benchmarks.
// ---------------------------------------------------------------------------

/// `key.{secs,client,server,others}` of one transfer.
fn put_usage(fig: &mut Figures, key: &str, round: usize, u: &Usage) {
    fig.put(&format!("{key}.secs"), round, u.secs);
    fig.put(&format!("{key}.client"), round, u.client_cpu);
    fig.put(&format!("{key}.server"), round, u.server_cpu);
    fig.put(&format!("{key}.others"), round, u.others_cpu);
}

struct Ctx<'a> {
    args: &'a Args,
    ck: Ckptfs,
    rclone: Rclone,
    client: &'a S3Client,
    server: u32,
    data: &'a Data,
    work: PathBuf,
    logs: PathBuf,
    fig: &'a mut Figures,
}

impl Ctx<'_> {
    fn has(&self, b: Bench) -> bool {
        self.args.only.contains(&b)
    }

    fn say(&self, round: usize, what: &str) {
        eprintln!("round {}/{}: {what}", round + 1, self.args.runs);
    }

    fn log(&self, name: &str, round: usize) -> PathBuf {
        self.logs.join(format!("{name}-r{round}.log"))
    }

    /// The set restore reads back: the second when it was drained.
    fn last_set(&self) -> &'static str {
        if self.has(Bench::Delta) {
            SET_B
        } else {
            SET_A
        }
    }

    /// Benchmarks 1 and 2, ckptfs side: set A drained to a fresh prefix,
    /// then set B after it.
    fn ckptfs_push(&mut self, round: usize, prefix: &str) -> anyhow::Result<()> {
        let s = Scratch::new(self.work.join("push-cache"))?;
        let cache = s.join("cache");
        let size = self.data.size as f64;
        self.ck.put(&cache, prefix, &self.data.a, SET_A)?;
        quiesce(QUIET)?;
        let d = self.ck.drain(
            &cache,
            prefix,
            SET_A,
            &self.log("drain-a", round),
            self.server,
        )?;
        let (objects_a, stored_a) = self.client.usage(prefix)?;
        put_usage(self.fig, "push.ckptfs", round, &d.usage);
        self.fig.put("push.ckptfs.stored", round, stored_a as f64);
        self.fig.put("push.ckptfs.objects", round, objects_a as f64);
        if let Some((_, sent, _)) = d.report {
            self.fig.put("push.ckptfs.sent", round, sent as f64);
        }
        self.say(
            round,
            &format!(
                "ckptfs drain of set A      {:>6.2} s {:>6.0} MB/s, sent {}, stored {} in {objects_a} objects; {}",
                d.usage.secs,
                mb_per_s(self.data.size, d.usage.secs),
                d.report.map_or("?".into(), |r| ByteSize(r.1).to_string()),
                ByteSize(stored_a),
                d.usage.note()
            ),
        );
        if self.has(Bench::Delta) {
            self.ck.put(&cache, prefix, &self.data.b, SET_B)?;
            quiesce(QUIET)?;
            let d = self.ck.drain(
                &cache,
                prefix,
                SET_B,
                &self.log("drain-b", round),
                self.server,
            )?;
            let (objects_b, stored_b) = self.client.usage(prefix)?;
            let grown = stored_b.saturating_sub(stored_a);
            put_usage(self.fig, "delta.ckptfs", round, &d.usage);
            self.fig.put("delta.ckptfs.grown", round, grown as f64);
            self.fig.put(
                "delta.ckptfs.new_objects",
                round,
                objects_b.saturating_sub(objects_a) as f64,
            );
            self.fig.put("delta.ckptfs.stored", round, stored_b as f64);
            if let Some((_, sent, skipped)) = d.report {
                self.fig.put("delta.ckptfs.sent", round, sent as f64);
                self.fig.put("delta.ckptfs.skipped", round, skipped as f64);
            }
            self.say(
                round,
                &format!(
                    "ckptfs drain of set B      {:>6.2} s, sent {} ({:.2} % of the set), bucket +{} in {} objects, {} chunks skipped; {}",
                    d.usage.secs,
                    d.report.map_or("?".into(), |r| ByteSize(r.1).to_string()),
                    100.0 * d.report.map_or(grown, |r| r.1) as f64 / size,
                    ByteSize(grown),
                    objects_b.saturating_sub(objects_a),
                    d.report.map_or("?".into(), |r| r.2.to_string()),
                    d.usage.note()
                ),
            );
        }
        Ok(())
    }

    /// Benchmarks 1 and 2, rclone side.
    fn rclone_push(&mut self, round: usize, prefix: &str) -> anyhow::Result<()> {
        quiesce(QUIET)?;
        let snap = Snap::now(self.server);
        self.rclone.upload(&self.data.a, prefix)?;
        let u = snap.usage(self.server);
        let (objects, stored) = self.client.usage(prefix)?;
        ensure!(
            stored == self.data.size,
            "rclone stored {stored} bytes of {}",
            self.data.size
        );
        put_usage(self.fig, "push.rclone", round, &u);
        self.fig.put("push.rclone.stored", round, stored as f64);
        self.say(
            round,
            &format!(
                "rclone copy of set A       {:>6.2} s {:>6.0} MB/s, stored {} in {objects} objects; {}",
                u.secs,
                mb_per_s(self.data.size, u.secs),
                ByteSize(stored),
                u.note()
            ),
        );
        if self.has(Bench::Delta) {
            quiesce(QUIET)?;
            let snap = Snap::now(self.server);
            self.rclone.upload(&self.data.b, prefix)?;
            let u = snap.usage(self.server);
            let (_, stored) = self.client.usage(prefix)?;
            put_usage(self.fig, "delta.rclone", round, &u);
            self.fig.put("delta.rclone.stored", round, stored as f64);
            self.say(
                round,
                &format!(
                    "rclone copy of set B onto A {:>5.2} s ({} of {FILES} files changed); {}",
                    u.secs,
                    self.data.changed_files,
                    u.note()
                ),
            );
        }
        Ok(())
    }

    /// Benchmark 1, the server's ingest: 1 MiB objects, uncompressed.
    fn raw_push(&mut self, round: usize, prefix: &str) -> anyhow::Result<()> {
        quiesce(QUIET)?;
        let snap = Snap::now(self.server);
        let sent = self.client.raw_put(
            &set_files(&self.data.a),
            prefix,
            self.args.parallel as usize,
        )?;
        let u = snap.usage(self.server);
        ensure!(
            sent == self.data.size,
            "the raw PUT sent {sent} bytes of {}",
            self.data.size
        );
        let (objects, stored) = self.client.usage(prefix)?;
        put_usage(self.fig, "push.raw", round, &u);
        self.fig.put("push.raw.stored", round, stored as f64);
        self.say(
            round,
            &format!(
                "raw PUT of 1 MiB objects   {:>6.2} s {:>6.0} MB/s, stored {} in {objects} objects; {}",
                u.secs,
                mb_per_s(self.data.size, u.secs),
                ByteSize(stored),
                u.note()
            ),
        );
        Ok(())
    }

    /// Benchmark 3, one variant.
    fn restore(
        &mut self,
        round: usize,
        ck_prefix: &str,
        rc_prefix: &str,
        ckptfs: bool,
    ) -> anyhow::Result<()> {
        let s = Scratch::new(self.work.join("restore"))?;
        let to = s.join("restored");
        let set = self.last_set();
        let want = if set == SET_B {
            &self.data.b
        } else {
            &self.data.a
        };
        quiesce(QUIET)?;
        let snap = Snap::now(self.server);
        let name = if ckptfs {
            run_ok(
                self.ck
                    .cmd(&s.join("empty-cache"), ck_prefix)
                    .args(["restore", JOB, set, "--from", "s3", "--to"])
                    .arg(&to),
            )?;
            "ckptfs"
        } else {
            self.rclone.download(rc_prefix, &to)?;
            "rclone"
        };
        let u = snap.usage(self.server);
        let got = tree_bytes(&to);
        ensure!(
            got == self.data.size,
            "{name} restored {got} bytes of {}",
            self.data.size
        );
        // Checked on the first round only: a full compare reads the set
        // twice more.
        if round == 0 {
            ensure!(
                same_files(want, &to)?,
                "{name} restored files that differ from set {set}"
            );
        }
        put_usage(self.fig, &format!("restore.{name}"), round, &u);
        self.say(
            round,
            &format!(
                "{name} restore of set {set}   {:>6.2} s {:>6.0} MB/s; {}",
                u.secs,
                mb_per_s(self.data.size, u.secs),
                u.note()
            ),
        );
        Ok(())
    }

    fn round(&mut self, round: usize) -> anyhow::Result<()> {
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
        fn rotated<T: Copy>(v: &[T], round: usize) -> Vec<T> {
            (0..v.len()).map(|k| v[(round + k) % v.len()]).collect()
        }
        let (ck, rc, raw) = (
            format!("ckptfs-r{round}"),
            format!("rclone-r{round}"),
            format!("raw-r{round}"),
        );
        let mut push = vec![0u8, 1];
        if self.has(Bench::Push) {
            push.push(2);
        }
        for v in rotated(&push, round) {
            match v {
                0 => self.ckptfs_push(round, &ck)?,
                1 => self.rclone_push(round, &rc)?,
                _ => self.raw_push(round, &raw)?,
            }
        }
        if self.has(Bench::Restore) {
            for v in rotated(&[true, false], round) {
                self.restore(round, &ck, &rc, v)?;
            }
        }
        Ok(())
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.size >= FILES * CHUNK && args.size.is_multiple_of(FILES * CHUNK),
        "--size must be a positive whole number of 4 MiB (4 files of whole 1 MiB chunks), got {}",
        args.size
    );
    require_root("ckpt-bench s3 drops the page cache between transfers")?;
    let mut only = args.only.clone();
    only.sort();
    only.dedup();
    ensure!(!only.is_empty(), "no benchmark to run");
    let bin = ckptfs_bin(args.ckptfs.as_deref())?;
    let weed = find_weed(args.weed.as_deref())?;
    let rclone = Rclone::version();
    ensure!(
        rclone.starts_with("rclone"),
        "rclone does not run: run scripts/install-seaweedfs.sh (or apt-get install -y rclone)"
    );

    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let data_dir = dir.join("data");
    let free = machine::free_bytes(&dir)? + tree_bytes(&data_dir);
    // Sets A and B, the cache holding both, and the server's copies (ckptfs
    // compressed, rclone's two versions, the raw PUT), a restore.
    let need = 9 * args.size + DISK_MARGIN;
    ensure!(
        free >= need,
        "{} has {} free; this run needs {} (nine times --size plus {})",
        dir.display(),
        ByteSize(free),
        ByteSize(need),
        ByteSize(DISK_MARGIN)
    );
    let machine = Machine::probe(&dir);
    eprintln!("ckpt-bench s3: {machine}");

    let work = dir.join("work");
    let logs = dir.join("logs");
    // Under a directory of our own, so that the cleanup never removes what
    // --server-dir names.
    let server_root = match &args.server_dir {
        Some(d) => d.join("ckpt-s3bench-server"),
        None => work.join("server"),
    };
    remove_dir(&work)?;
    remove_dir(&logs)?;
    remove_dir(&server_root)?;
    fs::create_dir_all(&work)?;
    fs::create_dir_all(&logs)?;
    let a = Args {
        only,
        ..args.clone()
    };
    let result = (|| -> anyhow::Result<String> {
        let data = Data::generate(&data_dir, args.size, FILES, "s3")?;
        let config = work.join("ckptfs.toml");
        fs::write(&config, "# ckpt-bench s3: ckptfs's built-in defaults\n")?;
        let mut fig = Figures::new(args.runs as usize);
        let mut ckptfs_version = String::new();
        for round in 0..args.runs as usize {
            let creds = Creds::random()?;
            let sdir = server_root.join(format!("r{round}"));
            let mut server = Weed::start(
                &weed,
                &sdir,
                &logs.join(format!("weed-r{round}.log")),
                &creds,
            )?;
            let client = S3Client::new(&server.endpoint(), &creds, args.parallel as usize)?;
            let started = Instant::now();
            server.ready(&client)?;
            eprintln!(
                "round {}/{}: weed server (pid {}) serving S3 on {} after {:.1} s",
                round + 1,
                args.runs,
                server.pid,
                server.endpoint(),
                started.elapsed().as_secs_f64()
            );
            let ck = Ckptfs {
                bin: bin.clone(),
                config: config.clone(),
                endpoint: server.endpoint(),
                creds: creds.clone(),
                parallel: args.parallel,
                zstd_level: args.zstd_level,
            };
            ckptfs_version = ck.version();
            let mut ctx = Ctx {
                args: &a,
                ck,
                rclone: Rclone::setup(&work, &server.endpoint(), &creds, args.parallel)?,
                client: &client,
                server: server.pid,
                data: &data,
                work: work.clone(),
                logs: logs.clone(),
                fig: &mut fig,
            };
            ctx.round(round)?;
            drop(ctx);
            drop(client);
            server.stop()?;
            drop(server);
            remove_dir(&sdir)?;
            settle();
        }
        let info = Info {
            machine: &machine,
            dir: &dir,
            server_dir: args.server_dir.as_ref().map(|_| server_root.as_path()),
            ckptfs: ckptfs_version,
            weed: Weed::version(&weed),
            rclone,
        };
        Ok(markdown(&a, &info, &data, &fig))
    })();
    remove_dir(&work)?;
    remove_dir(&server_root)?;
    if result.is_ok() {
        remove_dir(&logs)?;
    } else {
        eprintln!("ckpt-bench s3: logs kept in {}", logs.display());
    }
    if !args.keep_data {
        remove_dir(&data_dir)?;
    }
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
    server_dir: Option<&'a Path>,
    ckptfs: String,
    weed: String,
    rclone: String,
}

/// `client / server / others` CPU seconds of a variant, medians.
fn cpu_cell(fig: &Figures, key: &str) -> String {
    format!(
        "{} / {} / {}",
        opt(fig.median(&format!("{key}.client")), |x| format!("{x:.1}")),
        opt(fig.median(&format!("{key}.server")), |x| format!("{x:.1}")),
        opt(fig.median(&format!("{key}.others")), |x| format!("{x:.1}"))
    )
}

fn markdown(args: &Args, info: &Info<'_>, data: &Data, fig: &Figures) -> String {
    let size = data.size as f64;
    let has = |b| args.only.contains(&b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### ckpt-bench s3: {} sets × {} rounds in {}\n",
        ByteSize(data.size),
        args.runs,
        info.dir.display()
    );
    let _ = writeln!(s, "- machine: {}", info.machine);
    let _ = writeln!(s, "- {}", info.ckptfs);
    let _ = writeln!(
        s,
        "- SeaweedFS `weed server` (master, volume, filer, S3 in one process) on 127.0.0.1, a fresh one per round: {}",
        info.weed
    );
    if let Some(d) = info.server_dir {
        let _ = writeln!(
            s,
            "- **diagnostic**: the server's data in {} ({})",
            d.display(),
            Machine::probe(d.parent().unwrap_or(d)).fs_type
        );
    }
    let _ = writeln!(
        s,
        "- {}; `--transfers {}`, its defaults otherwise (multipart above 200 MiB in 5 MiB parts, 4 per file)",
        info.rclone, args.parallel
    );
    let _ = writeln!(
        s,
        "- {} requests in flight for all three (ckptfs `--s3-parallel`, rclone `--transfers`, the raw PUT); ckptfs `--s3-zstd-level {}`",
        args.parallel, args.zstd_level
    );
    let _ = writeln!(
        s,
        "- data: drain's checkpoint-like generator, {FILES} files × {}, {} chunks of 1 MiB; set B: {} chunks ({:.1} %) rewritten in place, in {} of the {FILES} files",
        ByteSize(data.size / FILES),
        data.chunks,
        data.changed,
        100.0 * data.changed as f64 / data.chunks as f64,
        data.changed_files
    );
    let _ = writeln!(
        s,
        "- `sync`, page cache dropped and a {} s pause before every timed transfer; MB/s = 10^6 bytes/s; ratios are medians of per-round ratios; CPU: seconds of the client (ckptfs, rclone, or this harness for the raw PUT) / of the server / of everything else busy on the machine meanwhile (neighbours, writeback, steal), medians\n",
        QUIET.as_secs()
    );

    let _ = writeln!(s, "#### 1. Set A to a fresh bucket prefix\n");
    let _ = writeln!(
        s,
        "| variant | seconds per round | median s | median MB/s | CPU s: client / server / others | stored in the bucket (median) | ckptfs's speed ÷ its |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    let mut rows = vec![
        ("ckptfs drain --wait", "push.ckptfs"),
        ("rclone copy --checksum", "push.rclone"),
    ];
    if has(Bench::Push) {
        rows.push(("raw PUT, 1 MiB objects, object_store", "push.raw"));
    }
    for (label, k) in rows {
        let secs = format!("{k}.secs");
        let med = fig.median(&secs);
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} | {} | {} |",
            cells(&fig.get(&secs), |x| format!("{x:.2}")),
            opt(med, |m| format!("{m:.2}")),
            opt(med, |m| format!("{:.0}", size / 1e6 / m)),
            cpu_cell(fig, k),
            opt(fig.median(&format!("{k}.stored")), |b| format!(
                "{} MiB",
                mib(b)
            )),
            if k == "push.ckptfs" {
                String::new()
            } else {
                opt(fig.ratio(&secs, "push.ckptfs.secs"), |r| format!("{r:.2}×"))
            }
        );
    }
    let stored = fig.median("push.ckptfs.stored");
    let _ = writeln!(
        s,
        "\nckptfs stored {} MiB for set A ({:.2}:1; median of {} objects: chunks and the set record), rclone {} MiB.",
        opt(stored, mib),
        stored.map_or(f64::NAN, |b| size / b),
        opt(fig.median("push.ckptfs.objects"), |n| format!("{n:.0}")),
        opt(fig.median("push.rclone.stored"), mib),
    );
    let r = fig.ratio("push.rclone.secs", "push.ckptfs.secs");
    let _ = writeln!(
        s,
        "Target ckptfs ≥ 1.0× rclone's speed: {} ({}).",
        verdict(r.map(|r| r >= 1.0)),
        opt(r, |r| format!("{r:.2}×"))
    );
    if has(Bench::Push) {
        let r = fig.ratio("push.raw.secs", "push.ckptfs.secs");
        let _ = writeln!(
            s,
            "Target ckptfs ≥ 0.9× the raw PUT's speed (the server's ingest): {} ({}).",
            verdict(r.map(|r| r >= 0.9)),
            opt(r, |r| format!("{r:.2}×"))
        );
    }
    let _ = writeln!(s);

    if has(Bench::Delta) {
        let _ = writeln!(
            s,
            "#### 2. Set B (10 % of chunks changed) after set A, to the same prefix\n"
        );
        let _ = writeln!(
            s,
            "| round | bytes_sent (drain log) | bucket growth | ÷ set size | chunks skipped | ckptfs s | rclone copy --checksum of B onto A, s | rclone ÷ ckptfs |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let g = |k: &str, r: usize| fig.get(k)[r];
        for r in 0..args.runs as usize {
            let sent = g("delta.ckptfs.sent", r);
            let grown = g("delta.ckptfs.grown", r);
            let (ck, rc) = (g("delta.ckptfs.secs", r), g("delta.rclone.secs", r));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r + 1,
                opt(sent, |b| format!("{b:.0} ({} MiB)", mib(b))),
                opt(grown, |b| format!("{b:.0} ({} MiB)", mib(b))),
                opt(sent.or(grown), |b| format!("{:.2} %", 100.0 * b / size)),
                opt(g("delta.ckptfs.skipped", r), |n| format!(
                    "{n:.0} of {}",
                    data.chunks
                )),
                opt(ck, |x| format!("{x:.2}")),
                opt(rc, |x| format!("{x:.2}")),
                match (ck, rc) {
                    (Some(c), Some(r)) if c > 0.0 => format!("{:.2}×", r / c),
                    _ => "–".into(),
                }
            );
        }
        let _ = writeln!(
            s,
            "\nCPU s (client / server / others), medians: ckptfs {}, rclone {}. rclone sends every changed file whole: {} of {} files, {} MiB.",
            cpu_cell(fig, "delta.ckptfs"),
            cpu_cell(fig, "delta.rclone"),
            data.changed_files,
            FILES,
            mib((data.changed_files * (data.size / FILES)) as f64)
        );
        let _ = writeln!(
            s,
            "In the bucket after set B (median): ckptfs {} MiB for both sets; rclone {} MiB, set B only (its copy of A overwritten; both versions would take {} MiB).",
            opt(fig.median("delta.ckptfs.stored"), mib),
            opt(fig.median("delta.rclone.stored"), mib),
            mib(2.0 * size)
        );
        let worst = fig
            .get("delta.ckptfs.sent")
            .iter()
            .zip(fig.get("delta.ckptfs.grown"))
            .filter_map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            })
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let _ = writeln!(
            s,
            "Target bytes uploaded ≤ 12 % of the set: {} (worst round, the larger of log and bucket: {}).",
            verdict(worst.map(|w| w <= 0.12 * size)),
            opt(worst, |w| format!("{:.2} %", 100.0 * w / size))
        );
        let r = fig.ratio("delta.rclone.secs", "delta.ckptfs.secs");
        let _ = writeln!(
            s,
            "Target ckptfs ≥ 5× faster than rclone copy --checksum: {} ({}).\n",
            verdict(r.map(|r| r >= 5.0)),
            opt(r, |r| format!("{r:.2}×"))
        );
    }

    if has(Bench::Restore) {
        let set = if has(Bench::Delta) { "B" } else { "A" };
        let _ = writeln!(
            s,
            "#### 3. Restore of set {set}: an empty cache / an empty directory\n"
        );
        let _ = writeln!(
            s,
            "| variant | seconds per round | median s | median MB/s | CPU s: client / server / others | its time ÷ ckptfs's |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
        for (label, k) in [
            ("ckptfs restore --from s3", "restore.ckptfs"),
            ("rclone copy", "restore.rclone"),
        ] {
            let secs = format!("{k}.secs");
            let med = fig.median(&secs);
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} |",
                cells(&fig.get(&secs), |x| format!("{x:.2}")),
                opt(med, |m| format!("{m:.2}")),
                opt(med, |m| format!("{:.0}", size / 1e6 / m)),
                cpu_cell(fig, k),
                if k == "restore.ckptfs" {
                    String::new()
                } else {
                    opt(fig.ratio(&secs, "restore.ckptfs.secs"), |r| {
                        format!("{r:.2}×")
                    })
                }
            );
        }
        let r = fig.ratio("restore.rclone.secs", "restore.ckptfs.secs");
        let _ = writeln!(
            s,
            "\nTarget ckptfs ≥ 1.2× faster than rclone copy: {} ({}). Files compared with the set's on round 1.\n",
            verdict(r.map(|r| r >= 1.2)),
            opt(r, |r| format!("{r:.2}×"))
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::drain::{layout, Kind};

    #[test]
    fn exactly_ten_percent_change_over_four_files_and_never_a_zero_chunk() {
        let ch = crate::drain::changed_chunks(FILES, 128);
        let n: usize = ch.iter().flatten().filter(|c| **c).count();
        assert_eq!(n, (4 * 128 * 10usize).div_ceil(100));
        assert_eq!(ch.len(), FILES as usize);
        for (f, row) in ch.iter().enumerate() {
            let l = layout(f as u64, 128);
            for (c, changed) in row.iter().enumerate() {
                assert!(!*changed || l[c].0 != Kind::Zero);
            }
        }
    }

    #[test]
    fn drained_lines_are_parsed() {
        let log = "2026-11-27T10:00:00Z  INFO libckpt::drain: drained tier=s3 job=s3bench set=s2 \
                   bytes_read=2147483648 bytes_sent=123456 skipped=1843\n\
                   2026-11-27T10:00:00Z  INFO libckpt::s3::push: set pushed to S3 job=s3bench \
                   set=s2 report=PushReport { bytes_read: 1, bytes_sent: 2, skipped: 3 }\n";
        let m = parse_drained(log);
        assert_eq!(m.get("s2"), Some(&(2147483648, 123456, 1843)));
        assert_eq!(m.len(), 1);
    }
}
