//! Checksums of CRIU's images, fast: chunks in parallel, and a dump's page
//! images checksummed and written back while CRIU is still writing them.
//!
//! CRIU writes `pages-N.img` front to back and never goes back, so a chunk
//! that lies wholly below the file's current size is final: the streamer
//! checksums it (from the page cache) and starts its writeback as soon as
//! it is there, overlapping the commit's work with the dump itself. Should
//! that ever not hold, the manifest would disagree with the file and every
//! verification (restore, drain, `ckptfs verify`) would say so.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rayon::prelude::*;

use super::pages::is_page_image;
use crate::chunk::FileDigest;
use crate::durable::{start_writeback, IoContext, PathError};

/// crc32c of chunks `first..` of `path` (`size` bytes), in parallel.
pub fn crcs_from(
    path: &Path,
    size: u64,
    chunk_size: u64,
    first: u64,
) -> Result<Vec<u32>, PathError> {
    let f = File::open(path).at("opening", path)?;
    let n = FileDigest::chunk_count(size, chunk_size);
    (first..n)
        .into_par_iter()
        .map_init(
            || vec![0u8; chunk_size as usize],
            |buf, i| {
                let at = i * chunk_size;
                let len = (size - at).min(chunk_size) as usize;
                f.read_exact_at(&mut buf[..len], at).at("reading", path)?;
                Ok(crc32c::crc32c(&buf[..len]))
            },
        )
        .collect()
}

/// The digest of a whole file, chunks in parallel.
pub fn digest(path: &Path, chunk_size: u64) -> Result<FileDigest, PathError> {
    let size = std::fs::metadata(path).at("reading", path)?.len();
    Ok(FileDigest {
        size,
        chunk_size,
        crc32c: crcs_from(path, size, chunk_size, 0)?,
    })
}

/// What the streamer got done for one page image.
#[derive(Debug, Default)]
pub struct Partial {
    /// crc32c of the leading whole chunks.
    pub crcs: Vec<u32>,
}

/// Checksums and writeback of a dump's page images while CRIU writes them.
pub struct Streamer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<HashMap<PathBuf, Partial>>>,
}

struct Tracked {
    file: File,
    partial: Partial,
    flushed: u64,
}

impl Streamer {
    /// Only for a tree CRIU leaves stopped: with `--leave-running` the tree
    /// stays frozen for as long as CRIU runs, and this work slows CRIU.
    pub fn start(dir: &Path, chunk_size: u64) -> Streamer {
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, flag) = (dir.to_owned(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("ckptfs-dump-seal".into())
            .spawn(move || stream(&dir, chunk_size, &flag))
            .ok();
        Streamer { stop, handle }
    }

    /// Stop (CRIU has exited) and hand over what was done.
    pub fn finish(mut self) -> HashMap<PathBuf, Partial> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn stream(dir: &Path, chunk_size: u64, stop: &AtomicBool) -> HashMap<PathBuf, Partial> {
    let mut files: HashMap<PathBuf, Tracked> = HashMap::new();
    let mut buf = vec![0u8; chunk_size as usize];
    while !stop.load(Ordering::SeqCst) {
        let mut progress = false;
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                if !name.to_str().is_some_and(is_page_image) {
                    continue;
                }
                let path = e.path();
                if !files.contains_key(&path) {
                    let Ok(file) = File::open(&path) else {
                        continue;
                    };
                    files.insert(
                        path.clone(),
                        Tracked {
                            file,
                            partial: Partial::default(),
                            flushed: 0,
                        },
                    );
                }
                let Some(t) = files.get_mut(&path) else {
                    continue;
                };
                let size = t.file.metadata().map(|m| m.len()).unwrap_or(0);
                if size > t.flushed {
                    // Start writeback now; the commit's fsync then has
                    // little left to wait for.
                    start_writeback(&t.file, t.flushed, size - t.flushed);
                    t.flushed = size;
                }
                // A few chunks per pass, so every file keeps up.
                for _ in 0..16 {
                    let at = t.partial.crcs.len() as u64 * chunk_size;
                    if at + chunk_size > size || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if t.file.read_exact_at(&mut buf, at).is_err() {
                        break;
                    }
                    t.partial.crcs.push(crc32c::crc32c(&buf));
                    progress = true;
                }
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    files.into_iter().map(|(p, t)| (p, t.partial)).collect()
}

/// The digest of `path`, finishing what the streamer began.
pub fn finish_digest(
    path: &Path,
    chunk_size: u64,
    partial: Option<Partial>,
) -> Result<FileDigest, PathError> {
    let size = std::fs::metadata(path).at("reading", path)?.len();
    let mut crcs = partial.map(|p| p.crcs).unwrap_or_default();
    // Never trust more chunks than the file now has whole.
    crcs.truncate((size / chunk_size) as usize);
    let more = crcs_from(path, size, chunk_size, crcs.len() as u64)?;
    crcs.extend(more);
    Ok(FileDigest {
        size,
        chunk_size,
        crc32c: crcs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn streamed_and_parallel_digests_match_the_plain_one() {
        let d = crate::testutil::scratch("ckpt-seal-");
        let chunk = 4096u64;
        let s = Streamer::start(d.path(), chunk);
        let p = d.path().join("pages-1.img");
        let mut f = File::create(&p).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for piece in data.chunks(9000) {
            f.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(f);
        let partials = s.finish();
        let got = finish_digest(&p, chunk, partials.into_values().next()).unwrap();
        assert_eq!(got, FileDigest::of_bytes(&data, chunk));
        assert_eq!(digest(&p, chunk).unwrap(), got);
        let empty = d.path().join("empty");
        File::create(&empty).unwrap();
        assert_eq!(
            digest(&empty, chunk).unwrap(),
            FileDigest::of_bytes(&[], chunk)
        );
    }
}
