//! The pread/pwrite path, for kernels that refuse io_uring.
//!
//! One buffer, one request at a time, but the same page-aligned buffers and
//! the same O_DIRECT rules as the io_uring path, so the two produce the
//! same files and digests and differ only in speed.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, PoisonError};

use super::buffer::AlignedBuf;
use super::{fill, pool_limit, shrank, IoError, Target};
use crate::chunk::ChunkHasher;

/// Spare transfer buffers, so that each operation does not fault in a
/// fresh `buffer_size` allocation.
pub(super) struct BufPool {
    buffer_size: usize,
    idle: Mutex<Vec<AlignedBuf>>,
    keep: usize,
}

impl BufPool {
    pub(super) fn new(buffer_size: usize) -> BufPool {
        BufPool {
            buffer_size,
            idle: Mutex::new(Vec::new()),
            keep: pool_limit(),
        }
    }

    pub(super) fn checkout(&self) -> io::Result<AlignedBuf> {
        let spare = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match spare {
            Some(buf) => Ok(buf),
            None => AlignedBuf::new(self.buffer_size),
        }
    }

    pub(super) fn give_back(&self, buf: AlignedBuf) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.keep {
            idle.push(buf);
        }
    }
}

/// Write everything `src` yields to `target`, one buffer at a time.
pub(super) fn write_all(
    buf: &mut AlignedBuf,
    target: &mut Target,
    src: &mut dyn Read,
    hasher: &mut ChunkHasher,
) -> Result<(), IoError> {
    let mut off = 0u64;
    loop {
        let n = fill(src, buf.as_mut_slice()).map_err(|e| target.source_err(e))?;
        if n == 0 {
            return Ok(());
        }
        let bytes = &buf.as_slice()[..n];
        hasher.update(bytes);
        write_at(target, bytes, off)?;
        off += n as u64;
        if n < buf.capacity() {
            return Ok(());
        }
    }
}

pub(super) fn write_at(target: &mut Target, bytes: &[u8], off: u64) -> Result<(), IoError> {
    let mut done = 0;
    while done < bytes.len() {
        let pos = off + done as u64;
        let len = target
            .write_len(pos, bytes.len() - done)
            .map_err(|e| target.write_err(pos, e))?;
        let was_direct = target.is_direct();
        match target.file.write_at(&bytes[done..done + len], pos) {
            Ok(0) => return Err(target.write_err(pos, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                target.count(was_direct, n);
                done += n;
            }
            Err(e) => {
                let retry = target
                    .should_retry(&e, was_direct)
                    .map_err(|e2| target.write_err(pos, e2))?;
                if !retry {
                    return Err(target.write_err(pos, e));
                }
            }
        }
    }
    Ok(())
}

/// Read the first `size` bytes of `target`, one buffer at a time, feeding
/// them to `hasher` and `sink`.
pub(super) fn read_all(
    buf: &mut AlignedBuf,
    target: &mut Target,
    size: u64,
    hasher: &mut ChunkHasher,
    sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<(), IoError> {
    let mut off = 0u64;
    while off < size {
        let want = (size - off).min(buf.capacity() as u64) as usize;
        read_at(target, buf.as_mut_slice(), want, off)?;
        let bytes = &buf.as_slice()[..want];
        hasher.update(bytes);
        sink(off, bytes).map_err(|e| target.sink_err(off, e))?;
        off += want as u64;
    }
    Ok(())
}

/// Fill the first `want` bytes of `space` from file offset `off`.
fn read_at(target: &mut Target, space: &mut [u8], want: usize, off: u64) -> Result<(), IoError> {
    let mut done = 0;
    while done < want {
        let pos = off + done as u64;
        let len = target
            .read_len(pos, want - done, space.len() - done)
            .map_err(|e| target.read_err(pos, e))?;
        let was_direct = target.is_direct();
        match target.file.read_at(&mut space[done..done + len], pos) {
            Ok(0) => return Err(target.read_err(pos, shrank())),
            Ok(n) => {
                // Direct reads ask for whole pages; the excess is not ours.
                let n = n.min(want - done);
                target.count(was_direct, n);
                done += n;
            }
            Err(e) => {
                let retry = target
                    .should_retry(&e, was_direct)
                    .map_err(|e2| target.read_err(pos, e2))?;
                if !retry {
                    return Err(target.read_err(pos, e));
                }
            }
        }
    }
    Ok(())
}
