//! The server's set records on disk.
//!
//! ```text
//! <root>/sets/<job>/<set>.json   the record (see `record`), written last
//! ```
//!
//! Names come in as [`JobName`] and [`SetName`], which cannot hold `/`,
//! cannot be `.` or `..` and cannot start with a dot, so every path built
//! here stays under the root and never collides with a temp file.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::proto::MAX_RECORD_BYTES;
use crate::durable::{self, IoContext, PathError};
use crate::path::{JobName, SetName};

const SUFFIX: &str = ".json";

pub struct SetStore {
    dir: PathBuf,
}

impl SetStore {
    /// The records under `dir`, created (mode 0700) if missing.
    pub fn open(dir: &Path) -> Result<SetStore, PathError> {
        durable::create_dir_all_durable(dir, 0o700)?;
        Ok(SetStore {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self, job: &JobName, set: &SetName) -> PathBuf {
        self.dir.join(job.as_str()).join(format!("{set}{SUFFIX}"))
    }

    /// The record's bytes; `None` if the set is not complete here.
    pub fn read(&self, job: &JobName, set: &SetName) -> Result<Option<Vec<u8>>, PathError> {
        let path = self.path(job, set);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PathError::new("opening", &path, e)),
        };
        let mut out = Vec::new();
        f.take(MAX_RECORD_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .at("reading", &path)?;
        Ok(Some(out))
    }

    /// Write a record atomically and durably: the set is complete here
    /// from the instant the rename lands.
    pub fn write(&self, job: &JobName, set: &SetName, bytes: &[u8]) -> Result<(), PathError> {
        let path = self.path(job, set);
        let parent = self.dir.join(job.as_str());
        durable::create_dir_all_durable(&parent, 0o700)?;
        durable::write_atomic(&path, bytes, 0o600)
    }

    /// Remove a record; whether it was there.
    pub fn remove(&self, job: &JobName, set: &SetName) -> Result<bool, PathError> {
        let path = self.path(job, set);
        match fs::remove_file(&path) {
            Ok(()) => {
                durable::sync_parent(&path)?;
                // The job's directory goes with its last set; ENOTEMPTY
                // just means it has others.
                let _ = fs::remove_dir(self.dir.join(job.as_str()));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(PathError::new("removing", &path, e)),
        }
    }

    /// Jobs with at least one record, sorted.
    pub fn jobs(&self) -> Result<Vec<JobName>, PathError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).at("listing", &self.dir)? {
            let entry = entry.at("listing", &self.dir)?;
            let Some(job) = entry
                .file_name()
                .to_str()
                .and_then(|n| JobName::new(n).ok())
            else {
                continue;
            };
            if !self.sets(&job)?.is_empty() {
                out.push(job);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Sets of `job` with a record, sorted by name.
    pub fn sets(&self, job: &JobName) -> Result<Vec<SetName>, PathError> {
        let dir = self.dir.join(job.as_str());
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(PathError::new("listing", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.at("listing", &dir)?;
            let name = entry.file_name();
            if let Some(set) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| SetName::new(n).ok())
            {
                out.push(set);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every (job, set) with a record.
    pub fn all(&self) -> Result<Vec<(JobName, SetName)>, PathError> {
        let mut out = Vec::new();
        for job in self.jobs()? {
            for set in self.sets(&job)? {
                out.push((job.clone(), set));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_list_remove() {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let s = SetStore::open(&d.path().join("sets")).unwrap();
        let (j, a, b) = (
            JobName::new("j").unwrap(),
            SetName::new("a").unwrap(),
            SetName::new("b").unwrap(),
        );
        assert!(s.jobs().unwrap().is_empty());
        s.write(&j, &a, b"1").unwrap();
        s.write(&j, &b, b"2").unwrap();
        assert_eq!(s.jobs().unwrap(), vec![j.clone()]);
        assert_eq!(s.sets(&j).unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(s.read(&j, &b).unwrap().unwrap(), b"2");
        assert!(s.remove(&j, &a).unwrap());
        assert!(!s.remove(&j, &a).unwrap());
        assert!(s.remove(&j, &b).unwrap());
        assert!(s.jobs().unwrap().is_empty());
        assert!(!d.path().join("sets/j").exists());
    }
}
