//! libckpt's C ABI: `libckpt.so` (soname `libckpt.so.0`) and `libckpt.a`.
//!
//! `include/ckpt.h` is the contract; `tests/drift.rs` fails when this file
//! and the header disagree on a function or a constant.
//!
//! Every exported function runs its body inside `catch_unwind`: a panic
//! becomes `CKPT_ERR_INTERNAL` with a message, never an abort. Nothing is
//! printed to stdout. The state between `ckpt_init` and `ckpt_finalize`
//! lives in one global behind a mutex, so calls from several threads are
//! serialised; `ckpt_last_error()` is per thread.
//!
//! `unsafe` is confined to this edge (C strings and buffers) and to the
//! protected regions in `api.rs`; each use says why it is sound.

mod api;
pub mod codes;
mod error;
mod need;

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use libckpt::rank::Ranks;

use api::{Api, Protected};
pub use codes::*;
use error::{set_last_error, ApiError};

/// The library's state: `None` outside `ckpt_init` … `ckpt_finalize`.
static STATE: Mutex<Option<Api>> = Mutex::new(None);
/// What `ckpt_init_rank` said, for every later `ckpt_init`.
static RANKS: Mutex<Option<Ranks>> = Mutex::new(None);

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    // A panic inside a call (caught below) may poison the lock; the state
    // it guards is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run one call: its error becomes a code and this thread's last error; a
/// panic becomes `CKPT_ERR_INTERNAL`.
fn guard(f: impl FnOnce() -> Result<c_int, ApiError>) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        Err(ApiError::Internal(what))
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            set_last_error(&e);
            e.code()
        }
    }
}

/// Run `f` on the initialised library.
fn with_api<T>(f: impl FnOnce(&mut Api) -> Result<T, ApiError>) -> Result<T, ApiError> {
    let mut state = lock(&STATE);
    let api = state.as_mut().ok_or(ApiError::NotInit)?;
    f(api)
}

/// A string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid for
/// the call (ckpt.h's contract for every `const char *`).
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, ApiError> {
    if p.is_null() {
        return Err(ApiError::Invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, and NUL-terminated and valid by the caller's promise.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| ApiError::Invalid(format!("{what} {s:?} is not valid UTF-8")))
}

fn int_ok(_: ()) -> Result<c_int, ApiError> {
    Ok(CKPT_SUCCESS)
}

/// Start the library for `job`; see ckpt.h.
///
/// # Safety
/// `config` is NULL or a NUL-terminated string; `job` a NUL-terminated
/// string (or NULL, refused).
#[no_mangle]
pub unsafe extern "C" fn ckpt_init(config: *const c_char, job: *const c_char) -> c_int {
    guard(|| {
        let config = if config.is_null() {
            None
        } else {
            // SAFETY: non-NULL: a string by ckpt.h's contract.
            Some(unsafe { str_arg(config, "the configuration path")? })
        };
        // SAFETY: a string (or NULL, refused) by ckpt.h's contract.
        let job = unsafe { str_arg(job, "the job name")? };
        let mut state = lock(&STATE);
        if state.is_some() {
            return Err(ApiError::State(
                "ckpt_init() was already called; call ckpt_finalize() first".into(),
            ));
        }
        let ranks = *lock(&RANKS);
        *state = Some(Api::init(config.map(Path::new), job, ranks)?);
        Ok(CKPT_SUCCESS)
    })
}

/// Set this process's rank and the number of ranks, before `ckpt_init`.
#[no_mangle]
pub extern "C" fn ckpt_init_rank(rank: c_int, size: c_int) -> c_int {
    guard(|| {
        let ranks = Ranks::new(rank.into(), size.into()).map_err(ApiError::from)?;
        if lock(&STATE).is_some() {
            return Err(ApiError::State(
                "ckpt_init_rank() must be called before ckpt_init()".into(),
            ));
        }
        *lock(&RANKS) = Some(ranks);
        Ok(CKPT_SUCCESS)
    })
}

/// End the library; see ckpt.h.
#[no_mangle]
pub extern "C" fn ckpt_finalize() -> c_int {
    guard(|| {
        let api = lock(&STATE).take().ok_or(ApiError::NotInit)?;
        api.finalize().and_then(int_ok)
    })
}

/// Protect `count` elements of `elem_size` bytes at `ptr` under `id`.
///
/// # Safety
/// `ptr` must stay valid for reads and writes of `count * elem_size` bytes
/// until `ckpt_mem_unprotect(id)` or `ckpt_finalize()`; it is not touched
/// here, only by later checkpoint and restart calls.
#[no_mangle]
pub unsafe extern "C" fn ckpt_mem_protect(
    id: c_int,
    ptr: *mut c_void,
    count: usize,
    elem_size: usize,
) -> c_int {
    guard(|| {
        let region = Protected::new(ptr.cast(), count, elem_size)
            .map_err(|e| ApiError::Invalid(format!("protecting id {id}: {e}")))?;
        with_api(|api| api.protect(id, region)).and_then(int_ok)
    })
}

/// Stop protecting `id`.
#[no_mangle]
pub extern "C" fn ckpt_mem_unprotect(id: c_int) -> c_int {
    guard(|| with_api(|api| api.unprotect(id)).and_then(int_ok))
}

/// Write every protected region into checkpoint `name`, `version`.
///
/// # Safety
/// `name` is a NUL-terminated string (or NULL, refused); the protected
/// regions are valid as `ckpt_mem_protect` requires.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint(name: *const c_char, version: c_int) -> c_int {
    guard(|| {
        // SAFETY: a string (or NULL, refused) by ckpt.h's contract.
        let name = unsafe { str_arg(name, "the checkpoint name")? };
        with_api(|api| api.checkpoint(name, version)).and_then(int_ok)
    })
}

/// The newest complete version of `name` <= `max_version`.
///
/// # Safety
/// `name` is a NUL-terminated string (or NULL, refused).
#[no_mangle]
pub unsafe extern "C" fn ckpt_restart_test(name: *const c_char, max_version: c_int) -> c_int {
    guard(|| {
        // SAFETY: a string (or NULL, refused) by ckpt.h's contract.
        let name = unsafe { str_arg(name, "the checkpoint name")? };
        with_api(|api| api.restart_test(name, max_version))
    })
}

/// Fill every protected region from checkpoint `name`, `version`.
///
/// # Safety
/// `name` is a NUL-terminated string (or NULL, refused); the protected
/// regions are valid for writes as `ckpt_mem_protect` requires.
#[no_mangle]
pub unsafe extern "C" fn ckpt_restart(name: *const c_char, version: c_int) -> c_int {
    guard(|| {
        // SAFETY: a string (or NULL, refused) by ckpt.h's contract.
        let name = unsafe { str_arg(name, "the checkpoint name")? };
        with_api(|api| api.restart(name, version)).and_then(int_ok)
    })
}

/// Start file-based checkpoint `name`, `version`.
///
/// # Safety
/// `name` is a NUL-terminated string (or NULL, refused).
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_begin(name: *const c_char, version: c_int) -> c_int {
    guard(|| {
        // SAFETY: a string (or NULL, refused) by ckpt.h's contract.
        let name = unsafe { str_arg(name, "the checkpoint name")? };
        with_api(|api| api.checkpoint_begin(name, version)).and_then(int_ok)
    })
}

/// The path to use for `file`, into `routed` (`len` bytes, NUL-terminated).
///
/// # Safety
/// `file` is a NUL-terminated string (or NULL, refused); `routed` is NULL
/// (refused) or valid for writes of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ckpt_route_file(
    file: *const c_char,
    routed: *mut c_char,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: a string (or NULL, refused) by ckpt.h's contract.
        let file = unsafe { str_arg(file, "the file to route")? };
        if routed.is_null() {
            return Err(ApiError::Invalid(format!(
                "the buffer for the routed path of {file:?} is NULL"
            )));
        }
        let path = with_api(|api| api.route_file(file))?;
        let bytes = path.as_os_str().as_encoded_bytes();
        if bytes.len() + 1 > CKPT_MAX_PATH as usize {
            return Err(ApiError::Invalid(format!(
                "the routed path {} is longer than CKPT_MAX_PATH",
                path.display()
            )));
        }
        if bytes.len() + 1 > len {
            return Err(ApiError::Truncated(format!(
                "the routed path {} needs {} bytes, the buffer has {len}",
                path.display(),
                bytes.len() + 1
            )));
        }
        // SAFETY: `routed` is valid for `len` bytes (caller's promise) and
        // `bytes.len() + 1 <= len`; a Rust path does not overlap C memory.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), routed.cast::<u8>(), bytes.len());
            *routed.add(bytes.len()) = 0;
        }
        Ok(CKPT_SUCCESS)
    })
}

/// End the file-based checkpoint: commit (`success` != 0) or abandon.
#[no_mangle]
pub extern "C" fn ckpt_checkpoint_end(success: c_int) -> c_int {
    guard(|| with_api(|api| api.checkpoint_end(success != 0)).and_then(int_ok))
}

/// Open checkpoint `name`, `version` for reading.
///
/// # Safety
/// `name` is a NUL-terminated string (or NULL, refused).
#[no_mangle]
pub unsafe extern "C" fn ckpt_restart_begin(name: *const c_char, version: c_int) -> c_int {
    guard(|| {
        // SAFETY: a string (or NULL, refused) by ckpt.h's contract.
        let name = unsafe { str_arg(name, "the checkpoint name")? };
        with_api(|api| api.restart_begin(name, version)).and_then(int_ok)
    })
}

/// End the restart begun with `ckpt_restart_begin`.
#[no_mangle]
pub extern "C" fn ckpt_restart_end(_success: c_int) -> c_int {
    guard(|| with_api(|api| api.restart_end()).and_then(int_ok))
}

/// Block until the last checkpoint is safe on every configured tier.
#[no_mangle]
pub extern "C" fn ckpt_checkpoint_wait() -> c_int {
    guard(|| with_api(|api| api.wait()).and_then(int_ok))
}

/// Is it time to checkpoint? `*flag` = 1 or 0.
///
/// # Safety
/// `flag` is NULL (refused) or valid for a write of one int.
#[no_mangle]
pub unsafe extern "C" fn ckpt_need_checkpoint(flag: *mut c_int) -> c_int {
    guard(|| {
        if flag.is_null() {
            return Err(ApiError::Invalid("the flag pointer is NULL".into()));
        }
        let need = with_api(|api| Ok(api.need_checkpoint()))?;
        // SAFETY: non-NULL and valid for one int by the caller's promise.
        unsafe { *flag = c_int::from(need) };
        Ok(CKPT_SUCCESS)
    })
}

/// A static description of `code`.
#[no_mangle]
pub extern "C" fn ckpt_strerror(code: c_int) -> *const c_char {
    error::strerror(code).as_ptr()
}

/// This thread's last error message (empty when none).
#[no_mangle]
pub extern "C" fn ckpt_last_error() -> *const c_char {
    error::last_error_ptr()
}

/// Whether the library runs in mounted mode (for tests).
#[doc(hidden)]
pub fn is_mounted() -> Option<bool> {
    lock(&STATE).as_ref().map(Api::is_mounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_an_internal_error_not_an_abort() {
        let rc = guard(|| panic!("boom in a test"));
        assert_eq!(rc, CKPT_ERR_INTERNAL);
        // SAFETY: a valid C string from ckpt_last_error.
        let msg = unsafe { CStr::from_ptr(ckpt_last_error()) };
        assert!(msg.to_str().unwrap().contains("boom in a test"), "{msg:?}");
        // The lock a panicking call held is usable afterwards.
        let rc = guard(|| {
            let _state = lock(&STATE);
            panic!("while holding the state")
        });
        assert_eq!(rc, CKPT_ERR_INTERNAL);
        assert!(lock(&STATE).is_none());
    }
}
