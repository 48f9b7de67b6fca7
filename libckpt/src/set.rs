//! What the store knows about one set: its name, age, state and size.

use std::time::SystemTime;

use serde::Serialize;

use crate::path::{JobName, SetName};

/// Where a set stands. Only `Complete` sets are ever offered for restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "detail")]
pub enum SetState {
    /// Committed: the manifest is in place and parses.
    Complete,
    /// A live writer holds it open.
    Writing,
    /// Its writer died before committing (or a delete was interrupted);
    /// retention removes it.
    Abandoned,
    /// Files with no writer record and no manifest, e.g. copied into the
    /// cache by hand: waits for `ckptfs commit`, never removed automatically.
    Uncommitted,
    /// A manifest is present but cannot be read; kept for inspection,
    /// never offered and never removed automatically.
    Damaged(String),
}

impl SetState {
    pub fn label(&self) -> &'static str {
        match self {
            SetState::Complete => "complete",
            SetState::Writing => "writing",
            SetState::Abandoned => "abandoned",
            SetState::Uncommitted => "uncommitted",
            SetState::Damaged(_) => "damaged",
        }
    }
}

/// One set as listed by the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetInfo {
    pub job: JobName,
    pub set: SetName,
    #[serde(flatten)]
    pub state: SetState,
    /// Creation time: from the manifest, the writer record, or the
    /// directory's birth time, in that order of preference.
    #[serde(with = "humantime_serde")]
    pub created: SystemTime,
    /// Bytes in the set: from the manifest when complete, else as found.
    pub bytes: u64,
    /// Number of files: from the manifest when complete, else as found.
    pub files: u64,
}

impl SetInfo {
    pub fn is_complete(&self) -> bool {
        self.state == SetState::Complete
    }

    /// The order "newest" is judged by: creation time, then name.
    pub fn age_key(&self) -> (SystemTime, &SetName) {
        (self.created, &self.set)
    }
}
