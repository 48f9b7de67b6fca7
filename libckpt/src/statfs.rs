//! Size and free space of the filesystem under a path: what `status`
//! reports for the cache, and (later) what eviction watermarks compare with.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::Serialize;

/// Bytes of one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Space {
    pub total: u64,
    /// Available to unprivileged writers (`f_bavail`).
    pub free: u64,
    /// The raw statvfs figures, for a filesystem that re-exports them.
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    pub block_size: u32,
    pub fragment_size: u32,
}

impl Space {
    /// How full the filesystem is, in percent, as `df` prints it: blocks
    /// in use over those an unprivileged writer could ever use. Blocks
    /// reserved for root count on neither side, so an ext4 with its 5 %
    /// reserve (or a quota'd volume reporting far more blocks than it
    /// lets anyone write) reads the same here as in `df`.
    pub fn fill_percent(&self) -> f64 {
        let used = self.blocks.saturating_sub(self.blocks_free);
        let usable = used + self.blocks_avail;
        if usable == 0 {
            0.0
        } else {
            100.0 * used as f64 / usable as f64
        }
    }
}

/// statvfs(2) of the filesystem holding `path`.
pub fn space(path: &Path) -> io::Result<Space> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is writable memory of
    // the type statvfs fills in.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(Space {
        total: st.f_blocks * st.f_frsize,
        free: st.f_bavail * st.f_frsize,
        blocks: st.f_blocks,
        blocks_free: st.f_bfree,
        blocks_avail: st.f_bavail,
        files: st.f_files,
        files_free: st.f_ffree,
        block_size: st.f_bsize as u32,
        fragment_size: st.f_frsize as u32,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_has_space() {
        let s = super::space(std::path::Path::new("/")).unwrap();
        assert!(s.total > 0 && s.free <= s.total);
        assert!(super::space(std::path::Path::new("/nonexistent/x")).is_err());
    }

    #[test]
    fn fill_counts_reserved_blocks_on_neither_side() {
        let s = super::Space {
            total: 1000 * 4096,
            free: 100 * 4096,
            blocks: 1000,
            // 600 in use, 300 reserved for root, 100 usable by anyone.
            blocks_free: 400,
            blocks_avail: 100,
            files: 0,
            files_free: 0,
            block_size: 4096,
            fragment_size: 4096,
        };
        assert!((s.fill_percent() - 600.0 / 700.0 * 100.0).abs() < 1e-9);
        let empty = super::Space {
            blocks: 0,
            blocks_free: 0,
            blocks_avail: 0,
            ..s
        };
        assert_eq!(empty.fill_percent(), 0.0);
    }
}
