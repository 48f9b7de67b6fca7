//! The manifest: what a set is. One per set, written last; its presence is
//! what "complete" means on every tier.
//!
//! JSON through serde, so an admin can read it with `jq` on the parallel
//! filesystem without ckptfs. Parsing goes in two steps: a lenient probe of
//! `format` and `version` first, so a manifest from a newer ckptfs is refused
//! as "too new" rather than as a confusing unknown-field error, then the
//! strict parse (`deny_unknown_fields`) and semantic checks.

use std::collections::HashSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::chunk::{FileDigest, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::path::{JobName, RelPath, SetName};

/// The `format` field every manifest carries.
pub const FORMAT: &str = "ckptfs-manifest";
/// The manifest version this build writes and the newest it reads.
pub const VERSION: u32 = 1;
/// Manifests larger than this are refused before parsing: a corrupt length
/// or a hostile peer must not make us allocate without bound.
pub const MAX_MANIFEST_BYTES: usize = 256 << 20;

/// A complete set's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub job: JobName,
    pub set: SetName,
    /// When the set was created (its first file begun).
    #[serde(with = "humantime_serde")]
    pub created: SystemTime,
    /// When it was committed.
    #[serde(with = "humantime_serde")]
    pub committed: SystemTime,
    /// The host that wrote it.
    pub host: String,
    pub total_bytes: u64,
    /// The set this one depends on (an incremental process dump stores only
    /// the pages its parent lacks). Absent in self-contained sets, so
    /// manifests written before the field existed read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SetName>,
    pub files: Vec<FileEntry>,
}

/// One file of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: RelPath,
    pub size: u64,
    /// Permission bits, written as an octal string ("0600").
    #[serde(with = "octal_mode")]
    pub mode: u32,
    #[serde(with = "humantime_serde")]
    pub mtime: SystemTime,
    pub chunk_size: u64,
    /// crc32c of each `chunk_size` piece of the file, in order.
    pub crc32c: Vec<u32>,
}

impl FileEntry {
    pub fn digest(&self) -> FileDigest {
        FileDigest {
            size: self.size,
            chunk_size: self.chunk_size,
            crc32c: self.crc32c.clone(),
        }
    }
}

/// Why a manifest could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is empty")]
    Empty,
    #[error("the manifest is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("the manifest is truncated: it ends inside a value at line {line}, column {column}")]
    Truncated { line: usize, column: usize },
    #[error("the manifest is not valid JSON: {message}")]
    Syntax { message: String },
    #[error("not a ckptfs manifest: {reason}")]
    NotAManifest { reason: String },
    #[error(
        "manifest format version {found} is newer than this ckptfs understands \
         (up to {supported}); read it with a newer ckptfs"
    )]
    FutureVersion { found: u64, supported: u32 },
    #[error("invalid manifest: {message}")]
    Invalid { message: String },
}

fn invalid(message: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        message: message.into(),
    }
}

fn from_json(e: serde_json::Error) -> ManifestError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => ManifestError::Truncated {
            line: e.line(),
            column: e.column(),
        },
        Category::Syntax | Category::Io => ManifestError::Syntax {
            message: e.to_string(),
        },
        Category::Data => invalid(e.to_string()),
    }
}

/// Just enough of a manifest to decide whether to parse the rest.
#[derive(Deserialize)]
struct Probe {
    format: Option<serde_json::Value>,
    version: Option<serde_json::Value>,
}

impl Manifest {
    /// A manifest for a set with the given files, stamped now.
    pub fn new(
        job: JobName,
        set: SetName,
        created: SystemTime,
        host: String,
        files: Vec<FileEntry>,
    ) -> Self {
        let total_bytes = files.iter().map(|f| f.size).sum();
        Manifest {
            format: FORMAT.to_owned(),
            version: VERSION,
            job,
            set,
            created,
            committed: SystemTime::now(),
            host,
            total_bytes,
            parent: None,
            files,
        }
    }

    /// Parse and check a manifest. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                size: bytes.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
            return Err(ManifestError::Empty);
        };
        // serde would read a struct from a JSON array too; say plainly that
        // anything but an object is not a manifest.
        if *first == b'[' || first.is_ascii_digit() || *first == b'"' {
            return Err(ManifestError::NotAManifest {
                reason: "the top level is not a JSON object".into(),
            });
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                ManifestError::NotAManifest {
                    reason: "the top level is not a JSON object".into(),
                }
            } else {
                from_json(e)
            }
        })?;
        match probe.format {
            Some(serde_json::Value::String(f)) if f == FORMAT => {}
            Some(other) => {
                return Err(ManifestError::NotAManifest {
                    reason: format!("field \"format\" is {other}, expected \"{FORMAT}\""),
                })
            }
            None => {
                return Err(ManifestError::NotAManifest {
                    reason: "it has no \"format\" field".into(),
                })
            }
        }
        let version = match probe.version {
            Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| {
                invalid(format!("field \"version\" is {n}, not a version number"))
            })?,
            Some(other) => {
                return Err(invalid(format!(
                    "field \"version\" is {other}, not a version number"
                )))
            }
            None => return Err(invalid("it has no \"version\" field")),
        };
        if version > u64::from(VERSION) {
            return Err(ManifestError::FutureVersion {
                found: version,
                supported: VERSION,
            });
        }
        if version == 0 {
            return Err(invalid("version 0 does not exist"));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(from_json)?;
        m.check()?;
        Ok(m)
    }

    /// The serialized form, as written to disk (one line, newline-terminated).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers cannot fail.
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Checks the parser alone cannot make: sizes agree with chunk counts,
    /// totals add up, no path is listed twice or shadows another.
    pub fn check(&self) -> Result<(), ManifestError> {
        let mut seen = HashSet::with_capacity(self.files.len());
        let mut total: u64 = 0;
        for f in &self.files {
            let p = f.path.as_str();
            if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&f.chunk_size) {
                return Err(invalid(format!(
                    "file {p}: chunk_size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                    f.chunk_size
                )));
            }
            let want = FileDigest::chunk_count(f.size, f.chunk_size);
            if f.crc32c.len() as u64 != want {
                return Err(invalid(format!(
                    "file {p}: {} crc32c values for {} bytes in {}-byte chunks (expected {want})",
                    f.crc32c.len(),
                    f.size,
                    f.chunk_size
                )));
            }
            if f.mode > 0o7777 {
                return Err(invalid(format!(
                    "file {p}: mode {:o} is not a permission mode",
                    f.mode
                )));
            }
            total = total
                .checked_add(f.size)
                .ok_or_else(|| invalid("total size overflows"))?;
            if !seen.insert(p) {
                return Err(invalid(format!("file {p} is listed twice")));
            }
        }
        for f in &self.files {
            let p = f.path.as_str();
            for (i, _) in p.match_indices('/') {
                if seen.contains(&p[..i]) {
                    return Err(invalid(format!(
                        "file {p} is inside {}, which is listed as a file",
                        &p[..i]
                    )));
                }
            }
        }
        if total != self.total_bytes {
            return Err(invalid(format!(
                "total_bytes is {} but the files add up to {total}",
                self.total_bytes
            )));
        }
        if self.host.len() > 255 || self.host.contains('\0') {
            return Err(invalid("host is not a host name"));
        }
        if self.parent.as_ref() == Some(&self.set) {
            return Err(invalid(format!(
                "set {} names itself as its parent",
                self.set
            )));
        }
        Ok(())
    }
}

/// Permission bits as a readable octal string.
mod octal_mode {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(&s, 8)
            .ok()
            .filter(|m| *m <= 0o7777 && !s.is_empty() && s.len() <= 6)
            .ok_or_else(|| serde::de::Error::custom(format!("mode {s:?} is not an octal mode")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Manifest {
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let a = FileDigest::of_bytes(&[7u8; 10_000], 4096);
        let files = vec![
            FileEntry {
                path: RelPath::new("rank-0/state.bin").unwrap(),
                size: a.size,
                mode: 0o600,
                mtime: t,
                chunk_size: 4096,
                crc32c: a.crc32c,
            },
            FileEntry {
                path: RelPath::new("empty").unwrap(),
                size: 0,
                mode: 0o640,
                mtime: t,
                chunk_size: 4096,
                crc32c: vec![],
            },
        ];
        let mut m = Manifest::new(
            JobName::new("job").unwrap(),
            SetName::new("s1").unwrap(),
            t,
            "node01".into(),
            files,
        );
        m.committed = t;
        m
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = m.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"mode\":\"0600\""), "{text}");
        assert!(text.contains("\"version\":1"), "{text}");
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
    }

    #[test]
    fn parent_is_optional_and_round_trips() {
        // A manifest written before the field existed still reads.
        let old = sample().to_bytes();
        assert!(!String::from_utf8_lossy(&old).contains("parent"));
        assert_eq!(Manifest::parse(&old).unwrap().parent, None);

        let mut m = sample();
        m.parent = Some(SetName::new("s0").unwrap());
        let bytes = m.to_bytes();
        assert!(String::from_utf8_lossy(&bytes).contains("\"parent\":\"s0\""));
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);

        m.parent = Some(m.set.clone());
        let e = Manifest::parse(&m.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("its parent"), "{e}");
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let evil = text.replace("\"files\":", "\"parent\":\"../x\",\"files\":");
        assert!(matches!(
            Manifest::parse(evil.as_bytes()),
            Err(ManifestError::Invalid { .. })
        ));
    }

    #[test]
    fn empty_and_truncated() {
        assert_eq!(Manifest::parse(b""), Err(ManifestError::Empty));
        assert_eq!(Manifest::parse(b" \n"), Err(ManifestError::Empty));
        let bytes = sample().to_bytes();
        for cut in [1, 10, bytes.len() / 2, bytes.len() - 2] {
            let e = Manifest::parse(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(e, ManifestError::Truncated { .. }),
                "cut {cut}: {e:?}"
            );
        }
    }

    #[test]
    fn garbage() {
        for g in [
            &b"\x00\x01\x02"[..],
            b"hello",
            b"[1,2,3]",
            b"{\"a\":1}",
            b"42",
        ] {
            let e = Manifest::parse(g).unwrap_err();
            assert!(
                matches!(
                    e,
                    ManifestError::Syntax { .. } | ManifestError::NotAManifest { .. }
                ),
                "{g:?}: {e:?}"
            );
        }
    }

    #[test]
    fn future_version_is_refused_clearly() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let future = text.replace("\"version\":1", "\"version\":7");
        // A future version may carry fields we do not know: still "too new".
        let future = future.replace("\"files\":", "\"parent\":\"s0\",\"files\":");
        let e = Manifest::parse(future.as_bytes()).unwrap_err();
        assert_eq!(
            e,
            ManifestError::FutureVersion {
                found: 7,
                supported: 1
            }
        );
        assert!(e.to_string().contains("newer"), "{e}");
    }

    #[test]
    fn semantic_checks() {
        let mut m = sample();
        m.total_bytes += 1;
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("total_bytes"));

        let mut m = sample();
        m.files[0].crc32c.pop();
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("crc32c values"));

        let mut m = sample();
        let dup = m.files[0].clone();
        m.files.push(dup);
        m.total_bytes += 10_000;
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("listed twice"));

        let mut m = sample();
        m.files[1].path = RelPath::new("rank-0").unwrap();
        assert!(Manifest::parse(&m.to_bytes())
            .unwrap_err()
            .to_string()
            .contains("inside rank-0"));

        let text = String::from_utf8(sample().to_bytes()).unwrap();
        let evil = text.replace("rank-0/state.bin", "../../etc/passwd");
        assert!(matches!(
            Manifest::parse(evil.as_bytes()),
            Err(ManifestError::Invalid { .. })
        ));
        let unknown = text.replace("\"files\":", "\"surprise\":1,\"files\":");
        assert!(Manifest::parse(unknown.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("surprise"));
        let badmode = text.replace("\"0600\"", "\"9999\"");
        assert!(Manifest::parse(badmode.as_bytes()).is_err());
    }
}
