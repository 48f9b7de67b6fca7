//! Sets written by several ranks, without MPI: every rank writes its own
//! files into the set and ends its part; the set is complete once every
//! rank has ended its part successfully, and never before.
//!
//! All ranks of a job share the node's cache. What they share on disk, per
//! set, next to the store's own metadata:
//!
//! ```text
//! <root>/.ckptfs/locks/<job>.lock         flock'ed around every join, part end
//!                                         and abandon of any set of the job
//! <root>/.ckptfs/sets/<job>/<set>/
//!     ranks.json                          how many ranks write the set
//!     writer.<rank>                       rank's writer record, flock'ed from
//!                                         its join until the set completes or
//!                                         the process ends
//!     parts/<rank>.json                   rank's part, ended: its files with
//!                                         their crc32c (written durably)
//!     abandoned                           a rank gave up: never committed
//!     manifest.json                       written by the rank that ends the
//!                                         last part (merging every part)
//! ```
//!
//! A set with no live writer and no manifest is abandoned (the store says
//! so, see [`crate::store::Store::info`]): a rank died, or gave up. A rank
//! that joins an abandoned (or complete) set of the same name deletes it
//! and starts it again; one that joins a set other ranks are writing joins
//! them. Ranks must therefore hold on to the [`Held`] of a part they ended
//! until the set completes, or the set looks abandoned to a late rank.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::chunk::FileDigest;
use crate::durable::{self, IoContext, PathError};
use crate::manifest::{FileEntry, Manifest, MAX_MANIFEST_BYTES};
use crate::path::{JobName, RelPath, SetName};
use crate::set::SetState;
use crate::store::{self, Store, StoreError, META_DIR};

const LOCKS_DIR: &str = "locks";
const RANKS_FILE: &str = "ranks.json";
const PARTS_DIR: &str = "parts";
const ABANDONED_FILE: &str = "abandoned";
const PART_FORMAT: &str = "ckptfs-part";
const PART_VERSION: u32 = 1;

/// Launcher variables, in the order they are believed: the MPI launchers'
/// own first (under `mpirun` inside a Slurm allocation, `SLURM_PROCID` is
/// the batch step's, not the rank), Slurm's last.
pub const ENV_PAIRS: &[(&str, &[&str])] = &[
    ("OMPI_COMM_WORLD_RANK", &["OMPI_COMM_WORLD_SIZE"]),
    ("PMI_RANK", &["PMI_SIZE"]),
    (
        "PMIX_RANK",
        &["PMIX_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"],
    ),
    ("SLURM_PROCID", &["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"]),
];

/// Why a rank could not take part.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("rank {rank} of {size}: {reason}")]
    Range {
        rank: i64,
        size: i64,
        reason: &'static str,
    },
    #[error("set {job}/{set} is written by {theirs} rank(s), but this process is one of {ours}")]
    SizeMismatch {
        job: JobName,
        set: SetName,
        theirs: u32,
        ours: u32,
    },
    #[error("rank {rank} of set {job}/{set} is already being written by pid {pid} on {host}")]
    DuplicateRank {
        job: JobName,
        set: SetName,
        rank: u32,
        pid: u32,
        host: String,
    },
    #[error("set {job}/{set} was abandoned by rank {rank}; it will never be complete")]
    Abandoned {
        job: JobName,
        set: SetName,
        rank: String,
    },
    #[error("set {job}/{set}: {path} is written by both rank {a} and rank {b}")]
    Conflict {
        job: JobName,
        set: SetName,
        path: RelPath,
        a: u32,
        b: u32,
    },
    #[error("set {job}/{set} is {state}; it cannot be written")]
    State {
        job: JobName,
        set: SetName,
        state: String,
    },
    #[error("{path}: {message}")]
    BadRecord { path: PathBuf, message: String },
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = RankError> = std::result::Result<T, E>;

/// This process's rank and the number of ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranks {
    pub rank: u32,
    pub size: u32,
}

impl Ranks {
    /// A job of one.
    pub const SINGLE: Ranks = Ranks { rank: 0, size: 1 };

    /// `rank` in `[0, size)`, `size >= 1`.
    pub fn new(rank: i64, size: i64) -> Result<Ranks> {
        let fail = |reason| RankError::Range { rank, size, reason };
        if size < 1 {
            return Err(fail("the number of ranks must be at least 1"));
        }
        if rank < 0 || rank >= size {
            return Err(fail("the rank must be in [0, size)"));
        }
        let size = u32::try_from(size).map_err(|_| fail("too many ranks"))?;
        Ok(Ranks {
            rank: rank as u32,
            size,
        })
    }

    /// From the launcher's environment (see [`ENV_PAIRS`]); `None` when no
    /// launcher variable is set.
    pub fn from_env() -> Result<Option<Ranks>> {
        Ranks::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Ranks::from_env`] over any lookup (for tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Ranks>> {
        for (rank_var, size_vars) in ENV_PAIRS {
            let Some(rank_s) = get(rank_var) else {
                continue;
            };
            let rank = parse_var(rank_var, &rank_s)?;
            let Some((size_var, size_s)) = size_vars.iter().find_map(|v| get(v).map(|s| (*v, s)))
            else {
                return Err(RankError::Env {
                    var: rank_var,
                    value: rank_s,
                    reason: format!(
                        "the number of ranks is not set (expected {})",
                        size_vars.join(" or ")
                    ),
                });
            };
            let size = parse_var(size_var, &size_s)?;
            if size == 0 {
                return Err(RankError::Env {
                    var: size_var,
                    value: size_s,
                    reason: "the number of ranks must be at least 1".into(),
                });
            }
            if rank >= size {
                return Err(RankError::Env {
                    var: rank_var,
                    value: rank_s,
                    reason: format!("the rank is not below {size_var}={size}"),
                });
            }
            return Ok(Some(Ranks { rank, size }));
        }
        Ok(None)
    }
}

fn parse_var(var: &'static str, value: &str) -> Result<u32> {
    value.trim().parse::<u32>().map_err(|e| RankError::Env {
        var,
        value: value.to_owned(),
        reason: format!("not a non-negative integer ({e})"),
    })
}

/// The set-wide record: how many ranks write it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RanksRecord {
    size: u32,
    #[serde(with = "humantime_serde")]
    created: SystemTime,
}

/// One rank's ended part.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartRecord {
    format: String,
    version: u32,
    rank: u32,
    size: u32,
    files: Vec<FileEntry>,
}

/// The job-wide lock around joins, part ends and abandons.
struct JobLock {
    _file: File,
}

impl JobLock {
    fn take(store: &Store, job: &JobName) -> Result<JobLock> {
        let dir = store.root().join(META_DIR).join(LOCKS_DIR);
        durable::create_dir_all_durable(&dir, store::PUBLIC_DIR_MODE)?;
        let path = dir.join(format!("{job}.lock"));
        let open = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .create(write)
                .truncate(false)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
        };
        let f = match open(true) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => open(false),
            r => r,
        }
        .at("opening", &path)?;
        f.lock().at("locking", &path)?;
        Ok(JobLock { _file: f })
    }
}

/// Run `f` holding the job-wide lock, e.g. a stage-in that several ranks
/// of the job may ask for at once: the first does it, the others then find
/// the set in the cache.
pub fn locked<T>(store: &Store, job: &JobName, f: impl FnOnce() -> T) -> Result<T> {
    let _g = JobLock::take(store, job)?;
    Ok(f())
}

/// Create `dir` and its parents (mode 0700), without syncing: whatever
/// ends up in a commit is synced by it.
fn make_dirs(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(store::SET_DIR_MODE)
        .create(dir)
        .at("creating directory", dir)?;
    Ok(())
}

/// Replace `path` with `bytes` atomically for readers (temp + rename), but
/// not durably: for records a crash makes moot.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = durable::temp_path(path);
    let result = fs::write(&tmp, bytes)
        .at("writing", &tmp)
        .and_then(|()| fs::rename(&tmp, path).at("renaming into place", path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    Ok(result?)
}

/// Whether a live writer holds the record at `path` (see
/// `store::read_writer` for why the probe takes a shared lock).
fn held_by_writer(path: &Path) -> bool {
    File::open(path).is_ok_and(|f| match f.try_lock_shared() {
        Ok(()) => {
            let _ = f.unlock();
            false
        }
        Err(fs::TryLockError::WouldBlock) => true,
        Err(fs::TryLockError::Error(_)) => false,
    })
}

fn writer_name(rank: u32) -> String {
    format!("writer.{rank}")
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let f = File::open(path).at("opening", path)?;
    let mut bytes = Vec::new();
    f.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .at("reading", path)?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(RankError::BadRecord {
            path: path.to_owned(),
            message: format!("over the {MAX_MANIFEST_BYTES}-byte limit"),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| RankError::BadRecord {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// This rank's part of a set, being written. Dropping it without
/// [`Part::finish`] abandons the set (it will never be complete).
pub struct Part {
    store: Store,
    job: JobName,
    set: SetName,
    ranks: Ranks,
    dir: PathBuf,
    meta: PathBuf,
    lock: Option<File>,
    files: BTreeMap<RelPath, FileEntry>,
}

/// A part ended: what the set became, and the writer lock, to be kept
/// until the set completes (see the module documentation).
pub struct Held {
    store: Store,
    job: JobName,
    set: SetName,
    _lock: File,
}

impl Held {
    pub fn job(&self) -> &JobName {
        &self.job
    }

    pub fn set(&self) -> &SetName {
        &self.set
    }

    /// True once every rank has ended its part and the manifest is in.
    pub fn is_complete(&self) -> bool {
        self.store.manifest_path(&self.job, &self.set).exists()
    }

    /// True once there is nothing left to hold the set for: it is complete,
    /// or gone (completed, then removed by retention, or deleted), or
    /// another rank abandoned it.
    pub fn is_settled(&self) -> bool {
        let meta = self.store.meta_dir(&self.job, &self.set);
        self.is_complete() || !meta.is_dir() || meta.join(ABANDONED_FILE).exists()
    }
}

/// What [`Part::finish`] did.
pub struct Finished {
    /// The manifest, when this rank ended the last part.
    pub manifest: Option<Manifest>,
    pub held: Held,
}

impl Part {
    /// Join set `set` of `job` as `ranks.rank` of `ranks.size`: start it when
    /// it does not exist (or was abandoned, or is complete from an earlier
    /// run: it is replaced), else join the ranks writing it.
    pub fn join(store: &Store, job: &JobName, set: &SetName, ranks: Ranks) -> Result<Part> {
        let _g = JobLock::take(store, job)?;
        let meta = store.meta_dir(job, set);
        let dir = store.set_dir(job, set);
        let state = store.info(job, set)?.map(|i| i.state);
        let joining = match state {
            None => false,
            Some(SetState::Writing) => true,
            Some(SetState::Complete | SetState::Abandoned | SetState::Uncommitted) => {
                tracing::info!(job = %job, set = %set, "replacing an earlier set of the same name");
                store.delete_set(job, set)?;
                false
            }
            Some(s @ SetState::Damaged(_)) => {
                return Err(RankError::State {
                    job: job.clone(),
                    set: set.clone(),
                    state: format!("damaged ({s:?})"),
                })
            }
        };
        let created = SystemTime::now();
        if joining {
            let ranks_path = meta.join(RANKS_FILE);
            if !ranks_path.exists() {
                return Err(RankError::State {
                    job: job.clone(),
                    set: set.clone(),
                    state: "being written by another writer (not a libckpt rank)".into(),
                });
            }
            let rec: RanksRecord = read_json(&ranks_path)?;
            if rec.size != ranks.size {
                return Err(RankError::SizeMismatch {
                    job: job.clone(),
                    set: set.clone(),
                    theirs: rec.size,
                    ours: ranks.size,
                });
            }
            if let Ok(who) = fs::read_to_string(meta.join(ABANDONED_FILE)) {
                return Err(RankError::Abandoned {
                    job: job.clone(),
                    set: set.clone(),
                    rank: who.trim().to_owned(),
                });
            }
            let wpath = meta.join(writer_name(ranks.rank));
            if held_by_writer(&wpath) {
                let (pid, host) = store.live_writer_at(&wpath).unwrap_or_default();
                return Err(RankError::DuplicateRank {
                    job: job.clone(),
                    set: set.clone(),
                    rank: ranks.rank,
                    pid,
                    host,
                });
            }
            // This rank's part of an earlier attempt in this run: redone.
            let part = meta.join(PARTS_DIR).join(format!("{}.json", ranks.rank));
            match fs::remove_file(&part) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(PathError::new("removing", &part, e).into())
                }
                _ => {}
            }
            let lock = store.take_writer_named(&meta, &writer_name(ranks.rank), created)?;
            return Ok(Part::new(store, job, set, ranks, dir, meta, lock));
        }
        // The metadata comes into being with this rank's writer record in
        // it: nothing (retention in another thread or process) ever takes
        // the set for abandoned.
        let lock = store.create_meta(job, set, &writer_name(ranks.rank), created)?;
        let rec = RanksRecord {
            size: ranks.size,
            created,
        };
        replace(
            &meta.join(RANKS_FILE),
            &serde_json::to_vec(&rec).unwrap_or_default(),
        )?;
        durable::create_dir_all_durable(&store.root().join(job), store::PUBLIC_DIR_MODE)?;
        // Not synced here: the commit syncs every directory of the set.
        make_dirs(&dir)?;
        Ok(Part::new(store, job, set, ranks, dir, meta, lock))
    }

    fn new(
        store: &Store,
        job: &JobName,
        set: &SetName,
        ranks: Ranks,
        dir: PathBuf,
        meta: PathBuf,
        lock: File,
    ) -> Part {
        Part {
            store: store.clone(),
            job: job.clone(),
            set: set.clone(),
            ranks,
            dir,
            meta,
            lock: Some(lock),
            files: BTreeMap::new(),
        }
    }

    pub fn job(&self) -> &JobName {
        &self.job
    }

    pub fn set(&self) -> &SetName {
        &self.set
    }

    pub fn ranks(&self) -> Ranks {
        self.ranks
    }

    /// The set's directory, shared by every rank.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn prepare_parent(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            make_dirs(parent)?;
        }
        Ok(())
    }

    /// Create the parent directories of `rel`, for a file the application
    /// writes itself (then [`Part::seal`] it).
    pub fn prepare(&self, rel: &RelPath) -> Result<PathBuf> {
        let path = rel.under(&self.dir);
        self.prepare_parent(&path)?;
        Ok(path)
    }

    /// Write `rel` from `src` through the I/O engine (mode 0600, synced,
    /// checksummed on the way) as one of this rank's files.
    pub fn write_file(&mut self, rel: &RelPath, src: &mut dyn Read) -> Result<FileDigest> {
        let path = self.prepare(rel)?;
        let digest = self
            .store
            .engine()
            .write_file(
                &path,
                store::FILE_MODE,
                src,
                self.store.options().chunk_size,
            )
            .map_err(StoreError::from)?;
        self.record(rel, &path, &digest)?;
        Ok(digest)
    }

    /// Seal a file of this rank written by other means: synced and
    /// checksummed through the I/O engine.
    pub fn seal(&mut self, rel: &RelPath) -> Result<FileDigest> {
        let path = rel.under(&self.dir);
        let (digest, _) =
            store::seal_file(self.store.engine(), &path, self.store.options().chunk_size)?;
        self.record(rel, &path, &digest)?;
        Ok(digest)
    }

    fn record(&mut self, rel: &RelPath, path: &Path, d: &FileDigest) -> Result<()> {
        let md = fs::metadata(path).at("reading", path)?;
        if md.len() != d.size {
            return Err(PathError::new(
                "sealing",
                path,
                io::Error::other("the file changed size while being sealed"),
            )
            .into());
        }
        self.files.insert(
            rel.clone(),
            FileEntry {
                path: rel.clone(),
                size: d.size,
                mode: md.mode() & 0o7777,
                mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                chunk_size: d.chunk_size,
                crc32c: d.crc32c.clone(),
            },
        );
        Ok(())
    }

    /// End this rank's part: its record goes in durably and, when it is the
    /// last part, the set is committed (every part merged, manifest last).
    pub fn finish(mut self) -> Result<Finished> {
        let lock = self.lock.take();
        let result = self.finish_inner();
        let Some(lock) = lock else {
            return Err(RankError::State {
                job: self.job.clone(),
                set: self.set.clone(),
                state: "already ended".into(),
            });
        };
        match result {
            Ok(manifest) => Ok(Finished {
                manifest,
                held: Held {
                    store: self.store.clone(),
                    job: self.job.clone(),
                    set: self.set.clone(),
                    _lock: lock,
                },
            }),
            Err(e) => {
                self.lock = Some(lock);
                Err(e)
            }
        }
    }

    fn finish_inner(&self) -> Result<Option<Manifest>> {
        let _g = JobLock::take(&self.store, &self.job)?;
        if let Ok(who) = fs::read_to_string(self.meta.join(ABANDONED_FILE)) {
            return Err(RankError::Abandoned {
                job: self.job.clone(),
                set: self.set.clone(),
                rank: who.trim().to_owned(),
            });
        }
        if !self.meta.join(RANKS_FILE).exists() {
            return Err(RankError::State {
                job: self.job.clone(),
                set: self.set.clone(),
                state: "gone (deleted while being written)".into(),
            });
        }
        let parts = self.meta.join(PARTS_DIR);
        make_dirs(&parts)?;
        let rec = PartRecord {
            format: PART_FORMAT.into(),
            version: PART_VERSION,
            rank: self.ranks.rank,
            size: self.ranks.size,
            files: self.files.values().cloned().collect(),
        };
        let path = parts.join(format!("{}.json", self.ranks.rank));
        // Read by the rank that merges; what must survive a crash is the
        // data (synced as written) and the manifest (synced at the merge).
        replace(&path, &serde_json::to_vec(&rec).unwrap_or_default())?;
        let all = (0..self.ranks.size).all(|r| parts.join(format!("{r}.json")).exists());
        if !all {
            return Ok(None);
        }
        self.merge().map(Some)
    }

    /// Every part is in: one manifest of all their files.
    fn merge(&self) -> Result<Manifest> {
        let parts = self.meta.join(PARTS_DIR);
        let ranks: RanksRecord = read_json(&self.meta.join(RANKS_FILE))?;
        let mut files: BTreeMap<RelPath, (u32, FileEntry)> = BTreeMap::new();
        for r in 0..self.ranks.size {
            let path = parts.join(format!("{r}.json"));
            let p: PartRecord = read_json(&path)?;
            if p.format != PART_FORMAT || p.version != PART_VERSION {
                return Err(RankError::BadRecord {
                    path,
                    message: format!("unknown part format {} {}", p.format, p.version),
                });
            }
            if p.rank != r || p.size != self.ranks.size {
                return Err(RankError::BadRecord {
                    path,
                    message: format!("it is rank {} of {}", p.rank, p.size),
                });
            }
            for f in p.files {
                let on_disk = fs::metadata(f.path.under(&self.dir)).ok();
                if on_disk.map(|m| m.len()) != Some(f.size) {
                    return Err(RankError::BadRecord {
                        path,
                        message: format!("rank {r}'s file {} is missing or changed size", f.path),
                    });
                }
                if let Some((a, _)) = files.get(&f.path) {
                    return Err(RankError::Conflict {
                        job: self.job.clone(),
                        set: self.set.clone(),
                        path: f.path.clone(),
                        a: *a,
                        b: r,
                    });
                }
                files.insert(f.path.clone(), (r, f));
            }
        }
        let dirs = store::dirs_of(&self.dir)?;
        let m = self.store.put_manifest(
            &self.job,
            &self.set,
            ranks.created,
            files.into_values().map(|(_, f)| f).collect(),
            &dirs,
        )?;
        // Completeness is the manifest's; the rank records are now noise.
        let _ = fs::remove_dir_all(&parts);
        let _ = fs::remove_file(self.meta.join(RANKS_FILE));
        for r in 0..self.ranks.size {
            let _ = fs::remove_file(self.meta.join(writer_name(r)));
        }
        tracing::info!(job = %self.job, set = %self.set, ranks = self.ranks.size,
            files = m.files.len(), bytes = m.total_bytes, "set complete");
        Ok(m)
    }

    /// Give up: the set is never committed. When no other rank is still
    /// writing it, it is deleted at once.
    pub fn abandon(mut self) -> Result<()> {
        self.abandon_inner()
    }

    fn abandon_inner(&mut self) -> Result<()> {
        let Some(lock) = self.lock.take() else {
            return Ok(());
        };
        let _g = JobLock::take(&self.store, &self.job)?;
        let marker = self.meta.join(ABANDONED_FILE);
        if self.meta.is_dir() && !self.store.manifest_path(&self.job, &self.set).exists() {
            durable::write_atomic(&marker, self.ranks.rank.to_string().as_bytes(), 0o644)?;
        }
        drop(lock);
        if self.store.live_writer(&self.meta).is_none() {
            match self.store.delete_set(&self.job, &self.set) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if self.lock.is_some() {
            if let Err(e) = self.abandon_inner() {
                tracing::warn!(job = %self.job, set = %self.set, error = %e, "abandoning a part failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

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

    fn names() -> (JobName, SetName) {
        (
            JobName::new("heat").unwrap(),
            SetName::new("ck.v0000000001").unwrap(),
        )
    }

    fn state(s: &Store, job: &JobName, set: &SetName) -> Option<SetState> {
        s.info(job, set).unwrap().map(|i| i.state)
    }

    #[test]
    fn env_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Ranks::from_vars(vars(&[])).unwrap(), None);
        assert_eq!(
            Ranks::from_vars(vars(&[("SLURM_PROCID", "3"), ("SLURM_NTASKS", "4")])).unwrap(),
            Some(Ranks { rank: 3, size: 4 })
        );
        // Open MPI's variables win over a batch step's Slurm ones.
        assert_eq!(
            Ranks::from_vars(vars(&[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "1"),
                ("OMPI_COMM_WORLD_RANK", "2"),
                ("OMPI_COMM_WORLD_SIZE", "8"),
            ]))
            .unwrap(),
            Some(Ranks { rank: 2, size: 8 })
        );
        assert_eq!(
            Ranks::from_vars(vars(&[("PMIX_RANK", "1"), ("PMI_SIZE", "2")])).unwrap(),
            Some(Ranks { rank: 1, size: 2 })
        );
        for (bad, var) in [
            (&[("PMI_RANK", "x"), ("PMI_SIZE", "2")][..], "PMI_RANK"),
            (&[("PMI_RANK", "2"), ("PMI_SIZE", "2")][..], "PMI_RANK"),
            (&[("PMI_RANK", "0"), ("PMI_SIZE", "0")][..], "PMI_SIZE"),
            (&[("PMI_RANK", "-1"), ("PMI_SIZE", "2")][..], "PMI_RANK"),
            (&[("PMIX_RANK", "0")][..], "PMIX_RANK"),
        ] {
            let owned: Vec<(String, String)> = bad
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let e =
                Ranks::from_vars(|k| owned.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
                    .unwrap_err();
            assert!(
                matches!(&e, RankError::Env { var: v, .. } if *v == var),
                "{bad:?}: {e}"
            );
        }
        assert!(Ranks::new(0, 0).is_err());
        assert!(Ranks::new(2, 2).is_err());
        assert!(Ranks::new(-1, 2).is_err());
        assert_eq!(Ranks::new(1, 2).unwrap(), Ranks { rank: 1, size: 2 });
    }

    #[test]
    fn complete_only_when_every_rank_ended() {
        let d = crate::testutil::scratch("ckpt-rank-");
        let (job, set) = names();
        // One store per rank, as separate processes would have.
        let stores: Vec<Store> = (0..3).map(|_| store_at(d.path())).collect();
        let mut parts: Vec<Part> = (0..3)
            .map(|r| Part::join(&stores[r], &job, &set, Ranks::new(r as i64, 3).unwrap()).unwrap())
            .collect();
        for (r, p) in parts.iter_mut().enumerate() {
            let rel = RelPath::new(format!("rank-{r}.bin")).unwrap();
            p.write_file(&rel, &mut &vec![r as u8; 100_000][..])
                .unwrap();
        }
        let mut held = Vec::new();
        let p2 = parts.pop().unwrap();
        for p in parts {
            let f = p.finish().unwrap();
            assert!(f.manifest.is_none());
            assert!(!f.held.is_complete());
            held.push(f.held);
            assert_eq!(state(&stores[0], &job, &set), Some(SetState::Writing));
            assert!(stores[0].latest(&job).unwrap().is_none());
        }
        let f = p2.finish().unwrap();
        let m = f.manifest.expect("the last rank commits");
        assert_eq!(m.files.len(), 3);
        assert!(held.iter().all(Held::is_complete));
        assert_eq!(state(&stores[0], &job, &set), Some(SetState::Complete));
        assert!(stores[1].verify(&job, &set).unwrap().ok());
        // No rank record is left behind.
        let meta = stores[0].meta_dir(&job, &set);
        let left: Vec<String> = fs::read_dir(&meta)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["manifest.json"]);
    }

    #[test]
    fn ranks_on_threads_at_once() {
        let d = crate::testutil::scratch("ckpt-rank-");
        let (job, _) = names();
        let n = 4;
        std::thread::scope(|s| {
            for r in 0..n {
                let (root, job) = (d.path().to_owned(), job.clone());
                s.spawn(move || {
                    let store = store_at(&root);
                    let mut held = Vec::new();
                    for v in 0..3 {
                        let set = SetName::new(format!("ck.v{v:010}")).unwrap();
                        let mut p =
                            Part::join(&store, &job, &set, Ranks::new(r, n).unwrap()).unwrap();
                        p.write_file(
                            &RelPath::new(format!("mem/rank-{r}.ckpt")).unwrap(),
                            &mut &[r as u8; 5000][..],
                        )
                        .unwrap();
                        held.push(p.finish().unwrap().held);
                    }
                    // Held until complete, as the API does (bounded: a
                    // rank that failed would leave the others waiting).
                    let t0 = std::time::Instant::now();
                    while !held.iter().all(Held::is_complete) {
                        assert!(t0.elapsed().as_secs() < 120, "sets never completed");
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                });
            }
        });
        let store = store_at(d.path());
        let sets = store.sets(&job).unwrap();
        assert_eq!(sets.len(), 3);
        for s in sets {
            assert!(s.is_complete(), "{s:?}");
            assert_eq!(store.manifest(&job, &s.set).unwrap().files.len(), 4);
        }
    }

    #[test]
    fn a_dead_rank_leaves_the_set_abandoned_and_it_is_started_again() {
        let d = crate::testutil::scratch("ckpt-rank-");
        let (job, set) = names();
        let s0 = store_at(d.path());
        let s1 = store_at(d.path());
        let mut p0 = Part::join(&s0, &job, &set, Ranks::new(0, 2).unwrap()).unwrap();
        p0.write_file(&RelPath::new("a").unwrap(), &mut &b"zero"[..])
            .unwrap();
        let held0 = p0.finish().unwrap().held;
        let p1 = Part::join(&s1, &job, &set, Ranks::new(1, 2).unwrap()).unwrap();
        // Rank 1 "dies": its lock goes with the process, and nothing
        // abandons the set on its behalf.
        let mut p1 = p1;
        let lock = p1.lock.take();
        drop(p1);
        drop(lock);
        assert_eq!(
            state(&s0, &job, &set),
            Some(SetState::Writing),
            "rank 0 lives"
        );
        drop(held0);
        assert_eq!(state(&s0, &job, &set), Some(SetState::Abandoned));
        assert!(s0.latest(&job).unwrap().is_none());
        // A new run starts the set again, from scratch.
        let mut p0 = Part::join(&s0, &job, &set, Ranks::new(0, 2).unwrap()).unwrap();
        assert!(!p0.dir().join("a").exists(), "old files are gone");
        p0.write_file(&RelPath::new("a").unwrap(), &mut &b"again"[..])
            .unwrap();
        let _h0 = p0.finish().unwrap().held;
        let mut p1 = Part::join(&s1, &job, &set, Ranks::new(1, 2).unwrap()).unwrap();
        p1.write_file(&RelPath::new("b").unwrap(), &mut &b"one"[..])
            .unwrap();
        assert!(p1.finish().unwrap().manifest.is_some());
        assert_eq!(state(&s0, &job, &set), Some(SetState::Complete));
    }

    #[test]
    fn a_probe_in_another_process_never_makes_a_dead_writer_look_alive() {
        let d = crate::testutil::scratch("ckpt-rank-");
        let (job, set) = names();
        let s0 = store_at(d.path());
        let mut p0 = Part::join(&s0, &job, &set, Ranks::new(0, 2).unwrap()).unwrap();
        let record = s0.meta_dir(&job, &set).join(writer_name(0));
        // Rank 0 "dies": its lock goes with the process.
        let lock = p0.lock.take();
        drop(p0);
        drop(lock);
        // Rank 0 is dead. Another process's liveness probe holds a lock on
        // its record at this very instant (a probe's lock is shared).
        let probe = File::open(&record).unwrap();
        probe.lock_shared().unwrap();
        assert_eq!(state(&s0, &job, &set), Some(SetState::Abandoned));
        assert!(!held_by_writer(&record));
        // The next run's rank 0 starts the set again instead of refusing
        // a duplicate rank.
        let p0 = Part::join(&s0, &job, &set, Ranks::new(0, 2).unwrap()).unwrap();
        drop(probe);
        drop(p0);
    }

    #[test]
    fn a_set_being_created_is_never_seen_without_its_writer() {
        let d = crate::testutil::scratch("ckpt-rank-");
        let (job, set) = names();
        let s0 = store_at(d.path());
        let meta = s0.meta_dir(&job, &set);
        let created = std::time::SystemTime::now();
        let lock = s0
            .create_meta(&job, &set, &writer_name(0), created)
            .unwrap();
        // The directory appeared with its live writer record already in it.
        assert!(meta.join(writer_name(0)).exists());
        assert_eq!(state(&s0, &job, &set), Some(SetState::Writing));
        // Nothing is left under a hidden name beside it.
        let hidden: Vec<_> = fs::read_dir(meta.parent().unwrap())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");
        // A second creator is refused, and leaves nothing behind either.
        assert!(matches!(
            s0.create_meta(&job, &set, &writer_name(1), created),
            Err(crate::store::StoreError::SetExists { .. })
        ));
        assert_eq!(fs::read_dir(meta.parent().unwrap()).unwrap().count(), 1);
        drop(lock);
    }

    #[test]
    fn abandon_size_and_duplicate_checks() {
        let d = crate::testutil::scratch("ckpt-rank-");
        let (job, set) = names();
        let s = store_at(d.path());
        let p0 = Part::join(&s, &job, &set, Ranks::new(0, 2).unwrap()).unwrap();
        let e = Part::join(&s, &job, &set, Ranks::new(1, 3).unwrap())
            .err()
            .unwrap();
        assert!(matches!(e, RankError::SizeMismatch { .. }), "{e}");
        let e = Part::join(&s, &job, &set, Ranks::new(0, 2).unwrap())
            .err()
            .unwrap();
        assert!(matches!(e, RankError::DuplicateRank { .. }), "{e}");
        let p1 = Part::join(&s, &job, &set, Ranks::new(1, 2).unwrap()).unwrap();
        p1.abandon().unwrap();
        // Rank 0 still writes: the set stays, but can never complete.
        let e = p0.finish().err().unwrap();
        assert!(matches!(e, RankError::Abandoned { .. }), "{e}");
        assert!(s.latest(&job).unwrap().is_none());
        // A single rank that gives up leaves nothing.
        let p = Part::join(&s, &job, &set, Ranks::SINGLE).unwrap();
        p.abandon().unwrap();
        assert_eq!(state(&s, &job, &set), None);
        // Dropped without finishing: abandoned too.
        drop(Part::join(&s, &job, &set, Ranks::SINGLE).unwrap());
        assert_eq!(state(&s, &job, &set), None);
    }

    #[test]
    fn a_complete_set_of_an_earlier_run_is_replaced() {
        let d = crate::testutil::scratch("ckpt-rank-");
        let (job, set) = names();
        let s = store_at(d.path());
        for body in [&b"first"[..], b"second"] {
            let mut p = Part::join(&s, &job, &set, Ranks::SINGLE).unwrap();
            p.write_file(&RelPath::new("x").unwrap(), &mut &body[..])
                .unwrap();
            assert!(p.finish().unwrap().manifest.is_some());
        }
        assert_eq!(
            fs::read(s.set_dir(&job, &set).join("x")).unwrap(),
            b"second"
        );
        assert!(s.verify(&job, &set).unwrap().ok());
    }
}
