//! The heat solvers of examples/ (C and Fortran, compiled with the real
//! gcc and gfortran against libckpt) killed with SIGKILL at random steps
//! and started again, in both modes (embedded; mounted over a real
//! `ckptfs mount --foreground`) and with both kinds of checkpoint (memory-
//! and file-based): the final grid is bit-identical to the grid of a run
//! that was never interrupted, every restart resumes from the newest
//! complete checkpoint, and every complete checkpoint verifies.
//!
//! Kills alternate at random (seeded: CKPT_CAPI_SEED, printed) between the
//! solver killing itself right after a chosen step and a SIGKILL from
//! outside after a random delay, which can land anywhere, inside
//! ckpt_checkpoint() included.

mod capi_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use capi_common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const STEPS: u32 = 600;
const EVERY: u32 = 40;
const GRID: u32 = 96;
const KILLS: usize = 4;
/// Per-step sleep while a kill from outside is pending: long enough for
/// the random delay to land mid-run.
const DELAY_US: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    C,
    Fortran,
}

struct Solver {
    exe: PathBuf,
    config: PathBuf,
    dir: PathBuf,
}

impl Solver {
    fn command(&self, job: &str, extra: &[String]) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg(format!("--config={}", self.config.display()))
            .arg(format!("--job={job}"))
            .arg(format!("--n={GRID}"))
            .arg(format!("--steps={STEPS}"))
            .arg(format!("--every={EVERY}"))
            .args(extra);
        single_rank(&mut c);
        c
    }
}

/// The versions of NAME "heatdis" in JOB that `ckptfs ls` calls complete.
fn complete_versions(cache: &Path, job: &str) -> Vec<u32> {
    let mut v: Vec<u32> = sets(cache, job)
        .into_iter()
        .filter(|(_, state)| state == "complete")
        .filter_map(|(set, _)| set.strip_prefix("heatdis.v")?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// "restarted from version V" in a solver's stderr.
fn restarted_from(stderr: &str) -> Option<u32> {
    stderr
        .lines()
        .find_map(|l| l.split("restarted from version ").nth(1))
        .map(|v| v.trim().parse().expect("version number"))
}

fn kill_restart(test: &str, lang: Lang, mode: Mode, file_based: bool) {
    let seed = seed(test);
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempdir("ckpt-capi-heat-");
    let mount = (mode == Mode::Mounted).then(Mount::start);
    let cache = match &mount {
        Some(m) => m.cache.clone(),
        None => tmp.path().join("cache"),
    };
    let exe = match lang {
        Lang::C => cc("examples/heatdis.c", tmp.path(), &[]),
        Lang::Fortran => fc("examples/heatdis.f90", tmp.path()),
    };
    let solver = Solver {
        exe,
        config: write_config(tmp.path(), &cache, mode, None),
        dir: tmp.path().to_owned(),
    };
    let mut common: Vec<String> = Vec::new();
    if file_based {
        common.push("--file".into());
    }

    // The run that is never interrupted.
    let mut args = common.clone();
    args.push(format!("--out={}", solver.dir.join("ref").display()));
    let reference = run(solver.command("ref", &args), &solver.dir, "ref");
    reference.assert_ok("uninterrupted run");
    assert!(
        restarted_from(&reference.stderr).is_none(),
        "a fresh job restarted: {}",
        reference.stderr
    );
    let want = std::fs::read(solver.dir.join("ref.0")).expect("reference grid");
    assert_eq!(want.len(), ((GRID + 2) * (GRID + 2) * 8) as usize);

    // The same run, killed again and again. Self-kill steps only grow, so
    // each lies beyond the version its run resumes from and does fire.
    let mut self_kill_floor: u32 = 0;
    let mut restarts = 0;
    let mut killed = 0;
    for round in 0..KILLS {
        let newest = complete_versions(&cache, "run").last().copied();
        let mut args = common.clone();
        let outside = rng.gen_bool(0.5);
        // Anywhere in the run: its steps alone take STEPS × DELAY_US.
        let delay = Duration::from_millis(rng.gen_range(5..u64::from(STEPS * DELAY_US / 1000)));
        if outside {
            args.push(format!("--delay-us={DELAY_US}"));
        } else {
            // Beyond the version this run will resume from, so it fires.
            let lo = self_kill_floor.max(newest.unwrap_or(0)) + 1;
            let hi = (lo + STEPS / KILLS as u32).min(STEPS - 1);
            let step = rng.gen_range(lo..=hi.max(lo));
            self_kill_floor = step;
            args.push(format!("--kill-at-step={step}"));
        }
        let tag = format!("round{round}");
        let p = Proc::spawn(solver.command("run", &args), &solver.dir, &tag);
        if outside {
            std::thread::sleep(delay);
            p.kill9();
        }
        let r = p.wait();
        println!(
            "{test}: round {round}: {} → {} ({})",
            if outside {
                format!("SIGKILL from outside after {delay:?}")
            } else {
                args.last().cloned().unwrap_or_default()
            },
            r.status,
            restarted_from(&r.stderr)
                .map_or("fresh start".to_owned(), |v| format!("resumed at {v}"))
        );
        match r.killed_by() {
            Some(libc::SIGKILL) => killed += 1,
            // A kill from outside may come after the end.
            None if outside => r.assert_ok(&format!("round {round}, not reached by the kill")),
            _ => panic!(
                "round {round}: {} (expected death by SIGKILL)\nstderr:\n{}",
                r.status, r.stderr
            ),
        }
        // Restart resumes from the newest complete checkpoint, always (a
        // kill from outside may come before the run says so).
        let resumed = restarted_from(&r.stderr);
        if resumed.is_some() || !outside {
            assert_eq!(
                resumed, newest,
                "round {round}: resumed from another version than the newest complete one\nstderr:\n{}",
                r.stderr
            );
        }
        restarts += usize::from(resumed.is_some());
        assert!(
            r.stdout.is_empty() || r.killed_by().is_none(),
            "a killed run printed its result: {}",
            r.stdout
        );
        for v in complete_versions(&cache, "run") {
            verify_ok(&cache, "run", &set_name("heatdis", v));
        }
    }

    let newest = complete_versions(&cache, "run").last().copied();
    let mut args = common.clone();
    args.push(format!("--out={}", solver.dir.join("run").display()));
    let last = run(solver.command("run", &args), &solver.dir, "final");
    last.assert_ok("final run");
    assert_eq!(restarted_from(&last.stderr), newest, "{}", last.stderr);
    restarts += usize::from(newest.is_some());
    let got = std::fs::read(solver.dir.join("run.0")).expect("final grid");
    assert!(
        got == want,
        "the grid after {killed} kills differs from the uninterrupted run's (first difference at byte {:?})",
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
    assert_eq!(
        last.stdout, reference.stdout,
        "result lines differ from the uninterrupted run's"
    );
    assert!(killed > 0, "no run was killed; the test proved nothing");
    assert!(restarts > 0, "no run restarted; the test proved nothing");
    if let Some(mut m) = mount {
        assert!(
            m.alive(),
            "the daemon died during the test:\n{}",
            m.log_text()
        );
    }
}

#[test]
fn c_memory_embedded() {
    kill_restart("c_memory_embedded", Lang::C, Mode::Embedded, false);
}

#[test]
fn c_file_embedded() {
    kill_restart("c_file_embedded", Lang::C, Mode::Embedded, true);
}

#[test]
fn fortran_memory_embedded() {
    kill_restart(
        "fortran_memory_embedded",
        Lang::Fortran,
        Mode::Embedded,
        false,
    );
}

#[test]
fn fortran_file_embedded() {
    kill_restart("fortran_file_embedded", Lang::Fortran, Mode::Embedded, true);
}

#[test]
fn c_memory_mounted() {
    kill_restart("c_memory_mounted", Lang::C, Mode::Mounted, false);
}

#[test]
fn c_file_mounted() {
    kill_restart("c_file_mounted", Lang::C, Mode::Mounted, true);
}

#[test]
fn fortran_memory_mounted() {
    kill_restart(
        "fortran_memory_mounted",
        Lang::Fortran,
        Mode::Mounted,
        false,
    );
}

#[test]
fn fortran_file_mounted() {
    kill_restart("fortran_file_mounted", Lang::Fortran, Mode::Mounted, true);
}

/// Embedded mode with a PFS tier: the library's drain thread copies the
/// checkpoints (ckpt_finalize waits for it), the node is lost (its cache
/// wiped), and the run goes on from the newest checkpoint, staged in from
/// the PFS, to the grid of an uninterrupted run.
#[test]
fn embedded_drain_then_restart_on_an_empty_cache() {
    let tmp = tempdir("ckpt-capi-lost-");
    let cache = tmp.path().join("cache");
    let pfs = tmp.path().join("pfs");
    std::fs::create_dir(&pfs).expect("mkdir pfs");
    let solver = Solver {
        exe: cc("examples/heatdis.c", tmp.path(), &[]),
        config: write_config(tmp.path(), &cache, Mode::Embedded, Some(&pfs)),
        dir: tmp.path().to_owned(),
    };
    let out = |name: &str| vec![format!("--out={}", solver.dir.join(name).display())];
    let reference = run(solver.command("ref", &out("ref")), &solver.dir, "ref");
    reference.assert_ok("uninterrupted run");

    // The first 200 steps; versions 40 … 160, drained before finalize returns.
    let mut first = solver.command("lost", &[]);
    first.arg("--steps=200");
    let r = run(first, &solver.dir, "first");
    r.assert_ok("first 200 steps");
    assert_eq!(
        latest_on_pfs(&pfs, "lost").as_deref(),
        Some(set_name("heatdis", 160).as_str()),
        "the newest checkpoint is not on the PFS after ckpt_finalize"
    );
    std::fs::remove_dir_all(&cache).expect("wipe the cache");

    let last = run(solver.command("lost", &out("run")), &solver.dir, "after");
    last.assert_ok("run on an empty cache");
    assert_eq!(restarted_from(&last.stderr), Some(160), "{}", last.stderr);
    let want = std::fs::read(solver.dir.join("ref.0")).expect("reference grid");
    let got = std::fs::read(solver.dir.join("run.0")).expect("grid");
    assert!(
        got == want,
        "the grid after stage-in differs from the uninterrupted run's"
    );
    assert_eq!(last.stdout, reference.stdout);
}

/// api.mode = "auto" with a daemon serving the cache: the library commits
/// through the daemon, and it is the daemon (the only one with a PFS tier)
/// that drains the checkpoints.
#[test]
fn auto_mode_hands_checkpoints_to_the_daemon() {
    let tmp = tempdir("ckpt-capi-auto-");
    let pfs = tmp.path().join("pfs");
    std::fs::create_dir(&pfs).expect("mkdir pfs");
    let mut mount = Mount::start_with(&[
        "--pfs".to_owned(),
        pfs.display().to_string(),
        "--drain-jitter".to_owned(),
        "0s".to_owned(),
    ]);
    let config = tmp.path().join("auto.toml");
    // No [pfs]: an embedded library would drain nowhere.
    std::fs::write(
        &config,
        format!(
            "cache = \"{}\"\n\n[api]\nmode = \"auto\"\n",
            mount.cache.display()
        ),
    )
    .expect("write config");
    let solver = Solver {
        exe: cc("examples/heatdis.c", tmp.path(), &[]),
        config,
        dir: tmp.path().to_owned(),
    };
    let mut c = solver.command("auto", &[]);
    c.arg("--steps=200");
    run(c, &solver.dir, "auto").assert_ok("run in auto mode");
    let want = set_name("heatdis", 160);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while latest_on_pfs(&pfs, "auto").as_deref() != Some(want.as_str()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not drain {want} to the PFS within 120 s (latest there: {:?}); \
             did the library run embedded?\ndaemon log:\n{}",
            latest_on_pfs(&pfs, "auto"),
            mount.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(mount.alive(), "the daemon died:\n{}", mount.log_text());
}
