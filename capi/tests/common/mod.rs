//! Shared by the C-ABI tests: the library has one global state per
//! process, so the tests of one binary take turns ([`serial`]); each gets
//! its own cache and config file under /var/tmp (a real disk: O_DIRECT).

#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

static SERIAL: Mutex<()> = Mutex::new(());

/// Take the library for one test; a failed test before does not poison it.
pub fn serial() -> MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    // Whatever a failed test left initialised goes.
    let _ = ckpt::ckpt_finalize();
    g
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub cache: PathBuf,
    pub config: PathBuf,
}

impl Env {
    /// A cache and a config file naming it, plus `extra` TOML.
    pub fn new(extra: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("ckpt-capi-")
            .tempdir_in("/var/tmp")
            .expect("scratch dir");
        let cache = dir.path().join("cache");
        let config = dir.path().join("ckptfs.toml");
        let text = format!(
            "cache = \"{}\"\n[api]\nmode = \"embedded\"\nfinalize_timeout = \"20s\"\n\
             wait_timeout = \"60s\"\n{extra}",
            cache.display()
        );
        std::fs::write(&config, text).expect("config file");
        Env { dir, cache, config }
    }

    pub fn config_c(&self) -> CString {
        c(self.config.to_str().unwrap())
    }

    /// `ckpt_init` with this env's config.
    pub fn init(&self, job: &str) -> i32 {
        // SAFETY: both are valid C strings for the call.
        unsafe { ckpt::ckpt_init(self.config_c().as_ptr(), c(job).as_ptr()) }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

pub fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

pub fn last_error() -> String {
    // SAFETY: ckpt_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(ckpt::ckpt_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Assert a call succeeded, showing the message if not.
#[track_caller]
pub fn ok(rc: i32) {
    assert_eq!(rc, ckpt::CKPT_SUCCESS, "failed: {rc}: {}", last_error());
}

/// Assert a call failed with `code` and a message mentioning `needle`.
#[track_caller]
pub fn fails(rc: i32, code: i32, needle: &str) {
    let msg = last_error();
    assert_eq!(rc, code, "expected {code}, got {rc}: {msg}");
    assert!(
        msg.contains(needle),
        "message {msg:?} does not mention {needle:?}"
    );
}

pub fn checkpoint(name: &str, version: i32) -> i32 {
    // SAFETY: a valid C string.
    unsafe { ckpt::ckpt_checkpoint(c(name).as_ptr(), version) }
}

pub fn restart(name: &str, version: i32) -> i32 {
    // SAFETY: a valid C string.
    unsafe { ckpt::ckpt_restart(c(name).as_ptr(), version) }
}

pub fn restart_test(name: &str, max: i32) -> i32 {
    // SAFETY: a valid C string.
    unsafe { ckpt::ckpt_restart_test(c(name).as_ptr(), max) }
}

pub fn protect<T>(id: i32, data: &mut [T]) -> i32 {
    // SAFETY: the slice outlives the protection in every test (each
    // unprotects or finalizes before the data goes).
    unsafe {
        ckpt::ckpt_mem_protect(
            id,
            data.as_mut_ptr().cast(),
            data.len(),
            std::mem::size_of::<T>(),
        )
    }
}

pub fn begin(name: &str, version: i32) -> i32 {
    // SAFETY: a valid C string.
    unsafe { ckpt::ckpt_checkpoint_begin(c(name).as_ptr(), version) }
}

pub fn restart_begin(name: &str, version: i32) -> i32 {
    // SAFETY: a valid C string.
    unsafe { ckpt::ckpt_restart_begin(c(name).as_ptr(), version) }
}

/// `ckpt_route_file` into a buffer of `len` bytes.
pub fn route(file: &str, len: usize) -> Result<PathBuf, i32> {
    let mut buf = vec![0 as c_char; len];
    // SAFETY: `buf` is valid for `len` bytes.
    let rc = unsafe { ckpt::ckpt_route_file(c(file).as_ptr(), buf.as_mut_ptr(), len) };
    if rc != ckpt::CKPT_SUCCESS {
        return Err(rc);
    }
    // SAFETY: on success the buffer holds a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(PathBuf::from(s.to_str().unwrap()))
}

pub fn is_under(p: &Path, dir: &Path) -> bool {
    p.starts_with(dir.canonicalize().unwrap())
}
