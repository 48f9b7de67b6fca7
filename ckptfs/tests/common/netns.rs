//! Two nodes on one machine, for the multi-node tests: a pair of network
//! namespaces (node A, the writer; node B, the DR site) joined by a veth
//! pair on a private /30, a `ckptfs serve` fixture on node B, a shared key
//! file, and readers for the receiver's store. Everything is torn down on
//! drop (processes killed by pid, namespaces deleted), even on panic.
//!
//! Processes are put into a node with `setns(CLONE_NEWNET)` only, never with
//! `ip netns exec`: that also unshares the mount namespace (and makes `/` a
//! slave), so a FUSE mount made under it is invisible to the test, and a
//! process started under it after a mount holds its own copy of that mount,
//! which keeps the mount's daemon alive after `ckptfs umount` (seen with a
//! receiver restarted under `ip netns exec`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{pid_alive, wait_child, BIN};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The writer: `ckptfs mount` with `--dr`.
    A,
    /// The DR site: `ckptfs serve`.
    B,
}

/// Two network namespaces joined by a veth pair.
pub struct Net {
    pub ns_a: String,
    pub ns_b: String,
    pub veth_a: String,
    pub veth_b: String,
    pub ip_a: String,
    pub ip_b: String,
    fd_a: Option<File>,
    fd_b: Option<File>,
}

/// Run `ip ARGS` (or any program), panicking with its stderr on failure.
fn must(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn setns(fd: i32) -> io::Result<()> {
    // SAFETY: setns(2) on a descriptor we hold open.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Net {
    /// A fresh pair of namespaces `ckt-<pid>-<n>-a|b`, veth `ckt<pid>-<n>a|b`
    /// (≤ 15 bytes), addresses 10.201.X.1/30 (A) and 10.201.X.2/30 (B).
    pub fn new() -> Net {
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        // Unique per test of this process; the addresses live only inside
        // our namespaces anyway.
        let x = (pid.wrapping_mul(7).wrapping_add(n) % 250) + 1;
        let mut net = Net {
            ns_a: format!("ckt-{pid}-{n}-a"),
            ns_b: format!("ckt-{pid}-{n}-b"),
            veth_a: format!("ckt{pid}-{n}a"),
            veth_b: format!("ckt{pid}-{n}b"),
            ip_a: format!("10.201.{x}.1"),
            ip_b: format!("10.201.{x}.2"),
            fd_a: None,
            fd_b: None,
        };
        assert!(
            net.veth_a.len() <= 15,
            "interface name {} too long",
            net.veth_a
        );
        let (a, b, va, vb) = (
            net.ns_a.clone(),
            net.ns_b.clone(),
            net.veth_a.clone(),
            net.veth_b.clone(),
        );
        must("ip", &["netns", "add", &a]);
        must("ip", &["netns", "add", &b]);
        must(
            "ip",
            &["link", "add", &va, "type", "veth", "peer", "name", &vb],
        );
        must("ip", &["link", "set", &va, "netns", &a]);
        must("ip", &["link", "set", &vb, "netns", &b]);
        must(
            "ip",
            &[
                "-n",
                &a,
                "addr",
                "add",
                &format!("{}/30", net.ip_a),
                "dev",
                &va,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &b,
                "addr",
                "add",
                &format!("{}/30", net.ip_b),
                "dev",
                &vb,
            ],
        );
        for (ns, dev) in [(&a, &va), (&b, &vb)] {
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        net.fd_a = Some(File::open(format!("/run/netns/{a}")).expect("open netns A"));
        net.fd_b = Some(File::open(format!("/run/netns/{b}")).expect("open netns B"));
        net
    }

    pub fn ns(&self, node: Node) -> &str {
        match node {
            Node::A => &self.ns_a,
            Node::B => &self.ns_b,
        }
    }

    pub fn veth(&self, node: Node) -> &str {
        match node {
            Node::A => &self.veth_a,
            Node::B => &self.veth_b,
        }
    }

    fn fd(&self, node: Node) -> i32 {
        match node {
            Node::A => self.fd_a.as_ref(),
            Node::B => self.fd_b.as_ref(),
        }
        .expect("namespace open")
        .as_raw_fd()
    }

    /// `program` to be run inside `node`'s network namespace (and nothing
    /// else changed: it sees the test's mounts).
    pub fn command(&self, node: Node, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        self.enter_on_exec(node, &mut c);
        c
    }

    /// Make `c` enter `node`'s network namespace before it execs.
    pub fn enter_on_exec(&self, node: Node, c: &mut Command) {
        let fd = self.fd(node);
        // SAFETY: setns(2) is async-signal-safe; the descriptor stays open
        // in the child until exec (it is close-on-exec).
        unsafe {
            c.pre_exec(move || setns(fd));
        }
    }

    /// Run `f` with this thread in `node`'s network namespace: processes it
    /// spawns (e.g. the harness's mount daemon) start there. The thread
    /// goes back to its own namespace afterwards, even if `f` panics.
    pub fn in_node<T>(&self, node: Node, f: impl FnOnce() -> T) -> T {
        struct Back(File);
        impl Drop for Back {
            fn drop(&mut self) {
                if let Err(e) = setns(self.0.as_raw_fd()) {
                    // The thread would stay in the wrong namespace.
                    eprintln!("cannot return to the test's network namespace: {e}");
                    std::process::abort();
                }
            }
        }
        let home = File::open("/proc/thread-self/ns/net").expect("open own netns");
        setns(self.fd(node)).unwrap_or_else(|e| panic!("setns into {}: {e}", self.ns(node)));
        let _back = Back(home);
        f()
    }

    /// `ip link set dev <veth of node> up|down`.
    pub fn set_link(&self, node: Node, up: bool) {
        must(
            "ip",
            &[
                "-n",
                self.ns(node),
                "link",
                "set",
                "dev",
                self.veth(node),
                if up { "up" } else { "down" },
            ],
        );
    }

    /// Bytes `node`'s veth has transmitted (headers included).
    pub fn tx_bytes(&self, node: Node) -> u64 {
        let out = Command::new("ip")
            .args(["-n", self.ns(node), "-s", "-j", "link", "show", "dev"])
            .arg(self.veth(node))
            .output()
            .expect("run ip -s -j link show");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        v[0]["stats64"]["tx"]["bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tx bytes in {v}"))
    }

    /// `tc qdisc add dev <veth of node> root netem SPEC…`; the error text
    /// if the kernel refuses (no sch_netem).
    pub fn netem(&self, node: Node, spec: &[&str]) -> Result<(), String> {
        let out = Command::new("tc")
            .args([
                "-n",
                self.ns(node),
                "qdisc",
                "add",
                "dev",
                self.veth(node),
                "root",
                "netem",
            ])
            .args(spec)
            .output()
            .map_err(|e| format!("cannot run tc: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tc qdisc add dev {} root netem {}: {}",
                self.veth(node),
                spec.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.fd_a = None;
        self.fd_b = None;
        for ns in [&self.ns_a, &self.ns_b] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                let pids = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .replace('\n', " ");
                if !pids.is_empty() {
                    eprintln!("teardown: processes still in {ns}: {pids}");
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        // If creation stopped before the veth moved into a namespace.
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth_a])
            .stderr(Stdio::null())
            .status();
    }
}

/// Write a shared key: 32 random bytes as hex, with `mode`. Returns the hex.
pub fn write_key(path: &Path, mode: u32) -> String {
    let mut raw = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .expect("read /dev/urandom");
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_key_text(path, &hex, mode);
    hex
}

/// Write `hex` as a key file with exactly `mode` (whatever the umask).
pub fn write_key_text(path: &Path, hex: &str, mode: u32) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create key {}: {e}", path.display()));
    writeln!(f, "{hex}").expect("write key");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod key");
}

/// `ckptfs serve` on node B, killed on drop.
pub struct Server {
    pub root: PathBuf,
    /// `IP:PORT` it listens on.
    pub addr: String,
    pub key: PathBuf,
    pub log: PathBuf,
    ns_fd: File,
    config: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Server {
    /// Start `ckptfs serve --root ROOT --listen IP_B:PORT --key KEY` on
    /// node B, logging at info to `log`, and wait until it listens.
    pub fn start(net: &Net, root: &Path, port: u16, key: &Path, log: &Path) -> Server {
        let config = log.with_extension("empty.toml");
        fs::write(&config, "").expect("write empty config");
        let mut s = Server {
            root: root.to_owned(),
            addr: format!("{}:{port}", net.ip_b),
            key: key.to_owned(),
            log: log.to_owned(),
            ns_fd: File::open(format!("/run/netns/{}", net.ns_b)).expect("open netns B"),
            config,
            child: None,
            starts: 0,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open server log");
        self.starts += 1;
        let _ = writeln!(log, "--- ckptfs serve, start #{} ---", self.starts);
        let mut cmd = Command::new(BIN);
        // SAFETY: setns(2) in the child before exec, on a descriptor the
        // child inherits (close-on-exec).
        let fd = self.ns_fd.as_raw_fd();
        unsafe {
            cmd.pre_exec(move || setns(fd));
        }
        let child = cmd
            .env("CKPTFS_CONFIG", &self.config)
            .env("RUST_LOG", "info")
            .arg("serve")
            .arg("--root")
            .arg(&self.root)
            .arg("--listen")
            .arg(&self.addr)
            .arg("--key")
            .arg(&self.key)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn ckptfs serve");
        self.child = Some(child);
        let deadline = Instant::now() + super::WAIT;
        loop {
            let listening = listening_lines(&fs::read_to_string(&self.log).unwrap_or_default());
            if listening >= self.starts {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "ckptfs serve exited ({st}) before listening; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ckptfs serve did not listen on {} within {:?}; log:\n{}",
                self.addr,
                super::WAIT,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL the server by pid and reap it.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("server running");
        // SAFETY: kill(2) of the pid we started.
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        assert!(
            wait_child(&mut c, super::WAIT).is_some(),
            "ckptfs serve {} survived SIGKILL",
            c.id()
        );
    }

    /// SIGTERM, then SIGKILL if it lingers; reaped either way.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) of the pid we started.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        if let Some(st) = wait_child(&mut c, Duration::from_secs(10)) {
            return Some(st);
        }
        eprintln!("teardown: ckptfs serve {} ignored SIGTERM; SIGKILL", c.id());
        // SAFETY: as above.
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        wait_child(&mut c, Duration::from_secs(10))
    }

    /// Start again on the same root, key and address.
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no server log: {e})"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== ckptfs serve log ({}) ====\n{}\n==== end of server log ====",
                self.addr,
                self.log_text()
            );
        }
        if let Some(c) = &self.child {
            let pid = c.id();
            self.stop();
            if pid_alive(pid) {
                eprintln!("teardown: ckptfs serve {pid} still alive");
            }
        }
    }
}

/// Run `cmd` with a bound: its status (None if it had to be killed), stdout
/// and stderr. For commands that should refuse at once; a command that
/// hangs instead is killed (it is our child) and reported as None.
pub fn run_within(mut cmd: Command, within: Duration) -> (Option<ExitStatus>, String, String) {
    let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&o).expect("out file"))
        .stderr(File::create(&e).expect("err file"))
        .spawn()
        .expect("spawn");
    let st = wait_child(&mut child, within);
    if st.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (
        st,
        fs::read_to_string(o).unwrap_or_default(),
        fs::read_to_string(e).unwrap_or_default(),
    )
}

/// An `Output` of a command run to completion, as text, for messages.
pub fn describe(o: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The receiver's chunk files, `<root>/chunks/<2 hex>/<64 hex>`: hash → size.
pub fn chunk_files(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(fans) = fs::read_dir(root.join("chunks")) else {
        return out;
    };
    for fan in fans.flatten() {
        let Ok(rd) = fs::read_dir(fan.path()) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                if let Ok(md) = e.metadata() {
                    out.insert(name, md.len());
                }
            }
        }
    }
    out
}

/// Leftover temp files of the chunk store (a killed server's half chunks).
pub fn chunk_temp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(fans) = fs::read_dir(root.join("chunks")) else {
        return out;
    };
    for fan in fans.flatten() {
        let Ok(rd) = fs::read_dir(fan.path()) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                out.push(e.path());
            }
        }
    }
    out
}

/// Where the receiver keeps chunk `hash`.
pub fn chunk_path(root: &Path, hash: &str) -> PathBuf {
    root.join("chunks").join(&hash[..2]).join(hash)
}

/// `<root>/sets/<job>/<set>.json`.
pub fn record_path(root: &Path, job: &str, set: &str) -> PathBuf {
    root.join("sets").join(job).join(format!("{set}.json"))
}

/// The receiver's record of a set, if the set is complete there.
pub fn record(root: &Path, job: &str, set: &str) -> Option<Value> {
    let bytes = fs::read(record_path(root, job, set)).ok()?;
    Some(serde_json::from_slice(&bytes).expect("record JSON"))
}

/// Every piece hash a record names, once.
pub fn record_hashes(rec: &Value) -> BTreeSet<String> {
    rec["chunks"]
        .as_array()
        .expect("record chunks")
        .iter()
        .flat_map(|f| f.as_array().expect("a file's hashes").iter())
        .map(|h| h.as_str().expect("hash").to_owned())
        .collect()
}

/// The piece hashes of file `path` in a record, in order.
pub fn record_file_hashes(rec: &Value, path: &str) -> Vec<String> {
    let files = rec["manifest"]["files"].as_array().expect("record files");
    let i = files
        .iter()
        .position(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in the record"));
    rec["chunks"][i]
        .as_array()
        .expect("hashes")
        .iter()
        .map(|h| h.as_str().expect("hash").to_owned())
        .collect()
}

/// Every regular file (or symlink, or other non-directory) under `dir`,
/// relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(base, &p, out),
                _ => out.push(
                    p.strip_prefix(base)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned(),
                ),
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Every directory under `dir` (not `dir` itself), relative, sorted.
pub fn dirs_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(d) else { return };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let p = e.path();
                out.push(
                    p.strip_prefix(base)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned(),
                );
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

impl Net {
    /// Drop one packet in `one_in` at random, in `node`'s input hook, of
    /// the TCP traffic to or from `port` that arrives on the veth (nftables
    /// `numgen random`; not on `lo`, where the server's own wake-up
    /// connection at shutdown must not be lost): real
    /// loss, which TCP retransmits. Stand-in for netem's `loss`; the table
    /// goes with the namespace. The error text if nft refuses.
    ///
    /// The veth's `gso_max_segs` is set to 1 first: a veth passes GSO
    /// packets of up to 64 KB whole, and the hook would drop a whole burst
    /// of segments at a time; one segment a packet is what a wire carries.
    pub fn nft_loss(&self, node: Node, port: u16, one_in: u32) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["-n", self.ns(node), "link", "set", "dev", self.veth(node)])
            .args(["gso_max_segs", "1"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip link set dev {} gso_max_segs 1: {}",
                self.veth(node),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = self.veth(node);
        let rules = format!(
            "table inet ckt_loss {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority 0; policy accept;\n\
             \t\tiifname \"{dev}\" tcp dport {port} counter\n\
             \t\tiifname \"{dev}\" tcp sport {port} counter\n\
             \t\tiifname \"{dev}\" tcp dport {port} numgen random mod {one_in} 0 counter drop\n\
             \t\tiifname \"{dev}\" tcp sport {port} numgen random mod {one_in} 0 counter drop\n\
             \t}}\n\
             }}\n"
        );
        let mut child = self
            .command(node, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        child
            .stdin
            .take()
            .expect("nft stdin")
            .write_all(rules.as_bytes())
            .map_err(|e| format!("write to nft: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for nft: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft -f - in {}: {}: {}",
                self.ns(node),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// (packets seen, packets dropped) by [`Net::nft_loss`] in `node`.
    pub fn nft_loss_counts(&self, node: Node) -> Option<(u64, u64)> {
        let out = self
            .command(node, "nft")
            .args(["list", "table", "inet", "ckt_loss"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let c: Vec<u64> = text
            .split("counter packets ")
            .skip(1)
            .filter_map(|t| t.split_whitespace().next()?.parse().ok())
            .collect();
        (out.status.success() && c.len() == 4).then(|| (c[0] + c[1], c[2] + c[3]))
    }

    /// A delay line in `node`: a TCP relay listening on `node`'s address
    /// at `listen_port` that forwards each connection to `upstream`,
    /// holding every chunk of bytes it reads for `delay` in each direction
    /// before writing it on. Chunks queue (due time, bytes), so the delay
    /// does not cap the throughput. Stand-in for netem's `delay`; stopped,
    /// sockets closed, on drop.
    pub fn delay_relay(
        &self,
        node: Node,
        listen_port: u16,
        upstream: &str,
        delay: Duration,
    ) -> DelayRelay {
        let ip = match node {
            Node::A => &self.ip_a,
            Node::B => &self.ip_b,
        };
        let addr = format!("{ip}:{listen_port}");
        let ns = File::open(format!("/run/netns/{}", self.ns(node))).expect("open netns");
        let shared = Arc::new(RelayShared {
            stop: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (listen, up, sh) = (addr.clone(), upstream.to_owned(), Arc::clone(&shared));
        let accept = std::thread::Builder::new()
            .name("delay-relay".into())
            .spawn(move || {
                // setns(2) moves only the calling thread (and the threads
                // it spawns after) into the namespace; the descriptor is
                // ours and open. The thread ends with the relay.
                if let Err(e) = setns(ns.as_raw_fd()) {
                    let _ = ready_tx.send(Err(format!("setns: {e}")));
                    return;
                }
                drop(ns);
                let listener = match TcpListener::bind(&listen) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind {listen}: {e}")));
                        return;
                    }
                };
                listener
                    .set_nonblocking(true)
                    .expect("nonblocking listener");
                let _ = ready_tx.send(Ok(()));
                while !sh.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            let (up, sh2) = (up.clone(), Arc::clone(&sh));
                            let t = std::thread::spawn(move || relay_conn(client, &up, delay, sh2));
                            sh.threads.lock().expect("relay threads").push(t);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => {
                            eprintln!("delay relay {listen}: accept: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
            .expect("spawn the delay relay");
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("delay relay on {addr}: {e}"),
            Err(_) => panic!("delay relay on {addr} died before listening"),
        }
        DelayRelay {
            addr,
            shared,
            accept: Some(accept),
        }
    }
}

struct RelayShared {
    stop: AtomicBool,
    /// Every socket of every connection, to shut down on drop.
    sockets: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A running [`Net::delay_relay`].
pub struct DelayRelay {
    /// `IP:PORT` it listens on.
    pub addr: String,
    shared: Arc<RelayShared>,
    accept: Option<JoinHandle<()>>,
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in self.shared.sockets.lock().expect("relay sockets").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        loop {
            let batch: Vec<_> = self
                .shared
                .threads
                .lock()
                .expect("relay threads")
                .drain(..)
                .collect();
            if batch.is_empty() {
                break;
            }
            for t in batch {
                let _ = t.join();
            }
            // A connection thread may have registered sockets late.
            for s in self.shared.sockets.lock().expect("relay sockets").drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// One relayed connection: connect upstream, then a reader and a writer
/// per direction joined by a queue of (due, bytes).
fn relay_conn(client: TcpStream, upstream: &str, delay: Duration, sh: Arc<RelayShared>) {
    let addr: SocketAddr = upstream.parse().expect("relay upstream address");
    let server = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(_) => {
            // As the peer would see a dead server: the connection closes.
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let mut socks = sh.sockets.lock().expect("relay sockets");
        for s in [&client, &server] {
            if let Ok(c) = s.try_clone() {
                socks.push(c);
            }
        }
    }
    if sh.stop.load(Ordering::SeqCst) {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    }
    let mut handles = Vec::new();
    for (from, to) in [(&client, &server), (&server, &client)] {
        let (Ok(mut from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
            continue;
        };
        let (tx, rx) = mpsc::channel::<Option<(Instant, Vec<u8>)>>();
        handles.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                    Ok(n) => {
                        if tx
                            .send(Some((Instant::now() + delay, buf[..n].to_vec())))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }));
        let sh2 = Arc::clone(&sh);
        handles.push(std::thread::spawn(move || {
            let mut to = to;
            loop {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(Some((due, bytes))) => {
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        if to.write_all(&bytes).is_err() {
                            // The far end is gone: so is this connection.
                            let _ = to.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                    Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if sh2.stop.load(Ordering::SeqCst) {
                            let _ = to.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// How many whole "ckptfs serve: listening on …" lines `log` holds: a line
/// still being written does not count, so what the caller reads next in
/// it is all there.
pub fn listening_lines(log: &str) -> usize {
    log.split_inclusive('\n')
        .filter(|l| l.starts_with("ckptfs serve: listening on") && l.ends_with('\n'))
        .count()
}
