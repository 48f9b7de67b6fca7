//! Sets that live only on lower tiers: shown under /ckpt as if they had
//! never left, and staged into the cache (verified) on first use.
//!
//! `ls /ckpt/JOB` on a fresh node lists them without fetching anything;
//! looking inside one (opening a file, listing it) brings the whole set
//! back first, so what the application reads is a complete, checked set.

use std::sync::{Arc, Mutex};

use libckpt::path::{JobName, SetName};
use libckpt::stage;
use libckpt::store::Store;
use libckpt::tier::{Tier, TierSet};

pub struct Remote {
    tiers: Vec<Arc<dyn Tier>>,
    /// One stage-in at a time: two readers of a set must not fetch it
    /// twice, and a big set should not fight another for the link.
    staging: Mutex<()>,
}

impl Remote {
    pub fn new(tiers: Vec<Arc<dyn Tier>>) -> Remote {
        Remote {
            tiers,
            staging: Mutex::new(()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// Jobs any tier holds a complete set of.
    pub fn jobs(&self) -> Vec<JobName> {
        let mut out: Vec<JobName> = self
            .tiers
            .iter()
            .filter_map(|t| t.jobs().ok())
            .flatten()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Complete sets of `job` on any tier.
    pub fn sets(&self, job: &JobName) -> Vec<TierSet> {
        let mut out: Vec<TierSet> = Vec::new();
        for t in &self.tiers {
            for s in t.sets(job).unwrap_or_default() {
                if !out.iter().any(|o| o.set == s.set) {
                    out.push(s);
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
