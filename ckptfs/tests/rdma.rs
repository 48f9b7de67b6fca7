//! The DR transport over real RDMA verbs: `ckptfs serve` and the drain
//! talking through rdma_cm and an RC queue pair on a soft-RoCE (rxe)
//! device. This host kernel may have no RDMA stack: `scripts/test.sh` runs
//! this file inside a throwaway QEMU guest that has one
//! (`scripts/rdma-guest.sh`); elsewhere every test says it is skipped and
//! how to run it.
//!
//! The in-process tests of the stream itself are in `tests/rdma_verbs.rs`.
//!
//! The guest's rxe device sits on its eth0; client and server both run in
//! the guest and reach each other over the device's address
//! (`CKPTFS_RDMA_IP`). Under TCG emulation RDMA moves 10–20 MB/s, so the
//! sets are tens of MiB and nothing here asserts a duration.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::netns;
use common::rdma::setup;
use common::Proc;
use serde_json::Value;

const MIB: usize = 1 << 20;

fn ckptfs() -> &'static str {
    env!("CARGO_BIN_EXE_ckptfs")
}

/// A scratch directory, a key, and a receiver that can be killed and
/// started again on the same root and port.
struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
    addr: String,
    transport: &'static str,
    /// Extra flags for `ckptfs serve`.
    serve_args: Vec<String>,
    serve: Option<Proc>,
    starts: u32,
}

impl Site {
    fn new(ip: &str, port: u16, transport: &'static str) -> Site {
        Site::with_args(ip, port, transport, &[])
    }

    fn with_args(ip: &str, port: u16, transport: &'static str, serve_args: &[&str]) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("ckptfs-rdma-")
            .tempdir_in("/var/tmp")
            .expect("temp dir under /var/tmp");
        let key = dir.path().join("dr.key");
        netns::write_key(&key, 0o600);
        let mut s = Site {
            dir,
            key,
            addr: format!("{ip}:{port}"),
            transport,
            serve_args: serve_args.iter().map(|a| a.to_string()).collect(),
            serve: None,
            starts: 0,
        };
        s.start();
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn root(&self) -> PathBuf {
        self.path("dr-root")
    }

    fn log(&self) -> PathBuf {
        self.path(&format!("serve-{}.log", self.starts))
    }

    fn start(&mut self) {
        self.starts += 1;
        let log = self.log();
        let mut c = Command::new(ckptfs());
        c.args([
            "serve",
            "--listen",
            &self.addr,
            "--transport",
            self.transport,
        ])
        .arg("--root")
        .arg(self.root())
        .arg("--key")
        .arg(&self.key)
        .args(&self.serve_args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("serve log"));
        let mut p = Proc::spawn(c);
        p.stderr_path = Some(log.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if netns::listening_lines(&text) > 0 {
                break;
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("ckptfs serve exited ({st}) before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "ckptfs serve did not listen within 60 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.serve = Some(p);
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.serve.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Every serve log so far.
    fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| fs::read_to_string(self.path(&format!("serve-{n}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `ckptfs --cache CACHE` with this site as its DR tier and quick
    /// retries, then `args`.
    fn command(&self, cache: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(ckptfs());
        c.arg("--cache")
            .arg(cache)
            .args(["--dr", &self.addr, "--dr-key"])
            .arg(&self.key)
            .args(["--drain-backoff-min", "100ms", "--drain-backoff-max", "1s"])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn cli(&self, cache: &Path, args: &[&str]) -> Output {
        self.command(cache, args).output().expect("run ckptfs")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `count` files of `size` bytes, incompressible, different per seed.
fn write_files(dir: &Path, count: usize, size: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    fs::create_dir_all(dir).expect("data dir");
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..count)
        .map(|i| {
            let bytes: Vec<u8> = (0..size / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect();
            let name = format!("rank-{i}.bin");
            fs::write(dir.join(&name), &bytes).expect("write data");
            (name, bytes)
        })
        .collect()
}

fn put(cache: &Path, job: &str, set: &str, data: &Path) {
    let out = Command::new(ckptfs())
        .arg("--cache")
        .arg(cache)
        .args(["put", job, "--set", set])
        .arg(data)
        .output()
        .expect("ckptfs put");
    assert!(out.status.success(), "put: {}", netns::describe(&out));
}

/// `dir/sub` holds exactly the bytes of `files`.
fn assert_restored(dir: &Path, sub: &str, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        let got =
            fs::read(dir.join(sub).join(name)).unwrap_or_else(|e| panic!("restored {name}: {e}"));
        assert!(
            got == *bytes,
            "restored {name} differs from what was written"
        );
    }
}

/// Restore `job/set` from the DR site alone, on an empty cache.
fn restore_from_dr(site: &Site, transport: &str, job: &str, set: &str) -> PathBuf {
    let to = site.path(&format!("restored-{set}"));
    let to_s = to.to_str().expect("utf-8 path").to_owned();
    let out = site.cli(
        &site.path(&format!("empty-cache-{set}")),
        &[
            "restore",
            job,
            set,
            "--from",
            "dr",
            "--json",
            "--transport",
            transport,
            "--to",
            &to_s,
        ],
    );
    assert!(out.status.success(), "restore: {}", netns::describe(&out));
    to
}

fn drain_json(site: &Site, cache: &Path, transport: &str) -> Value {
    let out = site.cli(cache, &["drain", "--json", "--transport", transport]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("drain --json: {e}: {}", netns::describe(&out)))
}

/// A 64 MiB set drains from a client process to `ckptfs serve` over RDMA
/// and restores bit for bit from the DR site over RDMA.
#[test]
fn a_64_mib_set_drains_over_rdma_and_restores_bit_for_bit() {
    let Some(ip) = setup("a_64_mib_set_drains_over_rdma_and_restores_bit_for_bit") else {
        return;
    };
    let site = Site::new(&ip, 7471, "rdma");
    let cache = site.path("cache");
    let files = write_files(&site.path("data"), 8, 8 * MIB, 1);
    put(&cache, "sim", "step-1", &site.path("data"));
    let out = site.cli(
        &cache,
        &["drain", "--wait", "--timeout", "10m", "--transport", "rdma"],
    );
    let text = netns::describe(&out);
    assert!(out.status.success(), "drain over RDMA: {text}");
    assert!(
        text.contains("over rdma ("),
        "the drain's status does not say it ran over RDMA: {text}"
    );
    assert!(
        site.logs().contains("(RDMA)"),
        "the receiver saw no RDMA peer:\n{}",
        site.logs()
    );
    let record = netns::record(&site.root(), "sim", "step-1").expect("set record on the receiver");
    assert!(record.is_object());
    assert_eq!(
        netns::chunk_files(&site.root()).len(),
        64,
        "8 × 8 one-MiB chunks"
    );
    let to = restore_from_dr(&site, "rdma", "sim", "step-1");
    assert_restored(&to, "data", &files);
}

/// The receiver is SIGKILLed in the middle of an RDMA push and started
/// again: the drain resumes over RDMA by itself and the receiver ends with
/// every chunk exactly once and a set that restores.
#[test]
fn receiver_killed_mid_rdma_push_resumes_and_stores_each_chunk_once() {
    let Some(ip) = setup("receiver_killed_mid_rdma_push_resumes_and_stores_each_chunk_once") else {
        return;
    };
    let mut site = Site::new(&ip, 7472, "rdma");
    let cache = site.path("cache");
    let files = write_files(&site.path("data"), 8, 4 * MIB, 2);
    put(&cache, "sim", "step-1", &site.path("data"));
    // 2 MiB/s: the 32 MiB push takes ~16 s, so the kill lands in it.
    let mut drain = Proc::spawn({
        let mut c = site.command(
            &cache,
            &[
                "--dr-rate",
                "2MiB",
                "--transport",
                "rdma",
                "drain",
                "--wait",
                "--timeout",
                "10m",
            ],
        );
        c.stdout(Stdio::null())
            .stderr(fs::File::create(site.path("drain.log")).expect("drain log"));
        c
    });
    let root = site.root();
    let deadline = Instant::now() + Duration::from_secs(120);
    while netns::chunk_files(&root).len() < 6 {
        assert!(
            Instant::now() < deadline,
            "no 6 chunks on the receiver within 120 s:\n{}\n{}",
            fs::read_to_string(site.path("drain.log")).unwrap_or_default(),
            site.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    site.kill9();
    let at_kill = netns::chunk_files(&root).len();
    assert!(
        netns::record(&root, "sim", "step-1").is_none(),
        "the set was complete before the kill: the rate limit did not hold the push back"
    );
    eprintln!("receiver SIGKILLed holding {at_kill} of 32 chunks");
    std::thread::sleep(Duration::from_secs(1));
    site.start();
    let st = drain
        .wait_within(Duration::from_secs(600))
        .expect("the drain did not finish within 10 minutes");
    let drain_log = fs::read_to_string(site.path("drain.log")).unwrap_or_default();
    assert!(st.success(), "drain after the restart: {st}\n{drain_log}");
    let chunks = netns::chunk_files(&root);
    assert_eq!(chunks.len(), 32, "every chunk once: {chunks:?}");
    assert!(
        netns::chunk_temp_files(&root).len() <= 16,
        "temp files beyond what one push window can leave"
    );
    let record = netns::record(&root, "sim", "step-1").expect("set record after the resume");
    assert!(record.is_object());
    let to = restore_from_dr(&site, "rdma", "sim", "step-1");
    assert_restored(&to, "data", &files);
}

/// A client with another key is refused over RDMA exactly as over TCP,
/// and the receiver stores nothing.
#[test]
fn a_wrong_key_is_refused_over_rdma_and_nothing_is_stored() {
    let Some(ip) = setup("a_wrong_key_is_refused_over_rdma_and_nothing_is_stored") else {
        return;
    };
    let mut site = Site::new(&ip, 7473, "rdma");
    let cache = site.path("cache");
    write_files(&site.path("data"), 1, MIB, 3);
    put(&cache, "sim", "step-1", &site.path("data"));
    let other = site.path("other.key");
    netns::write_key(&other, 0o600);
    site.key = other;
    let out = site.cli(
        &cache,
        &["drain", "--wait", "--timeout", "20s", "--transport", "rdma"],
    );
    let text = netns::describe(&out);
    assert!(
        !out.status.success(),
        "a drain with the wrong key succeeded: {text}"
    );
    assert!(
        text.contains("authentication failed"),
        "the refusal does not say why: {text}"
    );
    assert!(
        site.logs().contains("DR authentication failed"),
        "the receiver did not log the refused peer:\n{}",
        site.logs()
    );
    assert!(netns::chunk_files(&site.root()).is_empty());
    assert!(netns::record(&site.root(), "sim", "step-1").is_none());
}

/// Puts the rxe device back however the test ends.
struct Relink(String);

impl Drop for Relink {
    fn drop(&mut self) {
        let _ = Command::new("rdma")
            .args(["link", "add", "rxe0", "type", "rxe", "netdev", &self.0])
            .status();
    }
}

/// `auto` drains over RDMA while the device is there; with the device
/// removed (`rdma link delete`) it falls back to TCP, says why in its
/// status, and the second set drains and restores all the same.
#[test]
fn auto_falls_back_to_tcp_when_the_rdma_device_is_removed() {
    let Some(ip) = setup("auto_falls_back_to_tcp_when_the_rdma_device_is_removed") else {
        return;
    };
    let Ok(ndev) = fs::read_to_string("/sys/class/infiniband/rxe0/ports/1/gid_attrs/ndevs/0")
    else {
        eprintln!("auto_falls_back_to_tcp_when_the_rdma_device_is_removed: skipped (no rxe0: only a soft-RoCE device can be removed and added back)");
        return;
    };
    let ndev = ndev.trim().to_owned();
    let mut site = Site::new(&ip, 7474, "auto");
    assert!(
        site.logs().contains("over tcp+rdma"),
        "serve --transport auto did not listen on both:\n{}",
        site.logs()
    );
    let cache = site.path("cache");
    let first = write_files(&site.path("data"), 2, 2 * MIB, 4);
    put(&cache, "sim", "step-1", &site.path("data"));
    let out = site.cli(
        &cache,
        &["drain", "--wait", "--timeout", "5m", "--transport", "auto"],
    );
    let text = netns::describe(&out);
    assert!(out.status.success(), "first drain: {text}");
    assert!(
        text.contains("over rdma ("),
        "auto did not pick RDMA with a device: {text}"
    );

    // The receiver holds the device: stop it before the device goes, as an
    // admin would, and start it again without one.
    site.kill9();
    let _relink = Relink(ndev);
    let del = Command::new("rdma")
        .args(["link", "delete", "rxe0"])
        .output()
        .expect("rdma link delete");
    assert!(
        del.status.success(),
        "rdma link delete: {}",
        netns::describe(&del)
    );
    site.start();
    assert!(
        fs::read_to_string(site.log())
            .unwrap_or_default()
            .contains("over tcp ("),
        "serve --transport auto without a device should listen on TCP only:\n{}",
        site.logs()
    );
    let second = write_files(&site.path("data2"), 2, 2 * MIB, 5);
    put(&cache, "sim", "step-2", &site.path("data2"));
    let out = site.cli(
        &cache,
        &["drain", "--wait", "--timeout", "5m", "--transport", "auto"],
    );
    let text = netns::describe(&out);
    assert!(
        out.status.success(),
        "drain after the device was removed: {text}"
    );
    assert!(
        text.contains("over tcp (no RDMA device"),
        "the status does not say it fell back to TCP and why: {text}"
    );
    let v = drain_json(&site, &cache, "auto");
    assert!(v.is_array(), "{v}");
    let to = restore_from_dr(&site, "auto", "sim", "step-2");
    assert_restored(&to, "data2", &second);
    let to = restore_from_dr(&site, "auto", "sim", "step-1");
    assert_restored(&to, "data", &first);
}

/// The smallest buffers allowed (2 of 4 KiB each way) move a set whose
/// frames are 256 times larger than a buffer: a frame spans many
/// messages, and credits run out and come back hundreds of times.
#[test]
fn the_smallest_buffers_still_move_a_set() {
    let Some(ip) = setup("the_smallest_buffers_still_move_a_set") else {
        return;
    };
    let tiny = ["--rdma-buffers", "2", "--rdma-buffer-size", "4KiB"];
    let site = Site::with_args(&ip, 7475, "rdma", &tiny);
    let cache = site.path("cache");
    let files = write_files(&site.path("data"), 3, 3 * MIB + 1234, 6);
    put(&cache, "sim", "step-1", &site.path("data"));
    let mut args = vec!["drain", "--wait", "--timeout", "10m", "--transport", "rdma"];
    args.extend(tiny);
    let out = site.cli(&cache, &args);
    assert!(out.status.success(), "drain: {}", netns::describe(&out));
    let to = restore_from_dr(&site, "rdma", "sim", "step-1");
    assert_restored(&to, "data", &files);
}

/// A device that reaches the peer is not enough: a receiver listening on
/// TCP only (`serve --transport tcp`) rejects the RDMA connection, and
/// `auto` drains over TCP, saying why.
#[test]
fn auto_uses_tcp_when_the_receiver_does_not_listen_over_rdma() {
    let Some(ip) = setup("auto_uses_tcp_when_the_receiver_does_not_listen_over_rdma") else {
        return;
    };
    let site = Site::new(&ip, 7477, "tcp");
    assert!(
        site.logs().contains("over tcp (root"),
        "serve --transport tcp should listen on TCP only:\n{}",
        site.logs()
    );
    let cache = site.path("cache");
    let files = write_files(&site.path("data"), 2, MIB, 7);
    put(&cache, "sim", "step-1", &site.path("data"));
    let out = site.cli(
        &cache,
        &["drain", "--wait", "--timeout", "5m", "--transport", "auto"],
    );
    let text = netns::describe(&out);
    assert!(out.status.success(), "drain: {text}");
    assert!(
        text.contains("over tcp (RDMA failed: the peer rejected the connection"),
        "the status does not say RDMA was tried and why TCP was used: {text}"
    );
    let to = restore_from_dr(&site, "auto", "sim", "step-1");
    assert_restored(&to, "data", &files);
}
