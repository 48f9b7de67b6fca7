//! FUSE over io_uring (Linux 6.14+, the fuse module's `enable_uring`):
//! one queue per CPU, served by a thread pinned to that CPU. The kernel
//! puts a request on the queue of the CPU its caller runs on, and
//! completes the waiting `URING_CMD` in the pinned thread's context, so a
//! request and its answer stay on one CPU. Each entry is a pair of
//! buffers registered once: a 288-byte header (in/out header, the
//! opcode's fixed arguments, the entry's commit id and payload size) and
//! the payload. `COMMIT_AND_FETCH` answers one request and waits for the
//! next in a single submission.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::dev::MAX_WRITE;
use super::memfs::{self, InHeader, MemFs, Reply};

/// `struct fuse_uring_req_header`: in_out[128], op_in[128], ring_ent_in_out[32].
const HEADER: usize = 288;
const OP_IN: usize = 128;
/// `fuse_uring_ent_in_out.commit_id` and `.payload_sz`.
const COMMIT_ID: usize = 256 + 8;
const PAYLOAD_SZ: usize = 256 + 16;
const PAYLOAD: usize = MAX_WRITE as usize;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Entries per queue: one writer needs one; a spare keeps a second
/// request on the same CPU from waiting for the first's commit.
const ENTRIES: usize = 2;

struct Entry {
    header: Box<[u8; HEADER]>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

/// Register `ENTRIES` on queue `qid` and serve it until the connection
/// ends, counting requests in `served`. Returns why it stopped when that
/// was not the unmount.
pub fn serve(fs: &MemFs, dev: &File, qid: u16, served: &AtomicU64) -> io::Result<()> {
    pin_to_cpu(qid.into())?;
    // Before the ring, so the ring (and the kernel's hold on the
    // buffers) goes first when this returns.
    let mut entries: Vec<Entry> = (0..ENTRIES)
        .map(|_| {
            let mut header = Box::new([0u8; HEADER]);
            let mut payload = vec![0u8; PAYLOAD];
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.as_mut_ptr().cast(),
                    iov_len: HEADER,
                },
                libc::iovec {
                    iov_base: payload.as_mut_ptr().cast(),
                    iov_len: PAYLOAD,
                },
            ]);
            Entry {
                header,
                payload,
                iov,
            }
        })
        .collect();
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder().build(8)?;
    for (i, e) in entries.iter().enumerate() {
        push(&mut ring, command(dev, CMD_REGISTER, qid, 0, &e.iov, i))?;
    }
    let mut args = Vec::new();
    let mut out = Vec::new();
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (i, res) in done {
            if res < 0 {
                // ENOTCONN / ECANCELED: the mount is gone.
                return match -res {
                    libc::ENOTCONN | libc::ECANCELED | libc::ECONNABORTED => Ok(()),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
            let Some(e) = entries.get_mut(i as usize) else {
                continue;
            };
            served.fetch_add(1, Ordering::Relaxed);
            let commit_id = answer(fs, e, &mut args, &mut out);
            push(
                &mut ring,
                command(
                    dev,
                    CMD_COMMIT_AND_FETCH,
                    qid,
                    commit_id,
                    &e.iov,
                    i as usize,
                ),
            )?;
        }
    }
}

/// Answer the request in `e` in place; its commit id.
fn answer(fs: &MemFs, e: &mut Entry, args: &mut Vec<u8>, out: &mut Vec<u8>) -> u64 {
    let h = InHeader::parse(&e.header[..]);
    let commit_id = memfs::u64_at(&e.header[..], COMMIT_ID).unwrap_or(0);
    let size = memfs::u32_at(&e.header[..], PAYLOAD_SZ).unwrap_or(0) as usize;
    out.clear();
    let reply = match h {
        Some(h) => {
            args.clear();
            let fixed = memfs::op_in_size(h.opcode);
            args.extend_from_slice(&e.header[OP_IN..OP_IN + fixed]);
            args.extend_from_slice(&e.payload[..size.min(PAYLOAD)]);
            fs.handle(&h, args, out)
        }
        None => Reply::Err(libc::EINVAL),
    };
    let (error, len) = match reply {
        Reply::Err(errno) => (-errno, 0),
        _ => (0, out.len().min(PAYLOAD)),
    };
    let unique = h.map_or(0, |h| h.unique);
    e.header[0..4].copy_from_slice(&((memfs::OUT_HEADER + len) as u32).to_le_bytes());
    e.header[4..8].copy_from_slice(&error.to_le_bytes());
    e.header[8..16].copy_from_slice(&unique.to_le_bytes());
    e.payload[..len].copy_from_slice(&out[..len]);
    e.header[PAYLOAD_SZ..PAYLOAD_SZ + 4].copy_from_slice(&(len as u32).to_le_bytes());
    commit_id
}

/// A `URING_CMD` for /dev/fuse carrying `struct fuse_uring_cmd_req`
/// { flags, commit_id, qid } and the entry's two buffers.
fn command(
    dev: &File,
    op: u32,
    qid: u16,
    commit_id: u64,
    iov: &[libc::iovec; 2],
    index: usize,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_le_bytes());
    cmd[16..18].copy_from_slice(&qid.to_le_bytes());
    let mut sqe = opcode::UringCmd80::new(types::Fd(dev.as_raw_fd()), op)
        .cmd(cmd)
        .addr(Some(iov.as_ptr() as u64))
        .build()
        .user_data(index as u64);
    // fuse reads the iovec count from the SQE's `len`, which the crate
    // does not set for URING_CMD.
    // SAFETY: `Entry128` is `#[repr(C)]` around a `struct io_uring_sqe`,
    // whose `len` (u32) sits at byte 24; the write stays inside it.
    unsafe {
        let base = (&mut sqe as *mut squeue::Entry128).cast::<u8>();
        base.add(24).cast::<u32>().write_unaligned(2);
    }
    sqe
}

fn push(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    sqe: squeue::Entry128,
) -> io::Result<()> {
    // SAFETY: the buffers the entry points at live in `entries`, which
    // outlives the ring's use of them (the loop returns before they drop).
    unsafe { ring.submission().push(&sqe) }
        .map_err(|_| io::Error::other("the submission queue is full"))?;
    ring.submit().map(drop)
}

/// Run the calling thread on `cpu` only.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no CPU {cpu}"),
        ));
    }
    // SAFETY: a zeroed cpu_set_t is empty; `cpu` is below CPU_SETSIZE, so
    // CPU_SET stays inside it; sched_setaffinity only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
