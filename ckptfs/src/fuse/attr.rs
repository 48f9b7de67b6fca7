//! Backing-file metadata as FUSE attributes.

use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

pub fn kind(ft: &fs::FileType) -> FileType {
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_fifo() {
        FileType::NamedPipe
    } else if ft.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// The permission bits a file under /ckpt may carry. Regular files never
/// keep setuid or setgid: a checkpoint is data, not a program to run with
/// its owner's rights. That is also what lets the kernel skip a
/// `security.capability` lookup on every write: with no
/// setuid bit and no capability ever present, there is nothing for a
/// write to strip (FUSE_HANDLE_KILLPRIV_V2, set in `init`).
pub fn kept_perm(is_file: bool, mode: u32) -> u32 {
    let perm = mode & 0o7777;
    if is_file {
        perm & !(libc::S_ISUID | libc::S_ISGID)
    } else {
        perm
    }
}

/// `root`: the top of the mount, shown as a sticky world-writable directory
/// (like /tmp) so every user can create their own job directories, which
/// the daemon then gives to them.
pub fn from_metadata(ino: u64, md: &Metadata, root: bool) -> FileAttr {
    let perm = if root {
        0o1777
    } else {
        kept_perm(md.is_file(), md.mode()) as u16
    };
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: time(md.atime(), md.atime_nsec()),
        mtime: time(md.mtime(), md.mtime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
        crtime: md.created().unwrap_or(UNIX_EPOCH),
        kind: kind(&md.file_type()),
        perm,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: md.blksize() as u32,
        flags: 0,
    }
}

/// A set that only a lower tier holds: a read-only directory owned like
/// its job, dated by the set's creation.
pub fn remote_set(ino: u64, job: &Metadata, created: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 4096,
        blocks: 8,
        atime: created,
        mtime: created,
        ctime: created,
        crtime: created,
        kind: FileType::Directory,
        perm: 0o500,
        nlink: 2,
        uid: job.uid(),
        gid: job.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
