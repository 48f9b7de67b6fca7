//! POSIX behaviour of a real ckptfs mount, on both data paths (kernel
//! passthrough and the daemon's fallback path): what applications that know
//! nothing of ckptfs do to their checkpoint files.
//!
//! Needs root and /dev/fuse.

#[macro_use]
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

fn write_file(p: &Path, bytes: &[u8]) {
    fs::write(p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn read_file(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Create (or truncate) `p` for reading and writing.
fn create_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Files: create, read, write, pwrite, N-1.

both_paths!(create_read_write);
fn create_read_write(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("rank-0.bin");
    let data = pattern(3 * 1024 * 1024 + 17, 1);
    {
        let mut fh = File::create(&f).expect("create");
        // Odd write sizes.
        for chunk in data.chunks(123_457) {
            fh.write_all(chunk).expect("write");
        }
    }
    assert_bytes_eq(&read_file(&f), &data, "read back through the mount");
    assert_bytes_eq(
        &read_file(&m.c("job/s/rank-0.bin")),
        &data,
        "the bytes in the cache",
    );
    // Reopen read-write, read a middle piece, overwrite it, read again.
    let mut fh = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .expect("reopen rw");
    fh.seek(SeekFrom::Start(1_000_000)).unwrap();
    let mut buf = vec![0u8; 5000];
    fh.read_exact(&mut buf).unwrap();
    assert_bytes_eq(&buf, &data[1_000_000..1_005_000], "read at an offset");
    fh.seek(SeekFrom::Start(1_000_000)).unwrap();
    fh.write_all(&[0xAB; 5000]).unwrap();
    drop(fh);
    let mut want = data.clone();
    want[1_000_000..1_005_000].fill(0xAB);
    assert_bytes_eq(&read_file(&f), &want, "after an overwrite in the middle");
    // Read-only open of an existing file; reading past the end gives 0.
    let ro = File::open(&f).expect("open ro");
    let mut b = [0u8; 10];
    assert_eq!(ro.read_at(&mut b, want.len() as u64 + 10).unwrap(), 0);
    // Exclusive create of an existing name fails.
    assert_errno(
        OpenOptions::new().write(true).create_new(true).open(&f),
        libc::EEXIST,
        "O_CREAT|O_EXCL of an existing file",
    );
    // A file that is not there.
    assert_errno(
        File::open(set.join("nope")),
        libc::ENOENT,
        "open of a missing file",
    );
}

both_paths!(pwrite_arbitrary_offsets);
fn pwrite_arbitrary_offsets(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("pw.bin");
    let fh = create_rw(&f);
    let mut shadow: Vec<u8> = Vec::new();
    // A fixed pseudo-random sequence of (offset, length) writes: unaligned,
    // overlapping, past the end (leaving holes), backwards.
    let mut x: u64 = 0x1234_5678;
    for i in 0..200u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % (4 << 20);
        let len = 1 + (x >> 32) % 70_000;
        let bytes = pattern(len as usize, i + 100);
        fh.write_all_at(&bytes, off).expect("pwrite");
        let end = (off + len) as usize;
        if shadow.len() < end {
            shadow.resize(end, 0);
        }
        shadow[off as usize..end].copy_from_slice(&bytes);
        if i % 50 == 49 {
            // Read back through the same handle (pread) while it is open.
            let mut got = vec![0u8; shadow.len()];
            fh.read_exact_at(&mut got, 0).expect("pread");
            assert_bytes_eq(&got, &shadow, &format!("pread after {} pwrites", i + 1));
        }
    }
    assert_eq!(
        fh.metadata().unwrap().len(),
        shadow.len() as u64,
        "size while open"
    );
    drop(fh);
    assert_eq!(
        fs::metadata(&f).unwrap().len(),
        shadow.len() as u64,
        "size after close"
    );
    assert_bytes_eq(&read_file(&f), &shadow, "file after pwrites");
    assert_bytes_eq(
        &read_file(&m.c("job/s/pw.bin")),
        &shadow,
        "cache file after pwrites",
    );
}

both_paths!(n_to_1_dd_processes);
/// N-1 checkpoint: several processes (dd) write disjoint, unaligned ranges
/// of one shared file, each opening it with O_CREAT (no truncation).
fn n_to_1_dd_processes(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("shared.bin");
    let sizes = [
        3 * 1024 * 1024 + 1000,
        2 * 1024 * 1024 + 77,
        4 * 1024 * 1024 + 5,
        1024 * 1024,
    ];
    let mut want = Vec::new();
    let mut procs = Vec::new();
    for (k, size) in sizes.iter().enumerate() {
        let input = m.dir().join(format!("in{k}"));
        let bytes = pattern(*size, 10 + k as u64);
        write_file(&input, &bytes);
        let off = want.len();
        want.extend_from_slice(&bytes);
        let err = m.dir().join(format!("dd{k}.err"));
        let mut c = Command::new("dd");
        c.arg(format!("if={}", input.display()))
            .arg(format!("of={}", f.display()))
            .arg("bs=64K")
            .arg(format!("seek={off}"))
            .arg("oflag=seek_bytes")
            .arg("conv=notrunc")
            .arg("status=none")
            .stderr(File::create(&err).unwrap());
        let mut p = Proc::spawn(c);
        p.stderr_path = Some(err);
        procs.push(p);
    }
    for (k, p) in procs.iter_mut().enumerate() {
        let st = p
            .wait_within(WAIT)
            .unwrap_or_else(|| panic!("dd {k} did not finish"));
        assert!(st.success(), "dd {k}: {st}: {}", p.stderr());
    }
    assert_bytes_eq(&read_file(&f), &want, "N-1 file written by 4 dd processes");
    m.commit_ok("job", "s");
    m.verify_ok("job", "s");
    assert_eq!(
        m.manifest_files("job", "s"),
        vec![(
            "shared.bin".to_owned(),
            want.len() as u64,
            "0600".to_owned()
        )]
    );
}

both_paths!(n_to_1_threads_interleaved);
/// N-1 with strided blocks: rank k writes blocks k, k+N, k+2N… of one
/// file through its own descriptor, all at once.
fn n_to_1_threads_interleaved(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("strided.bin");
    File::create(&f).expect("create");
    const RANKS: usize = 4;
    const BLOCK: usize = 64 * 1024 + 3; // unaligned on purpose
    const PER_RANK: usize = 24;
    let threads: Vec<_> = (0..RANKS)
        .map(|k| {
            let f = f.clone();
            std::thread::spawn(move || {
                let fh = OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .expect("open for rank");
                for i in 0..PER_RANK {
                    let block = i * RANKS + k;
                    let bytes = pattern(BLOCK, block as u64);
                    fh.write_all_at(&bytes, (block * BLOCK) as u64)
                        .expect("pwrite rank");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("rank thread");
    }
    let mut want = Vec::new();
    for block in 0..RANKS * PER_RANK {
        want.extend_from_slice(&pattern(BLOCK, block as u64));
    }
    assert_bytes_eq(&read_file(&f), &want, "strided N-1 file");
}

// ---------------------------------------------------------------------------
// Truncate, fsync.

both_paths!(truncate_shrink_grow_and_o_trunc);
fn truncate_shrink_grow_and_o_trunc(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("t.bin");
    let data = pattern(1 << 20, 3);
    write_file(&f, &data);
    // ftruncate on an open handle: shrink, then grow (zeros).
    let fh = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    fh.set_len(1000).expect("ftruncate shrink");
    assert_eq!(fh.metadata().unwrap().len(), 1000);
    fh.set_len(300_000).expect("ftruncate grow");
    drop(fh);
    let mut want = data[..1000].to_vec();
    want.resize(300_000, 0);
    assert_bytes_eq(&read_file(&f), &want, "after ftruncate shrink + grow");
    // truncate(2) by path, no open handle.
    let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::truncate(c.as_ptr(), 10) },
        0,
        "truncate(2): {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(read_file(&f), &data[..10], "after truncate(2) to 10");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 5000) }, 0);
    let mut want = data[..10].to_vec();
    want.resize(5000, 0);
    assert_bytes_eq(&read_file(&f), &want, "after truncate(2) grow");
    // O_TRUNC of an existing file.
    let mut fh = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f)
        .unwrap();
    assert_eq!(fh.metadata().unwrap().len(), 0, "size right after O_TRUNC");
    fh.write_all(b"fresh").unwrap();
    drop(fh);
    assert_eq!(read_file(&f), b"fresh");
    assert_eq!(fs::metadata(&f).unwrap().len(), 5);
    // The commit sees the final size.
    m.commit_ok("job", "s");
    m.verify_ok("job", "s");
    assert_eq!(m.manifest_files("job", "s")[0].1, 5);
}

both_paths!(fsync_and_fdatasync);
fn fsync_and_fdatasync(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("sync.bin");
    let mut fh = File::create(&f).unwrap();
    let data = pattern(2 << 20, 4);
    fh.write_all(&data).unwrap();
    fh.sync_data().expect("fdatasync");
    fh.sync_all().expect("fsync");
    // Synced bytes are in the cache file while the handle is still open.
    assert_bytes_eq(
        &read_file(&m.c("job/s/sync.bin")),
        &data,
        "cache after fsync",
    );
    fh.write_all(b"tail").unwrap();
    fh.sync_all().expect("second fsync");
    drop(fh);
    // fsync of a read-only handle and of a directory.
    File::open(&f)
        .unwrap()
        .sync_all()
        .expect("fsync of a read-only handle");
    let _ = File::open(&set).unwrap().sync_all();
    assert_eq!(fs::metadata(&f).unwrap().len(), data.len() as u64 + 4);
}

// ---------------------------------------------------------------------------
// Namespace inside a set.

both_paths!(rename_and_unlink_within_a_set);
fn rename_and_unlink_within_a_set(m: &mut Mount) {
    let set = m.new_set("job", "s");
    write_file(&set.join("a"), b"aaa");
    write_file(&set.join("b"), b"bbbb");
    write_file(&set.join("c"), b"c");
    fs::create_dir(set.join("sub")).unwrap();
    // Plain rename.
    fs::rename(set.join("a"), set.join("a2")).expect("rename a -> a2");
    assert_errno(
        fs::metadata(set.join("a")),
        libc::ENOENT,
        "old name after rename",
    );
    assert_eq!(read_file(&set.join("a2")), b"aaa");
    // Rename over an existing file replaces it.
    fs::rename(set.join("b"), set.join("c")).expect("rename b over c");
    assert_eq!(read_file(&set.join("c")), b"bbbb");
    assert_errno(
        fs::metadata(set.join("b")),
        libc::ENOENT,
        "b after rename over c",
    );
    // Into a subdirectory and back out.
    fs::rename(set.join("c"), set.join("sub/c")).expect("rename into sub");
    assert_eq!(read_file(&set.join("sub/c")), b"bbbb");
    // Rename a directory (with a file in it).
    fs::rename(set.join("sub"), set.join("sub2")).expect("rename dir");
    assert_eq!(read_file(&set.join("sub2/c")), b"bbbb");
    // The temp-then-rename idiom.
    write_file(&set.join(".ckpt.tmp"), b"final");
    fs::rename(set.join(".ckpt.tmp"), set.join("ckpt")).expect("rename tmp");
    // Unlink.
    fs::remove_file(set.join("a2")).expect("unlink");
    assert_errno(fs::metadata(set.join("a2")), libc::ENOENT, "after unlink");
    assert_errno(
        fs::remove_file(set.join("a2")),
        libc::ENOENT,
        "second unlink",
    );
    assert_eq!(names(&set), vec!["ckpt", "sub2"]);
    assert_eq!(names(&m.c("job/s")), vec!["ckpt", "sub2"], "cache agrees");
    m.commit_ok("job", "s");
    m.verify_ok("job", "s");
    let files: Vec<String> = m
        .manifest_files("job", "s")
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(files, vec!["ckpt", "sub2/c"]);
}

both_paths!(mkdir_rmdir_inside_a_set);
fn mkdir_rmdir_inside_a_set(m: &mut Mount) {
    let set = m.new_set("job", "s");
    fs::create_dir_all(set.join("a/b/c")).expect("mkdir -p inside a set");
    let md = fs::metadata(set.join("a/b")).unwrap();
    assert!(md.is_dir());
    assert_eq!(
        md.mode() & 0o7777,
        0o700,
        "directories in a set are private"
    );
    write_file(&set.join("a/b/c/f"), b"x");
    assert_errno(
        fs::remove_dir(set.join("a/b")),
        libc::ENOTEMPTY,
        "rmdir of a non-empty dir",
    );
    assert_errno(
        fs::create_dir(set.join("a")),
        libc::EEXIST,
        "mkdir of an existing dir",
    );
    fs::remove_file(set.join("a/b/c/f")).unwrap();
    fs::remove_dir(set.join("a/b/c")).expect("rmdir");
    fs::remove_dir(set.join("a/b")).expect("rmdir");
    assert_eq!(names(&set.join("a")), Vec::<String>::new());
    assert!(!m.c("job/s/a/b").exists(), "gone from the cache");
    assert_errno(
        fs::remove_dir(set.join("a/b")),
        libc::ENOENT,
        "rmdir of a missing dir",
    );
    // rmdir of a file / unlink of a directory.
    write_file(&set.join("f"), b"x");
    assert_errno(
        fs::remove_dir(set.join("f")),
        libc::ENOTDIR,
        "rmdir of a file",
    );
    let r = fs::remove_file(set.join("a"));
    let e = errno_of(r, "unlink of a directory");
    assert!(
        e == libc::EISDIR || e == libc::EPERM,
        "unlink of a directory: errno {e}"
    );
}

both_paths!(readdir_shows_sets_and_files_only);
fn readdir_shows_sets_and_files_only(m: &mut Mount) {
    let set = m.new_set("job", "s1");
    m.new_set("job", "s2");
    m.new_set("other", "x");
    write_file(&set.join("f1"), b"1");
    write_file(&set.join("f2"), b"2");
    fs::create_dir(set.join("d")).unwrap();
    write_file(&set.join("d/g"), b"3");
    // Stray things put into the cache behind the mount's back.
    write_file(&m.c("stray-file"), b"stray");
    write_file(&m.c("job/stray-in-job"), b"stray");
    fs::create_dir(m.c(".hidden-dir")).unwrap();
    fs::create_dir(m.c("job/.hidden-set")).unwrap();
    assert!(
        m.c(".ckptfs").is_dir(),
        "the store's metadata dir exists in the cache"
    );
    assert_eq!(
        names(&m.p("")),
        vec!["job", "other"],
        "top level: jobs only"
    );
    assert_eq!(names(&m.p("job")), vec!["s1", "s2"], "job level: sets only");
    assert_eq!(names(&set), vec!["d", "f1", "f2"]);
    assert_eq!(names(&set.join("d")), vec!["g"]);
    // Types come through readdir.
    for e in fs::read_dir(&set).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if e.file_name() == "d" {
            assert!(ft.is_dir());
        } else {
            assert!(ft.is_file(), "{:?}", e.file_name());
        }
    }
    // The store's metadata cannot be reached by name either.
    assert_errno(
        fs::metadata(m.p(".ckptfs")),
        libc::ENOENT,
        "stat MOUNT/.ckptfs",
    );
    assert_errno(
        fs::metadata(m.p(".ckptfs/sets")),
        libc::ENOENT,
        "stat MOUNT/.ckptfs/sets",
    );
    // A large directory: every entry comes back once.
    let big = m.new_set("job", "many");
    for i in 0..600 {
        File::create(big.join(format!("file-{i:04}"))).unwrap();
    }
    let got = names(&big);
    assert_eq!(got.len(), 600);
    assert_eq!(got[0], "file-0000");
    assert_eq!(got[599], "file-0599");
}

// ---------------------------------------------------------------------------
// Attributes.

both_paths!(stat_chmod_chown_utimens);
fn stat_chmod_chown_utimens(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("f");
    let data = pattern(12345, 5);
    write_file(&f, &data);
    let md = fs::metadata(&f).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), 12345);
    assert_eq!(md.mode() & 0o170000, libc::S_IFREG);
    assert_eq!(md.mode() & 0o7777, 0o600);
    assert_eq!((md.uid(), md.gid()), (0, 0), "created by root");
    assert_eq!(md.nlink(), 1);
    assert!(md.blocks() * 512 >= 12345);
    let dir_md = fs::metadata(&set).unwrap();
    assert!(dir_md.is_dir());
    // The top of the mount is like /tmp: everyone may create a job.
    let root_md = fs::metadata(m.p("")).unwrap();
    assert_eq!(root_md.mode() & 0o7777, 0o1777, "mount root mode");

    // utimens with explicit times, through a read-only handle (so that no
    // seal runs behind our back: see utimens_survives_the_seal).
    m.wait_state(&f, "sealed", WAIT);
    let atime = UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    let mtime = UNIX_EPOCH + Duration::new(1_100_000_000, 987_654_321);
    let times = fs::FileTimes::new().set_accessed(atime).set_modified(mtime);
    File::open(&f).unwrap().set_times(times).expect("futimens");
    let md = fs::metadata(&f).unwrap();
    assert_eq!(md.modified().unwrap(), mtime, "mtime after futimens");
    assert_eq!(md.accessed().unwrap(), atime, "atime after futimens");
    // The cache file has the same times.
    let cmd = fs::metadata(m.c("job/s/f")).unwrap();
    assert_eq!(cmd.modified().unwrap(), mtime, "cache mtime");
    // utimensat by path, mtime only.
    let mtime2 = UNIX_EPOCH + Duration::new(1_200_000_000, 5);
    let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_200_000_000,
            tv_nsec: 5,
        },
    ];
    // SAFETY: valid path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat: {}", std::io::Error::last_os_error());
    let md = fs::metadata(&f).unwrap();
    assert_eq!(md.modified().unwrap(), mtime2, "mtime after utimensat");
    assert_eq!(
        md.accessed().unwrap(),
        atime,
        "atime left alone (UTIME_OMIT)"
    );
    // A write moves mtime forward to about now.
    let before = SystemTime::now() - Duration::from_secs(5);
    OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"!")
        .unwrap();
    let md = fs::metadata(&f).unwrap();
    assert!(md.modified().unwrap() > before, "mtime after a write");

    // chmod (wider is allowed when asked for explicitly), then back.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).expect("chmod 640");
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(
        fs::metadata(m.c("job/s/f")).unwrap().mode() & 0o7777,
        0o640,
        "cache mode"
    );
    // A checkpoint is never setuid or setgid (that is what spares every
    // write a security.capability round trip); a directory keeps setgid.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6750)).expect("chmod 6750");
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o750);
    assert_eq!(
        fs::metadata(m.c("job/s/f")).unwrap().mode() & 0o7777,
        0o750,
        "cache mode after chmod 6750"
    );
    fs::set_permissions(&f, fs::Permissions::from_mode(0o400)).expect("chmod 400");
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o400);
    fs::set_permissions(m.p("job"), fs::Permissions::from_mode(0o2711)).expect("chmod job dir");
    assert_eq!(fs::metadata(m.p("job")).unwrap().mode() & 0o7777, 0o2711);
    fs::set_permissions(m.p("job"), fs::Permissions::from_mode(0o711)).expect("chmod job dir");
    // chown.
    std::os::unix::fs::chown(&f, Some(65534), Some(65534)).expect("chown");
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    let cmd = fs::metadata(m.c("job/s/f")).unwrap();
    assert_eq!((cmd.uid(), cmd.gid()), (65534, 65534), "cache owner");
    std::os::unix::fs::chown(&f, None, Some(0)).expect("chgrp");
    assert_eq!(fs::metadata(&f).unwrap().gid(), 0);
    // Contents untouched by all this.
    let mut want = data;
    want.push(b'!');
    assert_bytes_eq(&read_file(&f), &want, "contents after attribute changes");
}

both_paths!(utimens_survives_the_seal);
/// Times set by the application (tar -x, cp -p, rsync -t do this before
/// closing) are the file's times: the background seal that reads the file
/// after its last close must not move its atime.
fn utimens_survives_the_seal(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("restored");
    let mut fh = File::create(&f).unwrap();
    fh.write_all(&pattern(1 << 20, 9)).unwrap();
    let atime = UNIX_EPOCH + Duration::new(1_000_000_000, 0);
    let mtime = UNIX_EPOCH + Duration::new(1_100_000_000, 0);
    fh.set_times(fs::FileTimes::new().set_accessed(atime).set_modified(mtime))
        .expect("futimens before close");
    drop(fh);
    m.wait_state(&f, "sealed", WAIT);
    // The kernel caches attributes for a while: look at the cache file,
    // which is what the mount shows once that expires.
    let cmd = fs::metadata(m.c("job/s/restored")).unwrap();
    assert_eq!(
        cmd.modified().unwrap(),
        mtime,
        "cache file mtime after the seal"
    );
    assert_eq!(
        cmd.accessed().unwrap(),
        atime,
        "cache file atime set by futimens was changed after close (the seal read the file without O_NOATIME?)"
    );
    let md = fs::metadata(&f).unwrap();
    assert_eq!(md.modified().unwrap(), mtime, "mtime after the seal");
    assert_eq!(
        md.accessed().unwrap(),
        atime,
        "atime set by futimens was changed after close (the seal read the file without O_NOATIME?)"
    );
}

both_paths!(statfs_reports_the_cache);
fn statfs_reports_the_cache(m: &mut Mount) {
    let mnt = statvfs(&m.mnt);
    let cache = statvfs(&m.cache);
    let total = |s: &libc::statvfs| s.f_blocks as u128 * s.f_frsize as u128;
    let avail = |s: &libc::statvfs| s.f_bavail as u128 * s.f_frsize as u128;
    let free = |s: &libc::statvfs| s.f_bfree as u128 * s.f_frsize as u128;
    assert_eq!(
        total(&mnt),
        total(&cache),
        "total size of the mount = the cache's filesystem"
    );
    // Others write on this machine meanwhile: allow 1% of the size.
    let tol = total(&cache) / 100;
    let close = |a: u128, b: u128| a.abs_diff(b) <= tol;
    assert!(
        close(avail(&mnt), avail(&cache)),
        "available: mount {} vs cache {}",
        avail(&mnt),
        avail(&cache)
    );
    assert!(
        close(free(&mnt), free(&cache)),
        "free: mount {} vs cache {}",
        free(&mnt),
        free(&cache)
    );
    assert!(
        mnt.f_files > 0 && mnt.f_files == cache.f_files,
        "inodes: {} vs {}",
        mnt.f_files,
        cache.f_files
    );
    assert!(mnt.f_namemax > 0);
    // `df` agrees with statvfs on the mount.
    let out = run("df", &[&"-B1", &"--output=size", &m.mnt]);
    assert!(out.status.success(), "df: {}", stderr(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    let size: u128 = s.lines().nth(1).unwrap().trim().parse().unwrap();
    assert_eq!(size, total(&mnt), "df size");
    // Writing into the mount uses the cache's space.
    let set = m.new_set("job", "s");
    let mut fh = File::create(set.join("fill")).unwrap();
    fh.write_all(&vec![7u8; 8 << 20]).unwrap();
    fh.sync_all().unwrap();
    drop(fh);
    let after = statvfs(&m.mnt);
    let cache_after = statvfs(&m.cache);
    assert!(close(avail(&after), avail(&cache_after)));
}

both_paths!(mmap_shared_write_then_commit);
/// Codes that map their state and `msync` it: a shared writable mapping of
/// a file opened read-write. On the fallback path write handles use direct
/// I/O, which the kernel maps only with FUSE_DIRECT_IO_ALLOW_MMAP.
fn mmap_shared_write_then_commit(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("mapped");
    let len = 3 * 4096 + 100;
    let fh = create_rw(&f);
    fh.set_len(len as u64).unwrap();
    let want = pattern(len, 9);
    // SAFETY: a fresh shared mapping of `len` bytes of an open descriptor;
    // checked against MAP_FAILED before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&fh),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap MAP_SHARED: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `p` maps `len` writable bytes until the munmap below.
    unsafe { std::ptr::copy_nonoverlapping(want.as_ptr(), p.cast::<u8>(), len) };
    // SAFETY: `p`/`len` are the mapping made above.
    let synced = unsafe { libc::msync(p, len, libc::MS_SYNC) };
    assert_eq!(synced, 0, "msync: {}", std::io::Error::last_os_error());
    // SAFETY: as above; not used afterwards.
    assert_eq!(unsafe { libc::munmap(p, len) }, 0);
    drop(fh);
    assert_bytes_eq(&read_file(&f), &want, "read back through the mount");
    assert_bytes_eq(
        &read_file(&m.c("job/s/mapped")),
        &want,
        "the bytes in the cache",
    );
    m.commit_ok("job", "s");
    m.verify_ok("job", "s");
}

both_paths!(sparse_file_at_1gib);
fn sparse_file_at_1gib(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("sparse");
    let fh = create_rw(&f);
    let off = 1u64 << 30;
    fh.write_all_at(b"end", off).expect("write at 1 GiB");
    fh.write_all_at(b"start", 0).expect("write at 0");
    drop(fh);
    let md = fs::metadata(&f).unwrap();
    assert_eq!(md.len(), off + 3, "size of the sparse file");
    assert!(
        md.blocks() * 512 <= 1 << 20,
        "sparse file uses {} bytes",
        md.blocks() * 512
    );
    let cmd = fs::metadata(m.c("job/s/sparse")).unwrap();
    assert_eq!(cmd.len(), off + 3);
    assert!(
        cmd.blocks() * 512 <= 1 << 20,
        "cache file is sparse too: {} bytes",
        cmd.blocks() * 512
    );
    let fh = File::open(&f).unwrap();
    let mut b = vec![0u8; 8192];
    fh.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b[..5], b"start");
    assert!(b[5..].iter().all(|&x| x == 0), "hole reads as zeros");
    fh.read_exact_at(&mut b, off - 8192).unwrap();
    assert!(
        b.iter().all(|&x| x == 0),
        "hole before the end reads as zeros"
    );
    let mut e = [0u8; 3];
    fh.read_exact_at(&mut e, off).unwrap();
    assert_eq!(&e, b"end");
}

both_paths!(o_append_from_two_handles);
fn o_append_from_two_handles(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("log");
    write_file(&f, b"head\n");
    let mut h1 = OpenOptions::new().append(true).open(&f).unwrap();
    let mut h2 = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&f)
        .unwrap();
    let mut want = b"head\n".to_vec();
    for i in 0..100 {
        let a = format!("A{i:04}\n");
        let b = format!("B{i:04}-longer\n");
        h1.write_all(a.as_bytes()).unwrap();
        h2.write_all(b.as_bytes()).unwrap();
        want.extend_from_slice(a.as_bytes());
        want.extend_from_slice(b.as_bytes());
    }
    drop((h1, h2));
    assert_eq!(
        String::from_utf8_lossy(&read_file(&f)),
        String::from_utf8_lossy(&want)
    );

    // Two threads appending fixed-size records at once: every record lands
    // whole, none overwrites another.
    let g = set.join("records");
    File::create(&g).unwrap();
    const REC: usize = 64;
    const N: usize = 300;
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut h = OpenOptions::new().append(true).open(&g).unwrap();
                for i in 0..N {
                    let mut r = format!("T{t}-{i:05}").into_bytes();
                    r.resize(REC - 1, b'.');
                    r.push(b'\n');
                    h.write_all(&r).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = read_file(&g);
    assert_eq!(got.len(), 2 * N * REC, "all records appended");
    let mut next = [0usize; 2];
    for rec in got.chunks(REC) {
        let s = String::from_utf8_lossy(rec);
        let t: usize = s[1..2]
            .parse()
            .unwrap_or_else(|_| panic!("torn record {s:?}"));
        assert_eq!(s, {
            let mut r = format!("T{t}-{:05}", next[t]);
            r.push_str(&".".repeat(REC - 1 - r.len()));
            r.push('\n');
            r
        });
        next[t] += 1;
    }
    assert_eq!(next, [N, N]);
}

both_paths!(concurrent_writers_of_different_files);
fn concurrent_writers_of_different_files(m: &mut Mount) {
    let set = m.new_set("job", "s");
    const N: u64 = 6;
    const SIZE: usize = 3 * 1024 * 1024 + 11;
    let threads: Vec<_> = (0..N)
        .map(|k| {
            let p = set.join(format!("rank-{k}.bin"));
            std::thread::spawn(move || {
                let data = pattern(SIZE, 200 + k);
                let mut fh = File::create(&p).unwrap();
                for c in data.chunks(64 * 1024) {
                    fh.write_all(c).unwrap();
                }
                fh.sync_all().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    for k in 0..N {
        let p = set.join(format!("rank-{k}.bin"));
        assert_bytes_eq(
            &read_file(&p),
            &pattern(SIZE, 200 + k),
            &format!("rank {k}"),
        );
    }
    m.commit_ok("job", "s");
    m.verify_ok("job", "s");
    let files = m.manifest_files("job", "s");
    assert_eq!(files.len(), N as usize);
    assert!(
        files.iter().all(|f| f.1 == SIZE as u64 && f.2 == "0600"),
        "{files:?}"
    );
}

// ---------------------------------------------------------------------------
// Permissions.

both_paths!(new_files_are_private);
fn new_files_are_private(m: &mut Mount) {
    let set = m.new_set("job", "s");
    // umask 0 and a 0666 create (shell redirection).
    let out = sh_as(0, 0, "umask 000; : > \"$1\"", &[&set.join("sh")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::metadata(set.join("sh")).unwrap().mode() & 0o7777,
        0o600,
        "0666 under umask 0"
    );
    // Explicit modes through open(2).
    for (asked, want) in [
        (0o644, 0o600),
        (0o666, 0o600),
        (0o640, 0o600),
        (0o600, 0o600),
        (0o400, 0o400),
        (0o200, 0o200),
    ] {
        let p = set.join(format!("m{asked:o}"));
        let fh = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(asked)
            .open(&p)
            .unwrap_or_else(|e| panic!("create with mode {asked:o}: {e}"));
        drop(fh);
        let got = fs::metadata(&p).unwrap().mode() & 0o7777;
        assert_eq!(got, want, "created with {asked:o}");
        let cache = fs::metadata(m.c(&format!("job/s/m{asked:o}")))
            .unwrap()
            .mode()
            & 0o7777;
        assert_eq!(cache, want, "cache file created with {asked:o}");
    }
    // Directories inside a set: 0700 at most.
    let out = sh_as(0, 0, "umask 000; mkdir \"$1\"", &[&set.join("d")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::metadata(set.join("d")).unwrap().mode() & 0o7777, 0o700);
    // Set directories too.
    assert_eq!(fs::metadata(&set).unwrap().mode() & 0o777, 0o700, "set dir");
}

both_paths!(files_belong_to_their_writer);
fn files_belong_to_their_writer(m: &mut Mount) {
    const NOBODY: u32 = 65534;
    const OTHER: u32 = 65533;
    let job = m.p("pj");
    // nobody makes its own job and set and writes a file.
    let out = sh_as(
        NOBODY,
        NOBODY,
        "mkdir \"$1\" \"$1/s\" && echo secret > \"$1/s/f\" && cat \"$1/s/f\"",
        &[&job],
    );
    assert!(
        out.status.success(),
        "nobody writing its checkpoint: {}",
        stderr(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "secret\n");
    for rel in ["pj", "pj/s", "pj/s/f"] {
        let md = fs::metadata(m.p(rel)).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (NOBODY, NOBODY),
            "owner of MOUNT/{rel}"
        );
        let cmd = fs::metadata(m.c(rel)).unwrap();
        assert_eq!(
            (cmd.uid(), cmd.gid()),
            (NOBODY, NOBODY),
            "owner of CACHE/{rel}"
        );
    }
    assert_eq!(fs::metadata(m.p("pj/s/f")).unwrap().mode() & 0o7777, 0o600);
    // Another user can read neither through the private set dir…
    let out = as_user(OTHER, OTHER, "cat", &[&m.p("pj/s/f")]);
    assert!(
        !out.status.success(),
        "another user read nobody's checkpoint"
    );
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    // …nor, once the owner opens the directory, the 0600 file itself.
    let out = as_user(NOBODY, NOBODY, "chmod", &[&"755", &m.p("pj/s")]);
    assert!(out.status.success(), "chmod by the owner: {}", stderr(&out));
    let out = as_user(OTHER, OTHER, "ls", &[&m.p("pj/s")]);
    assert!(
        out.status.success(),
        "listing an opened dir: {}",
        stderr(&out)
    );
    let out = as_user(OTHER, OTHER, "cat", &[&m.p("pj/s/f")]);
    assert!(!out.status.success(), "another user read a 0600 file");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    // …nor write into it, nor commit it.
    let out = sh_as(OTHER, OTHER, "echo x > \"$1\"", &[&m.p("pj/s/g")]);
    assert!(
        !out.status.success(),
        "another user wrote into nobody's set"
    );
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    let out = as_user(
        OTHER,
        OTHER,
        "setfattr",
        &[&"-n", &"user.ckptfs.commit", &"-v", &"1", &m.p("pj/s")],
    );
    assert!(!out.status.success(), "another user committed nobody's set");
    assert_ne!(get_state(&m.p("pj/s")).unwrap(), "complete");
    // nobody cannot write into root's set.
    m.new_set("rootjob", "s");
    let out = sh_as(NOBODY, NOBODY, "echo x > \"$1\"", &[&m.p("rootjob/s/x")]);
    assert!(!out.status.success(), "nobody wrote into root's set");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    // The owner commits its own set through the xattr.
    m.wait_state(&m.p("pj/s"), "sealed", WAIT);
    let out = as_user(
        NOBODY,
        NOBODY,
        "setfattr",
        &[&"-n", &"user.ckptfs.commit", &"-v", &"1", &m.p("pj/s")],
    );
    assert!(out.status.success(), "owner commit: {}", stderr(&out));
    assert_eq!(get_state(&m.p("pj/s")).unwrap(), "complete");
    m.verify_ok("pj", "s");
    assert_eq!(
        m.manifest_files("pj", "s"),
        vec![("f".to_owned(), 7, "0600".to_owned())]
    );
}

both_paths!(reader_and_writer_share_a_file);
/// A file opened for reading first and then for writing by another
/// descriptor (on the passthrough path both share one backing file): each
/// sees the other's bytes.
fn reader_and_writer_share_a_file(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("shared");
    write_file(&f, &pattern(8192, 1));
    m.wait_state(&f, "sealed", WAIT);
    let reader = File::open(&f).unwrap();
    // The reader caches the old bytes first: a write handle on the
    // fallback path bypasses the page cache, and must still not leave the
    // reader looking at stale pages.
    let mut old = vec![0u8; 8192];
    reader.read_exact_at(&mut old, 0).unwrap();
    assert_bytes_eq(&old, &pattern(8192, 1), "reader before the write");
    let writer = OpenOptions::new().write(true).open(&f).unwrap();
    let fresh = pattern(8192, 2);
    writer.write_all_at(&fresh, 4096).unwrap();
    let mut got = vec![0u8; 12288];
    reader.read_exact_at(&mut got, 0).unwrap();
    let mut want = pattern(8192, 1)[..4096].to_vec();
    want.extend_from_slice(&fresh);
    assert_bytes_eq(&got, &want, "reader sees the writer's bytes");
    drop(writer);
    // Another writer after the first closed, the reader still open.
    let w2 = OpenOptions::new().append(true).open(&f).unwrap();
    (&w2).write_all(b"tail").unwrap();
    drop(w2);
    let mut tail = [0u8; 4];
    reader.read_exact_at(&mut tail, 12288).unwrap();
    assert_eq!(&tail, b"tail");
    drop(reader);
    m.commit_ok("job", "s");
    m.verify_ok("job", "s");
    assert_eq!(m.manifest_files("job", "s")[0].1, 12292);
}
