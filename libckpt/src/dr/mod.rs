//! The DR tier: `ckptfs serve`, a content-addressed chunk store at a
//! disaster-recovery site, and [`DrTier`], the client that implements
//! [`Tier`](crate::tier::Tier) against it.
//!
//! One framed, versioned protocol over TCP or RDMA ([`frame`], [`transport`]), authenticated by a
//! mutual HMAC-SHA256 challenge over a shared key file ([`auth`]). Files
//! travel as pieces (one per manifest chunk, [`piece`]) addressed by the
//! BLAKE3 of their bytes and zstd-compressed on the wire and at rest
//! ([`blob`]), so a piece the server already holds, from any set, is never
//! sent again. A set is complete on the server exactly when its record
//! (manifest plus piece hashes, [`record`]) exists; the server writes it
//! last, after checking it holds every piece it names.
//!
//! | module | what |
//! |---|---|
//! | [`frame`] | the frame header and the length-bounded parser |
//! | [`proto`] | message types and their JSON bodies |
//! | [`blob`] | a chunk on the wire and on disk: header + zstd |
//! | [`level`] | the push's zstd level: fixed, or `auto` after the bottleneck |
//! | [`piece`] | how a file's chunks map to stored pieces |
//! | [`record`] | the per-set record |
//! | [`auth`] | the key file and the handshake |
//! | [`chunkstore`], [`setstore`] | the server's disk layout |
//! | [`handler`] | the server's request handling, apart from sockets |
//! | [`server`] | the accept loop and connection threads |
//! | [`conn`], [`client`], [`push`], [`fetch`] | the client side |
//! | [`transport`], [`rdma`] | the byte streams under the frames: TCP, RDMA verbs |

pub mod auth;
pub mod blob;
pub mod chunkstore;
pub mod client;
pub mod conn;
pub mod error;
mod fetch;
pub mod frame;
pub mod handler;
pub mod level;
pub mod piece;
mod pipeline;
pub mod proto;
mod push;
pub mod rdma;
pub mod record;
pub mod server;
pub mod setstore;
mod syncer;
pub mod transport;

#[cfg(test)]
mod tests;

pub use auth::{Key, KeyError};
pub use client::DrTier;
pub use conn::{Retry, Transport};
pub use error::DrError;
pub use handler::{Repo, RepoOptions, StatsSnapshot};
pub use server::{Server, ServerOptions, ShutdownHandle};
