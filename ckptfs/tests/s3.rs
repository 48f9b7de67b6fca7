//! The S3 tier against a real object store: SeaweedFS started by the test
//! (`common::weed`), one process on loopback, or a cluster of master,
//! volume servers and an S3 filer in network namespaces. Everything goes
//! through the `ckptfs` binary as an admin would run it: `put`, `drain
//! --wait`, `restore`, a mount that stages in from S3.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::weed::{Weed, WeedCluster};
use common::{DataPath, Mount, Opts, BIN};

const BUCKET: &str = "ckpt";

/// Bytes like a solver's state: half noise, half smooth fields that zstd
/// shrinks, different per seed.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for (i, block) in buf.chunks_mut(4096).enumerate() {
        if i % 2 == 0 {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        } else {
            for (j, b) in block.iter_mut().enumerate() {
                *b = ((i as u64 * 7 + j as u64 / 64) ^ seed) as u8;
            }
        }
    }
}

/// Write `files` files of `size` bytes each under `dir`; their paths.
fn make_files(dir: &Path, files: usize, size: usize, seed: u64) -> Vec<PathBuf> {
    fs::create_dir_all(dir).expect("mkdir data");
    let mut buf = vec![0u8; 8 << 20];
    (0..files)
        .map(|f| {
            let p = dir.join(format!("rank-{f}.bin"));
            let mut out = fs::File::create(&p).expect("create data file");
            let mut left = size;
            let mut block = 0u64;
            while left > 0 {
                let n = left.min(buf.len());
                fill(&mut buf[..n], seed ^ (f as u64) << 32 ^ block);
                out.write_all(&buf[..n]).expect("write data");
                left -= n;
                block += 1;
            }
            p
        })
        .collect()
}

/// Byte-for-byte comparison of two files without reading either whole.
fn assert_same(a: &Path, b: &Path) {
    let (mut fa, mut fb) = (
        fs::File::open(a).unwrap_or_else(|e| panic!("{}: {e}", a.display())),
        fs::File::open(b).unwrap_or_else(|e| panic!("{}: {e}", b.display())),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba);
        let m = read_full(&mut fb, &mut bb);
        assert_eq!(
            n,
            m,
            "{} and {} differ in length near byte {at}",
            a.display(),
            b.display()
        );
        if n == 0 {
            return;
        }
        if ba[..n] != bb[..n] {
            panic!(
                "{} and {} differ in the MiB at byte {at}",
                a.display(),
                b.display()
            );
        }
        at += n as u64;
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]).expect("read") {
            0 => break,
            n => got += n,
        }
    }
    got
}

/// Where a test keeps its caches, data and restores (under /var/tmp, not
/// a tmpfs: gigabytes).
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ckptfs-s3-{name}-"))
        .tempdir_in("/var/tmp")
        .expect("scratch dir")
}

/// A SeaweedFS server for one test, with the test bucket.
fn server(dir: &Path) -> Weed {
    let weed = Weed::start(&dir.join("weed"));
    weed.create_bucket(BUCKET);
    weed
}

/// The flags that point ckptfs at `prefix` of the test bucket.
fn s3_flags(endpoint: &str, prefix: &str) -> Vec<String> {
    [
        "--s3",
        &format!("s3://{BUCKET}/{prefix}"),
        "--s3-endpoint",
        endpoint,
        "--drain-jitter",
        "0s",
        "--drain-backoff-min",
        "100ms",
        "--drain-backoff-max",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `ckptfs` on `cache` with an empty config, the server's credentials in
/// the environment (never on the command line) and `flags`.
fn ckptfs(cache: &Path, env: &[(String, String)], flags: &[String]) -> Command {
    let config = cache.with_extension("toml");
    if !config.exists() {
        fs::write(&config, "").expect("empty config");
    }
    let mut c = Command::new(BIN);
    c.env("CKPTFS_CONFIG", &config)
        .env_remove("RUST_LOG")
        .env_remove("AWS_PROFILE")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--cache")
        .arg(cache)
        .arg("--keep")
        .arg("0")
        .args(common::NO_EVICTION)
        .args(flags)
        .stdin(Stdio::null());
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("run ckptfs")
}

fn ok(c: Command) -> String {
    let what = format!("{c:?}");
    let out = run(c);
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn put(cache: &Path, env: &[(String, String)], job: &str, set: &str, files: &[PathBuf]) {
    let mut c = ckptfs(cache, env, &[]);
    c.args(["put", job]).args(files).args(["--set", set]);
    ok(c);
}

/// `ckptfs drain --wait` in the foreground (no daemon serves the cache).
fn drain(cache: &Path, env: &[(String, String)], flags: &[String]) -> String {
    let mut c = ckptfs(cache, env, flags);
    c.args(["drain", "--wait", "--timeout", "600s"]);
    ok(c)
}

/// `ckptfs drain --wait` in the background, logging each chunk uploaded
/// (debug) to `log`.
fn drain_in_background(
    cache: &Path,
    env: &[(String, String)],
    flags: &[String],
    log: &Path,
) -> common::Proc {
    let mut c = ckptfs(cache, env, flags);
    c.env("RUST_LOG", "info,libckpt::s3=debug")
        .args(["drain", "--wait", "--timeout", "600s"])
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).expect("log file"));
    common::Proc::spawn(c)
}

/// `ckptfs restore sim [SET] --from FROM --to OUT` on a fresh cache.
fn restore(
    fresh: &Path,
    env: &[(String, String)],
    flags: &[String],
    set: Option<&str>,
    from: &str,
    out: &Path,
) -> Command {
    let mut c = ckptfs(fresh, env, flags);
    c.args(["restore", "sim"])
        .args(set)
        .args(["--from", from, "--to"])
        .arg(out);
    c
}

/// Keys under `prefix` of the bucket, as rclone lists them.
fn keys(list: Output) -> Vec<String> {
    assert!(
        list.status.success(),
        "rclone lsf: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn lsf(weed: &Weed, prefix: &str) -> Vec<String> {
    keys(weed.rclone(&[
        "lsf",
        "-R",
        "--files-only",
        &format!("s3:{BUCKET}/{prefix}"),
    ]))
}

#[test]
fn a_2gib_set_drains_to_s3_and_restores_on_an_empty_node() {
    let dir = scratch("2g");
    let weed = server(dir.path());
    let env = weed.env();
    let flags = s3_flags(&weed.endpoint(), "big");
    let files = make_files(&dir.path().join("data"), 4, 512 << 20, 1);
    let cache = dir.path().join("cache");
    put(&cache, &env, "sim", "step-1", &files);
    drain(&cache, &env, &flags);

    let stored = lsf(&weed, "big");
    assert!(stored.iter().any(|k| k == "sets/sim/step-1"), "{stored:?}");
    assert!(
        !stored.iter().any(|k| k.starts_with("inflight/")),
        "the in-flight marker is gone after the push: {stored:?}"
    );

    // An empty node: a new cache, nothing but the bucket.
    let fresh = dir.path().join("fresh");
    fs::remove_dir_all(&cache).expect("wipe the cache");
    let out = dir.path().join("restored");
    let mut c = ckptfs(&fresh, &env, &flags);
    c.args(["restore", "sim", "--to"]).arg(&out);
    let said = ok(c);
    assert!(said.contains("restored from s3"), "{said}");
    for f in &files {
        assert_same(f, &out.join(f.file_name().expect("name")));
    }
}

#[test]
fn a_mount_on_an_empty_node_lists_and_stages_in_from_s3() {
    let dir = scratch("mount");
    let weed = server(dir.path());
    let flags = s3_flags(&weed.endpoint(), "mnt");
    let mut opts = Opts::new(DataPath::Passthrough);
    for f in &flags {
        opts = opts.arg(f);
    }
    for (k, v) in weed.env() {
        opts = opts.env(&k, &v);
    }
    let m = Mount::start(opts.clone());
    let set = m.new_set("heat", "step-10");
    let mut bytes = vec![0u8; 3 << 20];
    fill(&mut bytes, 7);
    fs::write(set.join("state.bin"), &bytes).expect("write through the mount");
    m.commit_ok("heat", "step-10");
    common::wait_until(Duration::from_secs(60), "the set on S3", || {
        lsf(&weed, "mnt").iter().any(|k| k == "sets/heat/step-10")
    });
    let st = m.status();
    let tier = st["drain"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["tier"] == "s3"))
        .cloned()
        .unwrap_or_else(|| panic!("no s3 tier in status: {st}"));
    assert!(
        tier["location"]
            .as_str()
            .is_some_and(|l| l.contains("s3://ckpt/mnt")),
        "{tier}"
    );
    drop(m);

    let fresh = Mount::start(opts);
    let listed: Vec<String> = fs::read_dir(fresh.p("heat"))
        .expect("ls /ckpt/heat on the fresh node")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, vec!["step-10".to_owned()]);
    let back = fs::read(fresh.p("heat/step-10/state.bin")).expect("read, staged in from S3");
    assert!(back == bytes, "the staged-in file differs");
    fresh.verify_ok("heat", "step-10");
}

#[test]
fn the_server_killed_mid_upload_then_back_the_drain_completes_without_duplicates() {
    let dir = scratch("kill");
    let mut weed = server(dir.path());
    let env = weed.env();
    let mut flags = s3_flags(&weed.endpoint(), "kill");
    // Few retries per request, so the push itself fails and the drain's
    // backoff takes over while the server is down.
    flags.extend(
        [
            "--s3-retries",
            "1",
            "--s3-retry-timeout",
            "2s",
            "--s3-parallel",
            "4",
        ]
        .map(String::from),
    );
    let files = make_files(&dir.path().join("data"), 2, 96 << 20, 2);
    let cache = dir.path().join("cache");
    put(&cache, &env, "sim", "step-1", &files);

    let log = dir.path().join("drain.log");
    let mut child = drain_in_background(&cache, &env, &flags, &log);
    let uploaded = |log: &Path| -> Vec<String> {
        fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("chunk uploaded to S3"))
            .filter_map(|l| l.split("chunk=").nth(1))
            .map(|r| r.split_whitespace().next().unwrap_or("").to_owned())
            .collect()
    };
    common::wait_until(Duration::from_secs(120), "some chunks uploaded", || {
        uploaded(&log).len() >= 20
    });
    weed.kill9();
    let before = uploaded(&log).len();
    assert!(
        before < 192,
        "the push finished before the kill ({before} chunks)"
    );
    std::thread::sleep(Duration::from_secs(3));
    weed.restart();
    // The set is not complete on S3 until every chunk is there.
    let stored = lsf(&weed, "kill");
    assert!(
        !stored.iter().any(|k| k.starts_with("sets/")),
        "a set record exists while the push is incomplete: {stored:?}"
    );
    let status = child
        .wait_within(Duration::from_secs(300))
        .expect("drain --wait ends");
    assert!(
        status.success(),
        "drain --wait: {status}\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );

    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("drain failed"),
        "the push failed while the server was down and was resumed: {text}"
    );
    let chunks = uploaded(&log);
    let mut unique = chunks.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        chunks.len(),
        "a chunk was uploaded twice (once before the kill, once after)"
    );
    // Every chunk the record names is in the bucket.
    let stored = lsf(&weed, "kill");
    let record = weed.rclone(&["cat", &format!("s3:{BUCKET}/kill/sets/sim/step-1")]);
    let record: serde_json::Value =
        serde_json::from_slice(&record.stdout).expect("the set record is JSON");
    for h in record["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .flat_map(|f| f.as_array().cloned().unwrap_or_default())
    {
        let h = h.as_str().expect("hash");
        assert!(
            stored.contains(&format!("chunks/{}/{h}", &h[..2])),
            "the record names chunk {h}, which is not in the bucket"
        );
    }
    let out = dir.path().join("restored");
    let c = restore(&dir.path().join("fresh"), &env, &flags, None, "s3", &out);
    ok(c);
    for f in &files {
        assert_same(f, &out.join(f.file_name().expect("name")));
    }
}

#[test]
fn a_chunk_overwritten_in_the_bucket_is_caught_and_the_next_tier_used() {
    let dir = scratch("flip");
    let weed = server(dir.path());
    let env = weed.env();
    let pfs = dir.path().join("pfs");
    fs::create_dir(&pfs).expect("mkdir pfs");
    let mut flags = s3_flags(&weed.endpoint(), "flip");
    flags.extend(["--pfs".to_owned(), pfs.display().to_string()]);
    let files = make_files(&dir.path().join("data"), 1, 6 << 20, 3);
    let cache = dir.path().join("cache");
    put(&cache, &env, "sim", "step-1", &files);
    drain(&cache, &env, &flags);

    // Overwrite one chunk object through the S3 API with another chunk's
    // bytes: a well-formed blob, the wrong one.
    let chunks: Vec<String> = lsf(&weed, "flip")
        .into_iter()
        .filter(|k| k.starts_with("chunks/"))
        .collect();
    assert!(chunks.len() >= 2, "{chunks:?}");
    let other = dir.path().join("other.blob");
    let got = weed.rclone(&[
        "copyto",
        &format!("s3:{BUCKET}/flip/{}", chunks[1]),
        &other.display().to_string(),
    ]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let put_back = weed.rclone(&[
        "copyto",
        &other.display().to_string(),
        &format!("s3:{BUCKET}/flip/{}", chunks[0]),
    ]);
    assert!(
        put_back.status.success(),
        "{}",
        String::from_utf8_lossy(&put_back.stderr)
    );

    let out = dir.path().join("restored");
    let c = restore(
        &dir.path().join("fresh"),
        &env,
        &flags,
        None,
        "s3,pfs",
        &out,
    );
    let r = run(c);
    let stderr = String::from_utf8_lossy(&r.stderr);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("corrupt") && stderr.contains(&chunks[0][chunks[0].len() - 64..]),
        "the bad chunk is reported: {stderr}"
    );
    assert!(stdout.contains("restored from pfs"), "{stdout}");
    assert_same(&files[0], &out.join("rank-0.bin"));

    // Alone, the S3 tier refuses: nothing half-restored is offered.
    let out2 = dir.path().join("restored2");
    let c = restore(&dir.path().join("fresh2"), &env, &flags, None, "s3", &out2);
    let r = run(c);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("s3://ckpt/flip/chunks/"));
}

#[test]
fn keep_n_on_s3_removes_manifests_first_and_only_unneeded_chunks() {
    let dir = scratch("keep");
    let weed = server(dir.path());
    let env = weed.env();
    let mut flags = s3_flags(&weed.endpoint(), "keep");
    flags.extend(["--s3-keep".to_owned(), "2".to_owned()]);
    let cache = dir.path().join("cache");
    let data = dir.path().join("data");
    // Three versions of one file, each changing a tenth of the last.
    let base = make_files(&data.join("v1"), 1, 20 << 20, 4);
    put(&cache, &env, "sim", "step-1", &base);
    drain(&cache, &env, &flags);
    let mut versions = vec![base[0].clone()];
    for v in 2..=3u64 {
        let mut bytes = fs::read(versions.last().expect("last")).expect("read");
        let at = (v as usize) << 20;
        fill(&mut bytes[at..at + (2 << 20)], 100 + v);
        let p = data.join(format!("v{v}/rank-0.bin"));
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, &bytes).expect("write");
        put(
            &cache,
            &env,
            "sim",
            &format!("step-{v}"),
            std::slice::from_ref(&p),
        );
        let said = drain(&cache, &env, &flags);
        let _ = said;
        versions.push(p);
    }
    let stored = lsf(&weed, "keep");
    let sets: Vec<&String> = stored.iter().filter(|k| k.starts_with("sets/")).collect();
    assert_eq!(
        sets,
        vec!["sets/sim/step-2", "sets/sim/step-3"],
        "{stored:?}"
    );
    // The two kept sets restore whole; step-1's own chunks are gone.
    for (v, set) in [(1usize, "step-2"), (2, "step-3")] {
        let out = dir.path().join(format!("out-{set}"));
        let c = restore(
            &dir.path().join(format!("fresh-{set}")),
            &env,
            &flags,
            Some(set),
            "s3",
            &out,
        );
        ok(c);
        assert_same(&versions[v], &out.join("rank-0.bin"));
    }
    let n_chunks = stored.iter().filter(|k| k.starts_with("chunks/")).count();
    // 20 chunks in a set, 2 new in each later one; step-1's 2 unique ones
    // went with it.
    assert_eq!(n_chunks, 22, "{stored:?}");
}

#[test]
fn bad_buckets_keys_and_endpoints_fail_clearly_and_lose_nothing() {
    let dir = scratch("bad");
    let weed = server(dir.path());
    let env = weed.env();
    let cache = dir.path().join("cache");
    let files = make_files(&dir.path().join("data"), 1, 2 << 20, 5);
    put(&cache, &env, "sim", "step-1", &files);
    let try_drain = |env: &[(String, String)], flags: &[String]| -> String {
        let mut c = ckptfs(&cache, env, flags);
        c.args(["drain", "--wait", "--timeout", "3s"]);
        let r = run(c);
        assert!(!r.status.success(), "the drain cannot succeed");
        format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        )
    };

    // A bucket that does not exist.
    let mut flags = s3_flags(&weed.endpoint(), "x");
    flags[1] = "s3://no-such-bucket/x".into();
    let said = try_drain(&env, &flags);
    assert!(
        said.contains("no-such-bucket") && said.contains("does not exist"),
        "{said}"
    );

    // Wrong credentials.
    let wrong: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| {
            if k == "AWS_SECRET_ACCESS_KEY" {
                (k.clone(), "not-the-secret".into())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let said = try_drain(&wrong, &s3_flags(&weed.endpoint(), "x"));
    assert!(
        said.contains("credentials") && said.contains("refused"),
        "{said}"
    );

    // No credentials at all: refused at start, saying where it looked.
    let none = vec![("HOME".to_owned(), dir.path().display().to_string())];
    let mut c = ckptfs(&cache, &none, &s3_flags(&weed.endpoint(), "x"));
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    c.args(["drain", "--wait", "--timeout", "3s"]);
    let r = run(c);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("no S3 credentials"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    // An endpoint that does not answer.
    let mut flags = s3_flags("http://127.0.0.1:9", "x");
    flags.extend(["--s3-retries", "1", "--s3-retry-timeout", "1s"].map(String::from));
    let said = try_drain(&env, &flags);
    assert!(
        said.contains("s3://ckpt/x") && said.contains("127.0.0.1:9"),
        "{said}"
    );

    // A garbage record and one from a future version: named, not used,
    // and nothing deleted.
    drain(&cache, &env, &s3_flags(&weed.endpoint(), "g"));
    let before = lsf(&weed, "g");
    let garbage = dir.path().join("garbage");
    fs::write(&garbage, b"{\"not\": \"a record\"").expect("write");
    let up = weed.rclone(&[
        "copyto",
        &garbage.display().to_string(),
        &format!("s3:{BUCKET}/g/sets/sim/step-1"),
    ]);
    assert!(up.status.success());
    let out = dir.path().join("out");
    let fresh = dir.path().join("fresh");
    let g = s3_flags(&weed.endpoint(), "g");
    let r = run(restore(&fresh, &env, &g, Some("step-1"), "s3", &out));
    assert!(!r.status.success());
    let said = String::from_utf8_lossy(&r.stderr);
    assert!(said.contains("s3://ckpt/g/sets/sim/step-1"), "{said}");
    let future = dir.path().join("future");
    fs::write(
        &future,
        br#"{"format":"ckptfs-dr-record","version":99,"manifest":{},"chunks":[]}"#,
    )
    .expect("write");
    let up = weed.rclone(&[
        "copyto",
        &future.display().to_string(),
        &format!("s3:{BUCKET}/g/sets/sim/step-1"),
    ]);
    assert!(up.status.success());
    let g = s3_flags(&weed.endpoint(), "g");
    let r = run(restore(&fresh, &env, &g, Some("step-1"), "s3", &out));
    assert!(!r.status.success());
    let said = String::from_utf8_lossy(&r.stderr);
    assert!(
        said.contains("s3://ckpt/g/sets/sim/step-1") && said.contains("newer"),
        "{said}"
    );
    assert_eq!(lsf(&weed, "g"), before, "nothing was deleted");
}

#[test]
fn auto_compression_climbs_while_the_upload_is_the_slower_end_and_restores() {
    let dir = scratch("auto");
    let weed = server(dir.path());
    let env = weed.env();
    let mut flags = s3_flags(&weed.endpoint(), "auto");
    // Capped at 8 MiB/s, each upload waits far longer than its chunk
    // takes to compress: the level must go up from 3.
    flags.extend(["--s3-zstd-level", "auto", "--s3-rate", "8MiB"].map(String::from));
    let files = make_files(&dir.path().join("data"), 1, 128 << 20, 7);
    let cache = dir.path().join("cache");
    put(&cache, &env, "sim", "step-1", &files);
    let mut c = ckptfs(&cache, &env, &flags);
    c.env("RUST_LOG", "info,libckpt::s3=debug");
    c.args(["drain", "--wait", "--timeout", "300s"]);
    let out = run(c);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let level: i32 = log
        .lines()
        .find(|l| l.contains("set pushed to S3"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("zstd_level="))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no zstd_level in the push's log line: {log}"));
    assert!(level > 3, "the level stayed at {level}: {log}");
    // Chunks compressed at different levels all come back.
    let restored = dir.path().join("restored");
    let c = restore(
        &dir.path().join("fresh"),
        &env,
        &flags,
        None,
        "s3",
        &restored,
    );
    ok(c);
    assert_same(&files[0], &restored.join("rank-0.bin"));
}

#[test]
fn large_objects_go_up_in_parts_and_come_back_whole() {
    let dir = scratch("multipart");
    let weed = server(dir.path());
    let env = weed.env();
    let mut flags = s3_flags(&weed.endpoint(), "mp");
    flags.extend(["--s3-multipart-threshold", "5MiB", "--s3-part-size", "5MiB"].map(String::from));
    let files = make_files(&dir.path().join("data"), 1, 40 << 20, 6);
    let cache = dir.path().join("cache");
    // 16 MiB chunks: pieces of 16 MiB, each above the threshold.
    let mut c = ckptfs(
        &cache,
        &env,
        &["--chunk-size".to_owned(), "16MiB".to_owned()],
    );
    c.args(["put", "sim"])
        .args(&files)
        .args(["--set", "step-1"]);
    ok(c);
    let mut c = ckptfs(&cache, &env, &flags);
    c.env("RUST_LOG", "info");
    c.args(["drain", "--wait", "--timeout", "300s"]);
    ok(c);
    // The chunk objects are above the threshold, so they went up in parts.
    let sizes = weed.rclone(&["lsl", &format!("s3:{BUCKET}/mp/chunks")]);
    let big = String::from_utf8_lossy(&sizes.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .filter(|&n| n > 5 << 20)
        .count();
    assert!(big >= 2, "{}", String::from_utf8_lossy(&sizes.stdout));
    let out = dir.path().join("restored");
    let c = restore(&dir.path().join("fresh"), &env, &flags, None, "s3", &out);
    ok(c);
    assert_same(&files[0], &out.join("rank-0.bin"));
}

#[test]
fn a_volume_server_killed_during_the_drain_of_a_replicated_cluster() {
    let dir = scratch("cluster");
    let mut cluster = WeedCluster::start(&dir.path().join("weed"));
    cluster.create_bucket(BUCKET);
    let env = cluster.env();
    let flags = s3_flags(&cluster.endpoint(), "c");
    let files = make_files(&dir.path().join("data"), 2, 64 << 20, 8);
    let cache = dir.path().join("cache");
    put(&cache, &env, "sim", "step-1", &files);
    let log = dir.path().join("drain.log");
    let started = Instant::now();
    let mut child = drain_in_background(&cache, &env, &flags, &log);
    common::wait_until(Duration::from_secs(120), "the drain under way", || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("chunk uploaded to S3")
            .count()
            >= 10
    });
    // Placement is random: kill a server that holds the bucket's data.
    let victim = (0..3)
        .max_by_key(|&i| cluster.volume_ids(i).len())
        .expect("three volume servers");
    assert!(
        !cluster.volume_ids(victim).is_empty(),
        "no server holds a volume yet"
    );
    cluster.kill9_volume(victim);
    let status = child
        .wait_within(Duration::from_secs(600))
        .expect("drain --wait ends");
    assert!(
        status.success(),
        "drain --wait after {:?}: {status}\n{}",
        started.elapsed(),
        fs::read_to_string(&log).unwrap_or_default()
    );
    let out = dir.path().join("restored");
    let c = restore(&dir.path().join("fresh"), &env, &flags, None, "s3", &out);
    ok(c);
    for f in &files {
        assert_same(f, &out.join(f.file_name().expect("name")));
    }
}
