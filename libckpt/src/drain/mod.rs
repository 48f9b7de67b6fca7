//! The drain: complete sets trickle from the cache to every lower tier, in
//! the background, verified, paced, retried.
//!
//! One worker thread per tier takes the oldest complete set that tier lacks,
//! waits a random jitter, pushes it (the journal makes a push resumable),
//! and on success applies the tier's keep-N and the cache's retention and
//! eviction. A failure is retried with exponential backoff; the application
//! never waits for any of it. What is pending, in flight, done or failed,
//! and how old the oldest undrained set is (the RPO exposure), is in
//! [`Drain::status`].
//!
//! One drain per cache at a time, whoever runs it (the mount daemon, a
//! library in embedded mode, `ckptfs drain`, several ranks' libraries):
//! the workers drain only while their `Drain` holds the cache-wide lock
//! `<cache>/.ckptfs/drain.lock` (flock). A drain that cannot take it waits
//! for it in the background, so when the holder ends another takes over.

pub mod journal;

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::path::{JobName, SetName};
use crate::rate::RateLimiter;
use crate::retention::Retention;
use crate::set::SetInfo;
use crate::store::Store;
use crate::tier::{PushReport, Source, Tier, TierError};

use journal::{JournalResume, State};

/// Sets being written whose sealed files may drain before their commit
/// (the opt-in early drain): provisional manifests listing just those
/// files, unchanged since they were sealed.
pub trait EarlySource: Send + Sync {
    fn sealed(&self) -> Vec<crate::manifest::Manifest>;
}

/// Per-tier policy.
#[derive(Debug, Clone)]
pub struct TierPolicy {
    /// Complete sets kept per job on the tier; 0 keeps all.
    pub keep: usize,
    /// Bytes per second; `None` is unlimited.
    pub rate: Option<u64>,
}

/// Engine-wide timing and eviction.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    pub jitter: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Cache fill (percent) above which drained sets are evicted…
    pub high_watermark: u8,
    /// …down to this.
    pub low_watermark: u8,
    /// Nice value of the drain's threads ([`crate::sched`]).
    pub nice: i32,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            jitter: Duration::from_secs(2),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            high_watermark: 90,
            low_watermark: 75,
            nice: crate::sched::DEFAULT_NICE,
        }
    }
}

impl DrainOptions {
    /// Defaults, with watermarks no filesystem reaches: for tests that look
    /// at the cache after a drain, whatever the fill of the host's disk.
    #[cfg(test)]
    pub(crate) fn never_evicting() -> DrainOptions {
        DrainOptions {
            high_watermark: 100,
            low_watermark: 99,
            ..DrainOptions::default()
        }
    }

    pub fn from_config(c: &crate::config::Config) -> DrainOptions {
        use crate::config::duration;
        DrainOptions {
            jitter: duration(&c.drain.jitter),
            backoff_min: duration(&c.drain.backoff_min),
            backoff_max: duration(&c.drain.backoff_max),
            high_watermark: c.drain.high_watermark,
            low_watermark: c.drain.low_watermark,
            nice: c.drain.nice,
        }
    }
}

/// The lower tiers the configuration names, in drain and restore order
/// (the parallel filesystem first: nearer, faster to restore from; then
/// the DR site, then S3).
/// Tiers with their policies, in drain order.
pub type Tiers = Vec<(Arc<dyn Tier>, TierPolicy)>;

type Listener = Box<dyn Fn(&Event) + Send>;

pub fn tiers_from_config(c: &crate::config::Config) -> Result<Tiers, TierError> {
    let rate = |b: bytesize::ByteSize| Some(b.as_u64()).filter(|r| *r > 0);
    let mut out: Tiers = Vec::new();
    if let Some(dir) = &c.pfs.dir {
        out.push((
            Arc::new(crate::tier::pfs::PfsTier::new(dir)),
            TierPolicy {
                keep: c.pfs.keep,
                rate: rate(c.pfs.rate),
            },
        ));
    }
    if let Some(addr) = &c.dr.address {
        out.push((
            dr_tier(addr, &c.dr.key, c.dr.zstd_level, c.dr.transport(), &c.cache)?,
            TierPolicy {
                keep: c.dr.keep,
                rate: rate(c.dr.rate),
            },
        ));
    }
    // Credentials are looked up here, so a missing one is reported at
    // start, not at the first drain.
    let s3 = c.s3.options().map_err(|message| TierError::Refused {
        tier: crate::s3::TIER.into(),
        message,
    })?;
    if let Some(o) = s3 {
        out.push((
            Arc::new(crate::s3::S3Tier::new(o)?),
            TierPolicy {
                keep: c.s3.keep,
                rate: rate(c.s3.rate),
            },
        ));
    }
    Ok(out)
}

/// The DR tier client; the key file is read (and its mode checked) here,
/// so a bad key is reported at start, not at the first drain. The level
/// `auto` reaches is kept in the cache's metadata, per site address.
fn dr_tier(
    addr: &str,
    key: &std::path::Path,
    level: crate::dr::level::ZstdLevel,
    transport: crate::dr::Transport,
    cache: &std::path::Path,
) -> Result<Arc<dyn Tier>, TierError> {
    let level_file = cache
        .join(crate::store::META_DIR)
        .join(format!("dr-zstd-level.{}", file_safe(addr)));
    crate::dr::DrTier::new(addr.to_owned(), key, level)
        .map(|t| Arc::new(t.with_transport(transport).with_level_file(level_file)) as Arc<dyn Tier>)
        .map_err(|e| TierError::Refused {
            tier: "dr".into(),
            message: e.to_string(),
        })
}

/// `s` with every byte but ASCII letters, digits, `.` and `-` as `_`:
/// a host:port (or [v6]:port) as part of a file name.
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

type Key = (JobName, SetName);

/// The cache-wide drain lock, in the store's metadata directory.
pub const LOCK_FILE: &str = "drain.lock";
/// How often a drain without the lock tries to take it.
const LOCK_RETRY: Duration = Duration::from_millis(250);

/// Take `<cache>/.ckptfs/drain.lock` without waiting; `Ok(None)` when
/// another drain holds it.
fn try_cache_lock(store: &Store) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = store.root().join(crate::store::META_DIR).join(LOCK_FILE);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[derive(Debug, Clone)]
struct Retry {
    next: Instant,
}

#[derive(Debug, Clone, Serialize)]
struct InFlight {
    job: JobName,
    set: SetName,
    bytes: u64,
    #[serde(skip)]
    started: Instant,
    #[serde(skip)]
    taken_at_start: u64,
}

#[derive(Debug, Default)]
struct SlotState {
    in_flight: Option<InFlight>,
    retry: HashMap<Key, Retry>,
    last_error: Option<String>,
    bytes_sent: u64,
    sets_done: u64,
    /// Bytes per second of the last completed push.
    last_rate: Option<f64>,
}

struct Slot {
    tier: Arc<dyn Tier>,
    policy: TierPolicy,
    limiter: RateLimiter,
    state: Mutex<SlotState>,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One set waiting for (or failing to reach) a tier.
#[derive(Debug, Clone, Serialize)]
pub struct PendingSet {
    pub job: JobName,
    pub set: SetName,
    pub bytes: u64,
    /// pending | in_flight | failed
    pub state: &'static str,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Seconds since the set was committed: how much work is exposed.
    pub age_seconds: u64,
    pub retry_in_seconds: Option<u64>,
}

/// One set of the cache the tier already holds.
#[derive(Debug, Clone, Serialize)]
pub struct DoneSet {
    pub job: JobName,
    pub set: SetName,
    #[serde(with = "humantime_serde")]
    pub done_at: Option<SystemTime>,
}

/// One tier, as `ckptfs status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TierStatus {
    pub tier: String,
    pub location: String,
    /// See [`Tier::transport`].
    pub transport: Option<String>,
    /// See [`Tier::compression`].
    pub compression: Option<String>,
    pub rate_limit: Option<u64>,
    pub pending: Vec<PendingSet>,
    /// Complete sets of the cache already safe on this tier.
    pub done: Vec<DoneSet>,
    pub bytes_pending: u64,
    /// Bytes of the set in flight already sent.
    pub in_flight_bytes_done: Option<u64>,
    /// Bytes per second: of the push in flight, else of the last one.
    pub current_rate: Option<f64>,
    /// Age of the oldest complete set not yet on this tier (seconds).
    pub rpo_exposure_seconds: Option<u64>,
    pub sets_done: u64,
    pub bytes_sent: u64,
    pub last_error: Option<String>,
}

/// What happened to one set, for `ckptfs drain --wait` and logs.
#[derive(Debug, Clone)]
pub enum Event {
    Done {
        tier: String,
        job: JobName,
        set: SetName,
        report: PushReport,
    },
    Failed {
        tier: String,
        job: JobName,
        set: SetName,
        error: String,
        transient: bool,
    },
}

pub struct Drain {
    store: Store,
    slots: Vec<Slot>,
    opts: DrainOptions,
    wake: Mutex<u64>,
    cv: Condvar,
    stop: AtomicBool,
    listeners: Mutex<Vec<Listener>>,
    early: Mutex<Option<Arc<dyn EarlySource>>>,
    /// The cache-wide drain lock, once this drain holds it; released when
    /// its last worker ends.
    cache_lock: Mutex<Option<File>>,
    workers: AtomicUsize,
    /// One eviction at a time: every tier's worker may start one.
    evicting: Mutex<()>,
}

fn rand_fraction() -> f64 {
    rand::random::<f64>()
}

impl Drain {
    pub fn new(store: Store, tiers: Tiers, opts: DrainOptions) -> Arc<Drain> {
        crate::sched::set_drain_nice(opts.nice);
        let slots = tiers
            .into_iter()
            .map(|(tier, policy)| Slot {
                limiter: RateLimiter::new(policy.rate),
                tier,
                policy,
                state: Mutex::new(SlotState::default()),
            })
            .collect();
        Arc::new(Drain {
            store,
            slots,
            opts,
            wake: Mutex::new(0),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            early: Mutex::new(None),
            cache_lock: Mutex::new(None),
            workers: AtomicUsize::new(0),
            evicting: Mutex::new(()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn tiers(&self) -> Vec<Arc<dyn Tier>> {
        self.slots.iter().map(|s| s.tier.clone()).collect()
    }

    /// Be told of every set drained or failed.
    pub fn subscribe(&self, f: Box<dyn Fn(&Event) + Send>) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    fn emit(&self, e: Event) {
        for f in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            f(&e);
        }
    }

    /// Drain sealed files of uncommitted sets too, from `src`.
    pub fn set_early(&self, src: Arc<dyn EarlySource>) {
        *self.early.lock().unwrap_or_else(|p| p.into_inner()) = Some(src);
    }

    /// With nothing complete to send: the sealed files of sets still being
    /// written, so their final push has less to do. Failures only delay.
    fn drain_early(&self, slot: &Slot) {
        let Some(src) = self.early.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        for m in src.sealed() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let meta = self.store.meta_dir(&m.job, &m.set);
            let mut resume = JournalResume {
                meta: meta.clone(),
                tier: slot.tier.name().to_owned(),
                progress: journal::load(&meta, slot.tier.name()),
            };
            let source = Source {
                engine: self.store.engine(),
                manifest: &m,
                dir: self.store.set_dir(&m.job, &m.set),
            };
            match slot.tier.push_early(&source, &slot.limiter, &mut resume) {
                Ok(r) if r.bytes_sent > 0 => {
                    tracing::debug!(tier = slot.tier.name(), job = %m.job, set = %m.set,
                        files = r.files, bytes = r.bytes_sent, "sealed files drained early");
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(tier = slot.tier.name(), job = %m.job, set = %m.set,
                    error = %e, "early drain deferred"),
            }
        }
    }

    /// Start one worker per tier.
    pub fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        (0..self.slots.len())
            .filter_map(|i| {
                let this = self.clone();
                self.workers.fetch_add(1, Ordering::SeqCst);
                let spawned = std::thread::Builder::new()
                    .name(format!("ckptfs-drain-{}", self.slots[i].tier.name()))
                    .spawn(move || {
                        this.worker(i);
                        this.worker_ended();
                    });
                if spawned.is_err() {
                    self.worker_ended();
                }
                spawned.ok()
            })
            .collect()
    }

    /// A set was committed: look again now.
    pub fn notify(&self) {
        *self.wake.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_all();
    }

    /// Whether this drain holds the cache-wide drain lock (taking it if it
    /// is free).
    pub fn holds_cache_lock(&self) -> bool {
        let mut held = self.cache_lock.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_some() {
            return true;
        }
        match try_cache_lock(&self.store) {
            Ok(Some(f)) => {
                tracing::info!(cache = %self.store.root().display(), "drain lock taken: this process drains the cache");
                *held = Some(f);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(cache = %self.store.root().display(), error = %e, "cannot take the drain lock");
                false
            }
        }
    }

    fn worker_ended(&self) {
        if self.workers.fetch_sub(1, Ordering::SeqCst) == 1 {
            let released = self
                .cache_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if released.is_some() {
                tracing::info!(cache = %self.store.root().display(), "drain lock released");
            }
        }
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.notify();
    }

    /// Sleep up to `d`, returning early on notify or shutdown.
    fn pause(&self, d: Duration) {
        let guard = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        let seen = *guard;
        let _ = self.cv.wait_timeout_while(guard, d, |n| {
            *n == seen && !self.stop.load(Ordering::Relaxed)
        });
    }

    fn worker(&self, i: usize) {
        crate::sched::enter_drain_priority();
        let slot = &self.slots[i];
        tracing::info!(tier = slot.tier.name(), location = %slot.tier.location(), "drain started");
        let mut waiting_said = false;
        while !self.stop.load(Ordering::Relaxed) {
            if !self.holds_cache_lock() {
                if !waiting_said {
                    tracing::info!(
                        tier = slot.tier.name(),
                        "another process drains this cache; waiting for its drain lock"
                    );
                    waiting_said = true;
                }
                self.pause(LOCK_RETRY);
                continue;
            }
            match self.next_for(slot, None) {
                Some(info) => {
                    let first = !slot
                        .state()
                        .retry
                        .contains_key(&(info.job.clone(), info.set.clone()));
                    if first && !self.opts.jitter.is_zero() {
                        // Spread a thousand nodes' simultaneous commits.
                        self.pause(self.opts.jitter.mul_f64(rand_fraction()));
                        if self.stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    self.attempt(slot, &info);
                }
                None => {
                    // Also here, not only after a drain: while a tier is
                    // down, new sets fill the cache and no drain ends, yet
                    // sets drained before the outage can make room.
                    self.evict();
                    self.drain_early(slot);
                    self.pause(self.idle_wait(slot));
                }
            }
        }
    }

    /// Until the next retry is due, at most a few seconds (new commits
    /// wake the worker anyway).
    fn idle_wait(&self, slot: &Slot) -> Duration {
        let now = Instant::now();
        slot.state()
            .retry
            .values()
            .map(|r| r.next.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(5))
            .clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// Complete sets in the cache that `slot`'s tier lacks, oldest first.
    fn undrained(&self, slot: &Slot, job: Option<&JobName>) -> Vec<SetInfo> {
        let jobs = match job {
            Some(j) => vec![j.clone()],
            None => self.store.jobs().unwrap_or_default(),
        };
        let mut out: Vec<SetInfo> = jobs
            .iter()
            .flat_map(|j| self.store.sets(j).unwrap_or_default())
            .filter(|s| s.is_complete())
            .filter(|s| !journal::is_done(&self.store.meta_dir(&s.job, &s.set), slot.tier.name()))
            .collect();
        out.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        out
    }

    fn next_for(&self, slot: &Slot, job: Option<&JobName>) -> Option<SetInfo> {
        let now = Instant::now();
        let st = slot.state();
        let retry = st.retry.clone();
        drop(st);
        self.undrained(slot, job).into_iter().find(|s| {
            retry
                .get(&(s.job.clone(), s.set.clone()))
                .is_none_or(|r| r.next <= now)
        })
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let exp = self
            .opts
            .backoff_min
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let d = exp.min(self.opts.backoff_max);
        // Between half and all of it: nodes that failed together do not
        // retry together.
        d.mul_f64(0.5 + 0.5 * rand_fraction())
    }

    /// One push of one set to one tier, journaled.
    fn attempt(&self, slot: &Slot, info: &SetInfo) {
        let tier = slot.tier.name().to_owned();
        let key = (info.job.clone(), info.set.clone());
        let meta = self.store.meta_dir(&info.job, &info.set);
        let mut progress = journal::load(&meta, &tier);
        slot.state().in_flight = Some(InFlight {
            job: info.job.clone(),
            set: info.set.clone(),
            bytes: info.bytes,
            started: Instant::now(),
            taken_at_start: slot.limiter.taken(),
        });
        let result = self
            .store
            .manifest(&info.job, &info.set)
            .map_err(|e| TierError::Local {
                path: meta.clone(),
                message: e.to_string(),
            })
            .and_then(|m| {
                let src = Source {
                    engine: self.store.engine(),
                    manifest: &m,
                    dir: self.store.set_dir(&info.job, &info.set),
                };
                let mut resume = JournalResume {
                    meta: meta.clone(),
                    tier: tier.clone(),
                    progress: progress.clone(),
                };
                let r = slot.tier.push(&src, &slot.limiter, &mut resume);
                progress = resume.progress;
                r
            });
        let started = slot.state().in_flight.take().map(|f| f.started);
        match result {
            Ok(report) => {
                progress.state = State::Done;
                progress.last_error = None;
                progress.done_at = Some(SystemTime::now());
                progress.bytes_sent += report.bytes_sent;
                progress.files_done.clear();
                if let Err(e) = journal::save(&meta, &tier, &progress) {
                    tracing::warn!(error = %e, "could not record a drained set; it will be checked again");
                }
                {
                    let mut st = slot.state();
                    st.retry.remove(&key);
                    st.bytes_sent += report.bytes_sent;
                    st.sets_done += 1;
                    st.last_error = None;
                    if let Some(t) = started {
                        let secs = t.elapsed().as_secs_f64();
                        if secs > 0.0 {
                            st.last_rate = Some(report.bytes_read as f64 / secs);
                        }
                    }
                }
                tracing::info!(tier = %tier, job = %info.job, set = %info.set,
                    bytes_read = report.bytes_read, bytes_sent = report.bytes_sent,
                    skipped = report.skipped, "drained");
                self.after_success(slot, &info.job);
                self.emit(Event::Done {
                    tier,
                    job: info.job.clone(),
                    set: info.set.clone(),
                    report,
                });
            }
            Err(e) => {
                let transient = e.is_transient();
                progress.attempts += 1;
                progress.last_error = Some(e.to_string());
                if !transient {
                    progress.state = State::Failed;
                }
                let _ = journal::save(&meta, &tier, &progress);
                let wait = if transient {
                    self.backoff(progress.attempts)
                } else {
                    self.opts.backoff_max
                };
                {
                    let mut st = slot.state();
                    st.retry.insert(
                        key,
                        Retry {
                            next: Instant::now() + wait,
                        },
                    );
                    st.last_error = Some(e.to_string());
                }
                tracing::warn!(tier = %tier, job = %info.job, set = %info.set, error = %e,
                    retry_in = ?wait, "drain failed");
                self.emit(Event::Failed {
                    tier,
                    job: info.job.clone(),
                    set: info.set.clone(),
                    error: e.to_string(),
                    transient,
                });
            }
        }
    }

    /// Keep-N on the tier, retention and eviction in the cache.
    fn after_success(&self, slot: &Slot, job: &JobName) {
        if slot.policy.keep > 0 {
            match slot.tier.sets(job) {
                Ok(sets) => {
                    let infos: Vec<SetInfo> = sets
                        .iter()
                        .map(|t| SetInfo {
                            job: t.job.clone(),
                            set: t.set.clone(),
                            state: crate::set::SetState::Complete,
                            created: t.created,
                            bytes: t.bytes,
                            files: t.files,
                        })
                        .collect();
                    for set in (Retention {
                        keep: slot.policy.keep,
                    })
                    .plan(&infos)
                    {
                        match slot.tier.delete(job, &set) {
                            Ok(()) => {
                                tracing::info!(tier = slot.tier.name(), job = %job, set = %set, "retention removed set from tier")
                            }
                            Err(e) => {
                                tracing::warn!(tier = slot.tier.name(), job = %job, set = %set, error = %e, "tier retention failed")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(tier = slot.tier.name(), error = %e, "listing for retention failed")
                }
            }
        }
        let keep = self.store.options().keep;
        if keep > 0 {
            if let Err(e) = self.store.apply_retention(job, keep) {
                tracing::warn!(job = %job, error = %e, "cache retention failed");
            }
        }
        self.evict();
    }

    /// Above the high watermark, remove complete sets that every tier
    /// holds, least recently used first, down to the low watermark. Never
    /// an undrained set: it may be the only copy.
    pub fn evict(&self) -> Vec<(JobName, SetName)> {
        let mut evicted = Vec::new();
        if self.slots.is_empty() {
            return evicted;
        }
        let _one = match self.evicting.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return evicted,
        };
        let Ok(space) = crate::statfs::space(self.store.root()) else {
            return evicted;
        };
        if space.fill_percent() <= f64::from(self.opts.high_watermark) {
            return evicted;
        }
        let mut candidates: Vec<(SystemTime, SetInfo)> = self
            .store
            .jobs()
            .unwrap_or_default()
            .iter()
            .flat_map(|j| self.store.sets(j).unwrap_or_default())
            .filter(|s| s.is_complete() && self.store.drained_everywhere(&s.job, &s.set))
            .map(|s| (last_used(&self.store, &s), s))
            .collect();
        candidates.sort_by_key(|c| c.0);
        for (_, s) in candidates {
            match crate::statfs::space(self.store.root()) {
                Ok(sp) if sp.fill_percent() > f64::from(self.opts.low_watermark) => {}
                _ => break,
            }
            if self.store.delete_set(&s.job, &s.set).is_ok() {
                tracing::info!(job = %s.job, set = %s.set, "evicted from the cache (held by every tier)");
                evicted.push((s.job, s.set));
            }
        }
        evicted
    }

    /// Per tier: what is pending, in flight, failed; rates; RPO exposure.
    pub fn status(&self) -> Vec<TierStatus> {
        let now = Instant::now();
        let wall = SystemTime::now();
        self.slots
            .iter()
            .map(|slot| {
                let st = slot.state();
                let in_flight = st.in_flight.clone();
                let retry = st.retry.clone();
                let (last_error, bytes_sent, sets_done, last_rate) = (
                    st.last_error.clone(),
                    st.bytes_sent,
                    st.sets_done,
                    st.last_rate,
                );
                drop(st);
                let pending: Vec<PendingSet> = self
                    .undrained(slot, None)
                    .into_iter()
                    .map(|s| {
                        let p =
                            journal::record(&self.store.meta_dir(&s.job, &s.set), slot.tier.name());
                        let committed = self
                            .store
                            .manifest(&s.job, &s.set)
                            .map(|m| m.committed)
                            .unwrap_or(s.created);
                        let flying = in_flight
                            .as_ref()
                            .is_some_and(|f| f.job == s.job && f.set == s.set);
                        let r = retry.get(&(s.job.clone(), s.set.clone()));
                        PendingSet {
                            state: if flying {
                                "in_flight"
                            } else if p.state == State::Failed {
                                "failed"
                            } else {
                                "pending"
                            },
                            attempts: p.attempts,
                            last_error: p.last_error,
                            age_seconds: wall
                                .duration_since(committed)
                                .unwrap_or_default()
                                .as_secs(),
                            retry_in_seconds: r
                                .filter(|_| !flying)
                                .map(|r| r.next.saturating_duration_since(now).as_secs()),
                            job: s.job,
                            set: s.set,
                            bytes: s.bytes,
                        }
                    })
                    .collect();
                let done_in_flight = in_flight
                    .as_ref()
                    .map(|f| slot.limiter.taken().saturating_sub(f.taken_at_start));
                let current_rate = match (&in_flight, done_in_flight) {
                    (Some(f), Some(done)) if f.started.elapsed().as_secs_f64() > 0.5 => {
                        Some(done as f64 / f.started.elapsed().as_secs_f64())
                    }
                    _ => last_rate,
                };
                let done = self
                    .store
                    .jobs()
                    .unwrap_or_default()
                    .iter()
                    .flat_map(|j| self.store.sets(j).unwrap_or_default())
                    .filter(|s| s.is_complete())
                    .filter_map(|s| {
                        let p =
                            journal::record(&self.store.meta_dir(&s.job, &s.set), slot.tier.name());
                        (p.state == State::Done).then_some(DoneSet {
                            job: s.job,
                            set: s.set,
                            done_at: p.done_at,
                        })
                    })
                    .collect();
                TierStatus {
                    done,
                    tier: slot.tier.name().to_owned(),
                    location: slot.tier.location(),
                    transport: slot.tier.transport(),
                    compression: slot.tier.compression(),
                    rate_limit: slot.policy.rate,
                    bytes_pending: pending.iter().map(|p| p.bytes).sum::<u64>()
                        - done_in_flight
                            .unwrap_or(0)
                            .min(pending.iter().map(|p| p.bytes).sum()),
                    rpo_exposure_seconds: pending.iter().map(|p| p.age_seconds).max(),
                    pending,
                    in_flight_bytes_done: done_in_flight,
                    current_rate,
                    sets_done,
                    bytes_sent,
                    last_error,
                }
            })
            .collect()
    }

    /// Sets of `job` (every job when `None`) not yet on every tier, and
    /// how many of those failed for good (not transient).
    pub fn outstanding(&self, job: Option<&JobName>) -> (usize, usize) {
        let mut pending = 0;
        let mut failed = 0;
        for slot in &self.slots {
            for s in self.undrained(slot, job) {
                pending += 1;
                if journal::record(&self.store.meta_dir(&s.job, &s.set), slot.tier.name()).state
                    == State::Failed
                {
                    failed += 1;
                }
            }
        }
        (pending, failed)
    }
}

/// When a set was last used: its directory's access time (stage-in and
/// restores read it), else its creation.
fn last_used(store: &Store, s: &SetInfo) -> SystemTime {
    std::fs::metadata(store.set_dir(&s.job, &s.set))
        .and_then(|m| m.accessed())
        .unwrap_or(s.created)
        .max(s.created)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod lock_tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::path::RelPath;
    use crate::store::StoreOptions;
    use crate::tier::pfs::PfsTier;

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn one_drain_per_cache_and_another_takes_over() {
        let d = crate::testutil::scratch("ckpt-drainlock-");
        let pfs = d.path().join("pfs");
        std::fs::create_dir(&pfs).unwrap();
        let opts = StoreOptions {
            chunk_size: 64 * 1024,
            keep: 0,
            required_tiers: vec!["pfs".into()],
        };
        // Two "processes" on one cache.
        let stores: Vec<Store> = (0..2)
            .map(|_| crate::testutil::store_at(&d.path().join("cache"), opts.clone()))
            .collect();
        let drains: Vec<Arc<Drain>> = stores
            .iter()
            .map(|s| {
                let tier: Arc<dyn Tier> = Arc::new(PfsTier::new(&pfs));
                Drain::new(
                    s.clone(),
                    vec![(
                        tier,
                        TierPolicy {
                            keep: 0,
                            rate: None,
                        },
                    )],
                    DrainOptions {
                        jitter: Duration::ZERO,
                        ..DrainOptions::never_evicting()
                    },
                )
            })
            .collect();
        let first = drains[0].start();
        wait_for("the first drain to take the lock", || {
            drains[0].cache_lock.lock().unwrap().is_some()
        });
        let second = drains[1].start();
        let job = JobName::new("j").unwrap();
        let commit = |set: &str| {
            let mut w = stores[0]
                .create_set(&job, &SetName::new(set).unwrap())
                .unwrap();
            w.write_bytes(&RelPath::new("a").unwrap(), &[1u8; 10_000])
                .unwrap();
            w.commit().unwrap();
            drains.iter().for_each(|d| d.notify());
        };
        commit("s1");
        wait_for("s1 on the PFS", || {
            stores[0].drained_everywhere(&job, &SetName::new("s1").unwrap())
        });
        assert!(!drains[1].holds_cache_lock(), "two drains on one cache");
        assert_eq!(drains[1].status()[0].sets_done, 0);
        // The holder ends: the other takes over.
        drains[0].shutdown();
        first.into_iter().for_each(|h| h.join().unwrap());
        commit("s2");
        wait_for("s2 on the PFS", || {
            stores[1].drained_everywhere(&job, &SetName::new("s2").unwrap())
        });
        // The journal is written just before the worker counts the set.
        wait_for("the second drain to count s2", || {
            drains[1].status()[0].sets_done == 1
        });
        drains[1].shutdown();
        second.into_iter().for_each(|h| h.join().unwrap());
        assert!(drains[1].cache_lock.lock().unwrap().is_none());
    }
}
