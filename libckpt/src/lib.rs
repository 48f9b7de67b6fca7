//! libckpt: the ckptfs engine.
//!
//! A checkpoint store in a node-local cache directory that never offers a
//! half-written checkpoint and survives SIGKILL at any instant, with the
//! pieces it stands on: validated names ([`path`]), per-chunk crc32c
//! ([`chunk`]), the manifest format ([`manifest`]), crash-safe file updates
//! ([`durable`]), the I/O engine ([`io`], io_uring with a pread/pwrite
//! fallback), retention policy ([`retention`]) and configuration
//! ([`config`]). Usable without a daemon and without FUSE.
//!
//! ```no_run
//! use std::sync::Arc;
//! use libckpt::{io::{IoEngine, IoOptions}, path::*, store::{Store, StoreOptions}};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Arc::new(IoEngine::new(&IoOptions::default())?);
//! let store = Store::open("/var/tmp/ckptfs".as_ref(), engine, StoreOptions::default())?;
//! let job = JobName::new("heat")?;
//! let mut set = store.create_set(&job, &SetName::new("step-000100")?)?;
//! set.write_bytes(&RelPath::new("rank-0.bin")?, b"state")?;
//! set.commit()?;
//! assert_eq!(store.latest(&job)?.unwrap().set.as_str(), "step-000100");
//! # Ok(()) }
//! ```

pub mod background;
pub mod chunk;
pub mod config;
pub mod control;
pub mod criu;
pub mod dr;
pub mod drain;
pub mod durable;
pub mod io;
pub mod live;
pub mod manifest;
pub mod memimage;
pub mod path;
pub mod rank;
pub mod rate;
pub mod retention;
pub mod s3;
pub mod sched;
pub mod set;
pub mod stage;
pub mod statfs;
pub mod store;
pub mod tier;
pub mod verify;

#[cfg(test)]
mod testutil;
