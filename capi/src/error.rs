//! Errors of the C ABI: one typed error, mapped to the `CKPT_ERR_*` codes
//! in one place ([`ApiError::code`]), and the per-thread message behind
//! `ckpt_last_error()`.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::os::raw::c_int;

use libckpt::config::ConfigError;
use libckpt::control::ControlError;
use libckpt::io::IoError;
use libckpt::memimage::MemImageError;
use libckpt::path::NameError;
use libckpt::rank::RankError;
use libckpt::stage::StageError;
use libckpt::store::StoreError;
use libckpt::tier::TierError;

use crate::codes::*;

/// Everything a call can fail with; the message names the file, set or id.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    #[error("libckpt is not initialised: call ckpt_init() first")]
    NotInit,
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Size(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    NoSpace(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Truncated(String),
    #[error("{0}")]
    Daemon(String),
    #[error("internal error in libckpt: {0}")]
    Internal(String),
}

impl ApiError {
    /// The status code the C caller sees.
    pub fn code(&self) -> c_int {
        match self {
            ApiError::Invalid(_) => CKPT_ERR_INVALID,
            ApiError::NotInit => CKPT_ERR_NOT_INIT,
            ApiError::State(_) => CKPT_ERR_STATE,
            ApiError::NotFound(_) => CKPT_ERR_NOT_FOUND,
            ApiError::Size(_) => CKPT_ERR_SIZE,
            ApiError::Io(_) => CKPT_ERR_IO,
            ApiError::NoSpace(_) => CKPT_ERR_NOSPC,
            ApiError::Corrupt(_) => CKPT_ERR_CORRUPT,
            ApiError::Config(_) => CKPT_ERR_CONFIG,
            ApiError::Timeout(_) => CKPT_ERR_TIMEOUT,
            ApiError::Truncated(_) => CKPT_ERR_TRUNCATED,
            ApiError::Daemon(_) => CKPT_ERR_DAEMON,
            ApiError::Internal(_) => CKPT_ERR_INTERNAL,
        }
    }
}

/// ENOSPC and EDQUOT are "the cache is full"; every other errno is I/O.
fn io_or_nospc(errno: Option<i32>, message: String) -> ApiError {
    match errno {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ApiError::NoSpace(message),
        _ => ApiError::Io(message),
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        ApiError::Invalid(e.to_string())
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        ApiError::Config(e.to_string())
    }
}

impl From<IoError> for ApiError {
    fn from(e: IoError) -> Self {
        match e {
            IoError::BadOptions { .. } | IoError::UringUnavailable { .. } => {
                ApiError::Config(e.to_string())
            }
            _ => io_or_nospc(e.raw_os_error(), e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::Name(_) => ApiError::Invalid(msg),
            StoreError::Io(p) => io_or_nospc(p.source.raw_os_error(), msg),
            StoreError::Engine(io) => {
                let a = ApiError::from(io);
                match a {
                    ApiError::NoSpace(_) => ApiError::NoSpace(msg),
                    _ => ApiError::Io(msg),
                }
            }
            StoreError::Manifest { .. } => ApiError::Corrupt(msg),
            StoreError::NoSuchSet { .. } => ApiError::NotFound(msg),
            StoreError::SetExists { .. }
            | StoreError::NotComplete { .. }
            | StoreError::AlreadyComplete { .. }
            | StoreError::Busy { .. }
            | StoreError::Abandoned { .. } => ApiError::State(msg),
            StoreError::NotASetDir { .. } | StoreError::UnsupportedFile { .. } => {
                ApiError::Invalid(msg)
            }
            StoreError::FutureLayout { .. } => ApiError::Config(msg),
            #[allow(unreachable_patterns)]
            _ => ApiError::Io(msg),
        }
    }
}

impl From<RankError> for ApiError {
    fn from(e: RankError) -> Self {
        let msg = e.to_string();
        match e {
            RankError::Env { .. } => ApiError::Config(msg),
            RankError::Range { .. } => ApiError::Invalid(msg),
            RankError::SizeMismatch { .. }
            | RankError::DuplicateRank { .. }
            | RankError::Abandoned { .. }
            | RankError::Conflict { .. }
            | RankError::State { .. } => ApiError::State(msg),
            RankError::BadRecord { .. } => ApiError::Corrupt(msg),
            RankError::Io(p) => io_or_nospc(p.source.raw_os_error(), msg),
            RankError::Store(s) => ApiError::from(s),
        }
    }
}

impl From<StageError> for ApiError {
    fn from(e: StageError) -> Self {
        let msg = e.to_string();
        match e {
            StageError::NoSet { .. } => ApiError::NotFound(msg),
            StageError::AllFailed { .. } => {
                if msg.contains("corrupt") {
                    ApiError::Corrupt(msg)
                } else {
                    ApiError::Io(msg)
                }
            }
            StageError::UnknownSource(_) => ApiError::Config(msg),
            StageError::Destination { .. } => ApiError::Io(msg),
            StageError::Store(s) => ApiError::from(s),
        }
    }
}

impl From<TierError> for ApiError {
    fn from(e: TierError) -> Self {
        ApiError::Io(e.to_string())
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        ApiError::Daemon(e.to_string())
    }
}

impl From<MemImageError> for ApiError {
    fn from(e: MemImageError) -> Self {
        ApiError::Corrupt(e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Remember `e` as this thread's last error.
pub fn set_last_error(e: &ApiError) {
    let text = e.to_string().replace('\0', "\\0");
    let c = CString::new(text).unwrap_or_default();
    // try_with: a call made while the thread is being torn down loses its
    // message rather than panicking.
    let _ = LAST_ERROR.try_with(|l| *l.borrow_mut() = c);
}

/// This thread's last error message; the pointer stays valid until the
/// thread's next failed call replaces it.
pub fn last_error_ptr() -> *const std::os::raw::c_char {
    LAST_ERROR
        .try_with(|l| l.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The static description of a code.
pub fn strerror(code: c_int) -> &'static CStr {
    match code {
        CKPT_SUCCESS => c"success",
        CKPT_ERR_INVALID => c"invalid argument",
        CKPT_ERR_NOT_INIT => c"libckpt is not initialised",
        CKPT_ERR_STATE => c"call out of order",
        CKPT_ERR_NOT_FOUND => c"no such protected id, checkpoint or version",
        CKPT_ERR_SIZE => c"protected region size differs from the checkpoint",
        CKPT_ERR_IO => c"I/O error",
        CKPT_ERR_NOSPC => c"the cache is full",
        CKPT_ERR_CORRUPT => c"checkpoint failed verification",
        CKPT_ERR_CONFIG => c"invalid configuration or environment",
        CKPT_ERR_TIMEOUT => c"timed out waiting for the drain",
        CKPT_ERR_TRUNCATED => c"buffer too short for the routed path",
        CKPT_ERR_DAEMON => c"the ckptfs daemon refused or went away",
        CKPT_ERR_INTERNAL => c"internal error in libckpt",
        _ => c"unknown error code",
    }
}
