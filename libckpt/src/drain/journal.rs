//! The drain journal: per set and tier, what has been delivered.
//!
//! It lives in the cache beside the set's manifest
//! (`<cache>/.ckptfs/sets/<job>/<set>/drain/<tier>.json`), rewritten
//! atomically after every file delivered, so after a crash or a restart a
//! push resumes where it stopped (nothing sent twice) and a set counts as
//! safe on a tier only once the tier has its manifest (nothing lost).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::durable::{self, PathError};
use crate::path::RelPath;
use crate::tier::{Resume, TierError};

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

/// One set's progress to one tier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Progress {
    pub state: State,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Files delivered so far by the current push.
    pub files_done: BTreeSet<String>,
    pub bytes_sent: u64,
    #[serde(with = "humantime_serde")]
    pub done_at: Option<SystemTime>,
}

fn path(meta: &Path, tier: &str) -> PathBuf {
    meta.join(DIR).join(format!("{tier}.json"))
}

/// The progress of the set whose metadata directory is `meta`; a missing
/// or unreadable record means "pending from scratch": resending is safe,
/// skipping is not.
pub fn load(meta: &Path, tier: &str) -> Progress {
    std::fs::read(path(meta, tier))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
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
    fn is_done(&self, file: &RelPath) -> bool {
        self.progress.files_done.contains(file.as_str())
    }

    fn mark_done(&mut self, file: &RelPath) -> Result<(), TierError> {
        self.progress.files_done.insert(file.to_string());
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
        r.mark_done(&RelPath::new("a/b").unwrap()).unwrap();
        assert!(load(d.path(), "pfs").files_done.contains("a/b"));
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
