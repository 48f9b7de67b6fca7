//! Page-aligned heap buffers.
//!
//! O_DIRECT needs the memory address (not only the file offset and length)
//! aligned to the logical block size, and io_uring pins registered buffers
//! page by page; a `Vec<u8>` guarantees neither, so the engine allocates its
//! own. This is the only place in the crate that touches raw allocation.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;

/// Alignment of every buffer, file offset and direct transfer length. 4 KiB
/// covers both 512-byte and 4K-sector devices and the page size on x86-64
/// and most aarch64 kernels.
pub(crate) const PAGE: usize = 4096;

/// A fixed-capacity, zero-initialised, page-aligned byte buffer.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively, exactly like a
// `Box<[u8]>`; the raw pointer is never shared outside the borrows handed
// out by `as_slice`/`as_mut_slice`, which follow the usual &/&mut rules.
unsafe impl Send for AlignedBuf {}
// SAFETY: no interior mutability; shared access only yields `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `capacity` bytes, which must be a non-zero multiple of
    /// [`PAGE`] (callers validate sizes that come from configuration).
    pub(crate) fn new(capacity: usize) -> io::Result<Self> {
        if capacity == 0 || !capacity.is_multiple_of(PAGE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer size {capacity} is not a non-zero multiple of {PAGE}"),
            ));
        }
        let layout = Layout::from_size_align(capacity, PAGE)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // Zeroed rather than uninitialised so that handing out `&[u8]` over
        // the whole capacity is sound before anything was read into it;
        // large zeroed allocations come straight from mmap, so this costs
        // nothing up front.
        // SAFETY: `layout` has a non-zero size (checked above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("allocating a {capacity}-byte I/O buffer"),
            )
        })?;
        Ok(Self { ptr, layout })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.layout.size()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `capacity` initialised bytes for as
        // long as `self` lives, and `&self` rules out a concurrent `&mut`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity()) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this very `layout` and
        // is freed only here, once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_writable() {
        for cap in [PAGE, 3 * PAGE, 1 << 20] {
            let mut b = AlignedBuf::new(cap).expect("alloc");
            assert_eq!(b.capacity(), cap);
            assert_eq!(b.as_slice().as_ptr() as usize % PAGE, 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice()[cap - 1] = 7;
            assert_eq!(b.as_slice()[cap - 1], 7);
        }
    }

    #[test]
    fn rejects_unaligned_or_empty_sizes() {
        for cap in [0, 1, PAGE - 1, PAGE + 1] {
            let e = AlignedBuf::new(cap).expect_err("must refuse");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
