//! The drain journal: per set and tier, what has been delivered.
//!
//! It lives in the cache beside the set's manifest
//! (`<cache>/.ckptfs/sets/<job>/<set>/drain/<tier>.json`, rewritten
//! atomically at each change of state), with a log of the files delivered
//! since (`<tier>.done`, one line appended per file), so after a crash or
//! a restart a push resumes where it stopped (nothing sent twice) and a
//! set counts as safe on a tier only once the tier has its manifest
//! (nothing lost).
//!
//! The log is appended without fsync: the tier's copy of a file is
//! durable before its line is written, so a line is never a false claim,
//! and a line lost with the page cache (power loss; a killed process
//! loses nothing) only means that file is sent again. Rewriting the whole
//! record, fsynced, after each file cost a set of 10 000 small files
//! 10 000 serializations of a growing map and as many fsyncs: its drain
//! to a PFS directory took 10.6 s against 1.9 s for `cp -r` and `sync`.
//! A build that predates the log ignores it, and so resends: safe.

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

fn log_path(meta: &Path, tier: &str) -> PathBuf {
    meta.join(DIR).join(format!("{tier}.done"))
}

/// One line of the log: a file delivered, with its fingerprint.
#[derive(Serialize, Deserialize)]
struct Delivered {
    path: String,
    fingerprint: u64,
}

/// The record alone: the set's state with one tier, its attempts and last
/// error, without the files delivered since it was written. Enough for
/// status and for "is it done?", which ask it for every set, often; a
/// missing, unreadable or future-version record means "pending from
/// scratch": resending is safe, skipping is not.
pub fn record(meta: &Path, tier: &str) -> Progress {
    std::fs::read(path(meta, tier))
        .ok()
        .and_then(|b| serde_json::from_slice::<Progress>(&b).ok())
        .filter(|p| p.version <= VERSION)
        .unwrap_or_default()
}

/// The progress a push resumes from: the [`record`], with the files the
/// log names added to `files_done` (a line cut short by a crash is
/// ignored).
pub fn load(meta: &Path, tier: &str) -> Progress {
    let mut p = record(meta, tier);
    if let Ok(log) = std::fs::read(log_path(meta, tier)) {
        // Only whole lines: the last one may have been cut short.
        let whole = log.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in log[..whole].split(|b| *b == b'\n') {
            if let Ok(d) = serde_json::from_slice::<Delivered>(line) {
                p.files_done.insert(d.path, d.fingerprint);
            }
        }
    }
    p
}

/// Replace the record with `p` (durably), then drop the log, whose lines
/// `p` holds (or has cleared on purpose, once the set is done).
pub fn save(meta: &Path, tier: &str, p: &Progress) -> Result<(), PathError> {
    let file = path(meta, tier);
    durable::create_dir_all_durable(&meta.join(DIR), 0o755)?;
    let body = serde_json::to_vec(p).unwrap_or_default();
    durable::write_atomic(&file, &body, 0o644)?;
    let log = log_path(meta, tier);
    match std::fs::remove_file(&log) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PathError::new("removing", &log, e)),
    }
}

/// Append `file` (delivered, at `fingerprint`) to the log.
fn log_delivered(meta: &Path, tier: &str, file: &str, fingerprint: u64) -> Result<(), PathError> {
    use std::io::Write;
    let log = log_path(meta, tier);
    let mut line = serde_json::to_vec(&Delivered {
        path: file.to_owned(),
        fingerprint,
    })
    .unwrap_or_default();
    line.push(b'\n');
    let open = || {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
    };
    // The directory exists after the first file of a set: create it only
    // when the open says it is missing, not once per file.
    let file = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = meta.join(DIR);
            std::fs::create_dir_all(&dir)
                .map_err(|e| PathError::new("creating directory", &dir, e))?;
            open()
        }
        r => r,
    };
    // One write(2) of one line with O_APPEND: lines never interleave.
    file.and_then(|mut f| f.write_all(&line))
        .map_err(|e| PathError::new("appending to", &log, e))
}

pub fn is_done(meta: &Path, tier: &str) -> bool {
    record(meta, tier).state == State::Done
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
        let fp = fingerprint(file);
        self.progress.files_done.insert(file.path.to_string(), fp);
        log_delivered(&self.meta, &self.tier, file.path.as_str(), fp).map_err(|e| {
            TierError::Local {
                path: e.path.clone(),
                message: e.to_string(),
            }
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

    #[test]
    fn delivered_files_are_logged_then_folded_into_the_record() {
        let d = tempfile::tempdir().unwrap();
        let entry = |name: &str, crc: u32| crate::manifest::FileEntry {
            path: crate::path::RelPath::new(name).unwrap(),
            size: 3,
            mode: 0o600,
            mtime: SystemTime::UNIX_EPOCH,
            chunk_size: 4096,
            crc32c: vec![crc],
        };
        let mut r = JournalResume {
            meta: d.path().to_owned(),
            tier: "pfs".into(),
            progress: Progress::default(),
        };
        for (i, name) in ["a", "dir/b", "c d\"e\""].iter().enumerate() {
            r.mark_done(&entry(name, i as u32)).unwrap();
        }
        // The record itself was not rewritten: only the log grew.
        assert!(!d.path().join("drain/pfs.json").exists());
        let log = d.path().join("drain/pfs.done");
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3);
        // A process that starts over (after a kill -9) sees all three.
        let again = JournalResume {
            meta: d.path().to_owned(),
            tier: "pfs".into(),
            progress: load(d.path(), "pfs"),
        };
        for (i, name) in ["a", "dir/b", "c d\"e\""].iter().enumerate() {
            assert!(again.is_done(&entry(name, i as u32)), "{name:?}");
        }
        assert!(
            !again.is_done(&entry("a", 9)),
            "a changed file is sent again"
        );
        // A line cut short by a crash is ignored; the whole ones count.
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, br#"{"path":"z","finger"#).unwrap();
        let p = load(d.path(), "pfs");
        assert_eq!(p.files_done.len(), 3);
        assert!(!p.files_done.contains_key("z"));
        // Saving the record folds the log in and removes it.
        save(d.path(), "pfs", &p).unwrap();
        assert!(!log.exists());
        assert_eq!(load(d.path(), "pfs").files_done.len(), 3);
        // A set done clears both.
        let done = Progress {
            state: State::Done,
            ..Progress::default()
        };
        r.mark_done(&entry("late", 1)).unwrap();
        save(d.path(), "pfs", &done).unwrap();
        let p = load(d.path(), "pfs");
        assert_eq!(p.state, State::Done);
        assert!(p.files_done.is_empty(), "{p:?}");
    }
}
