//! Real SeaweedFS for the S3 tier's tests: [`Weed`], a whole cluster in one
//! `weed server` process on loopback, and [`WeedCluster`], a master, three
//! volume servers and a filer with the S3 gateway, each in its own network
//! namespace, joined by a bridge. Both serve S3 with one identity (a random
//! access and secret key, actions Admin, Read, Write, List, Tagging): every
//! request must be signed with it, and a wrong key is refused (403
//! SignatureDoesNotMatch). Every process is killed by pid on drop, even on
//! panic; the cluster's namespaces, veths and bridge are deleted.
//!
//! The `weed` binary is `$WEED` if set, else /opt/ckptfs/seaweedfs/bin/weed,
//! which scripts/install-seaweedfs.sh installs (a pinned release, together
//! with Debian's rclone). Never a `weed` found on the PATH.
//!
//! Both fixtures also drive `rclone` (see [`Weed::rclone`]), with a config
//! of their own whose remote is called `s3:` (`s3:BUCKET/KEY`): a second,
//! independent S3 client for tests to create buckets, list keys, read
//! objects back, or overwrite one behind ckptfs's back. rclone runs with the
//! machine's CA variables (AWS_CA_BUNDLE, SSL_CERT_FILE, ...) removed: rclone
//! 1.60 fails with LoadCustomCABundleError when AWS_CA_BUNDLE is set, even
//! for plain http.
//!
//! Settings that matter (found on SeaweedFS 4.48):
//! - `-master.telemetry=false`: the master otherwise reports to the vendor.
//! - `-master.electionTimeout=500ms`: the master's raft waits out the
//!   default 10 s before it leads again on a restart over existing state,
//!   and nothing answers until then (restart ready in ~2 s instead of ~17 s).
//! - `-volume.max` raised (default 8): every bucket is a collection, and
//!   the master grows 6 or 7 volumes for each on its first write; with 8 a
//!   second bucket gets "Not enough data nodes found" and its writes fail.
//!   Volume size limits are small (256 MiB, 64 MiB for the cluster) so that
//!   a test's writes also exercise volumes filling up and new ones growing.
//! - `-s3.port.iceberg=0 -s3.port.lance=0`: otherwise fixed ports 8181 and
//!   9101, which parallel tests would fight over.
//! - `-s3.autoCreateBucket=false`: by default a PUT into a missing bucket
//!   creates it (for an Admin identity); here it fails with NoSuchBucket, as
//!   on AWS. Buckets are made with `create_bucket`. (rclone's config has
//!   `no_check_bucket = true` for the same reason: it never creates one by
//!   itself, and its plain `mkdir s3:B` does nothing.)
//! - The local sockets (`-filer.localSocket`, `-s3.localSocket`) go to
//!   /tmp/ckptfs-weed-PID-N-*.sock; `weed server` also makes
//!   /tmp/seaweedfs-{master,volume,filer,s3}-grpc-PORT.sock for its own gRPC
//!   ports, which cannot be moved: they are removed on drop.
//! - Every `weed` runs with the current directory and HOME in its own data
//!   directory, so no security.toml / filer.toml of this machine is read.
//! - Ready means: the S3 port answers a signed ListBuckets (through rclone)
//!   AND the master lists the volume server(s). After a restart the S3 port
//!   answers a few seconds before the volume server has re-registered, and
//!   reads fail meanwhile with "volume N not found".
//! - SIGTERM of `weed server` takes ~15 s at best (the filer's gRPC graceful
//!   stop waits out 15 s for its own metadata subscribers), and sometimes
//!   never ends: the shutdown hooks run one after the other, and when the
//!   volume server's runs before the filer's, the filer's final flush of its
//!   metadata log asks the master for a volume forever ("Not enough data
//!   nodes found"). Seen mostly after a restart. [`Weed::stop`] therefore
//!   waits up to 25 s and then SIGKILLs: count on 15-25 s. Use
//!   [`Weed::kill9`] unless the test is about a clean shutdown.
//!
//! Timings on this 2-core machine: `Weed::start` on an empty directory
//! ~3.3 s (the master's raft bootstrap and the filer's 1 s start delay are
//! built in), `Weed::restart` 2.2-2.5 s (once 5.5 s), `WeedCluster::start`
//! 4.4-5.3 s, `WeedCluster::restart_volume` 0.3-0.5 s. CKPTFS_WEED_TIMING=1
//! in the environment prints each start's time to stderr.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where scripts/install-seaweedfs.sh puts `weed`.
pub const WEED_DEFAULT: &str = "/opt/ckptfs/seaweedfs/bin/weed";

/// Bound for a start or restart to be ready. Generous: it takes 2-7 s, but
/// the machines are shared and noisy.
pub const START_WAIT: Duration = Duration::from_secs(60);

/// How long [`Weed::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_WAIT: Duration = Duration::from_secs(25);

/// The rclone remote name in the fixtures' rclone config: `s3:BUCKET/KEY`.
pub const REMOTE: &str = "s3";

/// The S3 region the fixtures' clients sign for (SeaweedFS takes any).
pub const REGION: &str = "us-east-1";

/// Environment variables naming CA files that this machine sets for its own
/// use, removed for rclone (rclone 1.60 fails with LoadCustomCABundleError
/// when AWS_CA_BUNDLE is set).
pub const CA_VARS: &[&str] = &[
    "AWS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NIX_SSL_CERT_FILE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "HTTPLIB2_CA_CERTS",
    "PIP_CERT",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
];

static SEQ: AtomicU32 = AtomicU32::new(0);
/// Ports handed out by this process (and not given back): two fixtures of
/// one test binary never pick the same port, even before `weed` binds it.
static PORTS_TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Held from choosing a cluster's subnet until its bridge has the address.
static SUBNET_LOCK: Mutex<()> = Mutex::new(());

/// The `weed` to run: `$WEED`, else [`WEED_DEFAULT`].
pub fn weed_bin() -> PathBuf {
    let p = std::env::var_os("WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(WEED_DEFAULT));
    assert!(
        p.is_file(),
        "{} not found: run scripts/install-seaweedfs.sh (as root), or set WEED=/path/to/weed",
        p.display()
    );
    p
}

/// The identity the S3 gateway accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Creds {
    pub access_key: String,
    pub secret_key: String,
}

impl S3Creds {
    /// A fresh random key pair (20 and 40 characters, as AWS's).
    pub fn random() -> S3Creds {
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        const ANY: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut raw = [0u8; 60];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut raw))
            .expect("read /dev/urandom");
        let pick = |set: &[u8], bytes: &[u8]| -> String {
            bytes
                .iter()
                .map(|b| set[*b as usize % set.len()] as char)
                .collect()
        };
        S3Creds {
            access_key: format!("CKPT{}", pick(UPPER, &raw[..16])),
            secret_key: pick(ANY, &raw[16..56]),
        }
    }

    /// The `-s3.config` JSON: one identity with these keys.
    fn s3_config_json(&self) -> String {
        format!(
            "{{\"identities\":[{{\"name\":\"ckptfs-test\",\"credentials\":[{{\
             \"accessKey\":\"{}\",\"secretKey\":\"{}\"}}],\
             \"actions\":[\"Admin\",\"Read\",\"Write\",\"List\",\"Tagging\"]}}]}}\n",
            self.access_key, self.secret_key
        )
    }

    /// Environment for an S3 client child process: AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_DEFAULT_REGION. (The
    /// endpoint is not among them: pass [`Weed::endpoint`] explicitly.)
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_DEFAULT_REGION".into(), REGION.into()),
        ]
    }
}

/// Write `text` to `path` with mode 0600 (it holds the secret key).
fn write_private(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// An rclone config with the remote [`REMOTE`] for `endpoint`.
fn write_rclone_conf(path: &Path, endpoint: &str, creds: &S3Creds) {
    write_private(
        path,
        &format!(
            "[{REMOTE}]\n\
             type = s3\n\
             provider = SeaweedFS\n\
             endpoint = {endpoint}\n\
             access_key_id = {}\n\
             secret_access_key = {}\n\
             region = {REGION}\n\
             no_check_bucket = true\n",
            creds.access_key, creds.secret_key
        ),
    );
}

/// `rclone --config CONF`, with the CA variables and any RCLONE_* of the
/// caller's environment removed.
fn rclone_command(conf: &Path) -> Command {
    let mut c = Command::new("rclone");
    for v in CA_VARS {
        c.env_remove(v);
    }
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RCLONE_") {
            c.env_remove(k);
        }
    }
    c.arg("--config").arg(conf).stdin(Stdio::null());
    c
}

/// A signed ListBuckets through rclone, failing fast: Ok, or rclone's
/// complaint.
fn probe_s3(conf: &Path) -> Result<(), String> {
    let out = rclone_command(conf)
        .args(["lsd", &format!("{REMOTE}:")])
        .args(["--retries", "1", "--low-level-retries", "1"])
        .args(["--contimeout", "2s", "--timeout", "5s"])
        .output()
        .map_err(|e| format!("cannot run rclone (run scripts/install-seaweedfs.sh): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Require that a wrong secret key is refused: the identity is in force.
fn assert_wrong_key_refused(conf: &Path, what: &str, log: impl Fn() -> String) {
    let out = rclone_command(conf)
        .env(
            format!("RCLONE_CONFIG_{}_SECRET_ACCESS_KEY", REMOTE.to_uppercase()),
            "wrong-secret-key-0000000000000000000000",
        )
        .args(["lsd", &format!("{REMOTE}:")])
        .args(["--retries", "1", "--low-level-retries", "1"])
        .output()
        .expect("run rclone");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("SignatureDoesNotMatch"),
        "{what} accepted a request signed with a wrong key (rclone: {}, {err}); log:\n{}",
        out.status,
        log()
    );
}

/// `GET path` over HTTP/1.0; (status, body).
fn http_get(addr: &str, path: &str) -> io::Result<(u16, String)> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status"))?;
    Ok((status, body.to_owned()))
}

/// The volume servers (`IP:PORT`) the master at `master` lists now;
/// `None` if it does not answer.
fn master_data_nodes(master: &str) -> Option<Vec<String>> {
    let (code, body) = http_get(master, "/dir/status").ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut nodes = Vec::new();
    for dc in v["Topology"]["DataCenters"].as_array()? {
        for rack in dc["Racks"].as_array().into_iter().flatten() {
            for n in rack["DataNodes"].as_array().into_iter().flatten() {
                if let Some(u) = n["Url"].as_str() {
                    nodes.push(u.to_owned());
                }
            }
        }
    }
    nodes.sort();
    Some(nodes)
}

/// The master at `master` says it is the raft leader.
fn master_leads(master: &str) -> bool {
    http_get(master, "/cluster/status").is_ok_and(|(code, body)| {
        code == 200 && body.replace(' ', "").contains("\"IsLeader\":true")
    })
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port P of 127.0.0.1 such that P and P+10000 (the gRPC port SeaweedFS
/// derives) are both free now, below the kernel's ephemeral range (so that
/// no outgoing connection takes P+10000 before `weed` binds it), and not
/// handed out before by this process.
fn free_port_pair() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(nanos)
        .wrapping_add(SEQ.fetch_add(1, Ordering::SeqCst).wrapping_mul(7_919));
    let (lo, span) = (10_000u32, 12_500u32); // P in 10000..22500, P+10000 < 32500
    let mut taken = PORTS_TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let p = (lo + (seed.wrapping_add(i.wrapping_mul(7_127))) % span) as u16;
        if taken.contains(&p) || taken.contains(&(p + 10_000)) {
            continue;
        }
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(p) && free(p + 10_000) {
            taken.insert(p);
            taken.insert(p + 10_000);
            return p;
        }
    }
    panic!("no free pair of ports P, P+10000 on 127.0.0.1 below 32500");
}

/// Wait for `child` to exit for up to `within`; its status if it did.
fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL `child` by pid (if it still runs) and reap it.
fn kill9_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // Child::kill is kill(pid, SIGKILL) on the child we spawned.
        let _ = child.kill();
    }
    let _ = wait_exit(child, Duration::from_secs(10));
}

/// SIGTERM, wait up to `within`, then SIGKILL; reap. The exit status.
fn term_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    // SAFETY: kill(2) of our own child, not reaped yet (so the pid is still
    // ours).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if let Some(st) = wait_exit(child, within) {
        return Some(st);
    }
    eprintln!(
        "weed pid {} still running {within:?} after SIGTERM: SIGKILL",
        child.id()
    );
    kill9_child(child);
    child.try_wait().ok().flatten()
}

fn setns_net(fd: i32) -> io::Result<()> {
    // SAFETY: setns(2) on a descriptor we hold open; changes only the
    // calling thread (here: the child between fork and exec).
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A `weed` command with its current directory and HOME in `home`, its
/// output appended to `log` under a start banner.
fn weed_command(home: &Path, log: &Path, banner: &str, args: &[OsString]) -> Command {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    let _ = writeln!(f, "--- {banner} ---");
    let mut c = Command::new(weed_bin());
    // glog writes to /tmp by default, where nothing removes its files.
    c.arg(format!("-logdir={}", home.display()))
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("dup log"))
        .stderr(f);
    c
}

fn abs(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir().expect("cwd").join(p)
    }
}

fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", p.display()));
}

// ---------------------------------------------------------------------------

/// The ports of a one-process [`Weed`]; each one's gRPC port is +10000.
#[derive(Debug, Clone, Copy)]
pub struct WeedPorts {
    pub master: u16,
    pub volume: u16,
    pub filer: u16,
    pub s3: u16,
}

/// A whole SeaweedFS (master, volume server, filer, S3 gateway) in one
/// `weed server` process on 127.0.0.1, data under `DIR/data`, log in
/// `DIR/weed.log` (appended to across restarts). Killed on drop.
pub struct Weed {
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    s3_config: PathBuf,
    rclone_conf: PathBuf,
    ports: WeedPorts,
    creds: S3Creds,
    child: Option<Child>,
    pid: u32,
    starts: u32,
    /// /tmp/ckptfs-weed-PID-N: prefix of the local sockets.
    sock_prefix: String,
}

impl Weed {
    /// `weed server -dir=DIR/data -ip=127.0.0.1 -filer -s3 ...` on free
    /// ports with a fresh identity; returns once the S3 port answers a
    /// signed ListBuckets, the master lists the volume server and a wrong
    /// key is refused, within [`START_WAIT`], else panics with the log tail.
    /// A start that loses a port to another process is retried on others.
    pub fn start(dir: &Path) -> Weed {
        let dir = abs(dir);
        mkdir(&dir);
        let data = dir.join("data");
        mkdir(&data);
        let creds = S3Creds::random();
        let s3_config = dir.join("s3.json");
        write_private(&s3_config, &creds.s3_config_json());
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let mut w = Weed {
            log: dir.join("weed.log"),
            rclone_conf: dir.join("rclone.conf"),
            dir,
            data,
            s3_config,
            ports: WeedPorts {
                master: 0,
                volume: 0,
                filer: 0,
                s3: 0,
            },
            creds,
            child: None,
            pid: 0,
            starts: 0,
            sock_prefix: format!("/tmp/ckptfs-weed-{}-{n}", std::process::id()),
        };
        for attempt in 1..=3 {
            w.ports = WeedPorts {
                master: free_port_pair(),
                volume: free_port_pair(),
                filer: free_port_pair(),
                s3: free_port_pair(),
            };
            write_rclone_conf(&w.rclone_conf, &w.endpoint(), &w.creds);
            match w.spawn_and_wait() {
                Ok(()) => {
                    assert_wrong_key_refused(&w.rclone_conf, "weed server", || w.log_tail());
                    return w;
                }
                Err(e) if attempt < 3 && e.contains("address already in use") => {
                    eprintln!("weed server lost a port ({e}): again on other ports");
                    w.remove_sockets();
                }
                Err(e) => panic!("{e}; log:\n{}", w.log_tail()),
            }
        }
        unreachable!()
    }

    fn args(&self) -> Vec<OsString> {
        let p = self.ports;
        [
            "server".to_owned(),
            format!("-dir={}", self.data.display()),
            "-ip=127.0.0.1".to_owned(),
            format!("-master.port={}", p.master),
            "-master.telemetry=false".to_owned(),
            "-master.electionTimeout=500ms".to_owned(),
            "-master.volumeSizeLimitMB=256".to_owned(),
            format!("-volume.port={}", p.volume),
            "-volume.max=500".to_owned(),
            "-volume.preStopSeconds=0".to_owned(),
            "-filer".to_owned(),
            format!("-filer.port={}", p.filer),
            format!("-filer.localSocket={}-filer.sock", self.sock_prefix),
            "-s3".to_owned(),
            format!("-s3.port={}", p.s3),
            format!("-s3.config={}", self.s3_config.display()),
            format!("-s3.localSocket={}-s3.sock", self.sock_prefix),
            "-s3.port.iceberg=0".to_owned(),
            "-s3.port.lance=0".to_owned(),
            "-s3.autoCreateBucket=false".to_owned(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect()
    }

    /// Spawn `weed server` and wait until ready; the reason if not.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "weed server already running");
        self.starts += 1;
        let banner = format!(
            "weed server start #{} (ports {:?})",
            self.starts, self.ports
        );
        let child = weed_command(&self.data, &self.log, &banner, &self.args())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", weed_bin().display()))?;
        self.pid = child.id();
        self.child = Some(child);
        let t0 = Instant::now();
        let master = format!("127.0.0.1:{}", self.ports.master);
        let s3: SocketAddr = format!("127.0.0.1:{}", self.ports.s3).parse().unwrap();
        let mut last = String::from("nothing answered yet");
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                let this_start = log.rsplit(&banner).next().unwrap_or("");
                let why = if this_start.contains("address already in use") {
                    " (address already in use)"
                } else {
                    ""
                };
                return Err(format!("weed server exited ({st}) while starting{why}"));
            }
            if t0.elapsed() > START_WAIT {
                return Err(format!(
                    "weed server (pid {}) not ready within {START_WAIT:?}: {last}",
                    self.pid
                ));
            }
            if TcpStream::connect_timeout(&s3, Duration::from_millis(200)).is_err() {
                last = format!("S3 port {} not listening", self.ports.s3);
            } else if master_data_nodes(&master).is_none_or(|n| n.is_empty()) {
                last = "the master lists no volume server".into();
            } else {
                match probe_s3(&self.rclone_conf) {
                    Ok(()) => {
                        if std::env::var_os("CKPTFS_WEED_TIMING").is_some() {
                            eprintln!(
                                "weed server start #{} ready in {:?}",
                                self.starts,
                                t0.elapsed()
                            );
                        }
                        return Ok(());
                    }
                    Err(e) => last = format!("signed ListBuckets failed: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT` of the S3 gateway.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    pub fn creds(&self) -> &S3Creds {
        &self.creds
    }

    pub fn ports(&self) -> WeedPorts {
        self.ports
    }

    /// The directory given to [`Weed::start`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Create bucket `name` (>= 3 characters, S3 rules) via rclone; panics
    /// on failure.
    pub fn create_bucket(&self, name: &str) {
        create_bucket(&self.rclone_conf, name, || self.log_tail());
    }

    /// SIGKILL the server by pid and reap it. No-op if not running.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9_child(&mut c);
        }
    }

    /// Start again on the same directory, ports and identity (SIGKILL
    /// first if still running) and wait until ready, else panic.
    pub fn restart(&mut self) {
        self.kill9();
        if let Err(e) = self.spawn_and_wait() {
            panic!("restart: {e}; log:\n{}", self.log_tail());
        }
    }

    /// SIGTERM, wait up to [`STOP_WAIT`] (25 s), then SIGKILL; reaped.
    /// Takes 15-25 s (see the module doc: weed's shutdown can hang). The
    /// exit status (`None` if it was not running).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        term_child(&mut c, STOP_WAIT)
    }

    /// The process is running (started, and not killed or stopped).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// pid of the current (or last) `weed server`.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last 80 lines of the log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 80)
    }

    /// Environment for an S3 client child process (see [`S3Creds::env`]).
    pub fn env(&self) -> Vec<(String, String)> {
        self.creds.env()
    }

    /// `rclone --config <this server's rclone.conf>` with the machine's CA
    /// variables removed; the remote is `s3:`. Add args and run it.
    pub fn rclone_command(&self) -> Command {
        rclone_command(&self.rclone_conf)
    }

    /// Run `rclone ARGS` against this server (remote `s3:`, e.g.
    /// `["copyto", "/tmp/f", "s3:bkt/key"]`). rclone's own retries are
    /// in force (pass `--retries 1 --low-level-retries 1` to fail fast).
    pub fn rclone(&self, args: &[&str]) -> Output {
        self.rclone_command()
            .args(args)
            .output()
            .expect("run rclone (install it with scripts/install-seaweedfs.sh)")
    }

    fn remove_sockets(&self) {
        let p = self.ports;
        let mut socks = vec![
            format!("{}-filer.sock", self.sock_prefix),
            format!("{}-s3.sock", self.sock_prefix),
        ];
        for (svc, port) in [
            ("master", p.master),
            ("volume", p.volume),
            ("filer", p.filer),
            ("s3", p.s3),
        ] {
            if port != 0 {
                socks.push(format!(
                    "/tmp/seaweedfs-{svc}-grpc-{}.sock",
                    port as u32 + 10_000
                ));
                socks.push(format!("/tmp/seaweedfs-{svc}-{port}.sock"));
            }
        }
        for s in socks {
            let _ = fs::remove_file(s);
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.kill9();
        self.remove_sockets();
    }
}

fn create_bucket(conf: &Path, name: &str, log: impl Fn() -> String) {
    assert!(
        name.len() >= 3,
        "S3 bucket names need at least 3 characters: {name:?}"
    );
    // The config says no_check_bucket (rclone must not try to create
    // buckets behind a test's back), under which `mkdir` does nothing.
    let out = rclone_command(conf)
        .args(["mkdir", "--s3-no-check-bucket=false"])
        .arg(format!("{REMOTE}:{name}"))
        .output()
        .expect("run rclone");
    assert!(
        out.status.success(),
        "rclone mkdir {REMOTE}:{name}: {}\n{}\nlog:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    let out = rclone_command(conf)
        .args(["lsf", "--dirs-only", &format!("{REMOTE}:")])
        .output()
        .expect("run rclone");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.lines().any(|l| l.trim_end_matches('/') == name),
        "bucket {name} not listed after rclone mkdir: {listed:?} {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );
}

// ---------------------------------------------------------------------------

/// Number of volume servers of a [`WeedCluster`].
pub const CLUSTER_VOLUMES: usize = 3;

/// One process of the cluster, in its own network namespace.
struct Node {
    name: String,
    ns: String,
    ns_fd: Option<File>,
    /// Host end of its veth, on the bridge.
    veth: String,
    ip: String,
    home: PathBuf,
    log: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    pid: u32,
    starts: u32,
}

impl Node {
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        self.starts += 1;
        let banner = format!("{} start #{}", self.name, self.starts);
        let mut c = weed_command(&self.home, &self.log, &banner, &self.args);
        let fd = self.ns_fd.as_ref().expect("namespace open").as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe; the descriptor stays open
        // in the child until exec (it is close-on-exec).
        unsafe {
            c.pre_exec(move || setns_net(fd));
        }
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("spawn weed ({}): {e}", self.name));
        self.pid = child.id();
        self.child = Some(child);
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(st)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill9_child(&mut c);
        }
    }
}

/// A real multi-node SeaweedFS: one `weed master -defaultReplication=001`,
/// [`CLUSTER_VOLUMES`] (3) `weed volume` servers and one `weed filer -s3`,
/// each in its own network namespace `ckw-PID-N-ROLE`, joined by a bridge
/// `cwPID-N` in the test's namespace on 10.203.X.0/24; the bridge holds
/// 10.203.X.1, so the test process and its children reach the S3 gateway
/// at [`WeedCluster::endpoint`] (`http://10.203.X.20:8333`) directly.
/// Master .10:9333, volume servers .11, .12, .13 :8080, filer .20:8888.
/// Data and logs under DIR/{master,vol0,vol1,vol2,filer}(.log).
///
/// Why three volume servers: replication 001 puts every volume on two
/// servers of the rack, and a volume is writable only while both copies
/// are up. With two servers, killing one leaves no writable volume and the
/// master cannot grow one ("No matching data node found"): every PUT fails
/// (500 InternalError, each attempt after ~30 s of the filer retrying its
/// volume assignment) until the server comes back, when writes resume at
/// once; reads still work from the other copy. With three, after a kill
/// the volumes on the surviving pair stay writable and the master grows new
/// ones there as they fill (64 MiB volumes, so a test's writes do fill
/// some): writes go on, and everything written before the kill still reads
/// back. A chunk in flight to a volume with a copy on the killed server is
/// retried inside SeaweedFS (the filer logs 3 tries to the dead replica and
/// a cleanup): a kill in the middle of a 300 MiB multipart upload through
/// rclone never failed an S3 request (7 of 7 runs). The master drops a
/// SIGKILLed server at once (< 1 ms: its heartbeat stream breaks).
/// Placement is random: see [`WeedCluster::volume_ids`] to kill a server
/// that holds data.
pub struct WeedCluster {
    dir: PathBuf,
    creds: S3Creds,
    rclone_conf: PathBuf,
    bridge: String,
    subnet: String,
    master: Node,
    volumes: Vec<Node>,
    filer: Node,
    sock_prefix: String,
}

/// Run `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 10.203.X.0/24 that no interface of the test's namespace uses.
fn free_subnet(seed: u32) -> u32 {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("run ip addr show");
    let used = String::from_utf8_lossy(&out.stdout);
    for i in 0..250 {
        let x = (seed.wrapping_add(i) % 250) + 1;
        if !used.contains(&format!("inet 10.203.{x}.")) {
            return x;
        }
    }
    panic!("no free 10.203.X.0/24");
}

impl WeedCluster {
    /// Build the network, start the master, then (once it leads) the
    /// volume servers and the filer with S3; returns once the S3 gateway
    /// answers a signed ListBuckets, the master lists all volume servers and
    /// a wrong key is refused, within [`START_WAIT`], else panics with the
    /// logs' tails.
    pub fn start(dir: &Path) -> WeedCluster {
        let dir = abs(dir);
        mkdir(&dir);
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let bridge = format!("cw{pid}-{n}");
        assert!(bridge.len() + 2 <= 15, "interface name {bridge}v0 too long");
        // Taken under the lock: two clusters of this process never pick the
        // same subnet between the check and `ip addr add`.
        let guard = SUBNET_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let x = free_subnet(pid.wrapping_mul(7).wrapping_add(n));
        let subnet = format!("10.203.{x}");
        let creds = S3Creds::random();
        let s3_config = dir.join("s3.json");
        write_private(&s3_config, &creds.s3_config_json());
        let sock_prefix = format!("/tmp/ckptfs-weed-{pid}-{n}");
        let node = |name: &str, role: &str, host: u32, args: Vec<String>| -> Node {
            let home = dir.join(name);
            mkdir(&home);
            Node {
                name: name.to_owned(),
                ns: format!("ckw-{pid}-{n}-{name}"),
                ns_fd: None,
                veth: format!("{bridge}{role}"),
                ip: format!("{subnet}.{host}"),
                log: dir.join(format!("{name}.log")),
                home,
                args: args.into_iter().map(OsString::from).collect(),
                child: None,
                pid: 0,
                starts: 0,
            }
        };
        let master_addr = format!("{subnet}.10:9333");
        let master = node(
            "master",
            "m",
            10,
            vec![
                "master".into(),
                format!("-ip={subnet}.10"),
                "-port=9333".into(),
                format!("-mdir={}", dir.join("master").display()),
                "-defaultReplication=001".into(),
                "-volumeSizeLimitMB=64".into(),
                "-electionTimeout=500ms".into(),
                "-telemetry=false".into(),
            ],
        );
        let volumes = (0..CLUSTER_VOLUMES as u32)
            .map(|i| {
                let name = format!("vol{i}");
                let d = dir.join(&name);
                node(
                    &name,
                    &format!("v{i}"),
                    11 + i,
                    vec![
                        "volume".into(),
                        format!("-ip={subnet}.{}", 11 + i),
                        "-port=8080".into(),
                        format!("-dir={}", d.display()),
                        format!("-mserver={master_addr}"),
                        "-max=300".into(),
                        "-preStopSeconds=0".into(),
                    ],
                )
            })
            .collect();
        let filer = node(
            "filer",
            "f",
            20,
            vec![
                "filer".into(),
                format!("-ip={subnet}.20"),
                "-port=8888".into(),
                format!("-master={master_addr}"),
                format!("-defaultStoreDir={}", dir.join("filer").display()),
                format!("-localSocket={sock_prefix}-filer.sock"),
                "-s3".into(),
                "-s3.port=8333".into(),
                format!("-s3.config={}", s3_config.display()),
                format!("-s3.localSocket={sock_prefix}-s3.sock"),
                "-s3.port.iceberg=0".into(),
                "-s3.port.lance=0".into(),
                "-s3.autoCreateBucket=false".into(),
            ],
        );
        let mut c = WeedCluster {
            rclone_conf: dir.join("rclone.conf"),
            dir,
            creds,
            bridge,
            subnet,
            master,
            volumes,
            filer,
            sock_prefix,
        };
        let t0 = Instant::now();
        c.build_net();
        drop(guard);
        write_rclone_conf(&c.rclone_conf, &c.endpoint(), &c.creds);
        c.master.spawn();
        c.wait_for("the master to lead", |c| {
            master_leads(&c.master_addr())
                .then_some(())
                .ok_or_else(|| "not the leader yet".to_owned())
        });
        for v in &mut c.volumes {
            v.spawn();
        }
        c.filer.spawn();
        c.wait_ready();
        if std::env::var_os("CKPTFS_WEED_TIMING").is_some() {
            eprintln!("weed cluster ready in {:?}", t0.elapsed());
        }
        assert_wrong_key_refused(&c.rclone_conf, "the weed cluster", || c.log_tail());
        c
    }

    fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        std::iter::once(&mut self.master)
            .chain(self.volumes.iter_mut())
            .chain(std::iter::once(&mut self.filer))
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master)
            .chain(self.volumes.iter())
            .chain(std::iter::once(&self.filer))
    }

    /// The bridge with the host's address, and per node a namespace and a
    /// veth pair (host end on the bridge, `eth0` inside).
    fn build_net(&mut self) {
        let br = self.bridge.clone();
        ip(&["link", "add", &br, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}.1/24", self.subnet), "dev", &br]);
        ip(&["link", "set", &br, "up"]);
        for nd in self.nodes_mut() {
            ip(&["netns", "add", &nd.ns]);
            nd.ns_fd = Some(
                File::open(format!("/run/netns/{}", nd.ns))
                    .unwrap_or_else(|e| panic!("open netns {}: {e}", nd.ns)),
            );
            ip(&[
                "link", "add", &nd.veth, "type", "veth", "peer", "name", "eth0", "netns", &nd.ns,
            ]);
            ip(&["link", "set", &nd.veth, "master", &br]);
            ip(&["link", "set", &nd.veth, "up"]);
            ip(&["-n", &nd.ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &nd.ns,
                "addr",
                "add",
                &format!("{}/24", nd.ip),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &nd.ns, "link", "set", "eth0", "up"]);
        }
    }

    /// Poll `cond` every 50 ms until Ok; panic (with the logs) if a node
    /// exits or [`START_WAIT`] passes.
    fn wait_for(&mut self, what: &str, mut cond: impl FnMut(&Self) -> Result<(), String>) {
        let t0 = Instant::now();
        loop {
            let mut dead = Vec::new();
            for nd in self.nodes_mut() {
                if let Some(st) = nd.exited() {
                    dead.push(format!("{} exited ({st})", nd.name));
                }
            }
            if !dead.is_empty() {
                panic!(
                    "weed cluster: {} while waiting for {what}; logs:\n{}",
                    dead.join(", "),
                    self.log_tail()
                );
            }
            let last = match cond(self) {
                Ok(()) => return,
                Err(e) => e,
            };
            if t0.elapsed() > START_WAIT {
                panic!(
                    "weed cluster: no {what} within {START_WAIT:?} ({last}); logs:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until S3 answers a signed request and the master lists every
    /// running volume server.
    fn wait_ready(&mut self) {
        let want: Vec<String> = {
            let mut v: Vec<String> = self
                .volumes
                .iter()
                .filter(|v| v.child.is_some())
                .map(|v| format!("{}:8080", v.ip))
                .collect();
            v.sort();
            v
        };
        let s3: SocketAddr = format!("{}.20:8333", self.subnet).parse().unwrap();
        self.wait_for("S3 gateway and volume servers ready", |c| {
            if TcpStream::connect_timeout(&s3, Duration::from_millis(200)).is_err() {
                return Err("S3 port not listening".into());
            }
            let nodes = master_data_nodes(&c.master_addr()).unwrap_or_default();
            if !want.iter().all(|w| nodes.contains(w)) {
                return Err(format!("the master lists {nodes:?}, want {want:?}"));
            }
            probe_s3(&c.rclone_conf).map_err(|e| format!("signed ListBuckets failed: {e}"))
        });
    }

    fn master_addr(&self) -> String {
        format!("{}.10:9333", self.subnet)
    }

    /// `http://10.203.X.20:8333`: the S3 gateway, reachable from the test's
    /// network namespace.
    pub fn endpoint(&self) -> String {
        format!("http://{}.20:8333", self.subnet)
    }

    pub fn creds(&self) -> &S3Creds {
        &self.creds
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Environment for an S3 client child process (see [`S3Creds::env`]).
    pub fn env(&self) -> Vec<(String, String)> {
        self.creds.env()
    }

    /// Create bucket `name` via rclone; panics on failure.
    pub fn create_bucket(&self, name: &str) {
        create_bucket(&self.rclone_conf, name, || self.log_tail());
    }

    /// SIGKILL volume server `i` (0..3) by pid and reap it. The master
    /// notices at once (its heartbeat stream breaks): see
    /// [`WeedCluster::volume_servers`].
    pub fn kill9_volume(&mut self, i: usize) {
        self.volumes[i].kill9();
    }

    /// Start volume server `i` again on its data and wait until the master
    /// lists it (and S3 answers).
    pub fn restart_volume(&mut self, i: usize) {
        self.volumes[i].kill9();
        self.volumes[i].spawn();
        self.wait_ready();
    }

    /// pid of volume server `i` (current or last).
    pub fn volume_pid(&self, i: usize) -> u32 {
        self.volumes[i].pid
    }

    /// `IP:PORT` of volume server `i`, as the master names it.
    pub fn volume_addr(&self, i: usize) -> String {
        format!("{}:8080", self.volumes[i].ip)
    }

    /// The bridge in the test's namespace (host address 10.203.X.1).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The network namespaces of the nodes (master, vol0.., filer), as
    /// `ip netns` names them.
    pub fn namespaces(&self) -> Vec<String> {
        self.nodes().map(|nd| nd.ns.clone()).collect()
    }

    /// The volume servers the master lists now (sorted `IP:PORT`).
    pub fn volume_servers(&self) -> Vec<String> {
        master_data_nodes(&self.master_addr()).unwrap_or_default()
    }

    /// The ids of the volumes the master says volume server `i` holds
    /// (empty if it is not listed). Volumes are grown on a bucket's first
    /// write and placed at random: a server may hold none of a bucket's, so
    /// a test that wants its kill to hit data picks a server that holds some
    /// (e.g. the one with the most ids) once the writes have begun.
    pub fn volume_ids(&self, i: usize) -> Vec<u32> {
        let want = self.volume_addr(i);
        let Some((200, body)) = http_get(&self.master_addr(), "/dir/status").ok() else {
            return Vec::new();
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        for dc in v["Topology"]["DataCenters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for rack in dc["Racks"].as_array().into_iter().flatten() {
                for n in rack["DataNodes"].as_array().into_iter().flatten() {
                    if n["Url"].as_str() != Some(want.as_str()) {
                        continue;
                    }
                    // " 1-3 5 7-12"
                    for part in n["VolumeIds"].as_str().unwrap_or("").split_whitespace() {
                        let (a, b) = part.split_once('-').unwrap_or((part, part));
                        if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                            ids.extend(a..=b);
                        }
                    }
                }
            }
        }
        ids
    }

    /// The master's `/dir/status` JSON (topology, volume layouts with their
    /// writable volumes), for diagnostics.
    pub fn master_status(&self) -> String {
        http_get(&self.master_addr(), "/dir/status")
            .map(|(_, b)| b)
            .unwrap_or_else(|e| format!("({e})"))
    }

    /// See [`Weed::rclone_command`].
    pub fn rclone_command(&self) -> Command {
        rclone_command(&self.rclone_conf)
    }

    /// See [`Weed::rclone`].
    pub fn rclone(&self, args: &[&str]) -> Output {
        self.rclone_command()
            .args(args)
            .output()
            .expect("run rclone (install it with scripts/install-seaweedfs.sh)")
    }

    /// The last 30 lines of every node's log, each under its name.
    pub fn log_tail(&self) -> String {
        self.nodes()
            .map(|nd| {
                format!(
                    "==> {} (pid {}) <==\n{}\n",
                    nd.name,
                    nd.pid,
                    tail(&nd.log, 30)
                )
            })
            .collect()
    }
}

impl Drop for WeedCluster {
    fn drop(&mut self) {
        for nd in self.nodes_mut() {
            nd.kill9();
        }
        for nd in self.nodes_mut() {
            nd.ns_fd = None;
            let _ = Command::new("ip")
                .args(["netns", "del", &nd.ns])
                .stderr(Stdio::null())
                .status();
            // Gone with its peer when the namespace went; not if the
            // namespace never got it.
            let _ = Command::new("ip")
                .args(["link", "del", &nd.veth])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        for s in ["filer", "s3"] {
            let _ = fs::remove_file(format!("{}-{s}.sock", self.sock_prefix));
        }
    }
}
