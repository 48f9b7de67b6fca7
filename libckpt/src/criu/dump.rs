//! `criu dump` into a new set of the store.
//!
//! The tree is dumped with `--leave-stopped` (or `--leave-running` when the
//! caller asks to keep it running), so whatever fails after CRIU finished —
//! deduplication, a full disk, the commit — the process is resumed, not
//! lost; only once the set is committed is a stopped tree killed, as a
//! plain `criu dump` would have. A failed dump's set is deleted: nothing
//! partial is ever committed.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::discover::{tail, Criu};
use super::pages::{self, Catalog, DedupStats};
use super::seal::{self, Partial, Streamer};
use super::{process, CriuError, DUMP_INFO};
use crate::chunk::FileDigest;
use crate::durable::{self, IoContext, PathError};
use crate::path::{JobName, RelPath, SetName};
use crate::retention::{chain_name, chain_parent};
use crate::store::Store;

/// CRIU options a user expects to pass through.
#[derive(Debug, Clone, Default)]
pub struct Passthrough {
    /// `--shell-job`: the tree was started from a shell (shares its
    /// session and terminal).
    pub shell_job: bool,
    /// `--tcp-established`: dump (and restore) established TCP connections.
    pub tcp_established: bool,
    /// `--ext-unix-sk`: allow unix sockets connected to outside the tree.
    pub ext_unix_sk: bool,
    /// `--file-locks`: dump (and restore) file locks.
    pub file_locks: bool,
    /// Anything else, passed to criu as is.
    pub extra: Vec<String>,
}

impl Passthrough {
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for (on, flag) in [
            (self.shell_job, "--shell-job"),
            (self.tcp_established, "--tcp-established"),
            (self.ext_unix_sk, "--ext-unix-sk"),
            (self.file_locks, "--file-locks"),
        ] {
            if on {
                a.push(flag.to_owned());
            }
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// What to dump, and how.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub pid: i32,
    pub job: JobName,
    /// Keep the tree running after the dump (else it is killed once the
    /// set is committed).
    pub leave_running: bool,
    /// Store only the pages the job's newest dump lacks.
    pub incremental: bool,
    /// With `incremental`: a full dump every N dumps (1: always full).
    pub full_every: u32,
    pub passthrough: Passthrough,
}

/// What a dump did.
#[derive(Debug, Clone, Serialize)]
pub struct DumpReport {
    pub job: JobName,
    pub set: SetName,
    pub parent: Option<SetName>,
    pub pid: i32,
    pub uid: u32,
    /// Bytes of images CRIU wrote.
    pub image_bytes: u64,
    /// Bytes the committed set holds.
    pub stored_bytes: u64,
    /// Pages dumped, and of those the ones stored (an incremental dump
    /// stores only the pages its parent lacks).
    pub pages: u64,
    pub new_pages: u64,
    pub criu_seconds: f64,
    pub seconds: f64,
    pub left_running: bool,
}

/// `ckptfs-dump.json`: the dump's own description, kept in the set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpInfo {
    pub format: String,
    pub version: u32,
    pub pid: i32,
    pub uid: u32,
    pub criu: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent: Option<SetName>,
    /// 0 for a full dump, K for the K-th incremental one on top of it.
    pub depth: u32,
    #[serde(with = "humantime_serde")]
    pub dumped: SystemTime,
}

/// True when the set directory holds a CRIU dump.
pub fn is_dump(dir: &Path) -> bool {
    dir.join("inventory.img").is_file()
}

/// The chain position of a set, from its name: (full set, K).
fn chain_position(set: &SetName) -> (SetName, u32) {
    let mut k = 0u32;
    let mut cur = set.clone();
    while let Some(p) = chain_parent(&cur) {
        k += 1;
        cur = p;
    }
    (cur, k)
}

/// A name for a new full dump: `dump-YYYYMMDDTHHMMSSZ`, with `-2`, `-3`…
/// when taken.
fn full_name(store: &Store, job: &JobName) -> Result<SetName, CriuError> {
    let stamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    for n in 1..1000 {
        let name = if n == 1 {
            format!("dump-{stamp}")
        } else {
            format!("dump-{stamp}-{n}")
        };
        let set = SetName::new(name).map_err(crate::store::StoreError::from)?;
        if store.info(job, &set)?.is_none() {
            return Ok(set);
        }
    }
    Err(CriuError::Chain {
        job: job.clone(),
        set: SetName::new(format!("dump-{stamp}")).map_err(crate::store::StoreError::from)?,
        message: "no free set name for this second".into(),
    })
}

/// The set a new dump goes to, and its parent when it is incremental.
fn plan(store: &Store, opts: &DumpOptions) -> Result<(SetName, Option<SetName>), CriuError> {
    if opts.incremental && opts.full_every > 1 {
        if let Some(latest) = store.latest(&opts.job)? {
            let dir = store.set_dir(&opts.job, &latest.set);
            if is_dump(&dir) {
                let (base, k) = chain_position(&latest.set);
                let base = if k == 0 { latest.set.clone() } else { base };
                if k + 1 < opts.full_every {
                    if let Some(name) = chain_name(&base, u64::from(k) + 1) {
                        if store.info(&opts.job, &name)?.is_none() {
                            return Ok((name, Some(latest.set)));
                        }
                    }
                }
            }
        }
    }
    Ok((full_name(store, &opts.job)?, None))
}

/// Dump the tree rooted at `opts.pid` into a new set and commit it.
pub fn dump(store: &Store, criu: &Criu, opts: &DumpOptions) -> Result<DumpReport, CriuError> {
    let started = Instant::now();
    let pid = opts.pid;
    let (uid, gid) = {
        process::check_may_dump(pid)?;
        process::owner_ids(pid)?
    };
    criu.ensure_checked(store.root())?;
    let (set, parent) = plan(store, opts)?;
    let job = &opts.job;
    let mut writer = store.create_set(job, &set)?;
    let dir = writer.dir().to_owned();
    let work = work_dir(store, job, &set)?;
    let log = work.join("dump.log");

    let mut cmd = criu.command();
    cmd.arg("dump")
        .arg("-t")
        .arg(pid.to_string())
        .arg("-D")
        .arg(&dir)
        .arg("-W")
        .arg(&work)
        .arg("-o")
        .arg(&log)
        .arg(if opts.leave_running {
            "--leave-running"
        } else {
            "--leave-stopped"
        })
        .args(opts.passthrough.args());
    tracing::info!(pid, job = %job, set = %set, parent = ?parent, "criu dump");
    let chunk_size = store.options().chunk_size;
    // A full dump's page images stay as they are: checksum them and start
    // their writeback while CRIU writes them. Not with --leave-running:
    // CRIU keeps the tree frozen until its last write, and reading the
    // images alongside it lengthened that freeze by 0.15–0.3 s (0.99–1.14 s
    // against 0.80–0.87 s for 2 GiB) while the whole dump took no less.
    let streamer =
        (parent.is_none() && !opts.leave_running).then(|| Streamer::start(&dir, chunk_size));
    let criu_started = Instant::now();
    let out = cmd.output();
    let criu_seconds = criu_started.elapsed().as_secs_f64();
    let partials = streamer.map(Streamer::finish).unwrap_or_default();
    let failed = match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(o.status.to_string()),
        Err(e) => Some(format!("could not start {}: {e}", criu.path.display())),
    };
    if let Some(status) = failed {
        // CRIU resumes the tree itself when its dump fails.
        let log_tail = tail(&fs::read_to_string(&log).unwrap_or_default(), 12);
        drop(writer);
        discard(store, job, &set, &work);
        return Err(CriuError::DumpFailed {
            action: "dump",
            pid,
            status,
            log_tail,
        });
    }
    // The tree is now stopped (or running): from here on, a failure
    // resumes it.
    let tree = process::tree(pid);
    let image_bytes = dir_bytes(&dir);
    let finish = (|| -> Result<(DedupStats, crate::manifest::Manifest), CriuError> {
        let stats = match &parent {
            Some(p) => {
                let catalog = Catalog::of_parent(&set, p, &store.set_dir(job, p))?;
                pages::dedup(&dir, catalog)?
            }
            None => {
                let pages: u64 = pages::page_images(&dir)?
                    .iter()
                    .filter_map(|n| fs::metadata(n.under(&dir)).ok())
                    .map(|m| m.len() / pages::PAGE as u64)
                    .sum();
                DedupStats {
                    pages,
                    new_pages: pages,
                    index_bytes: 0,
                }
            }
        };
        let info = DumpInfo {
            format: "ckptfs-dump".into(),
            version: 1,
            pid,
            uid,
            criu: criu.version.to_string(),
            parent: parent.clone(),
            depth: parent.as_ref().map_or(0, |_| chain_position(&set).1),
            dumped: SystemTime::now(),
        };
        let body = serde_json::to_vec_pretty(&info).unwrap_or_default();
        writer.write_bytes(
            &RelPath::new(DUMP_INFO).map_err(crate::store::StoreError::from)?,
            &body,
        )?;
        make_private(&dir, uid, gid)?;
        for (rel, digest, mtime) in seal_all(&dir, chunk_size, partials)? {
            writer.add_seal(&rel, digest, mtime, true);
        }
        let mut m = writer.commit()?;
        if let Some(p) = &parent {
            m.parent = Some(p.clone());
            durable::write_atomic(&store.manifest_path(job, &set), &m.to_bytes(), 0o644)?;
        }
        Ok((stats, m))
    })();
    let (stats, manifest) = match finish {
        Ok(v) => v,
        Err(e) => {
            if !opts.leave_running {
                process::signal_all(&tree, libc::SIGCONT);
            }
            discard(store, job, &set, &work);
            return Err(e);
        }
    };
    if !opts.leave_running {
        // Committed: end the tree as `criu dump` without
        // --leave-running would have.
        process::signal_all(&tree, libc::SIGKILL);
    }
    let _ = fs::remove_dir_all(&work);
    notify_daemon(store, job, &set);
    Ok(DumpReport {
        job: job.clone(),
        set,
        parent,
        pid,
        uid,
        image_bytes,
        stored_bytes: manifest.total_bytes,
        pages: stats.pages,
        new_pages: stats.new_pages,
        criu_seconds,
        seconds: started.elapsed().as_secs_f64(),
        left_running: opts.leave_running,
    })
}

/// A daemon serving this cache drains the new set now rather than at its
/// next look (best effort: without a daemon, `ckptfs drain` does it).
fn notify_daemon(store: &Store, job: &JobName, set: &SetName) {
    use crate::control::{socket_path, Client, Request};
    if let Ok(mut c) = Client::connect(&socket_path(store.root())) {
        let req = Request::Committed {
            job: job.clone(),
            set: set.clone(),
        };
        if let Err(e) = c.call(&req) {
            tracing::debug!(error = %e, "the daemon was not told of the new set");
        }
    }
}

/// Checksum and sync every file of the dump, in parallel (chunks of a
/// large file too), finishing what the streamer began: the commit then
/// has only the manifest left to write. A side thread first starts every
/// file's writeback, so the disk writes while the checksums read from the
/// page cache; else it would start only at the fsync, after the last
/// checksum (where no streamer ran: `--leave-running`).
fn seal_all(
    dir: &Path,
    chunk_size: u64,
    mut partials: HashMap<PathBuf, Partial>,
) -> Result<Vec<(RelPath, FileDigest, Option<SystemTime>)>, CriuError> {
    let mut files = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_owned();
            let source = e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("filesystem loop"));
            PathError::new("reading", &path, source)
        })?;
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
        let rel = RelPath::from_path(rel).map_err(crate::store::StoreError::from)?;
        let partial = partials.remove(e.path());
        files.push((rel, e.path().to_owned(), partial));
    }
    let paths: Vec<PathBuf> = files.iter().map(|(_, p, _)| p.clone()).collect();
    let flusher = std::thread::Builder::new()
        .name("ckptfs-writeback".into())
        .spawn(move || {
            for p in paths {
                if let Ok(f) = fs::File::open(&p) {
                    durable::start_writeback(&f, 0, 0);
                }
            }
        });
    let sealed = files
        .into_par_iter()
        .map(|(rel, path, partial)| {
            let mtime = fs::metadata(&path).at("reading", &path)?.modified().ok();
            let digest = seal::finish_digest(&path, chunk_size, partial)?;
            durable::sync_file(&path)?;
            Ok((rel, digest, mtime))
        })
        .collect();
    if let Ok(h) = flusher {
        let _ = h.join();
    }
    sealed
}

/// A private directory for CRIU's log and work files, outside the set.
pub(crate) fn work_dir(store: &Store, job: &JobName, set: &SetName) -> Result<PathBuf, CriuError> {
    let dir = store
        .root()
        .join(crate::store::META_DIR)
        .join("criu")
        .join(format!("{job}.{set}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    durable::create_dir_all_durable(&dir, 0o700)?;
    Ok(dir)
}

/// Remove a failed dump's set and work files.
fn discard(store: &Store, job: &JobName, set: &SetName, work: &Path) {
    if let Err(e) = store.delete_set(job, set) {
        tracing::warn!(job = %job, set = %set, error = %e, "could not remove a failed dump's files");
    }
    let _ = fs::remove_dir_all(work);
}

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Every file of the dump mode 0600, every directory 0700, all owned by
/// the dumped process's user: memory dumps hold secrets (CRIU writes its
/// images 0644 as root).
fn make_private(dir: &Path, uid: u32, gid: u32) -> Result<(), CriuError> {
    for e in walkdir::WalkDir::new(dir) {
        let e = e.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_owned();
            let source = e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("filesystem loop"));
            PathError::new("reading", &path, source)
        })?;
        let p = e.path();
        let mode = if e.file_type().is_dir() { 0o700 } else { 0o600 };
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).at("setting the mode of", p)?;
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).at("changing the owner of", p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_positions() {
        let s = |n: &str| SetName::new(n).unwrap();
        assert_eq!(chain_position(&s("dump-1")), (s("dump-1"), 0));
        assert_eq!(chain_position(&s("dump-1+3")), (s("dump-1"), 3));
    }

    #[test]
    fn dumps_become_private_to_the_process_owner() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let d = crate::testutil::scratch("ckpt-private-");
        let sub = d.path().join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(d.path().join("core-1.img"), b"x").unwrap();
        fs::write(sub.join("pages-1.img"), b"y").unwrap();
        fs::set_permissions(
            d.path().join("core-1.img"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        make_private(d.path(), 65534, 65534).unwrap();
        for p in [d.path().join("core-1.img"), sub.join("pages-1.img")] {
            let md = fs::metadata(&p).unwrap();
            assert_eq!(
                (md.mode() & 0o777, md.uid(), md.gid()),
                (0o600, 65534, 65534)
            );
        }
        let md = fs::metadata(&sub).unwrap();
        assert_eq!((md.mode() & 0o777, md.uid()), (0o700, 65534));
    }

    #[test]
    fn passthrough_flags() {
        let p = Passthrough {
            shell_job: true,
            file_locks: true,
            extra: vec!["--link-remap".into()],
            ..Default::default()
        };
        assert_eq!(p.args(), ["--shell-job", "--file-locks", "--link-remap"]);
    }
}
