//! The engine's own bulk file I/O: library writes in embedded mode, drain
//! reads, stage-in writes.
//!
//! Two paths move the bytes, chosen once per process by [`IoEngine::new`]:
//! io_uring with registered buffers and several requests in flight, or plain
//! pread/pwrite when the kernel refuses io_uring (sysctl, seccomp, locked
//! memory limit, old kernel). Both write byte-identical files and return
//! identical digests; the per-chunk crc32c is computed while each buffer is
//! in memory anyway, so a file is never read a second time to checksum it.
//!
//! Both paths use O_DIRECT where the filesystem accepts it, so checkpoint
//! data (typically written once, drained once) does not evict the
//! application's page cache; a read of a file the page cache mostly holds
//! goes through it instead ([`cached`]). Only whole pages go direct; an unaligned tail
//! is written after clearing O_DIRECT on the descriptor.

mod buffer;
mod cached;
mod fallback;
mod once;
mod uring;
mod writer;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkHasher, FileDigest};
#[cfg(test)]
use buffer::AlignedBuf;
use buffer::PAGE;
pub use once::ReadOnce;
pub use writer::FileWriter;

/// Queue depths the engine accepts (`io.queue_depth`).
const QUEUE_DEPTH_RANGE: std::ops::RangeInclusive<u32> = 1..=256;
const MIN_BUFFER_SIZE: usize = 4 << 10;
const MAX_BUFFER_SIZE: usize = 64 << 20;

/// Which I/O path the configuration asks for (`io.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// io_uring if the kernel allows it, pread/pwrite otherwise.
    #[default]
    Auto,
    /// io_uring or fail: for benchmarks and for sites that want to know.
    Uring,
    /// pread/pwrite even where io_uring works.
    Fallback,
}

impl EngineKind {
    fn as_str(self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::Uring => "uring",
            EngineKind::Fallback => "fallback",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(EngineKind::Auto),
            // Accept the kernel's own name too: it is what `status` prints.
            "uring" | "io_uring" => Ok(EngineKind::Uring),
            "fallback" => Ok(EngineKind::Fallback),
            other => Err(format!(
                "unknown I/O engine `{other}` (expected auto, uring or fallback)"
            )),
        }
    }
}

/// The path actually in use, for `ckptfs status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoPath {
    Uring,
    Fallback,
}

impl fmt::Display for IoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoPath::Uring => "io_uring",
            IoPath::Fallback => "pread/pwrite",
        })
    }
}

/// Tuning of the engine (`[io]` in the configuration).
#[derive(Debug, Clone)]
pub struct IoOptions {
    pub kind: EngineKind,
    /// Requests in flight per operation on the io_uring path (1..=256).
    pub queue_depth: u32,
    /// Size of each transfer buffer: a multiple of 4 KiB, 4 KiB..=64 MiB.
    pub buffer_size: usize,
    /// Use O_DIRECT where the filesystem and alignment allow it.
    pub direct: bool,
}

impl Default for IoOptions {
    fn default() -> Self {
        Self {
            kind: EngineKind::Auto,
            queue_depth: 8,
            buffer_size: 1 << 20,
            direct: true,
        }
    }
}

impl IoOptions {
    fn validate(&self) -> Result<(), IoError> {
        if !QUEUE_DEPTH_RANGE.contains(&self.queue_depth) {
            return Err(IoError::BadOptions {
                what: format!(
                    "io.queue_depth = {} is outside {}..={}",
                    self.queue_depth,
                    QUEUE_DEPTH_RANGE.start(),
                    QUEUE_DEPTH_RANGE.end()
                ),
            });
        }
        let size = self.buffer_size;
        if !(MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&size) || !size.is_multiple_of(PAGE) {
            return Err(IoError::BadOptions {
                what: format!(
                    "io.buffer_size = {size} must be a multiple of {PAGE} between \
                     {MIN_BUFFER_SIZE} and {MAX_BUFFER_SIZE} bytes"
                ),
            });
        }
        Ok(())
    }
}

/// A failed engine operation, naming the file (and offset) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("opening {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("writing {} at offset {offset}: {source}", path.display())]
    Write {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("reading {} at offset {offset}: {source}", path.display())]
    Read {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    /// The caller's `Read` failed while producing the bytes for `path`.
    #[error("reading the data to write to {}: {source}", path.display())]
    Source { path: PathBuf, source: io::Error },
    /// The caller's sink refused the bytes of `path` starting at `offset`.
    #[error("passing on the bytes of {} at offset {offset}: {source}", path.display())]
    Sink {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("syncing {}: {source}", path.display())]
    Sync { path: PathBuf, source: io::Error },
    #[error("io_uring is unavailable: {reason}")]
    UringUnavailable { reason: String },
    #[error("invalid I/O options: {what}")]
    BadOptions { what: String },
}

impl IoError {
    /// The same failure as a [`PathError`](crate::durable::PathError), for
    /// callers that report those (the offset, where there is one, is
    /// dropped; the errno is kept). A failure to set up the engine names
    /// no file of its own: it is reported against `setting_up`, the place
    /// the engine was for.
    pub fn into_path_error(self, setting_up: &Path) -> crate::durable::PathError {
        use crate::durable::PathError;
        match self {
            IoError::Open { path, source } => PathError::new("creating", &path, source),
            IoError::Write { path, source, .. } => PathError::new("writing", &path, source),
            IoError::Read { path, source, .. } => PathError::new("reading", &path, source),
            IoError::Source { path, source } => {
                PathError::new("reading the data to write to", &path, source)
            }
            IoError::Sink { path, source, .. } => PathError::new("passing on", &path, source),
            IoError::Sync { path, source } => PathError::new("syncing", &path, source),
            e @ (IoError::UringUnavailable { .. } | IoError::BadOptions { .. }) => PathError::new(
                "setting up I/O for",
                setting_up,
                io::Error::other(e.to_string()),
            ),
        }
    }

    /// The errno behind the failure, so callers can single out ENOSPC,
    /// EDQUOT, EIO and friends.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            IoError::Open { source, .. }
            | IoError::Write { source, .. }
            | IoError::Read { source, .. }
            | IoError::Source { source, .. }
            | IoError::Sink { source, .. }
            | IoError::Sync { source, .. } => source.raw_os_error(),
            IoError::UringUnavailable { .. } | IoError::BadOptions { .. } => None,
        }
    }
}

/// The process-wide I/O engine; share it by reference between threads.
pub struct IoEngine {
    opts: IoOptions,
    /// `None` on the pread/pwrite path.
    rings: Option<uring::RingPool>,
    bufs: fallback::BufPool,
    fallback_reason: Option<String>,
    /// `write_file` ends with fdatasync (see [`IoEngine::without_sync`]).
    sync_writes: bool,
}

impl fmt::Debug for IoEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoEngine")
            .field("path", &self.path())
            .field("fallback_reason", &self.fallback_reason)
            .field("options", &self.opts)
            .finish()
    }
}

impl IoEngine {
    /// Validate `opts` and pick the I/O path (see [`EngineKind`]).
    pub fn new(opts: &IoOptions) -> Result<IoEngine, IoError> {
        opts.validate()?;
        let (rings, fallback_reason) = match opts.kind {
            EngineKind::Fallback => (
                None,
                Some("forced by config (io.engine = fallback)".to_string()),
            ),
            EngineKind::Uring => {
                let pool = uring::RingPool::probe(opts.queue_depth, opts.buffer_size)
                    .map_err(|reason| IoError::UringUnavailable { reason })?;
                (Some(pool), None)
            }
            EngineKind::Auto => match uring::RingPool::probe(opts.queue_depth, opts.buffer_size) {
                Ok(pool) => (Some(pool), None),
                Err(reason) => {
                    tracing::warn!(%reason, "io_uring refused, using pread/pwrite");
                    (None, Some(reason))
                }
            },
        };
        let engine = IoEngine {
            opts: opts.clone(),
            rings,
            bufs: fallback::BufPool::new(opts.buffer_size),
            fallback_reason,
            sync_writes: true,
        };
        tracing::info!(path = %engine.path(), ?opts, "I/O engine ready");
        Ok(engine)
    }

    /// This engine's `write_file` leaves the bytes to the page cache's
    /// writeback instead of syncing them: for copies that are not the
    /// store's (a restore into a scratch directory, for a restart now),
    /// where the durable copy is the one on the tier. Never for the cache.
    pub fn without_sync(mut self) -> IoEngine {
        self.sync_writes = false;
        self
    }

    pub fn path(&self) -> IoPath {
        if self.rings.is_some() {
            IoPath::Uring
        } else {
            IoPath::Fallback
        }
    }

    /// Why io_uring is not in use; `None` when it is.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    pub fn options(&self) -> &IoOptions {
        &self.opts
    }

    /// Create (or truncate) `path` with `mode` and write every byte `src`
    /// yields, checksumming each chunk on the way, then fdatasync (unless
    /// [`IoEngine::without_sync`]).
    ///
    /// On error the file is left as far as it got: the caller knows whether
    /// `path` is a temporary name to remove.
    pub fn write_file(
        &self,
        path: &Path,
        mode: u32,
        src: &mut dyn Read,
        chunk_size: u64,
    ) -> Result<FileDigest, IoError> {
        let mut hasher = new_hasher(chunk_size)?;
        let mut target = Target::create(path, mode, self.opts.direct)?;
        match self.rings.as_ref().and_then(uring::RingPool::checkout) {
            Some(mut ring) => uring::write_all(ring.get(), &mut target, src, &mut hasher)?,
            None => {
                let mut buf = self.bufs.checkout().map_err(|e| target.write_err(0, e))?;
                let result = fallback::write_all(&mut buf, &mut target, src, &mut hasher);
                self.bufs.give_back(buf);
                result?;
            }
        }
        if self.sync_writes {
            target.sync()?;
        }
        target.log_summary("write");
        Ok(hasher.finish())
    }

    /// Read the whole file and return its digest.
    pub fn digest_file(&self, path: &Path, chunk_size: u64) -> Result<FileDigest, IoError> {
        self.read_file(path, chunk_size, &mut |_, _| Ok(()))
    }

    /// Read the whole file, handing each run of bytes to `sink` in file
    /// order with its offset, and return the digest. An error from `sink`
    /// stops the read.
    ///
    /// The file is read up to the size it had when opened; one that shrinks
    /// meanwhile fails with `UnexpectedEof`, since its digest would describe
    /// no version of the file that ever existed.
    ///
    /// With O_DIRECT on, the bytes come from the disk even when the page
    /// cache holds the file: what `ckptfs verify` must check.
    pub fn read_file(
        &self,
        path: &Path,
        chunk_size: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<FileDigest, IoError> {
        self.read(path, chunk_size, sink, ReadFrom::Disk)
    }

    /// [`IoEngine::read_file`], but through the page cache when it holds
    /// most of the file ([`cached`]): for the drain, which sends on what
    /// any reader of the file would get and should not compete for the
    /// disk with the tier it writes to.
    pub fn read_file_warm(
        &self,
        path: &Path,
        chunk_size: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<FileDigest, IoError> {
        self.read(path, chunk_size, sink, ReadFrom::CacheIfWarm)
    }

    fn read(
        &self,
        path: &Path,
        chunk_size: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
        from: ReadFrom,
    ) -> Result<FileDigest, IoError> {
        let hasher = new_hasher(chunk_size)?;
        let (target, size) = Target::open_read(path, self.opts.direct, from)?;
        self.read_target(target, size, hasher, sink)
    }

    /// [`IoEngine::digest_file`] of a file its caller already holds open
    /// for reading, without O_DIRECT: `size` bytes of it, `path` naming it
    /// in errors. The seal of a file closed behind /ckpt reads it through
    /// the writer's own descriptor, saving a lookup by name, an `open`
    /// and a `close` per file.
    pub fn digest_open_file(
        &self,
        file: File,
        path: &Path,
        size: u64,
        chunk_size: u64,
    ) -> Result<FileDigest, IoError> {
        let hasher = new_hasher(chunk_size)?;
        let target = Target {
            file,
            path: path.to_owned(),
            direct: false,
            direct_bytes: 0,
            buffered_bytes: 0,
        };
        self.read_target(target, size, hasher, &mut |_, _| Ok(()))
    }

    fn read_target(
        &self,
        mut target: Target,
        size: u64,
        mut hasher: ChunkHasher,
        sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<FileDigest, IoError> {
        // A file that fits in one buffer is one read(2). Through a ring it
        // costs a submission too and, where the filesystem cannot read
        // without blocking (tmpfs), a hop to an io_uring worker thread: for
        // the seal of each 64 KiB file behind /ckpt, that was 15 % fewer
        // files per second.
        let ring = if size > self.opts.buffer_size as u64 {
            self.rings.as_ref().and_then(uring::RingPool::checkout)
        } else {
            None
        };
        match ring {
            Some(mut ring) => uring::read_all(ring.get(), &mut target, size, &mut hasher, sink)?,
            None => {
                let mut buf = self.bufs.checkout().map_err(|e| target.read_err(0, e))?;
                let result = fallback::read_all(&mut buf, &mut target, size, &mut hasher, sink);
                self.bufs.give_back(buf);
                result?;
            }
        }
        target.log_summary("read");
        Ok(hasher.finish())
    }
}

/// Where a read with O_DIRECT on may take its bytes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// The disk (O_DIRECT as configured).
    Disk,
    /// The page cache when it holds most of the file, else the disk.
    CacheIfWarm,
}

fn new_hasher(chunk_size: u64) -> Result<ChunkHasher, IoError> {
    if chunk_size == 0 {
        return Err(IoError::BadOptions {
            what: "chunk size must be non-zero".to_string(),
        });
    }
    Ok(ChunkHasher::new(chunk_size))
}

/// End of file before the size the file had when opened.
fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "file ended early (truncated while being read?)",
    )
}

/// Fill `buf` from `src` until it is full or `src` is exhausted, so that
/// every buffer but the last goes to disk whole (and aligned) however
/// finely the source dribbles its bytes. Returns the bytes filled; fewer
/// than `buf.len()` means the source is at its end.
fn fill(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One open file of an engine operation, with its O_DIRECT state.
pub(crate) struct Target {
    file: File,
    path: PathBuf,
    direct: bool,
    direct_bytes: u64,
    buffered_bytes: u64,
}

impl Target {
    fn create(path: &Path, mode: u32, want_direct: bool) -> Result<Target, IoError> {
        let open = |direct: bool| {
            let mut oo = OpenOptions::new();
            oo.write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .custom_flags(open_flags(direct));
            oo.open(path)
        };
        Self::open_with(path, want_direct, open)
    }

    /// Open for reading and return the size to read. Regular files only:
    /// a FIFO or device would block or never end.
    fn open_read(path: &Path, want_direct: bool, from: ReadFrom) -> Result<(Target, u64), IoError> {
        let open = |direct: bool| {
            let open = |extra: i32| {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(open_flags(direct) | extra)
                    .open(path)
            };
            // Checksumming a file is no access by anyone: leave its atime
            // alone (O_NOATIME needs the owner or CAP_FOWNER; else plain).
            match open(libc::O_NOATIME) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
                r => r,
            }
        };
        let mut target = Self::open_with(path, want_direct, open)?;
        let meta = target.file.metadata().map_err(|e| target.open_err(e))?;
        if !meta.is_file() {
            return Err(target.open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        if target.direct
            && from == ReadFrom::CacheIfWarm
            && cached::mostly_cached(&target.file, meta.len())
        {
            tracing::debug!(path = %path.display(), "in the page cache: read buffered");
            target.go_buffered().map_err(|e| target.open_err(e))?;
        }
        Ok((target, meta.len()))
    }

    /// Open with O_DIRECT if wanted, retrying without it on filesystems
    /// that refuse it (EINVAL at open: tmpfs before 6.6, some FUSE and
    /// network filesystems, character devices).
    fn open_with(
        path: &Path,
        want_direct: bool,
        open: impl Fn(bool) -> io::Result<File>,
    ) -> Result<Target, IoError> {
        let open_err = |source| IoError::Open {
            path: path.to_path_buf(),
            source,
        };
        let (file, direct) = match open(want_direct) {
            Ok(file) => (file, want_direct),
            Err(e) if want_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(path = %path.display(), "O_DIRECT refused, using buffered I/O");
                (open(false).map_err(open_err)?, false)
            }
            Err(e) => return Err(open_err(e)),
        };
        Ok(Target {
            file,
            path: path.to_path_buf(),
            direct,
            direct_bytes: 0,
            buffered_bytes: 0,
        })
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn is_direct(&self) -> bool {
        self.direct
    }

    /// Clear O_DIRECT for the rest of this file. Requests already in
    /// flight may or may not see the change; either way is correct, since
    /// a buffered transfer has no alignment requirement.
    fn go_buffered(&mut self) -> io::Result<()> {
        if !self.direct {
            return Ok(());
        }
        let fd = self.fd();
        // SAFETY: F_GETFL on a descriptor owned by `self.file`; no pointers.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: F_SETFL on the same owned descriptor, integer argument.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct = false;
        Ok(())
    }

    /// Whether a write of `remaining` bytes at `pos` leaves the descriptor
    /// as it is: true when it is buffered already, or the write starts on a
    /// page and covers at least one.
    fn direct_fits(&self, pos: u64, remaining: usize) -> bool {
        !self.direct || (pos.is_multiple_of(PAGE as u64) && remaining >= PAGE)
    }

    /// How many of the `remaining` bytes at file offset `pos` to write in
    /// the next request: whole pages while O_DIRECT holds, everything once
    /// the descriptor is buffered. The buffer address is aligned whenever
    /// `pos` is, because every buffer starts at a page-aligned offset.
    fn write_len(&mut self, pos: u64, remaining: usize) -> io::Result<usize> {
        if self.direct {
            let whole_pages = remaining - remaining % PAGE;
            if pos.is_multiple_of(PAGE as u64) && whole_pages > 0 {
                return Ok(whole_pages);
            }
            self.go_buffered()?;
        }
        Ok(remaining)
    }

    /// How many bytes to ask for when `remaining` are wanted at `pos`, with
    /// `room` bytes of buffer available. A direct read may ask past the
    /// wanted end (rounded up to a page, within `room`): the kernel stops
    /// at end of file, and any extra is ignored.
    fn read_len(&mut self, pos: u64, remaining: usize, room: usize) -> io::Result<usize> {
        if self.direct {
            let rounded = remaining.next_multiple_of(PAGE);
            if pos.is_multiple_of(PAGE as u64) && rounded <= room {
                return Ok(rounded);
            }
            self.go_buffered()?;
        }
        Ok(remaining)
    }

    /// Whether a failed request should simply be sent again: interrupted or
    /// would-block, or a direct transfer the device refused (EINVAL: block
    /// size larger than a page), which is retried buffered.
    fn should_retry(&mut self, err: &io::Error, was_direct: bool) -> io::Result<bool> {
        match err.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(true),
            _ if was_direct && err.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(path = %self.path.display(), "direct transfer refused, retrying buffered");
                self.go_buffered()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn count(&mut self, was_direct: bool, bytes: usize) {
        if was_direct {
            self.direct_bytes += bytes as u64;
        } else {
            self.buffered_bytes += bytes as u64;
        }
    }

    fn sync(&self) -> Result<(), IoError> {
        self.file.sync_data().map_err(|source| IoError::Sync {
            path: self.path.clone(),
            source,
        })
    }

    fn log_summary(&self, what: &str) {
        tracing::debug!(
            path = %self.path.display(),
            direct = self.direct_bytes,
            buffered = self.buffered_bytes,
            "{what} done"
        );
    }

    fn open_err(&self, source: io::Error) -> IoError {
        IoError::Open {
            path: self.path.clone(),
            source,
        }
    }

    fn write_err(&self, offset: u64, source: io::Error) -> IoError {
        IoError::Write {
            path: self.path.clone(),
            offset,
            source,
        }
    }

    fn read_err(&self, offset: u64, source: io::Error) -> IoError {
        IoError::Read {
            path: self.path.clone(),
            offset,
            source,
        }
    }

    fn source_err(&self, source: io::Error) -> IoError {
        IoError::Source {
            path: self.path.clone(),
            source,
        }
    }

    fn sink_err(&self, offset: u64, source: io::Error) -> IoError {
        IoError::Sink {
            path: self.path.clone(),
            offset,
            source,
        }
    }
}

/// Flags beyond the access mode: never follow a symlink planted at the
/// final component (checkpoint files hold process memory).
fn open_flags(direct: bool) -> i32 {
    let direct = if direct { libc::O_DIRECT } else { 0 };
    libc::O_NOFOLLOW | direct
}

/// Upper bound on rings and spare buffers kept per engine: one per core
/// saturates the device without pinning memory for idle rings.
fn pool_limit() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

#[cfg(test)]
mod tests;
