//! Bringing checkpoints back: find the newest complete set on any tier,
//! restore it to a directory, or stage it into the cache, verifying every
//! chunk on the way. A corrupt copy on one tier is reported and the next
//! tier is tried.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::manifest::Manifest;
use crate::path::{JobName, SetName};
use crate::store::{Store, StoreError};
use crate::tier::{copy_verified, Tier, TierError};

/// Where restores may come from: "cache" or a tier's name.
pub const CACHE: &str = "cache";

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("no complete set of job {job} on {searched}")]
    NoSet { job: JobName, searched: String },
    #[error("set {job}/{set} could not be restored: {}", .attempts.join("; "))]
    AllFailed {
        job: JobName,
        set: SetName,
        attempts: Vec<String>,
    },
    #[error("unknown source {0:?}: expected cache or a configured tier")]
    UnknownSource(String),
    #[error("{path}: {message}")]
    Destination { path: PathBuf, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StageError::NoSet { .. })
    }
}

/// One complete set and the places that hold it.
#[derive(Debug, Clone, Serialize)]
pub struct Located {
    pub job: JobName,
    pub set: SetName,
    #[serde(with = "humantime_serde")]
    pub created: SystemTime,
    pub bytes: u64,
    /// "cache" first, then tiers in their configured order.
    pub sources: Vec<String>,
}

/// Every complete set of `job` on the cache and the tiers, oldest first.
/// A tier that cannot be reached is skipped (and logged): restart must not
/// fail because one tier is down.
pub fn locate(store: &Store, tiers: &[Arc<dyn Tier>], job: &JobName) -> Vec<Located> {
    let mut out: Vec<Located> = Vec::new();
    let mut add = |set: &SetName, created: SystemTime, bytes: u64, source: &str| match out
        .iter_mut()
        .find(|l| &l.set == set)
    {
        Some(l) => l.sources.push(source.to_owned()),
        None => out.push(Located {
            job: job.clone(),
            set: set.clone(),
            created,
            bytes,
            sources: vec![source.to_owned()],
        }),
    };
    for s in store.sets(job).unwrap_or_default() {
        if s.is_complete() {
            add(&s.set, s.created, s.bytes, CACHE);
        }
    }
    for t in tiers {
        match t.sets(job) {
            Ok(sets) => {
                for s in sets {
                    add(&s.set, s.created, s.bytes, t.name());
                }
            }
            Err(e) => {
                tracing::warn!(tier = t.name(), error = %e, "tier skipped while looking for sets")
            }
        }
    }
    out.sort_by(|a, b| (a.created, &a.set).cmp(&(b.created, &b.set)));
    out
}

/// The newest complete set of `job` anywhere.
pub fn latest(store: &Store, tiers: &[Arc<dyn Tier>], job: &JobName) -> Option<Located> {
    locate(store, tiers, job).pop()
}

fn sources<'a>(
    tiers: &'a [Arc<dyn Tier>],
    from: Option<&str>,
) -> Result<Vec<Option<&'a Arc<dyn Tier>>>, StageError> {
    let Some(list) = from else {
        return Ok(std::iter::once(None)
            .chain(tiers.iter().map(Some))
            .collect());
    };
    // "s3,pfs": these sources, in this order.
    list.split(',')
        .map(str::trim)
        .map(|name| match name {
            CACHE => Ok(None),
            _ => tiers
                .iter()
                .find(|t| t.name() == name)
                .map(Some)
                .ok_or_else(|| StageError::UnknownSource(name.to_owned())),
        })
        .collect()
}

/// What to restore, and where to.
#[derive(Debug, Clone, Copy)]
pub struct RestoreRequest<'a> {
    pub job: &'a JobName,
    /// The newest complete set when `None`.
    pub set: Option<&'a SetName>,
    pub to: &'a Path,
    /// "cache", a tier's name, or several separated by commas, tried in
    /// that order; `None` for the cache then each tier.
    pub from: Option<&'a str>,
}

/// Restore `set` (the newest complete one when `None`) of `job` into `to`
/// (created; must be empty if it exists), from `from` or, by default, the
/// cache and then each tier in order. Returns the manifest and the source
/// used; every failed source is passed to `report`.
pub fn restore(
    store: &Store,
    tiers: &[Arc<dyn Tier>],
    req: &RestoreRequest<'_>,
    progress: &dyn Fn(u64),
    report: &mut dyn FnMut(&str),
) -> Result<(Manifest, String), StageError> {
    let RestoreRequest { job, set, to, from } = *req;
    let candidates = sources(tiers, from)?;
    let set = match set {
        Some(s) => s.clone(),
        None => {
            let found = match from {
                Some(_) => {
                    let mut newest: Vec<(std::time::SystemTime, SetName)> = Vec::new();
                    for c in &candidates {
                        match c {
                            None => newest.extend(store.latest(job)?.map(|s| (s.created, s.set))),
                            Some(t) => newest.extend(
                                t.sets(job)
                                    .into_iter()
                                    .flatten()
                                    .map(|s| (s.created, s.set)),
                            ),
                        }
                    }
                    newest.into_iter().max().map(|(_, s)| s)
                }
                None => latest(store, tiers, job).map(|l| l.set),
            };
            found.ok_or_else(|| StageError::NoSet {
                job: job.clone(),
                searched: from.unwrap_or("the cache or any tier").to_owned(),
            })?
        }
    };
    prepare_destination(to)?;
    let mut attempts = Vec::new();
    for source in candidates {
        let result = match source {
            None => restore_from_cache(store, job, &set, to, progress),
            Some(t) => t.fetch(job, &set, to, store.engine(), progress),
        };
        let name = source.map_or(CACHE, |t| t.name());
        match result {
            Ok(m) => return Ok((m, name.to_owned())),
            Err(TierError::NotFound { .. }) => {}
            Err(e) => {
                let msg = e.to_string();
                tracing::debug!(source = name, error = %msg, "restore source failed; trying the next");
                report(&msg);
                attempts.push(msg);
                clear_dir(to)?;
            }
        }
    }
    if attempts.is_empty() {
        return Err(StageError::NoSet {
            job: job.clone(),
            searched: format!("{} (set {set})", from.unwrap_or("the cache or any tier")),
        });
    }
    Err(StageError::AllFailed {
        job: job.clone(),
        set,
        attempts,
    })
}

fn restore_from_cache(
    store: &Store,
    job: &JobName,
    set: &SetName,
    to: &Path,
    progress: &dyn Fn(u64),
) -> Result<Manifest, TierError> {
    let info = store
        .info(job, set)
        .map_err(|e| TierError::local(store.root(), e))?;
    if !info.as_ref().is_some_and(|i| i.is_complete()) {
        return Err(TierError::NotFound {
            tier: CACHE.into(),
            job: job.clone(),
            set: set.clone(),
        });
    }
    let m = store
        .manifest(job, set)
        .map_err(|e| TierError::local(store.root(), e))?;
    copy_verified(
        CACHE,
        &store.set_dir(job, set),
        &m,
        to,
        store.engine(),
        progress,
    )?;
    Ok(m)
}

fn prepare_destination(to: &Path) -> Result<(), StageError> {
    let fail = |message: String| StageError::Destination {
        path: to.to_owned(),
        message,
    };
    match std::fs::read_dir(to) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(fail("the directory is not empty".into()));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(to).map_err(|e| fail(e.to_string()))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Undo a failed attempt's partial files before the next source.
fn clear_dir(to: &Path) -> Result<(), StageError> {
    let rd = std::fs::read_dir(to).map_err(|e| StageError::Destination {
        path: to.to_owned(),
        message: e.to_string(),
    })?;
    for entry in rd.flatten() {
        let p = entry.path();
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    Ok(())
}

/// Bring `set` of `job` into the cache from the first tier that has an
/// intact copy. Returns the tier used.
pub fn stage_in(
    store: &Store,
    tiers: &[Arc<dyn Tier>],
    job: &JobName,
    set: &SetName,
    progress: &dyn Fn(u64),
) -> Result<String, StageError> {
    let staging = store
        .staging_dir()?
        .join(format!("{job}.{set}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let mut attempts = Vec::new();
    for t in tiers {
        std::fs::create_dir_all(&staging).map_err(|e| StageError::Destination {
            path: staging.clone(),
            message: e.to_string(),
        })?;
        match t.fetch(job, set, &staging, store.engine(), progress) {
            Ok(m) => {
                store.import(&m, &staging, t.name())?;
                tracing::info!(job = %job, set = %set, tier = t.name(), "staged in");
                return Ok(t.name().to_owned());
            }
            Err(TierError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(tier = t.name(), error = %e, "stage-in source failed; trying the next");
                attempts.push(e.to_string());
            }
        }
        let _ = std::fs::remove_dir_all(&staging);
    }
    let _ = std::fs::remove_dir_all(&staging);
    if attempts.is_empty() {
        Err(StageError::NoSet {
            job: job.clone(),
            searched: format!("any tier (set {set})"),
        })
    } else {
        Err(StageError::AllFailed {
            job: job.clone(),
            set: set.clone(),
            attempts,
        })
    }
}

/// Longest parent chain followed: a damaged manifest naming a cycle ends
/// here rather than looping.
pub const MAX_CHAIN: usize = 10_000;

/// Make `set` and every set it depends on (its manifest's `parent`, and
/// that one's, …) complete sets of the cache, staging in from the tiers
/// the ones the cache lacks (see [`stage_in`]). Returns the sets staged in,
/// with the tier each came from, newest first.
pub fn stage_in_chain(
    store: &Store,
    tiers: &[Arc<dyn Tier>],
    job: &JobName,
    set: &SetName,
    progress: &dyn Fn(u64),
) -> Result<Vec<(SetName, String)>, StageError> {
    let mut staged = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut cur = Some(set.clone());
    while let Some(s) = cur {
        if !seen.insert(s.clone()) || seen.len() > MAX_CHAIN {
            return Err(StageError::AllFailed {
                job: job.clone(),
                set: set.clone(),
                attempts: vec![format!("its chain of parents loops at set {s}")],
            });
        }
        if !store.info(job, &s)?.is_some_and(|i| i.is_complete()) {
            let tier = stage_in(store, tiers, job, &s, progress)?;
            staged.push((s.clone(), tier));
        }
        cur = store.manifest(job, &s)?.parent;
    }
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::RelPath;
    use crate::rate::RateLimiter;
    use crate::store::StoreOptions;
    use crate::tier::pfs::PfsTier;
    use crate::tier::{NoResume, Source};

    fn store_at(dir: &Path) -> Store {
        crate::testutil::store_at(
            dir,
            StoreOptions {
                chunk_size: 64 * 1024,
                keep: 0,
                required_tiers: vec![],
            },
        )
    }

    #[test]
    fn restore_on_an_empty_node_falls_back_past_a_corrupt_tier() {
        let d = crate::testutil::scratch("ckpt-stage-");
        let node1 = store_at(&d.path().join("node1"));
        let job = JobName::new("j").unwrap();
        let set = SetName::new("s1").unwrap();
        let mut w = node1.create_set(&job, &set).unwrap();
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
        w.write_bytes(&RelPath::new("r/0.bin").unwrap(), &data)
            .unwrap();
        let m = w.commit().unwrap();
        // Two PFS-like tiers hold it; the first copy gets a flipped byte.
        let mut tiers: Vec<Arc<dyn Tier>> = Vec::new();
        for name in ["t1", "t2"] {
            let root = d.path().join(name);
            std::fs::create_dir(&root).unwrap();
            let t = PfsTier::new(&root);
            let src = Source {
                engine: node1.engine(),
                manifest: &m,
                dir: node1.set_dir(&job, &set),
            };
            t.push(&src, &RateLimiter::unlimited(), &mut NoResume)
                .unwrap();
            tiers.push(Arc::new(t));
        }
        let f = d.path().join("t1/j/s1/r/0.bin");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[300_000] ^= 0x10;
        std::fs::write(&f, bytes).unwrap();

        // A fresh node: empty cache.
        let node2 = store_at(&d.path().join("node2"));
        let found = latest(&node2, &tiers, &job).unwrap();
        assert_eq!(found.set, set);
        assert_eq!(found.sources, vec!["pfs", "pfs"]);
        let to = d.path().join("restored");
        let mut reports = Vec::new();
        let req = RestoreRequest {
            job: &job,
            set: None,
            to: &to,
            from: None,
        };
        let (got, source) = restore(&node2, &tiers, &req, &|_| {}, &mut |r: &str| {
            reports.push(r.to_owned())
        })
        .unwrap();
        assert_eq!(got, m);
        assert_eq!(source, "pfs");
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(
            reports[0].contains("corrupt") && reports[0].contains("chunk 4"),
            "{reports:?}"
        );
        assert_eq!(std::fs::read(to.join("r/0.bin")).unwrap(), data);

        // Stage-in makes it a complete set of the new node's cache.
        let tier2: Vec<Arc<dyn Tier>> = vec![tiers[1].clone()];
        stage_in(&node2, &tier2, &job, &set, &|_| {}).unwrap();
        assert_eq!(node2.latest(&job).unwrap().unwrap().set, set);
        assert!(node2.verify(&job, &set).unwrap().ok());
        assert_eq!(node2.manifest(&job, &set).unwrap(), m);
    }

    #[test]
    fn a_chain_of_parents_is_staged_in_from_a_tier() {
        let d = crate::testutil::scratch("ckpt-chain-");
        let node1 = store_at(&d.path().join("node1"));
        let job = JobName::new("j").unwrap();
        let pfs_root = d.path().join("pfs");
        std::fs::create_dir(&pfs_root).unwrap();
        let pfs = PfsTier::new(&pfs_root);
        let names = ["d", "d+1", "d+2"];
        for (i, name) in names.iter().enumerate() {
            let set = SetName::new(*name).unwrap();
            let mut w = node1.create_set(&job, &set).unwrap();
            w.write_bytes(&RelPath::new("x").unwrap(), name.as_bytes())
                .unwrap();
            let mut m = w.commit().unwrap();
            if i > 0 {
                // As ckptfs-dump records an incremental dump's parent.
                m.parent = Some(SetName::new(names[i - 1]).unwrap());
                crate::durable::write_atomic(
                    &node1.manifest_path(&job, &set),
                    &m.to_bytes(),
                    0o644,
                )
                .unwrap();
            }
            let src = Source {
                engine: node1.engine(),
                manifest: &m,
                dir: node1.set_dir(&job, &set),
            };
            pfs.push(&src, &RateLimiter::unlimited(), &mut NoResume)
                .unwrap();
        }
        let tiers: Vec<Arc<dyn Tier>> = vec![Arc::new(pfs)];
        let node2 = store_at(&d.path().join("node2"));
        let last = SetName::new("d+2").unwrap();
        let staged = stage_in_chain(&node2, &tiers, &job, &last, &|_| {}).unwrap();
        let got: Vec<&str> = staged.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(got, ["d+2", "d+1", "d"]);
        for name in names {
            let s = SetName::new(name).unwrap();
            assert!(node2.verify(&job, &s).unwrap().ok());
        }
        assert_eq!(
            node2
                .manifest(&job, &last)
                .unwrap()
                .parent
                .unwrap()
                .as_str(),
            "d+1"
        );
        // All there now: nothing more to stage.
        assert!(stage_in_chain(&node2, &tiers, &job, &last, &|_| {})
            .unwrap()
            .is_empty());
    }
}
