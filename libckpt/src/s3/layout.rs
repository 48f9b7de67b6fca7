//! Where things live in the bucket, under the tier's prefix:
//!
//! ```text
//! PREFIX/chunks/<2 hex>/<64 hex>     a chunk blob (header + zstd or raw),
//!                                    named by the BLAKE3 of its raw bytes
//! PREFIX/sets/<job>/<set>            a set record (manifest + chunk hashes):
//!                                    the set is complete exactly when it exists
//! PREFIX/inflight/<job>/<set>        a push under way, for retention
//! ```
//!
//! The two hex digits spread chunks over key ranges, which object stores
//! partition by prefix.

use object_store::path::Path as Key;

use crate::dr::blob::ChunkHash;
use crate::path::{JobName, SetName};

#[derive(Debug, Clone)]
pub struct Layout {
    /// The prefix with a trailing `/`, or empty.
    base: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        Layout {
            base: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        }
    }

    fn key(&self, rest: &str) -> Key {
        Key::from(format!("{}{rest}", self.base))
    }

    pub fn chunk(&self, h: &ChunkHash) -> Key {
        let hex = h.to_hex();
        self.key(&format!("chunks/{}/{hex}", &hex[..2]))
    }

    pub fn chunks(&self) -> Key {
        self.key("chunks")
    }

    /// The chunk a listed key names, if it is one of ours.
    pub fn chunk_of(&self, key: &Key) -> Option<ChunkHash> {
        let rest = key.as_ref().strip_prefix(&self.base)?;
        let hex = rest.strip_prefix("chunks/")?.split_once('/')?.1;
        ChunkHash::from_hex(hex)
    }

    pub fn set(&self, job: &JobName, set: &SetName) -> Key {
        self.key(&format!("sets/{job}/{set}"))
    }

    pub fn sets_of(&self, job: &JobName) -> Key {
        self.key(&format!("sets/{job}"))
    }

    pub fn all_sets(&self) -> Key {
        self.key("sets")
    }

    pub fn inflight(&self, job: &JobName, set: &SetName) -> Key {
        self.key(&format!("inflight/{job}/{set}"))
    }

    pub fn all_inflight(&self) -> Key {
        self.key("inflight")
    }

    /// (job, set) of a listed key under `sets/` or `inflight/`.
    pub fn set_of(&self, key: &Key) -> Option<(JobName, SetName)> {
        let rest = key.as_ref().strip_prefix(&self.base)?;
        let rest = rest
            .strip_prefix("sets/")
            .or_else(|| rest.strip_prefix("inflight/"))?;
        let (job, set) = rest.split_once('/')?;
        Some((JobName::new(job).ok()?, SetName::new(set).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let l = Layout::new("site/a");
        let h = ChunkHash::of(b"x");
        let k = l.chunk(&h);
        assert!(k.as_ref().starts_with("site/a/chunks/"));
        assert_eq!(l.chunk_of(&k), Some(h));
        let (j, s) = (JobName::new("heat").unwrap(), SetName::new("s1").unwrap());
        assert_eq!(l.set(&j, &s).as_ref(), "site/a/sets/heat/s1");
        assert_eq!(l.set_of(&l.set(&j, &s)), Some((j.clone(), s.clone())));
        assert_eq!(l.set_of(&l.inflight(&j, &s)), Some((j, s)));
        assert_eq!(Layout::new("").all_sets().as_ref(), "sets");
        assert_eq!(l.chunk_of(&Key::from("site/a/chunks/ab/zz")), None);
        assert_eq!(l.set_of(&Key::from("other/sets/heat/s1")), None);
    }
}
