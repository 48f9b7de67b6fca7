//! The filesystem behind the probe's mount: names and attributes in
//! memory, file bytes in a backing directory (as ckptfs keeps them in its
//! cache). Only what the small-file loop needs is answered; anything
//! else gets ENOSYS. Requests come decoded the same way from either
//! transport, so the two differ only in how requests travel.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const MKDIR: u32 = 9;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const GETXATTR: u32 = 22;
pub const FLUSH: u32 = 25;
pub const INIT: u32 = 26;
pub const OPENDIR: u32 = 27;
pub const RELEASEDIR: u32 = 29;
pub const ACCESS: u32 = 34;
pub const CREATE: u32 = 35;
pub const INTERRUPT: u32 = 36;
pub const BATCH_FORGET: u32 = 42;

/// `struct fuse_in_header`.
pub const IN_HEADER: usize = 40;
/// `struct fuse_out_header`.
pub const OUT_HEADER: usize = 16;

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The fields of `struct fuse_in_header` the filesystem uses.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
}

impl InHeader {
    pub fn parse(b: &[u8]) -> Option<InHeader> {
        Some(InHeader {
            opcode: u32_at(b, 4)?,
            unique: u64_at(b, 8)?,
            nodeid: u64_at(b, 16)?,
            uid: u32_at(b, 24)?,
            gid: u32_at(b, 28)?,
        })
    }
}

/// Size of the fixed argument struct that precedes an opcode's payload:
/// the io_uring transport gets it in a header slot of its own and has to
/// put the two together again.
pub fn op_in_size(opcode: u32) -> usize {
    match opcode {
        GETATTR | CREATE => 16,
        WRITE => 40,
        FLUSH | RELEASE | RELEASEDIR => 24,
        GETXATTR | MKDIR | ACCESS | OPENDIR => 8,
        INIT => 64,
        _ => 0,
    }
}

/// A reply to write: an error, or the reply's arguments.
pub enum Reply {
    /// FORGET and friends: the kernel expects none.
    None,
    Err(i32),
    Ok,
}

struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
}

#[derive(Default)]
struct Tree {
    nodes: HashMap<u64, Node>,
    names: HashMap<(u64, Vec<u8>), u64>,
    last: u64,
}

/// An open file: its backing file, or with passthrough the id the
/// kernel gave it (the kernel writes the backing file itself).
enum Handle {
    File(File),
    Passthrough(u32),
}

pub struct MemFs {
    tree: Mutex<Tree>,
    open: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    backing: PathBuf,
    /// /dev/fuse, where backing files are registered for passthrough.
    passthrough: Option<RawFd>,
}

/// `FOPEN_PASSTHROUGH`.
const FOPEN_PASSTHROUGH: u32 = 1 << 7;
/// `_IOW(229, 1, struct fuse_backing_map)` and `_IOW(229, 2, uint32_t)`.
const BACKING_OPEN: libc::c_ulong = 0x4010_e501;
const BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

const ROOT: u64 = 1;
const TTL_SECS: u64 = 1;

impl MemFs {
    /// `passthrough`: the /dev/fuse descriptor, to open files in
    /// passthrough mode as ckptfs does (the connection must have
    /// negotiated `FUSE_PASSTHROUGH`).
    pub fn new(backing: PathBuf, passthrough: Option<RawFd>) -> MemFs {
        let mut tree = Tree {
            last: ROOT,
            ..Tree::default()
        };
        tree.nodes.insert(
            ROOT,
            Node {
                mode: libc::S_IFDIR | 0o755,
                uid: 0,
                gid: 0,
                size: 0,
            },
        );
        MemFs {
            tree: Mutex::new(tree),
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            backing,
            passthrough,
        }
    }

    /// Hand `file` to the kernel for passthrough: its backing id.
    fn register(&self, dev: RawFd, file: &File) -> Result<u32, i32> {
        // struct fuse_backing_map { int32 fd; uint32 flags; uint64 padding; }
        let mut map = [0u8; 16];
        map[..4].copy_from_slice(&file.as_raw_fd().to_le_bytes());
        // SAFETY: the ioctl reads 16 bytes from `map`, alive for the call;
        // `dev` is the /dev/fuse descriptor the mount holds open.
        let id = unsafe { libc::ioctl(dev, BACKING_OPEN, map.as_ptr()) };
        if id < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(id as u32)
    }

    /// Answer one request; `args` is everything after the in-header,
    /// `out` receives the reply's arguments.
    pub fn handle(&self, h: &InHeader, args: &[u8], out: &mut Vec<u8>) -> Reply {
        match self.answer(h, args, out) {
            Ok(r) => r,
            Err(errno) => {
                out.clear();
                Reply::Err(errno)
            }
        }
    }

    fn answer(&self, h: &InHeader, args: &[u8], out: &mut Vec<u8>) -> Result<Reply, i32> {
        let fixed = |at: usize| u32_at(args, at).ok_or(libc::EINVAL);
        match h.opcode {
            FORGET | BATCH_FORGET | INTERRUPT => Ok(Reply::None),
            LOOKUP => {
                let t = self.lock();
                let ino = *t.names.get(&(h.nodeid, name(args))).ok_or(libc::ENOENT)?;
                entry(out, ino, t.nodes.get(&ino).ok_or(libc::ENOENT)?);
                Ok(Reply::Ok)
            }
            GETATTR => {
                let t = self.lock();
                let n = t.nodes.get(&h.nodeid).ok_or(libc::ENOENT)?;
                out.extend_from_slice(&TTL_SECS.to_le_bytes());
                out.extend_from_slice(&[0; 8]);
                attr(out, h.nodeid, n);
                Ok(Reply::Ok)
            }
            MKDIR | CREATE => {
                // fuse_mkdir_in { mode, umask }; fuse_create_in { flags, mode, umask, open_flags }.
                let (kind, mode) = if h.opcode == MKDIR {
                    (libc::S_IFDIR, fixed(0)?)
                } else {
                    (libc::S_IFREG, fixed(4)?)
                };
                let key = (
                    h.nodeid,
                    name(args.get(op_in_size(h.opcode)..).unwrap_or(&[])),
                );
                let node = Node {
                    mode: kind | (mode & 0o7777),
                    uid: h.uid,
                    gid: h.gid,
                    size: 0,
                };
                let mut t = self.lock();
                if t.names.contains_key(&key) {
                    return Err(libc::EEXIST);
                }
                t.last += 1;
                let ino = t.last;
                let opened = if h.opcode == CREATE {
                    let file = OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(self.backing.join(ino.to_string()))
                        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                    let handle = match self.passthrough {
                        // The kernel keeps its own reference to the file.
                        Some(dev) => Handle::Passthrough(self.register(dev, &file)?),
                        None => Handle::File(file),
                    };
                    let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                    let (flags, id) = match handle {
                        Handle::Passthrough(id) => (FOPEN_PASSTHROUGH, id),
                        Handle::File(_) => (0, 0),
                    };
                    lock(&self.open).insert(fh, handle);
                    Some((fh, flags, id))
                } else {
                    None
                };
                entry(out, ino, &node);
                t.nodes.insert(ino, node);
                t.names.insert(key, ino);
                if let Some((fh, flags, id)) = opened {
                    // fuse_open_out { fh, open_flags, backing_id }
                    out.extend_from_slice(&fh.to_le_bytes());
                    out.extend_from_slice(&flags.to_le_bytes());
                    out.extend_from_slice(&id.to_le_bytes());
                }
                Ok(Reply::Ok)
            }
            WRITE => {
                // fuse_write_in { fh, offset, size, write_flags, lock_owner, flags, padding }
                let fh = u64_at(args, 0).ok_or(libc::EINVAL)?;
                let offset = u64_at(args, 8).ok_or(libc::EINVAL)?;
                let size = fixed(16)? as usize;
                let data = args.get(40..40 + size).ok_or(libc::EINVAL)?;
                {
                    let open = lock(&self.open);
                    let Some(Handle::File(file)) = open.get(&fh) else {
                        return Err(libc::EBADF);
                    };
                    file.write_all_at(data, offset)
                        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                }
                if let Some(n) = self.lock().nodes.get_mut(&h.nodeid) {
                    n.size = n.size.max(offset + size as u64);
                }
                out.extend_from_slice(&(size as u32).to_le_bytes());
                out.extend_from_slice(&[0; 4]);
                Ok(Reply::Ok)
            }
            RELEASE => {
                let handle = lock(&self.open).remove(&u64_at(args, 0).ok_or(libc::EINVAL)?);
                if let (Some(Handle::Passthrough(id)), Some(dev)) = (handle, self.passthrough) {
                    // SAFETY: the ioctl reads the u32 id, alive for the call.
                    unsafe { libc::ioctl(dev, BACKING_CLOSE, &id) };
                }
                Ok(Reply::Ok)
            }
            FLUSH | ACCESS | RELEASEDIR => Ok(Reply::Ok),
            OPENDIR => {
                out.extend_from_slice(&[0; 16]);
                Ok(Reply::Ok)
            }
            // ckptfs answers the kernel's `security.capability` the same way.
            GETXATTR => Err(libc::ENODATA),
            STATFS => {
                for v in [1u64 << 20, 1 << 19, 1 << 19, 1 << 20, 1 << 19] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                for v in [4096u32, 255, 4096, 0] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&[0; 24]);
                Ok(Reply::Ok)
            }
            _ => Err(libc::ENOSYS),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tree> {
        lock(&self.tree)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A NUL-terminated name at the start of `b`.
fn name(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

/// `struct fuse_attr`.
fn attr(out: &mut Vec<u8>, ino: u64, n: &Node) {
    for v in [ino, n.size, n.size.div_ceil(512), 0, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let nlink = if n.mode & libc::S_IFMT == libc::S_IFDIR {
        2
    } else {
        1
    };
    for v in [0u32, 0, 0, n.mode, nlink, n.uid, n.gid, 0, 4096, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// `struct fuse_entry_out`.
fn entry(out: &mut Vec<u8>, ino: u64, n: &Node) {
    for v in [ino, 0, TTL_SECS, TTL_SECS] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&[0; 8]);
    attr(out, ino, n);
}
