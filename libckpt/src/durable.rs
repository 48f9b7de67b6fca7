//! Crash-safe file updates: temp file, fsync, rename, fsync of the directory.
//!
//! A reader (or a restarted daemon) sees either the old state or the new one,
//! never a half-written file, whatever instant the writer is killed at.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An I/O failure with the path and the operation it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct PathError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl PathError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Result-extension that attaches the operation and path to an `io::Error`.
pub trait IoContext<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, PathError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, PathError> {
        self.map_err(|e| PathError::new(op, path, e))
    }
}

/// The temp name `path` is staged under before the rename: unique per
/// call, since two threads of one process that stage the same file under
/// one name truncate each other's bytes and can rename an empty file into
/// place (seen: two ranks opening a new store at once).
pub fn temp_path(path: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Replace `path` with `bytes` atomically and durably (mode `mode`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PathError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .at("creating", &tmp)?;
        f.write_all(bytes).at("writing", &tmp)?;
        f.sync_all().at("syncing", &tmp)?;
        fs::rename(&tmp, path).at("renaming into place", path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory, making the entries created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), PathError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("syncing directory", dir)
}

/// Reopen `path` and fsync it: its bytes and metadata become durable, and a
/// writeback error since it was written is reported here.
pub fn sync_file(path: &Path) -> Result<(), PathError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .at("syncing", path)
}

/// Start writing back `len` bytes of `file` from `from` (0: to the end)
/// and return without waiting for the disk, so that a later fsync has
/// little left to do. Advice only: an error here would show again at that
/// fsync, so it is ignored.
pub fn start_writeback(file: &File, from: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: sync_file_range on an fd we hold open for the call; no
    // memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Beyond this many files, one `syncfs` beats an fsync each: on ext4 every
/// fsync ends in a journal commit or a cache flush of its own, so ten
/// thousand small files cost ten thousand disk round trips; `syncfs`
/// writes them back together and commits once.
pub const SYNCFS_ABOVE: usize = 32;

/// Make the bytes and metadata of `files` durable. Up to
/// [`SYNCFS_ABOVE`] files are fsynced each, in parallel; more, and the
/// whole filesystem holding `dir` is synced once. That may also write back
/// data that is not ours, which costs time, never correctness.
pub fn sync_files(dir: &Path, files: &[PathBuf]) -> Result<(), PathError> {
    use rayon::prelude::*;
    if files.len() <= SYNCFS_ABOVE {
        return files.par_iter().try_for_each(|p| sync_file(p));
    }
    syncfs(dir)
}

/// syncfs(2) of the filesystem holding `dir`; its error reports a failed
/// writeback of any file there since `dir` was opened.
pub fn syncfs(dir: &Path) -> Result<(), PathError> {
    use std::os::unix::io::AsRawFd;
    let d = File::open(dir).at("opening", dir)?;
    // SAFETY: syncfs takes an fd we hold open for the call and no memory.
    let rc = unsafe { libc::syncfs(d.as_raw_fd()) };
    if rc != 0 {
        return Err(PathError::new(
            "syncing the filesystem of",
            dir,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Rename `from` to `to` unless `to` exists (then `AlreadyExists`, and
/// nothing changes): renameat2(RENAME_NOREPLACE). Not synced.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<(), PathError> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| PathError::new("renaming", p, io::ErrorKind::InvalidInput.into()))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call;
    // renameat2 reads them and touches no other memory of ours.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // A non-empty directory in the way may be reported as ENOTEMPTY.
    let e = if e.raw_os_error() == Some(libc::ENOTEMPTY) {
        io::ErrorKind::AlreadyExists.into()
    } else {
        e
    };
    Err(PathError::new("renaming into place", to, e))
}

/// fsync the directory holding `path`.
pub fn sync_parent(path: &Path) -> Result<(), PathError> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Create `dir` and any missing parents with `mode`, syncing each parent
/// whose entry list changed so the new directories survive a crash.
pub fn create_dir_all_durable(dir: &Path, mode: u32) -> Result<(), PathError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            create_dir_all_durable(parent, mode)?;
        }
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => sync_parent(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(PathError::new("creating directory", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_replacing_one_file_never_leave_it_short() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("LAYOUT");
        let body = b"ckptfs-store-layout 1\n";
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut short = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(got) = fs::read(&p) {
                        short += usize::from(got != body);
                    }
                }
                short
            });
            let writers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..200).find_map(|_| write_atomic(&p, body, 0o644).err())))
                .collect();
            let failed: Vec<_> = writers.into_iter().filter_map(|w| w.join().ok()?).collect();
            stop.store(true, Ordering::Relaxed);
            let short = reader.join().unwrap_or(usize::MAX);
            assert!(failed.is_empty(), "a writer failed: {failed:?}");
            assert_eq!(short, 0, "a reader saw a partial file");
        });
        assert_eq!(fs::read(&p).unwrap(), body);
    }

    #[test]
    fn atomic_replace() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp file left behind");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn errors_name_the_path() {
        let e = write_atomic(Path::new("/nonexistent-dir/x"), b"", 0o600).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/"), "{e}");
    }

    #[test]
    fn nested_dirs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c");
        create_dir_all_durable(&p, 0o700).unwrap();
        create_dir_all_durable(&p, 0o700).unwrap();
        assert!(p.is_dir());
    }
}
