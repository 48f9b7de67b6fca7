//! The DR tier's errors, each naming the peer (or the path) it concerns.

use std::io;
use std::path::PathBuf;

use super::auth::KeyError;
use super::frame::FrameError;
use super::proto::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum DrError {
    #[error("resolving {peer}: {source}")]
    Resolve {
        peer: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {peer}: {source}")]
    Connect {
        peer: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{peer}: authentication failed: {detail}")]
    AuthFailed { peer: String, detail: String },
    /// The peer answered with an error message.
    #[error("{peer}: {kind}: {message}")]
    Remote {
        peer: String,
        kind: ErrorKind,
        message: String,
    },
    /// The peer said something out of turn or unparsable.
    #[error("{peer}: protocol error: {message}")]
    Protocol { peer: String, message: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The server's own directory.
    #[error("{op} {}: {source}", path.display())]
    Root {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("zstd level {level} is not one of {}", super::level::FIXED_TEXT)]
    Level { level: i32 },
    /// Setting up or running an RDMA connection; `device` is empty when no
    /// verbs device was reached.
    #[error("RDMA to {peer}{}: {message}", device_note(device))]
    Rdma {
        peer: String,
        device: String,
        message: String,
    },
}

fn device_note(device: &str) -> String {
    if device.is_empty() {
        String::new()
    } else {
        format!(" over {device}")
    }
}

impl DrError {
    /// The link or the server is down, stalled or busy: worth another try
    /// after a pause, as opposed to a refusal that will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            // RDMA set-up fails the same ways a TCP connect does (peer
            // down, route gone); a bad device shows up as the next try
            // failing again, bounded by the retry policy.
            DrError::Resolve { .. } | DrError::Connect { .. } | DrError::Rdma { .. } => true,
            DrError::Frame(f) => f.is_transport(),
            DrError::Remote { kind, .. } => kind.is_transient(),
            _ => false,
        }
    }

    /// The error without the peer, for a one-line reason.
    pub fn cause(&self) -> String {
        match self {
            DrError::Rdma { message, .. } => message.clone(),
            DrError::Connect { source, .. } | DrError::Resolve { source, .. } => source.to_string(),
            other => other.to_string(),
        }
    }
}
