//! The drain journal: per set and tier, what has been delivered.
//!
//! It lives in the cache beside the set's manifest
//! (`<cache>/.ckptfs/sets/<job>/<set>/drain/<tier>.json`), rewritten
//! atomically after every file delivered, so after a crash or a restart a
//! push resumes where it stopped (nothing sent twice) and a set counts as
//! safe on a tier only once the tier has its manifest (nothing lost).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::durable::{self, PathError};
use crate::manifest::FileEntry;
use crate::tier::{fingerprint, Resume, TierError};

const DIR: &str = "drain";

/// Where a set stands with one tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Pending,
    Done,
    Failed,
}

/// Journal format version written by this build.
pub const VERSION: u32 = 1;

/// One set's progress to one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    pub version: u32,
    pub state: State,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Files delivered so far (by the current push, or early), with the
    /// fingerprint of the version delivered: a file changed since is sent
    /// again.
    pub files_done: BTreeMap<String, u64>,
    pub bytes_sent: u64,
    #[serde(with = "humantime_serde")]
    pub done_at: Option<SystemTime>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            version: VERSION,
            state: State::Pending,
            attempts: 0,
            last_error: None,
            files_done: BTreeMap::new(),
            bytes_sent: 0,
            done_at: None,
        }
    }
}

fn path(meta: &Path, tier: &str) -> PathBuf {
    meta.join(DIR).join(format!("{tier}.json"))
}

/// The progress of the set whose metadata directory is `meta`; a missing,
/// unreadable or future-version record means "pending from scratch":
/// resending is safe, skipping is not.
pub fn load(meta: &Path, tier: &str) -> Progress {
    std::fs::read(path(meta, tier))
        .ok()
        .and_then(|b| serde_json::from_slice::<Progress>(&b).ok())
        .filter(|p| p.version <= VERSION)
        .unwrap_or_default()
}

pub fn save(meta: &Path, tier: &str, p: &Progress) -> Result<(), PathError> {
    let file = path(meta, tier);
    durable::create_dir_all_durable(&meta.join(DIR), 0o755)?;
    let body = serde_json::to_vec(p).unwrap_or_default();
    durable::write_atomic(&file, &body, 0o644)
}

pub fn is_done(meta: &Path, tier: &str) -> bool {
    load(meta, tier).state == State::Done
}

/// A push's view of the journal: which files are already on the tier.
pub struct JournalResume {
    pub meta: PathBuf,
    pub tier: String,
    pub progress: Progress,
}

impl Resume for JournalResume {
    fn is_done(&self, file: &FileEntry) -> bool {
        self.progress.files_done.get(file.path.as_str()) == Some(&fingerprint(file))
    }

    fn mark_done(&mut self, file: &FileEntry) -> Result<(), TierError> {
        self.progress
            .files_done
            .insert(file.path.to_string(), fingerprint(file));
        save(&self.meta, &self.tier, &self.progress).map_err(|e| TierError::Local {
            path: e.path.clone(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_defaults() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path(), "pfs"), Progress::default());
        assert!(!is_done(d.path(), "pfs"));
        let mut r = JournalResume {
            meta: d.path().to_owned(),
            tier: "pfs".into(),
            progress: Progress::default(),
        };
        let f = crate::manifest::FileEntry {
            path: crate::path::RelPath::new("a/b").unwrap(),
            size: 3,
            mode: 0o600,
            mtime: SystemTime::UNIX_EPOCH,
            chunk_size: 4096,
            crc32c: vec![7],
        };
        r.mark_done(&f).unwrap();
        assert!(load(d.path(), "pfs").files_done.contains_key("a/b"));
        assert!(r.is_done(&f));
        let changed = crate::manifest::FileEntry {
            crc32c: vec![8],
            ..f.clone()
        };
        assert!(!r.is_done(&changed), "a changed file must be sent again");
        let p = Progress {
            state: State::Done,
            done_at: Some(SystemTime::now()),
            ..Progress::default()
        };
        save(d.path(), "pfs", &p).unwrap();
        assert!(is_done(d.path(), "pfs"));
        assert!(!is_done(d.path(), "dr"));
        // Garbage is "pending", never "done".
        std::fs::write(d.path().join("drain/dr.json"), b"{garbage").unwrap();
        assert_eq!(load(d.path(), "dr").state, State::Pending);
    }
}
