//! A set record: what makes a set complete on the DR site. The set's
//! manifest plus, per file, the hashes of its pieces in order.
//!
//! ```json
//! {"format":"ckptfs-dr-record","version":1,
//!  "manifest":{…the manifest, as in the cache…},
//!  "chunks":[["<64 hex>", …], …]}
//! ```
//!
//! The same bytes are a `PutSet` request, the file on the server and a
//! `Record` reply. Parsing checks the record the way a manifest is checked
//! (the manifest goes through [`Manifest::parse`], so `../` paths and bad
//! names are refused), and that it lists exactly one hash per piece.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::blob::ChunkHash;
use super::piece::{self, Piece};
use super::proto::MAX_RECORD_BYTES;
use crate::manifest::{Manifest, ManifestError};

pub const FORMAT: &str = "ckptfs-dr-record";
/// The record version this build writes and the newest it reads.
pub const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    version: u32,
    manifest: Box<RawValue>,
    chunks: Vec<Vec<ChunkHash>>,
}

#[derive(Deserialize)]
struct Probe {
    format: Option<serde_json::Value>,
    version: Option<serde_json::Value>,
}

/// Why a record is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the set record is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("not a set record: {reason}")]
    NotARecord { reason: String },
    #[error(
        "set record version {found} is newer than this ckptfs understands (up to {VERSION}); \
         upgrade ckptfs"
    )]
    FutureVersion { found: u64 },
    #[error("malformed set record: {message}")]
    Malformed { message: String },
    #[error("the set record's manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("the set record does not match its manifest: {message}")]
    Shape { message: String },
}

/// A checked set record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRecord {
    pub manifest: Manifest,
    /// Per file of the manifest, in order: its pieces' hashes.
    pub chunks: Vec<Vec<ChunkHash>>,
}

impl SetRecord {
    /// Parse and check a record. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<SetRecord, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge {
                size: bytes.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let not = |reason: &str| RecordError::NotARecord {
            reason: reason.into(),
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                not("the top level is not a JSON object")
            } else {
                RecordError::Malformed {
                    message: e.to_string(),
                }
            }
        })?;
        match probe.format {
            Some(serde_json::Value::String(f)) if f == FORMAT => {}
            _ => return Err(not("its \"format\" is not \"ckptfs-dr-record\"")),
        }
        match probe.version.as_ref().and_then(serde_json::Value::as_u64) {
            Some(v) if v > u64::from(VERSION) => {
                return Err(RecordError::FutureVersion { found: v })
            }
            Some(v) if v >= 1 => {}
            _ => return Err(not("it has no valid \"version\"")),
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed {
            message: e.to_string(),
        })?;
        let manifest = Manifest::parse(wire.manifest.get().as_bytes())?;
        let record = SetRecord {
            manifest,
            chunks: wire.chunks,
        };
        record.check()?;
        Ok(record)
    }

    fn check(&self) -> Result<(), RecordError> {
        let files = &self.manifest.files;
        if self.chunks.len() != files.len() {
            return Err(RecordError::Shape {
                message: format!("{} hash lists for {} files", self.chunks.len(), files.len()),
            });
        }
        for (f, hashes) in files.iter().zip(&self.chunks) {
            let want = piece::count(f);
            if hashes.len() as u64 != want {
                return Err(RecordError::Shape {
                    message: format!(
                        "file {}: {} chunk hashes, its size calls for {want}",
                        f.path,
                        hashes.len()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The serialized form (one line, newline-terminated).
    pub fn to_bytes(&self) -> Vec<u8> {
        let manifest = self.manifest.to_bytes();
        let text = String::from_utf8_lossy(manifest.trim_ascii()).into_owned();
        let wire = RawValue::from_string(text).map(|manifest| Wire {
            format: FORMAT.into(),
            version: VERSION,
            manifest,
            chunks: self.chunks.clone(),
        });
        // A serialized manifest is always valid JSON, and the rest are
        // strings and numbers.
        let mut v = wire
            .and_then(|w| serde_json::to_vec(&w))
            .unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Every piece of every file with its hash: (file index, piece, hash).
    pub fn pieces(&self) -> impl Iterator<Item = (usize, Piece, ChunkHash)> + '_ {
        self.manifest
            .files
            .iter()
            .zip(&self.chunks)
            .enumerate()
            .flat_map(|(i, (f, hashes))| {
                piece::pieces(f)
                    .zip(hashes.iter().copied())
                    .map(move |(p, h)| (i, p, h))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::FileDigest;
    use crate::manifest::FileEntry;
    use crate::path::{JobName, RelPath, SetName};
    use std::time::SystemTime;

    pub(crate) fn sample() -> SetRecord {
        let data = vec![3u8; 10_000];
        let d = FileDigest::of_bytes(&data, 4096);
        let f = FileEntry {
            path: RelPath::new("r/a.bin").unwrap(),
            size: d.size,
            mode: 0o600,
            mtime: SystemTime::UNIX_EPOCH,
            chunk_size: 4096,
            crc32c: d.crc32c,
        };
        let m = Manifest::new(
            JobName::new("j").unwrap(),
            SetName::new("s").unwrap(),
            SystemTime::UNIX_EPOCH,
            "h".into(),
            vec![f],
        );
        let hashes = data.chunks(4096).map(ChunkHash::of).collect();
        SetRecord {
            manifest: m,
            chunks: vec![hashes],
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let bytes = r.to_bytes();
        assert_eq!(SetRecord::parse(&bytes).unwrap(), r);
        assert_eq!(r.pieces().count(), 3);
    }

    #[test]
    fn refusals() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let e = SetRecord::parse(text.replace("r/a.bin", "../x").as_bytes()).unwrap_err();
        assert!(matches!(e, RecordError::Manifest(_)), "{e}");
        let e = SetRecord::parse(text.replace("r/a.bin", "/etc/x").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = SetRecord::parse(text.replace("\"job\":\"j\"", "\"job\":\"..\"").as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("job name"), "{e}");
        let e = SetRecord::parse(
            text.replace("\"version\":1,\"manifest\"", "\"version\":2,\"manifest\"")
                .as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(e, RecordError::FutureVersion { found: 2 }), "{e}");
        let mut short = sample();
        short.chunks[0].pop();
        let e = SetRecord::parse(&short.to_bytes()).unwrap_err();
        assert!(matches!(e, RecordError::Shape { .. }), "{e}");
        let e = SetRecord::parse(text.replace("\"chunks\"", "\"x\":1,\"chunks\"").as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(SetRecord::parse(b"[]").is_err());
        assert!(SetRecord::parse(&text.as_bytes()[..50]).is_err());
    }
}
