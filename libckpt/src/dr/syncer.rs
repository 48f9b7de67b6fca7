//! Making received chunks durable off the request path.
//!
//! A chunk is written to a temp name and handed here; a few threads fsync
//! it and rename it to its final name. The connection that received it
//! answers at once, so the client's next chunks arrive while earlier ones
//! are being synced, and concurrent fsyncs share the filesystem's journal
//! commits instead of paying one each, in turn.
//!
//! What still holds: a chunk is under its final name only once its bytes
//! are durable (a killed or power-cut server never leaves a half chunk
//! there), and [`Syncer::settle`] waits for every chunk handed in so far,
//! which the server does before it writes a set record naming them. A
//! chunk whose sync fails is removed; the record's check then finds it
//! missing and the client sends it again.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::durable::{IoContext, PathError};

/// Threads that sync; concurrent fsyncs are what make the batching work.
const THREADS: usize = 4;
/// Chunks handed in and not yet synced, beyond which `submit` waits: this
/// bounds the dirty bytes a fast client can pile up in the page cache.
const QUEUE: usize = 32;

/// One chunk to make durable.
pub struct Job {
    pub file: File,
    pub tmp: PathBuf,
    pub path: PathBuf,
}

/// Directories whose entries changed (by a rename into place) and are not
/// synced yet: the chunk store syncs them before a set record.
pub type Dirty = Arc<Mutex<BTreeSet<PathBuf>>>;

#[derive(Default)]
struct State {
    /// Final paths of the chunks submitted and not yet synced (or failed).
    pending: HashSet<PathBuf>,
}

pub struct Syncer {
    dirty: Dirty,
    tx: Option<SyncSender<Job>>,
    state: Arc<(Mutex<State>, Condvar)>,
    threads: Vec<JoinHandle<()>>,
}

impl Syncer {
    pub fn start(dirty: Dirty) -> Syncer {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let threads = (0..THREADS)
            .filter_map(|i| {
                let (rx, state, dirty) = (rx.clone(), state.clone(), dirty.clone());
                std::thread::Builder::new()
                    .name(format!("chunk-sync-{i}"))
                    .spawn(move || worker(&rx, &state, &dirty))
                    .map_err(|e| tracing::warn!(error = %e, "cannot start a chunk sync thread"))
                    .ok()
            })
            .collect::<Vec<_>>();
        Syncer {
            dirty,
            // Without a thread, `submit` syncs in the caller.
            tx: (!threads.is_empty()).then_some(tx),
            state,
            threads,
        }
    }

    /// Make `job` durable under its final name, now or soon.
    pub fn submit(&self, job: Job) {
        self.lock().pending.insert(job.path.clone());
        let job = match &self.tx {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        let path = job.path.clone();
        finish(job, &self.dirty);
        done(&self.state, &path);
    }

    /// Whether the chunk at `path` is on its way there.
    pub fn is_pending(&self, path: &Path) -> bool {
        self.lock().pending.contains(path)
    }

    /// Wait until every chunk submitted so far is synced (or removed).
    pub fn settle(&self) {
        let (_, cv) = &*self.state;
        let mut s = self.lock();
        while !s.pending.is_empty() {
            s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the channel ends the threads once the queue is empty.
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn done(state: &(Mutex<State>, Condvar), path: &Path) {
    let (m, cv) = state;
    let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
    s.pending.remove(path);
    if s.pending.is_empty() {
        cv.notify_all();
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, state: &(Mutex<State>, Condvar), dirty: &Dirty) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(job) = job else { return };
        let path = job.path.clone();
        finish(job, dirty);
        done(state, &path);
    }
}

/// fsync, then rename into place; on failure remove the temp file.
fn finish(job: Job, dirty: &Dirty) {
    let r = (|| -> Result<(), PathError> {
        job.file.sync_all().at("syncing", &job.tmp)?;
        drop(job.file);
        fs::rename(&job.tmp, &job.path).at("renaming into place", &job.path)
    })();
    match r {
        Ok(()) => {
            if let Some(dir) = job.path.parent() {
                dirty
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(dir.to_owned());
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "a received chunk could not be made durable; it will be asked for again");
            let _ = fs::remove_file(&job.tmp);
        }
    }
}
