//! Four ranks under `mpirun -np 4` (Open MPI launching the non-MPI heat
//! solver; each rank takes its rank from OMPI_COMM_WORLD_RANK/SIZE through
//! libckpt) with one rank killing itself with SIGKILL in the middle of a
//! checkpoint: that checkpoint never becomes complete, and the restart
//! resumes every rank from the same, newest complete checkpoint, to a
//! final grid per rank bit-identical to an uninterrupted run's.
//!
//! The dying rank and version are random (seeded: CKPT_CAPI_SEED, printed).

mod capi_common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use capi_common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RANKS: u32 = 4;
const STEPS: u32 = 400;
const EVERY: u32 = 25;
const GRID: u32 = 64;

/// `mpirun -np 4` of the solver, rank r with `common` and `per_rank(r)`
/// (one application context per rank, in rank order).
fn mpirun(
    exe: &Path,
    config: &Path,
    job: &str,
    common: &[String],
    per_rank: impl Fn(u32) -> Vec<String>,
) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--allow-run-as-root"]);
    for r in 0..RANKS {
        if r > 0 {
            c.arg(":");
        }
        c.args(["-np", "1"])
            .arg(exe)
            .arg(format!("--config={}", config.display()))
            .arg(format!("--job={job}"))
            .arg(format!("--n={GRID}"))
            .arg(format!("--steps={STEPS}"))
            .arg(format!("--every={EVERY}"))
            .arg("--verbose")
            .args(common)
            .args(per_rank(r));
    }
    // The ranks are mpirun's to give, not an outer launcher's.
    single_rank(&mut c);
    c
}

/// rank → version, from the ranks' "rank R: restarted from version V".
fn restarts(stderr: &str) -> BTreeMap<u32, u32> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split("heatdis: rank ").nth(1)?;
            let (rank, rest) = rest.split_once(": restarted from version ")?;
            Some((rank.parse().ok()?, rest.trim().parse().ok()?))
        })
        .collect()
}

fn states(cache: &Path, job: &str) -> BTreeMap<u32, String> {
    sets(cache, job)
        .into_iter()
        .filter_map(|(set, state)| Some((set.strip_prefix("heatdis.v")?.parse().ok()?, state)))
        .collect()
}

fn one_rank_dies(test: &str, file_based: bool) {
    let seed = seed(test);
    let mut rng = StdRng::seed_from_u64(seed);
    let die_rank = rng.gen_range(0..RANKS);
    // Not the first checkpoint: there must be an earlier complete one.
    let die_at = EVERY * rng.gen_range(2..STEPS / EVERY);
    println!("{test}: rank {die_rank} dies in version {die_at}");

    let tmp = tempdir("ckpt-capi-mpi-");
    let dir = tmp.path();
    let cache = dir.join("cache");
    let exe = cc("examples/heatdis.c", dir, &[]);
    let config = write_config(dir, &cache, Mode::Embedded, None);
    // A rank waiting in ckpt_finalize() for a set that cannot complete
    // gives up (CKPT_ERR_TIMEOUT, its message on stderr) well within the
    // harness's bound on a run, instead of after the default 5 minutes.
    add_key(&config, "finalize_timeout = \"60s\"");
    let mut common = Vec::new();
    if file_based {
        common.push("--file".to_owned());
    }

    let out = |name: &str| {
        let p = dir.join(name);
        move |_| vec![format!("--out={}", p.display())]
    };
    let reference = run(
        mpirun(&exe, &config, "ref", &common, out("ref")),
        dir,
        "ref",
    );
    reference.assert_ok("uninterrupted mpirun");
    assert!(
        restarts(&reference.stderr).is_empty(),
        "{}",
        reference.stderr
    );

    // The dying rank is the slow one: the others are ahead of it, so every
    // version before the one it dies in is complete when it dies.
    let dying = |r| {
        if r == die_rank {
            vec![
                format!("--die-at={die_at}"),
                format!("--die-rank={die_rank}"),
                "--delay-us=3000".to_owned(),
            ]
        } else {
            Vec::new()
        }
    };
    let killed = run(mpirun(&exe, &config, "run", &common, dying), dir, "killed");
    assert!(
        !killed.status.success(),
        "mpirun succeeded although rank {die_rank} was to die:\n{}",
        killed.stderr
    );
    let how = if file_based {
        "half-way through"
    } else {
        "before"
    };
    assert!(
        killed
            .stderr
            .contains(&format!("rank {die_rank}: dying {how} version {die_at}")),
        "rank {die_rank} did not die where it should have:\n{}",
        killed.stderr
    );

    // mpirun may exit before the ranks it killed are gone; a rank still
    // alive still holds its part of a set.
    let survivors = wait_gone(&exe);
    if survivors > 0 {
        println!("{test}: {survivors} rank(s) outlived mpirun for a moment");
    }

    let before = states(&cache, "run");
    println!("{test}: sets after the kill: {before:?}");
    assert_ne!(
        before.get(&die_at).map(String::as_str),
        Some("complete"),
        "version {die_at} is complete although rank {die_rank} died in it"
    );
    let newest = before
        .iter()
        .filter(|(_, s)| *s == "complete")
        .map(|(v, _)| *v)
        .max()
        .unwrap_or_else(|| panic!("no complete set before version {die_at}: {before:?}"));
    assert_eq!(
        newest,
        die_at - EVERY,
        "the newest complete set is not the one before the rank died: {before:?}"
    );
    verify_ok(&cache, "run", &set_name("heatdis", newest));

    let again = run(
        mpirun(&exe, &config, "run", &common, out("run")),
        dir,
        "again",
    );
    again.assert_ok(&format!(
        "mpirun after the kill (the killed run said:\n{})",
        killed.stderr
    ));
    let resumed = restarts(&again.stderr);
    let want: BTreeMap<u32, u32> = (0..RANKS).map(|r| (r, newest)).collect();
    assert_eq!(
        resumed, want,
        "every rank resumes from the newest complete set\n{}",
        again.stderr
    );
    for r in 0..RANKS {
        let a = std::fs::read(dir.join(format!("ref.{r}"))).expect("reference grid");
        let b = std::fs::read(dir.join(format!("run.{r}"))).expect("restarted grid");
        assert!(
            a == b,
            "rank {r}: the grid after the restart differs from the uninterrupted run's"
        );
    }
    let mut lines_ref: Vec<&str> = reference.stdout.lines().collect();
    let mut lines_run: Vec<&str> = again.stdout.lines().collect();
    lines_ref.sort_unstable();
    lines_run.sort_unstable();
    assert_eq!(lines_run, lines_ref, "result lines");
}

#[test]
fn four_ranks_one_dies_in_a_file_checkpoint() {
    one_rank_dies("four_ranks_one_dies_in_a_file_checkpoint", true);
}

#[test]
fn four_ranks_one_dies_before_its_memory_checkpoint() {
    one_rank_dies("four_ranks_one_dies_before_its_memory_checkpoint", false);
}
