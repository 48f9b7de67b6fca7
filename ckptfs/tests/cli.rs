//! The `ckptfs` binary as a user runs it: real processes, exit statuses,
//! messages and JSON.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
    engine: &'static str,
}

impl Env {
    fn new(engine: &'static str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("ckptfs-cli-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        Env { dir, engine }
    }

    fn empty_config(&self) -> PathBuf {
        let p = self.dir.path().join("empty.toml");
        if !p.exists() {
            fs::write(&p, "").expect("write empty config");
        }
        p
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ckptfs"))
            .arg("--cache")
            .arg(self.cache())
            .arg("--io-engine")
            .arg(self.engine)
            .args(args)
            // An empty config file: no /etc/ckptfs.toml of this machine leaks in.
            .env("CKPTFS_CONFIG", self.empty_config())
            .output()
            .expect("run ckptfs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ckptfs {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("valid JSON")
    }

    fn input(&self, name: &str, len: usize, seed: u8) -> PathBuf {
        let p = self.dir.path().join("in").join(name);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed)
            .collect();
        fs::write(&p, bytes).expect("write input");
        p
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn engines() -> [&'static str; 2] {
    ["uring", "fallback"]
}

#[test]
fn put_ls_latest_verify() {
    for engine in engines() {
        let env = Env::new(engine);
        let a = env.input("a.bin", 3 << 20, 1);
        let dir = env.input("tree/x/y.dat", 5000, 2);
        let tree = dir.parent().and_then(Path::parent).expect("tree dir");
        let a = a.to_str().expect("utf-8");
        let tree = tree.to_str().expect("utf-8");
        env.ok(&["put", "heat", a, tree, "--set", "step-1"]);
        env.ok(&["put", "heat", a, "--set", "step-2"]);

        let sets = env.json(&["ls", "heat"]);
        let sets = sets.as_array().expect("array");
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0]["set"], "step-1");
        assert_eq!(sets[0]["state"], "complete");
        assert_eq!(sets[0]["files"], 2);
        assert_eq!(sets[0]["bytes"], (3 << 20) + 5000);

        assert_eq!(env.ok(&["latest", "heat"]).trim(), "step-2");
        let path = env.ok(&["latest", "heat", "--path"]);
        assert!(Path::new(path.trim()).join("a.bin").is_file(), "{path}");
        assert!(Path::new(path.trim()).starts_with(env.cache().canonicalize().unwrap()));

        let v = env.json(&["verify", "heat", "step-1"]);
        assert_eq!(v["ok"], true);
        assert_eq!(v["files"], 2);
        let text = env.ok(&["verify", "heat"]);
        assert!(text.contains("heat/step-2: ok"), "{text}");

        let jobs = env.json(&["ls"]);
        assert_eq!(jobs[0]["job"], "heat");
        assert_eq!(jobs[0]["latest"], "step-2");

        let st = env.json(&["status"]);
        let want = if engine == "uring" {
            "uring"
        } else {
            "fallback"
        };
        assert_eq!(st["io"]["path"], want, "{st}");
        if engine == "fallback" {
            assert!(st["io"]["fallback_reason"]
                .as_str()
                .unwrap_or("")
                .contains("forced"));
        }
    }
}

#[test]
fn flipped_byte_fails_verify_naming_file_and_chunk() {
    for engine in engines() {
        let env = Env::new(engine);
        let a = env.input("big.bin", 5 << 20, 3);
        env.ok(&["put", "j", a.to_str().unwrap(), "--set", "s"]);
        let file = env.cache().join("j/s/big.bin");
        let mut bytes = fs::read(&file).unwrap();
        bytes[(2 << 20) + 12345] ^= 0x01;
        fs::write(&file, &bytes).unwrap();
        let out = env.run(&["verify", "j", "s"]);
        assert_eq!(code(&out), 4, "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("big.bin") && err.contains("chunk 2"), "{err}");
        let out = env.run(&["verify", "j", "s", "--json"]);
        assert_eq!(code(&out), 4);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["problems"][0]["problem"], "corrupt");
        assert_eq!(v["problems"][0]["chunk"], 2);
    }
}

#[test]
fn commit_a_directory_written_by_hand() {
    let env = Env::new("uring");
    // The cache must exist for the directory to be inside it.
    env.ok(&["ls"]);
    let set = env.cache().join("sim/t100");
    fs::create_dir_all(set.join("ranks")).unwrap();
    fs::write(set.join("ranks/0.bin"), vec![7u8; 100_000]).unwrap();
    let ls = env.json(&["ls", "sim"]);
    assert_eq!(ls[0]["state"], "uncommitted");
    let out = env.run(&["latest", "sim"]);
    assert_eq!(code(&out), 3, "uncommitted set offered");
    let v = env.json(&["commit", set.to_str().unwrap()]);
    assert_eq!(v["files"], 1);
    assert_eq!(env.ok(&["latest", "sim"]).trim(), "t100");
    let out = env.run(&["commit", set.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("already committed"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["commit", env.dir.path().to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("not a set directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn damaged_manifests_fall_back_and_lose_nothing() {
    let env = Env::new("fallback");
    let a = env.input("a", 10_000, 4);
    let a = a.to_str().unwrap();
    env.ok(&["--keep", "0", "put", "j", a, "--set", "s1"]);
    env.ok(&["--keep", "0", "put", "j", a, "--set", "s2"]);
    let manifest = env.cache().join(".ckptfs/sets/j/s2/manifest.json");
    let good = fs::read(&manifest).unwrap();
    let future = String::from_utf8(good.clone())
        .unwrap()
        .replace("\"version\":1", "\"version\":2");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", good[..good.len() - 30].to_vec(), "truncated"),
        ("empty", Vec::new(), "empty"),
        ("garbage", b"not json at all".to_vec(), "not valid JSON"),
        ("future", future.into_bytes(), "newer than this ckptfs"),
    ];
    for (what, bytes, says) in cases {
        fs::write(&manifest, &bytes).unwrap();
        assert_eq!(env.ok(&["latest", "j"]).trim(), "s1", "{what}");
        let ls = env.json(&["ls", "j"]);
        assert_eq!(ls[1]["state"], "damaged", "{what}");
        assert!(
            ls[1]["detail"].as_str().unwrap().contains(says),
            "{what}: {ls}"
        );
        let out = env.run(&["verify", "j", "s2"]);
        assert_eq!(code(&out), 4, "{what}");
        assert!(stderr(&out).contains(says), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains("manifest.json"), "{}", stderr(&out));
        env.ok(&["prune", "--keep", "1"]);
        assert_eq!(
            fs::read(&manifest).unwrap(),
            bytes,
            "{what}: manifest changed"
        );
        assert!(env.cache().join("j/s2/a").exists(), "{what}: data deleted");
    }
}

#[test]
fn not_found_is_exit_3() {
    let env = Env::new("uring");
    let out = env.run(&["latest", "nojob"]);
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("no complete set for job nojob"));
    let out = env.run(&["rm", "nojob", "s"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = env.run(&["verify", "nojob"]);
    assert_eq!(code(&out), 3);
}

#[test]
fn bad_names_are_refused_naming_them() {
    let env = Env::new("uring");
    for bad in ["../etc", "a/b", ".hidden"] {
        let out = env.run(&["latest", bad]);
        assert_eq!(code(&out), 1);
        let err = stderr(&out);
        assert!(
            err.contains("invalid job name") && err.contains(bad),
            "{err}"
        );
    }
    let a = env.input("a", 10, 1);
    let out = env.run(&["put", "j", a.to_str().unwrap(), "--set", ".."]);
    assert!(
        stderr(&out).contains("invalid set name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_file_errors_name_key_and_file() {
    let env = Env::new("uring");
    let cfg = env.dir.path().join("ckptfs.toml");
    let cases = [
        ("[store]\nkepe = 3\n", "kepe"),
        ("[store]\nchunk_size = \"3 KiB\"\n", "store.chunk_size"),
        ("[io]\nengine = \"turbo\"\n", "turbo"),
    ];
    for (text, key) in cases {
        fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ckptfs"))
            .args(["--config", cfg.to_str().unwrap(), "ls"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 1);
        let err = stderr(&out);
        assert!(err.contains("ckptfs.toml") && err.contains(key), "{err}");
    }
    // A good file is used, and CKPTFS_CONFIG finds it; flags win.
    fs::write(
        &cfg,
        format!("cache = \"{}\"\n[store]\nkeep = 9\n", env.cache().display()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ckptfs"))
        .args(["config"])
        .env("CKPTFS_CONFIG", &cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("keep = 9"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_ckptfs"))
        .args(["config", "--keep", "4"])
        .env("CKPTFS_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("keep = 4"));
    let out = Command::new(env!("CARGO_BIN_EXE_ckptfs"))
        .args(["--chunk-size", "5000", "ls"])
        .env("CKPTFS_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("--chunk-size"), "{}", stderr(&out));
}

#[test]
fn help_documents_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_ckptfs"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Exit status",
        "3  not found",
        "4  verification failed",
        "CKPTFS_CONFIG",
    ] {
        assert!(text.contains(needle), "--help lacks {needle:?}:\n{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ckptfs"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
}

/// A daemon started from a shell keeps many files open (the PFS tier syncs
/// small files in groups, up to 256 open at once): `ckptfs` lifts a soft
/// limit of 1024 toward the hard one (at most 65 536).
#[test]
fn the_soft_open_file_limit_is_lifted_toward_the_hard_one() {
    let env = Env::new("fallback");
    let key = env.dir.path().join("key");
    fs::write(&key, [7u8; 32]).expect("write key");
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod key");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#"ulimit -Sn 1024 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_ckptfs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(env.dir.path().join("root"))
        .arg("--key")
        .arg(&key)
        .env("CKPTFS_CONFIG", env.empty_config())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start ckptfs serve");
    let (limits, comm) = (
        format!("/proc/{}/limits", child.id()),
        format!("/proc/{}/comm", child.id()),
    );
    // (soft, hard) of the process once it is ckptfs: before the exec, the
    // shell still has the limits this test inherited.
    let read = || -> Option<(u64, u64)> {
        if fs::read_to_string(&comm).ok()?.trim() != "ckptfs" {
            return None;
        }
        let text = fs::read_to_string(&limits).ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let mut n = line.split_whitespace().skip(3);
        let parse = |s: Option<&str>| match s? {
            "unlimited" => Some(u64::MAX),
            v => v.parse().ok(),
        };
        Some((parse(n.next())?, parse(n.next())?))
    };
    let want = |hard: u64| hard.min(65536);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = read();
    while std::time::Instant::now() < deadline
        && !matches!(seen, Some((soft, hard)) if soft == want(hard))
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
        seen = read();
    }
    let _ = child.kill();
    let _ = child.wait();
    let (soft, hard) = seen.expect("read the open-file limits of ckptfs serve");
    assert_eq!(soft, want(hard), "soft {soft}, hard {hard}");
}
