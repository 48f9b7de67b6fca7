//! Exit statuses, as documented in `ckptfs --help`.

use std::process::ExitCode;

use libckpt::stage::StageError;
use libckpt::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Error = 1,
    NotFound = 3,
    VerifyFailed = 4,
}

impl Exit {
    /// Map an error to its status: "not found" and "corrupt" are told apart
    /// so scripts can fall back to an older set or another tier.
    pub fn from_error(e: &anyhow::Error) -> Exit {
        for cause in e.chain() {
            if let Some(se) = cause.downcast_ref::<StoreError>() {
                if se.is_not_found() {
                    return Exit::NotFound;
                }
                if let StoreError::Manifest { .. } = se {
                    return Exit::VerifyFailed;
                }
            }
            if let Some(se) = cause.downcast_ref::<StageError>() {
                if se.is_not_found() {
                    return Exit::NotFound;
                }
            }
        }
        Exit::Error
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}
