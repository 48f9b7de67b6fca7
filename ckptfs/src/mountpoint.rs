//! The kernel's mount table, as far as `ckptfs mount` and `ckptfs umount`
//! need it: is our filesystem mounted there, is its daemon gone, detach it.
//!
//! A FUSE mount whose daemon died stays in the mount table, and every stat
//! of it fails with ENOTCONN ("Transport endpoint is not connected"). Such a
//! mount must be found and detached without ever stat'ing through it, which
//! is why paths are resolved here with more care than `canonicalize`.

use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// The fstype the kernel shows for our mounts (we mount with subtype and
/// fsname `ckptfs`).
pub const FSTYPE: &str = "fuse.ckptfs";

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undo the kernel's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`) in a mountinfo field.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(code) = field.get(i + 1..i + 4).and_then(octal_byte) {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    let mut v: u32 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        v = v * 8 + u32::from(d - b'0');
    }
    u8::try_from(v).ok()
}

/// Parse `/proc/*/mountinfo`:
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTS`.
/// Lines that do not have that shape are skipped.
fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line
                .split(|&b| b == b' ')
                .filter(|f| !f.is_empty())
                .collect();
            let mountpoint = fields.get(4)?;
            // The optional fields (shared:N, master:N …) vary in number;
            // the separator marks where the fixed tail begins.
            let sep = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
            let fstype = fields.get(sep + 1)?;
            let source = fields.get(sep + 2)?;
            Some(MountEntry {
                mountpoint: PathBuf::from(OsString::from_vec(unescape(mountpoint))),
                fstype: String::from_utf8_lossy(&unescape(fstype)).into_owned(),
                source: String::from_utf8_lossy(&unescape(source)).into_owned(),
            })
        })
        .collect()
}

/// `path` absolute and free of symlinks and `..`, without stat'ing its last
/// component if that is a dead FUSE mount (stat fails there). `None` when
/// the path does not exist.
fn resolve(path: &Path) -> io::Result<Option<PathBuf>> {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    };
    let (Some(parent), Some(Component::Normal(name))) =
        (abs.parent(), abs.components().next_back())
    else {
        // "/" or a path ending in "..": nothing at the end can be a mount
        // of ours that is dead, so the plain resolution is safe.
        return not_found_is_none(abs.canonicalize());
    };
    let parent = match not_found_is_none(parent.canonicalize())? {
        Some(p) => p,
        None => return Ok(None),
    };
    let joined = parent.join(name);
    match fs::symlink_metadata(&joined) {
        // A symlink to the mount point: the mount table holds its target.
        Ok(md) if md.file_type().is_symlink() => not_found_is_none(joined.canonicalize()),
        Ok(_) => Ok(Some(joined)),
        Err(e) if is_disconnected(&e) => Ok(Some(joined)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn not_found_is_none(r: io::Result<PathBuf>) -> io::Result<Option<PathBuf>> {
    match r {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// ENOTCONN: the daemon died. ECONNABORTED: the connection was aborted
/// through /sys/fs/fuse/connections/N/abort.
fn is_disconnected(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
    )
}

/// The mount whose mount point is exactly `path` (after resolving symlinks
/// and `..` in it), whatever its fstype. When several are stacked there,
/// the topmost, the one a process sees.
pub fn find_mount(path: &Path) -> io::Result<Option<MountEntry>> {
    let Some(target) = resolve(path).map_err(|e| with_path(e, "resolving", path))? else {
        return Ok(None);
    };
    let table = fs::read(MOUNTINFO).map_err(|e| with_path(e, "reading", Path::new(MOUNTINFO)))?;
    Ok(parse_mountinfo(&table)
        .into_iter()
        .rfind(|m| m.mountpoint == target))
}

/// True when `path` is a FUSE mount whose daemon is gone. statfs, not
/// stat: the kernel answers stat of the mount's root from its attribute
/// cache for a while after the daemon died, but always asks the daemon
/// for statfs.
pub fn is_stale(path: &Path) -> bool {
    let stat_dead = matches!(fs::metadata(path), Err(e) if is_disconnected(&e));
    stat_dead || matches!(libckpt::statfs::space(path), Err(e) if is_disconnected(&e))
}

/// Detach the mount at `path`, live or stale (MNT_DETACH: processes that
/// still use it keep their open files; the mount point is free at once).
pub fn detach(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unmounting {}: the path contains a NUL byte",
                path.display()
            ),
        )
    })?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; umount2
    // takes no other pointer.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    let hint = match e.raw_os_error() {
        Some(libc::EINVAL) => " (it is not a mount point)",
        Some(libc::EPERM) => {
            " (unmounting needs root; for your own FUSE mount use fusermount3 -uz)"
        }
        _ => "",
    };
    Err(io::Error::new(
        e.kind(),
        format!("unmounting {}: {e}{hint}", path.display()),
    ))
}

fn with_path(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
25 22 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
61 22 0:52 / /ckpt rw,nosuid,nodev,relatime shared:30 - fuse.ckptfs ckptfs rw,user_id=0,group_id=0,default_permissions,allow_other
62 22 0:53 / /mnt/with\\040space\\011tab rw,relatime - fuse.ckptfs /var/tmp/my\\040cache rw,user_id=0
63 22 0:54 /sub /back\\134slash rw master:4 propagate_from:2 - tmpfs tmpfs rw
64 61 0:55 / /ckpt rw,relatime - fuse.ckptfs ckptfs rw
garbage line without a separator
65 22 0:56 / /mnt/\\377raw rw - ext4 /dev/x rw
";

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 7, "{m:#?}");
        assert_eq!(
            m[0],
            MountEntry {
                mountpoint: "/".into(),
                fstype: "ext4".into(),
                source: "/dev/sda1".into(),
            }
        );
        assert_eq!(m[2].fstype, FSTYPE);
        assert_eq!(m[2].mountpoint, Path::new("/ckpt"));
        assert_eq!(m[3].mountpoint, Path::new("/mnt/with space\ttab"));
        assert_eq!(m[3].source, "/var/tmp/my cache");
        assert_eq!(m[4].mountpoint, Path::new("/back\\slash"));
        assert_eq!(m[4].fstype, "tmpfs");
        // Mount points need not be UTF-8.
        assert_eq!(
            m[6].mountpoint.as_os_str().as_bytes(),
            b"/mnt/\xffraw".as_slice()
        );
    }

    #[test]
    fn unescape_leaves_non_escapes_alone() {
        assert_eq!(unescape(b"a\\040b"), b"a b");
        assert_eq!(unescape(b"a\\04"), b"a\\04");
        assert_eq!(unescape(b"a\\089"), b"a\\089");
        assert_eq!(unescape(b"\\"), b"\\");
        assert_eq!(unescape(b"\\777"), b"\\777");
    }

    #[test]
    fn the_topmost_of_stacked_mounts_wins() {
        let m = parse_mountinfo(SAMPLE);
        let top = m
            .iter()
            .rfind(|e| e.mountpoint == Path::new("/ckpt"))
            .unwrap();
        assert_eq!(top.source, "ckptfs");
        assert_eq!(top, &m[5]);
    }

    #[test]
    fn finds_the_root() {
        let root = find_mount(Path::new("/")).unwrap().expect("no mount at /");
        assert_eq!(root.mountpoint, Path::new("/"));
        assert!(!root.fstype.is_empty());
        // The same through `..` and a relative-looking detour.
        let again = find_mount(Path::new("/proc/..")).unwrap().unwrap();
        assert_eq!(again, root);
    }

    #[test]
    fn a_plain_directory_is_no_mount_and_not_stale() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_mount(dir.path()).unwrap(), None);
        assert!(!is_stale(dir.path()));
        let missing = dir.path().join("missing");
        assert_eq!(find_mount(&missing).unwrap(), None);
        assert_eq!(find_mount(&missing.join("deeper")).unwrap(), None);
        assert!(!is_stale(&missing));
    }

    #[test]
    fn a_symlink_to_a_mount_point_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("root-link");
        std::os::unix::fs::symlink("/", &link).unwrap();
        let m = find_mount(&link)
            .unwrap()
            .expect("no mount through the link");
        assert_eq!(m.mountpoint, Path::new("/"));
    }

    #[test]
    fn detaching_a_plain_directory_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = detach(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&*dir.path().to_string_lossy()), "{e}");
        // EINVAL as root, EPERM otherwise: either way a hint follows.
        assert!(
            e.contains("not a mount point") || e.contains("needs root"),
            "{e}"
        );
    }
}
