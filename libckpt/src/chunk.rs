//! Per-chunk crc32c: a file's bytes split at fixed chunk boundaries, one
//! checksum per chunk.
//!
//! The hasher is fed whatever slices the I/O path happens to move (a 1 MiB
//! buffer, a 4 KiB tail, a FUSE write) and cuts them at chunk boundaries
//! itself, so the chunk size a set is checksummed with is independent of the
//! buffer size the engine writes with. The crc is computed while the bytes
//! pass through, never by reading the file a second time.

use serde::{Deserialize, Serialize};

/// Smallest chunk size the store accepts: one page.
pub const MIN_CHUNK_SIZE: u64 = 4096;
/// Largest chunk size the store accepts.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;
/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;

/// Streaming per-chunk crc32c.
#[derive(Debug, Clone)]
pub struct ChunkHasher {
    chunk_size: u64,
    /// Bytes already folded into `current`.
    in_chunk: u64,
    current: u32,
    total: u64,
    crcs: Vec<u32>,
}

impl ChunkHasher {
    /// A hasher cutting at `chunk_size` bytes. `chunk_size` must be non-zero;
    /// callers validate it against [`MIN_CHUNK_SIZE`]/[`MAX_CHUNK_SIZE`]
    /// where it comes from user input.
    pub fn new(chunk_size: u64) -> Self {
        assert!(chunk_size > 0, "chunk size must be non-zero");
        Self {
            chunk_size,
            in_chunk: 0,
            current: 0,
            total: 0,
            crcs: Vec::new(),
        }
    }

    /// Fold the next bytes of the file in.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.chunk_size - self.in_chunk;
            let take = room.min(bytes.len() as u64) as usize;
            let (head, rest) = bytes.split_at(take);
            self.current = crc32c::crc32c_append(self.current, head);
            self.in_chunk += take as u64;
            self.total += take as u64;
            if self.in_chunk == self.chunk_size {
                self.crcs.push(self.current);
                self.current = 0;
                self.in_chunk = 0;
            }
            bytes = rest;
        }
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True before any byte was seen.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The digest of everything fed in. An empty file has no chunks.
    pub fn finish(mut self) -> FileDigest {
        if self.in_chunk > 0 {
            self.crcs.push(self.current);
        }
        FileDigest {
            size: self.total,
            chunk_size: self.chunk_size,
            crc32c: self.crcs,
        }
    }
}

/// Size and per-chunk crc32c of one file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub size: u64,
    pub chunk_size: u64,
    pub crc32c: Vec<u32>,
}

impl FileDigest {
    /// Digest of an in-memory buffer (tests, small files).
    pub fn of_bytes(bytes: &[u8], chunk_size: u64) -> Self {
        let mut h = ChunkHasher::new(chunk_size);
        h.update(bytes);
        h.finish()
    }

    /// Number of chunks a file of `size` bytes has at `chunk_size`.
    pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
        size.div_ceil(chunk_size)
    }

    /// The first chunk whose crc differs from `other`'s, if sizes agree;
    /// `None` when the digests are equal.
    pub fn first_mismatch(&self, other: &FileDigest) -> Option<usize> {
        self.crc32c
            .iter()
            .zip(other.crc32c.iter())
            .position(|(a, b)| a != b)
            .or_else(|| {
                (self.crc32c.len() != other.crc32c.len())
                    .then(|| self.crc32c.len().min(other.crc32c.len()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_feeding_matches_one_shot() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = FileDigest::of_bytes(&data, 4096);
        for step in [1usize, 100, 4095, 4096, 4097, 9000] {
            let mut h = ChunkHasher::new(4096);
            for part in data.chunks(step) {
                h.update(part);
            }
            assert_eq!(h.finish(), whole, "step {step}");
        }
        assert_eq!(whole.crc32c.len(), 5);
        assert_eq!(whole.size, 20_000);
        assert_eq!(whole.crc32c[0], crc32c::crc32c(&data[..4096]));
        assert_eq!(whole.crc32c[4], crc32c::crc32c(&data[16384..]));
    }

    #[test]
    fn empty_file_has_no_chunks() {
        let d = FileDigest::of_bytes(&[], 4096);
        assert_eq!(d.size, 0);
        assert!(d.crc32c.is_empty());
        assert_eq!(FileDigest::chunk_count(0, 4096), 0);
        assert_eq!(FileDigest::chunk_count(4096, 4096), 1);
        assert_eq!(FileDigest::chunk_count(4097, 4096), 2);
    }

    #[test]
    fn exact_multiple_has_no_trailing_empty_chunk() {
        let d = FileDigest::of_bytes(&[1u8; 8192], 4096);
        assert_eq!(d.crc32c.len(), 2);
    }

    #[test]
    fn mismatch_names_the_chunk() {
        let mut data = vec![0u8; 3 * 4096];
        let a = FileDigest::of_bytes(&data, 4096);
        data[5000] ^= 1;
        let b = FileDigest::of_bytes(&data, 4096);
        assert_eq!(a.first_mismatch(&b), Some(1));
        assert_eq!(a.first_mismatch(&a), None);
        let short = FileDigest::of_bytes(&data[..4096], 4096);
        assert_eq!(a.first_mismatch(&short), Some(1));
    }
}
