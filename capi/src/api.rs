//! The library between `ckpt_init` and `ckpt_finalize`: every call's
//! logic, in safe Rust over libckpt. The only raw memory is the protected
//! regions, touched in [`Protected::bytes`] and [`Protected::bytes_mut`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libckpt::config::{duration, ApiMode, Config};
use libckpt::control::{self, Client, Request};
use libckpt::drain::{self, Drain, DrainOptions};
use libckpt::io::IoEngine;
use libckpt::memimage::{self, Header, ImageReader, Scatter};
use libckpt::path::{JobName, RelPath, SetName};
use libckpt::rank::{self, Finished, Held, Part, Ranks};
use libckpt::set::SetState;
use libckpt::stage;
use libckpt::store::Store;
use libckpt::tier::Tier;

use crate::error::ApiError;
use crate::need::{Need, Rules};

/// How often waits look again.
const POLL: Duration = Duration::from_millis(20);
/// How long `auto` mode waits for a daemon to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One protected region: where the application's memory is. Stored as an
/// address so the state can live in a global behind a mutex.
#[derive(Debug, Clone, Copy)]
pub struct Protected {
    addr: usize,
    count: usize,
    elem_size: usize,
}

impl Protected {
    /// Check `ckpt_mem_protect`'s arguments.
    pub fn new(ptr: *mut u8, count: usize, elem_size: usize) -> Result<Protected, ApiError> {
        let len = count
            .checked_mul(elem_size)
            .filter(|l| *l <= isize::MAX as usize)
            .ok_or_else(|| {
                ApiError::Invalid(format!(
                    "{count} elements of {elem_size} bytes is more memory than can exist \
                     (a negative count?)"
                ))
            })?;
        if ptr.is_null() && len > 0 {
            return Err(ApiError::Invalid(format!(
                "the pointer of a region of {len} bytes is NULL"
            )));
        }
        Ok(Protected {
            addr: ptr as usize,
            count,
            elem_size,
        })
    }

    fn len(&self) -> usize {
        self.count * self.elem_size
    }

    /// The region's bytes.
    ///
    /// # Safety
    /// The memory given to `ckpt_mem_protect` must still be valid for
    /// reads of `len()` bytes (ckpt.h makes that the caller's promise until
    /// `ckpt_mem_unprotect` or `ckpt_finalize`).
    unsafe fn bytes<'a>(&self) -> &'a [u8] {
        if self.len() == 0 {
            return &[];
        }
        // SAFETY: non-NULL (checked in `new` for len > 0), valid for
        // `len` bytes by the caller's promise above, and len <= isize::MAX.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len()) }
    }

    /// The region's bytes, to fill on restart.
    ///
    /// # Safety
    /// As [`Protected::bytes`], for writes; and no other reference to the
    /// memory may be live while the slice is (regions must not overlap).
    unsafe fn bytes_mut<'a>(&self) -> &'a mut [u8] {
        if self.len() == 0 {
            return &mut [];
        }
        // SAFETY: as in `bytes`; the application does not touch the memory
        // during ckpt_restart (it is blocked in the call).
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len()) }
    }
}

/// How checkpoints reach the lower tiers.
enum Mode {
    /// A ckptfs daemon drains the cache; it is told of every commit.
    Mounted { socket: PathBuf },
    /// This library drains the cache (when tiers are configured).
    Embedded { drain: Option<Arc<Drain>> },
}

/// A file-based checkpoint or restart between its begin and end.
enum Open {
    Checkpoint {
        part: Part,
        routed: BTreeSet<RelPath>,
        started: Instant,
    },
    Restart {
        set: SetName,
    },
}

pub struct Api {
    cfg: Config,
    job: JobName,
    ranks: Ranks,
    store: Store,
    tiers: Vec<Arc<dyn Tier>>,
    mode: Mode,
    regions: BTreeMap<i32, Protected>,
    open: Option<Open>,
    /// Parts this process ended whose sets are not complete yet: their
    /// writer locks are held until they are (see `libckpt::rank`).
    held: Vec<Held>,
    /// The last set this process ended its part of.
    last: Option<SetName>,
    need: Need,
}

/// The set of checkpoint NAME, version VERSION.
pub fn set_name(name: &str, version: i32) -> Result<SetName, ApiError> {
    if version < 0 {
        return Err(ApiError::Invalid(format!(
            "checkpoint {name:?}: version {version} is negative"
        )));
    }
    SetName::new(format!("{name}.v{version:010}"))
        .map_err(|e| ApiError::Invalid(format!("checkpoint name {name:?} is not usable: {e}")))
}

/// The version of `set` if it is a checkpoint of `name`.
fn version_of(name: &str, set: &SetName) -> Option<i32> {
    let digits = set.as_str().strip_prefix(name)?.strip_prefix(".v")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i32>().ok()
}

/// The memory checkpoint of `rank` inside a set.
fn mem_rel(rank: u32) -> RelPath {
    RelPath::new(format!("mem/rank-{rank}.ckpt")).expect("a valid relative path")
}

/// The path inside the set that `file` names: a relative path as given
/// (`./` prefixes dropped), or an absolute path's last component.
fn route_rel(file: &str) -> Result<RelPath, ApiError> {
    let rel = if file.starts_with('/') {
        Path::new(file)
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ApiError::Invalid(format!("{file:?} does not name a file")))?
    } else {
        let mut f = file;
        while let Some(rest) = f.strip_prefix("./") {
            f = rest.trim_start_matches('/');
        }
        f
    };
    RelPath::new(rel).map_err(|e| ApiError::Invalid(format!("cannot route {file:?}: {e}")))
}

impl Api {
    pub fn init(config: Option<&Path>, job: &str, ranks: Option<Ranks>) -> Result<Api, ApiError> {
        let job = JobName::new(job).map_err(|e| ApiError::Invalid(e.to_string()))?;
        let ranks = match ranks {
            Some(r) => r,
            None => Ranks::from_env()?.unwrap_or(Ranks::SINGLE),
        };
        let (cfg, _source) = Config::discover(config)?;
        let engine = Arc::new(IoEngine::new(&cfg.io_options())?);
        let store = Store::open(&cfg.cache, engine, cfg.store_options())?;
        let tiers = drain::tiers_from_config(&cfg)
            .map_err(|e| ApiError::Config(format!("setting up the lower tiers: {e}")))?;
        let tier_list: Vec<Arc<dyn Tier>> = tiers.iter().map(|(t, _)| t.clone()).collect();
        let socket = control::socket_path(store.root());
        let mounted = match cfg.api.mode {
            ApiMode::Embedded => false,
            ApiMode::Mounted => {
                probe(&socket).map_err(|e| {
                    ApiError::Daemon(format!(
                        "api.mode is mounted, but no ckptfs daemon answers for the cache {}: {e}",
                        store.root().display()
                    ))
                })?;
                true
            }
            ApiMode::Auto => probe(&socket).is_ok(),
        };
        let mode = if mounted {
            Mode::Mounted { socket }
        } else {
            let drain = (!tiers.is_empty()).then(|| {
                let d = Drain::new(store.clone(), tiers, DrainOptions::from_config(&cfg));
                // The workers run until shutdown; they are not joined (a
                // push in progress ends on its own, journaled).
                drop(d.start());
                d
            });
            Mode::Embedded { drain }
        };
        tracing::info!(job = %job, rank = ranks.rank, size = ranks.size,
            mounted, cache = %store.root().display(), "libckpt initialised");
        Ok(Api {
            cfg,
            job,
            ranks,
            store,
            tiers: tier_list,
            mode,
            regions: BTreeMap::new(),
            open: None,
            held: Vec::new(),
            last: None,
            need: Need::new(Instant::now()),
        })
    }

    pub fn is_mounted(&self) -> bool {
        matches!(self.mode, Mode::Mounted { .. })
    }

    pub fn protect(&mut self, id: i32, region: Protected) -> Result<(), ApiError> {
        if id < 0 {
            return Err(ApiError::Invalid(format!("protected id {id} is negative")));
        }
        self.regions.insert(id, region);
        Ok(())
    }

    pub fn unprotect(&mut self, id: i32) -> Result<(), ApiError> {
        self.regions
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| ApiError::NotFound(format!("id {id} is not protected")))
    }

    fn check_idle(&self) -> Result<(), ApiError> {
        match &self.open {
            None => Ok(()),
            Some(Open::Checkpoint { part, .. }) => Err(ApiError::State(format!(
                "checkpoint {} is open: call ckpt_checkpoint_end() first",
                part.set()
            ))),
            Some(Open::Restart { set }) => Err(ApiError::State(format!(
                "restart from {set} is open: call ckpt_restart_end() first"
            ))),
        }
    }

    /// Write every protected region into checkpoint `name`, `version`.
    pub fn checkpoint(&mut self, name: &str, version: i32) -> Result<(), ApiError> {
        self.check_idle()?;
        let set = set_name(name, version)?;
        let started = Instant::now();
        let table = self
            .regions
            .iter()
            .map(|(id, r)| memimage::Region {
                id: *id,
                count: r.count as u64,
                elem_size: r.elem_size as u64,
            })
            .collect();
        let header = Header::new(self.ranks.rank, self.ranks.size, table)
            .map_err(|e| ApiError::Invalid(format!("checkpoint {set}: {e}")))?;
        let slices: Vec<&[u8]> = self
            .regions
            .values()
            // SAFETY: ckpt.h makes the protected memory valid until it is
            // unprotected; it is only read here, while the caller waits.
            .map(|r| unsafe { r.bytes() })
            .collect();
        let mut image = ImageReader::new(&header, slices)
            .map_err(|e| ApiError::Internal(format!("checkpoint {set}: {e}")))?;
        let mut part = Part::join(&self.store, &self.job, &set, self.ranks)?;
        part.write_file(&mem_rel(self.ranks.rank), &mut image)?;
        let finished = part.finish()?;
        self.ended(set, finished, started)
    }

    /// This rank's part of `set` ended: keep its lock, tell the drain.
    fn ended(&mut self, set: SetName, f: Finished, started: Instant) -> Result<(), ApiError> {
        let complete = f.manifest.is_some();
        self.held.retain(|h| !h.is_settled());
        if !complete {
            self.held.push(f.held);
        }
        self.last = Some(set.clone());
        self.need.checkpointed(started, Instant::now());
        if complete {
            self.tell_drain(&set)?;
        }
        Ok(())
    }

    fn tell_drain(&self, set: &SetName) -> Result<(), ApiError> {
        match &self.mode {
            Mode::Embedded { drain: Some(d) } => d.notify(),
            Mode::Embedded { drain: None } => {}
            Mode::Mounted { socket } => {
                let req = Request::Committed {
                    job: self.job.clone(),
                    set: set.clone(),
                };
                Client::connect(socket)
                    .and_then(|mut c| c.call(&req))
                    .map_err(|e| {
                        ApiError::Daemon(format!(
                            "checkpoint {}/{set} is committed in the cache, but the daemon \
                             could not be told to drain it: {e}",
                            self.job
                        ))
                    })?;
            }
        }
        Ok(())
    }

    /// The newest complete version of `name` that is <= `max` (any, when
    /// `max` < 0), in the cache or on any tier.
    pub fn restart_test(&self, name: &str, max: i32) -> Result<i32, ApiError> {
        set_name(name, 0)?;
        stage::locate(&self.store, &self.tiers, &self.job)
            .iter()
            .filter_map(|l| version_of(name, &l.set))
            .filter(|v| max < 0 || *v <= max)
            .max()
            .ok_or_else(|| {
                let bound = if max < 0 {
                    String::new()
                } else {
                    format!(" with version <= {max}")
                };
                ApiError::NotFound(format!(
                    "no complete checkpoint {name:?}{bound} of job {} in the cache {}{}",
                    self.job,
                    self.store.root().display(),
                    if self.tiers.is_empty() {
                        ""
                    } else {
                        " or on any tier"
                    }
                ))
            })
    }

    /// Make `set` a complete set of the cache, staging it in if needed.
    fn ensure_local(&self, set: &SetName) -> Result<(), ApiError> {
        let state = |s: &Store| -> Result<Option<SetState>, ApiError> {
            Ok(s.info(&self.job, set)?.map(|i| i.state))
        };
        if state(&self.store)? == Some(SetState::Complete) {
            return Ok(());
        }
        rank::locked(&self.store, &self.job, || {
            match state(&self.store)? {
                Some(SetState::Complete) => return Ok(()),
                Some(SetState::Writing) => {
                    return Err(ApiError::State(format!(
                        "checkpoint {}/{set} is still being written",
                        self.job
                    )))
                }
                Some(SetState::Damaged(m)) => {
                    return Err(ApiError::Corrupt(format!(
                        "checkpoint {}/{set} is damaged: {m}",
                        self.job
                    )))
                }
                // Left over from an earlier attempt: out of the way of the
                // complete copy a tier may have.
                Some(_) if !self.tiers.is_empty() => self.store.delete_set(&self.job, set)?,
                _ => {}
            }
            if self.tiers.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "no complete checkpoint {}/{set} in the cache {} (and no tier configured)",
                    self.job,
                    self.store.root().display()
                )));
            }
            stage::stage_in(&self.store, &self.tiers, &self.job, set, &|_| {})?;
            Ok(())
        })?
    }

    /// Fill every protected region from checkpoint `name`, `version`.
    pub fn restart(&mut self, name: &str, version: i32) -> Result<(), ApiError> {
        self.check_idle()?;
        let set = set_name(name, version)?;
        self.ensure_local(&set)?;
        let m = self.store.manifest(&self.job, &set)?;
        let rel = mem_rel(self.ranks.rank);
        let entry = m.files.iter().find(|f| f.path == rel).ok_or_else(|| {
            ApiError::NotFound(format!(
                "checkpoint {}/{set} has no memory checkpoint of rank {} ({rel})",
                self.job, self.ranks.rank
            ))
        })?;
        let path = rel.under(&self.store.set_dir(&self.job, &set));
        let shown = path.display();
        let corrupt = |e: &dyn std::fmt::Display| {
            ApiError::Corrupt(format!("{shown}: {e}; checkpoint {set} is not used"))
        };
        let header = read_header(&path)?;
        header.check_file_len(entry.size).map_err(|e| corrupt(&e))?;
        if (header.rank, header.ranks) != (self.ranks.rank, self.ranks.size) {
            return Err(ApiError::Size(format!(
                "{shown}: written by rank {} of {}, but this process is rank {} of {}",
                header.rank, header.ranks, self.ranks.rank, self.ranks.size
            )));
        }
        for (id, r) in &self.regions {
            let Some(saved) = header.region(*id) else {
                return Err(ApiError::NotFound(format!(
                    "protected id {id} is not in checkpoint {set} ({shown}); nothing was copied"
                )));
            };
            if saved.bytes() != Some(r.len() as u64) {
                return Err(ApiError::Size(format!(
                    "protected id {id} is {} bytes ({} × {}), checkpoint {set} saved {} bytes \
                     ({} × {}) ({shown}); nothing was copied",
                    r.len(),
                    r.count,
                    r.elem_size,
                    saved.bytes().unwrap_or(0),
                    saved.count,
                    saved.elem_size
                )));
            }
        }
        // Every byte is checked before any is copied: a corrupt checkpoint
        // leaves the application's memory as it was.
        let engine = self.store.engine();
        let want = entry.digest();
        let found = engine.digest_file(&path, entry.chunk_size)?;
        if let Some(chunk) = want.first_mismatch(&found) {
            return Err(corrupt(&format!("chunk {chunk} fails its crc32c")));
        }
        let dest: Vec<(i32, &mut [u8])> = self
            .regions
            .iter()
            // SAFETY: ckpt.h makes the protected memory valid (and ours to
            // write during ckpt_restart) until it is unprotected.
            .map(|(id, r)| (*id, unsafe { r.bytes_mut() }))
            .collect();
        let mut scatter = Scatter::new(&header, dest)
            .map_err(|e| ApiError::Internal(format!("checkpoint {set}: {e}")))?;
        let again = engine.read_file(&path, entry.chunk_size, &mut |off, bytes| {
            scatter.put(off, bytes);
            Ok(())
        })?;
        if want.first_mismatch(&again).is_some() {
            return Err(corrupt(
                &"it changed while being read (the protected regions may hold part of it)",
            ));
        }
        Ok(())
    }

    pub fn checkpoint_begin(&mut self, name: &str, version: i32) -> Result<(), ApiError> {
        self.check_idle()?;
        let set = set_name(name, version)?;
        let started = Instant::now();
        let part = Part::join(&self.store, &self.job, &set, self.ranks)?;
        self.open = Some(Open::Checkpoint {
            part,
            routed: BTreeSet::new(),
            started,
        });
        Ok(())
    }

    /// Where `file` goes (checkpoint) or is (restart).
    pub fn route_file(&mut self, file: &str) -> Result<PathBuf, ApiError> {
        let rel = route_rel(file)?;
        match &mut self.open {
            None => Err(ApiError::State(format!(
                "cannot route {file:?}: no checkpoint or restart is open \
                 (ckpt_checkpoint_begin() or ckpt_restart_begin() first)"
            ))),
            Some(Open::Checkpoint { part, routed, .. }) => {
                let path = part.prepare(&rel)?;
                routed.insert(rel);
                Ok(path)
            }
            Some(Open::Restart { set }) => Ok(rel.under(&self.store.set_dir(&self.job, set))),
        }
    }

    pub fn checkpoint_end(&mut self, success: bool) -> Result<(), ApiError> {
        let Some(Open::Checkpoint {
            mut part,
            routed,
            started,
        }) = self.take_open(true)
        else {
            return Err(ApiError::State(
                "ckpt_checkpoint_end() without ckpt_checkpoint_begin()".into(),
            ));
        };
        if !success {
            part.abandon()?;
            return Ok(());
        }
        let set = part.set().clone();
        for rel in &routed {
            if rel.under(part.dir()).is_file() {
                part.seal(rel)?;
            }
        }
        let finished = part.finish()?;
        self.ended(set, finished, started)
    }

    /// Take the open checkpoint (`checkpoint`) or restart, if that is what
    /// is open; anything else stays.
    fn take_open(&mut self, checkpoint: bool) -> Option<Open> {
        let matches = match &self.open {
            Some(Open::Checkpoint { .. }) => checkpoint,
            Some(Open::Restart { .. }) => !checkpoint,
            None => false,
        };
        if matches {
            self.open.take()
        } else {
            None
        }
    }

    pub fn restart_begin(&mut self, name: &str, version: i32) -> Result<(), ApiError> {
        self.check_idle()?;
        let set = set_name(name, version)?;
        self.ensure_local(&set)?;
        let report = self.store.verify(&self.job, &set)?;
        if !report.ok() {
            let problems: Vec<String> = report.problems.iter().map(|p| format!("{p:?}")).collect();
            return Err(ApiError::Corrupt(format!(
                "checkpoint {}/{set} fails verification: {}",
                self.job,
                problems.join("; ")
            )));
        }
        self.open = Some(Open::Restart { set });
        Ok(())
    }

    pub fn restart_end(&mut self) -> Result<(), ApiError> {
        match self.take_open(false) {
            Some(_) => Ok(()),
            None => Err(ApiError::State(
                "ckpt_restart_end() without ckpt_restart_begin()".into(),
            )),
        }
    }

    pub fn need_checkpoint(&mut self) -> bool {
        let a = &self.cfg.api;
        self.need.ask(
            Rules {
                interval: a.interval,
                seconds: a.seconds,
                overhead: a.overhead,
            },
            Instant::now(),
        )
    }

    /// Until the last set this process ended its part of is complete (every
    /// rank ended its part) and on every configured tier: at once for a
    /// single rank with no tier.
    pub fn wait(&mut self) -> Result<(), ApiError> {
        let Some(set) = self.last.clone() else {
            return Ok(());
        };
        if let Mode::Embedded { drain: Some(d) } = &self.mode {
            d.notify();
        }
        let timeout = duration(&self.cfg.api.wait_timeout);
        let deadline = Instant::now() + timeout;
        loop {
            match self.safe_everywhere(&set)? {
                None => return Ok(()),
                Some(why) if Instant::now() >= deadline => {
                    return Err(ApiError::Timeout(format!(
                        "checkpoint {}/{set} is not safe after {}: {why}",
                        self.job,
                        humantime::format_duration(timeout)
                    )))
                }
                Some(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// `None` when `set` is complete and on every tier, else what it
    /// waits for.
    fn safe_everywhere(&self, set: &SetName) -> Result<Option<String>, ApiError> {
        let job = &self.job;
        match self.store.info(job, set)?.map(|i| i.state) {
            Some(SetState::Complete) => {
                if self.store.drained_everywhere(job, set) {
                    return Ok(None);
                }
                let meta = self.store.meta_dir(job, set);
                let pending: Vec<String> = self
                    .store
                    .options()
                    .required_tiers
                    .iter()
                    .filter(|t| !drain::journal::is_done(&meta, t))
                    .map(|t| {
                        let p = drain::journal::load(&meta, t);
                        match p.last_error {
                            Some(e) => format!("not yet on tier {t} (last error: {e})"),
                            None => format!("not yet on tier {t}"),
                        }
                    })
                    .collect();
                Ok(Some(pending.join("; ")))
            }
            Some(SetState::Writing) => Ok(Some("other ranks have not ended their part".into())),
            Some(SetState::Abandoned) => Err(ApiError::State(format!(
                "checkpoint {job}/{set} was abandoned (a rank gave up or died); it will never be safe"
            ))),
            Some(s) => Err(ApiError::State(format!(
                "checkpoint {job}/{set} is {}",
                s.label()
            ))),
            // Gone from the cache: drained and then evicted, or removed.
            None => {
                let everywhere = self.tiers.iter().all(|t| {
                    t.sets(job)
                        .map(|s| s.iter().any(|s| &s.set == set))
                        .unwrap_or(false)
                });
                if everywhere {
                    Ok(None)
                } else {
                    Err(ApiError::NotFound(format!(
                        "checkpoint {job}/{set} is neither in the cache nor on every tier"
                    )))
                }
            }
        }
    }

    /// Abandon what is open, forget the regions, wait (up to
    /// api.finalize_timeout) for the sets of this process to complete and,
    /// in embedded mode, for the job's sets to drain; stop the drain.
    pub fn finalize(mut self) -> Result<(), ApiError> {
        if let Some(Open::Checkpoint { part, .. }) = self.open.take() {
            part.abandon()?;
        }
        self.regions.clear();
        let timeout = duration(&self.cfg.api.finalize_timeout);
        let deadline = Instant::now() + timeout;
        let result = loop {
            self.held.retain(|h| !h.is_settled());
            let undrained = match &self.mode {
                Mode::Embedded { drain: Some(d) } => {
                    let (pending, failed) = d.outstanding(Some(&self.job));
                    pending.saturating_sub(failed)
                }
                _ => 0,
            };
            if self.held.is_empty() && undrained == 0 {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(ApiError::Timeout(format!(
                    "job {}: after {}, {} checkpoint(s) still wait for other ranks and {} \
                     for the drain; they drain on the next start of a daemon or library on \
                     the cache {}",
                    self.job,
                    humantime::format_duration(timeout),
                    self.held.len(),
                    undrained,
                    self.store.root().display()
                )));
            }
            std::thread::sleep(POLL);
        };
        if let Mode::Embedded { drain: Some(d) } = &self.mode {
            d.shutdown();
        }
        result
    }
}

/// Is a daemon answering on `socket`?
fn probe(socket: &Path) -> Result<(), libckpt::control::ControlError> {
    let mut c = Client::connect(socket)?;
    c.set_timeout(Some(PROBE_TIMEOUT))?;
    c.call(&Request::Status).map(|_| ())
}

fn read_header(path: &Path) -> Result<Header, ApiError> {
    let corrupt = |e: &dyn std::fmt::Display| ApiError::Corrupt(format!("{}: {e}", path.display()));
    let f = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ApiError::NotFound(format!("{}: {e}", path.display()))
        } else {
            ApiError::Io(format!("opening {}: {e}", path.display()))
        }
    })?;
    let mut fixed = Vec::new();
    (&f).take(memimage::FIXED_HEADER as u64)
        .read_to_end(&mut fixed)
        .map_err(|e| ApiError::Io(format!("reading {}: {e}", path.display())))?;
    let need = Header::needed(&fixed).map_err(|e| corrupt(&e))?;
    let mut all = fixed;
    (&f).take((need - all.len()) as u64)
        .read_to_end(&mut all)
        .map_err(|e| ApiError::Io(format!("reading {}: {e}", path.display())))?;
    Header::decode(&all).map_err(|e| corrupt(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        let s = set_name("heat", 42).unwrap();
        assert_eq!(s.as_str(), "heat.v0000000042");
        assert_eq!(version_of("heat", &s), Some(42));
        assert_eq!(version_of("hea", &s), None);
        assert_eq!(
            version_of("heat.v", &SetName::new("heat.v.v0000000001").unwrap()),
            Some(1)
        );
        assert!(set_name("heat", -1).is_err());
        assert!(set_name("", 1).is_err());
        assert!(set_name("a/b", 1).is_err());
        assert_eq!(set_name("x", i32::MAX).unwrap().as_str(), "x.v2147483647");
    }

    #[test]
    fn routes() {
        assert_eq!(route_rel("a/b.dat").unwrap().as_str(), "a/b.dat");
        assert_eq!(route_rel("./b.dat").unwrap().as_str(), "b.dat");
        assert_eq!(route_rel("/scratch/run/b.dat").unwrap().as_str(), "b.dat");
        for bad in ["", "../x", "a/../b", "/", "/a/..", "a//b"] {
            assert!(route_rel(bad).is_err(), "{bad:?}");
        }
    }
}
