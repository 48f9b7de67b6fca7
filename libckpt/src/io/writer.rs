//! A file written by a stream of pushes rather than pulled from a `Read`:
//! what a drain tier needs when the bytes arrive chunk by chunk from a
//! callback (the PFS copy of a set).
//!
//! The point is O_DIRECT: on the machines we measured, copying into fresh
//! page-cache pages costs more CPU than the whole rest of a PFS drain (84 %
//! of the daemon's samples), and a tier copy is synced at once and not read
//! back, so the page cache gains nothing from holding it. Whole pages that
//! arrive page-aligned go to the disk straight from the caller's memory;
//! anything else is staged in one of the engine's aligned buffers first.
//! The unaligned tail goes buffered, as in [`IoEngine::write_file`].

use std::fs::File;
use std::path::Path;

use super::buffer::{AlignedBuf, PAGE};
use super::{fallback, IoEngine, IoError, Target};

/// A file being written in order by [`FileWriter::write`]; see
/// [`IoEngine::create_file`]. Nothing is synced: the caller decides when
/// the copy must be durable. Dropped unfinished (an error on the way), its
/// staging buffer is freed rather than returned to the engine's pool.
pub struct FileWriter<'e> {
    engine: &'e IoEngine,
    target: Target,
    /// Staging for bytes that cannot go direct from where they are.
    stage: Option<AlignedBuf>,
    staged: usize,
    /// File offset of the first byte not yet written (staged bytes follow
    /// it).
    off: u64,
}

impl IoEngine {
    /// Create (or truncate) `path` with `mode` for [`FileWriter::write`],
    /// with O_DIRECT as configured and as the filesystem accepts.
    pub fn create_file(&self, path: &Path, mode: u32) -> Result<FileWriter<'_>, IoError> {
        Ok(FileWriter {
            engine: self,
            target: Target::create(path, mode, self.opts.direct)?,
            stage: None,
            staged: 0,
            off: 0,
        })
    }
}

impl FileWriter<'_> {
    /// Append `bytes`.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), IoError> {
        if !self.target.is_direct() {
            self.flush_stage()?;
            return self.put(bytes);
        }
        if self.staged == 0 && (bytes.as_ptr() as usize).is_multiple_of(PAGE) {
            // Already where O_DIRECT can take it from: no copy.
            let whole = bytes.len() - bytes.len() % PAGE;
            if whole > 0 {
                self.put(&bytes[..whole])?;
                bytes = &bytes[whole..];
            }
        }
        while !bytes.is_empty() {
            let stage = match self.stage.as_mut() {
                Some(s) => s,
                None => {
                    let buf = self
                        .engine
                        .bufs
                        .checkout()
                        .map_err(|e| self.target.write_err(self.off, e))?;
                    self.stage.insert(buf)
                }
            };
            let room = stage.capacity() - self.staged;
            let take = room.min(bytes.len());
            stage.as_mut_slice()[self.staged..self.staged + take].copy_from_slice(&bytes[..take]);
            self.staged += take;
            bytes = &bytes[take..];
            if self.staged == stage.capacity() {
                self.flush_stage()?;
            }
        }
        Ok(())
    }

    /// Write what is staged, the unaligned tail included, and hand back the
    /// file (unsynced) for the caller's metadata and sync.
    pub fn finish(mut self) -> Result<File, IoError> {
        self.flush_stage()?;
        if let Some(buf) = self.stage.take() {
            self.engine.bufs.give_back(buf);
        }
        self.target.log_summary("stream write");
        Ok(self.target.file)
    }

    fn flush_stage(&mut self) -> Result<(), IoError> {
        let n = std::mem::take(&mut self.staged);
        if n == 0 {
            return Ok(());
        }
        if let Some(stage) = &self.stage {
            fallback::write_at(&mut self.target, &stage.as_slice()[..n], self.off)?;
            self.off += n as u64;
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        fallback::write_at(&mut self.target, bytes, self.off)?;
        self.off += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{cached, IoOptions};

    fn engine() -> IoEngine {
        IoEngine::new(&IoOptions::default()).expect("engine")
    }

    /// On a disk-backed filesystem: tmpfs keeps everything in the page
    /// cache whatever the flags.
    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("ckpt-writer-")
            .tempdir_in("/var/tmp")
            .expect("scratch dir under /var/tmp")
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn any_mix_of_aligned_and_ragged_pieces_writes_the_same_bytes() {
        let dir = scratch();
        let e = engine();
        let data = pattern(3 * (1 << 20) + 5 * PAGE + 123);
        let mut aligned = AlignedBuf::new(2 << 20).expect("buf");
        aligned.as_mut_slice().copy_from_slice(&data[..2 << 20]);
        // An aligned 2 MiB piece (direct from here), ragged pieces that
        // must be staged, then the unaligned tail.
        let path = dir.path().join("f");
        let mut w = e.create_file(&path, 0o600).expect("create");
        w.write(aligned.as_slice()).expect("aligned piece");
        let mut at = 2 << 20;
        for len in [1, 4095, 4096, 100_000, 7] {
            w.write(&data[at..at + len]).expect("ragged piece");
            at += len;
        }
        w.write(&data[at..]).expect("rest");
        drop(w.finish().expect("finish"));
        assert_eq!(std::fs::read(&path).expect("read back"), data);
    }

    #[test]
    fn whole_aligned_pages_bypass_the_page_cache() {
        let dir = scratch();
        // The control: a buffered write is cached, or this kernel cannot
        // tell (cachestat, Linux 6.5+).
        let control = dir.path().join("control");
        std::fs::write(&control, vec![1u8; 1 << 20]).expect("write control");
        let f = File::open(&control).expect("open control");
        if !cached::mostly_cached(&f, 1 << 20) {
            eprintln!("skipped: the kernel cannot say what is cached");
            return;
        }
        let e = engine();
        let path = dir.path().join("f");
        let mut buf = AlignedBuf::new(2 << 20).expect("buf");
        buf.as_mut_slice().fill(0xa5);
        let mut w = e.create_file(&path, 0o600).expect("create");
        if !w.target.is_direct() {
            eprintln!("skipped: {} refuses O_DIRECT", dir.path().display());
            return;
        }
        // Direct from the caller's buffer, then staged (unaligned address).
        w.write(&buf.as_slice()[..1 << 20]).expect("write");
        w.write(&buf.as_slice()[1..=1 << 20]).expect("write");
        drop(w.finish().expect("finish"));
        let f = File::open(&path).expect("open");
        assert_eq!(f.metadata().expect("stat").len(), 2 << 20);
        assert!(
            !cached::mostly_cached(&f, 2 << 20),
            "direct writes left the file in the page cache"
        );
    }
}
