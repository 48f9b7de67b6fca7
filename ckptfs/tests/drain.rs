//! The drain to the PFS tier and restart on an empty node, with real
//! mounts, real processes and a real (local) PFS directory.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{DataPath, Mount, Opts};
use serde_json::Value;

/// Bytes that do not compress and differ per seed.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory under /var/tmp for a test's PFS tier and restores, removed
/// on drop.
fn pfs_scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ckptfs-pfs-")
        .tempdir_in("/var/tmp")
        .expect("pfs dir")
}

fn pfs_args(pfs: &Path) -> Vec<String> {
    vec![
        "--pfs".into(),
        pfs.display().to_string(),
        "--drain-jitter".into(),
        "0s".into(),
        "--drain-backoff-min".into(),
        "100ms".into(),
        "--drain-backoff-max".into(),
        "500ms".into(),
    ]
}

fn with_args(mut o: Opts, args: &[String]) -> Opts {
    for a in args {
        o = o.arg(a);
    }
    o
}

/// A set of three files written through the mount and committed.
fn write_set(m: &Mount, job: &str, set: &str, seed: u64) -> Vec<(String, Vec<u8>)> {
    let dir = m.new_set(job, set);
    let files = vec![
        ("rank-0.bin".to_owned(), data(3 << 20, seed)),
        ("rank-1.bin".to_owned(), data(1_000_003, seed + 1)),
        ("meta/step.txt".to_owned(), b"step 100\n".to_vec()),
    ];
    for (rel, bytes) in &files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, bytes).expect("write through the mount");
    }
    m.commit_ok(job, set);
    files
}

fn drain_status(m: &Mount) -> Vec<Value> {
    m.status()["drain"].as_array().cloned().unwrap_or_default()
}

fn pending(m: &Mount) -> usize {
    drain_status(m)
        .iter()
        .map(|t| t["pending"].as_array().map_or(0, Vec::len))
        .sum()
}

#[test]
fn committed_sets_drain_and_restore_on_an_empty_node() {
    let pfs_root = pfs_scratch();
    let pfs = pfs_root.path().join("pfs");
    fs::create_dir(&pfs).expect("mkdir pfs");
    let args = pfs_args(&pfs);
    let m = Mount::start(with_args(Opts::new(DataPath::Passthrough), &args));
    let files = write_set(&m, "sim", "step-1", 1);
    write_set(&m, "sim", "step-2", 2);
    wait_until("the daemon's drain", common::WAIT, || pending(&m) == 0);
    // Plain files on the PFS, readable without ckptfs.
    assert_eq!(
        fs::read(pfs.join("sim/step-1/rank-0.bin")).expect("pfs file"),
        files[0].1
    );
    assert!(pfs.join("sim/.manifests/step-2.json").is_file());
    let st = drain_status(&m);
    assert_eq!(st[0]["tier"], "pfs");
    assert!(st[0]["rpo_exposure_seconds"].is_null(), "{st:?}");
    // `drain --wait` against a daemon returns at once when nothing is left.
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"drain", &"--wait", &"--timeout", &"30s"];
    let pfs_flag = ["--pfs".to_owned(), pfs.display().to_string()];
    a.push(&pfs_flag[0]);
    a.push(&pfs_flag[1]);
    m.cli_ok(&a);

    // A fresh node: an empty cache and a new mount over the same PFS.
    let fresh = Mount::start(with_args(Opts::new(DataPath::Passthrough), &args));
    let listed: Vec<String> = fs::read_dir(fresh.p("sim"))
        .expect("ls /ckpt/sim on the fresh node")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        listed.contains(&"step-1".to_owned()) && listed.contains(&"step-2".to_owned()),
        "{listed:?}"
    );
    assert_eq!(
        fs::read(fresh.p("sim/step-1/rank-0.bin")).expect("read a tier-only set"),
        files[0].1,
        "staged-in bytes differ"
    );
    assert_eq!(
        fs::read(fresh.p("sim/step-1/meta/step.txt")).expect("read"),
        b"step 100\n"
    );
    fresh.verify_ok("sim", "step-1");
    assert_eq!(fresh.ls_state("sim", "step-1").as_deref(), Some("complete"));

    // And `ckptfs restore` into a directory, from the PFS.
    let to = pfs_root.path().join("restored");
    let out = Command::new(common::BIN)
        .env("CKPTFS_CONFIG", "/dev/null")
        .args(["--cache"])
        .arg(pfs_root.path().join("empty-cache"))
        .arg("--pfs")
        .arg(&pfs)
        .args(["restore", "sim", "--to"])
        .arg(&to)
        .args(["--from", "pfs", "--json"])
        .output()
        .expect("run ckptfs restore");
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["set"], "step-2");
    assert_eq!(v["from"], "pfs");
    assert_eq!(
        fs::read(to.join("rank-1.bin")).expect("restored"),
        data(1_000_003, 3)
    );
}

#[test]
fn an_unavailable_pfs_keeps_sets_pending_then_drains_when_back() {
    let pfs_root = pfs_scratch();
    let pfs = pfs_root.path().join("pfs-not-yet");
    let args = pfs_args(&pfs);
    let m = Mount::start(with_args(Opts::new(DataPath::Fallback), &args));
    write_set(&m, "job", "s1", 7);
    wait_until("the failure to show in status", common::WAIT, || {
        drain_status(&m)[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("pfs-not-yet"))
    });
    let st = drain_status(&m);
    assert_eq!(st[0]["pending"].as_array().map(Vec::len), Some(1));
    assert!(st[0]["bytes_pending"].as_u64().unwrap_or(0) > 4_000_000);
    assert!(st[0]["rpo_exposure_seconds"].is_u64(), "{st:?}");
    // The writer is unaffected: another set goes in and commits.
    write_set(&m, "job", "s2", 8);
    // The PFS comes back: both drain with no one asking.
    fs::create_dir(&pfs).expect("mkdir pfs");
    wait_until("the drain after the PFS returned", common::WAIT, || {
        pending(&m) == 0
    });
    assert!(pfs.join("job/.manifests/s1.json").is_file());
    assert!(pfs.join("job/.manifests/s2.json").is_file());
}

#[test]
fn daemon_killed_mid_drain_resumes_without_resending() {
    let pfs_root = pfs_scratch();
    let pfs = pfs_root.path().join("pfs");
    fs::create_dir(&pfs).expect("mkdir pfs");
    // Slow the drain down so the kill lands in the middle of it.
    let mut args = pfs_args(&pfs);
    args.extend(["--pfs-rate".into(), "4MiB".into()]);
    let mut m = Mount::start(with_args(Opts::new(DataPath::Passthrough), &args));
    let dir = m.new_set("job", "big");
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("rank-{i}.bin"), data(2 << 20, 100 + i)))
        .collect();
    for (rel, bytes) in &files {
        fs::write(dir.join(rel), bytes).expect("write");
    }
    m.commit_ok("job", "big");
    let journal = m.c(".ckptfs/sets/job/big/drain/pfs.json");
    // Files delivered: the record's, plus the log appended since it was
    // last written.
    let delivered = || {
        let mut names: std::collections::BTreeSet<String> = fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| {
                v["files_done"]
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
            })
            .unwrap_or_default();
        let log = fs::read_to_string(journal.with_extension("done")).unwrap_or_default();
        names.extend(
            log.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v["path"].as_str().map(str::to_owned)),
        );
        names.len()
    };
    wait_until("a file or two on the PFS", common::WAIT, || {
        delivered() >= 2
    });
    m.kill9();
    let done_before = delivered();
    assert!(
        done_before < files.len(),
        "the drain finished before the kill"
    );
    assert!(
        !pfs.join("job/.manifests/big.json").exists(),
        "complete on the PFS before the drain finished"
    );
    m.start_daemon();
    wait_until("the resumed drain", Duration::from_secs(60), || {
        pending(&m) == 0
    });
    let after: Value =
        serde_json::from_slice(&fs::read(&journal).expect("journal")).expect("journal json");
    assert_eq!(after["state"], "done");
    // Only what was missing crossed again.
    let resent = after["bytes_sent"].as_u64().expect("bytes_sent");
    let missing = ((files.len() - done_before) * (2 << 20)) as u64;
    assert!(
        resent <= missing,
        "resent {resent} bytes, but only {missing} were missing"
    );
    for (rel, bytes) in &files {
        assert_eq!(
            &fs::read(pfs.join("job/big").join(rel)).expect("pfs file"),
            bytes,
            "{rel}"
        );
    }
    // Exactly the set's files, once: no part files left behind.
    let names: Vec<String> = fs::read_dir(pfs.join("job/big"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), files.len(), "{names:?}");
}

#[test]
fn a_flipped_byte_on_the_pfs_is_caught_on_restore() {
    let pfs_root = pfs_scratch();
    let pfs = pfs_root.path().join("pfs");
    fs::create_dir(&pfs).expect("mkdir pfs");
    let args = pfs_args(&pfs);
    let m = Mount::start(with_args(Opts::new(DataPath::Passthrough), &args));
    write_set(&m, "job", "s1", 11);
    wait_until("the drain", common::WAIT, || pending(&m) == 0);
    let f = pfs.join("job/s1/rank-0.bin");
    let mut bytes = fs::read(&f).expect("pfs file");
    bytes[(1 << 20) + 5] ^= 0x20;
    fs::write(&f, bytes).expect("flip");
    let out = Command::new(common::BIN)
        .env("CKPTFS_CONFIG", "/dev/null")
        .arg("--cache")
        .arg(pfs_root.path().join("empty-cache"))
        .arg("--pfs")
        .arg(&pfs)
        .args(["restore", "job", "s1", "--to"])
        .arg(pfs_root.path().join("restored"))
        .output()
        .expect("run ckptfs restore");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rank-0.bin") && err.contains("chunk 1") && err.contains("corrupt"),
        "{err}"
    );
}

#[test]
fn early_drain_sends_sealed_files_before_the_commit() {
    let pfs_root = pfs_scratch();
    let pfs = pfs_root.path().join("pfs");
    fs::create_dir(&pfs).expect("mkdir pfs");
    let mut args = pfs_args(&pfs);
    args.extend(["--drain-early".into(), "true".into()]);
    let m = Mount::start(with_args(Opts::new(DataPath::Passthrough), &args));
    let dir = m.new_set("job", "s");
    let a = data(2 << 20, 21);
    fs::write(dir.join("a.bin"), &a).expect("write a");
    fs::write(dir.join("b.bin"), data(1 << 20, 22)).expect("write b");
    // Sealed and closed, not committed: the files go ahead, the manifest
    // does not.
    wait_until("the early drain of a.bin and b.bin", common::WAIT, || {
        pfs.join("job/s/a.bin").is_file() && pfs.join("job/s/b.bin").is_file()
    });
    assert!(!pfs.join("job/.manifests/s.json").exists());
    assert_eq!(fs::read(pfs.join("job/s/a.bin")).expect("pfs a"), a);
    // b changes after it left: the final push must send the new version.
    let b2 = data(1 << 20, 23);
    fs::write(dir.join("b.bin"), &b2).expect("rewrite b");
    m.commit_ok("job", "s");
    wait_until("the final push", common::WAIT, || pending(&m) == 0);
    assert_eq!(fs::read(pfs.join("job/s/b.bin")).expect("pfs b"), b2);
    assert_eq!(fs::read(pfs.join("job/s/a.bin")).expect("pfs a"), a);
    let journal: Value = serde_json::from_slice(
        &fs::read(m.c(".ckptfs/sets/job/s/drain/pfs.json")).expect("journal"),
    )
    .expect("journal json");
    assert_eq!(journal["state"], "done");
    // The early pushes sent a and b; the final one only b's new version.
    let restored = pfs_root.path().join("restored");
    let out = Command::new(common::BIN)
        .env("CKPTFS_CONFIG", "/dev/null")
        .arg("--cache")
        .arg(pfs_root.path().join("empty-cache"))
        .arg("--pfs")
        .arg(&pfs)
        .args(["restore", "job", "s", "--to"])
        .arg(&restored)
        .output()
        .expect("run ckptfs restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(restored.join("b.bin")).expect("restored b"), b2);
}

#[test]
fn a_full_pfs_keeps_the_set_pending_until_there_is_room() {
    let pfs_root = pfs_scratch();
    let pfs = pfs_root.path().join("pfs");
    fs::create_dir(&pfs).expect("mkdir pfs");
    // A 2 MiB filesystem for a 4 MiB set.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&pfs)
        .status()
        .expect("mount tmpfs");
    assert!(mounted.success(), "mount -t tmpfs {}", pfs.display());
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _guard = Unmount(&pfs);
    let args = pfs_args(&pfs);
    let m = Mount::start(with_args(Opts::new(DataPath::Passthrough), &args));
    write_set(&m, "job", "s1", 31);
    wait_until("the ENOSPC to show in status", common::WAIT, || {
        drain_status(&m)[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left"))
    });
    assert_eq!(pending(&m), 1, "the set must stay pending");
    m.verify_ok("job", "s1");
    // Room appears: the retry finishes the drain with no one asking.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&pfs)
        .status()
        .expect("remount tmpfs");
    assert!(grown.success());
    wait_until("the drain once there is room", common::WAIT, || {
        pending(&m) == 0
    });
    assert!(pfs.join("job/.manifests/s1.json").is_file());
}

#[test]
fn a_full_cache_evicts_drained_sets_oldest_first_and_never_an_undrained_one() {
    let pfs_root = pfs_scratch();
    let pfs = pfs_root.path().join("pfs");
    let pfs_away = pfs_root.path().join("pfs-down");
    fs::create_dir(&pfs).expect("mkdir pfs");
    // A 64 MiB cache, so the fill is the test's: a 10 MiB set is ~16 % of
    // it. Evict above 40 %, down to 20 %.
    let opts = Opts::new(DataPath::Passthrough)
        .tmpfs_cache(64)
        .evict_between(40, 20);
    let m = Mount::start(with_args(opts, &pfs_args(&pfs)));
    let put = |set: &str, seed: u64| {
        let bytes = data(10 << 20, seed);
        fs::write(m.new_set("job", set).join("rank-0.bin"), &bytes).expect("write");
        m.commit_ok("job", set);
        bytes
    };
    let in_cache = |set: &str| m.c(&format!("job/{set}")).exists();
    let fill = |m: &Mount| m.status()["cache_fs_fill_percent"].as_f64().expect("fill");

    let s1 = put("s1", 1);
    wait_until("s1 on the PFS", common::WAIT, || pending(&m) == 0);
    put("s2", 2);
    wait_until("s2 on the PFS", common::WAIT, || pending(&m) == 0);
    // Below the high watermark, drained sets stay on the node: a restart
    // reads them at local speed.
    assert!(
        in_cache("s1") && in_cache("s2"),
        "evicted below the watermark"
    );
    assert!(fill(&m) < 40.0, "fill {}", fill(&m));

    // The PFS goes away, and a third set takes the cache over the high
    // watermark. No drain ends while the PFS is down, yet the sets drained
    // before the outage must make room, oldest first, down to the low
    // watermark; the undrained set, the only copy, stays.
    fs::rename(&pfs, &pfs_away).expect("take the PFS away");
    let s3 = put("s3", 3);
    wait_until("eviction with the PFS down", common::WAIT, || {
        !in_cache("s1") && !in_cache("s2")
    });
    assert!(in_cache("s3"), "the undrained set was evicted");
    assert_eq!(m.ls_state("job", "s3").as_deref(), Some("complete"));
    assert_eq!(pending(&m), 1);
    assert!(fill(&m) <= 20.0 + 16.0, "fill {} after eviction", fill(&m));
    let log = m.log_text();
    let first = log.find("evicted from the cache (held by every tier) job=job set=s1");
    let second = log.find("evicted from the cache (held by every tier) job=job set=s2");
    assert!(
        matches!((first, second), (Some(a), Some(b)) if a < b),
        "not evicted oldest first:\n{log}"
    );

    // The PFS returns: s3 drains and, below the high watermark, stays.
    fs::rename(&pfs_away, &pfs).expect("bring the PFS back");
    wait_until("s3 on the PFS", common::WAIT, || pending(&m) == 0);
    assert!(in_cache("s3"), "evicted below the watermark");
    assert_eq!(fs::read(pfs.join("job/s3/rank-0.bin")).expect("pfs s3"), s3);
    // An evicted set is still there to restart from: staged in on read.
    assert_eq!(
        fs::read(m.p("job/s1/rank-0.bin")).expect("read an evicted set"),
        s1
    );
}
