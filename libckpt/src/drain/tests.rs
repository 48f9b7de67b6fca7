//! The drain against a real PFS directory.

use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::path::RelPath;
use crate::store::StoreOptions;
use crate::tier::pfs::PfsTier;

fn setup(keep: usize) -> (tempfile::TempDir, Store) {
    let d = crate::testutil::scratch("ckpt-drain-");
    let store = crate::testutil::store_at(
        &d.path().join("cache"),
        StoreOptions {
            chunk_size: 64 * 1024,
            keep,
            required_tiers: vec!["pfs".into()],
        },
    );
    (d, store)
}

fn commit(store: &Store, set: &str) {
    let job = JobName::new("j").unwrap();
    let mut w = store.create_set(&job, &SetName::new(set).unwrap()).unwrap();
    w.write_bytes(&RelPath::new("a.bin").unwrap(), &vec![7u8; 200_000])
        .unwrap();
    w.commit().unwrap();
}

fn quick() -> DrainOptions {
    DrainOptions {
        jitter: Duration::ZERO,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..DrainOptions::never_evicting()
    }
}

/// Bounded wait for a condition; fails the test with `what` otherwise.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn drains_every_complete_set_and_keeps_undrained_ones() {
    let (d, store) = setup(1);
    let pfs_dir = d.path().join("pfs");
    // The tier is down at first: nothing may leave the cache.
    commit(&store, "s1");
    commit(&store, "s2");
    let job = JobName::new("j").unwrap();
    assert_eq!(
        store.sets(&job).unwrap().len(),
        2,
        "keep=1 must not delete a set that is not on the PFS yet"
    );
    let drain = Drain::new(
        store.clone(),
        vec![(
            Arc::new(PfsTier::new(&pfs_dir)) as Arc<dyn Tier>,
            TierPolicy {
                keep: 5,
                rate: None,
            },
        )],
        quick(),
    );
    let workers = drain.start();
    wait_for("the failure to show", || {
        drain.status()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("pfs"))
    });
    let st = &drain.status()[0];
    assert_eq!(st.pending.len(), 2);
    assert!(st.rpo_exposure_seconds.is_some());
    // The PFS comes back: everything drains by itself.
    fs::create_dir(&pfs_dir).unwrap();
    drain.notify();
    wait_for("both sets on the PFS", || drain.outstanding(None) == (0, 0));
    assert!(pfs_dir.join("j/.manifests/s1.json").is_file());
    assert!(pfs_dir.join("j/.manifests/s2.json").is_file());
    // Now that s1 is safe off the node, cache retention (keep 1) removes it.
    wait_for("cache retention", || store.sets(&job).unwrap().len() == 1);
    let st = &drain.status()[0];
    assert!(st.pending.is_empty());
    assert_eq!(st.rpo_exposure_seconds, None);
    drain.shutdown();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn a_resumed_push_skips_delivered_files() {
    let (d, store) = setup(0);
    let pfs_dir = d.path().join("pfs");
    fs::create_dir(&pfs_dir).unwrap();
    let job = JobName::new("j").unwrap();
    let set = SetName::new("s1").unwrap();
    let mut w = store.create_set(&job, &set).unwrap();
    w.write_bytes(&RelPath::new("a").unwrap(), &[1u8; 100_000])
        .unwrap();
    w.write_bytes(&RelPath::new("b").unwrap(), &[2u8; 100_000])
        .unwrap();
    w.commit().unwrap();
    // A previous push delivered "a" and was killed.
    let tier = PfsTier::new(&pfs_dir);
    let m = store.manifest(&job, &set).unwrap();
    let src = Source {
        engine: store.engine(),
        manifest: &m,
        dir: store.set_dir(&job, &set),
    };
    let mut first = JournalResume {
        meta: store.meta_dir(&job, &set),
        tier: "pfs".into(),
        progress: journal::Progress::default(),
    };
    struct StopAfterA<'a>(&'a mut JournalResume);
    impl crate::tier::Resume for StopAfterA<'_> {
        fn is_done(&self, f: &crate::manifest::FileEntry) -> bool {
            self.0.is_done(f)
        }
        fn mark_done(&mut self, f: &crate::manifest::FileEntry) -> Result<(), TierError> {
            self.0.mark_done(f)?;
            Err(TierError::Unavailable {
                tier: "pfs".into(),
                message: "killed".into(),
            })
        }
    }
    assert!(tier
        .push(&src, &RateLimiter::unlimited(), &mut StopAfterA(&mut first))
        .is_err());
    let drain = Drain::new(
        store.clone(),
        vec![(
            Arc::new(PfsTier::new(&pfs_dir)) as Arc<dyn Tier>,
            TierPolicy {
                keep: 0,
                rate: None,
            },
        )],
        quick(),
    );
    let sent = Arc::new(Mutex::new(None));
    let s2 = sent.clone();
    drain.subscribe(Box::new(move |e| {
        if let Event::Done { report, .. } = e {
            *s2.lock().unwrap() = Some(report.clone());
        }
    }));
    let workers = drain.start();
    // The event comes after the journal says done: wait for the event.
    wait_for("the drain's Done event", || sent.lock().unwrap().is_some());
    assert_eq!(drain.outstanding(None), (0, 0));
    let report = sent.lock().unwrap().clone().unwrap();
    assert_eq!(report.bytes_sent, 100_000, "only b was sent again");
    assert_eq!(report.skipped, 1);
    drain.shutdown();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        fs::read(pfs_dir.join("j/s1/a")).unwrap(),
        vec![1u8; 100_000]
    );
}
