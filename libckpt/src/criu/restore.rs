//! `criu restore` of a dump set: staged in from a lower tier when the cache
//! lacks it (with every set its page index reads from), every chunk
//! verified, an incremental set's page images rebuilt, then CRIU.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::discover::{tail, Criu};
use super::dump::{is_dump, work_dir, Passthrough};
use super::pages::{self, PageIndex};
use super::{process, seal, CriuError, DUMP_INFO};
use crate::durable::IoContext;
use crate::manifest::FileEntry;
use crate::path::{JobName, SetName};
use crate::stage;
use crate::store::Store;
use crate::tier::Tier;

/// What to restore, and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub job: JobName,
    /// The newest complete set on the cache or any tier when `None`.
    pub set: Option<SetName>,
    /// Return once the tree is restored (`criu restore --restore-detached`);
    /// else wait for it to end.
    pub detach: bool,
    pub passthrough: Passthrough,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub job: JobName,
    pub set: SetName,
    /// Sets brought in from a tier, with the tier.
    pub staged: Vec<(SetName, String)>,
    /// Sets whose every chunk was checked.
    pub verified: Vec<SetName>,
    /// Bytes of page images rebuilt (incremental sets).
    pub rebuilt_bytes: u64,
    /// The restored tree's root pid (with `detach`).
    pub pid: Option<i32>,
    /// The restored tree's exit status (without `detach`).
    pub exit_status: Option<String>,
    pub criu_seconds: f64,
    pub seconds: f64,
}

/// Check `entries` of `job/set` in the cache against their crc32c, chunks
/// of every file in parallel.
fn verify_entries(
    store: &Store,
    job: &JobName,
    set: &SetName,
    entries: &[FileEntry],
) -> Result<(), CriuError> {
    let dir = store.set_dir(job, set);
    let problems: Vec<String> = entries
        .par_iter()
        .filter_map(|f| {
            let path = f.path.under(&dir);
            match seal::digest(&path, f.chunk_size) {
                Err(e) => Some(e.to_string()),
                Ok(d) if d.size != f.size => Some(format!(
                    "{}: {} bytes where the manifest says {}",
                    f.path, d.size, f.size
                )),
                Ok(d) => f
                    .digest()
                    .first_mismatch(&d)
                    .map(|c| format!("{}: chunk {c} is corrupt (crc32c mismatch)", f.path)),
            }
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(CriuError::Corrupt {
        job: job.clone(),
        set: set.clone(),
        problems: problems.join("; "),
    })
}

/// Make `set` a verified complete set of the cache, staging it in from
/// the first tier with an intact copy when needed.
fn ensure_local(
    store: &Store,
    tiers: &[Arc<dyn Tier>],
    job: &JobName,
    set: &SetName,
    report: &mut RestoreReport,
) -> Result<(), CriuError> {
    if report.verified.contains(set) {
        return Ok(());
    }
    let local = store.info(job, set)?.is_some_and(|i| i.is_complete());
    if !local {
        // The fetch checks every chunk's crc32c on the way in.
        let from = stage::stage_in(store, tiers, job, set, &|_| {})?;
        report.staged.push((set.clone(), from));
    } else {
        verify_entries(store, job, set, &store.manifest(job, set)?.files)?;
    }
    report.verified.push(set.clone());
    Ok(())
}

/// Restore `opts.set` (or the newest dump) of `opts.job`.
///
/// A full set in the cache is restored while its page images are still
/// being verified: CRIU restores the tree stopped (`--leave-stopped`), and
/// it is let go (SIGCONT) only once every chunk has checked out, or killed
/// if one has not. Every other image is verified before CRIU reads it.
pub fn restore(
    store: &Store,
    tiers: &[Arc<dyn Tier>],
    criu: &Criu,
    opts: &RestoreOptions,
) -> Result<RestoreReport, CriuError> {
    let started = Instant::now();
    criu.ensure_checked(store.root())?;
    let job = &opts.job;
    let set = match &opts.set {
        Some(s) => s.clone(),
        None => {
            stage::latest(store, tiers, job)
                .ok_or_else(|| stage::StageError::NoSet {
                    job: job.clone(),
                    searched: "the cache or any tier".into(),
                })?
                .set
        }
    };
    let mut report = RestoreReport {
        job: job.clone(),
        set: set.clone(),
        staged: Vec::new(),
        verified: Vec::new(),
        rebuilt_bytes: 0,
        pid: None,
        exit_status: None,
        criu_seconds: 0.0,
        seconds: 0.0,
    };
    // The set and its ancestors: stage in what the cache lacks (each
    // chunk checked on the way in).
    let staged = stage::stage_in_chain(store, tiers, job, &set, &|_| {})?;
    report.verified = staged.iter().map(|(s, _)| s.clone()).collect();
    report.staged = staged;
    let dir = store.set_dir(job, &set);
    if !is_dump(&dir) {
        return Err(CriuError::NotADump {
            job: job.clone(),
            set,
        });
    }
    let index = PageIndex::load(&dir)?;
    let mut deferred: Vec<FileEntry> = Vec::new();
    if !report.verified.contains(&set) {
        let files = store.manifest(job, &set)?.files;
        let (pages, rest): (Vec<FileEntry>, Vec<FileEntry>) = files
            .into_iter()
            .partition(|f| index.is_none() && pages::is_page_image(f.path.as_str()));
        verify_entries(store, job, &set, &rest)?;
        deferred = pages;
        report.verified.push(set.clone());
    }
    let work = work_dir(store, job, &set)?;
    let result = (|| {
        let images = match &index {
            None => dir.clone(),
            Some(index) => {
                if index.sources.first() != Some(&set) {
                    return Err(CriuError::Chain {
                        job: job.clone(),
                        set: set.clone(),
                        message: "its page index belongs to another set".into(),
                    });
                }
                for needed in index.needs() {
                    ensure_local(store, tiers, job, &needed, &mut report).map_err(|e| {
                        CriuError::Chain {
                            job: job.clone(),
                            set: set.clone(),
                            message: format!("it needs set {needed}, which cannot be had: {e}"),
                        }
                    })?;
                }
                let images = work.join("images");
                fs::create_dir(&images).at("creating", &images)?;
                link_images(&dir, &images)?;
                report.rebuilt_bytes =
                    pages::rebuild(index, &|s: &SetName| store.set_dir(job, s), &images)?;
                images
            }
        };
        let verify = || verify_entries(store, job, &set, &deferred);
        run_criu(
            criu,
            opts,
            &set,
            &images,
            &work,
            &mut report,
            &verify,
            !deferred.is_empty(),
        )
    })();
    let _ = fs::remove_dir_all(&work);
    result?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Every image of `from` but the page data, linked (or copied) into `to`.
fn link_images(from: &Path, to: &Path) -> Result<(), CriuError> {
    for e in fs::read_dir(from).at("listing", from)? {
        let e = e.at("listing", from)?;
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if n == pages::INDEX_FILE || n == DUMP_INFO || n.ends_with(pages::DELTA_SUFFIX) {
            continue;
        }
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst).at("copying", &src)?;
        }
    }
    Ok(())
}

/// `criu restore`; with `overlap`, `verify` runs while CRIU restores the
/// tree stopped, and the tree is let go only if it passes.
#[allow(clippy::too_many_arguments)]
fn run_criu(
    criu: &Criu,
    opts: &RestoreOptions,
    set: &SetName,
    images: &Path,
    work: &Path,
    report: &mut RestoreReport,
    verify: &(dyn Fn() -> Result<(), CriuError> + Sync),
    overlap: bool,
) -> Result<(), CriuError> {
    let log = work.join("restore.log");
    let pidfile: PathBuf = work.join("restored.pid");
    let mut cmd = criu.command();
    cmd.arg("restore")
        .arg("-D")
        .arg(images)
        .arg("-W")
        .arg(work)
        .arg("-o")
        .arg(&log)
        .args(opts.passthrough.args());
    // Always detached, with a pid file: CRIU's own exit status then says
    // whether the restore worked. To wait for the tree, this process makes
    // itself a subreaper first, so the restored root becomes its child
    // when CRIU exits.
    cmd.arg("--restore-detached").arg("--pidfile").arg(&pidfile);
    if overlap {
        cmd.arg("--leave-stopped");
    }
    if !opts.detach {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes no pointers.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    }
    tracing::info!(job = %opts.job, set = %set, detach = opts.detach, "criu restore");
    let t = Instant::now();
    let (status, verified) = std::thread::scope(|scope| {
        let checker = overlap.then(|| scope.spawn(verify));
        let status = cmd.status();
        let verified = checker.map(|h| {
            h.join().unwrap_or(Err(CriuError::Corrupt {
                job: opts.job.clone(),
                set: set.clone(),
                problems: "the verification did not finish".into(),
            }))
        });
        (status, verified)
    });
    report.criu_seconds = t.elapsed().as_secs_f64();
    let fail = |status: String| CriuError::RestoreFailed {
        job: opts.job.clone(),
        set: set.clone(),
        status,
        log_tail: tail(&fs::read_to_string(&log).unwrap_or_default(), 12),
    };
    let status =
        status.map_err(|e| fail(format!("could not start {}: {e}", criu.path.display())))?;
    if !status.success() {
        // A damaged image is the likelier story when both failed.
        if let Some(Err(e)) = verified {
            return Err(e);
        }
        return Err(fail(status.to_string()));
    }
    let pid: Option<i32> = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if overlap {
        let tree = pid.map(process::tree).unwrap_or_default();
        if let Some(Err(e)) = verified {
            // Never let a tree restored from a damaged image run.
            process::signal_all(&tree, libc::SIGKILL);
            return Err(e);
        }
        process::signal_all(&tree, libc::SIGCONT);
    }
    report.pid = pid;
    if let (false, Some(pid)) = (opts.detach, pid) {
        report.exit_status = Some(wait_for(pid));
    }
    Ok(())
}

/// Wait for `pid` (our child, through the subreaper) to end.
fn wait_for(pid: i32) -> String {
    use std::os::unix::process::ExitStatusExt;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`, a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return std::process::ExitStatus::from_raw(status).to_string();
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Not our child after all: watch /proc instead.
            while super::process::alive(pid) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            return "exited (status unknown)".into();
        }
    }
}
