//! A chunk as it travels and as it rests: a fixed header naming the piece
//! (BLAKE3 hash of its raw bytes, crc32c, raw length, codec) followed by the
//! zstd-compressed bytes, or the raw bytes where zstd does not pay.
//!
//! ```text
//! offset  size  field
//!      0    32  BLAKE3 of the raw bytes: the chunk's name in the store
//!     32     4  crc32c of the raw bytes, big-endian (the manifest's value)
//!     36     4  raw length, big-endian, at most MAX_PIECE
//!     40     1  codec: 1 = zstd, 0 = stored (raw bytes)
//!     41     3  reserved, 0
//!     44     …  one zstd frame, or the raw bytes
//! ```
//!
//! The same bytes are a `PutChunk` payload, the file in the server's store,
//! a `Chunk` reply and a chunk object in an S3 bucket, so whoever holds it
//! stores and serves what it received without recompressing, and the
//! receiver of any copy can check it alone.

use std::cell::RefCell;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::frame::MAX_PIECE;
use super::proto::hex;

pub const CHUNK_HEADER_LEN: usize = 44;
const CODEC_ZSTD: u8 = 1;
const CODEC_STORED: u8 = 0;

/// BLAKE3 of a piece's raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    pub fn of(raw: &[u8]) -> ChunkHash {
        ChunkHash(*blake3::hash(raw).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<ChunkHash> {
        hex::decode32(s).ok().map(ChunkHash)
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

impl Serialize for ChunkHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode32(&s)
            .map(ChunkHash)
            .map_err(|e| serde::de::Error::custom(format!("chunk hash {e}")))
    }
}

/// The fixed part of a chunk blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub hash: ChunkHash,
    pub crc32c: u32,
    pub raw_len: u32,
    /// The data is zstd (else the raw bytes: noise does not compress).
    pub zstd: bool,
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        h[..32].copy_from_slice(&self.hash.0);
        h[32..36].copy_from_slice(&self.crc32c.to_be_bytes());
        h[36..40].copy_from_slice(&self.raw_len.to_be_bytes());
        h[40] = if self.zstd { CODEC_ZSTD } else { CODEC_STORED };
        h
    }
}

/// Why a chunk blob is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("a chunk of {len} bytes is shorter than its {CHUNK_HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("chunk {hash}: unknown codec {codec} (reserved bytes {reserved:02x?})")]
    Codec {
        hash: ChunkHash,
        codec: u8,
        reserved: [u8; 3],
    },
    #[error("chunk {hash}: {raw_len} raw bytes, over the {MAX_PIECE}-byte piece limit")]
    TooLarge { hash: ChunkHash, raw_len: u32 },
    #[error("chunk {hash}: cannot decompress: {message}")]
    Decompress { hash: ChunkHash, message: String },
    #[error("chunk {hash}: decompresses to {got} bytes, its header says {want}")]
    Length {
        hash: ChunkHash,
        got: usize,
        want: u32,
    },
    #[error("chunk {hash}: the bytes hash to {got}")]
    Hash { hash: ChunkHash, got: ChunkHash },
    #[error("chunk {hash}: crc32c {got:08x}, its header says {want:08x}")]
    Crc {
        hash: ChunkHash,
        got: u32,
        want: u32,
    },
    #[error("compressing a chunk: {message}")]
    Compress { message: String },
}

/// Compress `raw` (whose crc32c the caller has checked against the
/// manifest) into a blob: the header and the zstd frame.
pub fn seal(raw: &[u8], crc32c: u32, level: i32) -> Result<(ChunkHeader, Vec<u8>), BlobError> {
    seal_hashed(raw, ChunkHash::of(raw), crc32c, level)
}

/// [`seal`] with the hash already known.
pub fn seal_hashed(
    raw: &[u8],
    hash: ChunkHash,
    crc32c: u32,
    level: i32,
) -> Result<(ChunkHeader, Vec<u8>), BlobError> {
    if raw.len() > MAX_PIECE {
        return Err(BlobError::TooLarge {
            hash,
            raw_len: u32::try_from(raw.len()).unwrap_or(u32::MAX),
        });
    }
    let data = compress(raw, level).map_err(|e| BlobError::Compress {
        message: e.to_string(),
    })?;
    // Where zstd does not shrink the bytes, keeping them raw saves the
    // receiver a decompression and the store the frame's overhead.
    let zstd = data.len() < raw.len();
    let header = ChunkHeader {
        hash,
        crc32c,
        raw_len: raw.len() as u32,
        zstd,
    };
    Ok((header, if zstd { data } else { raw.to_vec() }))
}

thread_local! {
    /// One zstd context per thread and level, kept between chunks: a fresh
    /// context per 1 MiB chunk spent a tenth of the push clearing its
    /// tables.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let ctx = match &mut *c {
            Some((l, ctx)) if *l == level => ctx,
            slot => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        ctx.compress(raw)
    })
}

fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        let ctx = match &mut *d {
            Some(ctx) => ctx,
            slot => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        ctx.decompress(data, capacity)
    })
}

/// Split a blob into its checked header and compressed bytes. Never panics.
pub fn parse(blob: &[u8]) -> Result<(ChunkHeader, &[u8]), BlobError> {
    if blob.len() < CHUNK_HEADER_LEN {
        return Err(BlobError::Short { len: blob.len() });
    }
    let (h, data) = blob.split_at(CHUNK_HEADER_LEN);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&h[..32]);
    let hash = ChunkHash(hash);
    let be = |a: &[u8]| u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
    let (codec, reserved) = (h[40], [h[41], h[42], h[43]]);
    if !matches!(codec, CODEC_ZSTD | CODEC_STORED) || reserved != [0; 3] {
        return Err(BlobError::Codec {
            hash,
            codec,
            reserved,
        });
    }
    let header = ChunkHeader {
        hash,
        crc32c: be(&h[32..36]),
        raw_len: be(&h[36..40]),
        zstd: codec == CODEC_ZSTD,
    };
    if header.raw_len as usize > MAX_PIECE {
        return Err(BlobError::TooLarge {
            hash,
            raw_len: header.raw_len,
        });
    }
    Ok((header, data))
}

/// Decompress a blob and check its bytes against its own header: length,
/// BLAKE3 and crc32c. Never allocates more than the header's raw length
/// (itself bounded by [`MAX_PIECE`]).
pub fn open(blob: &[u8]) -> Result<(ChunkHeader, Vec<u8>), BlobError> {
    let (header, data) = parse(blob)?;
    let hash = header.hash;
    let raw = if header.zstd {
        decompress(data, header.raw_len as usize).map_err(|e| BlobError::Decompress {
            hash,
            message: e.to_string(),
        })?
    } else {
        data.to_vec()
    };
    if raw.len() != header.raw_len as usize {
        return Err(BlobError::Length {
            hash,
            got: raw.len(),
            want: header.raw_len,
        });
    }
    let got = ChunkHash::of(&raw);
    if got != hash {
        return Err(BlobError::Hash { hash, got });
    }
    let crc = crc32c::crc32c(&raw);
    if crc != header.crc32c {
        return Err(BlobError::Crc {
            hash,
            got: crc,
            want: header.crc32c,
        });
    }
    Ok((header, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(raw: &[u8]) -> Vec<u8> {
        let (h, data) = seal(raw, crc32c::crc32c(raw), 3).unwrap();
        let mut b = h.encode().to_vec();
        b.extend(data);
        b
    }

    #[test]
    fn round_trip() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let b = blob(&raw);
        assert!(b.len() < raw.len() / 10, "compressible data compresses");
        let (h, back) = open(&b).unwrap();
        assert_eq!(back, raw);
        assert_eq!(h.hash, ChunkHash::of(&raw));
        assert_eq!(ChunkHash::from_hex(&h.hash.to_hex()), Some(h.hash));
    }

    #[test]
    fn every_kind_of_damage_is_caught() {
        let raw = vec![42u8; 5000];
        let good = blob(&raw);

        let mut b = good.clone();
        b[0] ^= 1;
        assert!(matches!(open(&b), Err(BlobError::Hash { .. })));
        let mut b = good.clone();
        b[33] ^= 1;
        assert!(matches!(open(&b), Err(BlobError::Crc { .. })));
        let mut b = good.clone();
        b[39] ^= 1;
        assert!(matches!(
            open(&b),
            Err(BlobError::Length { .. } | BlobError::Decompress { .. })
        ));
        let mut b = good.clone();
        b[36] = 0xff;
        assert!(matches!(open(&b), Err(BlobError::TooLarge { .. })));
        let mut b = good.clone();
        b[40] = 0;
        assert!(
            open(&b).is_err(),
            "zstd bytes taken as stored fail the checks"
        );
        let mut b = good.clone();
        b[40] = 2;
        assert!(matches!(open(&b), Err(BlobError::Codec { .. })));
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 0x55;
        assert!(open(&b).is_err());
        assert!(matches!(
            open(&good[..10]),
            Err(BlobError::Short { len: 10 })
        ));
        assert!(open(&good[..good.len() - 3]).is_err());
    }

    #[test]
    fn noise_is_stored_raw() {
        let mut raw = vec![0u8; 70_000];
        let mut x = 0x9e37_79b9_u32;
        for b in raw.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let b = blob(&raw);
        assert_eq!(b[40], CODEC_STORED);
        assert_eq!(b.len(), CHUNK_HEADER_LEN + raw.len());
        let (h, back) = open(&b).unwrap();
        assert!(!h.zstd);
        assert_eq!(back, raw);
        let mut bad = b.clone();
        bad[100] ^= 1;
        assert!(matches!(open(&bad), Err(BlobError::Hash { .. })));
    }

    #[test]
    fn a_full_piece_of_noise_fits_a_frame() {
        let bound = zstd::zstd_safe::compress_bound(MAX_PIECE);
        assert!(bound + CHUNK_HEADER_LEN <= super::super::frame::MAX_FRAME_PAYLOAD);
    }
}
