//! The server's content-addressed chunk store on disk.
//!
//! ```text
//! <root>/chunks/<first 2 hex digits>/<64 hex digits>   one blob per piece
//! ```
//!
//! A chunk's name is the BLAKE3 of its raw bytes, so a piece two sets share
//! is stored once, and a name can only ever hold one content. Each blob is
//! checked (decompressed, hashed, crc'd) before it is written, and written
//! to a temp name, synced and renamed (by the [`Syncer`], off the request
//! path), so a killed server never leaves a half chunk under a final name.
//! [`ChunkStore::sync_dirty`] waits for those syncs, and the directory
//! entries are synced in a
//! batch ([`ChunkStore::sync_dirty`]) before a set record that names them
//! is written: one directory fsync per fan-out directory per set rather
//! than one per chunk.
//!
//! A chunk's mtime is the last time a client was told it exists (stored, or
//! found by a `Lacking` query); a delete spares unreferenced chunks younger
//! than its grace period, which are the ones an in-flight push is counting
//! on.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::blob::{self, BlobError, ChunkHash, ChunkHeader, CHUNK_HEADER_LEN};
use super::frame::MAX_FRAME_PAYLOAD;
use super::syncer::{Dirty, Job, Syncer};
use crate::durable::{self, IoContext, PathError};
use crate::io::IoEngine;

const TEMP_SUFFIX: &str = ".tmp";

/// Why a chunk could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The bytes do not match their own header: the sender's fault (or the
    /// wire's), never stored.
    #[error(transparent)]
    Bad(#[from] BlobError),
    #[error(transparent)]
    Io(#[from] PathError),
}

/// A stored chunk whose file is not a valid blob for its name.
#[derive(Debug, thiserror::Error)]
#[error("stored chunk {}: {reason}", path.display())]
pub struct Damaged {
    pub path: PathBuf,
    pub reason: String,
}

/// What `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Written now: this many bytes (compressed) on disk.
    Stored(u64),
    /// Already held; not written again.
    Existed,
}

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    pub chunks: u64,
    pub bytes: u64,
}

pub struct ChunkStore {
    dir: PathBuf,
    /// Directories whose entries changed since the last `sync_dirty`.
    dirty: Dirty,
    syncer: Syncer,
    /// Makes temp names unique between threads storing the same chunk.
    seq: AtomicU64,
    /// Writes chunks with O_DIRECT where the filesystem takes it: they are
    /// synced at once and read only at a restore, and copying them into
    /// fresh page-cache pages was the receiver's main cost.
    engine: IoEngine,
}

impl ChunkStore {
    /// The store in `dir`, created (mode 0700) if missing, writing through
    /// `engine`.
    pub fn open(dir: &Path, engine: IoEngine) -> Result<ChunkStore, PathError> {
        durable::create_dir_all_durable(dir, 0o700)?;
        let dirty = Dirty::default();
        let store = ChunkStore {
            dir: dir.to_owned(),
            dirty: dirty.clone(),
            syncer: Syncer::start(dirty),
            seq: AtomicU64::new(0),
            engine,
        };
        store.remove_dead_temps();
        Ok(store)
    }

    /// Temp files of a server that was killed while writing a chunk: their
    /// name carries the writer's pid, so those of a live process (another
    /// server on the same root) are left alone.
    fn remove_dead_temps(&self) {
        let Ok(fans) = fs::read_dir(&self.dir) else {
            return;
        };
        for fan in fans.flatten() {
            let Ok(entries) = fs::read_dir(fan.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(TEMP_SUFFIX) else {
                    continue;
                };
                let pid = stem.rsplit('.').nth(1).and_then(|p| p.parse::<u32>().ok());
                let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if !alive {
                    tracing::info!(file = %e.path().display(), "removing a chunk left half-written by a killed server");
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    fn fanout(&self, h: &ChunkHash) -> PathBuf {
        self.dir.join(&h.to_hex()[..2])
    }

    /// Where the chunk named `h` lives.
    pub fn path(&self, h: &ChunkHash) -> PathBuf {
        self.fanout(h).join(h.to_hex())
    }

    /// Check `blob` against its header and store it unless already held.
    pub fn put(&self, blob: &[u8]) -> Result<(ChunkHash, Put), PutError> {
        let (header, _) = blob::open(blob)?;
        let hash = header.hash;
        if self.touch(&hash)? {
            return Ok((hash, Put::Existed));
        }
        let fan = self.fanout(&hash);
        match fs::DirBuilder::new().mode(0o700).create(&fan) {
            Ok(()) => self.mark_dirty(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(PathError::new("creating directory", &fan, e).into()),
        }
        let path = self.path(&hash);
        let tmp = fan.join(format!(
            ".{}.{}.{}{TEMP_SUFFIX}",
            hash.to_hex(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        ));
        // The name is this process's and this call's alone (pid, sequence
        // number), and temps of dead writers are gone since `open`.
        let written = (|| {
            let mut w = self.engine.create_file(&tmp, 0o600)?;
            w.write(blob)?;
            w.finish()
        })()
        .map_err(|e| e.into_path_error(&tmp));
        match written {
            Ok(file) => self.syncer.submit(Job { file, tmp, path }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.into());
            }
        }
        Ok((hash, Put::Stored(blob.len() as u64)))
    }

    fn mark_dirty(&self, dir: &Path) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_owned());
    }

    /// Wait until every chunk stored so far is durable under its name (or,
    /// if its sync failed, gone).
    pub fn settle(&self) {
        self.syncer.settle();
    }

    /// Make every chunk stored so far durable under its name, and the
    /// directory entries that name them.
    pub fn sync_dirty(&self) -> Result<(), PathError> {
        self.syncer.settle();
        let dirs = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        // Fan-out directories before the top one that lists them.
        for d in dirs.iter().rev() {
            if let Err(e) = durable::sync_dir(d) {
                self.dirty
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(dirs.iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether the chunk is held; if it is, mark it as just used so a
    /// concurrent delete spares it.
    pub fn touch(&self, h: &ChunkHash) -> Result<bool, PathError> {
        let path = self.path(h);
        // On its way: durable before any record that names it.
        if self.syncer.is_pending(&path) {
            return Ok(true);
        }
        match File::open(&path) {
            Ok(f) => {
                if let Err(e) = f.set_modified(SystemTime::now()) {
                    // Only the grace period suffers; the answer stands.
                    tracing::debug!(path = %path.display(), error = %e, "cannot refresh a chunk's mtime");
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(PathError::new("opening", &path, e)),
        }
    }

    /// The header of a held chunk, checked against its name; `None` if the
    /// chunk is absent.
    pub fn header(&self, h: &ChunkHash) -> Result<Option<Result<ChunkHeader, Damaged>>, PathError> {
        let path = self.path(h);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PathError::new("opening", &path, e)),
        };
        let mut buf = Vec::with_capacity(CHUNK_HEADER_LEN);
        (&mut f)
            .take(CHUNK_HEADER_LEN as u64)
            .read_to_end(&mut buf)
            .at("reading", &path)?;
        let damaged = |reason: String| Damaged {
            path: path.clone(),
            reason,
        };
        Ok(Some(match blob::parse(&buf) {
            Ok((hdr, _)) if hdr.hash == *h => Ok(hdr),
            Ok((hdr, _)) => Err(damaged(format!("its header names {}", hdr.hash))),
            Err(e) => Err(damaged(e.to_string())),
        }))
    }

    /// The stored blob, as received; `None` if absent.
    pub fn read(&self, h: &ChunkHash) -> Result<Option<Vec<u8>>, PathError> {
        let path = self.path(h);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PathError::new("opening", &path, e)),
        };
        let mut out = Vec::new();
        f.take(MAX_FRAME_PAYLOAD as u64 + 1)
            .read_to_end(&mut out)
            .at("reading", &path)?;
        if out.len() > MAX_FRAME_PAYLOAD {
            return Err(PathError::new(
                "reading",
                &path,
                io::Error::new(io::ErrorKind::InvalidData, "larger than any chunk can be"),
            ));
        }
        Ok(Some(out))
    }

    /// Remove a chunk (a damaged one, found by a check).
    pub fn remove(&self, h: &ChunkHash) -> Result<(), PathError> {
        let path = self.path(h);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PathError::new("removing", &path, e)),
        }
    }

    /// Remove every chunk not in `keep` and not used since `before`, and
    /// temp files of killed writers older than that.
    pub fn sweep(&self, keep: &HashSet<ChunkHash>, before: SystemTime) -> Result<Sweep, PathError> {
        let mut out = Sweep::default();
        for fan in fs::read_dir(&self.dir).at("listing", &self.dir)? {
            let fan = fan.at("listing", &self.dir)?;
            let name = fan.file_name();
            let is_fanout = name
                .to_str()
                .is_some_and(|n| n.len() == 2 && n.bytes().all(|b| b.is_ascii_hexdigit()));
            if !is_fanout {
                continue;
            }
            let dir = fan.path();
            let mut changed = false;
            for entry in fs::read_dir(&dir).at("listing", &dir)? {
                let entry = entry.at("listing", &dir)?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let hash = ChunkHash::from_hex(name);
                let is_temp = name.starts_with('.') && name.ends_with(TEMP_SUFFIX);
                if hash.is_some_and(|h| keep.contains(&h)) || (hash.is_none() && !is_temp) {
                    continue;
                }
                let path = entry.path();
                let md = match fs::symlink_metadata(&path) {
                    Ok(md) => md,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(PathError::new("inspecting", &path, e)),
                };
                if !md.is_file() || md.modified().is_ok_and(|t| t >= before) {
                    continue;
                }
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(PathError::new("removing", &path, e)),
                }
                changed = true;
                if hash.is_some() {
                    out.chunks += 1;
                    out.bytes += md.len();
                }
            }
            if changed {
                durable::sync_dir(&dir)?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn temps_of_dead_writers_are_removed_on_open() {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let fan = d.path().join("ab");
        fs::create_dir_all(&fan).unwrap();
        // pid 0 never names a live process; our own pid does.
        let dead = fan.join(format!(".{}.0.1{TEMP_SUFFIX}", "ab".repeat(32)));
        let live = fan.join(format!(
            ".{}.{}.1{TEMP_SUFFIX}",
            "ab".repeat(32),
            std::process::id()
        ));
        fs::write(&dead, b"half").unwrap();
        fs::write(&live, b"busy").unwrap();
        open_store(d.path());
        assert!(!dead.exists());
        assert!(live.exists());
    }

    use super::*;
    use std::time::Duration;

    fn open_store(dir: &Path) -> ChunkStore {
        let engine = IoEngine::new(&crate::io::IoOptions::default()).unwrap();
        ChunkStore::open(dir, engine).unwrap()
    }

    fn blob_of(raw: &[u8]) -> Vec<u8> {
        let (h, data) = blob::seal(raw, crc32c::crc32c(raw), 1).unwrap();
        let mut b = h.encode().to_vec();
        b.extend(data);
        b
    }

    #[test]
    fn put_once_read_back_sweep() {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let cs = open_store(&d.path().join("chunks"));
        let a = blob_of(b"alpha");
        let b = blob_of(b"beta");
        let (ha, p) = cs.put(&a).unwrap();
        assert_eq!(p, Put::Stored(a.len() as u64));
        assert_eq!(cs.put(&a).unwrap().1, Put::Existed);
        let (hb, _) = cs.put(&b).unwrap();
        cs.sync_dirty().unwrap();
        assert_eq!(cs.read(&ha).unwrap().unwrap(), a);
        assert_eq!(cs.header(&ha).unwrap().unwrap().unwrap().raw_len, 5);
        assert!(cs.read(&ChunkHash([0; 32])).unwrap().is_none());

        // A damaged blob is refused and leaves nothing behind.
        let mut bad = blob_of(b"gamma");
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(cs.put(&bad), Err(PutError::Bad(_))));

        // Young chunks are spared; old unreferenced ones go.
        let keep: HashSet<_> = [ha].into();
        assert_eq!(
            cs.sweep(&keep, SystemTime::now() - Duration::from_secs(60))
                .unwrap()
                .chunks,
            0
        );
        let s = cs
            .sweep(&keep, SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        assert_eq!(s.chunks, 1);
        assert!(cs.read(&hb).unwrap().is_none());
        assert!(cs.read(&ha).unwrap().is_some());
        let files: Vec<_> = walkdir::WalkDir::new(d.path())
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .collect();
        assert_eq!(files.len(), 1, "temp files left: {files:?}");
    }

    #[test]
    fn a_header_naming_another_chunk_is_damage() {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let cs = open_store(d.path());
        let (ha, _) = cs.put(&blob_of(b"alpha")).unwrap();
        let (hb, _) = cs.put(&blob_of(b"beta")).unwrap();
        cs.settle();
        fs::copy(cs.path(&hb), cs.path(&ha)).unwrap();
        assert!(cs.header(&ha).unwrap().unwrap().is_err());
    }
}
