//! SIGKILL at random instants: a writer process creates, writes and commits
//! sets in a loop and is killed again and again. After every kill the store
//! must open, the latest complete set must hold exactly what was written,
//! and no set that was cut short may ever be reported complete.
//!
//! CKPT_KILL_SEED fixes the seed (printed on every run), CKPT_KILLS the
//! number of kills (default 60).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ckpt_tests::{torture_files, torture_set_index};
use libckpt::io::{EngineKind, IoEngine, IoOptions};
use libckpt::path::JobName;
use libckpt::set::SetState;
use libckpt::store::{Store, StoreOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEEP: usize = 3;

fn open(root: &Path) -> Store {
    let engine = IoEngine::new(&IoOptions {
        kind: EngineKind::Fallback,
        ..IoOptions::default()
    })
    .expect("fallback engine");
    Store::open(
        root,
        Arc::new(engine),
        StoreOptions {
            chunk_size: 64 * 1024,
            keep: KEEP,
            ..Default::default()
        },
    )
    .expect("store opens after a kill")
}

/// Every complete set holds exactly the files its index determines, bit for
/// bit; returns the index of the latest complete set.
fn check(root: &Path, job: &JobName, seed: u64, round: usize) -> Option<u64> {
    let store = open(root);
    let sets = store.sets(job).expect("list sets");
    for s in &sets {
        assert!(
            !matches!(s.state, SetState::Writing | SetState::Damaged(_)),
            "round {round}: {} is {:?} after its writer was killed",
            s.set,
            s.state
        );
        if !s.is_complete() {
            continue;
        }
        let idx = torture_set_index(s.set.as_str()).expect("torture set name");
        let report = store.verify(job, &s.set).expect("verify");
        assert!(
            report.ok(),
            "round {round}: {} fails verify: {:?}",
            s.set,
            report.problems
        );
        let m = store.manifest(job, &s.set).expect("manifest");
        let want = torture_files(seed, idx);
        let mut listed: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        listed.sort_unstable();
        let mut expected: Vec<&str> = want.iter().map(|(p, _)| p.as_str()).collect();
        expected.sort_unstable();
        assert_eq!(
            listed, expected,
            "round {round}: {} lists other files than were written",
            s.set
        );
        let dir = store.set_dir(job, &s.set);
        for (path, bytes) in &want {
            let on_disk = std::fs::read(dir.join(path)).expect("read set file");
            assert!(
                on_disk == *bytes,
                "round {round}: {}/{path} differs from what was written",
                s.set
            );
        }
    }
    store
        .latest(job)
        .expect("latest")
        .map(|s| torture_set_index(s.set.as_str()).expect("torture set name"))
}

#[test]
fn sigkill_at_random_instants_never_exposes_a_partial_set() {
    let seed: u64 = std::env::var("CKPT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let kills: usize = std::env::var("CKPT_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    println!("sigkill test: seed {seed} ({kills} kills); rerun with CKPT_KILL_SEED={seed}");
    let dir = tempfile::Builder::new()
        .prefix("ckpt-kill-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let root = dir.path();
    let job = JobName::new("torture").expect("job name");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut committed: BTreeSet<u64> = BTreeSet::new();
    let mut abandoned_seen = 0usize;
    for round in 0..kills {
        let engine = if round % 2 == 0 { "uring" } else { "fallback" };
        let mut child = Command::new(env!("CARGO_BIN_EXE_ckpt-torture"))
            .arg(root)
            .arg(job.as_str())
            .arg(seed.to_string())
            .arg(engine)
            .arg(KEEP.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn writer");
        std::thread::sleep(Duration::from_micros(rng.gen_range(2_000..150_000)));
        // Child::kill sends SIGKILL.
        child.kill().expect("SIGKILL the writer");
        let status = child.wait().expect("reap the writer");
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out).expect("writer output");
        }
        assert!(
            status.code().is_none(),
            "round {round}: writer exited by itself ({status}), not by the kill: {out}"
        );
        for line in out.lines() {
            let name = line.strip_prefix("committed ").expect("writer line");
            committed.insert(torture_set_index(name).expect("set name"));
        }
        let latest = check(root, &job, seed, round);
        if let Some(&last) = committed.last() {
            let latest = latest.unwrap_or_else(|| {
                panic!("round {round}: s{last} was committed but no complete set is offered")
            });
            assert!(
                latest >= last,
                "round {round}: latest complete set is {latest}, older than committed {last}"
            );
        }
        let store = open(root);
        abandoned_seen += store
            .sets(&job)
            .expect("list")
            .iter()
            .filter(|s| s.state == SetState::Abandoned)
            .count();
    }
    // Retention cleans what the kills left behind.
    let store = open(root);
    store.apply_retention(&job, KEEP).expect("retention");
    let sets = store.sets(&job).expect("list");
    assert!(sets.iter().all(|s| s.is_complete()), "{sets:?}");
    assert!(sets.len() <= KEEP);
    println!(
        "sigkill test: {kills} kills, {} commits acknowledged, {abandoned_seen} abandoned-set sightings",
        committed.len()
    );
    assert!(
        !committed.is_empty(),
        "the writer never got a set committed; the test proved nothing"
    );
}
