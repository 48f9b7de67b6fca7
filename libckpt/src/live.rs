//! Live sets: the sets a daemon is absorbing writes into.
//!
//! The FUSE layer only translates; the decisions are made here: which sets
//! accept writes, when a file is sealed (its last writer closed it: the
//! crc32c is computed in the background, from the page cache, so `close()`
//! never waits), when a set may be committed (no file open for writing, every
//! seal done), and when an idle set is committed on the application's behalf.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata};
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::background::Background;
use crate::chunk::FileDigest;
use crate::durable::{sync_file, IoContext};
use crate::io::IoEngine;
use crate::manifest::Manifest;
use crate::path::{JobName, RelPath, SetName};
use crate::set::SetState;
use crate::store::{SetWriter, Store, StoreError};

/// Why a live-set operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("set {job}/{set} is not open for writing (it is {state})")]
    ReadOnly {
        job: JobName,
        set: SetName,
        state: String,
    },
    #[error("set {job}/{set} has files open for writing: {files}")]
    FilesOpen {
        job: JobName,
        set: SetName,
        files: String,
    },
    #[error("no set {job}/{set}")]
    NoSuchSet { job: JobName, set: SetName },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LiveError {
    /// The errno a filesystem call should fail with.
    pub fn errno(&self) -> i32 {
        match self {
            LiveError::ReadOnly { .. } => libc::EROFS,
            LiveError::FilesOpen { .. } => libc::EBUSY,
            LiveError::NoSuchSet { .. } => libc::ENOENT,
            LiveError::Store(StoreError::SetExists { .. }) => libc::EEXIST,
            LiveError::Store(StoreError::Engine(e)) => e.raw_os_error().unwrap_or(libc::EIO),
            LiveError::Store(StoreError::Io(e)) => e.source.raw_os_error().unwrap_or(libc::EIO),
            LiveError::Store(StoreError::Name(_)) => libc::EINVAL,
            LiveError::Store(_) => libc::EIO,
        }
    }
}

type Key = (JobName, SetName);

/// How long a commit waits for files still open to be closed before it is
/// refused: covers the RELEASE the kernel sends after close(2) returned.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Called after a set is committed.
pub type CommitHook = Box<dyn Fn(&JobName, &SetName) + Send + Sync>;

/// A set's state as the mount shows it (`user.ckptfs.state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveState {
    /// Files are open for writing, or seals are still being computed.
    Writing,
    /// Every file is closed and sealed; waiting for a commit.
    Sealed,
    /// Committed.
    Complete,
    /// Any other state of the store (abandoned, uncommitted, damaged).
    Other(String),
}

impl LiveState {
    pub fn label(&self) -> &str {
        match self {
            LiveState::Writing => "writing",
            LiveState::Sealed => "sealed",
            LiveState::Complete => "complete",
            LiveState::Other(s) => s,
        }
    }
}

/// A file of a live set with write handles open.
struct OpenFile {
    /// Its name now: follows renames (of it or of a directory above it);
    /// `None` once it was unlinked or replaced by a rename over it.
    rel: Option<RelPath>,
    handles: u32,
}

struct LiveSet {
    writer: SetWriter,
    /// Files open for writing, by a number the caller gives each file that
    /// stays the same across renames and unlinks (the mount's inode number).
    open: BTreeMap<u64, OpenFile>,
    pending_seals: u32,
    last_activity: Instant,
}

impl LiveSet {
    fn open_writers(&self) -> u32 {
        self.open.values().map(|o| o.handles).sum()
    }

    fn open_names(&self) -> Vec<String> {
        self.open
            .values()
            .map(|o| match &o.rel {
                Some(r) => r.to_string(),
                None => "(deleted file)".to_owned(),
            })
            .collect()
    }

    fn is_open(&self, rel: &RelPath) -> bool {
        self.open.values().any(|o| o.rel.as_ref() == Some(rel))
    }
}

/// Files at least this big are synced as they are sealed, so their
/// writeback overlaps whatever the job does before it commits; the fsync's
/// fixed cost (a journal commit, a cache flush) is small beside their
/// bytes. Smaller ones are left to the commit, which syncs them together.
const SYNC_AT_SEAL: u64 = 8 << 20;

/// Files smaller than this are sealed on the thread that reports their
/// close. Handing a 64 KiB seal to the pool wakes a seal thread, which on
/// 2 cores competes with the writer's next file: sealing in place took
/// 10 000 such files on a tmpfs cache from about 4,150 to 4,650 files/s.
const SEAL_INLINE: u64 = 1 << 20;

/// A seal computed after the last close: the digest, the mtime before it
/// (from `closed`, the file's metadata taken at the close), and whether
/// the bytes were synced too.
fn seal_in_background(
    engine: &IoEngine,
    path: &Path,
    file: Option<File>,
    chunk_size: u64,
    closed: io::Result<Metadata>,
) -> Result<(FileDigest, Option<SystemTime>, bool), StoreError> {
    let closed = closed.at("reading", path)?;
    let mtime = closed.modified().ok();
    let digest = match file {
        Some(f) => engine.digest_open_file(f, path, closed.len(), chunk_size)?,
        None => engine.digest_file(path, chunk_size)?,
    };
    let synced = digest.size >= SYNC_AT_SEAL;
    if synced {
        sync_file(path)?;
    }
    Ok((digest, mtime, synced))
}

/// `rel` with its prefix `from` replaced by `to`, if `rel` is `from` or lies
/// under it.
fn moved(rel: &RelPath, from: &RelPath, to: &RelPath) -> Option<RelPath> {
    if rel == from {
        return Some(to.clone());
    }
    let rest = rel
        .as_str()
        .strip_prefix(from.as_str())?
        .strip_prefix('/')?;
    RelPath::new(format!("{to}/{rest}")).ok()
}

/// One live set, for status.
#[derive(Debug, Clone, Serialize)]
pub struct LiveSummary {
    pub job: JobName,
    pub set: SetName,
    pub state: String,
    pub open_files: Vec<String>,
    pub pending_seals: u32,
    pub idle_seconds: u64,
}

struct Shared {
    store: Store,
    /// Buffered reads: a seal right after close finds the bytes in the page
    /// cache instead of reading them back from the device.
    seal_engine: Arc<IoEngine>,
    sets: Mutex<HashMap<Key, LiveSet>>,
    sealed: Condvar,
    /// Job → idle time after which its sets are committed ("*" = any job).
    idle_rules: BTreeMap<String, Duration>,
    sealer: Background,
    /// Told after every commit (the drain wakes up).
    on_commit: Mutex<Vec<CommitHook>>,
}

/// The daemon's live sets. Cheap to clone.
#[derive(Clone)]
pub struct LiveSets {
    shared: Arc<Shared>,
}

impl LiveSets {
    /// `seal_engine` should read through the page cache (`direct: false`).
    pub fn new(
        store: Store,
        seal_engine: Arc<IoEngine>,
        idle_rules: BTreeMap<String, Duration>,
    ) -> Result<LiveSets, StoreError> {
        let sealer = Background::start("ckptfs-seal", 2).map_err(|e| {
            StoreError::Io(crate::durable::PathError::new(
                "starting seal threads for",
                store.root(),
                e,
            ))
        })?;
        Ok(LiveSets {
            shared: Arc::new(Shared {
                store,
                seal_engine,
                sets: Mutex::new(HashMap::new()),
                sealed: Condvar::new(),
                idle_rules,
                sealer,
                on_commit: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Call `f` after every successful commit.
    pub fn on_commit(&self, f: CommitHook) {
        self.shared
            .on_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, LiveSet>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.shared.sets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a new set (mkdir of `/ckpt/JOB/SET`).
    pub fn create_set(&self, job: &JobName, set: &SetName) -> Result<(), LiveError> {
        let writer = self.shared.store.create_set(job, set)?;
        self.lock().insert(
            (job.clone(), set.clone()),
            LiveSet {
                writer,
                open: BTreeMap::new(),
                pending_seals: 0,
                last_activity: Instant::now(),
            },
        );
        Ok(())
    }

    /// True when the set accepts writes.
    pub fn is_live(&self, job: &JobName, set: &SetName) -> bool {
        self.lock().contains_key(&(job.clone(), set.clone()))
    }

    fn read_only(&self, job: &JobName, set: &SetName) -> LiveError {
        let state = match self.shared.store.info(job, set) {
            Ok(Some(info)) => info.state.label().to_owned(),
            Ok(None) => {
                return LiveError::NoSuchSet {
                    job: job.clone(),
                    set: set.clone(),
                }
            }
            Err(e) => e.to_string(),
        };
        LiveError::ReadOnly {
            job: job.clone(),
            set: set.clone(),
            state,
        }
    }

    /// Refuse a modification of a set that is not live (EROFS).
    pub fn check_writable(&self, job: &JobName, set: &SetName) -> Result<(), LiveError> {
        let mut sets = self.lock();
        match sets.get_mut(&(job.clone(), set.clone())) {
            Some(s) => {
                s.last_activity = Instant::now();
                Ok(())
            }
            None => {
                drop(sets);
                Err(self.read_only(job, set))
            }
        }
    }

    /// A file of a live set was opened for writing. `id` names the file
    /// for [`closed_for_write`](Self::closed_for_write) and must stay the
    /// same across renames and unlinks (an inode number).
    pub fn opened_for_write(
        &self,
        job: &JobName,
        set: &SetName,
        id: u64,
        rel: &RelPath,
    ) -> Result<(), LiveError> {
        let mut sets = self.lock();
        match sets.get_mut(&(job.clone(), set.clone())) {
            Some(s) => {
                s.open
                    .entry(id)
                    .or_insert_with(|| OpenFile {
                        rel: Some(rel.clone()),
                        handles: 0,
                    })
                    .handles += 1;
                s.last_activity = Instant::now();
                Ok(())
            }
            None => {
                drop(sets);
                Err(self.read_only(job, set))
            }
        }
    }

    /// A write handle of file `id` was closed. On the last one the file is
    /// sealed under the name it has now. Called from FUSE's RELEASE, which
    /// the kernel sends after `close()` has returned: a file below
    /// [`SEAL_INLINE`] is sealed on the calling thread, bigger ones on the
    /// seal pool so the request threads stay free.
    ///
    /// `file`, when given, is the last writer's descriptor, open for reading
    /// without updating atime: the seal reads through it rather than
    /// opening the file again by name.
    pub fn closed_for_write(&self, id: u64, file: Option<File>) {
        let mut sets = self.lock();
        let Some((key, s)) = sets.iter_mut().find(|(_, s)| s.open.contains_key(&id)) else {
            return;
        };
        let key = key.clone();
        s.last_activity = Instant::now();
        let Some(o) = s.open.get_mut(&id) else { return };
        if o.handles > 1 {
            o.handles -= 1;
            return;
        }
        let rel = s.open.remove(&id).and_then(|o| o.rel);
        // An unlinked file has nothing to seal; a commit may be waiting
        // for it to close.
        let Some(rel) = rel else {
            drop(sets);
            self.shared.sealed.notify_all();
            return;
        };
        s.pending_seals += 1;
        let path = rel.under(s.writer.dir());
        drop(sets);
        let this = self.clone();
        // One stat picks the thread and gives the seal its mtime.
        let closed = match &file {
            Some(f) => f.metadata(),
            None => fs::metadata(&path),
        };
        let small = closed.as_ref().is_ok_and(|m| m.len() < SEAL_INLINE);
        let job = move || {
            let chunk = this.shared.store.options().chunk_size;
            let result = seal_in_background(&this.shared.seal_engine, &path, file, chunk, closed);
            let mut sets = this.lock();
            if let Some(s) = sets.get_mut(&key) {
                s.pending_seals -= 1;
                match result {
                    Ok((digest, mtime, synced)) => s.writer.add_seal(&rel, digest, mtime, synced),
                    // Commit checksums an unsealed file itself; a file
                    // removed meanwhile simply has no seal.
                    Err(e) => tracing::debug!(file = %path.display(), error = %e, "seal skipped"),
                }
            }
            drop(sets);
            this.shared.sealed.notify_all();
        };
        if small {
            job();
        } else {
            self.shared.sealer.spawn(job);
        }
    }

    /// A file of a live set was removed.
    pub fn removed(&self, job: &JobName, set: &SetName, rel: &RelPath) {
        if let Some(s) = self.lock().get_mut(&(job.clone(), set.clone())) {
            s.writer.drop_seal(rel);
            for o in s.open.values_mut() {
                if o.rel.as_ref() == Some(rel) {
                    o.rel = None;
                }
            }
        }
    }

    /// A file or directory of a live set was renamed (over whatever was at
    /// `to`).
    pub fn renamed(&self, job: &JobName, set: &SetName, from: &RelPath, to: &RelPath) {
        if let Some(s) = self.lock().get_mut(&(job.clone(), set.clone())) {
            s.writer.rename_seal(from, to);
            for o in s.open.values_mut() {
                let Some(rel) = &o.rel else { continue };
                if let Some(new) = moved(rel, from, to) {
                    o.rel = Some(new);
                } else if rel == to {
                    // Replaced by the rename.
                    o.rel = None;
                }
            }
        }
    }

    /// The state the mount shows for a set.
    pub fn state(&self, job: &JobName, set: &SetName) -> Result<LiveState, LiveError> {
        if let Some(s) = self.lock().get(&(job.clone(), set.clone())) {
            return Ok(if s.open_writers() > 0 || s.pending_seals > 0 {
                LiveState::Writing
            } else {
                LiveState::Sealed
            });
        }
        match self.shared.store.info(job, set)? {
            Some(i) if i.state == SetState::Complete => Ok(LiveState::Complete),
            Some(i) => Ok(LiveState::Other(i.state.label().to_owned())),
            None => Err(LiveError::NoSuchSet {
                job: job.clone(),
                set: set.clone(),
            }),
        }
    }

    /// The state of one file: writing (open for writing or its seal is
    /// being computed), sealed, or complete.
    pub fn file_state(
        &self,
        job: &JobName,
        set: &SetName,
        rel: &RelPath,
    ) -> Result<LiveState, LiveError> {
        if let Some(s) = self.lock().get(&(job.clone(), set.clone())) {
            return Ok(if s.is_open(rel) || s.writer.sealed(rel).is_none() {
                LiveState::Writing
            } else {
                LiveState::Sealed
            });
        }
        self.state(job, set)
    }

    /// Commit a live set: refused while files are open for writing; waits
    /// for the seals under way.
    pub fn commit(&self, job: &JobName, set: &SetName) -> Result<Manifest, LiveError> {
        let key = (job.clone(), set.clone());
        // close(2) returns before the kernel tells the daemon (FUSE RELEASE
        // is sent in the background): a file closed just before the commit
        // gets a moment to be seen closed.
        let grace = Instant::now() + CLOSE_GRACE;
        let mut sets = self.lock();
        loop {
            let Some(s) = sets.get(&key) else {
                drop(sets);
                return Err(match self.shared.store.info(job, set)? {
                    Some(i) if i.state == SetState::Complete => {
                        LiveError::Store(StoreError::AlreadyComplete {
                            job: job.clone(),
                            set: set.clone(),
                        })
                    }
                    _ => self.read_only(job, set),
                });
            };
            if s.open_writers() > 0 {
                let now = Instant::now();
                if now < grace {
                    sets = self
                        .shared
                        .sealed
                        .wait_timeout(sets, grace - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
                let files = s.open_names().join(", ");
                return Err(LiveError::FilesOpen {
                    job: job.clone(),
                    set: set.clone(),
                    files,
                });
            }
            if s.pending_seals == 0 {
                break;
            }
            sets = self
                .shared
                .sealed
                .wait(sets)
                .unwrap_or_else(|p| p.into_inner());
        }
        let live = sets.remove(&key).ok_or_else(|| LiveError::NoSuchSet {
            job: job.clone(),
            set: set.clone(),
        })?;
        drop(sets);
        // Committing reads unsealed files; nobody can open the set for
        // writing meanwhile because it is no longer live.
        let result = live.writer.commit();
        match &result {
            Ok(_) => {
                for f in self
                    .shared
                    .on_commit
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                {
                    f(job, set);
                }
            }
            Err(e) => {
                tracing::warn!(job = %job, set = %set, error = %e, "commit failed; the set stays incomplete")
            }
        }
        Ok(result?)
    }

    /// Give up a live set (rmdir of an emptied set, or forced unmount):
    /// it becomes abandoned and `delete` removes it.
    pub fn discard(&self, job: &JobName, set: &SetName, delete: bool) -> Result<(), LiveError> {
        let live = self.lock().remove(&(job.clone(), set.clone()));
        drop(live);
        if delete {
            self.shared.store.delete_set_keep_job(job, set)?;
        }
        Ok(())
    }

    /// Commit the sets whose job has an idle rule and that were idle (no
    /// file open, no activity) for at least its time. Returns what was
    /// committed; failures are logged and the set stays live.
    pub fn commit_idle(&self) -> Vec<(JobName, SetName)> {
        let now = Instant::now();
        let due: Vec<Key> = self
            .lock()
            .iter()
            .filter(|((job, _), s)| {
                let rule = self
                    .shared
                    .idle_rules
                    .get(job.as_str())
                    .or_else(|| self.shared.idle_rules.get("*"));
                matches!(rule, Some(t) if s.open_writers() == 0
                    && s.pending_seals == 0
                    && now.duration_since(s.last_activity) >= *t)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut done = Vec::new();
        for (job, set) in due {
            match self.commit(&job, &set) {
                Ok(_) => {
                    tracing::info!(job = %job, set = %set, "committed after the idle time");
                    done.push((job, set));
                }
                Err(e) => tracing::warn!(job = %job, set = %set, error = %e, "idle commit failed"),
            }
        }
        done
    }

    /// Every live set, for status and for refusing an unmount.
    pub fn summary(&self) -> Vec<LiveSummary> {
        let now = Instant::now();
        let mut out: Vec<LiveSummary> = self
            .lock()
            .iter()
            .map(|((job, set), s)| LiveSummary {
                job: job.clone(),
                set: set.clone(),
                state: if s.open_writers() > 0 || s.pending_seals > 0 {
                    "writing"
                } else {
                    "sealed"
                }
                .to_owned(),
                open_files: s.open_names(),
                pending_seals: s.pending_seals,
                idle_seconds: now.duration_since(s.last_activity).as_secs(),
            })
            .collect();
        out.sort_by(|a, b| (&a.job, &a.set).cmp(&(&b.job, &b.set)));
        out
    }

    /// Files open for writing, as `job/set/path`.
    pub fn open_files(&self) -> Vec<String> {
        self.summary()
            .into_iter()
            .flat_map(|s| {
                let prefix = format!("{}/{}", s.job, s.set);
                s.open_files
                    .into_iter()
                    .map(move |f| format!("{prefix}/{f}"))
            })
            .collect()
    }
}

impl crate::drain::EarlySource for LiveSets {
    fn sealed(&self) -> Vec<Manifest> {
        let host = crate::store::host_name();
        self.lock()
            .iter()
            .filter_map(|((job, set), s)| {
                // A file still open for writing may change: not yet.
                let files: Vec<_> = s
                    .writer
                    .sealed_entries()
                    .into_iter()
                    .filter(|f| !s.is_open(&f.path))
                    .collect();
                (!files.is_empty()).then(|| {
                    Manifest::new(
                        job.clone(),
                        set.clone(),
                        s.writer.created(),
                        host.clone(),
                        files,
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn live(idle: &[(&str, u64)]) -> (tempfile::TempDir, LiveSets) {
        let d = crate::testutil::scratch("ckpt-live-");
        let engine = crate::testutil::fallback_engine();
        let store = Store::open(d.path(), engine.clone(), StoreOptions::default()).unwrap();
        let rules = idle
            .iter()
            .map(|(j, s)| (j.to_string(), Duration::from_millis(*s)))
            .collect();
        (d, LiveSets::new(store, engine, rules).unwrap())
    }

    fn names() -> (JobName, SetName, RelPath) {
        (
            JobName::new("j").unwrap(),
            SetName::new("s").unwrap(),
            RelPath::new("f.bin").unwrap(),
        )
    }

    #[test]
    fn seal_on_last_close_then_commit() {
        let (_d, live) = live(&[]);
        let (j, s, f) = names();
        live.create_set(&j, &s).unwrap();
        let path = f.under(&live.store().set_dir(&j, &s));
        std::fs::write(&path, vec![5u8; 3 << 20]).unwrap();
        live.opened_for_write(&j, &s, 1, &f).unwrap();
        live.opened_for_write(&j, &s, 1, &f).unwrap();
        assert_eq!(live.state(&j, &s).unwrap(), LiveState::Writing);
        live.closed_for_write(1, None);
        let e = live.commit(&j, &s).unwrap_err();
        assert!(matches!(e, LiveError::FilesOpen { .. }), "{e}");
        assert!(e.to_string().contains("f.bin"));
        assert_eq!(e.errno(), libc::EBUSY);
        live.closed_for_write(1, None);
        let m = live.commit(&j, &s).unwrap();
        assert_eq!(m.total_bytes, 3 << 20);
        assert_eq!(live.state(&j, &s).unwrap(), LiveState::Complete);
        assert!(!live.is_live(&j, &s));
        let e = live.opened_for_write(&j, &s, 1, &f).unwrap_err();
        assert_eq!(e.errno(), libc::EROFS);
        assert!(matches!(
            live.commit(&j, &s),
            Err(LiveError::Store(StoreError::AlreadyComplete { .. }))
        ));
        assert!(live.store().verify(&j, &s).unwrap().ok());
    }

    #[test]
    fn seal_reads_through_the_writers_descriptor() {
        let (_d, live) = live(&[]);
        let (j, s, f) = names();
        live.create_set(&j, &s).unwrap();
        let path = f.under(&live.store().set_dir(&j, &s));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        live.opened_for_write(&j, &s, 1, &f).unwrap();
        let fd = File::open(&path).unwrap();
        // Gone by name while it is sealed: only the descriptor reaches it.
        let aside = path.with_extension("aside");
        std::fs::rename(&path, &aside).unwrap();
        live.closed_for_write(1, Some(fd));
        std::fs::rename(&aside, &path).unwrap();
        assert_eq!(live.file_state(&j, &s, &f).unwrap(), LiveState::Sealed);
        let m = live.commit(&j, &s).unwrap();
        assert_eq!(m.files[0].size, data.len() as u64);
        assert!(live.store().verify(&j, &s).unwrap().ok());
    }

    #[test]
    fn sealed_state_and_file_state() {
        let (_d, live) = live(&[]);
        let (j, s, f) = names();
        live.create_set(&j, &s).unwrap();
        std::fs::write(f.under(&live.store().set_dir(&j, &s)), b"abc").unwrap();
        live.opened_for_write(&j, &s, 1, &f).unwrap();
        assert_eq!(live.file_state(&j, &s, &f).unwrap(), LiveState::Writing);
        live.closed_for_write(1, None);
        // Wait for the background seal.
        for _ in 0..500 {
            if live.state(&j, &s).unwrap() == LiveState::Sealed {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(live.state(&j, &s).unwrap(), LiveState::Sealed);
        assert_eq!(live.file_state(&j, &s, &f).unwrap(), LiveState::Sealed);
        // Modified after the seal: no longer sealed.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(f.under(&live.store().set_dir(&j, &s)), b"abcd").unwrap();
        assert_eq!(live.file_state(&j, &s, &f).unwrap(), LiveState::Writing);
        let m = live.commit(&j, &s).unwrap();
        assert_eq!(m.files[0].size, 4, "commit re-sealed the changed file");
    }

    #[test]
    fn idle_rule_commits_only_matching_idle_sets() {
        let (_d, live) = live(&[("j", 30)]);
        let (j, s, f) = names();
        live.create_set(&j, &s).unwrap();
        let other = JobName::new("other").unwrap();
        live.create_set(&other, &s).unwrap();
        live.opened_for_write(&j, &s, 1, &f).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert!(live.commit_idle().is_empty(), "open file must block");
        live.closed_for_write(1, None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(live.commit_idle(), vec![(j.clone(), s.clone())]);
        assert!(live.is_live(&other, &s), "job without a rule stays live");
    }

    #[test]
    fn discard_deletes() {
        let (_d, live) = live(&[]);
        let (j, s, _) = names();
        live.create_set(&j, &s).unwrap();
        live.discard(&j, &s, true).unwrap();
        assert!(live.store().info(&j, &s).unwrap().is_none());
    }
}
