//! Sets that live only on lower tiers: shown under /ckpt as if they had
//! never left, and staged into the cache (verified) on first use.
//!
//! `ls /ckpt/JOB` on a fresh node lists them without fetching anything;
//! looking inside one (opening a file, listing it) brings the whole set
//! back first, so what the application reads is a complete, checked set.
//!
//! What the tiers hold is known from an index refreshed in the background:
//! a filesystem request never waits on the network to answer a lookup or a
//! listing (a DR site that is down would otherwise stall every `mkdir` of a
//! new set). Only staging a set in waits for a tier.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libckpt::path::{JobName, SetName};
use libckpt::stage;
use libckpt::store::Store;
use libckpt::tier::{Tier, TierSet};

/// How long a lookup on a fresh mount waits for the first index.
const FIRST_INDEX_WAIT: Duration = Duration::from_secs(3);

type TierIndex = BTreeMap<JobName, Vec<TierSet>>;

#[derive(Default)]
struct Index {
    /// Per tier, what it held at its last successful listing; `None`
    /// until one succeeded.
    per_tier: Vec<Option<TierIndex>>,
    refreshed: bool,
    /// Bumped to wake the refresher early.
    kicks: u64,
}

pub struct Remote {
    tiers: Vec<Arc<dyn Tier>>,
    index: Mutex<Index>,
    changed: Condvar,
    stop: AtomicBool,
    /// One stage-in at a time: two readers of a set must not fetch it
    /// twice, and a big set should not fight another for the link.
    staging: Mutex<()>,
}

impl Remote {
    pub fn new(tiers: Vec<Arc<dyn Tier>>) -> Arc<Remote> {
        let n = tiers.len();
        Arc::new(Remote {
            tiers,
            index: Mutex::new(Index {
                per_tier: vec![None; n],
                ..Index::default()
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            staging: Mutex::new(()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep the index fresh: now, every `every`, and when kicked.
    pub fn start(self: &Arc<Self>, every: Duration) {
        if self.tiers.is_empty() {
            return;
        }
        let this = self.clone();
        let _ = std::thread::Builder::new()
            .name("ckptfs-tier-index".into())
            .spawn(move || {
                while !this.stop.load(Ordering::Relaxed) {
                    this.refresh();
                    let guard = this.lock();
                    let seen = guard.kicks;
                    let _ = this.changed.wait_timeout_while(guard, every, |i| {
                        i.kicks == seen && !this.stop.load(Ordering::Relaxed)
                    });
                }
            });
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.kick();
    }

    /// Refresh soon (a set was drained, say).
    pub fn kick(&self) {
        self.lock().kicks += 1;
        self.changed.notify_all();
    }

    /// List every tier (on this thread: the network may be slow). A tier
    /// that fails keeps what it last showed.
    fn refresh(&self) {
        let mut fresh: Vec<Option<TierIndex>> = Vec::with_capacity(self.tiers.len());
        for t in &self.tiers {
            let listed = t.jobs().and_then(|jobs| {
                jobs.into_iter()
                    .map(|j| t.sets(&j).map(|sets| (j, sets)))
                    .collect::<Result<TierIndex, _>>()
            });
            match listed {
                Ok(idx) => fresh.push(Some(idx)),
                Err(e) => {
                    tracing::debug!(tier = t.name(), error = %e, "tier listing failed; keeping the last one");
                    fresh.push(None);
                }
            }
        }
        let mut index = self.lock();
        for (slot, new) in index.per_tier.iter_mut().zip(fresh) {
            if new.is_some() {
                *slot = new;
            }
        }
        index.refreshed = true;
        drop(index);
        self.changed.notify_all();
    }

    /// The index, waiting briefly for the first listing on a fresh mount.
    fn index(&self) -> MutexGuard<'_, Index> {
        let guard = self.lock();
        if guard.refreshed {
            return guard;
        }
        let deadline = Instant::now() + FIRST_INDEX_WAIT;
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, FIRST_INDEX_WAIT, |i| {
                !i.refreshed && Instant::now() < deadline
            })
            .unwrap_or_else(|p| p.into_inner());
        guard
    }

    /// Jobs any tier holds a complete set of.
    pub fn jobs(&self) -> Vec<JobName> {
        let index = self.index();
        let mut out: Vec<JobName> = index
            .per_tier
            .iter()
            .flatten()
            .flat_map(|t| t.keys().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Complete sets of `job` on any tier.
    pub fn sets(&self, job: &JobName) -> Vec<TierSet> {
        let index = self.index();
        let mut out: Vec<TierSet> = Vec::new();
        for sets in index.per_tier.iter().flatten().filter_map(|t| t.get(job)) {
            for s in sets {
                if !out.iter().any(|o| o.set == s.set) {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    pub fn find(&self, job: &JobName, set: &SetName) -> Option<TierSet> {
        self.sets(job).into_iter().find(|s| &s.set == set)
    }

    /// Make `job/set` a complete set of the cache, fetching it from the
    /// first tier with an intact copy. Returns the errno to fail with.
    pub fn stage_in(&self, store: &Store, job: &JobName, set: &SetName) -> Result<(), i32> {
        let _one = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        // Someone else may have staged it while we waited.
        if store.info(job, set).ok().flatten().is_some() {
            return Ok(());
        }
        match stage::stage_in(store, &self.tiers, job, set, &|_| {}) {
            Ok(tier) => {
                tracing::info!(job = %job, set = %set, tier = %tier, "staged in on first use");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(job = %job, set = %set, error = %e, "stage-in failed");
                Err(if e.is_not_found() {
                    libc::ENOENT
                } else {
                    libc::EIO
                })
            }
        }
    }
}
