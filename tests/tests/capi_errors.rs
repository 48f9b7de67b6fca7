//! The C API's error paths and thread safety, from C and Fortran programs
//! (tests/c/) compiled with the real gcc and gfortran: every documented
//! error gives its code and a non-empty ckpt_last_error() and the process
//! goes on; init and finalize twice; calls from eight threads at once; and
//! never a byte on stdout.

mod capi_common;

use std::path::Path;
use std::process::Command;

use capi_common::*;

/// A configuration (embedded mode, private cache) and a broken one.
fn configs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cache = dir.join("cache");
    let good = write_config(dir, &cache, Mode::Embedded, None);
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "cache = [\"not\", \"a\", \"path\"]\n[api]\nmode = \"sideways\"\n",
    )
    .expect("write bad config");
    (good, bad)
}

#[track_caller]
fn assert_clean(r: &Run, what: &str) {
    r.assert_ok(what);
    assert!(
        r.stdout.is_empty(),
        "{what} wrote to stdout (the library must not):\n{}",
        r.stdout
    );
}

fn command(exe: &Path, good: &Path) -> Command {
    let mut c = Command::new(exe);
    // ckpt_init(NULL, …) reads $CKPTFS_CONFIG: never this machine's file.
    c.env("CKPTFS_CONFIG", good);
    single_rank(&mut c);
    c
}

#[test]
fn every_documented_error_from_c() {
    let tmp = tempdir("ckpt-capi-errors-");
    let (good, bad) = configs(tmp.path());
    let exe = cc("tests/c/errors.c", tmp.path(), &[]);
    let mut c = command(&exe, &good);
    c.arg(&good).arg(&bad);
    let r = run(c, tmp.path(), "errors");
    eprintln!("{}", r.stderr);
    assert_clean(&r, "tests/c/errors.c");
}

#[test]
fn calls_from_eight_threads_at_once() {
    let tmp = tempdir("ckpt-capi-threads-");
    let (good, _) = configs(tmp.path());
    // Eight checkpoint names in one job: keep every set (the cache keeps 3
    // per job by default, whatever their names).
    let mut text = std::fs::read_to_string(&good).expect("read config");
    // After the top-level `cache = …` line, before the first table.
    text = text.replacen('\n', "\n\n[store]\nkeep = 0\n", 1);
    std::fs::write(&good, text).expect("write config");
    let exe = cc("tests/c/threads.c", tmp.path(), &[]);
    // A few times over: races that lose rarely still get their chance.
    for round in 0..5 {
        let cache = tmp.path().join("cache");
        let _ = std::fs::remove_dir_all(&cache);
        let mut c = command(&exe, &good);
        c.arg(&good);
        let r = run(c, tmp.path(), &format!("threads{round}"));
        if !r.status.success() {
            eprintln!("{}", r.stderr);
        }
        assert_clean(&r, &format!("tests/c/threads.c, round {round}"));
    }
}

#[test]
fn error_paths_through_the_fortran_module() {
    let tmp = tempdir("ckpt-capi-ferrors-");
    let (good, _) = configs(tmp.path());
    let exe = fc("tests/c/errors.f90", tmp.path());
    let mut c = command(&exe, &good);
    c.arg(&good);
    let r = run(c, tmp.path(), "errors_f");
    eprintln!("{}", r.stderr);
    assert_clean(&r, "tests/c/errors.f90");
}

#[test]
fn no_stdout_even_when_everything_fails() {
    // The examples' error exits: a configuration that does not parse.
    let tmp = tempdir("ckpt-capi-heat-bad-");
    let (good, bad) = configs(tmp.path());
    let exe = cc("examples/heatdis.c", tmp.path(), &[]);
    let mut c = command(&exe, &good);
    c.arg(format!("--config={}", bad.display()));
    let r = run(c, tmp.path(), "heat-bad");
    assert_eq!(
        r.status.code(),
        Some(2),
        "heatdis with a bad configuration: {}\n{}",
        r.status,
        r.stderr
    );
    assert!(r.stdout.is_empty(), "stdout: {}", r.stdout);
    assert!(
        r.stderr.contains("ckpt_init") && r.stderr.contains(&*bad.to_string_lossy()),
        "the message names neither the call nor the file:\n{}",
        r.stderr
    );
}
