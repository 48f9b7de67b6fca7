//! Transparent checkpoints of unmodified processes through CRIU.
//!
//! CRIU (version 4 or newer) is the engine that freezes a process tree and
//! writes its state as image files; this module drives it and keeps the
//! images as an ordinary set of the store, so a dump drains to every tier
//! like any checkpoint and comes back the same way.
//!
//! - [`discover`]: which criu to run (a configured path, else the PATH, else
//!   the private prefix `scripts/install-criu.sh` fills), its version, and
//!   `criu check` run at first use, its result kept for `ckptfs status`.
//! - [`dump`]: `criu dump` into a new set, owner and mode fixed, committed;
//!   a dump that fails is removed and the process left running.
//! - [`pages`]: incremental dumps. A full dump's `pages-*.img` are kept as
//!   CRIU wrote them; an incremental one keeps only the 4 KiB pages its
//!   parent set lacks, plus a page index (format below) naming, for every
//!   page of every image, the set and file that hold it.
//! - [`restore`]: stage the set and every set its index names in from a
//!   lower tier when the cache lacks them, verify every chunk, rebuild the
//!   images of an incremental set, `criu restore`.
//! - [`process`]: what the kernel says about the process: does it exist,
//!   whose is it, its tree; the machine's load.
//!
//! # Why not CRIU's own memory tracking
//!
//! CRIU can dump incrementally by itself (`pre-dump`, `--track-mem`,
//! `--prev-images-dir`), but that rests on the kernel's soft-dirty page bits,
//! which many kernels lack (`criu check --feature mem_dirty_track` fails
//! on this project's machines, and pre-dumps fail with it). It also
//! ties a dump to the images directory of the previous one, which a set
//! drained to a tier and staged back on another node is not. So the
//! store deduplicates instead: every page of the new dump is hashed
//! (BLAKE3, 128 bits) and looked up among the parent's pages; only pages
//! the parent lacks are written. The comparison is per 4 KiB page because
//! CRIU's page images are raw pages in address order: one page added early
//! in a process's memory shifts every later offset, so fixed 1 MiB chunks
//! would all look new. Whether the kernel could track dirty pages is still
//! checked and shown by `ckptfs status` (`mem_dirty_track`).

pub mod discover;
pub mod dump;
pub mod pages;
pub mod process;
pub mod restore;
pub mod seal;

use std::path::PathBuf;

pub use discover::{CheckReport, Criu, Version};
pub use dump::{dump, DumpOptions, DumpReport, Passthrough};
pub use restore::{restore, RestoreOptions, RestoreReport};

use crate::path::{JobName, SetName};

/// The file, in a dump's set, that describes the dump (JSON).
pub const DUMP_INFO: &str = "ckptfs-dump.json";

/// Everything that can go wrong driving CRIU.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("criu {path} (from {origin}) cannot be run: {message}")]
    Unusable {
        path: PathBuf,
        origin: &'static str,
        message: String,
    },
    #[error("criu {path} is version {version}; ckptfs needs CRIU {min} or newer (scripts/install-criu.sh installs one)")]
    TooOld {
        path: PathBuf,
        version: Version,
        min: Version,
    },
    #[error(
        "no usable CRIU found (tried {}); run scripts/install-criu.sh as root, \
         or set [criu] path in the configuration",
        .tried.join("; ")
    )]
    NotFound { tried: Vec<String> },
    #[error("`criu check` with {path} failed: {detail}")]
    CheckFailed { path: PathBuf, detail: String },
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: i32 },
    #[error("pid {pid} belongs to uid {owner}: only root may dump another user's process (you are uid {caller})")]
    NotYours { pid: i32, owner: u32, caller: u32 },
    #[error("criu {action} of pid {pid} failed ({status}); nothing was committed. criu's log ends with:\n{log_tail}")]
    DumpFailed {
        action: &'static str,
        pid: i32,
        status: String,
        log_tail: String,
    },
    #[error("criu restore of {job}/{set} failed ({status}). criu's log ends with:\n{log_tail}")]
    RestoreFailed {
        job: JobName,
        set: SetName,
        status: String,
        log_tail: String,
    },
    #[error("set {job}/{set} is not a process dump (it has no inventory.img)")]
    NotADump { job: JobName, set: SetName },
    #[error("set {job}/{set}: {message}")]
    Chain {
        job: JobName,
        set: SetName,
        message: String,
    },
    #[error("set {job}/{set} failed verification: {problems}")]
    Corrupt {
        job: JobName,
        set: SetName,
        problems: String,
    },
    #[error(transparent)]
    Pages(#[from] pages::PageError),
    #[error(transparent)]
    Io(#[from] crate::durable::PathError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Stage(#[from] crate::stage::StageError),
}

impl CriuError {
    /// True when the thing asked for (process, set) does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            CriuError::NoSuchProcess { .. } => true,
            CriuError::Store(e) => e.is_not_found(),
            CriuError::Stage(e) => e.is_not_found(),
            _ => false,
        }
    }
}
