//! [`DrTier`]: the DR site (`ckptfs serve`) as a [`Tier`].
//!
//! Every operation opens its own authenticated connection (a drain pushes a
//! set every few minutes; a pool would mostly hold dead sockets), retries
//! transient failures with exponential backoff ([`Retry`]) and then reports
//! [`TierError::Unavailable`] so the drain tries again later. An
//! authentication failure or a refused request is [`TierError::Refused`]:
//! retrying would not change it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::auth::Key;
use super::conn::{Conn, Retry, Transport};
use super::error::DrError;
use super::level::{self, Adaptive, Remembered, ZstdLevel};
use super::proto::{Deleted, Empty, ErrorKind, JobRef, Jobs, MsgType, SetRef, Sets};
use super::transport::{Choice, InUse};
use crate::io::IoEngine;
use crate::manifest::{Manifest, ManifestError};
use crate::path::{JobName, SetName};
use crate::rate::RateLimiter;
use crate::tier::{PushReport, Resume, Source, Tier, TierError, TierSet};

const TIER: &str = "dr";

/// A DR server as a tier.
#[derive(Debug, Clone)]
pub struct DrTier {
    addr: String,
    key: Key,
    level: Remembered,
    /// Where the level learned outlives this process (see
    /// [`DrTier::with_level_file`]).
    level_file: Option<PathBuf>,
    retry: Retry,
    connect_timeout: Duration,
    io_timeout: Duration,
    transport: Transport,
    /// What the last connection ran on, for `ckptfs status`.
    last: Arc<Mutex<Option<InUse>>>,
    /// When and why RDMA last failed in `auto`.
    rdma_failed: Arc<Mutex<Option<(Instant, String)>>>,
}

/// How long `auto` uses TCP after an RDMA attempt failed.
pub const RDMA_RETRY_AFTER: Duration = Duration::from_secs(60);

impl DrTier {
    /// A tier talking to the server at `addr` (`host:port`) with the key in
    /// `key_file`, compressing chunks at `zstd_level`. Loads and checks the
    /// key now; connects only when asked to do something, so a server that
    /// is down at start-up is just a tier to retry later.
    pub fn new(addr: String, key_file: &Path, zstd_level: ZstdLevel) -> Result<DrTier, DrError> {
        let key = Key::load(key_file)?;
        if let ZstdLevel::Fixed(level) = zstd_level {
            if !level::valid(level) {
                return Err(DrError::Level { level });
            }
        }
        Ok(DrTier {
            addr,
            key,
            level: Remembered::new(zstd_level),
            level_file: None,
            retry: Retry::default(),
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(300),
            transport: Transport::default(),
            last: Arc::new(Mutex::new(None)),
            rdma_failed: Arc::new(Mutex::new(None)),
        })
    }

    /// Replace the retry policy (default: 6 attempts, 0.2 s doubling to 5 s).
    pub fn with_retry(mut self, retry: Retry) -> DrTier {
        self.retry = retry;
        self
    }

    /// Replace the connect timeout (default 10 s) and the read/write
    /// timeout (default 300 s; a delete's sweep of a large store is slow).
    pub fn with_timeouts(mut self, connect: Duration, io: Duration) -> DrTier {
        self.connect_timeout = connect;
        self.io_timeout = io;
        self
    }

    /// Replace the transport (default: `auto` with default RDMA sizes).
    pub fn with_transport(mut self, transport: Transport) -> DrTier {
        self.transport = transport;
        self
    }

    /// Keep the level `auto` reached in `file`, and start from the one
    /// found there: a one-shot `ckptfs drain`, or a job's embedded drain,
    /// then starts where the last push to this site ended instead of at
    /// [`level::AUTO_START`]; on a fast link that is several batches of
    /// starved sending saved. A missing or unreadable file means no level
    /// learned yet.
    pub fn with_level_file(mut self, file: PathBuf) -> DrTier {
        let found = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|l| level::valid(*l));
        self.level.set(found);
        self.level_file = Some(file);
        self
    }

    /// What the last connection ran on, and why; `None` before the first.
    pub fn in_use(&self) -> Option<InUse> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The level the next push starts at, adjusted by it under `auto`.
    pub(crate) fn compression(&self) -> Adaptive {
        self.level.start()
    }

    /// Where a push's level ended, for the next one.
    pub(crate) fn remember_level(&self, level: i32) {
        if !self.level.remember(level) {
            return;
        }
        if let Some(file) = &self.level_file {
            // Only a hint for the next start: losing it costs a few batches.
            let body = format!("{level}\n");
            if let Err(e) = crate::durable::write_atomic(file, body.as_bytes(), 0o644) {
                tracing::debug!(file = %file.display(), error = %e, "DR zstd level not kept");
            }
        }
    }

    /// The setting, and under `auto` the level the last push ended at.
    pub fn zstd_level(&self) -> (ZstdLevel, Option<i32>) {
        self.level.get()
    }

    /// Open a connection. In `auto`, an RDMA attempt that failed is not
    /// repeated for [`RDMA_RETRY_AFTER`]: a site that does not listen over
    /// RDMA, or that no device reaches, would otherwise cost every
    /// connection the attempt (up to the connect timeout).
    pub(crate) fn connect(&self) -> Result<Conn, DrError> {
        let mut transport = self.transport;
        let failed = self
            .rdma_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let skipped = match failed {
            Some((at, why))
                if transport.choice == Choice::Auto && at.elapsed() < RDMA_RETRY_AFTER =>
            {
                transport.choice = Choice::Tcp;
                Some((at, why))
            }
            _ => None,
        };
        let conn = Conn::open(
            &self.addr,
            &self.key,
            &transport,
            self.connect_timeout,
            self.io_timeout,
        )?;
        let mut used = conn.in_use();
        match skipped {
            Some((at, why)) => {
                used.detail = format!(
                    "{why}; {} s ago, tried again after {} s",
                    at.elapsed().as_secs(),
                    RDMA_RETRY_AFTER.as_secs()
                );
            }
            None if self.transport.choice == Choice::Auto => {
                let failed = (used.kind == "tcp" && used.detail.starts_with("RDMA failed"))
                    .then(|| (Instant::now(), used.detail.clone()));
                *self.rdma_failed.lock().unwrap_or_else(|p| p.into_inner()) = failed;
            }
            None => {}
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(used);
        Ok(conn)
    }

    pub(crate) fn session(&self) -> Session<'_> {
        Session {
            tier: self,
            conn: None,
            failures: 0,
        }
    }
}

/// What a DR failure means to the drain.
pub(crate) fn tier_error(e: DrError) -> TierError {
    let message = e.to_string();
    if e.is_transient() {
        TierError::Unavailable {
            tier: TIER.into(),
            message,
        }
    } else {
        TierError::Refused {
            tier: TIER.into(),
            message,
        }
    }
}

fn not_found(e: &DrError) -> bool {
    matches!(
        e,
        DrError::Remote {
            kind: ErrorKind::NotFound,
            ..
        }
    )
}

/// One operation's connection, re-opened after a transient failure, with
/// the operation's budget of consecutive failures.
pub(crate) struct Session<'a> {
    pub tier: &'a DrTier,
    conn: Option<Conn>,
    failures: u32,
}

impl Session<'_> {
    /// The open connection, or a new one. Give it back with
    /// [`put_back`](Session::put_back) after a success; drop it after an
    /// error (its stream is in an unknown state).
    pub fn take(&mut self) -> Result<Conn, DrError> {
        match self.conn.take() {
            Some(c) => Ok(c),
            None => self.tier.connect(),
        }
    }

    pub fn put_back(&mut self, conn: Conn) {
        self.conn = Some(conn);
    }

    /// Something got through: the failure budget starts over.
    pub fn progressed(&mut self) {
        self.failures = 0;
    }

    /// After a failure: whether to try again (after pausing) or give up.
    /// The caller has dropped the connection if its stream is in doubt.
    pub fn retry(&mut self, e: &DrError) -> bool {
        if !e.is_transient() || self.failures + 1 >= self.tier.retry.attempts {
            return false;
        }
        let delay = self.tier.retry.delay(self.failures);
        self.failures += 1;
        tracing::info!(
            peer = %self.tier.addr,
            error = %e,
            attempt = self.failures,
            ?delay,
            "DR request failed; retrying"
        );
        std::thread::sleep(delay);
        true
    }

    /// [`retry`](Session::retry) for callers that report a [`TierError`].
    pub fn pause(&mut self, e: DrError) -> Result<(), TierError> {
        if self.retry(&e) {
            Ok(())
        } else {
            Err(tier_error(e))
        }
    }

    /// Run `f` (one request and its reply) on a connection until it
    /// succeeds or fails for good.
    pub fn run<T>(
        &mut self,
        mut f: impl FnMut(&mut Conn) -> Result<T, DrError>,
    ) -> Result<T, DrError> {
        loop {
            let e = match self.take() {
                Ok(mut c) => match f(&mut c) {
                    Ok(v) => {
                        self.put_back(c);
                        self.progressed();
                        return Ok(v);
                    }
                    Err(e) => {
                        // An error reply leaves the stream in step; anything
                        // else leaves it in doubt.
                        if matches!(e, DrError::Remote { .. }) {
                            self.put_back(c);
                        }
                        e
                    }
                },
                Err(e) => e,
            };
            if !self.retry(&e) {
                return Err(e);
            }
        }
    }
}

impl DrTier {
    fn set_not_found(job: &JobName, set: &SetName) -> TierError {
        TierError::NotFound {
            tier: TIER.into(),
            job: job.clone(),
            set: set.clone(),
        }
    }

    /// The manifest of a complete set, or `None`.
    pub(crate) fn fetch_manifest(
        &self,
        s: &mut Session<'_>,
        job: &JobName,
        set: &SetName,
    ) -> Result<Option<Manifest>, TierError> {
        let r = s.run(|c| {
            c.send_json(
                MsgType::GetManifest,
                &SetRef {
                    job: job.clone(),
                    set: set.clone(),
                },
            )?;
            c.recv(MsgType::Manifest)
        });
        let m = match r {
            Ok(m) => m,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(tier_error(e)),
        };
        let bad = |source| TierError::Manifest {
            tier: TIER.into(),
            job: job.clone(),
            set: set.clone(),
            source,
        };
        let manifest = Manifest::parse(&m.payload).map_err(bad)?;
        if &manifest.job != job || &manifest.set != set {
            return Err(bad(ManifestError::Invalid {
                message: format!("it describes {}/{}", manifest.job, manifest.set),
            }));
        }
        Ok(Some(manifest))
    }
}

impl Tier for DrTier {
    fn name(&self) -> &str {
        TIER
    }

    fn location(&self) -> String {
        self.addr.clone()
    }

    fn transport(&self) -> Option<String> {
        self.in_use().map(|t| t.to_string())
    }

    fn compression(&self) -> Option<String> {
        Some(self.level.describe())
    }

    fn jobs(&self) -> Result<Vec<JobName>, TierError> {
        let r: Jobs = self
            .session()
            .run(|c| c.call_json(MsgType::ListJobs, &Empty {}, MsgType::Jobs))
            .map_err(tier_error)?;
        Ok(r.jobs)
    }

    fn sets(&self, job: &JobName) -> Result<Vec<TierSet>, TierError> {
        let r: Sets = self
            .session()
            .run(|c| {
                c.call_json(
                    MsgType::ListSets,
                    &JobRef { job: job.clone() },
                    MsgType::Sets,
                )
            })
            .map_err(tier_error)?;
        let mut out: Vec<TierSet> = r
            .sets
            .into_iter()
            .map(|s| TierSet {
                job: job.clone(),
                set: s.set,
                created: s.created,
                bytes: s.bytes,
                files: s.files,
            })
            .collect();
        out.sort_by(|a, b| (a.created, &a.set).cmp(&(b.created, &b.set)));
        Ok(out)
    }

    fn manifest(&self, job: &JobName, set: &SetName) -> Result<Manifest, TierError> {
        self.fetch_manifest(&mut self.session(), job, set)?
            .ok_or_else(|| Self::set_not_found(job, set))
    }

    fn push(
        &self,
        src: &Source<'_>,
        limiter: &RateLimiter,
        _resume: &mut dyn Resume,
    ) -> Result<PushReport, TierError> {
        // The server answers "which chunks do you lack?", so a resumed push
        // finds out for itself what is left to send.
        super::push::push(self, src, limiter)
    }

    fn push_early(
        &self,
        src: &Source<'_>,
        limiter: &RateLimiter,
        resume: &mut dyn Resume,
    ) -> Result<PushReport, TierError> {
        // Only what changed since the last early push: the server would
        // dedup the rest anyway, but reading and hashing it is not free.
        let todo: Vec<_> = src
            .manifest
            .files
            .iter()
            .filter(|f| !resume.is_done(f))
            .cloned()
            .collect();
        if todo.is_empty() {
            return Ok(PushReport::default());
        }
        let mut m = src.manifest.clone();
        m.files = todo;
        let partial = Source {
            engine: src.engine,
            manifest: &m,
            dir: src.dir.clone(),
        };
        let report = super::push::push_chunks(self, &partial, limiter)?;
        for f in &m.files {
            resume.mark_done(f)?;
        }
        Ok(report)
    }
    fn fetch(
        &self,
        job: &JobName,
        set: &SetName,
        dest: &Path,
        engine: &IoEngine,
        progress: &dyn Fn(u64),
    ) -> Result<Manifest, TierError> {
        super::fetch::fetch(self, job, set, dest, engine, progress)
    }

    fn delete(&self, job: &JobName, set: &SetName) -> Result<(), TierError> {
        let r: Deleted = self
            .session()
            .run(|c| {
                c.call_json(
                    MsgType::DeleteSet,
                    &SetRef {
                        job: job.clone(),
                        set: set.clone(),
                    },
                    MsgType::Deleted,
                )
            })
            .map_err(tier_error)?;
        tracing::info!(
            peer = %self.addr, %job, %set,
            existed = r.existed,
            chunks_removed = r.chunks_removed,
            bytes_removed = r.bytes_removed,
            "deleted a set on the DR site"
        );
        Ok(())
    }
}
