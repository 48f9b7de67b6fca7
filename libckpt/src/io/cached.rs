//! How much of a file the page cache holds, so a read does not go to the
//! disk (O_DIRECT) for bytes that are already in memory.
//!
//! A checkpoint is usually drained, verified or staged out moments after
//! it was written, while its pages are still cached (dirty, even, before
//! writeback). O_DIRECT then reads from the disk what memory holds (and
//! first forces out whatever is dirty), competing on the same disk with
//! the very tier the bytes are going to. On the development VM, a 2 GiB
//! set drained to a PFS directory on the same disk right after it was
//! written took 6.4–7.4 s with O_DIRECT reads and 3.5–3.8 s through the
//! page cache. A file that is not cached is still read direct, so the
//! drain of an old set does not evict the application's memory; and
//! `ckptfs verify` always reads the disk, which is what it checks.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `cachestat(2)` (Linux 6.5+): the same number on every architecture, as
/// it was added after the syscall tables were unified.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Whether at least half of `file`'s `size` bytes are in the page cache.
/// `false` where the kernel cannot say (before 6.5, or a filesystem
/// without a page cache): the caller then keeps to its default.
pub fn mostly_cached(file: &File, size: u64) -> bool {
    if size == 0 {
        return false;
    }
    match cached_pages(file, size) {
        Ok(pages) => pages * 2 >= size.div_ceil(page_size()),
        Err(_) => false,
    }
}

/// How many pages of the first `len` bytes of `file` the page cache holds.
pub(super) fn cached_pages(file: &File, len: u64) -> std::io::Result<u64> {
    cachestat(file, len).map(|s| s.nr_cache)
}

/// The page cache's view of the first `len` bytes of `file`.
fn cachestat(file: &File, len: u64) -> std::io::Result<Cachestat> {
    let range = CachestatRange { off: 0, len };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat reads `range` and writes one `Cachestat` (both
    // #[repr(C)] with the kernel's layout, alive for the call) about the
    // descriptor `file` owns; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0u32,
        )
    };
    if rc == 0 {
        Ok(stat)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_just_written_is_cached_and_one_dropped_is_not() {
        // tmpfs cannot drop its pages: the test needs a disk-backed
        // filesystem, and /var/tmp is one by convention.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 4 << 20]).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&path).unwrap();
        if !mostly_cached(&f, 4 << 20) {
            let err = cachestat(&f, 4 << 20).err();
            assert!(
                err.as_ref().and_then(std::io::Error::raw_os_error) == Some(libc::ENOSYS),
                "a file just written is not cached ({err:?})"
            );
            eprintln!("skipped: this kernel has no cachestat(2) (Linux 6.5+)");
            return;
        }
        // SAFETY: fadvise on an owned descriptor, no pointers.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        assert!(!mostly_cached(&f, 4 << 20), "dropped from the cache");
        assert!(!mostly_cached(&f, 0), "an empty file has nothing to gain");
    }
}
