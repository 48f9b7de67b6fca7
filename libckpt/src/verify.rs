//! The outcome of verifying a set: every problem found, each naming the file
//! and, for corruption, the chunk and its byte range.

use std::fmt;

use serde::Serialize;

use crate::path::{JobName, RelPath, SetName};

/// One thing wrong with one file of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    Missing {
        path: RelPath,
    },
    SizeMismatch {
        path: RelPath,
        expected: u64,
        found: u64,
    },
    Corrupt {
        path: RelPath,
        chunk: u64,
        offset: u64,
        expected: u32,
        found: u32,
    },
    Unreadable {
        path: RelPath,
        error: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { path } => write!(f, "{path}: missing"),
            Problem::SizeMismatch {
                path,
                expected,
                found,
            } => write!(f, "{path}: size is {found} bytes, manifest says {expected}"),
            Problem::Corrupt {
                path,
                chunk,
                offset,
                expected,
                found,
            } => write!(
                f,
                "{path}: chunk {chunk} (from byte {offset}) has crc32c {found:08x}, manifest says {expected:08x}"
            ),
            Problem::Unreadable { path, error } => write!(f, "{path}: unreadable: {error}"),
        }
    }
}

/// What `verify` found for one set.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub job: JobName,
    pub set: SetName,
    /// Files and bytes the manifest lists (all were read).
    pub files: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
    /// Files in the set's directory that the manifest does not list: not
    /// part of the checkpoint, reported so they are not mistaken for it.
    pub extra_files: Vec<RelPath>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}
