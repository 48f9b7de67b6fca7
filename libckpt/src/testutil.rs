//! Fixtures shared by the unit tests: scratch directories on a real disk
//! (/var/tmp: ext4 here, where O_DIRECT works, unlike a tmpfs /tmp) and
//! stores over them.

use std::path::Path;
use std::sync::Arc;

use crate::io::{EngineKind, IoEngine, IoOptions};
use crate::store::{Store, StoreOptions};

pub fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("scratch dir under /var/tmp")
}

/// The pread/pwrite engine: the same on every kernel.
pub fn fallback_engine() -> Arc<IoEngine> {
    Arc::new(
        IoEngine::new(&IoOptions {
            kind: EngineKind::Fallback,
            ..IoOptions::default()
        })
        .expect("fallback engine"),
    )
}

pub fn store_at(dir: &Path, opts: StoreOptions) -> Store {
    Store::open(dir, fallback_engine(), opts).expect("open store")
}
