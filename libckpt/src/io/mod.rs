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
//! application's page cache. Only whole pages go direct; an unaligned tail
//! is written after clearing O_DIRECT on the descriptor.

mod buffer;
mod fallback;
mod uring;

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
        };
        tracing::info!(path = %engine.path(), ?opts, "I/O engine ready");
        Ok(engine)
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
    /// yields, checksumming each chunk on the way, then fdatasync.
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
        target.sync()?;
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
    pub fn read_file(
        &self,
        path: &Path,
        chunk_size: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<FileDigest, IoError> {
        let mut hasher = new_hasher(chunk_size)?;
        let (mut target, size) = Target::open_read(path, self.opts.direct)?;
        match self.rings.as_ref().and_then(uring::RingPool::checkout) {
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
    fn open_read(path: &Path, want_direct: bool) -> Result<(Target, u64), IoError> {
        let open = |direct: bool| {
            OpenOptions::new()
                .read(true)
                .custom_flags(open_flags(direct))
                .open(path)
        };
        let target = Self::open_with(path, want_direct, open)?;
        let meta = target.file.metadata().map_err(|e| target.open_err(e))?;
        if !meta.is_file() {
            return Err(target.open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
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
mod tests {
    use super::*;
    use crate::chunk::FileDigest;
    use std::os::unix::fs::PermissionsExt;

    const KIB: usize = 1024;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("ckpt-io-")
            .tempdir_in("/var/tmp")
            .expect("scratch dir under /var/tmp")
    }

    /// Deterministic pseudo-random bytes (xorshift64*), different per seed.
    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    fn opts(kind: EngineKind, buffer_size: usize, queue_depth: u32) -> IoOptions {
        IoOptions {
            kind,
            queue_depth,
            buffer_size,
            direct: true,
        }
    }

    fn engine(kind: EngineKind, buffer_size: usize, queue_depth: u32) -> IoEngine {
        IoEngine::new(&opts(kind, buffer_size, queue_depth)).expect("engine")
    }

    /// One engine per forced path; the io_uring one is skipped, loudly, where
    /// the kernel refuses it (e.g. an unprivileged user whose locked-memory
    /// limit is below queue_depth * buffer_size).
    fn forced_engines(o: IoOptions) -> Vec<IoEngine> {
        let mut engines = Vec::new();
        for kind in [EngineKind::Uring, EngineKind::Fallback] {
            match IoEngine::new(&IoOptions { kind, ..o.clone() }) {
                Ok(eng) => engines.push(eng),
                Err(IoError::UringUnavailable { reason }) => {
                    println!("skipping the io_uring path: {reason}")
                }
                Err(e) => panic!("{kind}: {e}"),
            }
        }
        engines
    }

    fn ring_pool(depth: u32, buffer_size: usize) -> Option<uring::RingPool> {
        uring::RingPool::probe(depth, buffer_size)
            .map_err(|reason| println!("skipping the io_uring path: {reason}"))
            .ok()
    }

    fn sizes(bs: usize) -> Vec<usize> {
        vec![0, 1, 4095, 4096, 4097, bs - 1, bs, bs + 1, 3 * bs + 123]
    }

    /// A source that hands out at most `step` bytes per call.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Yields `good` bytes, then fails.
    struct Failing {
        good: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good == 0 {
                return Err(io::Error::other("source broke"));
            }
            let n = self.good.min(buf.len());
            buf[..n].fill(0xAB);
            self.good -= n;
            Ok(n)
        }
    }

    fn read_back(eng: &IoEngine, path: &Path, chunk: u64) -> (Vec<u8>, FileDigest) {
        let mut got = Vec::new();
        let digest = eng
            .read_file(path, chunk, &mut |off, bytes| {
                assert_eq!(off, got.len() as u64, "runs arrive in file order");
                assert!(!bytes.is_empty());
                got.extend_from_slice(bytes);
                Ok(())
            })
            .expect("read_file");
        (got, digest)
    }

    fn check_roundtrip(eng: &IoEngine, dir: &Path, size: usize, chunk: u64, step: Option<usize>) {
        let want = data(size, size as u64 + chunk);
        let path = dir.join(format!("f-{size}-{chunk}"));
        let written = match step {
            None => eng.write_file(&path, 0o600, &mut &want[..], chunk),
            Some(step) => {
                let mut src = Dribble { data: &want, step };
                eng.write_file(&path, 0o600, &mut src, chunk)
            }
        }
        .expect("write_file");
        let ctx = format!("{} size {size} chunk {chunk} step {step:?}", eng.path());
        assert_eq!(std::fs::read(&path).expect("read back"), want, "{ctx}");
        assert_eq!(written, FileDigest::of_bytes(&want, chunk), "{ctx}");
        assert_eq!(
            eng.digest_file(&path, chunk).expect("digest"),
            written,
            "{ctx}"
        );
        let (got, digest) = read_back(eng, &path, chunk);
        assert!(got == want, "read_file bytes differ: {ctx}");
        assert_eq!(digest, written, "{ctx}");
    }

    #[test]
    fn both_paths_roundtrip_all_sizes_small_buffers() {
        let dir = scratch();
        for eng in forced_engines(opts(EngineKind::Auto, 64 * KIB, 4)) {
            for size in sizes(64 * KIB) {
                for chunk in [12 * KIB as u64, 1 << 20] {
                    check_roundtrip(&eng, dir.path(), size, chunk, None);
                }
            }
        }
    }

    #[test]
    fn both_paths_roundtrip_all_sizes_default_options() {
        let dir = scratch();
        for eng in forced_engines(IoOptions::default()) {
            for size in sizes(eng.options().buffer_size) {
                check_roundtrip(&eng, dir.path(), size, 1 << 20, None);
            }
        }
    }

    #[test]
    fn buffered_only_and_depth_one_roundtrip() {
        let dir = scratch();
        let o = IoOptions {
            direct: false,
            ..opts(EngineKind::Auto, 16 * KIB, 1)
        };
        for eng in forced_engines(o) {
            for size in sizes(16 * KIB) {
                check_roundtrip(&eng, dir.path(), size, 4096, None);
            }
        }
    }

    #[test]
    fn short_reads_from_the_source_still_fill_buffers() {
        let dir = scratch();
        for eng in forced_engines(opts(EngineKind::Auto, 64 * KIB, 4)) {
            for size in [0, 999, 1000, 64 * KIB + 1, 3 * 64 * KIB + 123] {
                check_roundtrip(&eng, dir.path(), size, 8192, Some(1000));
            }
        }
    }

    /// Whole pages go direct and only the tail is buffered, on both paths;
    /// reads stay direct to the end (the kernel stops at end of file).
    #[test]
    fn whole_pages_go_direct_and_only_the_tail_is_buffered() {
        let dir = scratch();
        let bs = 64 * KIB;
        let size = 3 * bs + 123;
        let want = data(size, 7);
        let Some(pool) = ring_pool(4, bs) else { return };
        for kind in [EngineKind::Uring, EngineKind::Fallback] {
            let path = dir.path().join(format!("direct-{kind}"));
            let mut target = Target::create(&path, 0o600, true).expect("create");
            if !target.is_direct() {
                println!("skipping: {} refuses O_DIRECT", dir.path().display());
                return;
            }
            let mut hasher = ChunkHasher::new(4096);
            let mut buf = AlignedBuf::new(bs).expect("buf");
            let mut ring = pool.checkout().expect("ring");
            match kind {
                EngineKind::Uring => {
                    uring::write_all(ring.get(), &mut target, &mut &want[..], &mut hasher)
                }
                _ => fallback::write_all(&mut buf, &mut target, &mut &want[..], &mut hasher),
            }
            .expect("write");
            assert_eq!(
                (target.direct_bytes, target.buffered_bytes),
                ((3 * bs) as u64, 123),
                "{kind}"
            );
            drop(target);

            let (mut target, len) = Target::open_read(&path, true).expect("open");
            assert_eq!(len, size as u64);
            let mut hasher = ChunkHasher::new(4096);
            let mut got = Vec::new();
            let mut sink = |_: u64, b: &[u8]| {
                got.extend_from_slice(b);
                Ok(())
            };
            match kind {
                EngineKind::Uring => {
                    uring::read_all(ring.get(), &mut target, len, &mut hasher, &mut sink)
                }
                _ => fallback::read_all(&mut buf, &mut target, len, &mut hasher, &mut sink),
            }
            .expect("read");
            assert!(got == want);
            assert_eq!(
                (target.direct_bytes, target.buffered_bytes),
                (size as u64, 0),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_refused_direct_transfer_is_retried_buffered() {
        let dir = scratch();
        let mut target = Target::create(&dir.path().join("einval"), 0o600, true).expect("create");
        if !target.is_direct() {
            println!("skipping: {} refuses O_DIRECT", dir.path().display());
            return;
        }
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(!target.should_retry(&enospc, true).expect("classify"));
        let einval = io::Error::from_raw_os_error(libc::EINVAL);
        assert!(target.should_retry(&einval, true).expect("classify"));
        assert!(!target.is_direct());
        // SAFETY: F_GETFL on a descriptor the target owns.
        let flags = unsafe { libc::fcntl(target.fd(), libc::F_GETFL) };
        assert_eq!(
            flags & libc::O_DIRECT,
            0,
            "O_DIRECT cleared on the descriptor"
        );
        // A buffered request's EINVAL is a real error, not a retry.
        assert!(!target.should_retry(&einval, false).expect("classify"));
        let eintr = io::Error::from_raw_os_error(libc::EINTR);
        assert!(target.should_retry(&eintr, false).expect("classify"));
    }

    #[test]
    fn a_file_truncated_while_read_is_an_error() {
        let dir = scratch();
        let path = dir.path().join("shrinks");
        std::fs::write(&path, data(100_000, 1)).expect("seed file");
        let Some(pool) = ring_pool(4, 16 * KIB) else {
            return;
        };
        for kind in [EngineKind::Uring, EngineKind::Fallback] {
            let (mut target, len) = Target::open_read(&path, true).expect("open");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(50_000))
                .expect("truncate");
            let mut hasher = ChunkHasher::new(4096);
            let mut sink = |_: u64, _: &[u8]| Ok(());
            let err = match kind {
                EngineKind::Uring => {
                    let mut ring = pool.checkout().expect("ring");
                    uring::read_all(ring.get(), &mut target, len, &mut hasher, &mut sink)
                }
                _ => {
                    let mut buf = AlignedBuf::new(16 * KIB).expect("buf");
                    fallback::read_all(&mut buf, &mut target, len, &mut hasher, &mut sink)
                }
            }
            .expect_err("must notice");
            match &err {
                IoError::Read { offset, source, .. } => {
                    assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof, "{kind}: {err}");
                    // With several reads in flight, a later one may be the
                    // first to come back short: any offset past the new end.
                    assert!((49_152..100_000).contains(offset), "{kind}: {err}");
                }
                other => panic!("{kind}: unexpected {other:?}"),
            }
            std::fs::write(&path, data(100_000, 1)).expect("restore file");
        }
        // The ring survived the abandoned operation in working order.
        let mut ring = pool.checkout().expect("ring");
        let path = dir.path().join("after");
        let want = data(70_000, 2);
        let mut target = Target::create(&path, 0o600, true).expect("create");
        let mut hasher = ChunkHasher::new(4096);
        uring::write_all(ring.get(), &mut target, &mut &want[..], &mut hasher).expect("write");
        assert!(std::fs::read(&path).expect("read back") == want);
    }

    #[test]
    fn source_error_is_typed_and_names_the_path() {
        let dir = scratch();
        for eng in forced_engines(opts(EngineKind::Auto, 16 * KIB, 4)) {
            let path = dir
                .path()
                .join(format!("broken-{}", eng.path()).replace('/', "-"));
            let err = eng
                .write_file(&path, 0o600, &mut Failing { good: 40_000 }, 4096)
                .expect_err("source fails");
            assert!(
                matches!(&err, IoError::Source { path: p, .. } if *p == path),
                "{err:?}"
            );
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            assert!(err.to_string().contains("source broke"), "{err}");
            // The engine is still usable afterwards.
            check_roundtrip(&eng, dir.path(), 50_000, 4096, None);
        }
    }

    #[test]
    fn sink_error_aborts_the_read() {
        let dir = scratch();
        for eng in forced_engines(opts(EngineKind::Auto, 16 * KIB, 4)) {
            let kind = eng.path();
            let path = dir.path().join(format!("sink-{kind}").replace('/', "-"));
            let bytes = data(100_000, 3);
            eng.write_file(&path, 0o600, &mut &bytes[..], 4096)
                .expect("write");
            let mut calls = 0;
            let err = eng
                .read_file(&path, 4096, &mut |off, _| {
                    calls += 1;
                    if off > 0 {
                        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                    }
                    Ok(())
                })
                .expect_err("sink fails");
            assert_eq!(calls, 2, "{kind}: stops at the first failure");
            assert!(
                matches!(err, IoError::Sink { offset, .. } if offset == 16 * KIB as u64),
                "{err:?}"
            );
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
            check_roundtrip(&eng, dir.path(), 50_000, 4096, None);
        }
    }

    #[test]
    fn missing_directory_is_an_open_error() {
        let dir = scratch();
        for eng in forced_engines(opts(EngineKind::Auto, 16 * KIB, 2)) {
            let path = dir.path().join("no/such/dir/file");
            let err = eng
                .write_file(&path, 0o600, &mut &b"x"[..], 4096)
                .expect_err("no dir");
            assert!(
                matches!(&err, IoError::Open { path: p, .. } if *p == path),
                "{err:?}"
            );
            assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
            assert!(err
                .to_string()
                .starts_with(&format!("opening {}: ", path.display())));
            let err = eng.digest_file(&path, 4096).expect_err("no file");
            assert!(matches!(err, IoError::Open { .. }), "{err:?}");
        }
    }

    #[test]
    fn symlinks_are_not_followed_and_mode_is_applied() {
        let dir = scratch();
        let eng = engine(EngineKind::Auto, 16 * KIB, 2);
        let real = dir.path().join("real");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let err = eng
            .write_file(&link, 0o600, &mut &b"secret"[..], 4096)
            .expect_err("symlink refused");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert!(!real.exists());
        eng.write_file(&real, 0o600, &mut &b"secret"[..], 4096)
            .expect("write");
        let mode = std::fs::metadata(&real).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn reading_something_that_is_not_a_regular_file_is_refused() {
        let eng = engine(EngineKind::Auto, 16 * KIB, 2);
        let err = eng
            .digest_file(Path::new("/dev/null"), 4096)
            .expect_err("char device");
        assert!(matches!(err, IoError::Open { .. }), "{err:?}");
    }

    #[test]
    fn enospc_is_typed_on_both_paths() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            println!("skipping: no /dev/full");
            return;
        }
        for eng in forced_engines(opts(EngineKind::Auto, 64 * KIB, 4)) {
            let kind = eng.path();
            let bytes = data(3 * 64 * KIB + 5, 9);
            let err = eng
                .write_file(full, 0o600, &mut &bytes[..], 4096)
                .expect_err("disk full");
            assert!(
                matches!(&err, IoError::Write { path, .. } if path == full),
                "{err:?}"
            );
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{kind}: {err}");
            let msg = err.to_string();
            assert!(msg.starts_with("writing /dev/full at offset "), "{msg}");
            assert!(msg.contains("No space left on device"), "{msg}");
        }
    }

    #[test]
    fn bad_options_are_refused() {
        let bad = [
            IoOptions {
                queue_depth: 0,
                ..IoOptions::default()
            },
            IoOptions {
                queue_depth: 257,
                ..IoOptions::default()
            },
            IoOptions {
                buffer_size: 0,
                ..IoOptions::default()
            },
            IoOptions {
                buffer_size: 2048,
                ..IoOptions::default()
            },
            IoOptions {
                buffer_size: 4097,
                ..IoOptions::default()
            },
            IoOptions {
                buffer_size: (1 << 20) + 512,
                ..IoOptions::default()
            },
            IoOptions {
                buffer_size: 128 << 20,
                ..IoOptions::default()
            },
        ];
        for o in bad {
            for kind in [EngineKind::Auto, EngineKind::Uring, EngineKind::Fallback] {
                let o = IoOptions { kind, ..o.clone() };
                let err = IoEngine::new(&o).expect_err("bad options");
                assert!(matches!(err, IoError::BadOptions { .. }), "{o:?}: {err:?}");
            }
        }
        for o in [
            IoOptions {
                queue_depth: 1,
                buffer_size: 4096,
                ..IoOptions::default()
            },
            IoOptions {
                queue_depth: 256,
                buffer_size: 64 << 10,
                ..IoOptions::default()
            },
        ] {
            IoEngine::new(&o).expect("edge values are valid");
        }
        let eng = engine(EngineKind::Fallback, 4096, 1);
        let err = eng
            .digest_file(Path::new("/etc/hostname"), 0)
            .expect_err("chunk 0");
        assert!(matches!(err, IoError::BadOptions { .. }), "{err:?}");
    }

    #[test]
    fn auto_picks_io_uring_here() {
        let eng = IoEngine::new(&IoOptions::default()).expect("engine");
        match eng.fallback_reason() {
            None => assert_eq!(eng.path(), IoPath::Uring),
            Some(reason) => {
                assert_eq!(eng.path(), IoPath::Fallback);
                println!("io_uring refused by this kernel, Auto fell back: {reason}");
            }
        }
    }

    #[test]
    fn forced_paths_report_themselves() {
        let eng = engine(EngineKind::Fallback, 16 * KIB, 2);
        assert_eq!(eng.path(), IoPath::Fallback);
        assert_eq!(
            eng.fallback_reason(),
            Some("forced by config (io.engine = fallback)")
        );
        match IoEngine::new(&opts(EngineKind::Uring, 16 * KIB, 2)) {
            Ok(eng) => {
                assert_eq!(eng.path(), IoPath::Uring);
                assert_eq!(eng.fallback_reason(), None);
            }
            Err(IoError::UringUnavailable { reason }) => println!("io_uring refused: {reason}"),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn concurrent_callers_share_the_engine() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<IoEngine>();
        let dir = scratch();
        for eng in forced_engines(opts(EngineKind::Auto, 32 * KIB, 4)) {
            std::thread::scope(|s| {
                for t in 0..6 {
                    let (eng, dir) = (&eng, dir.path());
                    s.spawn(move || {
                        for size in [t * 10_000 + 1, 200_000 + t] {
                            check_roundtrip(eng, dir, size, 8192, None);
                        }
                    });
                }
            });
        }
    }

    #[test]
    fn engine_kind_parses_prints_and_serializes() {
        for (s, k) in [
            ("auto", EngineKind::Auto),
            ("uring", EngineKind::Uring),
            ("fallback", EngineKind::Fallback),
        ] {
            assert_eq!(s.parse::<EngineKind>(), Ok(k));
            assert_eq!(k.to_string(), s);
            assert_eq!(serde_json::to_string(&k).expect("ser"), format!("\"{s}\""));
            assert_eq!(
                serde_json::from_str::<EngineKind>(&format!("\"{s}\"")).expect("de"),
                k
            );
        }
        assert_eq!("io_uring".parse::<EngineKind>(), Ok(EngineKind::Uring));
        assert!("turbo".parse::<EngineKind>().unwrap_err().contains("turbo"));
        assert_eq!(EngineKind::default(), EngineKind::Auto);
        assert_eq!(IoPath::Uring.to_string(), "io_uring");
        assert_eq!(IoPath::Fallback.to_string(), "pread/pwrite");
        assert_eq!(
            serde_json::to_string(&IoPath::Fallback).expect("ser"),
            "\"fallback\""
        );
    }
}
