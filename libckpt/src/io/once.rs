//! A source read once, start to end, whose pages are dropped from the
//! page cache behind the reader: a restore's or stage-in's copy from a
//! tier.
//!
//! Such a copy fills the page cache twice over: once with the source as
//! it is read, once with the destination as it is written. The source is
//! never read again, yet it evicts what the node had cached, and every
//! page it takes must first be found free. Dropped behind the reader, its
//! pages are the next ones the destination gets. A 2 GiB restore from a
//! PFS directory on the development VM, where taking fresh pages is slow:
//! 3.20–3.75 s reading through the page cache, 1.39–1.83 s dropping
//! behind (`cp -r`: 4.47–5.80 s); at a time the VM was faster, 0.92–0.99 s
//! and 0.71–0.74 s. Reading the source with O_DIRECT instead loses
//! readahead: 1.2–1.5 s at the faster time.
//!
//! A file that was mostly cached when it was opened is left alone: some
//! other reader wanted it there.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

/// Bytes read between two drops: large enough that the fadvise calls cost
/// nothing, small against the file.
const DROP_EVERY: u64 = 8 << 20;

/// A [`Read`] over `file` that drops what it has read from the page cache.
pub struct ReadOnce {
    file: File,
    /// `None` when the file was cached before us: then nothing is dropped.
    dropped_to: Option<u64>,
    pos: u64,
}

impl ReadOnce {
    /// Read `file` (of `size` bytes, at offset 0) once.
    pub fn new(file: File, size: u64) -> ReadOnce {
        let dropped_to = (!super::cached::mostly_cached(&file, size)).then_some(0);
        ReadOnce {
            file,
            dropped_to,
            pos: 0,
        }
    }

    /// Drop `[from, self.pos)`. Advice only: a kernel or filesystem that
    /// ignores it costs memory, not correctness, so its result is not
    /// checked.
    fn drop_behind(&mut self, from: u64) {
        let (Ok(off), Ok(len)) = (
            libc::off_t::try_from(from),
            libc::off_t::try_from(self.pos - from),
        ) else {
            return;
        };
        // SAFETY: fadvise on a descriptor this reader owns; no pointers.
        unsafe { libc::posix_fadvise(self.file.as_raw_fd(), off, len, libc::POSIX_FADV_DONTNEED) };
        self.dropped_to = Some(self.pos);
    }
}

impl Read for ReadOnce {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        if let Some(from) = self.dropped_to {
            if n == 0 || self.pos - from >= DROP_EVERY {
                self.drop_behind(from);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cached_pages(f: &File, len: u64) -> u64 {
        super::super::cached::cached_pages(f, len).unwrap()
    }

    #[test]
    fn pages_read_are_dropped_unless_the_file_was_cached_before() {
        // tmpfs cannot drop its pages: /var/tmp is disk by convention.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("f");
        let size = 4 * DROP_EVERY;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        File::create(&path).unwrap().write_all(&data).unwrap();
        File::open(&path).unwrap().sync_all().unwrap();

        if let Err(e) = super::super::cached::cached_pages(&File::open(&path).unwrap(), size) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSYS), "cachestat: {e}");
            eprintln!("skipped: this kernel has no cachestat(2) (Linux 6.5+)");
            return;
        }
        // Cached (just written): read whole, bytes intact, nothing dropped.
        let mut once = ReadOnce::new(File::open(&path).unwrap(), size);
        let mut got = Vec::new();
        once.read_to_end(&mut got).unwrap();
        assert!(got == data, "the bytes read are the file's");
        let f = File::open(&path).unwrap();
        let before = cached_pages(&f, size);
        assert!(before * 4096 >= size / 2, "a cached file is left cached");

        // Not cached: read whole, bytes intact, the pages gone after.
        // SAFETY: fadvise on an owned descriptor, no pointers.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        let mut once = ReadOnce::new(File::open(&path).unwrap(), size);
        let mut got = Vec::new();
        once.read_to_end(&mut got).unwrap();
        assert!(got == data, "the bytes read are the file's");
        let after = cached_pages(&f, size);
        assert!(
            after * 4096 < DROP_EVERY,
            "{after} pages of a file read once are still cached"
        );
    }
}
