//! Pieces: the units the DR chunk store addresses.
//!
//! A piece is one manifest chunk, so the crc32c the manifest holds for that
//! chunk checks the piece directly and an unchanged chunk of a new set has
//! the same hash as before. Only chunks larger than one frame can carry
//! ([`MAX_PIECE`]) are cut into several pieces; their crc32c is then checked
//! by combining the pieces' crcs.

use rayon::prelude::*;

use super::blob::{self, ChunkHash};
use crate::manifest::FileEntry;
use crate::tier::{Source, TierError};

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

/// A piece read from the cache for a push: checked against the manifest
/// and hashed.
pub struct ReadPiece {
    /// Index of its file in the manifest.
    pub file: usize,
    /// Its index among the file's pieces.
    pub index: usize,
    pub raw: Vec<u8>,
    /// The manifest's crc32c when the piece is a whole chunk.
    pub crc: Option<u32>,
    pub hash: ChunkHash,
}

/// Read every piece of `src` (checked against the manifest's crc32c by
/// [`Source::for_each_chunk`]) and hand them to `send` in batches of about
/// `batch_bytes` or `batch_pieces`, hashed in parallel. Returns the bytes
/// read. Stops early, without error, when `send` returns false (the
/// receiving side failed and reports why).
pub fn read_batches(
    src: &Source<'_>,
    batch_bytes: usize,
    batch_pieces: usize,
    send: &mut dyn FnMut(Vec<ReadPiece>) -> bool,
) -> Result<u64, TierError> {
    let mut batch: Vec<ReadPiece> = Vec::new();
    let mut in_batch = 0usize;
    let mut read = 0u64;
    let mut gone = false;
    let mut flush = |batch: &mut Vec<ReadPiece>| -> bool {
        crate::sched::in_drain_pool(|| {
            batch
                .par_iter_mut()
                .for_each(|p| p.hash = ChunkHash::of(&p.raw))
        });
        send(std::mem::take(batch))
    };
    for (fi, file) in src.manifest.files.iter().enumerate() {
        let mut index = 0usize;
        let r = src.for_each_chunk(file, &mut |chunk, bytes| {
            read += bytes.len() as u64;
            for (at, len, _) in split(bytes.len() as u64) {
                let at = at as usize;
                let whole = len == bytes.len();
                batch.push(ReadPiece {
                    file: fi,
                    index,
                    raw: bytes[at..at + len].to_vec(),
                    crc: file.crc32c.get(chunk as usize).copied().filter(|_| whole),
                    hash: ChunkHash([0; 32]),
                });
                index += 1;
                in_batch += len;
            }
            if in_batch >= batch_bytes || batch.len() >= batch_pieces {
                in_batch = 0;
                if !flush(&mut batch) {
                    gone = true;
                    return Err(TierError::local(&src.dir, "the sender stopped"));
                }
            }
            Ok(())
        });
        if gone {
            return Ok(read);
        }
        r?;
    }
    if !batch.is_empty() {
        flush(&mut batch);
    }
    Ok(read)
}

/// Where a fetch gets one file's pieces from, in order, each checked.
pub trait Pieces {
    /// The next piece's raw bytes; `None` after the last.
    fn next_piece(&mut self) -> Result<Option<Vec<u8>>, TierError>;
}

/// A file's bytes read from its [`Pieces`], for the I/O engine to write.
/// A `Read` can only say "error": the reason is kept in `failure`.
pub struct PieceRead<P> {
    pub pieces: P,
    cur: Vec<u8>,
    pos: usize,
    pub failure: Option<TierError>,
}

impl<P> PieceRead<P> {
    pub fn new(pieces: P) -> PieceRead<P> {
        PieceRead {
            pieces,
            cur: Vec::new(),
            pos: 0,
            failure: None,
        }
    }
}

impl<P: Pieces> std::io::Read for PieceRead<P> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some(f) = &self.failure {
            return Err(std::io::Error::other(f.to_string()));
        }
        while self.pos == self.cur.len() {
            match self.pieces.next_piece() {
                Ok(Some(raw)) => {
                    self.cur = raw;
                    self.pos = 0;
                }
                Ok(None) => return Ok(0),
                Err(e) => {
                    let message = e.to_string();
                    self.failure = Some(e);
                    return Err(std::io::Error::other(message));
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Checks one file's pieces as they arrive, in order, from any tier that
/// stores blobs: the blob against its own header, its hash against the
/// set record's, its length against the piece, and each chunk's crc32c
/// (combined over its pieces) against the manifest.
#[derive(Default)]
pub struct Checker {
    /// crc32c of the current chunk so far.
    crc: u32,
}

impl Checker {
    /// The piece's raw bytes, or what is wrong with it (for a
    /// [`Corruption`](crate::tier::Corruption)'s detail).
    pub fn check(
        &mut self,
        file: &FileEntry,
        piece: &Piece,
        want: ChunkHash,
        blob: &[u8],
    ) -> Result<Vec<u8>, String> {
        let (header, raw) = blob::open(blob).map_err(|e| e.to_string())?;
        if header.hash != want {
            return Err(format!("got chunk {} for {want}", header.hash));
        }
        if raw.len() != piece.len {
            return Err(format!(
                "chunk {want} has {} bytes, the record calls for {}",
                raw.len(),
                piece.len
            ));
        }
        self.crc = if piece.starts_chunk {
            header.crc32c
        } else {
            crc32c::crc32c_combine(self.crc, header.crc32c, raw.len())
        };
        if piece.ends_chunk {
            let expect = file.crc32c.get(piece.chunk as usize).copied();
            if expect != Some(self.crc) {
                return Err(format!(
                    "crc32c {:08x}, the manifest says {}",
                    self.crc,
                    expect.map_or("nothing".into(), |w| format!("{w:08x}"))
                ));
            }
        }
        Ok(raw)
    }
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
