//! Faults on a real ckptfs mount: the daemon killed with SIGKILL under
//! writers, and a cache that fills up.
//!
//! Needs root and /dev/fuse (and tmpfs for the cache-full test).

#[macro_use]
mod common;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::*;

fn write_file(p: &Path, bytes: &[u8]) {
    fs::write(p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// A writer process that keeps one descriptor open and writes 1 MiB at a
/// time, at most `max_mib` MiB, paced (≤ ~50 MiB/s). Capped because on the
/// passthrough path writes on a descriptor opened before the kill never
/// reach the daemon and go on after it died (they fail only at close: see
/// kill9_fails_writes_on_open_handles); an uncapped `dd count=100000` would
/// fill the disk under the cache.
fn paced_dd_writer(target: &Path, max_mib: u32, stderr_path: &Path) -> Proc {
    let script = "i=0; while [ \"$i\" -lt \"$2\" ] && head -c 1048576 /dev/zero; do \
                  i=$((i+1)); sleep 0.02; done | dd of=\"$1\" bs=1M iflag=fullblock status=none";
    Proc::sh(script, &[&target, &max_mib.to_string()], stderr_path)
}

/// Wait until stat(2) of `p` under a dead daemon's mount fails with
/// ENOTCONN (at once for a new name; for a cached one once the kernel's
/// attribute cache expires).
fn wait_enotconn(p: &Path) {
    wait_until(
        WAIT,
        &format!("stat of {} to fail with ENOTCONN", p.display()),
        || fs::metadata(p).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN),
    );
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Wait until every path has at least `min` bytes (the writers are busy).
fn wait_all_growing(paths: &[std::path::PathBuf], min: u64) {
    wait_until(WAIT, "all writers to have written something", || {
        paths.iter().all(|p| file_len(p) >= min)
    });
}

both_paths!(kill9_under_writers_then_remount);
/// `kill -9` of the daemon while three processes write: each writer ends
/// with an error instead of hanging, a set committed before the kill still
/// verifies, `ckptfs mount` on the same mount point recovers the stale
/// mount, and the set being written is reported abandoned, never complete.
fn kill9_under_writers_then_remount(m: &mut Mount) {
    // A complete set from before the kill (its own job, so that nothing done
    // to the other job can touch it).
    let done = m.new_set("done", "s1");
    let done_bytes = pattern(3 << 20, 42);
    write_file(&done.join("a.bin"), &done_bytes);
    m.commit_ok("done", "s1");
    m.verify_ok("done", "s1");

    let set = m.new_set("j", "s");
    let mut writers = Vec::new();
    let mut cache_files = Vec::new();
    for k in 0..3 {
        let target = set.join(format!("f{k}"));
        let err = m.dir().join(format!("writer{k}.err"));
        writers.push(paced_dd_writer(&target, 400, &err));
        cache_files.push(m.c(&format!("j/s/f{k}")));
    }
    wait_all_growing(&cache_files, 2 << 20);
    assert_eq!(get_state(&set).unwrap(), "writing");
    let pid = m.pid();
    m.kill9();

    // Every writer stops with an error: none hangs, none succeeds.
    for (k, w) in writers.iter_mut().enumerate() {
        let st = w.wait_within(Duration::from_secs(90)).unwrap_or_else(|| {
            panic!(
                "writer {k} still running 90 s after the daemon (pid {pid}) was killed; \
                 it wrote {} bytes",
                file_len(&cache_files[k])
            )
        });
        let msg = w.stderr();
        assert!(
            !st.success(),
            "writer {k} succeeded after the daemon was killed: {msg}"
        );
        // ENOTCONN; a write in flight at the instant of the kill is
        // aborted with ECONNABORTED instead.
        assert!(
            msg.contains("Transport endpoint is not connected")
                || msg.contains("Software caused connection abort"),
            "writer {k} ({st}) did not report ENOTCONN/ECONNABORTED: {msg}"
        );
    }
    // The mount is stale: ENOTCONN, not a hang (a new name at once; a
    // cached one once the kernel's attribute cache expires).
    assert_errno(
        fs::metadata(m.p("never-seen")),
        libc::ENOTCONN,
        "lookup through the dead mount",
    );
    wait_enotconn(&m.p("done"));
    // The complete set is intact.
    m.verify_ok("done", "s1");

    // Mount again on the same mount point: no manual umount needed. (Once
    // the kernel's cached attributes of the mount root have expired: the
    // immediate remount is remount_right_after_kill9.)
    wait_enotconn(&m.mnt);
    m.start_daemon();
    assert_bytes_eq(
        &fs::read(done.join("a.bin")).expect("read the complete set after the remount"),
        &done_bytes,
        "complete set after the remount",
    );
    assert_eq!(get_state(&done).unwrap(), "complete");
    // The set cut short is abandoned: not complete, not offered.
    assert_eq!(
        m.ls_state("j", "s").as_deref(),
        Some("abandoned"),
        "ls j: {}",
        m.ls("j")
    );
    assert_eq!(get_state(&set).unwrap(), "abandoned");
    let out = m.cli(&[&"latest", &"j"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "latest j offered something: {out:?}"
    );
    // It cannot be committed through the mount or written into.
    assert!(
        !m.commit("j", "s").status.success(),
        "commit of an abandoned set succeeded"
    );
    assert_errno(
        File::create(set.join("late")),
        libc::EROFS,
        "create in an abandoned set",
    );
    assert_ne!(m.ls_state("j", "s").as_deref(), Some("complete"));
    // The new daemon takes new sets.
    let s2 = m.new_set("j", "s2");
    write_file(&s2.join("f"), b"after the restart");
    m.commit_ok("j", "s2");
    m.verify_ok("j", "s2");
    m.verify_ok("done", "s1");
}

both_paths!(kill9_fails_writes_on_open_handles);
/// After the daemon is killed, nothing hangs and nothing written afterwards
/// can become a checkpoint. On the fallback path a write(2) on a descriptor
/// opened before the kill fails with ENOTCONN. With kernel passthrough the
/// kernel keeps writing such a descriptor's bytes to the backing file by
/// itself (documented in the README): only new opens and metadata calls
/// fail. Either way the set is abandoned, never offered, after a remount.
fn kill9_fails_writes_on_open_handles(m: &mut Mount) {
    let set = m.new_set("j", "s");
    let fh = File::create(set.join("held")).unwrap();
    fh.write_all_at(&pattern(1 << 20, 1), 0).unwrap();
    m.kill9();
    wait_enotconn(&m.p("j"));
    let before = file_len(&m.c("j/s/held"));
    let r = fh.write_all_at(&pattern(1 << 20, 2), 1 << 20);
    let after = file_len(&m.c("j/s/held"));
    if m.opts.data_path == DataPath::Fallback {
        assert!(
            r.is_err(),
            "write(2) on a handle opened before the daemon was killed succeeded \
             (cache file grew from {before} to {after} bytes after the kill)"
        );
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOTCONN));
        assert_eq!(before, after, "the cache file grew after the kill");
    }
    // New opens fail at once rather than hang, on both paths.
    let e = File::create(m.p("j/s/another")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    drop(fh);
    m.start_daemon();
    assert_eq!(m.ls_state("j", "s").as_deref(), Some("abandoned"));
}

/// close(2), with its error: dropping a `File` ignores it.
fn close(f: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` came from `into_raw_fd`, so it is open and nothing else
    // owns or closes it.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

both_paths!(kill9_close_reports_to_writers_only);
/// After the daemon is killed, close(2) of a write handle reports it: what
/// was written can never become part of a checkpoint. A read handle on a
/// complete set closes cleanly, since what it read was whole: its close
/// sends no FLUSH.
fn kill9_close_reports_to_writers_only(m: &mut Mount) {
    let done = m.new_set("j", "done");
    let bytes = pattern(1 << 16, 3);
    write_file(&done.join("f"), &bytes);
    m.commit_ok("j", "done");
    let reader = File::open(done.join("f")).unwrap();
    let mut back = vec![0; bytes.len()];
    reader.read_exact_at(&mut back, 0).unwrap();
    assert_bytes_eq(&back, &bytes, "read before the kill");
    let set = m.new_set("j", "s");
    let writer = File::create(set.join("w")).unwrap();
    writer.write_all_at(b"partial", 0).unwrap();
    m.kill9();
    wait_enotconn(&m.p("j"));
    let e = close(writer).expect_err("close of a write handle after the kill succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    close(reader).expect("close of a read handle after the kill");
    m.start_daemon();
    assert_eq!(m.ls_state("j", "s").as_deref(), Some("abandoned"));
    m.verify_ok("j", "done");
}

both_paths!(cache_full_gives_enospc, |o| o.tmpfs_cache(64));
/// A full cache: the writer gets ENOSPC, the daemon stays up, an earlier
/// complete set still verifies, and once space is freed the set being
/// written can be finished and committed.
fn cache_full_gives_enospc(m: &mut Mount) {
    let s1 = m.new_set("j", "s1");
    let early = pattern(8 << 20, 5);
    write_file(&s1.join("early.bin"), &early);
    m.commit_ok("j", "s1");
    m.verify_ok("j", "s1");

    let s2 = m.new_set("j", "s2");
    write_file(&s2.join("small.bin"), &pattern(1 << 20, 6));
    let err = m.dir().join("dd.err");
    let out = run(
        "sh",
        &[
            &"-c",
            &"dd if=/dev/zero of=\"$1\" bs=1M count=100 status=none 2>\"$2\"",
            &"sh",
            &s2.join("big"),
            &err,
        ],
    );
    let msg = fs::read_to_string(&err).unwrap_or_default();
    assert!(
        !out.status.success(),
        "dd of 100 MiB into a 64 MiB cache succeeded"
    );
    assert!(msg.contains("No space left on device"), "dd error: {msg}");
    // The daemon is up and answers.
    assert!(m.daemon_alive(), "daemon died on a full cache");
    let st = m.status();
    assert!(st["cache_fs_free_bytes"].as_u64().is_some(), "{st}");
    let out = m.cli(&[&"status", &m.mnt]);
    assert!(
        out.status.success(),
        "status on a full cache: {}",
        stderr(&out)
    );
    // Direct writes also get ENOSPC, cleanly.
    let r = File::create(s2.join("more"))
        .and_then(|mut f| f.write_all(&vec![1u8; 32 << 20]).and_then(|_| f.sync_all()));
    assert_errno(r, libc::ENOSPC, "write into a full cache");
    // The earlier complete set is intact.
    m.verify_ok("j", "s1");
    assert_bytes_eq(
        &fs::read(s1.join("early.bin")).unwrap(),
        &early,
        "early set on a full cache",
    );
    // Free the space; the set can be finished and committed.
    fs::remove_file(s2.join("big")).expect("rm big");
    fs::remove_file(s2.join("more")).expect("rm more");
    // The space comes back once nothing holds the files any more: the
    // kernel's RELEASE arrives after close(2) returned and the background
    // seal of a just-closed file still reads it.
    wait_until(WAIT, "the cache to have 16 MiB free after rm", || {
        let st = statvfs(&m.cache);
        st.f_bavail * st.f_frsize >= 16 << 20
    });
    write_file(&s2.join("last.bin"), &pattern(2 << 20, 7));
    m.commit_ok("j", "s2");
    m.verify_ok("j", "s2");
    assert_eq!(
        m.manifest_files("j", "s2"),
        vec![
            ("last.bin".to_owned(), 2 << 20, "0600".to_owned()),
            ("small.bin".to_owned(), 1 << 20, "0600".to_owned()),
        ]
    );
    m.verify_ok("j", "s1");
}

both_paths!(remount_right_after_kill9);
/// `ckptfs mount` at once after the daemon died (as a supervisor restarting
/// it does) recovers the stale mount, even while the kernel still holds
/// cached attributes of the mount point.
fn remount_right_after_kill9(m: &mut Mount) {
    let set = m.new_set("j", "s");
    write_file(&set.join("f"), b"f");
    m.commit_ok("j", "s");
    // The mount root's attributes are in the kernel's cache now.
    fs::metadata(&m.mnt).unwrap();
    m.kill9();
    m.start_daemon();
    assert_eq!(fs::read(set.join("f")).unwrap(), b"f");
    m.verify_ok("j", "s");
}

#[test]
fn umount_right_after_kill9_detaches_the_stale_mount() {
    let mut m = Mount::new(DataPath::Passthrough);
    fs::metadata(&m.mnt).unwrap();
    m.kill9();
    let out = m.cli(&[&"umount", &m.mnt]);
    assert!(
        out.status.success(),
        "ckptfs umount of a mount whose daemon was just killed: {}",
        stderr(&out)
    );
    assert!(!is_mounted(&m.mnt), "still mounted");
}
