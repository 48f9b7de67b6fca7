//! The in-flight marker: a push under way says so in the bucket, with the
//! chunks it relies on without uploading them (found there already), so a
//! retention sweep running at the same time, here or on another node
//! sharing the prefix, leaves them alone.
//!
//! ```json
//! {"format":"ckptfs-s3-inflight","version":1,
//!  "started":"2026-11-27T17:00:00Z","chunks":["<64 hex>", …]}
//! ```
//!
//! A sweep also keeps every chunk written since the oldest live marker
//! started (chunks the push uploaded itself). A marker older than
//! [`MARKER_TTL`] is a push that died; the sweep removes it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::dr::blob::ChunkHash;

pub const FORMAT: &str = "ckptfs-s3-inflight";
pub const VERSION: u32 = 1;
/// A marker this old belongs to a push that died.
pub const MARKER_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest marker read: a set record's bound.
pub const MAX_MARKER: usize = crate::manifest::MAX_MANIFEST_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    pub format: String,
    pub version: u32,
    #[serde(with = "humantime_serde")]
    pub started: SystemTime,
    pub chunks: Vec<ChunkHash>,
}

impl Marker {
    pub fn new(started: SystemTime, chunks: Vec<ChunkHash>) -> Marker {
        Marker {
            format: FORMAT.into(),
            version: VERSION,
            started,
            chunks,
        }
    }

    /// Parse and check. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<Marker, String> {
        if bytes.len() > MAX_MARKER {
            return Err(format!(
                "{} bytes, over the {MAX_MARKER}-byte limit",
                bytes.len()
            ));
        }
        #[derive(Deserialize)]
        struct Probe {
            format: Option<serde_json::Value>,
            version: Option<serde_json::Value>,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| format!("not a marker: {e}"))?;
        if probe.format.as_ref().and_then(|v| v.as_str()) != Some(FORMAT) {
            return Err(format!("not a marker: format is not {FORMAT:?}"));
        }
        match probe.version.as_ref().and_then(|v| v.as_u64()) {
            Some(v) if v > u64::from(VERSION) => {
                return Err(format!(
                    "marker version {v} is newer than this ckptfs understands (up to {VERSION})"
                ))
            }
            Some(v) if v >= 1 => {}
            _ => return Err("not a marker: no valid version".into()),
        }
        serde_json::from_slice(bytes).map_err(|e| format!("malformed marker: {e}"))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Still protecting a push at `now`.
    pub fn live(&self, now: SystemTime) -> bool {
        now.duration_since(self.started)
            .map_or(true, |age| age < MARKER_TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let m = Marker::new(SystemTime::UNIX_EPOCH, vec![ChunkHash::of(b"a")]);
        assert_eq!(Marker::parse(&m.to_bytes()).unwrap(), m);
        assert!(!m.live(SystemTime::now()));
        assert!(Marker::new(SystemTime::now(), vec![]).live(SystemTime::now()));
        let future = String::from_utf8(m.to_bytes())
            .unwrap()
            .replace("\"version\":1", "\"version\":9");
        assert!(Marker::parse(future.as_bytes())
            .unwrap_err()
            .contains("newer"));
        assert!(Marker::parse(b"[]").is_err());
        assert!(Marker::parse(b"{\"format\":\"x\"}").is_err());
        assert!(Marker::parse(b"\xff").is_err());
    }
}
