//! The classic transport: threads that `read(2)` requests from
//! /dev/fuse and `write(2)` the replies. It also answers INIT for both
//! transports, since the kernel sends INIT (and later FORGETs and
//! interrupts) through /dev/fuse even once io_uring carries the rest.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::memfs::{self, InHeader, MemFs, Reply, IN_HEADER, OUT_HEADER};

/// `FUSE_BIG_WRITES | FUSE_HANDLE_KILLPRIV_V2 | FUSE_INIT_EXT`: the
/// first word of flags ckptfs negotiates, as far as this loop cares.
const INIT_FLAGS: u32 = (1 << 5) | (1 << 28) | (1 << 30);
/// `FUSE_OVER_IO_URING`, bit 41, and `FUSE_PASSTHROUGH`, bit 37, in
/// `flags2`.
const OVER_IO_URING: u32 = 1 << (41 - 32);
const PASSTHROUGH: u32 = 1 << (37 - 32);

/// What INIT asks the kernel for.
#[derive(Debug, Clone, Copy)]
pub struct Wants {
    pub uring: bool,
    pub passthrough: bool,
}

/// The kernel's default `max_pages` (32) × 4 KiB.
pub const MAX_WRITE: u32 = 128 << 10;

/// Serve /dev/fuse until the connection ends. `initialized` is set once
/// INIT is answered (asking for what `wants` says).
/// `served` counts the requests answered, INIT aside (FORGETs and
/// interrupts, which get no answer, come this way on either transport).
pub fn serve(
    fs: &MemFs,
    mut dev: &File,
    wants: Wants,
    initialized: &Arc<AtomicBool>,
    served: &AtomicU64,
) {
    let mut buf = vec![0u8; MAX_WRITE as usize + 4096];
    let mut out = Vec::new();
    loop {
        let n = match dev.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            // ENOENT: the request was interrupted before we read it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ENOENT)) => continue,
            // ENODEV: unmounted.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return,
            Err(e) => {
                eprintln!("ckpt-bench fuse-transport: reading /dev/fuse: {e}");
                return;
            }
        };
        let req = &buf[..n];
        let Some(h) = InHeader::parse(req) else {
            continue;
        };
        out.clear();
        let reply = if h.opcode == memfs::INIT {
            init_reply(req, wants, &mut out)
        } else {
            fs.handle(&h, req.get(IN_HEADER..).unwrap_or(&[]), &mut out)
        };
        if h.opcode != memfs::INIT && !matches!(reply, Reply::None) {
            served.fetch_add(1, Ordering::Relaxed);
        }
        if !matches!(reply, Reply::None) {
            // A reply the kernel refuses (its request was interrupted)
            // changes nothing here.
            let _ = send(dev, h.unique, &reply, &out);
        }
        if h.opcode == memfs::INIT {
            initialized.store(true, Ordering::SeqCst);
        }
    }
}

fn send(mut dev: &File, unique: u64, reply: &Reply, args: &[u8]) -> io::Result<()> {
    let (error, args) = match reply {
        Reply::Err(e) => (-e, &[][..]),
        _ => (0, args),
    };
    let mut msg = Vec::with_capacity(OUT_HEADER + args.len());
    msg.extend_from_slice(&((OUT_HEADER + args.len()) as u32).to_le_bytes());
    msg.extend_from_slice(&error.to_le_bytes());
    msg.extend_from_slice(&unique.to_le_bytes());
    msg.extend_from_slice(args);
    // One write(2) per reply, as /dev/fuse requires.
    dev.write(&msg).map(drop)
}

/// `struct fuse_init_out` (64 bytes) for the kernel's `fuse_init_in`.
fn init_reply(req: &[u8], wants: Wants, out: &mut Vec<u8>) -> Reply {
    let Some(minor) = memfs::u32_at(req, IN_HEADER + 4) else {
        return Reply::Err(libc::EINVAL);
    };
    for v in [7u32, minor, 1 << 20, INIT_FLAGS] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&16u16.to_le_bytes()); // max_background
    out.extend_from_slice(&12u16.to_le_bytes()); // congestion_threshold
    out.extend_from_slice(&MAX_WRITE.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // time_gran
    out.extend_from_slice(&32u16.to_le_bytes()); // max_pages
    out.extend_from_slice(&0u16.to_le_bytes()); // map_alignment
    let mut flags2 = 0;
    if wants.uring {
        flags2 |= OVER_IO_URING;
    }
    if wants.passthrough {
        flags2 |= PASSTHROUGH;
    }
    out.extend_from_slice(&flags2.to_le_bytes());
    // max_stack_depth: backing files on a filesystem that is not itself stacked.
    out.extend_from_slice(&u32::from(wants.passthrough).to_le_bytes());
    out.resize(64, 0);
    Reply::Ok
}
