//! A real ckptfs mount as checkpointing applications and operators use it:
//! sets and their states, commit (CLI, xattr, idle rule), read-only
//! complete sets, name rules, unmount and background start.
//!
//! Needs root and /dev/fuse.

#[macro_use]
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn write_file(p: &Path, bytes: &[u8]) {
    fs::write(p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn read_file(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
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

fn setfattr_commit(dir: &Path) -> std::process::Output {
    run(
        "setfattr",
        &[&"-n", &"user.ckptfs.commit", &"-v", &"1", &dir],
    )
}

// ---------------------------------------------------------------------------
// Set states and commit.

both_paths!(state_writing_sealed_complete_via_cli);
fn state_writing_sealed_complete_via_cli(m: &mut Mount) {
    let set = m.new_set("job", "step-1");
    let f = set.join("rank-0.bin");
    let data = pattern(5 * 1024 * 1024 + 3, 1);
    let mut fh = File::create(&f).unwrap();
    fh.write_all(&data).unwrap();
    assert_eq!(
        get_state(&set).unwrap(),
        "writing",
        "set with a file open for writing"
    );
    assert_eq!(get_state(&f).unwrap(), "writing", "file open for writing");
    // Listed as an extended attribute of sets and their files.
    let out = run("getfattr", &[&"-d", &"-m", &"user.ckptfs", &set]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("user.ckptfs.state"),
        "getfattr -d: {out:?}"
    );
    let st = m.status();
    let open: Vec<&str> = st["open_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(open, vec!["job/step-1/rank-0.bin"], "status open_files");
    drop(fh);
    // The seal runs in the background after close.
    m.wait_state(&set, "sealed", WAIT);
    assert_eq!(get_state(&f).unwrap(), "sealed");
    let out = m.commit("job", "step-1");
    assert!(out.status.success(), "ckptfs commit: {}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("committed"),
        "{out:?}"
    );
    assert_eq!(get_state(&set).unwrap(), "complete");
    assert_eq!(get_state(&f).unwrap(), "complete");
    assert_eq!(m.ls_state("job", "step-1").as_deref(), Some("complete"));
    m.verify_ok("job", "step-1");
    assert_eq!(
        m.manifest_files("job", "step-1"),
        vec![(
            "rank-0.bin".to_owned(),
            data.len() as u64,
            "0600".to_owned()
        )],
        "manifest lists exactly the file written"
    );
    assert_bytes_eq(&read_file(&f), &data, "readable after commit");
    let latest = m.cli_ok(&[&"latest", &"job"]);
    assert_eq!(latest.trim(), "step-1");
    // Committing again is refused, and changes nothing.
    let out = m.commit("job", "step-1");
    assert!(!out.status.success(), "second commit succeeded");
    m.verify_ok("job", "step-1");
    // Not offered through the xattr on things that are not sets.
    assert!(get_state(&m.p("job")).is_err(), "a job has no state");
}

both_paths!(commit_via_setfattr);
fn commit_via_setfattr(m: &mut Mount) {
    let set = m.new_set("job", "s");
    write_file(&set.join("a"), &pattern(100_000, 2));
    fs::create_dir_all(set.join("d/e")).unwrap();
    write_file(&set.join("d/e/b"), &pattern(3 << 20, 3));
    write_file(&set.join("empty"), b"");
    // No waiting for the seals: commit waits for them itself.
    m.settle("job", "s");
    let out = setfattr_commit(&set);
    assert!(out.status.success(), "setfattr commit: {}", stderr(&out));
    assert_eq!(get_state(&set).unwrap(), "complete");
    m.verify_ok("job", "s");
    assert_eq!(
        m.manifest_files("job", "s"),
        vec![
            ("a".to_owned(), 100_000, "0600".to_owned()),
            ("d/e/b".to_owned(), 3 << 20, "0600".to_owned()),
            ("empty".to_owned(), 0, "0600".to_owned()),
        ]
    );
    // The xattr on a file, or a name other than ours, is refused.
    let e = errno_of(
        setxattr(&set.join("a"), "user.ckptfs.commit", b"1"),
        "commit xattr on a file",
    );
    assert_ne!(e, 0);
    let e = errno_of(setxattr(&set, "user.other", b"1"), "other xattr");
    assert!(
        e == libc::ENOTSUP || e == libc::EOPNOTSUPP || e == libc::EROFS,
        "errno {e}"
    );
}

both_paths!(commit_refused_while_a_file_is_open);
fn commit_refused_while_a_file_is_open(m: &mut Mount) {
    let set = m.new_set("job", "s");
    write_file(&set.join("done.bin"), &pattern(4096, 1));
    let f = set.join("rank-07.bin");
    let first = pattern(2 << 20, 7);
    let mut fh = File::create(&f).unwrap();
    fh.write_all(&first).unwrap();
    // CLI: non-zero, and the message names the open file.
    let out = m.commit("job", "s");
    assert!(!out.status.success(), "commit with a file open succeeded");
    let msg = stderr(&out);
    assert!(
        msg.contains("rank-07.bin"),
        "commit refusal does not name the open file: {msg}"
    );
    assert!(
        !msg.contains("done.bin"),
        "names a closed file as open: {msg}"
    );
    // xattr: EBUSY.
    assert_errno(
        setxattr(&set, "user.ckptfs.commit", b"1"),
        libc::EBUSY,
        "setxattr commit with a file open",
    );
    let out = setfattr_commit(&set);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Device or resource busy"),
        "{}",
        stderr(&out)
    );
    // Nothing lost: the writer goes on, closes, and the commit then works.
    assert_eq!(get_state(&set).unwrap(), "writing");
    let second = pattern(1 << 20, 8);
    fh.write_all(&second)
        .expect("write after the refused commit");
    drop(fh);
    m.commit_ok("job", "s");
    let mut want = first;
    want.extend_from_slice(&second);
    assert_bytes_eq(&read_file(&f), &want, "file after the refused commits");
    m.verify_ok("job", "s");
    assert_eq!(
        m.manifest_files("job", "s"),
        vec![
            ("done.bin".to_owned(), 4096, "0600".to_owned()),
            (
                "rank-07.bin".to_owned(),
                want.len() as u64,
                "0600".to_owned()
            ),
        ]
    );
}

both_paths!(a_complete_set_is_read_only);
fn a_complete_set_is_read_only(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let f = set.join("f");
    let data = pattern(300_000, 4);
    write_file(&f, &data);
    fs::create_dir(set.join("d")).unwrap();
    write_file(&set.join("d/g"), b"g");
    let live = m.new_set("job", "live");
    write_file(&live.join("x"), b"x");
    m.commit_ok("job", "s");
    let rofs = libc::EROFS;
    assert_errno(
        OpenOptions::new().write(true).open(&f),
        rofs,
        "open for writing",
    );
    assert_errno(
        OpenOptions::new().append(true).open(&f),
        rofs,
        "open for appending",
    );
    assert_errno(
        OpenOptions::new().write(true).truncate(true).open(&f),
        rofs,
        "O_TRUNC",
    );
    assert_errno(File::create(set.join("new")), rofs, "create");
    assert_errno(fs::remove_file(&f), rofs, "unlink");
    assert_errno(fs::rename(&f, set.join("f2")), rofs, "rename within");
    assert_errno(fs::create_dir(set.join("nd")), rofs, "mkdir");
    assert_errno(fs::remove_file(set.join("d/g")), rofs, "unlink in a subdir");
    assert_errno(fs::remove_dir(set.join("d")), rofs, "rmdir inside");
    let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::truncate(c.as_ptr(), 0) };
    assert_eq!(rc, -1, "truncate(2) of a complete file succeeded");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(rofs),
        "truncate(2)"
    );
    assert_errno(
        fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)),
        rofs,
        "chmod",
    );
    assert_errno(
        std::os::unix::fs::chown(&f, Some(1), Some(1)),
        rofs,
        "chown",
    );
    assert_errno(
        File::open(&f)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(std::time::SystemTime::now())),
        rofs,
        "utimens",
    );
    assert_errno(fs::remove_dir(&set), rofs, "rmdir of the set");
    // From a live set into the complete one: a different set.
    assert_errno(
        fs::rename(live.join("x"), set.join("x")),
        libc::EXDEV,
        "rename into a complete set",
    );
    assert_errno(
        fs::hard_link(live.join("x"), set.join("x")),
        libc::EPERM,
        "link into a complete set",
    );
    // Nothing changed.
    assert_bytes_eq(&read_file(&f), &data, "complete file after refused changes");
    m.verify_ok("job", "s");
    assert_eq!(names(&set), vec!["d", "f"]);
    // The live set next to it still works.
    write_file(&live.join("y"), b"y");
    m.commit_ok("job", "live");
}

both_paths!(hard_links);
fn hard_links(m: &mut Mount) {
    let a = m.new_set("job", "a");
    let b = m.new_set("job", "b");
    let other = m.new_set("other", "a");
    write_file(&a.join("f"), b"data");
    assert_errno(
        fs::hard_link(a.join("f"), b.join("f")),
        libc::EPERM,
        "link across sets of a job",
    );
    assert_errno(
        fs::hard_link(a.join("f"), other.join("f")),
        libc::EPERM,
        "link across jobs",
    );
    assert_errno(
        fs::hard_link(a.join("f"), m.p("job/f")),
        libc::EPERM,
        "link into a job dir",
    );
    assert!(
        !m.c("job/b/f").exists() && !m.c("other/a/f").exists(),
        "nothing in the cache"
    );
    // Within one set a hard link is an ordinary link.
    fs::hard_link(a.join("f"), a.join("g")).expect("link within a set");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(a.join("g")).unwrap().nlink(), 2);
    assert_eq!(read_file(&a.join("g")), b"data");
}

both_paths!(rmdir_of_an_empty_live_set_removes_it);
fn rmdir_of_an_empty_live_set_removes_it(m: &mut Mount) {
    let set = m.new_set("job", "s");
    write_file(&set.join("f"), b"x");
    assert_errno(
        fs::remove_dir(&set),
        libc::ENOTEMPTY,
        "rmdir of a non-empty set",
    );
    fs::remove_file(set.join("f")).unwrap();
    fs::remove_dir(&set).expect("rmdir of an empty live set");
    assert!(!m.c("job/s").exists(), "set dir left in the cache");
    assert!(
        !m.c(".ckptfs/sets/job/s").exists(),
        "set metadata left in the cache"
    );
    assert_eq!(m.ls_state("job", "s"), None);
    // The job directory the user made is still there: the next set can be
    // made in it.
    assert!(
        m.c("job").is_dir(),
        "rmdir of the job's only set removed the job directory too"
    );
    fs::create_dir(m.p("job/s2")).expect("mkdir of the next set after rmdir of the previous one");
    fs::remove_dir(m.p("job/s2")).expect("rmdir s2");
    fs::remove_dir(m.p("job")).expect("rmdir of an empty job");
    assert!(!m.c("job").exists());
    assert_eq!(names(&m.p("")), Vec::<String>::new());
}

fn idle_commit(m: &mut Mount) {
    // Committed by the rule once idle.
    let s1 = m.new_set("idle", "s1");
    write_file(&s1.join("f"), &pattern(1 << 20, 1));
    // Not while a file is open.
    let s2 = m.new_set("idle", "s2");
    let mut held = File::create(s2.join("held")).unwrap();
    held.write_all(b"partial").unwrap();
    // A job without a rule is left alone.
    let s3 = m.new_set("norule", "s");
    write_file(&s3.join("f"), b"x");
    m.wait_state(&s1, "complete", Duration::from_secs(30));
    m.verify_ok("idle", "s1");
    // Give the rule several more chances at s2 and s3.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        get_state(&s2).unwrap(),
        "writing",
        "idle rule committed a set with a file open"
    );
    assert_eq!(
        get_state(&s3).unwrap(),
        "sealed",
        "a job without a rule was committed"
    );
    held.write_all(b" and the rest").unwrap();
    drop(held);
    m.wait_state(&s2, "complete", Duration::from_secs(30));
    m.verify_ok("idle", "s2");
    assert_eq!(
        m.manifest_files("idle", "s2"),
        vec![("held".to_owned(), 20, "0600".to_owned())]
    );
    assert_eq!(get_state(&s3).unwrap(), "sealed");
}
both_paths!(idle_commit, |o| o.idle_commit("idle=1s"));

// Files that stop being reachable by their name while open for writing:
// the set must still become committable once they are closed.

both_paths!(unlink_of_an_open_file_then_commit);
fn unlink_of_an_open_file_then_commit(m: &mut Mount) {
    let set = m.new_set("job", "s");
    write_file(&set.join("keep"), b"keep");
    let mut fh = File::create(set.join("scratch")).unwrap();
    fh.write_all(b"scratch data").unwrap();
    fs::remove_file(set.join("scratch")).expect("unlink while open");
    fh.write_all(b" more").unwrap();
    drop(fh);
    // No wait for "sealed": commit waits for seals itself.
    m.settle("job", "s");
    let out = m.commit("job", "s");
    assert!(
        out.status.success(),
        "commit after an open file was unlinked and closed: {}",
        stderr(&out)
    );
    m.verify_ok("job", "s");
    assert_eq!(
        m.manifest_files("job", "s"),
        vec![("keep".to_owned(), 4, "0600".to_owned())]
    );
}

both_paths!(rename_over_an_open_file_then_commit);
fn rename_over_an_open_file_then_commit(m: &mut Mount) {
    let set = m.new_set("job", "s");
    // The old checkpoint is still open for writing when the new one is
    // renamed over it.
    let mut old = File::create(set.join("ckpt")).unwrap();
    old.write_all(b"old").unwrap();
    write_file(&set.join("ckpt.new"), b"new contents");
    fs::rename(set.join("ckpt.new"), set.join("ckpt")).expect("rename over an open file");
    drop(old);
    // No wait for "sealed": commit waits for seals itself.
    m.settle("job", "s");
    let out = m.commit("job", "s");
    assert!(
        out.status.success(),
        "commit after rename over an open file: {}",
        stderr(&out)
    );
    m.verify_ok("job", "s");
    assert_eq!(
        m.manifest_files("job", "s"),
        vec![("ckpt".to_owned(), 12, "0600".to_owned())]
    );
    assert_eq!(read_file(&set.join("ckpt")), b"new contents");
}

both_paths!(rename_of_an_open_file_then_commit);
fn rename_of_an_open_file_then_commit(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let mut fh = File::create(set.join("ckpt.tmp")).unwrap();
    fh.write_all(b"first").unwrap();
    fs::rename(set.join("ckpt.tmp"), set.join("ckpt")).expect("rename while open");
    fh.write_all(b" second").unwrap();
    // Still open under its new name.
    assert!(
        !m.commit("job", "s").status.success(),
        "commit with the renamed file open"
    );
    drop(fh);
    m.wait_state(&set, "sealed", WAIT);
    m.commit_ok("job", "s");
    m.verify_ok("job", "s");
    assert_eq!(
        m.manifest_files("job", "s"),
        vec![("ckpt".to_owned(), 12, "0600".to_owned())]
    );
}

both_paths!(rename_of_a_dir_holding_an_open_file_then_commit);
fn rename_of_a_dir_holding_an_open_file_then_commit(m: &mut Mount) {
    let set = m.new_set("job", "s");
    fs::create_dir(set.join("tmp")).unwrap();
    let mut fh = File::create(set.join("tmp/rank-0")).unwrap();
    fh.write_all(b"rank zero").unwrap();
    fs::rename(set.join("tmp"), set.join("final")).expect("rename dir while a file in it is open");
    fh.write_all(b"!").unwrap();
    drop(fh);
    // No wait for "sealed": commit waits for seals itself.
    m.settle("job", "s");
    let out = m.commit("job", "s");
    assert!(
        out.status.success(),
        "commit after renaming the dir of an open file: {}",
        stderr(&out)
    );
    m.verify_ok("job", "s");
    assert_eq!(
        m.manifest_files("job", "s"),
        vec![("final/rank-0".to_owned(), 10, "0600".to_owned())]
    );
}

// ---------------------------------------------------------------------------
// Names.

both_paths!(invalid_job_and_set_names_are_refused);
fn invalid_job_and_set_names_are_refused(m: &mut Mount) {
    let long129 = "x".repeat(129);
    let long128 = "y".repeat(128);
    let bad: Vec<(String, i32)> = vec![
        (".foo".into(), libc::EINVAL),
        ("..foo".into(), libc::EINVAL),
        (".ckptfs2".into(), libc::EINVAL),
        ("a\nb".into(), libc::EINVAL),
        ("tab\there".into(), libc::EINVAL),
        ("esc\u{1b}".into(), libc::EINVAL),
        (long129.clone(), libc::ENAMETOOLONG),
        ("z".repeat(255), libc::ENAMETOOLONG),
    ];
    for (name, want) in &bad {
        assert_errno(
            fs::create_dir(m.p(name)),
            *want,
            &format!("mkdir MOUNT/{name:?}"),
        );
    }
    fs::create_dir(m.p("job")).unwrap();
    for (name, want) in &bad {
        assert_errno(
            fs::create_dir(m.p(&format!("job/{name}"))),
            *want,
            &format!("mkdir MOUNT/job/{name:?}"),
        );
    }
    // The longest allowed names work.
    m.new_set(&long128, &long128);
    write_file(&m.p(&format!("{long128}/{long128}/f")), b"x");
    m.commit_ok(&long128, &long128);
    // Nothing of the refused names reached the cache.
    let mut want = vec![".ckptfs".to_owned(), "job".to_owned(), long128.clone()];
    want.sort();
    assert_eq!(names(&m.cache), want, "cache top level");
    assert_eq!(names(&m.c("job")), Vec::<String>::new(), "cache job dir");
    let meta = names(&m.c(".ckptfs/sets"));
    assert!(
        meta.iter().all(|n| n == "job" || *n == long128),
        "store metadata for refused names: {meta:?}"
    );
    if m.c(".ckptfs/sets/job").exists() {
        assert_eq!(names(&m.c(".ckptfs/sets/job")), Vec::<String>::new());
    }
}

both_paths!(files_above_the_sets_are_refused);
fn files_above_the_sets_are_refused(m: &mut Mount) {
    assert_errno(File::create(m.p("file")), libc::EPERM, "create MOUNT/file");
    fs::create_dir(m.p("job")).unwrap();
    assert_errno(
        File::create(m.p("job/file")),
        libc::EPERM,
        "create MOUNT/job/file",
    );
    let out = run("sh", &[&"-c", &"echo x > \"$1\"", &"sh", &m.p("job/file2")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    assert!(
        !m.c("file").exists() && !m.c("job/file").exists(),
        "file reached the cache"
    );
    assert_eq!(names(&m.p("")), vec!["job"]);
    assert_eq!(names(&m.p("job")), Vec::<String>::new());
}

both_paths!(renames_across_sets_and_of_sets);
fn renames_across_sets_and_of_sets(m: &mut Mount) {
    let a = m.new_set("job", "a");
    let b = m.new_set("job", "b");
    let o = m.new_set("other", "a");
    write_file(&a.join("f"), b"f");
    fs::create_dir(a.join("d")).unwrap();
    assert_errno(
        fs::rename(a.join("f"), b.join("f")),
        libc::EXDEV,
        "rename across sets",
    );
    assert_errno(
        fs::rename(a.join("f"), o.join("f")),
        libc::EXDEV,
        "rename across jobs",
    );
    assert_errno(
        fs::rename(a.join("d"), b.join("d")),
        libc::EXDEV,
        "rename a dir across sets",
    );
    assert_errno(
        fs::rename(&a, m.p("job/a2")),
        libc::EPERM,
        "rename of a set dir",
    );
    assert_errno(
        fs::rename(&a, m.p("other/a2")),
        libc::EPERM,
        "rename of a set to another job",
    );
    assert_errno(
        fs::rename(m.p("job"), m.p("job2")),
        libc::EPERM,
        "rename of a job dir",
    );
    assert_errno(
        fs::rename(a.join("f"), m.p("job/f")),
        libc::EPERM,
        "rename out of a set into a job dir",
    );
    assert_errno(
        fs::rename(a.join("d"), m.p("job/d")),
        libc::EPERM,
        "rename a dir out of a set",
    );
    // `mv` falls back to copy+unlink on EXDEV: that must also end up with
    // the file in the other set, and must not be able to do it for sets.
    let out = run("mv", &[&a.join("f"), &b.join("f")]);
    assert!(out.status.success(), "mv across sets: {}", stderr(&out));
    assert_eq!(read_file(&b.join("f")), b"f");
    assert!(!a.join("f").exists());
    assert_eq!(names(&m.p("job")), vec!["a", "b"]);
    assert_eq!(names(&m.c("job")), vec!["a", "b"]);
}

// ---------------------------------------------------------------------------
// Unmount, signals, background start.

both_paths!(umount_refused_while_open_then_forced);
fn umount_refused_while_open_then_forced(m: &mut Mount) {
    let set = m.new_set("job", "s");
    let mut fh = File::create(set.join("busy.bin")).unwrap();
    fh.write_all(b"busy").unwrap();
    let out = m.cli(&[&"umount", &m.mnt]);
    assert!(
        !out.status.success(),
        "umount with a file open for writing succeeded"
    );
    assert!(
        stderr(&out).contains("job/s/busy.bin"),
        "refusal does not name the file: {}",
        stderr(&out)
    );
    assert!(is_mounted(&m.mnt), "refused umount unmounted anyway");
    assert!(m.daemon_alive());
    fh.write_all(b" still writing")
        .expect("write after the refused umount");
    assert_eq!(m.status()["open_files"][0], "job/s/busy.bin");
    let out = m.cli(&[&"umount", &m.mnt, &"--force"]);
    assert!(out.status.success(), "umount --force: {}", stderr(&out));
    assert!(
        !is_mounted(&m.mnt),
        "still mounted after umount --force returned"
    );
    drop(fh);
    let st = m
        .wait_daemon(WAIT)
        .unwrap_or_else(|| panic!("daemon still running {WAIT:?} after umount --force"));
    if let Some(st) = st {
        assert!(st.success(), "daemon exit after umount --force: {st}");
    }
    // The set that was being written is left abandoned, never complete.
    assert_eq!(m.ls_state("job", "s").as_deref(), Some("abandoned"));
}

both_paths!(umount_when_idle);
fn umount_when_idle(m: &mut Mount) {
    let set = m.new_set("job", "s");
    write_file(&set.join("f"), b"f");
    m.commit_ok("job", "s");
    let out = m.cli(&[&"umount", &m.mnt]);
    assert!(out.status.success(), "umount: {}", stderr(&out));
    assert!(!is_mounted(&m.mnt));
    let st = m.wait_daemon(WAIT).expect("daemon exits after umount");
    assert!(st.is_none_or(|s| s.success()), "daemon exit: {st:?}");
    m.verify_ok("job", "s");
    // Unmounting what is not mounted is an error.
    let out = m.cli(&[&"umount", &m.mnt]);
    assert!(
        !out.status.success(),
        "umount of a plain directory succeeded"
    );
}

both_paths!(sigterm_unmounts_cleanly);
fn sigterm_unmounts_cleanly(m: &mut Mount) {
    let set = m.new_set("job", "s");
    write_file(&set.join("f"), b"f");
    m.commit_ok("job", "s");
    m.signal(libc::SIGTERM);
    let st = m
        .wait_daemon(WAIT)
        .unwrap_or_else(|| panic!("daemon still running {WAIT:?} after SIGTERM"));
    if let Some(st) = st {
        assert!(st.success(), "daemon exit status after SIGTERM: {st}");
    }
    assert!(
        !is_mounted(&m.mnt),
        "still mounted after the daemon exited on SIGTERM"
    );
    // A plain directory again.
    assert!(m.mnt.is_dir());
    assert_eq!(names(&m.mnt), Vec::<String>::new());
    m.verify_ok("job", "s");
}

both_paths!(background_mount_is_live_on_return, |o| o.background());
fn background_mount_is_live_on_return(m: &mut Mount) {
    // Mount::start checked mountinfo right after `ckptfs mount` returned.
    assert!(is_mounted(&m.mnt));
    let pid = m.pid();
    assert_ne!(pid, std::process::id());
    let set = m.new_set("job", "s");
    write_file(&set.join("f"), b"background");
    m.commit_ok("job", "s");
    let out = m.cli(&[&"umount", &m.mnt]);
    assert!(out.status.success(), "umount: {}", stderr(&out));
    assert!(!is_mounted(&m.mnt));
    m.wait_daemon(WAIT)
        .unwrap_or_else(|| panic!("background daemon {pid} still running after umount"));
    m.verify_ok("job", "s");
    // Its log is next to the cache.
    assert!(m.c(".ckptfs/daemon.log").exists());
}

#[test]
fn mount_on_a_missing_directory_fails_clearly() {
    let dir = tempfile::Builder::new()
        .prefix("ckptfs-mnt-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let config = dir.path().join("empty.toml");
    fs::write(&config, "").unwrap();
    let missing = dir.path().join("no/such/dir");
    for foreground in [false, true] {
        let cache = dir.path().join(format!("cache-{foreground}"));
        let mut c = Command::new(BIN);
        c.env("CKPTFS_CONFIG", &config)
            .arg("--cache")
            .arg(&cache)
            .arg("mount")
            .arg(&missing)
            .stdin(Stdio::null());
        if foreground {
            c.arg("--foreground");
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let st = wait_child(&mut child, WAIT);
        let Some(st) = st else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ckptfs mount (foreground {foreground}) on a missing dir did not exit");
        };
        let out = child.wait_with_output().unwrap();
        let msg = stderr(&out);
        assert_eq!(
            st.code(),
            Some(1),
            "exit status (foreground {foreground}); stderr: {msg}"
        );
        assert!(
            msg.contains(&*missing.to_string_lossy()),
            "message does not name the mount point (foreground {foreground}): {msg}"
        );
        assert!(!is_mounted(&missing));
    }
}

#[test]
fn mount_twice_on_the_same_mountpoint_is_refused() {
    let mut m = Mount::new(DataPath::Passthrough);
    let set = m.new_set("job", "s");
    write_file(&set.join("f"), b"f");
    let mut c = m.command();
    c.arg("mount").arg(&m.mnt).arg("--foreground");
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if wait_child(&mut child, WAIT).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("a second `ckptfs mount --foreground` on a mounted mount point kept running");
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "second mount succeeded");
    assert!(stderr(&out).contains("already"), "{}", stderr(&out));
    // The first mount is untouched.
    assert_eq!(read_file(&set.join("f")), b"f");
    assert!(m.daemon_alive());
}

both_paths!(commit_right_after_close);
/// close(2) then commit at once, from the same thread (what an application
/// calling setxattr after writing its last file does): the commit must see
/// the file closed.
fn commit_right_after_close(m: &mut Mount) {
    let mut refused = Vec::new();
    for i in 0..100 {
        let name = format!("s{i:02}");
        let set = m.new_set("job", &name);
        // Several ranks' files, closed together just before the commit.
        let handles: Vec<File> = (0..4)
            .map(|r| {
                let mut fh = File::create(set.join(format!("rank-{r}"))).unwrap();
                fh.write_all(&pattern(16 * 1024, i * 4 + r)).unwrap();
                fh
            })
            .collect();
        drop(handles);
        if let Err(e) = setxattr(&set, "user.ckptfs.commit", b"1") {
            refused.push(format!("{name}: {e}"));
            // Let the release arrive, then commit for real.
            std::thread::sleep(Duration::from_millis(200));
            setxattr(&set, "user.ckptfs.commit", b"1").expect("commit after a pause");
        }
    }
    assert!(
        refused.is_empty(),
        "{} of 100 commits issued right after close(2) were refused: {refused:?}",
        refused.len()
    );
}

both_paths!(rename_over_a_just_closed_file_then_commit);
/// Checkpoint rotation with files that are all closed: write `ckpt`, write
/// `ckpt.new`, rename it over `ckpt`, again and again. No file is open
/// when the commit comes, so it must succeed.
fn rename_over_a_just_closed_file_then_commit(m: &mut Mount) {
    let set = m.new_set("job", "s");
    for i in 0..100u64 {
        write_file(&set.join("ckpt"), &pattern(4096, i));
        write_file(&set.join("ckpt.new"), &pattern(4096, i + 1000));
        fs::rename(set.join("ckpt.new"), set.join("ckpt")).unwrap();
    }
    m.settle("job", "s");
    let out = m.commit("job", "s");
    assert!(
        out.status.success(),
        "commit after rotations of closed files: {}",
        stderr(&out)
    );
    m.verify_ok("job", "s");
    assert_bytes_eq(
        &read_file(&set.join("ckpt")),
        &pattern(4096, 1099),
        "last rotation",
    );
}
