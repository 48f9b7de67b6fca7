//! The `/ckpt` filesystem: translates FUSE requests into operations on the
//! cache directory and the live sets of libckpt.
//!
//! `/ckpt/<job>/<set>/…` is `<cache>/<job>/<set>/…`. Regular files are
//! opened in the cache and, where the kernel allows it, handed to the kernel
//! as passthrough backing files, so their bytes never cross into this
//! process; elsewhere reads and writes come here and go to the same file
//! descriptor. Decisions (which sets accept writes, sealing, commit) are
//! libckpt's: see [`libckpt::live`].

mod attr;
mod handles;
mod inodes;
pub mod mount;
mod place;
pub mod remote;

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use libckpt::live::{LiveError, LiveSets};
use serde::Serialize;

use handles::{DirHandle, FileHandleEntry, Handles};
use inodes::Inodes;
use place::Place;

pub use inodes::ROOT;

/// How long the kernel may cache names and attributes. Short: other
/// processes (the drain, `ckptfs rm`) change the cache behind our back.
const TTL: Duration = Duration::from_secs(1);

/// Extended attribute holding a set's or file's state.
pub const XATTR_STATE: &str = "user.ckptfs.state";
/// Extended attribute whose setting commits a set.
pub const XATTR_COMMIT: &str = "user.ckptfs.commit";

/// Which data path regular files use.
#[derive(Debug, Clone, Serialize)]
pub struct DataPath {
    /// "passthrough" or "fallback".
    pub mode: String,
    /// Why passthrough is not in use, when it is not.
    pub reason: Option<String>,
    /// On the fallback path, how write handles reach the daemon: "direct"
    /// (past the kernel's page cache) or "buffered" (kernels before 6.6).
    pub writes: Option<String>,
}

/// Counters for status.
#[derive(Debug, Default)]
pub struct Counters {
    pub passthrough_opens: AtomicU64,
    pub fallback_opens: AtomicU64,
    pub fallback_bytes_written: AtomicU64,
    pub fallback_bytes_read: AtomicU64,
}

/// State shared between the filesystem and the daemon's control socket.
pub struct Shared {
    pub live: LiveSets,
    /// Sets on lower tiers, shown and staged in on first use.
    pub remote: Arc<remote::Remote>,
    pub root: PathBuf,
    pub want_passthrough: bool,
    pub passthrough: AtomicBool,
    /// The kernel lets direct-I/O files be mapped shared (Linux 6.6+), so
    /// the fallback path may open write handles with FOPEN_DIRECT_IO.
    pub direct_io_mmap: AtomicBool,
    pub passthrough_reason: Mutex<Option<String>>,
    pub counters: Counters,
}

impl Shared {
    pub fn data_path(&self) -> DataPath {
        let on = self.passthrough.load(Ordering::Relaxed);
        if on {
            return DataPath {
                mode: "passthrough".to_owned(),
                reason: None,
                writes: None,
            };
        }
        let direct = self.direct_io_mmap.load(Ordering::Relaxed);
        DataPath {
            mode: "fallback".to_owned(),
            reason: lock(&self.passthrough_reason).clone(),
            writes: Some(if direct { "direct" } else { "buffered" }.to_owned()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Open flags for what a handle's `close()` needs. Only a write handle has
/// something for `close()` to report: that the daemon died under it
/// (ENOTCONN). A read handle skips the FLUSH round trip; reading a file
/// again while the kernel still holds its name ran 1.55x faster
/// (bench/RESULTS.md, 2026-11-29).
fn close_flags(entry: &FileHandleEntry) -> FopenFlags {
    if entry.write {
        FopenFlags::empty()
    } else {
        FopenFlags::FOPEN_NOFLUSH
    }
}

/// Give a file the daemon has just created to the caller, with exactly
/// `perm`, and return its metadata. Every `create` waits for this, so each
/// step runs only when needed: for a caller of the daemon's own uid and
/// gid it is one `fstat` instead of `fchown`, `chmod` and `fstat`.
fn hand_over(file: &fs::File, uid: u32, gid: u32, perm: u32) -> io::Result<fs::Metadata> {
    let md = file.metadata()?;
    let chown = md.uid() != uid || md.gid() != gid;
    if chown {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    }
    // The daemon's own umask may have narrowed the bits asked for.
    let chmod = md.mode() & 0o7777 != perm;
    if chmod {
        file.set_permissions(fs::Permissions::from_mode(perm))?;
    }
    if chown || chmod {
        file.metadata()
    } else {
        Ok(md)
    }
}

fn live_errno(e: &LiveError) -> Errno {
    Errno::from_i32(e.errno())
}

pub struct CkptFs {
    shared: Arc<Shared>,
    inodes: Mutex<Inodes>,
    handles: Mutex<Handles>,
}

impl CkptFs {
    pub fn new(shared: Arc<Shared>) -> CkptFs {
        CkptFs {
            shared,
            inodes: Mutex::new(Inodes::new()),
            handles: Mutex::new(Handles::default()),
        }
    }

    fn backing(&self, rel: &Path) -> PathBuf {
        self.shared.root.join(rel)
    }

    /// Relative path of `ino`, or ENOENT.
    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.inodes).path(ino.0).ok_or(Errno::ENOENT)
    }

    /// Relative path of `name` inside directory `parent`, classified.
    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<(PathBuf, Place), Errno> {
        let dir = self.path_of(parent)?;
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        let rel = dir.join(name);
        let place = Place::of(&rel).map_err(|_| {
            if name.len() > libckpt::path::MAX_NAME_LEN {
                Errno::ENAMETOOLONG
            } else {
                Errno::EINVAL
            }
        })?;
        Ok((rel, place))
    }

    /// Refuse changes to anything but a live set (EROFS), and anything at
    /// the job level or above that is not a directory operation (EPERM).
    fn writable(&self, place: &Place) -> Result<(), Errno> {
        match place.set() {
            Some((job, set)) => self
                .shared
                .live
                .check_writable(job, set)
                .map_err(|e| live_errno(&e)),
            None => Err(Errno::EPERM),
        }
    }

    fn attr_of(&self, ino: u64, rel: &Path) -> Result<fuser::FileAttr, Errno> {
        let md = fs::symlink_metadata(self.backing(rel)).map_err(|e| errno_of(&e))?;
        Ok(attr::from_metadata(ino, &md, ino == ROOT))
    }

    /// Look a path up for the kernel: stat it and hand out its number.
    fn entry(&self, rel: &Path) -> Result<fuser::FileAttr, Errno> {
        let md = match fs::symlink_metadata(self.backing(rel)) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return self.remote_entry(rel).ok_or(Errno::ENOENT)
            }
            Err(e) => return Err(errno_of(&e)),
        };
        let ino = lock(&self.inodes).lookup(rel);
        Ok(attr::from_metadata(ino, &md, false))
    }

    /// A job or set that only a lower tier holds. A job gets its directory
    /// in the cache; a set is shown as a read-only directory until
    /// something inside it is used.
    fn remote_entry(&self, rel: &Path) -> Option<fuser::FileAttr> {
        if self.shared.remote.is_empty() {
            return None;
        }
        match Place::of(rel).ok()? {
            Place::Job(job) => {
                self.shared.remote.jobs().contains(&job).then_some(())?;
                let path = self.backing(rel);
                let _ = fs::DirBuilder::new().mode(0o755).create(&path);
                let md = fs::symlink_metadata(&path).ok()?;
                let ino = lock(&self.inodes).lookup(rel);
                Some(attr::from_metadata(ino, &md, false))
            }
            Place::Set(job, set) => {
                let found = self.shared.remote.find(&job, &set)?;
                let job_md = fs::symlink_metadata(self.backing(Path::new(job.as_str()))).ok()?;
                let ino = lock(&self.inodes).lookup(rel);
                Some(attr::remote_set(ino, &job_md, found.created))
            }
            _ => None,
        }
    }

    /// Bring a tier-only set into the cache before anything inside it is
    /// used.
    fn ensure_local(&self, place: &Place) -> Result<(), Errno> {
        let Some((job, set)) = place.set() else {
            return Ok(());
        };
        if self.shared.remote.is_empty()
            || self
                .backing(&Path::new(job.as_str()).join(set.as_str()))
                .exists()
        {
            return Ok(());
        }
        self.shared
            .remote
            .stage_in(self.shared.live.store(), job, set)
            .map_err(Errno::from_i32)
    }

    /// Give a newly created file or directory to the caller.
    fn chown_to(&self, path: &Path, req: &Request) -> Result<(), Errno> {
        std::os::unix::fs::lchown(path, Some(req.uid()), Some(req.gid())).map_err(|e| errno_of(&e))
    }

    /// Open the backing file and answer the kernel, with passthrough when
    /// available. Returns the file handle number.
    fn open_backing(
        &self,
        rel: &Path,
        ino: u64,
        flags: i32,
        create_mode: Option<u32>,
    ) -> io::Result<(u64, Arc<FileHandleEntry>)> {
        let acc = flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY;
        let passthrough = self.shared.passthrough.load(Ordering::Relaxed);
        let mut keep = flags & (libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME);
        if passthrough {
            // The kernel does the I/O itself, so the application's O_DIRECT
            // alignment applies to it; on the fallback path buffers arrive
            // here unaligned.
            keep |= flags & libc::O_DIRECT;
        }
        // A write handle is opened for reading too, without updating atime,
        // so that its last close can seal the file through it instead of
        // opening it again by name. Not with O_DIRECT, whose alignment the
        // seal's reads do not keep. The application's own reads through
        // such a handle leave atime alone as well: a checkpoint being
        // written is not being accessed.
        let open = |seal_through: bool| {
            let extra = if seal_through { libc::O_NOATIME } else { 0 };
            let mut o = OpenOptions::new();
            o.read(acc != libc::O_WRONLY || seal_through)
                .write(write)
                .custom_flags(keep | extra | libc::O_NOFOLLOW | libc::O_CLOEXEC);
            if flags & libc::O_TRUNC != 0 && write {
                o.truncate(true);
            }
            if let Some(mode) = create_mode {
                o.create_new(true).mode(mode);
            }
            o.open(self.backing(rel))
        };
        let seal_through = write && keep & libc::O_DIRECT == 0;
        let (file, seal_through) = match open(seal_through) {
            // A daemon that is neither root nor the file's owner may not
            // read it, or not without atime: open it as asked. (A file this
            // open creates is the daemon's, so the retry never re-creates.)
            Err(e)
                if seal_through
                    && create_mode.is_none()
                    && matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
            {
                (open(false)?, false)
            }
            r => (r?, seal_through),
        };
        let entry = Arc::new(FileHandleEntry {
            file,
            ino,
            write,
            seal_through,
            backing: Mutex::new(None),
        });
        let fh = lock(&self.handles).insert_file(entry.clone());
        Ok((fh, entry))
    }

    /// Open flags of a handle on the fallback path. Write handles skip the
    /// kernel's page cache: buffered, each write was first copied into
    /// fresh FUSE pages, then by the daemon into the cache file's pages,
    /// and `perf` put the writer's copy on a par with the daemon's
    /// (`ckpt-bench fuse` sequential write: 0.3–0.4× of direct before,
    /// 0.7–0.9× after). Buffered writes were synchronous round trips already;
    /// what changes is that reads through a write handle go to the daemon
    /// too. Needs the kernel to allow shared mappings of such files (Linux
    /// 6.6), else they stay buffered.
    fn fallback_open_flags(&self, entry: &FileHandleEntry) -> FopenFlags {
        if entry.write && self.shared.direct_io_mmap.load(Ordering::Relaxed) {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else {
            close_flags(entry)
        }
    }

    /// Register `entry` with the kernel as a passthrough backing file,
    /// sharing one backing id per inode. `None` means: use the fallback
    /// path for this file.
    fn backing_id<F>(&self, entry: &FileHandleEntry, register: F) -> Option<Arc<fuser::BackingId>>
    where
        F: FnOnce(&File) -> io::Result<fuser::BackingId>,
    {
        if !self.shared.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let mut handles = lock(&self.handles);
        if let Some(id) = handles.backing_for(entry.ino) {
            *lock(&entry.backing) = Some(id.clone());
            return Some(id);
        }
        match register(&entry.file) {
            Ok(id) => {
                let id = Arc::new(id);
                handles.remember_backing(entry.ino, &id);
                *lock(&entry.backing) = Some(id.clone());
                Some(id)
            }
            Err(e) => {
                drop(handles);
                // The kernel refused (no CAP_SYS_ADMIN, stacking depth…):
                // stop asking and say why in status.
                tracing::warn!(error = %e, "kernel refused a passthrough backing file; using the fallback data path");
                self.shared.passthrough.store(false, Ordering::Relaxed);
                *lock(&self.shared.passthrough_reason) =
                    Some(format!("the kernel refused a backing file: {e}"));
                None
            }
        }
    }

    fn note_open(&self, passthrough: bool) {
        let c = &self.shared.counters;
        if passthrough {
            c.passthrough_opens.fetch_add(1, Ordering::Relaxed);
        } else {
            c.fallback_opens.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Track a write handle on a live set's file.
    fn opened_for_write(&self, place: &Place, ino: u64) -> Result<(), Errno> {
        if let Place::InSet(job, set, rel) = place {
            self.shared
                .live
                .opened_for_write(job, set, ino, rel)
                .map_err(|e| live_errno(&e))?;
        }
        Ok(())
    }

    fn state_xattr(&self, place: &Place) -> Result<String, Errno> {
        let state = match place {
            Place::Set(job, set) => self.shared.live.state(job, set),
            Place::InSet(job, set, rel) => self.shared.live.file_state(job, set, rel),
            _ => return Err(Errno::from_i32(libc::ENODATA)),
        };
        match state {
            Ok(s) => Ok(s.label().to_owned()),
            Err(LiveError::NoSuchSet { job, set })
                if self.shared.remote.find(&job, &set).is_some() =>
            {
                // On a lower tier only: complete there, staged in on use.
                Ok("complete".to_owned())
            }
            Err(e) => Err(live_errno(&e)),
        }
    }

    /// Directory entries of `rel`, as `/ckpt` shows them.
    fn list_dir(&self, rel: &Path) -> io::Result<Vec<(u64, FileType, String)>> {
        let place = Place::of(rel).map_err(|_| io::Error::from_raw_os_error(libc::ENOENT))?;
        let mut out = Vec::new();
        for entry in fs::read_dir(self.backing(rel))? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let ft = entry.file_type()?;
            // Only valid job and set directories are shown at the top two
            // levels: the store's own metadata and stray files stay hidden.
            let shown = match place {
                Place::Root => ft.is_dir() && libckpt::path::JobName::new(name.as_str()).is_ok(),
                Place::Job(_) => ft.is_dir() && libckpt::path::SetName::new(name.as_str()).is_ok(),
                _ => true,
            };
            if !shown {
                continue;
            }
            let child = rel.join(&name);
            let ino = lock(&self.inodes)
                .peek(&child)
                .unwrap_or_else(|| std::os::unix::fs::DirEntryExt::ino(&entry));
            out.push((ino, attr::kind(&ft), name));
        }
        // What only the lower tiers hold is listed too (not fetched).
        let remote: Vec<String> = match &place {
            Place::Root if !self.shared.remote.is_empty() => self
                .shared
                .remote
                .jobs()
                .into_iter()
                .map(|j| j.to_string())
                .collect(),
            Place::Job(job) if !self.shared.remote.is_empty() => self
                .shared
                .remote
                .sets(job)
                .into_iter()
                .map(|s| s.set.to_string())
                .collect(),
            _ => Vec::new(),
        };
        for name in remote {
            if !out.iter().any(|(_, _, n)| *n == name) {
                // Not looked up yet: a number no inode of ours uses.
                let ino = (1 << 63) | u64::from(crc32c::crc32c(name.as_bytes()));
                out.push((ino, FileType::Directory, name));
            }
        }
        out.sort_by(|a, b| a.2.cmp(&b.2));
        Ok(out)
    }
}

impl Filesystem for CkptFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Without this the kernel asks for `security.capability` before
        // every write(2), passthrough or not: a round trip per write, 4096
        // of them for a 4 GiB `dd bs=1M`. With it, the daemon owns
        // stripping setuid/setgid and capabilities on write, truncate and
        // chown; `attr::kept_perm` makes that moot, as no regular file here
        // carries either. Older kernels just lack it.
        let killpriv = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        tracing::debug!(offered = killpriv.is_ok(), "FUSE_HANDLE_KILLPRIV_V2");
        if config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok()
        {
            self.shared.direct_io_mmap.store(true, Ordering::Relaxed);
        }
        if !self.shared.want_passthrough {
            *lock(&self.shared.passthrough_reason) = Some("disabled (--no-passthrough)".into());
            return Ok(());
        }
        let refused = config
            .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
            .is_err();
        if refused || config.set_max_stack_depth(1).is_err() {
            let abi = config.kernel_abi();
            *lock(&self.shared.passthrough_reason) = Some(format!(
                "the kernel does not offer FUSE passthrough (FUSE ABI {abi:?}; needs Linux 6.9 or later)"
            ));
            return Ok(());
        }
        self.shared.passthrough.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // Invalid job or set names simply do not exist.
        let (rel, place) = match self.child(parent, name) {
            Ok(c) => c,
            Err(_) => return reply.error(Errno::ENOENT),
        };
        if let Place::InSet(..) = place {
            if let Err(e) = self.ensure_local(&place) {
                return reply.error(e);
            }
        }
        match self.entry(&rel) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(fh) = fh {
            if let Some(h) = lock(&self.handles).file(fh.0) {
                return match h.file.metadata() {
                    Ok(md) => reply.attr(&TTL, &attr::from_metadata(ino.0, &md, false)),
                    Err(e) => reply.error(errno_of(&e)),
                };
            }
        }
        let attr = self.path_of(ino).and_then(|rel| {
            self.attr_of(ino.0, &rel).or_else(|e| {
                if e != Errno::ENOENT {
                    return Err(e);
                }
                match Place::of(&rel) {
                    // Inside a set evicted since the kernel looked it up.
                    Ok(place @ Place::InSet(..)) => {
                        self.ensure_local(&place)?;
                        self.attr_of(ino.0, &rel)
                    }
                    _ => self.remote_entry(&rel).ok_or(e),
                }
            })
        });
        match attr {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| -> Result<fuser::FileAttr, Errno> {
            let rel = self.path_of(ino)?;
            let place = Place::of(&rel).map_err(|_| Errno::ENOENT)?;
            // A job directory belongs to its owner; everything in a set
            // follows the set's state.
            if !matches!(place, Place::Job(_)) {
                self.writable(&place)?;
            }
            let path = self.backing(&rel);
            if let Some(mode) = mode {
                let is_file = fs::symlink_metadata(&path)
                    .map_err(|e| errno_of(&e))?
                    .is_file();
                let perm = attr::kept_perm(is_file, mode);
                fs::set_permissions(&path, fs::Permissions::from_mode(perm))
                    .map_err(|e| errno_of(&e))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(|e| errno_of(&e))?;
            }
            if let Some(size) = size {
                let handle = fh.and_then(|fh| lock(&self.handles).file(fh.0));
                match handle {
                    Some(h) if h.write => h.file.set_len(size),
                    _ => OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&path)
                        .and_then(|f| f.set_len(size)),
                }
                .map_err(|e| errno_of(&e))?;
            }
            if atime.is_some() || mtime.is_some() {
                let to_time = |t: TimeOrNow| match t {
                    TimeOrNow::SpecificTime(t) => t,
                    TimeOrNow::Now => SystemTime::now(),
                };
                let mut times = fs::FileTimes::new();
                if let Some(a) = atime {
                    times = times.set_accessed(to_time(a));
                }
                if let Some(m) = mtime {
                    times = times.set_modified(to_time(m));
                }
                File::open(&path)
                    .and_then(|f| f.set_times(times))
                    .map_err(|e| errno_of(&e))?;
            }
            self.attr_of(ino.0, &rel)
        })();
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = (|| -> Result<fuser::FileAttr, Errno> {
            let (rel, place) = self.child(parent, name)?;
            let path = self.backing(&rel);
            match &place {
                Place::Root => return Err(Errno::EEXIST),
                Place::Job(_) => {
                    fs::DirBuilder::new()
                        .mode(mode & !umask & 0o755)
                        .create(&path)
                        .map_err(|e| errno_of(&e))?;
                    libckpt::durable::sync_parent(&path).map_err(|e| errno_of(&e.source))?;
                }
                Place::Set(job, set) => {
                    self.shared
                        .live
                        .create_set(job, set)
                        .map_err(|e| live_errno(&e))?;
                }
                Place::InSet(..) => {
                    self.writable(&place)?;
                    fs::DirBuilder::new()
                        .mode(mode & !umask & 0o700)
                        .create(&path)
                        .map_err(|e| errno_of(&e))?;
                }
            }
            self.chown_to(&path, req)?;
            self.entry(&rel)
        })();
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| -> Result<(), Errno> {
            let (rel, place) = self.child(parent, name)?;
            let Place::InSet(job, set, file) = &place else {
                return Err(Errno::EPERM);
            };
            self.writable(&place)?;
            fs::remove_file(self.backing(&rel)).map_err(|e| errno_of(&e))?;
            self.shared.live.removed(job, set, file);
            lock(&self.inodes).unlinked(&rel);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| -> Result<(), Errno> {
            let (rel, place) = self.child(parent, name)?;
            let path = self.backing(&rel);
            match &place {
                Place::Root => return Err(Errno::EBUSY),
                Place::Job(job) => {
                    fs::remove_dir(&path).map_err(|e| errno_of(&e))?;
                    // The store's per-job metadata directory goes with it
                    // when it holds no set any more.
                    let meta = self.shared.root.join(".ckptfs/sets").join(job.as_str());
                    let _ = fs::remove_dir(meta);
                }
                Place::Set(job, set) => {
                    if !self.shared.live.is_live(job, set) {
                        return Err(Errno::EROFS);
                    }
                    if fs::read_dir(&path)
                        .map_err(|e| errno_of(&e))?
                        .next()
                        .is_some()
                    {
                        return Err(Errno::ENOTEMPTY);
                    }
                    self.shared
                        .live
                        .discard(job, set, true)
                        .map_err(|e| live_errno(&e))?;
                }
                Place::InSet(..) => {
                    self.writable(&place)?;
                    fs::remove_dir(&path).map_err(|e| errno_of(&e))?;
                }
            }
            lock(&self.inodes).unlinked(&rel);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| -> Result<(), Errno> {
            let (from, from_place) = self.child(parent, name)?;
            let (to, to_place) = self.child(newparent, newname)?;
            let (Place::InSet(j1, s1, r1), Place::InSet(j2, s2, r2)) = (&from_place, &to_place)
            else {
                // Jobs and sets are named by the store: renaming them would
                // orphan their metadata.
                return Err(Errno::EPERM);
            };
            if (j1, s1) != (j2, s2) {
                return Err(Errno::EXDEV);
            }
            self.writable(&from_place)?;
            if !flags.is_empty() {
                return Err(Errno::EINVAL);
            }
            fs::rename(self.backing(&from), self.backing(&to)).map_err(|e| errno_of(&e))?;
            self.shared.live.renamed(j1, s1, r1, r2);
            lock(&self.inodes).renamed(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = (|| -> Result<fuser::FileAttr, Errno> {
            let from = self.path_of(ino)?;
            let from_place = Place::of(&from).map_err(|_| Errno::ENOENT)?;
            let (to, to_place) = self.child(newparent, newname)?;
            match (&from_place, &to_place) {
                (Place::InSet(j1, s1, _), Place::InSet(j2, s2, _)) if (j1, s1) == (j2, s2) => {}
                // A hard link across sets would tie two checkpoints' bytes
                // together: changing one would corrupt the other.
                _ => return Err(Errno::EPERM),
            }
            self.writable(&to_place)?;
            fs::hard_link(self.backing(&from), self.backing(&to)).map_err(|e| errno_of(&e))?;
            self.entry(&to)
        })();
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags.0;
        let result = (|| -> Result<(u64, Arc<FileHandleEntry>, Place), Errno> {
            let rel = self.path_of(ino)?;
            let place = Place::of(&rel).map_err(|_| Errno::ENOENT)?;
            let write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
            if write {
                self.writable(&place)?;
            }
            let (fh, entry) = match self.open_backing(&rel, ino.0, flags, None) {
                // The kernel may still hold the entry of a file whose set
                // was evicted since its lookup: bring the set back, as a
                // lookup would have.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.ensure_local(&place)?;
                    self.open_backing(&rel, ino.0, flags, None)
                }
                other => other,
            }
            .map_err(|e| errno_of(&e))?;
            if entry.write {
                if let Err(e) = self.opened_for_write(&place, ino.0) {
                    lock(&self.handles).remove_file(fh);
                    return Err(e);
                }
            }
            Ok((fh, entry, place))
        })();
        match result {
            Ok((fh, entry, _)) => match self.backing_id(&entry, |f| reply.open_backing(f)) {
                Some(id) => {
                    self.note_open(true);
                    reply.opened_passthrough(FileHandle(fh), close_flags(&entry), &id)
                }
                None => {
                    self.note_open(false);
                    reply.opened(FileHandle(fh), self.fallback_open_flags(&entry))
                }
            },
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| -> Result<(u64, Arc<FileHandleEntry>, fuser::FileAttr), Errno> {
            let (rel, place) = self.child(parent, name)?;
            if !matches!(place, Place::InSet(..)) {
                // Only directories live above the sets.
                return Err(Errno::EPERM);
            }
            self.writable(&place)?;
            // Checkpoints are private by default: 0600 unless the caller
            // asks for something stricter.
            let perm = mode & !umask & 0o600;
            let path = self.backing(&rel);
            let ino = lock(&self.inodes).lookup(&rel);
            let opened = self.open_backing(&rel, ino, flags, Some(perm));
            let (fh, entry) = match opened {
                Ok(x) => x,
                Err(e) => {
                    lock(&self.inodes).forget(ino, 1);
                    return Err(errno_of(&e));
                }
            };
            let undo = |e: Errno| {
                lock(&self.handles).remove_file(fh);
                let _ = fs::remove_file(&path);
                lock(&self.inodes).forget(ino, 1);
                e
            };
            let md = hand_over(&entry.file, req.uid(), req.gid(), perm)
                .map_err(|e| undo(errno_of(&e)))?;
            if entry.write {
                self.opened_for_write(&place, ino).map_err(undo)?;
            }
            Ok((fh, entry, attr::from_metadata(ino, &md, false)))
        })();
        match result {
            Ok((fh, entry, attr)) => match self.backing_id(&entry, |f| reply.open_backing(f)) {
                Some(id) => {
                    self.note_open(true);
                    reply.created_passthrough(
                        &TTL,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        close_flags(&entry),
                        &id,
                    )
                }
                None => {
                    self.note_open(false);
                    reply.created(
                        &TTL,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        self.fallback_open_flags(&entry),
                    )
                }
            },
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(h) = lock(&self.handles).file(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0usize;
        while got < buf.len() {
            match h.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return reply.error(errno_of(&e)),
            }
        }
        self.shared
            .counters
            .fallback_bytes_read
            .fetch_add(got as u64, Ordering::Relaxed);
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(h) = lock(&self.handles).file(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if !h.write {
            return reply.error(Errno::EBADF);
        }
        // With O_APPEND on the backing descriptor Linux appends whatever
        // the offset, which is what the application asked for.
        match h.file.write_all_at(data, offset) {
            Ok(()) => {
                self.shared
                    .counters
                    .fallback_bytes_written
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    /// Nothing to do, yet kept (no FOPEN_NOFLUSH) although `close()` waits
    /// for it: passthrough writes never reach the daemon, so after a
    /// `kill -9` of it this round trip is the only way `close()` can tell
    /// a writer that its file will never be sealed.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let entry = lock(&self.handles).remove_file(fh.0);
        reply.ok();
        let Some(entry) = entry else { return };
        if !entry.write {
            return;
        }
        // With no request in flight on the handle, its descriptor goes to
        // the seal.
        let file = Arc::try_unwrap(entry)
            .ok()
            .filter(|e| e.seal_through)
            .map(|e| e.file);
        // By inode: the file may have been renamed or unlinked while open
        // (the live set knows the name it has now, if any).
        self.shared.live.closed_for_write(ino.0, file);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(h) = lock(&self.handles).file(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let r = if datasync {
            h.file.sync_data()
        } else {
            h.file.sync_all()
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.path_of(ino).and_then(|rel| {
            if let Ok(place @ Place::Set(..)) = Place::of(&rel) {
                self.ensure_local(&place)?;
            }
            self.list_dir(&rel).map_err(|e| errno_of(&e))
        });
        match result {
            Ok(entries) => {
                let fh = lock(&self.handles).insert_dir(DirHandle { entries });
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = lock(&self.handles).dir(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let dots = [
            (ino.0, FileType::Directory, ".".to_owned()),
            (ino.0, FileType::Directory, "..".to_owned()),
        ];
        for (i, (child, kind, name)) in dots
            .iter()
            .chain(dir.entries.iter())
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(*child), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove_dir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The cache's free space is what a checkpoint can still use.
        match libckpt::statfs::space(&self.shared.root) {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_avail,
                s.files,
                s.files_free,
                s.block_size,
                255,
                s.fragment_size,
            ),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if name != XATTR_COMMIT {
            return reply.error(Errno::from_i32(libc::ENOTSUP));
        }
        let result = (|| -> Result<(), Errno> {
            let rel = self.path_of(ino)?;
            let Place::Set(job, set) = Place::of(&rel).map_err(|_| Errno::ENOENT)? else {
                return Err(Errno::EINVAL);
            };
            match self.shared.live.commit(&job, &set) {
                Ok(m) => {
                    tracing::info!(job = %job, set = %set, files = m.files.len(), bytes = m.total_bytes, "committed");
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(job = %job, set = %set, error = %e, "commit refused");
                    Err(live_errno(&e))
                }
            }
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if name != XATTR_STATE {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let value = self
            .path_of(ino)
            .and_then(|rel| Place::of(&rel).map_err(|_| Errno::ENOENT))
            .and_then(|place| self.state_xattr(&place));
        match value {
            Ok(v) => reply_xattr(reply, v.as_bytes(), size),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let has_state = self
            .path_of(ino)
            .ok()
            .and_then(|rel| Place::of(&rel).ok())
            .is_some_and(|p| p.set().is_some());
        let list = if has_state {
            format!("{XATTR_STATE}\0")
        } else {
            String::new()
        };
        reply_xattr(reply, list.as_bytes(), size);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has checked already.
        reply.ok();
    }
}

fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}
