//! The memory-checkpoint file: the protected regions of one rank, written
//! by `ckpt_checkpoint` as one file of a set (`mem/rank-<r>.ckpt`).
//!
//! Little-endian, versioned, with the whole table up front so a restart
//! can check every region's size before it copies a byte:
//!
//! ```text
//! 0   8  magic "CKPTMEM\0"
//! 8   4  format version (1)
//! 12  4  rank
//! 16  4  number of ranks
//! 20  4  number of regions (n, at most MAX_REGIONS)
//! 24  8  data bytes (the sum of the region lengths)
//! 32  32·n region table, in data order, ids strictly increasing:
//!          id i32 (>= 0), reserved u32 (0), count u64, elem_size u64,
//!          bytes u64 (= count · elem_size)
//! …   the regions' bytes, back to back
//! ```
//!
//! Integrity is the manifest's business (crc32c per chunk of the whole
//! file); this format only has to be parsed strictly: every length is
//! bounded and checked, so a damaged or hostile file is an error, never a
//! huge allocation or an out-of-bounds copy.

use std::io::{self, Read};

/// The first eight bytes of every memory checkpoint.
pub const MAGIC: [u8; 8] = *b"CKPTMEM\0";
/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the region table.
pub const FIXED_HEADER: usize = 32;
/// Bytes per region table entry.
pub const ENTRY_SIZE: usize = 32;
/// Most regions one file may describe.
pub const MAX_REGIONS: u32 = 1 << 16;

/// Why a memory checkpoint could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemImageError {
    #[error("the memory checkpoint is truncated: {need} bytes needed, {have} present")]
    Truncated { need: u64, have: u64 },
    #[error("not a memory checkpoint (bad magic)")]
    BadMagic,
    #[error("memory checkpoint format version {found} is newer than this libckpt understands (up to {FORMAT_VERSION})")]
    FutureVersion { found: u32 },
    #[error("memory checkpoint format version 0 is not valid")]
    ZeroVersion,
    #[error("invalid memory checkpoint: {0}")]
    Invalid(String),
}

/// One protected region as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub id: i32,
    pub count: u64,
    pub elem_size: u64,
}

impl Region {
    /// The region's length in bytes, if it fits in a u64.
    pub fn bytes(&self) -> Option<u64> {
        self.count.checked_mul(self.elem_size)
    }
}

/// The header and region table of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub rank: u32,
    pub ranks: u32,
    /// Sorted by id; the data follows in this order.
    pub regions: Vec<Region>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn invalid(msg: impl Into<String>) -> MemImageError {
    MemImageError::Invalid(msg.into())
}

impl Header {
    /// A header for `regions` (sorted by id here). Errors on a duplicate or
    /// negative id, too many regions, or lengths that overflow.
    pub fn new(rank: u32, ranks: u32, mut regions: Vec<Region>) -> Result<Header, MemImageError> {
        regions.sort_by_key(|r| r.id);
        let h = Header {
            rank,
            ranks,
            regions,
        };
        h.check()?;
        Ok(h)
    }

    fn check(&self) -> Result<u64, MemImageError> {
        if self.ranks == 0 || self.rank >= self.ranks {
            return Err(invalid(format!(
                "rank {} of {} ranks is out of range",
                self.rank, self.ranks
            )));
        }
        if self.regions.len() > MAX_REGIONS as usize {
            return Err(invalid(format!(
                "{} regions, over the limit of {MAX_REGIONS}",
                self.regions.len()
            )));
        }
        let mut total = 0u64;
        let mut prev: Option<i32> = None;
        for r in &self.regions {
            if r.id < 0 {
                return Err(invalid(format!("region id {} is negative", r.id)));
            }
            if prev.is_some_and(|p| p >= r.id) {
                return Err(invalid(format!(
                    "region id {} is out of order or repeated",
                    r.id
                )));
            }
            prev = Some(r.id);
            let len = r.bytes().ok_or_else(|| {
                invalid(format!(
                    "region {}: {} × {} bytes overflows",
                    r.id, r.count, r.elem_size
                ))
            })?;
            total = total
                .checked_add(len)
                .ok_or_else(|| invalid("the regions' total length overflows"))?;
        }
        self.header_len()
            .checked_add(total)
            .ok_or_else(|| invalid("the file length overflows"))?;
        Ok(total)
    }

    /// Bytes of header and table.
    pub fn header_len(&self) -> u64 {
        (FIXED_HEADER + ENTRY_SIZE * self.regions.len()) as u64
    }

    /// Bytes of region data.
    pub fn data_len(&self) -> u64 {
        self.regions.iter().filter_map(Region::bytes).sum()
    }

    /// The whole file's length.
    pub fn file_len(&self) -> u64 {
        self.header_len() + self.data_len()
    }

    /// Each region with its byte offset in the file.
    pub fn layout(&self) -> Vec<(Region, u64)> {
        let mut at = self.header_len();
        self.regions
            .iter()
            .map(|r| {
                let here = at;
                at += r.bytes().unwrap_or(0);
                (*r, here)
            })
            .collect()
    }

    pub fn region(&self, id: i32) -> Option<&Region> {
        self.regions.iter().find(|r| r.id == id)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_len() as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.rank.to_le_bytes());
        out.extend_from_slice(&self.ranks.to_le_bytes());
        out.extend_from_slice(&(self.regions.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.data_len().to_le_bytes());
        for r in &self.regions {
            out.extend_from_slice(&r.id.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&r.count.to_le_bytes());
            out.extend_from_slice(&r.elem_size.to_le_bytes());
            out.extend_from_slice(&r.bytes().unwrap_or(0).to_le_bytes());
        }
        out
    }

    /// How many header bytes a file starting with `fixed` (its first
    /// [`FIXED_HEADER`] bytes) has, checking magic, version and the
    /// region count first.
    pub fn needed(fixed: &[u8]) -> Result<usize, MemImageError> {
        if fixed.len() < FIXED_HEADER {
            return Err(MemImageError::Truncated {
                need: FIXED_HEADER as u64,
                have: fixed.len() as u64,
            });
        }
        if fixed[..8] != MAGIC {
            return Err(MemImageError::BadMagic);
        }
        match u32_at(fixed, 8) {
            0 => return Err(MemImageError::ZeroVersion),
            v if v > FORMAT_VERSION => return Err(MemImageError::FutureVersion { found: v }),
            _ => {}
        }
        let n = u32_at(fixed, 20);
        if n > MAX_REGIONS {
            return Err(invalid(format!(
                "{n} regions, over the limit of {MAX_REGIONS}"
            )));
        }
        Ok(FIXED_HEADER + ENTRY_SIZE * n as usize)
    }

    /// Parse the header at the start of `bytes` (which may go on with the
    /// data). Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Header, MemImageError> {
        let need = Header::needed(bytes)?;
        if bytes.len() < need {
            return Err(MemImageError::Truncated {
                need: need as u64,
                have: bytes.len() as u64,
            });
        }
        let rank = u32_at(bytes, 12);
        let ranks = u32_at(bytes, 16);
        let n = u32_at(bytes, 20) as usize;
        let data = u64_at(bytes, 24);
        let mut regions = Vec::with_capacity(n);
        for i in 0..n {
            let e = FIXED_HEADER + i * ENTRY_SIZE;
            let id = u32_at(bytes, e) as i32;
            if u32_at(bytes, e + 4) != 0 {
                return Err(invalid(format!("region {id}: reserved field is not zero")));
            }
            let r = Region {
                id,
                count: u64_at(bytes, e + 8),
                elem_size: u64_at(bytes, e + 16),
            };
            let len = u64_at(bytes, e + 24);
            if r.bytes() != Some(len) {
                return Err(invalid(format!(
                    "region {id}: {len} bytes recorded, but {} × {} elements",
                    r.count, r.elem_size
                )));
            }
            regions.push(r);
        }
        let h = Header {
            rank,
            ranks,
            regions,
        };
        let total = h.check()?;
        if total != data {
            return Err(invalid(format!(
                "the header says {data} data bytes, the regions add up to {total}"
            )));
        }
        Ok(h)
    }

    /// Check that a file of `len` bytes holds exactly this header's data.
    pub fn check_file_len(&self, len: u64) -> Result<(), MemImageError> {
        let want = self.file_len();
        if len < want {
            return Err(MemImageError::Truncated {
                need: want,
                have: len,
            });
        }
        if len > want {
            return Err(invalid(format!(
                "the file is {len} bytes, {} more than its regions",
                len - want
            )));
        }
        Ok(())
    }
}

/// The file's bytes as one stream: the header, then each region straight
/// from the caller's memory (the I/O engine copies it once, into its
/// registered buffers, checksumming on the way).
pub struct ImageReader<'a> {
    header: Vec<u8>,
    regions: Vec<&'a [u8]>,
    /// 0 = header, i + 1 = region i.
    part: usize,
    at: usize,
}

impl<'a> ImageReader<'a> {
    /// `regions` in the header's order, each exactly its recorded length.
    pub fn new(header: &Header, regions: Vec<&'a [u8]>) -> Result<Self, MemImageError> {
        if regions.len() != header.regions.len()
            || header
                .regions
                .iter()
                .zip(&regions)
                .any(|(r, b)| r.bytes() != Some(b.len() as u64))
        {
            return Err(invalid("the regions given do not match the header"));
        }
        Ok(ImageReader {
            header: header.encode(),
            regions,
            part: 0,
            at: 0,
        })
    }
}

impl Read for ImageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let src: &[u8] = match self.part {
                0 => &self.header,
                p if p <= self.regions.len() => self.regions[p - 1],
                _ => break,
            };
            let rest = &src[self.at.min(src.len())..];
            if rest.is_empty() {
                self.part += 1;
                self.at = 0;
                continue;
            }
            let n = rest.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&rest[..n]);
            done += n;
            self.at += n;
        }
        Ok(done)
    }
}

/// Where the data of a file goes on restart: each region's bytes into its
/// destination, by file offset. Bytes outside every region (the header)
/// are ignored.
pub struct Scatter<'a> {
    /// (file offset, destination), in offset order.
    dest: Vec<(u64, &'a mut [u8])>,
    /// Bytes copied so far.
    pub copied: u64,
}

impl<'a> Scatter<'a> {
    /// `dest` gives, per region of `header` (by id), the memory to fill;
    /// each must be exactly the region's length.
    pub fn new(header: &Header, mut dest: Vec<(i32, &'a mut [u8])>) -> Result<Self, MemImageError> {
        let layout = header.layout();
        let mut out = Vec::with_capacity(dest.len());
        for (r, off) in layout {
            let Some(i) = dest.iter().position(|(id, _)| *id == r.id) else {
                continue;
            };
            let (_, d) = dest.swap_remove(i);
            if Some(d.len() as u64) != r.bytes() {
                return Err(invalid(format!(
                    "region {}: destination size differs",
                    r.id
                )));
            }
            out.push((off, d));
        }
        if let Some((id, _)) = dest.first() {
            return Err(invalid(format!("region {id} is not in the checkpoint")));
        }
        Ok(Scatter {
            dest: out,
            copied: 0,
        })
    }

    /// Copy the bytes found at file offset `off`.
    pub fn put(&mut self, off: u64, bytes: &[u8]) {
        let end = off + bytes.len() as u64;
        for (start, d) in self.dest.iter_mut() {
            let stop = *start + d.len() as u64;
            if stop <= off || *start >= end {
                continue;
            }
            let from = off.max(*start);
            let to = end.min(stop);
            let src = &bytes[(from - off) as usize..(to - off) as usize];
            d[(from - *start) as usize..(to - *start) as usize].copy_from_slice(src);
            self.copied += to - from;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header::new(
            1,
            4,
            vec![
                Region {
                    id: 7,
                    count: 3,
                    elem_size: 8,
                },
                Region {
                    id: 0,
                    count: 5,
                    elem_size: 1,
                },
                Region {
                    id: 2,
                    count: 0,
                    elem_size: 4,
                },
            ],
        )
        .unwrap()
    }

    #[test]
    fn header_round_trips_and_is_sorted() {
        let h = sample();
        assert_eq!(
            h.regions.iter().map(|r| r.id).collect::<Vec<_>>(),
            [0, 2, 7]
        );
        let bytes = h.encode();
        assert_eq!(bytes.len() as u64, h.header_len());
        assert_eq!(Header::needed(&bytes[..FIXED_HEADER]).unwrap(), bytes.len());
        assert_eq!(Header::decode(&bytes).unwrap(), h);
        assert_eq!(h.data_len(), 29);
        h.check_file_len(h.header_len() + 29).unwrap();
        assert!(h.check_file_len(h.header_len() + 28).is_err());
        assert!(h.check_file_len(h.header_len() + 30).is_err());
    }

    #[test]
    fn stream_and_scatter_round_trip() {
        let h = sample();
        let a: Vec<u8> = (0..5).collect();
        let c: Vec<u8> = (100..124).collect();
        let mut r = ImageReader::new(&h, vec![&a, &[], &c]).unwrap();
        let mut file = Vec::new();
        // Small reads cross every boundary.
        let mut buf = [0u8; 7];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            file.extend_from_slice(&buf[..n]);
        }
        assert_eq!(file.len() as u64, h.file_len());
        let back = Header::decode(&file).unwrap();
        let (mut a2, mut c2) = (vec![0u8; 5], vec![0u8; 24]);
        let mut s = Scatter::new(&back, vec![(7, &mut c2[..]), (0, &mut a2[..])]).unwrap();
        for (i, piece) in file.chunks(6).enumerate() {
            s.put((i * 6) as u64, piece);
        }
        assert_eq!(s.copied, 29);
        assert_eq!((a2, c2), (a, c));
    }

    #[test]
    fn bad_headers_are_errors() {
        let good = sample().encode();
        assert!(matches!(
            Header::decode(&good[..10]),
            Err(MemImageError::Truncated { .. })
        ));
        assert!(matches!(
            Header::decode(&good[..good.len() - 1]),
            Err(MemImageError::Truncated { .. })
        ));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Header::decode(&b), Err(MemImageError::BadMagic));
        let mut b = good.clone();
        b[8] = 9;
        assert_eq!(
            Header::decode(&b),
            Err(MemImageError::FutureVersion { found: 9 })
        );
        let mut b = good.clone();
        b[20..24].copy_from_slice(&(MAX_REGIONS + 1).to_le_bytes());
        assert!(matches!(Header::decode(&b), Err(MemImageError::Invalid(_))));
        // A length that disagrees with count × elem_size.
        let mut b = good.clone();
        b[FIXED_HEADER + 24] ^= 1;
        assert!(matches!(Header::decode(&b), Err(MemImageError::Invalid(_))));
        // Overflowing count × elem_size.
        let h = Header {
            rank: 0,
            ranks: 1,
            regions: vec![Region {
                id: 0,
                count: u64::MAX,
                elem_size: 2,
            }],
        };
        assert!(h.check().is_err());
        // Rank out of range.
        let mut b = good;
        b[12..16].copy_from_slice(&4u32.to_le_bytes());
        assert!(Header::decode(&b).is_err());
        assert!(Header::new(
            0,
            1,
            vec![
                Region {
                    id: 1,
                    count: 1,
                    elem_size: 1
                };
                2
            ]
        )
        .is_err());
    }
}
