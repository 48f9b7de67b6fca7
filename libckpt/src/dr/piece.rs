//! Pieces: the units the DR chunk store addresses.
//!
//! A piece is one manifest chunk, so the crc32c the manifest holds for that
//! chunk checks the piece directly and an unchanged chunk of a new set has
//! the same hash as before. Only chunks larger than one frame can carry
//! ([`MAX_PIECE`]) are cut into several pieces; their crc32c is then checked
//! by combining the pieces' crcs.

use crate::manifest::FileEntry;

pub use super::frame::MAX_PIECE;

/// Where one piece lies in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The manifest chunk it belongs to.
    pub chunk: u64,
    /// Its offset in the file.
    pub offset: u64,
    pub len: usize,
    /// It is the first piece of its chunk: a new crc32c starts.
    pub starts_chunk: bool,
    /// It is the last piece of its chunk: the chunk's crc32c can be checked.
    pub ends_chunk: bool,
}

/// The pieces of `file`, in order. `file` is a checked manifest entry
/// (chunk size within bounds).
pub fn pieces(file: &FileEntry) -> impl Iterator<Item = Piece> + '_ {
    let cs = file.chunk_size.max(1);
    let chunks = file.size.div_ceil(cs);
    (0..chunks).flat_map(move |chunk| {
        let start = chunk * cs;
        let chunk_len = (file.size - start).min(cs);
        split(chunk_len).map(move |(at, len, last)| Piece {
            chunk,
            offset: start + at,
            len,
            starts_chunk: at == 0,
            ends_chunk: last,
        })
    })
}

/// How many pieces `file` has.
pub fn count(file: &FileEntry) -> u64 {
    let cs = file.chunk_size.max(1);
    let whole = file.size / cs;
    let tail = file.size % cs;
    whole * cs.div_ceil(MAX_PIECE as u64) + tail.div_ceil(MAX_PIECE as u64)
}

/// Cut a chunk of `len` bytes into (offset, len, is-last) pieces.
pub fn split(len: u64) -> impl Iterator<Item = (u64, usize, bool)> {
    let n = len.div_ceil(MAX_PIECE as u64);
    (0..n).map(move |i| {
        let at = i * MAX_PIECE as u64;
        (at, (len - at).min(MAX_PIECE as u64) as usize, i + 1 == n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::RelPath;
    use std::time::SystemTime;

    fn entry(size: u64, chunk_size: u64) -> FileEntry {
        FileEntry {
            path: RelPath::new("f").unwrap(),
            size,
            mode: 0o600,
            mtime: SystemTime::UNIX_EPOCH,
            chunk_size,
            crc32c: vec![0; size.div_ceil(chunk_size) as usize],
        }
    }

    #[test]
    fn one_piece_per_chunk_when_chunks_fit() {
        let f = entry(300_000, 65536);
        let p: Vec<_> = pieces(&f).collect();
        assert_eq!(p.len(), 5);
        assert_eq!(count(&f), 5);
        assert!(p.iter().all(|p| p.ends_chunk));
        assert_eq!(p[4].offset, 4 * 65536);
        assert_eq!(p[4].len, 300_000 - 4 * 65536);
        assert_eq!(pieces(&entry(0, 4096)).count(), 0);
    }

    #[test]
    fn big_chunks_are_cut() {
        let mp = MAX_PIECE as u64;
        let cs = 5 * mp / 2;
        let f = entry(2 * cs + 5, cs);
        let p: Vec<_> = pieces(&f).collect();
        assert_eq!(p.len() as u64, count(&f));
        // Two 40 MiB chunks → 3 pieces each (16, 16, 8), then a 5-byte tail.
        assert_eq!(p.len(), 7);
        assert_eq!(p.iter().filter(|p| p.ends_chunk).count(), 3);
        assert_eq!(p[2].len, (mp / 2) as usize);
        assert_eq!(p[6].len, 5);
        let total: usize = p.iter().map(|p| p.len).sum();
        assert_eq!(total as u64, f.size);
        for w in p.windows(2) {
            assert_eq!(w[0].offset + w[0].len as u64, w[1].offset);
        }
    }
}
