//! The mounts a harness makes: what is mounted at a path (a mount left by
//! a killed run is detached before the next), and the lazy unmount.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::bail;

/// Lazy unmount (`umount -l`): for a mount whose daemon is gone.
pub fn detach(mp: &Path) -> anyhow::Result<()> {
    let c = std::ffi::CString::new(mp.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        bail!("detaching the mount at {}: {e}", mp.display());
    }
    Ok(())
}

/// The type of the topmost filesystem mounted exactly at `mp`, from
/// `/proc/self/mountinfo`.
pub fn mounted_fstype(mp: &Path) -> Option<String> {
    let text = fs::read("/proc/self/mountinfo").ok()?;
    let want = mp.as_os_str().as_bytes();
    let mut found = None;
    for line in text.split(|&b| b == b'\n') {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTS
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        if sep < 5 || fields.len() <= sep + 1 {
            continue;
        }
        if unescape(fields[4]) == want {
            found = Some(String::from_utf8_lossy(fields[sep + 1]).into_owned());
        }
    }
    found
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape(b"/mnt/a\\040b"), b"/mnt/a b");
        assert_eq!(unescape(b"/mnt/a\\04"), b"/mnt/a\\04");
        assert_eq!(unescape(b"/plain"), b"/plain");
    }
}
