//! Lower tiers: where complete sets go to be safe off the node.
//!
//! One trait, written once above it: the drain (what to send when), the
//! journal, verification, retention and status. Each tier only knows how to
//! hold sets: send a set's bytes (skipping what it already holds), put the
//! manifest last, list complete sets, fetch one, delete one.

pub mod pfs;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::io::IoEngine;
use crate::manifest::{FileEntry, Manifest, ManifestError};
use crate::path::{JobName, SetName};
use crate::rate::RateLimiter;

/// Why a tier operation failed. `is_transient` tells the drain whether to
/// retry with backoff (the tier is down, full, unreachable) or to report
/// and stop retrying quickly (refused, corrupt source).
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("{tier}: unavailable: {message}")]
    Unavailable { tier: String, message: String },
    #[error("{tier}: no complete set {job}/{set}")]
    NotFound {
        tier: String,
        job: JobName,
        set: SetName,
    },
    #[error("{0}")]
    Corrupt(Box<Corruption>),
    #[error("{tier}: manifest of {job}/{set}: {source}")]
    Manifest {
        tier: String,
        job: JobName,
        set: SetName,
        #[source]
        source: ManifestError,
    },
    #[error("{tier}: refused: {message}")]
    Refused { tier: String, message: String },
    /// Reading the cache or writing the destination of a fetch failed.
    #[error("{path}: {message}")]
    Local { path: PathBuf, message: String },
}

impl TierError {
    /// Worth retrying later without human help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TierError::Unavailable { .. } | TierError::Local { .. }
        )
    }

    pub fn local(path: &Path, e: impl std::fmt::Display) -> TierError {
        TierError::Local {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}

/// A chunk that does not match its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub tier: String,
    pub job: JobName,
    pub set: SetName,
    pub file: String,
    pub chunk: u64,
    pub offset: u64,
    pub detail: String,
}

impl TierError {
    /// Chunk `chunk` of `file` in set `job`/`set` on `tier` does not match
    /// its manifest: `detail` says how.
    pub fn corrupt(
        tier: &str,
        job: &JobName,
        set: &SetName,
        file: &FileEntry,
        chunk: u64,
        detail: String,
    ) -> TierError {
        TierError::Corrupt(Box::new(Corruption {
            tier: tier.to_owned(),
            job: job.clone(),
            set: set.clone(),
            file: file.path.to_string(),
            chunk,
            offset: chunk * file.chunk_size,
            detail,
        }))
    }
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}/{}: {}: chunk {} (from byte {}) is corrupt: {}",
            self.tier, self.job, self.set, self.file, self.chunk, self.offset, self.detail
        )
    }
}

/// One complete set as a tier holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierSet {
    pub job: JobName,
    pub set: SetName,
    #[serde(with = "humantime_serde")]
    pub created: SystemTime,
    pub bytes: u64,
    pub files: u64,
}

impl TierSet {
    pub fn of(m: &Manifest) -> TierSet {
        TierSet {
            job: m.job.clone(),
            set: m.set.clone(),
            created: m.created,
            bytes: m.total_bytes,
            files: m.files.len() as u64,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// Bytes of the set read from the cache.
    pub bytes_read: u64,
    /// Bytes that crossed to the tier (after dedup and compression).
    pub bytes_sent: u64,
    /// Chunks (or whole files) the tier already held and was not sent.
    pub skipped: u64,
    pub files: u64,
}

/// Receives a file's chunks in order: (index, bytes).
pub type ChunkSink<'a> = dyn FnMut(u64, &[u8]) -> Result<(), TierError> + 'a;

/// A complete set in the cache, as a push reads it.
pub struct Source<'a> {
    pub engine: &'a IoEngine,
    pub manifest: &'a Manifest,
    /// The set's directory in the cache.
    pub dir: PathBuf,
}

impl Source<'_> {
    /// Hand every chunk of `file`, in order, to `f` (index, bytes), after
    /// checking it against the manifest: a cache copy that went bad is
    /// never sent on as if it were good.
    pub fn for_each_chunk(&self, file: &FileEntry, f: &mut ChunkSink<'_>) -> Result<(), TierError> {
        let path = file.path.under(&self.dir);
        let cs = file.chunk_size as usize;
        // Only for chunks that straddle the engine's reads: whole chunks
        // are handed on from the engine's (page-aligned) buffer, without a
        // copy, which is also what lets a tier write them with O_DIRECT.
        let mut partial: Vec<u8> = Vec::new();
        let mut index = 0u64;
        let mut failure: Option<TierError> = None;
        let mut emit = |chunk: &[u8], index: &mut u64| -> Result<(), TierError> {
            let want = file.crc32c.get(*index as usize).copied();
            let got = crc32c::crc32c(chunk);
            if want != Some(got) {
                return Err(TierError::corrupt(
                    "cache",
                    &self.manifest.job,
                    &self.manifest.set,
                    file,
                    *index,
                    format!(
                        "crc32c {got:08x}, manifest says {}",
                        want.map_or("nothing".into(), |w| format!("{w:08x}"))
                    ),
                ));
            }
            f(*index, chunk)?;
            *index += 1;
            Ok(())
        };
        let read = self
            .engine
            .read_file_warm(&path, file.chunk_size, &mut |_, mut bytes| {
                let mut step = || -> Result<(), TierError> {
                    while !bytes.is_empty() {
                        if partial.is_empty() && bytes.len() >= cs {
                            emit(&bytes[..cs], &mut index)?;
                            bytes = &bytes[cs..];
                            continue;
                        }
                        let take = (cs - partial.len()).min(bytes.len());
                        partial.extend_from_slice(&bytes[..take]);
                        bytes = &bytes[take..];
                        if partial.len() == cs {
                            emit(&partial, &mut index)?;
                            partial.clear();
                        }
                    }
                    Ok(())
                };
                step().map_err(|e| {
                    failure = Some(e);
                    std::io::Error::other("chunk refused")
                })
            });
        if let Some(e) = failure {
            return Err(e);
        }
        let digest = read.map_err(|e| TierError::local(&path, e))?;
        if !partial.is_empty() {
            emit(&partial, &mut index)?;
        }
        if digest.size != file.size {
            return Err(TierError::local(
                &path,
                format!("size is {} bytes, manifest says {}", digest.size, file.size),
            ));
        }
        Ok(())
    }
}

/// Which files of a set an interrupted push already delivered, kept by the
/// drain's journal so a resumed push sends nothing twice. Tiers that find
/// out for themselves (a chunk store asks the receiver) may ignore it.
pub trait Resume {
    /// True when this very version of `file` (same size and crc32c) was
    /// already delivered.
    fn is_done(&self, file: &FileEntry) -> bool;
    fn mark_done(&mut self, file: &FileEntry) -> Result<(), TierError>;
}

/// A push from scratch, remembering nothing.
pub struct NoResume;

impl Resume for NoResume {
    fn is_done(&self, _: &FileEntry) -> bool {
        false
    }
    fn mark_done(&mut self, _: &FileEntry) -> Result<(), TierError> {
        Ok(())
    }
}

/// A file version's identity for the journal: its size, chunking and
/// crc32c list, folded into one number.
pub fn fingerprint(file: &FileEntry) -> u64 {
    let mut h = crc32c::crc32c(&file.size.to_le_bytes());
    h = crc32c::crc32c_append(h, &file.chunk_size.to_le_bytes());
    for c in &file.crc32c {
        h = crc32c::crc32c_append(h, &c.to_le_bytes());
    }
    (file.size << 32) ^ u64::from(h)
}

/// A place complete sets are kept. Implementations: [`pfs::PfsTier`] (a
/// POSIX directory), the DR site (`ckptfs serve`) and an S3 bucket
/// ([`crate::s3::S3Tier`]).
pub trait Tier: Send + Sync {
    /// "pfs", "dr", …: the tier's name in the config, status and journal.
    fn name(&self) -> &str;
    /// Where it is, for messages: a directory or `host:port`.
    fn location(&self) -> String;
    /// For a networked tier, the transport its last connection used and
    /// why ("rdma (rxe0)", "tcp (no RDMA device)"); `None` otherwise or
    /// before the first connection.
    fn transport(&self) -> Option<String> {
        None
    }
    /// For a compressing tier, its setting and, where it adapts, the level
    /// it reached ("zstd auto, now 1"); `None` otherwise.
    fn compression(&self) -> Option<String> {
        None
    }
    /// Jobs with at least one complete set.
    fn jobs(&self) -> Result<Vec<JobName>, TierError>;
    /// Complete sets of `job`, oldest first.
    fn sets(&self, job: &JobName) -> Result<Vec<TierSet>, TierError>;
    /// The manifest of a complete set (checked like any manifest).
    fn manifest(&self, job: &JobName, set: &SetName) -> Result<Manifest, TierError>;
    /// Copy a complete set from the cache. What the tier already holds is
    /// not sent again; the manifest goes last, so the set is complete on
    /// the tier exactly when the push returns Ok. `limiter` paces the bytes.
    fn push(
        &self,
        src: &Source<'_>,
        limiter: &RateLimiter,
        resume: &mut dyn Resume,
    ) -> Result<PushReport, TierError>;
    /// Copy a complete set's files into `dest` (an existing empty
    /// directory), verifying every chunk against the manifest, and return
    /// the manifest. `progress` is told the bytes as they arrive.
    fn fetch(
        &self,
        job: &JobName,
        set: &SetName,
        dest: &Path,
        engine: &IoEngine,
        progress: &dyn Fn(u64),
    ) -> Result<Manifest, TierError>;
    /// Remove a set: the manifest first, so an interrupted delete never
    /// leaves a complete set with missing data.
    fn delete(&self, job: &JobName, set: &SetName) -> Result<(), TierError>;

    /// The opt-in early drain: send the sealed files of a set that is not
    /// complete yet (`src.manifest` is provisional: job, set and those
    /// files), so that the push of the completed set has less left to do.
    /// Never makes the set complete on the tier. A tier that only takes
    /// whole sets sends nothing.
    fn push_early(
        &self,
        src: &Source<'_>,
        limiter: &RateLimiter,
        resume: &mut dyn Resume,
    ) -> Result<PushReport, TierError> {
        let _ = (src, limiter, resume);
        Ok(PushReport::default())
    }
}

/// Copy a set's files from `from` (a directory laid out like the set) into
/// `dest`, checking each file's chunks against the manifest as the bytes
/// pass (the I/O engine computes the crc32c while writing). `tier` names
/// the source in errors.
///
/// Several files are copied at once: one file at a time leaves the
/// source's disk (or the parallel filesystem) with a single read stream.
pub fn copy_verified(
    tier: &str,
    from: &Path,
    m: &Manifest,
    dest: &Path,
    engine: &IoEngine,
    progress: &dyn Fn(u64),
) -> Result<(), TierError> {
    par_files(&m.files, dest, progress, &|file, sent| {
        copy_file_verified(tier, from, m, file, dest, engine, sent)
    })
}

/// What [`par_files`] does to one file: copy it, telling the bytes.
pub type FileJob<'a> = dyn Fn(&FileEntry, &dyn Fn(u64)) -> Result<(), TierError> + Sync + 'a;

/// Run `each` for every file, [`COPY_THREADS`] files at once, stopping at
/// the first failure (which is returned). `each` reports bytes through its
/// second argument; they reach `progress` on this thread, so `progress`
/// need not be `Sync`. `dest` names the place in a panicking thread's error.
pub fn par_files(
    files: &[FileEntry],
    dest: &Path,
    progress: &dyn Fn(u64),
    each: &FileJob<'_>,
) -> Result<(), TierError> {
    par_indexed(
        files.len(),
        COPY_THREADS,
        dest,
        &|i, tell| each(&files[i], tell),
        &mut |n| {
            progress(n);
            Ok(())
        },
    )
}

/// What [`par_indexed`] does to item `i`, telling the calling thread
/// through its second argument.
pub type IndexedJob<'a, M> = dyn Fn(usize, &dyn Fn(M)) -> Result<(), TierError> + Sync + 'a;

/// Run `each` for items `0..n`, `threads` at once, stopping at the first
/// failure (which is returned), from `each` or from `on_message`. What
/// `each` tells reaches `on_message` on this thread, as it is told: the
/// place for work that must stay in order or on one thread (progress
/// bars, a journal). `dest` names the place in a panicking thread's error.
pub fn par_indexed<M: Send>(
    n: usize,
    threads: usize,
    dest: &Path,
    each: &IndexedJob<'_, M>,
    on_message: &mut dyn FnMut(M) -> Result<(), TierError>,
) -> Result<(), TierError> {
    let threads = threads.min(n);
    if threads <= 1 {
        let on = std::cell::RefCell::new(on_message);
        let failed = std::cell::RefCell::new(None);
        for i in 0..n {
            each(i, &|m| {
                if failed.borrow().is_none() {
                    if let Err(e) = (*on.borrow_mut())(m) {
                        *failed.borrow_mut() = Some(e);
                    }
                }
            })?;
            if let Some(e) = failed.borrow_mut().take() {
                return Err(e);
            }
        }
        return Ok(());
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<M>();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let tx = tx.clone();
                let (next, stop) = (&next, &stop);
                scope.spawn(move || -> Result<(), TierError> {
                    use std::sync::atomic::Ordering::Relaxed;
                    while !stop.load(Relaxed) {
                        let i = next.fetch_add(1, Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        let tell = |m: M| {
                            let _ = tx.send(m);
                        };
                        if let Err(e) = each(i, &tell) {
                            stop.store(true, Relaxed);
                            return Err(e);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        drop(tx);
        let mut first = Ok(());
        for m in rx {
            if first.is_ok() {
                first = on_message(m);
                if first.is_err() {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        for w in workers {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(TierError::local(dest, "a copy thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// Files [`copy_verified`] and [`par_files`] copy at once, and the PFS
/// tier pushes at once.
pub const COPY_THREADS: usize = 4;

/// One file of [`copy_verified`].
fn copy_file_verified(
    tier: &str,
    from: &Path,
    m: &Manifest,
    file: &FileEntry,
    dest: &Path,
    engine: &IoEngine,
    progress: &dyn Fn(u64),
) -> Result<(), TierError> {
    let src = file.path.under(from);
    let to = file.path.under(dest);
    if let Some(parent) = to.parent() {
        crate::durable::create_dir_all_durable(parent, 0o700)
            .map_err(|e| TierError::local(parent, e))?;
    }
    let unavailable = |e: std::io::Error| TierError::Unavailable {
        tier: tier.to_owned(),
        message: format!("reading {}: {e}", src.display()),
    };
    let mut input =
        crate::io::ReadOnce::new(std::fs::File::open(&src).map_err(unavailable)?, file.size);
    let mut counted = Counted {
        inner: &mut input,
        progress,
    };
    let got = engine
        .write_file(&to, file.mode, &mut counted, file.chunk_size)
        .map_err(|e| match e {
            crate::io::IoError::Source { source, .. } => unavailable(source),
            other => TierError::local(&to, other),
        })?;
    let corrupt =
        |chunk: u64, detail: String| TierError::corrupt(tier, &m.job, &m.set, file, chunk, detail);
    if got.size != file.size {
        return Err(corrupt(
            got.size.min(file.size) / file.chunk_size,
            format!(
                "{} has {} bytes, manifest says {}",
                src.display(),
                got.size,
                file.size
            ),
        ));
    }
    if let Some(chunk) = file.digest().first_mismatch(&got) {
        return Err(corrupt(
            chunk as u64,
            format!("{} does not match the manifest", src.display()),
        ));
    }
    let _ = std::fs::File::options()
        .write(true)
        .open(&to)
        .and_then(|f| f.set_modified(file.mtime));
    Ok(())
}

/// A reader that reports the bytes it hands out.
struct Counted<'a> {
    inner: &'a mut dyn std::io::Read,
    progress: &'a dyn Fn(u64),
}

impl std::io::Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}
