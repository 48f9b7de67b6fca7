//! Mounting `/ckpt` with the kernel: /dev/fuse opened here and mount(2)
//! called with the filesystem type `fuse.ckptfs`, so `/proc/mounts`,
//! `findmnt -t fuse.ckptfs` and `umount -t` know our mounts for what they
//! are (fuser's own mount path always says plain `fuse`).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::mountpoint::FSTYPE;

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Mount a FUSE filesystem of type `fuse.ckptfs` at `mountpoint`, showing
/// `source` (the cache directory) as its device. Returns the /dev/fuse
/// descriptor to serve it on.
pub fn mount(mountpoint: &Path, source: &Path) -> io::Result<OwnedFd> {
    let dev: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let rootmode = libc::S_IFDIR;
    // SAFETY: getuid/getgid cannot fail and have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let data = format!(
        "fd={},rootmode={rootmode:o},user_id={uid},group_id={gid},default_permissions,allow_other",
        dev.as_raw_fd()
    );
    let src = cstr(source.as_os_str().as_bytes())?;
    let target = cstr(mountpoint.as_os_str().as_bytes())?;
    let fstype = cstr(FSTYPE.as_bytes())?;
    let data = cstr(data.as_bytes())?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives
    // the call; the data string is what the fuse filesystem type parses.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(dev))
}

/// Unmount `mountpoint` the clean way: refused (EBUSY) while a process
/// has its working directory or a file open under it, in which case the
/// caller decides whether to detach instead.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let target = cstr(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: `target` is a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
