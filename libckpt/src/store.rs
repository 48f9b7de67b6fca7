//! The checkpoint store in a cache directory (tier 0).
//!
//! Layout:
//! ```text
//! <root>/<job>/<set>/<files…>            user files, as the application wrote them
//! <root>/.ckptfs/LAYOUT                  store layout version
//! <root>/.ckptfs/sets/<job>/<set>/
//!     writer                             who is writing the set; flock'ed while they live
//!     writer.<rank>, ranks.json, parts/  the same for a set written by several ranks
//!                                        (libckpt API; see `rank`)
//!     manifest.json                      the commit point: present = complete
//!     deleting                           a delete is under way (finished by retention)
//! ```
//! The store's metadata lives apart from user files so that nothing an
//! application writes can forge a commit. A set is complete exactly when its
//! manifest is in place; the manifest is written last (temp, fsync, rename,
//! fsync of the directory), after every file and directory of the set is
//! durable, so a SIGKILL at any instant leaves either a complete set or an
//! incomplete one that is never offered.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::chunk::FileDigest;
use crate::durable::{self, IoContext, PathError};
use crate::io::{IoEngine, IoError};
use crate::manifest::{FileEntry, Manifest, ManifestError, MAX_MANIFEST_BYTES};
use crate::path::{JobName, NameError, RelPath, SetName};
use crate::retention::Retention;
use crate::set::{SetInfo, SetState};
use crate::verify::{Problem, VerifyReport};

/// Directory under the cache root that holds the store's own metadata.
pub const META_DIR: &str = ".ckptfs";
const LAYOUT_FILE: &str = "LAYOUT";
const LAYOUT_TAG: &str = "ckptfs-store";
/// Layout version this build writes and the newest it opens.
pub const LAYOUT_VERSION: u32 = 1;
const SETS_DIR: &str = "sets";
const MANIFEST_FILE: &str = "manifest.json";
const WRITER_FILE: &str = "writer";
const DELETING_FILE: &str = "deleting";

/// Mode of checkpoint files: memory dumps and application state hold secrets.
pub const FILE_MODE: u32 = 0o600;
pub(crate) const SET_DIR_MODE: u32 = 0o700;
pub(crate) const PUBLIC_DIR_MODE: u32 = 0o755;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Engine(#[from] IoError),
    #[error("manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("set {job}/{set} already exists")]
    SetExists { job: JobName, set: SetName },
    #[error("no set {job}/{set} in the cache {root}")]
    NoSuchSet {
        job: JobName,
        set: SetName,
        root: PathBuf,
    },
    #[error("set {job}/{set} is not complete (it is {state})")]
    NotComplete {
        job: JobName,
        set: SetName,
        state: String,
    },
    #[error("set {job}/{set} is already committed")]
    AlreadyComplete { job: JobName, set: SetName },
    #[error("set {job}/{set} is being written by pid {pid} on {host}")]
    Busy {
        job: JobName,
        set: SetName,
        pid: u32,
        host: String,
    },
    #[error(
        "set {job}/{set} was being written by pid {pid} on {host}, which ended without \
         committing it: its files may be incomplete (delete it, or commit it anyway with --force)"
    )]
    Abandoned {
        job: JobName,
        set: SetName,
        pid: u32,
        host: String,
    },
    #[error("{path} is not a set directory of the cache {root}: {reason}")]
    NotASetDir {
        path: PathBuf,
        root: PathBuf,
        reason: &'static str,
    },
    #[error("{path}: a {kind} cannot be part of a set (only regular files and directories)")]
    UnsupportedFile { path: PathBuf, kind: &'static str },
    #[error(
        "the store at {path} has layout {found:?}; this ckptfs understands \
         {LAYOUT_TAG} versions up to {LAYOUT_VERSION}"
    )]
    FutureLayout { path: PathBuf, found: String },
}

impl StoreError {
    /// True when the error means "the thing asked for does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NoSuchSet { .. })
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Store tunables (from the config).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// crc32c granularity for new files.
    pub chunk_size: u64,
    /// Complete sets kept per job after each commit; 0 keeps all.
    pub keep: usize,
    /// Lower tiers every set must reach before retention or eviction may
    /// remove it from the cache (names as in the drain journal).
    pub required_tiers: Vec<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            chunk_size: crate::chunk::DEFAULT_CHUNK_SIZE,
            keep: 3,
            required_tiers: Vec::new(),
        }
    }
}

/// Who is writing a set; the file is flock'ed for the writer's lifetime, so
/// a dead writer is recognised by the lock being free.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WriterRecord {
    pid: u32,
    host: String,
    #[serde(with = "humantime_serde")]
    created: SystemTime,
}

struct Inner {
    root: PathBuf,
    sets_meta: PathBuf,
    engine: Arc<IoEngine>,
    opts: StoreOptions,
    host: String,
}

/// A checkpoint store rooted at a cache directory. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// What retention did for one job.
#[derive(Debug, Default, Serialize)]
pub struct RetentionReport {
    pub deleted: Vec<SetName>,
    /// Sets retention chose but could not delete, with the reason.
    pub failed: Vec<(SetName, String)>,
}

/// This host's name, as recorded in manifests.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn birth_time(md: &fs::Metadata) -> SystemTime {
    md.created()
        .or_else(|_| md.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Store {
    /// Open (creating if needed) the store at `root`.
    pub fn open(root: &Path, engine: Arc<IoEngine>, opts: StoreOptions) -> Result<Store> {
        durable::create_dir_all_durable(root, PUBLIC_DIR_MODE)?;
        let root = root.canonicalize().at("resolving", root)?;
        let meta = root.join(META_DIR);
        durable::create_dir_all_durable(&meta.join(SETS_DIR), PUBLIC_DIR_MODE)?;
        check_layout(&meta.join(LAYOUT_FILE))?;
        let store = Store {
            inner: Arc::new(Inner {
                sets_meta: meta.join(SETS_DIR),
                root,
                engine,
                opts,
                host: host_name(),
            }),
        };
        store.log_recovery();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn engine(&self) -> &IoEngine {
        &self.inner.engine
    }

    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    /// `<root>/<job>/<set>`: where the set's files live.
    pub fn set_dir(&self, job: &JobName, set: &SetName) -> PathBuf {
        self.inner.root.join(job).join(set)
    }

    /// `<root>/.ckptfs/sets/<job>/<set>`: the set's metadata (manifest,
    /// writer record, drain journal).
    pub fn meta_dir(&self, job: &JobName, set: &SetName) -> PathBuf {
        self.inner.sets_meta.join(job).join(set)
    }

    /// Path of a set's manifest in the cache.
    pub fn manifest_path(&self, job: &JobName, set: &SetName) -> PathBuf {
        self.meta_dir(job, set).join(MANIFEST_FILE)
    }

    /// Sets left incomplete by a writer that died are recognised here and
    /// said once, so an admin reading the log knows why they are not offered.
    fn log_recovery(&self) {
        let Ok(jobs) = self.jobs() else { return };
        for job in jobs {
            if let Ok(sets) = self.sets(&job) {
                for s in sets.iter().filter(|s| s.state == SetState::Abandoned) {
                    tracing::info!(job = %job, set = %s.set, "incomplete set left by a writer that ended; retention will remove it");
                }
            }
        }
    }

    /// Start a new set. The returned writer holds the set until it is
    /// committed or dropped; a dropped writer leaves an abandoned set.
    pub fn create_set(&self, job: &JobName, set: &SetName) -> Result<SetWriter> {
        let data = self.set_dir(job, set);
        if data.exists() {
            return Err(StoreError::SetExists {
                job: job.clone(),
                set: set.clone(),
            });
        }
        let created = SystemTime::now();
        let lock = self.create_meta(job, set, WRITER_FILE, created)?;
        let mut attempt = 0;
        loop {
            durable::create_dir_all_durable(&self.inner.root.join(job), PUBLIC_DIR_MODE)?;
            match fs::DirBuilder::new().mode(SET_DIR_MODE).create(&data) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => attempt += 1,
                other => break other.at("creating directory", &data)?,
            }
        }
        durable::sync_parent(&data)?;
        Ok(SetWriter {
            store: self.clone(),
            job: job.clone(),
            set: set.clone(),
            dir: data,
            created,
            _lock: lock,
            seals: BTreeMap::new(),
        })
    }

    /// Write a locked writer record into `meta`. The lock is taken on the
    /// temp file before the rename, so nobody ever sees the record unlocked
    /// while its writer lives.
    /// Create the metadata directory of a new set with the locked writer
    /// record `writer` already inside. It is built under a hidden name and
    /// renamed into place, refusing to replace anything: nobody ever sees
    /// the set's metadata without its live writer (retention in another
    /// thread or process would take that for a writer that died).
    pub(crate) fn create_meta(
        &self,
        job: &JobName,
        set: &SetName,
        writer: &str,
        created: SystemTime,
    ) -> Result<File> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let meta = self.meta_dir(job, set);
        let parent = self.inner.sets_meta.join(job);
        // A leading '.' is never a set name: listings skip it.
        let tmp = parent.join(format!(
            ".{set}.new.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut attempt = 0;
        loop {
            // A concurrent delete of the job's last set may remove the
            // job's directory between these two steps: make it again.
            durable::create_dir_all_durable(&parent, PUBLIC_DIR_MODE)?;
            match fs::DirBuilder::new().mode(PUBLIC_DIR_MODE).create(&tmp) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => attempt += 1,
                other => break other.at("creating directory", &tmp)?,
            }
        }
        let made = self
            .take_writer_named(&tmp, writer, created)
            .and_then(|lock| match durable::rename_noreplace(&tmp, &meta) {
                Ok(()) => Ok(lock),
                Err(e) if e.source.kind() == io::ErrorKind::AlreadyExists => {
                    Err(StoreError::SetExists {
                        job: job.clone(),
                        set: set.clone(),
                    })
                }
                Err(e) => Err(e.into()),
            });
        match made {
            Ok(lock) => {
                durable::sync_parent(&meta)?;
                Ok(lock)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    fn take_writer(&self, meta: &Path, created: SystemTime) -> Result<File> {
        self.take_writer_named(meta, WRITER_FILE, created)
    }

    /// [`take_writer`](Self::take_writer) under another record name (the
    /// per-rank records `writer.<rank>` of [`crate::rank`]).
    pub(crate) fn take_writer_named(
        &self,
        meta: &Path,
        name: &str,
        created: SystemTime,
    ) -> Result<File> {
        let rec = WriterRecord {
            pid: std::process::id(),
            host: self.inner.host.clone(),
            created,
        };
        let path = meta.join(name);
        let tmp = durable::temp_path(&path);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .at("creating", &tmp)?;
        f.try_lock().map_err(|e| {
            PathError::new(
                "locking",
                &tmp,
                match e {
                    fs::TryLockError::Error(e) => e,
                    fs::TryLockError::WouldBlock => io::ErrorKind::WouldBlock.into(),
                },
            )
        })?;
        let body = serde_json::to_vec(&rec).unwrap_or_default();
        f.write_all(&body).at("writing", &tmp)?;
        f.sync_all().at("syncing", &tmp)?;
        fs::rename(&tmp, &path).at("renaming into place", &path)?;
        durable::sync_dir(meta)?;
        Ok(f)
    }

    /// The writer of a set, and whether it still lives (holds the lock).
    /// A set written by several ranks has one record per rank
    /// (`writer.<rank>`): it lives while any of them does.
    fn writer_of(&self, meta: &Path) -> Option<(WriterRecord, bool)> {
        let mut found = None;
        for path in writer_records(meta) {
            if let Some((rec, alive)) = read_writer(&path) {
                if alive {
                    return Some((rec, true));
                }
                found.get_or_insert((rec, false));
            }
        }
        found
    }

    /// The pid and host of the writer record at `path`, if its writer lives.
    pub(crate) fn live_writer_at(&self, path: &Path) -> Option<(u32, String)> {
        read_writer(path)
            .filter(|(_, alive)| *alive)
            .map(|(r, _)| (r.pid, r.host))
    }

    /// Whether any writer record of the set is held by a live process, and
    /// the pid and host of one.
    pub(crate) fn live_writer(&self, meta: &Path) -> Option<(u32, String)> {
        self.writer_of(meta)
            .filter(|(_, alive)| *alive)
            .map(|(r, _)| (r.pid, r.host))
    }

    /// Jobs with at least one set (in any state), sorted.
    pub fn jobs(&self) -> Result<Vec<JobName>> {
        let mut names = std::collections::BTreeSet::new();
        for dir in [&self.inner.root, &self.inner.sets_meta] {
            for name in dir_names(dir)? {
                if let Ok(j) = JobName::new(name) {
                    names.insert(j);
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Every set of `job`, in any state, oldest first.
    pub fn sets(&self, job: &JobName) -> Result<Vec<SetInfo>> {
        let mut names = std::collections::BTreeSet::new();
        for dir in [self.inner.root.join(job), self.inner.sets_meta.join(job)] {
            for name in dir_names(&dir)? {
                if let Ok(s) = SetName::new(name) {
                    names.insert(s);
                }
            }
        }
        let mut out: Vec<SetInfo> = names
            .into_iter()
            .filter_map(|s| self.info(job, &s).transpose())
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        Ok(out)
    }

    /// One set's state, or `None` if nothing of it exists.
    pub fn info(&self, job: &JobName, set: &SetName) -> Result<Option<SetInfo>> {
        let data = self.set_dir(job, set);
        let meta = self.meta_dir(job, set);
        let data_md = fs::symlink_metadata(&data).ok().filter(|m| m.is_dir());
        if data_md.is_none() && !meta.is_dir() {
            return Ok(None);
        }
        let mut info = SetInfo {
            job: job.clone(),
            set: set.clone(),
            state: SetState::Uncommitted,
            created: data_md
                .as_ref()
                .map(birth_time)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            bytes: 0,
            files: 0,
        };
        if meta.join(DELETING_FILE).exists() {
            info.state = SetState::Abandoned;
        } else if meta.join(MANIFEST_FILE).exists() {
            match self.manifest(job, set) {
                Ok(m) => {
                    info.created = m.created;
                    info.bytes = m.total_bytes;
                    info.files = m.files.len() as u64;
                    info.state = if data_md.is_some() {
                        SetState::Complete
                    } else {
                        SetState::Damaged(format!("its directory {} is missing", data.display()))
                    };
                    return Ok(Some(info));
                }
                Err(e) => info.state = SetState::Damaged(e.to_string()),
            }
        } else if let Some((rec, alive)) = self.writer_of(&meta) {
            info.created = rec.created;
            info.state = if alive {
                SetState::Writing
            } else {
                SetState::Abandoned
            };
        } else if data_md.is_none() {
            // Metadata directory without a writer record: an interrupted
            // delete (create_set never shows one: see create_meta).
            info.state = SetState::Abandoned;
        }
        if data_md.is_some() {
            let (files, bytes) = tally(&data);
            info.files = files;
            info.bytes = bytes;
        }
        Ok(Some(info))
    }

    /// The newest complete set of `job`, if any. Incomplete, damaged and
    /// abandoned sets are never returned: a reader falls back to the
    /// previous complete one.
    pub fn latest(&self, job: &JobName) -> Result<Option<SetInfo>> {
        Ok(self
            .sets(job)?
            .into_iter()
            .filter(SetInfo::is_complete)
            .max_by(|a, b| a.age_key().cmp(&b.age_key())))
    }

    /// Read and check a set's manifest.
    pub fn manifest(&self, job: &JobName, set: &SetName) -> Result<Manifest> {
        let path = self.manifest_path(job, set);
        let bytes = read_bounded(&path, MAX_MANIFEST_BYTES)?;
        let m = Manifest::parse(&bytes).map_err(|source| StoreError::Manifest {
            path: path.clone(),
            source,
        })?;
        if &m.job != job || &m.set != set {
            return Err(StoreError::Manifest {
                path,
                source: ManifestError::Invalid {
                    message: format!("it describes {}/{}, not {job}/{set}", m.job, m.set),
                },
            });
        }
        Ok(m)
    }

    /// Re-read every file of a complete set and check every chunk's crc32c.
    pub fn verify(&self, job: &JobName, set: &SetName) -> Result<VerifyReport> {
        let info = self.info(job, set)?.ok_or_else(|| StoreError::NoSuchSet {
            job: job.clone(),
            set: set.clone(),
            root: self.inner.root.clone(),
        })?;
        if let SetState::Damaged(_) = info.state {
            // Surface the manifest error itself rather than "not complete".
            self.manifest(job, set)?;
        }
        if !info.is_complete() {
            return Err(StoreError::NotComplete {
                job: job.clone(),
                set: set.clone(),
                state: info.state.label().to_owned(),
            });
        }
        let m = self.manifest(job, set)?;
        let dir = self.set_dir(job, set);
        let problems: Vec<Problem> = m
            .files
            .par_iter()
            .filter_map(|f| self.check_file(&dir, f))
            .collect();
        let listed: std::collections::HashSet<&str> =
            m.files.iter().map(|f| f.path.as_str()).collect();
        let extra_files = walk(&dir)
            .map(|w| {
                w.files
                    .into_iter()
                    .filter(|(rel, _, _)| !listed.contains(rel.as_str()))
                    .map(|(rel, _, _)| rel)
                    .collect()
            })
            .unwrap_or_default();
        Ok(VerifyReport {
            job: job.clone(),
            set: set.clone(),
            files: m.files.len() as u64,
            bytes: m.total_bytes,
            problems,
            extra_files,
        })
    }

    fn check_file(&self, dir: &Path, f: &FileEntry) -> Option<Problem> {
        let path = f.path.under(dir);
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Some(Problem::Missing {
                    path: f.path.clone(),
                })
            }
            Err(e) => {
                return Some(Problem::Unreadable {
                    path: f.path.clone(),
                    error: e.to_string(),
                })
            }
        };
        if !md.is_file() {
            return Some(Problem::Missing {
                path: f.path.clone(),
            });
        }
        if md.len() != f.size {
            return Some(Problem::SizeMismatch {
                path: f.path.clone(),
                expected: f.size,
                found: md.len(),
            });
        }
        let found = match self.engine().digest_file(&path, f.chunk_size) {
            Ok(d) => d,
            Err(e) => {
                return Some(Problem::Unreadable {
                    path: f.path.clone(),
                    error: e.to_string(),
                })
            }
        };
        let want = f.digest();
        want.first_mismatch(&found).map(|chunk| Problem::Corrupt {
            path: f.path.clone(),
            chunk: chunk as u64,
            offset: chunk as u64 * f.chunk_size,
            expected: want.crc32c.get(chunk).copied().unwrap_or(0),
            found: found.crc32c.get(chunk).copied().unwrap_or(0),
        })
    }

    /// Delete a set in any state but `Writing`. Crash-safe: a `deleting`
    /// marker goes first, then the manifest, so an interrupted delete leaves
    /// an abandoned set, never a complete one with missing files.
    pub fn delete_set(&self, job: &JobName, set: &SetName) -> Result<()> {
        self.delete(job, set, true)
    }

    /// [`delete_set`](Self::delete_set), but the job's directory stays even
    /// when left empty: under a mount it belongs to the user who made it,
    /// and their next `mkdir JOB/SET` must work.
    pub fn delete_set_keep_job(&self, job: &JobName, set: &SetName) -> Result<()> {
        self.delete(job, set, false)
    }

    fn delete(&self, job: &JobName, set: &SetName, tidy_job: bool) -> Result<()> {
        let info = self.info(job, set)?.ok_or_else(|| StoreError::NoSuchSet {
            job: job.clone(),
            set: set.clone(),
            root: self.inner.root.clone(),
        })?;
        let meta = self.meta_dir(job, set);
        if info.state == SetState::Writing {
            let (rec, _) = self.writer_of(&meta).unwrap_or((
                WriterRecord {
                    pid: 0,
                    host: "unknown".into(),
                    created: info.created,
                },
                true,
            ));
            return Err(StoreError::Busy {
                job: job.clone(),
                set: set.clone(),
                pid: rec.pid,
                host: rec.host,
            });
        }
        durable::create_dir_all_durable(&meta, PUBLIC_DIR_MODE)?;
        let marker = meta.join(DELETING_FILE);
        File::create(&marker).at("creating", &marker)?;
        durable::sync_dir(&meta)?;
        let manifest = meta.join(MANIFEST_FILE);
        match fs::remove_file(&manifest) {
            Ok(()) => durable::sync_dir(&meta)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PathError::new("removing", &manifest, e).into()),
        }
        let data = self.set_dir(job, set);
        remove_tree(&data)?;
        remove_tree(&meta)?;
        // A job without sets leaves no empty directories behind; a set
        // being created meanwhile makes these fail with ENOTEMPTY, fine.
        if tidy_job {
            let _ = fs::remove_dir(self.inner.root.join(job));
        }
        let _ = fs::remove_dir(self.inner.sets_meta.join(job));
        Ok(())
    }

    /// Apply keep-N retention to `job` (see [`Retention::plan`]).
    pub fn apply_retention(&self, job: &JobName, keep: usize) -> Result<RetentionReport> {
        let sets = self.sets(job)?;
        let mut report = RetentionReport::default();
        for set in (Retention { keep }).plan(&sets) {
            let complete = sets.iter().any(|s| s.set == set && s.is_complete());
            if complete && !self.drained_everywhere(job, &set) {
                // The only copy not yet safe off the node: keep it.
                continue;
            }
            match self.delete_set(job, &set) {
                Ok(()) => {
                    tracing::info!(job = %job, set = %set, "retention removed set");
                    report.deleted.push(set);
                }
                Err(e) => report.failed.push((set, e.to_string())),
            }
        }
        Ok(report)
    }

    /// Bring a set fetched from a lower tier into the cache as a complete
    /// set: `staged` (a directory on the cache's filesystem holding the
    /// verified files) is renamed into place and `manifest` (the original,
    /// with its creation time and host) is written last. `from` names the
    /// tier it came from: it is recorded as drained there.
    pub fn import(&self, manifest: &Manifest, staged: &Path, from: &str) -> Result<()> {
        let (job, set) = (&manifest.job, &manifest.set);
        if self.info(job, set)?.is_some() {
            return Err(StoreError::SetExists {
                job: job.clone(),
                set: set.clone(),
            });
        }
        let meta = self.meta_dir(job, set);
        durable::create_dir_all_durable(&meta, PUBLIC_DIR_MODE)?;
        let lock = self.take_writer(&meta, manifest.created)?;
        let data = self.set_dir(job, set);
        durable::create_dir_all_durable(&self.inner.root.join(job), PUBLIC_DIR_MODE)?;
        fs::rename(staged, &data).at("moving the staged set into", &data)?;
        fs::set_permissions(&data, fs::Permissions::from_mode(SET_DIR_MODE))
            .at("setting the mode of", &data)?;
        for d in walk(&data)?.dirs.iter().rev() {
            durable::sync_dir(d)?;
        }
        durable::sync_parent(&data)?;
        let done = crate::drain::journal::Progress {
            state: crate::drain::journal::State::Done,
            done_at: Some(SystemTime::now()),
            ..Default::default()
        };
        crate::drain::journal::save(&meta, from, &done)?;
        durable::write_atomic(&meta.join(MANIFEST_FILE), &manifest.to_bytes(), 0o644)?;
        let _ = fs::remove_file(meta.join(WRITER_FILE));
        drop(lock);
        Ok(())
    }

    /// A directory on the cache's filesystem to stage a set into before
    /// [`Store::import`] (same filesystem: the import is a rename).
    pub fn staging_dir(&self) -> Result<PathBuf> {
        let dir = self.inner.root.join(META_DIR).join("staging");
        durable::create_dir_all_durable(&dir, 0o700)?;
        Ok(dir)
    }

    /// True when the set has reached every required lower tier.
    pub fn drained_everywhere(&self, job: &JobName, set: &SetName) -> bool {
        let meta = self.meta_dir(job, set);
        self.inner
            .opts
            .required_tiers
            .iter()
            .all(|t| crate::drain::journal::is_done(&meta, t))
    }

    /// Commit a set directory that was written by other means (plain file
    /// writes into the cache): every file is read once for its crc32c and
    /// synced, then the manifest goes in. `force` commits a set whose writer
    /// died, on the caller's word that its files are whole.
    pub fn commit_dir(&self, dir: &Path, force: bool) -> Result<Manifest> {
        let (job, set) = self.parse_set_dir(dir)?;
        let meta = self.meta_dir(&job, &set);
        if meta.join(MANIFEST_FILE).exists() {
            return Err(StoreError::AlreadyComplete { job, set });
        }
        if meta.join(DELETING_FILE).exists() {
            return Err(StoreError::NotComplete {
                job,
                set,
                state: "being deleted".into(),
            });
        }
        let data_md = fs::metadata(self.set_dir(&job, &set)).at("reading", dir)?;
        let mut created = birth_time(&data_md);
        if let Some((rec, alive)) = self.writer_of(&meta) {
            if alive {
                return Err(StoreError::Busy {
                    job,
                    set,
                    pid: rec.pid,
                    host: rec.host,
                });
            }
            if !force {
                return Err(StoreError::Abandoned {
                    job,
                    set,
                    pid: rec.pid,
                    host: rec.host,
                });
            }
            created = rec.created;
        }
        durable::create_dir_all_durable(&meta, PUBLIC_DIR_MODE)?;
        let lock = self.take_writer(&meta, created)?;
        let m = self.finish_commit(&job, &set, created, &BTreeMap::new())?;
        drop(lock);
        Ok(m)
    }

    /// `<root>/<job>/<set>` → (job, set), or why `dir` is not one.
    fn parse_set_dir(&self, dir: &Path) -> Result<(JobName, SetName)> {
        let not_set = |reason| StoreError::NotASetDir {
            path: dir.to_owned(),
            root: self.inner.root.clone(),
            reason,
        };
        let abs = dir.canonicalize().at("resolving", dir)?;
        if !abs.is_dir() {
            return Err(not_set("it is not a directory"));
        }
        let rel = abs
            .strip_prefix(&self.inner.root)
            .map_err(|_| not_set("it is outside the cache"))?;
        let parts: Vec<&str> = rel
            .components()
            .map(|c| c.as_os_str().to_str().unwrap_or("\u{fffd}"))
            .collect();
        match parts.as_slice() {
            [job, set] => Ok((JobName::new(*job)?, SetName::new(*set)?)),
            _ => Err(not_set("a set directory is <cache>/<job>/<set>")),
        }
    }

    /// Seal what is not sealed, make every byte and directory entry of the
    /// set durable, then put the manifest in place.
    fn finish_commit(
        &self,
        job: &JobName,
        set: &SetName,
        created: SystemTime,
        seals: &BTreeMap<RelPath, Seal>,
    ) -> Result<Manifest> {
        let dir = self.set_dir(job, set);
        let tree = walk(&dir)?;
        let chunk_size = self.inner.opts.chunk_size;
        // Each file's entry, and whether its bytes still have to be synced.
        let entries: Vec<(FileEntry, bool)> = tree
            .files
            .par_iter()
            .map(|(rel, path, md)| {
                let (digest, synced) = match seals.get(rel) {
                    Some(s) if s.matches(md) => (s.digest.clone(), s.synced),
                    _ => (self.engine().digest_file(path, chunk_size)?, false),
                };
                if digest.size != md.len() {
                    return Err(StoreError::Io(PathError::new(
                        "sealing",
                        path,
                        io::Error::other("the file changed size while being committed"),
                    )));
                }
                let entry = FileEntry {
                    path: rel.clone(),
                    size: digest.size,
                    mode: md.mode() & 0o7777,
                    mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    chunk_size: digest.chunk_size,
                    crc32c: digest.crc32c,
                };
                Ok((entry, synced))
            })
            .collect::<Result<_>>()?;
        let unsynced: Vec<PathBuf> = entries
            .iter()
            .filter(|(_, synced)| !synced)
            .map(|(e, _)| e.path.under(&dir))
            .collect();
        durable::sync_files(&dir, &unsynced)?;
        let files = entries.into_iter().map(|(e, _)| e).collect();
        self.put_manifest(job, set, created, files, &tree.dirs)
    }

    /// The end of every commit: sync the set's directories (`dirs`, parents
    /// first), put the manifest in place, then apply retention.
    pub(crate) fn put_manifest(
        &self,
        job: &JobName,
        set: &SetName,
        created: SystemTime,
        files: Vec<FileEntry>,
        dirs: &[PathBuf],
    ) -> Result<Manifest> {
        for d in dirs.iter().rev() {
            durable::sync_dir(d)?;
        }
        durable::sync_parent(&self.set_dir(job, set))?;
        let m = Manifest::new(
            job.clone(),
            set.clone(),
            created,
            self.inner.host.clone(),
            files,
        );
        let meta = self.meta_dir(job, set);
        durable::write_atomic(&meta.join(MANIFEST_FILE), &m.to_bytes(), 0o644)?;
        // The manifest decides completeness; the writer record is now noise.
        let _ = fs::remove_file(meta.join(WRITER_FILE));
        if self.inner.opts.keep > 0 {
            match self.apply_retention(job, self.inner.opts.keep) {
                Ok(r) => {
                    for (s, e) in r.failed {
                        tracing::warn!(job = %job, set = %s, error = %e, "retention could not remove set");
                    }
                }
                Err(e) => tracing::warn!(job = %job, error = %e, "retention failed"),
            }
        }
        Ok(m)
    }
}

/// A file's seal: its digest, valid while size and mtime are unchanged.
#[derive(Debug, Clone)]
struct Seal {
    digest: FileDigest,
    mtime: Option<SystemTime>,
    /// The bytes are on disk already; else the commit syncs them.
    synced: bool,
}

impl Seal {
    fn matches(&self, md: &fs::Metadata) -> bool {
        self.digest.size == md.len() && self.mtime == md.modified().ok()
    }
}

/// An open set. Files written through it are sealed as they are written;
/// `commit` makes the set complete. Dropping it uncommitted leaves an
/// abandoned set that retention removes.
pub struct SetWriter {
    store: Store,
    job: JobName,
    set: SetName,
    dir: PathBuf,
    created: SystemTime,
    _lock: File,
    seals: BTreeMap<RelPath, Seal>,
}

impl SetWriter {
    pub fn job(&self) -> &JobName {
        &self.job
    }

    pub fn set(&self) -> &SetName {
        &self.set
    }

    /// The set's directory: files may also be written here by other means
    /// and sealed with [`SetWriter::seal`] (or left to be sealed at commit).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write `rel` from `src` through the I/O engine (mode 0600) and seal it.
    pub fn write_file(&mut self, rel: &RelPath, src: &mut dyn Read) -> Result<FileDigest> {
        let path = rel.under(&self.dir);
        if let Some(parent) = path.parent() {
            durable::create_dir_all_durable(parent, SET_DIR_MODE)?;
        }
        let digest = self.store.engine().write_file(
            &path,
            FILE_MODE,
            src,
            self.store.inner.opts.chunk_size,
        )?;
        self.record_seal(rel, &path, digest.clone())?;
        Ok(digest)
    }

    /// Write `rel` from memory.
    pub fn write_bytes(&mut self, rel: &RelPath, bytes: &[u8]) -> Result<FileDigest> {
        self.write_file(rel, &mut { bytes })
    }

    /// Seal a file written into [`SetWriter::dir`] by other means: its bytes
    /// are synced and its crc32c per chunk fixed.
    pub fn seal(&mut self, rel: &RelPath) -> Result<FileDigest> {
        let path = rel.under(&self.dir);
        let (digest, mtime) =
            seal_file(self.store.engine(), &path, self.store.inner.opts.chunk_size)?;
        self.add_seal(rel, digest.clone(), mtime, true);
        Ok(digest)
    }

    /// Record a seal computed elsewhere (e.g. in the background from the
    /// page cache). `mtime` must be the file's modification time read
    /// *before* the digest was computed: if the file changed since, commit
    /// sees a different mtime and checksums it again. `synced`: the bytes
    /// were synced after that; if not, the commit syncs them.
    pub fn add_seal(
        &mut self,
        rel: &RelPath,
        digest: FileDigest,
        mtime: Option<SystemTime>,
        synced: bool,
    ) {
        self.seals.insert(
            rel.clone(),
            Seal {
                digest,
                mtime,
                synced,
            },
        );
    }

    /// The files sealed and unchanged since, as manifest entries (for the
    /// early drain: they may leave the node before the set is committed).
    pub fn sealed_entries(&self) -> Vec<FileEntry> {
        self.seals
            .iter()
            .filter_map(|(rel, seal)| {
                let md = fs::metadata(rel.under(&self.dir)).ok()?;
                seal.matches(&md).then(|| FileEntry {
                    path: rel.clone(),
                    size: seal.digest.size,
                    mode: md.mode() & 0o7777,
                    mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    chunk_size: seal.digest.chunk_size,
                    crc32c: seal.digest.crc32c.clone(),
                })
            })
            .collect()
    }

    /// When the set was created.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// Forget a file's seal (it was removed or renamed).
    pub fn drop_seal(&mut self, rel: &RelPath) -> Option<FileDigest> {
        self.seals.remove(rel).map(|s| s.digest)
    }

    /// Move a seal with its file.
    pub fn rename_seal(&mut self, from: &RelPath, to: &RelPath) {
        if let Some(s) = self.seals.remove(from) {
            self.seals.insert(to.clone(), s);
        }
    }

    /// The seal of `rel`, if it is sealed and unchanged since.
    pub fn sealed(&self, rel: &RelPath) -> Option<&FileDigest> {
        let md = fs::metadata(rel.under(&self.dir)).ok()?;
        self.seals
            .get(rel)
            .filter(|s| s.matches(&md))
            .map(|s| &s.digest)
    }

    fn record_seal(&mut self, rel: &RelPath, path: &Path, digest: FileDigest) -> Result<()> {
        let md = fs::metadata(path).at("reading", path)?;
        self.seals.insert(
            rel.clone(),
            Seal {
                digest,
                mtime: md.modified().ok(),
                synced: true,
            },
        );
        Ok(())
    }

    /// Make the set complete: the manifest is written last.
    pub fn commit(self) -> Result<Manifest> {
        self.store
            .finish_commit(&self.job, &self.set, self.created, &self.seals)
    }
}

/// The writer records of a set: `writer`, then `writer.<rank>` in name order.
fn writer_records(meta: &Path) -> Vec<PathBuf> {
    let mut out = vec![meta.join(WRITER_FILE)];
    let prefix = format!("{WRITER_FILE}.");
    if let Ok(rd) = fs::read_dir(meta) {
        let mut ranked: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .map(|e| e.path())
            .collect();
        ranked.sort();
        out.extend(ranked);
    }
    out
}

/// One writer record, and whether its writer still holds its lock.
fn read_writer(path: &Path) -> Option<(WriterRecord, bool)> {
    let f = File::open(path).ok()?;
    // A shared lock: a live writer's exclusive one refuses it, but two
    // probes at once (ranks, a drain's retention) never see each other as
    // a live writer. Let go at once all the same.
    let alive = match f.try_lock_shared() {
        Ok(()) => {
            let _ = f.unlock();
            false
        }
        Err(fs::TryLockError::WouldBlock) => true,
        Err(fs::TryLockError::Error(_)) => false,
    };
    let mut body = Vec::new();
    let rec = (&f)
        .take(64 * 1024)
        .read_to_end(&mut body)
        .ok()
        .and_then(|_| serde_json::from_slice(&body).ok())
        .unwrap_or(WriterRecord {
            pid: 0,
            host: "unknown".into(),
            created: f
                .metadata()
                .map(|m| birth_time(&m))
                .unwrap_or(SystemTime::UNIX_EPOCH),
        });
    Some((rec, alive))
}

/// Regular files (with their metadata) and directories under a set.
struct Tree {
    files: Vec<(RelPath, PathBuf, fs::Metadata)>,
    /// Directories, parents before children, the root first.
    dirs: Vec<PathBuf>,
}

/// The directories of a set, parents before children (for syncing them).
pub(crate) fn dirs_of(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(walk(dir)?.dirs)
}

fn walk(dir: &Path) -> Result<Tree> {
    let mut tree = Tree {
        files: Vec::new(),
        dirs: Vec::new(),
    };
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_owned();
            let source = e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("filesystem loop"));
            PathError::new("reading", &path, source)
        })?;
        let ft = entry.file_type();
        if ft.is_dir() {
            tree.dirs.push(entry.path().to_owned());
        } else if ft.is_file() {
            let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
            let rel = RelPath::from_path(rel)?;
            let md = entry
                .metadata()
                .map_err(|e| PathError::new("reading", entry.path(), e.into()))?;
            tree.files.push((rel, entry.path().to_owned(), md));
        } else {
            let kind = if ft.is_symlink() {
                "symbolic link"
            } else {
                "special file"
            };
            return Err(StoreError::UnsupportedFile {
                path: entry.path().to_owned(),
                kind,
            });
        }
    }
    Ok(tree)
}

/// Files and bytes under a directory, best effort (for listings).
fn tally(dir: &Path) -> (u64, u64) {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(n, b), md| (n + 1, b + md.len()))
}

/// Checksum and sync one file, returning its digest and the mtime it had
/// before it was read (see [`SetWriter::add_seal`]).
pub fn seal_file(
    engine: &IoEngine,
    path: &Path,
    chunk_size: u64,
) -> Result<(FileDigest, Option<SystemTime>)> {
    let sealed = checksum_file(engine, path, chunk_size)?;
    durable::sync_file(path)?;
    Ok(sealed)
}

/// [`seal_file`] without the sync.
pub fn checksum_file(
    engine: &IoEngine,
    path: &Path,
    chunk_size: u64,
) -> Result<(FileDigest, Option<SystemTime>)> {
    let mtime = fs::metadata(path).at("reading", path)?.modified().ok();
    let digest = engine.digest_file(path, chunk_size)?;
    Ok((digest, mtime))
}

fn dir_names(dir: &Path) -> Result<Vec<String>, PathError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PathError::new("listing", dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.at("listing", dir)?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>> {
    let f = File::open(path).at("opening", path)?;
    let mut bytes = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .at("reading", path)?;
    if bytes.len() > max {
        return Err(StoreError::Manifest {
            path: path.to_owned(),
            source: ManifestError::TooLarge {
                size: bytes.len(),
                max,
            },
        });
    }
    Ok(bytes)
}

fn remove_tree(path: &Path) -> Result<(), PathError> {
    match fs::remove_dir_all(path) {
        Ok(()) => durable::sync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PathError::new("removing", path, e)),
    }
}

fn check_layout(path: &Path) -> Result<()> {
    match fs::read_to_string(path) {
        Ok(s) => {
            let found = s.trim().to_owned();
            let ok = found
                .strip_prefix(LAYOUT_TAG)
                .map(str::trim)
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|v| (1..=LAYOUT_VERSION).contains(&v));
            if ok {
                Ok(())
            } else {
                Err(StoreError::FutureLayout {
                    path: path.to_owned(),
                    found,
                })
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let body = format!("{LAYOUT_TAG} {LAYOUT_VERSION}\n");
            match durable::write_atomic(path, body.as_bytes(), 0o644) {
                // Another opener of the same new store got there first.
                Err(_) if fs::read_to_string(path).is_ok() => check_layout(path),
                other => Ok(other?),
            }
        }
        Err(e) => Err(PathError::new("reading", path, e).into()),
    }
}
