//! The mount daemon: mounts `/ckpt`, answers the control socket, commits
//! idle sets, and unmounts cleanly on SIGTERM or `ckptfs umount`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use libckpt::config::Config;
use libckpt::control::{self, Failure, FailureKind, Handler, Request};
use libckpt::io::{IoEngine, IoOptions};
use libckpt::live::{LiveError, LiveSets};
use libckpt::store::Store;
use serde_json::{json, Value};

use crate::daemonize::Readiness;
use crate::fuse::{CkptFs, Counters, Shared};
use crate::mountpoint;

/// What `ckptfs mount` was asked for.
pub struct MountRequest {
    pub mountpoint: PathBuf,
}

struct Daemon {
    shared: Arc<Shared>,
    drain: Option<Arc<libckpt::drain::Drain>>,
    engine: Arc<IoEngine>,
    mountpoint: PathBuf,
    started: SystemTime,
    started_at: Instant,
}

impl Daemon {
    /// Unmount; the session loop then ends and the process exits. A busy
    /// mount (a shell's working directory inside it) is detached: the
    /// kernel keeps it for its users until they leave.
    fn unmount(&self) {
        let mp = &self.mountpoint;
        if let Err(e) = crate::fuse::mount::unmount(mp) {
            tracing::info!(mountpoint = %mp.display(), error = %e, "unmount refused; detaching");
            if let Err(e) = mountpoint::detach(mp) {
                tracing::warn!(mountpoint = %mp.display(), error = %e, "detach failed");
            }
        }
    }

    fn status(&self) -> Value {
        let live = &self.shared.live;
        let store = live.store();
        let mut jobs = Vec::new();
        if let Ok(names) = store.jobs() {
            for job in names {
                let sets = store.sets(&job).unwrap_or_default();
                let sets: Vec<Value> = sets
                    .iter()
                    .map(|s| {
                        let state = live
                            .state(&s.job, &s.set)
                            .map(|st| st.label().to_owned())
                            .unwrap_or_else(|_| s.state.label().to_owned());
                        json!({"set": s.set, "state": state, "bytes": s.bytes, "files": s.files,
                               "created": humantime::format_rfc3339_seconds(s.created).to_string()})
                    })
                    .collect();
                jobs.push(json!({"job": job, "sets": sets}));
            }
        }
        let space = libckpt::statfs::space(store.root()).ok();
        let c: &Counters = &self.shared.counters;
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "started": humantime::format_rfc3339_seconds(self.started).to_string(),
            "uptime_seconds": self.started_at.elapsed().as_secs(),
            "mountpoint": self.mountpoint,
            "cache": store.root(),
            "cache_fs_total_bytes": space.map(|s| s.total),
            "cache_fs_free_bytes": space.map(|s| s.free),
            "cache_fs_fill_percent": space.map(|s| s.fill_percent()),
            "data_path": self.shared.data_path(),
            "io": {"path": self.engine.path(), "fallback_reason": self.engine.fallback_reason()},
            "open_files": live.open_files(),
            "live_sets": live.summary(),
            "jobs": jobs,
            "drain": self.drain.as_ref().map(|d| d.status()).unwrap_or_default(),
            "counters": {
                "passthrough_opens": c.passthrough_opens.load(Ordering::Relaxed),
                "fallback_opens": c.fallback_opens.load(Ordering::Relaxed),
                "fallback_bytes_written": c.fallback_bytes_written.load(Ordering::Relaxed),
                "fallback_bytes_read": c.fallback_bytes_read.load(Ordering::Relaxed),
            },
        })
    }
}

fn failure(e: &LiveError) -> Failure {
    let kind = match e {
        LiveError::FilesOpen { .. } => FailureKind::Busy,
        LiveError::NoSuchSet { .. } => FailureKind::NotFound,
        LiveError::ReadOnly { .. } => FailureKind::Refused,
        LiveError::Store(s) if s.is_not_found() => FailureKind::NotFound,
        LiveError::Store(libckpt::store::StoreError::AlreadyComplete { .. }) => {
            FailureKind::Refused
        }
        LiveError::Store(_) => FailureKind::Io,
    };
    Failure {
        kind,
        message: e.to_string(),
    }
}

impl Handler for Daemon {
    fn handle(&self, req: Request) -> Result<Value, Failure> {
        match req {
            Request::Status => Ok(self.status()),
            Request::Commit { job, set } => {
                let m = self
                    .shared
                    .live
                    .commit(&job, &set)
                    .map_err(|e| failure(&e))?;
                tracing::info!(job = %job, set = %set, files = m.files.len(), bytes = m.total_bytes, "committed");
                Ok(json!({"job": m.job, "set": m.set, "files": m.files.len(),
                          "bytes": m.total_bytes}))
            }
            Request::Committed { job, set } => {
                // The C library wrote and committed the set in the cache
                // itself (mounted mode); the drain takes it from here.
                let store = self.shared.live.store();
                let complete = store
                    .info(&job, &set)
                    .ok()
                    .flatten()
                    .is_some_and(|i| i.is_complete());
                if !complete {
                    return Err(Failure {
                        kind: FailureKind::NotFound,
                        message: format!(
                            "set {job}/{set} is not a complete set of the cache {}",
                            store.root().display()
                        ),
                    });
                }
                if let Some(d) = &self.drain {
                    d.notify();
                }
                tracing::info!(job = %job, set = %set, "committed by libckpt; drain told");
                Ok(json!({"job": job, "set": set, "draining": self.drain.is_some()}))
            }
            Request::Unmount { force } => {
                let open = self.shared.live.open_files();
                if !open.is_empty() && !force {
                    return Err(Failure {
                        kind: FailureKind::Busy,
                        message: format!(
                            "{} file(s) open for writing: {} (their sets would be left \
                             incomplete; use --force to unmount anyway)",
                            open.len(),
                            open.join(", ")
                        ),
                    });
                }
                // Answer first: the unmount ends this process.
                let mp = self.mountpoint.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    if let Err(e) = crate::fuse::mount::unmount(&mp) {
                        tracing::info!(error = %e, "unmount refused; detaching");
                        let _ = mountpoint::detach(&mp);
                    }
                });
                Ok(json!({"unmounting": true, "open_files": open}))
            }
        }
    }
}

/// Mount and serve until unmounted. `ready` is told once the mount is live
/// (or why it could not be).
pub fn run(config: &Config, req: MountRequest, ready: Option<Readiness>) -> Result<()> {
    let started = prepare(config, &req).and_then(|daemon| {
        // The control socket first: a second daemon for the same cache is
        // refused here, before it touches the mount table.
        let socket = control::socket_path(daemon.shared.live.store().root());
        let server = control::Server::start(&socket, daemon.clone())?;
        match mount(config, &daemon) {
            Ok(session) => Ok((daemon, server, session)),
            Err(e) => {
                server.shutdown();
                Err(e)
            }
        }
    });
    let (daemon, server, session) = match started {
        Ok(x) => x,
        Err(e) => {
            if let Some(r) = ready {
                r.failed(&format!("{e:#}"));
            }
            return Err(e);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let drain_workers = daemon.drain.as_ref().map(|d| d.start()).unwrap_or_default();
    spawn_signal_thread(daemon.clone())?;
    spawn_idle_thread(daemon.clone(), stop.clone(), config);
    tracing::info!(
        mountpoint = %daemon.mountpoint.display(),
        cache = %daemon.shared.live.store().root().display(),
        data_path = %daemon.shared.data_path().mode,
        "mounted"
    );
    if let Some(r) = ready {
        r.ready();
    }
    let result = match session.run() {
        // The kernel tore the connection down rather than unmounting
        // cleanly: seen after a forced unmount detached the mount with a
        // file still open, once that file was closed. The mount is gone
        // either way; that is the end of serving, not a failure.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            tracing::info!(error = %e, "the kernel ended the FUSE connection");
            Ok(())
        }
        r => r,
    };
    stop.store(true, Ordering::Relaxed);
    if let Some(d) = &daemon.drain {
        // A push in progress is journaled: the next start resumes it.
        d.shutdown();
    }
    daemon.shared.remote.stop();
    drop(drain_workers);
    server.shutdown();
    let open = daemon.shared.live.open_files();
    if !open.is_empty() {
        tracing::warn!(files = %open.join(", "), "unmounted with files open: their sets are left incomplete");
    }
    tracing::info!(mountpoint = %daemon.mountpoint.display(), "unmounted");
    result.context("serving the FUSE session")
}

/// Check the mount point, open the store and build the daemon's state.
fn prepare(config: &Config, req: &MountRequest) -> Result<Arc<Daemon>> {
    let mp = &req.mountpoint;
    if mountpoint::is_stale(mp) {
        tracing::warn!(mountpoint = %mp.display(), "recovering a stale mount left by a daemon that died");
        mountpoint::detach(mp)
            .with_context(|| format!("detaching the stale mount at {}", mp.display()))?;
    }
    if !mp.is_dir() {
        bail!("mount point {} is not a directory", mp.display());
    }
    let mp = mp
        .canonicalize()
        .with_context(|| format!("resolving {}", mp.display()))?;
    if let Some(m) = mountpoint::find_mount(&mp)? {
        if m.fstype == mountpoint::FSTYPE {
            bail!(
                "{} is already a ckptfs mount (of {}); `ckptfs umount {}` first",
                mp.display(),
                m.source,
                mp.display()
            );
        }
    }
    let engine = Arc::new(IoEngine::new(&config.io_options()).context("starting the I/O engine")?);
    let seal_engine = Arc::new(
        IoEngine::new(&IoOptions {
            direct: false,
            ..config.io_options()
        })
        .context("starting the I/O engine for seals")?,
    );
    let store = Store::open(&config.cache, engine.clone(), config.store_options())
        .with_context(|| format!("opening the cache {}", config.cache.display()))?;
    if mp.starts_with(store.root()) || store.root().starts_with(&mp) {
        bail!(
            "the mount point {} and the cache {} must not contain each other",
            mp.display(),
            store.root().display()
        );
    }
    let live = LiveSets::new(store.clone(), seal_engine, config.idle_rules())?;
    let tiers = libckpt::drain::tiers_from_config(config).context("setting up the lower tiers")?;
    let remote = crate::fuse::remote::Remote::new(tiers.iter().map(|(t, _)| t.clone()).collect());
    let drain = (!tiers.is_empty()).then(|| {
        libckpt::drain::Drain::new(
            store.clone(),
            tiers,
            libckpt::drain::DrainOptions::from_config(config),
        )
    });
    // What the tiers hold, for listings on a fresh node: refreshed in the
    // background, and soon after each set drained.
    remote.start(Duration::from_secs(30));
    if let Some(d) = &drain {
        let r = remote.clone();
        d.subscribe(Box::new(move |e| {
            if let libckpt::drain::Event::Done { .. } = e {
                r.kick();
            }
        }));
        if config.drain.early {
            d.set_early(Arc::new(live.clone()));
        }
        let d = d.clone();
        live.on_commit(Box::new(move |_, _| d.notify()));
    }
    let shared = Arc::new(Shared {
        live,
        remote,
        root: store.root().to_owned(),
        want_passthrough: config.mount.passthrough,
        passthrough: AtomicBool::new(false),
        direct_io_mmap: AtomicBool::new(false),
        passthrough_reason: Mutex::new(None),
        counters: Counters::default(),
    });
    Ok(Arc::new(Daemon {
        shared,
        drain,
        engine,
        mountpoint: mp,
        started: SystemTime::now(),
        started_at: Instant::now(),
    }))
}

/// Mount and start the FUSE session (the kernel's INIT is answered here,
/// so passthrough is known when this returns).
fn mount(config: &Config, daemon: &Daemon) -> Result<fuser::Session<CkptFs>> {
    let mp = &daemon.mountpoint;
    let fs = CkptFs::new(daemon.shared.clone());
    let mut fcfg = fuser::Config::default();
    // Every user writes their own checkpoints here (allow_other); the
    // kernel checks permissions (default_permissions, in the mount data).
    fcfg.acl = fuser::SessionACL::All;
    fcfg.n_threads = Some(config.mount.threads);
    fcfg.clone_fd = true;
    let fd = crate::fuse::mount::mount(mp, daemon.shared.live.store().root())
        .with_context(|| format!("mounting ckptfs at {}", mp.display()))?;
    fuser::Session::from_fd(fs, fd, fuser::SessionACL::All, fcfg).or_else(|e| {
        let _ = mountpoint::detach(mp);
        Err(e).with_context(|| format!("starting the FUSE session at {}", mp.display()))
    })
}

fn spawn_signal_thread(daemon: Arc<Daemon>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("ckptfs-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "unmounting on signal");
                daemon.unmount();
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn spawn_idle_thread(daemon: Arc<Daemon>, stop: Arc<AtomicBool>, config: &Config) {
    if config.mount.idle_commit.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("ckptfs-idle".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                daemon.shared.live.commit_idle();
            }
        });
}

/// The control socket of the ckptfs mount containing `path`, and the path
/// relative to its mount point.
pub fn control_for(path: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    for dir in abs.ancestors() {
        if let Some(m) = mountpoint::find_mount(dir)? {
            if m.fstype != mountpoint::FSTYPE {
                return Ok(None);
            }
            let rel = abs.strip_prefix(dir).unwrap_or(Path::new("")).to_owned();
            return Ok(Some((control::socket_path(Path::new(&m.source)), rel)));
        }
    }
    Ok(None)
}
