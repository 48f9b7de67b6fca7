//! Pushing a set to the DR site.
//!
//! The set's pieces are read through [`Source::for_each_chunk`] (which
//! checks each against the manifest's crc32c) in batches of up to 64 MiB,
//! and hashed, by a reader thread that keeps one batch ahead of the link.
//! Per batch: ask the server which pieces it lacks,
//! compress those (in parallel) while sending each as soon as it is ready,
//! with a window of unanswered chunks, so a long link stays busy. The zstd
//! level follows whichever of the two is slower under `auto` ([`level`]).
//! Last, the set record; the server writes it only once it holds every
//! chunk it names.
//!
//! [`level`]: super::level
//!
//! A broken connection is re-opened (with backoff, within the retry
//! budget, which starts over whenever a chunk gets through) and the batch
//! goes on from where it was: what the server acknowledged is not asked
//! about again, and what it stored but could not acknowledge is found by
//! asking again. So no chunk is sent twice, whether another set already
//! brought it or a previous connection did.

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc;
use std::time::Instant;

use rayon::prelude::*;

use super::blob::{self, BlobError, ChunkHash, ChunkHeader};
use super::client::{tier_error, DrTier, Session};
use super::conn::Conn;
use super::error::DrError;
use super::level::Adaptive;
use super::piece::{self, ReadPiece};
use super::proto::{ChunkStored, Lacking, Missing, MsgType, SetStored, MAX_LACKING_BATCH};
use super::record::SetRecord;
use crate::manifest::Manifest;
use crate::rate::RateLimiter;
use crate::tier::{PushReport, Source, TierError};

/// Raw bytes read ahead of the network, per batch. The link idles while
/// a batch's last chunks are acknowledged and the next one is queried, so
/// larger batches send faster: 64 MiB drained a 2 GiB set over loopback
/// in 5.5 s where 32 MiB took 5.9 s (bench/RESULTS.md). The cost is
/// memory: a push holds up to two batches and their compressed copies.
const BATCH_BYTES: usize = 64 << 20;
/// Pieces per batch (small pieces: keep the queries and memory bounded).
const BATCH_PIECES: usize = 2048;
/// Batches read ahead of the one being sent.
const READ_AHEAD: usize = 1;
/// Chunks sent and not yet acknowledged.
const WINDOW: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not known to be on the server yet.
    Todo,
    /// On the server (found there, acknowledged, or a duplicate).
    Done,
}

struct Pending {
    /// The manifest's crc32c in it is what the server checks the bytes
    /// against.
    p: ReadPiece,
    blob: Option<Result<(ChunkHeader, Vec<u8>), BlobError>>,
    state: State,
}

/// Where a batch's time went, for the `auto` compression level.
#[derive(Debug, Default)]
struct Timing {
    /// From the start until the last chunk was compressed.
    compressed: std::time::Duration,
    /// Spent by the sender waiting for a compressed chunk.
    starved: std::time::Duration,
    /// From the start until the last acknowledgement.
    total: std::time::Duration,
}

/// Why a batch stopped.
enum Step {
    /// The link or the server: reconnect and go on, within the budget.
    Net(DrError),
    /// Here: give up.
    Local(TierError),
}

impl From<DrError> for Step {
    fn from(e: DrError) -> Step {
        Step::Net(e)
    }
}

struct Pusher<'a> {
    s: Session<'a>,
    manifest: &'a Manifest,
    dir: &'a std::path::Path,
    limiter: &'a RateLimiter,
    compression: Adaptive,
    /// Chunks the server is known to hold.
    known: HashSet<ChunkHash>,
    report: PushReport,
}

pub(crate) fn push(
    tier: &DrTier,
    src: &Source<'_>,
    limiter: &RateLimiter,
) -> Result<PushReport, TierError> {
    let m = src.manifest;
    let mut s = tier.session();
    let pieces: u64 = m.files.iter().map(piece::count).sum();
    match tier.fetch_manifest(&mut s, &m.job, &m.set) {
        Ok(Some(have)) if have.files == m.files => {
            return Ok(PushReport {
                skipped: pieces,
                files: m.files.len() as u64,
                ..PushReport::default()
            })
        }
        Ok(_) => {}
        // A damaged record there is replaced by this push.
        Err(TierError::Manifest { source, .. }) => {
            tracing::warn!(job = %m.job, set = %m.set, error = %source, "replacing a damaged set record on the DR site");
        }
        Err(e) => return Err(e),
    }
    let mut p = Pusher {
        s,
        manifest: m,
        dir: &src.dir,
        limiter,
        compression: tier.compression(),
        known: HashSet::new(),
        report: PushReport::default(),
    };
    // A second pass only if chunks vanished on the server between being
    // found there and the record (a delete's sweep past its grace period).
    for _pass in 0..2 {
        let chunks = p.send_set(src);
        tier.remember_level(p.compression.level());
        let chunks = chunks?;
        let record = SetRecord {
            manifest: m.clone(),
            chunks,
        }
        .to_bytes();
        let stored: SetStored =
            p.s.run(|c| {
                c.send(MsgType::PutSet, &record)?;
                c.recv_json(MsgType::SetStored)
            })
            .map_err(tier_error)?;
        p.report.bytes_sent += record.len() as u64;
        if stored.stored {
            p.report.files = m.files.len() as u64;
            tracing::info!(job = %m.job, set = %m.set, report = ?p.report,
                zstd_level = p.compression.level(), "set pushed to the DR site");
            return Ok(p.report);
        }
        tracing::warn!(
            job = %m.job, set = %m.set,
            missing = stored.missing.len(),
            "the DR server lacks chunks it reported holding; sending them again"
        );
        p.known.clear();
    }
    Err(TierError::Unavailable {
        tier: "dr".into(),
        message: format!(
            "{}/{}: the server still lacks chunks after they were sent again",
            m.job, m.set
        ),
    })
}

/// The early drain: send the chunks of sealed files the server lacks,
/// without a set record. The push of the completed set finds them there.
pub(crate) fn push_chunks(
    tier: &DrTier,
    src: &Source<'_>,
    limiter: &RateLimiter,
) -> Result<PushReport, TierError> {
    let mut p = Pusher {
        s: tier.session(),
        manifest: src.manifest,
        dir: &src.dir,
        limiter,
        compression: tier.compression(),
        known: HashSet::new(),
        report: PushReport::default(),
    };
    let sent = p.send_set(src);
    tier.remember_level(p.compression.level());
    sent?;
    p.report.files = src.manifest.files.len() as u64;
    Ok(p.report)
}

impl Pusher<'_> {
    /// Send every piece the server lacks; the hashes of every file's pieces.
    ///
    /// A reader thread reads, checks and hashes the next batch while this
    /// one is queried, compressed and sent: the disk, the hashing and the
    /// link each wait less on the others.
    fn send_set(&mut self, src: &Source<'_>) -> Result<Vec<Vec<ChunkHash>>, TierError> {
        let m = self.manifest;
        let mut out: Vec<Vec<ChunkHash>> = m
            .files
            .iter()
            .map(|f| vec![ChunkHash([0; 32]); piece::count(f) as usize])
            .collect();
        let (tx, rx) = mpsc::sync_channel::<Vec<Pending>>(READ_AHEAD);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                piece::read_batches(src, BATCH_BYTES, BATCH_PIECES, &mut |batch| {
                    let batch = batch
                        .into_iter()
                        .map(|p| Pending {
                            p,
                            blob: None,
                            state: State::Todo,
                        })
                        .collect();
                    tx.send(batch).is_ok()
                })
            });
            let mut sent = Ok(());
            for mut batch in rx.iter() {
                sent = self.flush(&mut batch, &mut out);
                if sent.is_err() {
                    break;
                }
            }
            // The reader stops at its next batch once nobody takes it.
            drop(rx);
            let read = reader
                .join()
                .unwrap_or_else(|_| Err(TierError::local(&src.dir, "the reader thread panicked")));
            match read {
                Ok(bytes) => self.report.bytes_read += bytes,
                // A refused chunk (corrupt in the cache) is the cause.
                Err(e) => return Err(e),
            }
            sent
        })?;
        Ok(out)
    }

    fn flush(
        &mut self,
        batch: &mut Vec<Pending>,
        out: &mut [Vec<ChunkHash>],
    ) -> Result<(), TierError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut queued = HashSet::new();
        for p in batch.iter_mut() {
            let Some(slot) = out.get_mut(p.p.file).and_then(|v| v.get_mut(p.p.index)) else {
                return Err(TierError::local(
                    &self.manifest.files[p.p.file].path.under(self.dir),
                    "more chunks than the manifest lists",
                ));
            };
            *slot = p.p.hash;
            if self.known.contains(&p.p.hash) || !queued.insert(p.p.hash) {
                p.state = State::Done;
                self.report.skipped += 1;
            }
        }
        loop {
            let mut conn = match self.s.take() {
                Ok(c) => c,
                Err(e) => {
                    self.s.pause(e)?;
                    continue;
                }
            };
            match self.send_batch(&mut conn, batch) {
                Ok(()) => {
                    self.s.put_back(conn);
                    break;
                }
                Err(Step::Net(e)) => {
                    drop(conn);
                    self.s.pause(e)?;
                }
                Err(Step::Local(e)) => return Err(e),
            }
        }
        batch.clear();
        Ok(())
    }

    /// One attempt at the batch over `conn`.
    fn send_batch(&mut self, conn: &mut Conn, batch: &mut [Pending]) -> Result<(), Step> {
        let todo: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].state == State::Todo)
            .collect();
        let mut lacking = Vec::new();
        for group in todo.chunks(MAX_LACKING_BATCH) {
            let hashes = group.iter().map(|&i| batch[i].p.hash).collect();
            let r: Missing =
                conn.call_json(MsgType::Lacking, &Lacking { hashes }, MsgType::Missing)?;
            let mut missing = vec![false; group.len()];
            for k in r.missing {
                match missing.get_mut(k as usize) {
                    Some(slot) => *slot = true,
                    None => {
                        return Err(Step::Net(DrError::Protocol {
                            peer: conn.peer().into(),
                            message: format!("it lacks chunk #{k} of a query of {}", group.len()),
                        }))
                    }
                }
            }
            for (k, &i) in group.iter().enumerate() {
                if missing[k] {
                    lacking.push(i);
                } else {
                    batch[i].state = State::Done;
                    self.known.insert(batch[i].p.hash);
                    self.report.skipped += 1;
                }
            }
            self.s.progressed();
        }
        let level = self.compression.level();
        // Compress on the rayon pool while this thread sends whatever is
        // ready: the link (and the receiver) work while later chunks are
        // still compressing. Blobs stay in the batch, so a retry after a
        // broken link sends them without compressing again.
        let mut work: Vec<(usize, Vec<u8>, ChunkHash, Option<u32>)> = Vec::new();
        for &i in &lacking {
            if batch[i].blob.is_none() {
                let p = &mut batch[i].p;
                work.push((i, std::mem::take(&mut p.raw), p.hash, p.crc));
            }
        }
        let mut ready: VecDeque<usize> = lacking
            .iter()
            .copied()
            .filter(|&i| batch[i].blob.is_some())
            .collect();
        let to_compress = work.len();
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        let mut timing = Timing::default();
        let sent = std::thread::scope(|scope| {
            let compressor = scope.spawn(move || {
                crate::sched::in_drain_pool(|| {
                    work.into_par_iter()
                        .for_each_with(tx, |tx, (i, raw, hash, crc)| {
                            let crc = crc.unwrap_or_else(|| crc32c::crc32c(&raw));
                            let _ = tx.send((i, blob::seal_hashed(&raw, hash, crc, level)));
                        })
                });
                started.elapsed()
            });
            let take = |batch: &mut [Pending], timing: &mut Timing| {
                let waiting = Instant::now();
                let (i, blob) = rx.recv().ok()?;
                timing.starved += waiting.elapsed();
                batch[i].blob = Some(blob);
                Some(i)
            };
            let mut inflight = VecDeque::with_capacity(WINDOW);
            let mut result = Ok(());
            while let Some(i) = ready.pop_front().or_else(|| take(batch, &mut timing)) {
                result = self.send_one(conn, batch, i, &mut inflight);
                if result.is_err() {
                    break;
                }
            }
            while result.is_ok() && !inflight.is_empty() {
                result = self.ack(conn, batch, &mut inflight);
            }
            // After a failure, keep every blob for the retry.
            while take(batch, &mut timing).is_some() {}
            timing.compressed = match compressor.join() {
                Ok(d) => d,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            result
        });
        if to_compress > 0 && sent.is_ok() {
            timing.total = started.elapsed();
            if let Some(next) =
                self.compression
                    .observe(timing.compressed, timing.starved, timing.total)
            {
                tracing::debug!(level = next, ?timing, "DR compression level adjusted");
            }
        }
        sent
    }

    /// Send chunk `i` of the batch, taking acknowledgements to keep at
    /// most [`WINDOW`] unanswered.
    fn send_one(
        &mut self,
        conn: &mut Conn,
        batch: &mut [Pending],
        i: usize,
        inflight: &mut VecDeque<usize>,
    ) -> Result<(), Step> {
        let (header, data) = match &batch[i].blob {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                let path = self.manifest.files[batch[i].p.file].path.under(self.dir);
                return Err(Step::Local(TierError::local(&path, e)));
            }
            None => return Ok(()),
        };
        let header = header.encode();
        let len = (header.len() + data.len()) as u64;
        self.limiter.take(len);
        conn.send_parts(MsgType::PutChunk, &[&header, data])?;
        self.report.bytes_sent += len;
        inflight.push_back(i);
        if inflight.len() >= WINDOW {
            self.ack(conn, batch, inflight)?;
        }
        Ok(())
    }

    /// Take the answer to the oldest unanswered chunk.
    fn ack(
        &mut self,
        conn: &mut Conn,
        batch: &mut [Pending],
        inflight: &mut VecDeque<usize>,
    ) -> Result<(), Step> {
        let r: ChunkStored = conn.recv_json(MsgType::ChunkStored)?;
        let Some(i) = inflight.pop_front() else {
            return Ok(());
        };
        let p = &mut batch[i];
        if r.hash != p.p.hash {
            return Err(Step::Net(DrError::Protocol {
                peer: conn.peer().into(),
                message: format!("acknowledged chunk {} when {} was next", r.hash, p.p.hash),
            }));
        }
        p.state = State::Done;
        p.p.raw = Vec::new();
        p.blob = None;
        self.known.insert(p.p.hash);
        self.s.progressed();
        Ok(())
    }
}
