//! Pushing a set to the DR site.
//!
//! The set's pieces are read through [`Source::for_each_chunk`] (which
//! checks each against the manifest's crc32c) in batches of up to 32 MiB,
//! and hashed, by a reader thread that keeps one batch ahead of the link.
//! Per batch: ask the server which pieces it lacks,
//! compress those (in parallel) and send them with a window of unanswered
//! chunks, so a long link stays busy. Last, the set record; the server
//! writes it only once it holds every chunk it names.
//!
//! A broken connection is re-opened (with backoff, within the retry
//! budget, which starts over whenever a chunk gets through) and the batch
//! goes on from where it was: what the server acknowledged is not asked
//! about again, and what it stored but could not acknowledge is found by
//! asking again. So no chunk is sent twice, whether another set already
//! brought it or a previous connection did.

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc;

use rayon::prelude::*;

use super::blob::{self, BlobError, ChunkHash, ChunkHeader};
use super::client::{tier_error, DrTier, Session};
use super::conn::Conn;
use super::error::DrError;
use super::piece::{self, ReadPiece};
use super::proto::{ChunkStored, Lacking, Missing, MsgType, SetStored, MAX_LACKING_BATCH};
use super::record::SetRecord;
use crate::manifest::Manifest;
use crate::rate::RateLimiter;
use crate::tier::{PushReport, Source, TierError};

/// Raw bytes read ahead of the network, per batch.
const BATCH_BYTES: usize = 32 << 20;
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
    level: i32,
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
        level: tier.zstd_level(),
        known: HashSet::new(),
        report: PushReport::default(),
    };
    // A second pass only if chunks vanished on the server between being
    // found there and the record (a delete's sweep past its grace period).
    for _pass in 0..2 {
        let chunks = p.send_set(src)?;
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
            tracing::info!(job = %m.job, set = %m.set, report = ?p.report, "set pushed to the DR site");
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
        level: tier.zstd_level(),
        known: HashSet::new(),
        report: PushReport::default(),
    };
    p.send_set(src)?;
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
        let level = self.level;
        batch
            .par_iter_mut()
            .filter(|p| p.state == State::Todo && p.blob.is_none())
            .for_each(|p| {
                let crc = p.p.crc.unwrap_or_else(|| crc32c::crc32c(&p.p.raw));
                p.blob = Some(blob::seal_hashed(&p.p.raw, p.p.hash, crc, level));
            });
        let mut inflight = VecDeque::with_capacity(WINDOW);
        for &i in &lacking {
            let (header, data) = match &batch[i].blob {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    let path = self.manifest.files[batch[i].p.file].path.under(self.dir);
                    return Err(Step::Local(TierError::local(&path, e)));
                }
                None => continue,
            };
            let header = header.encode();
            let len = (header.len() + data.len()) as u64;
            self.limiter.take(len);
            conn.send_parts(MsgType::PutChunk, &[&header, data])?;
            self.report.bytes_sent += len;
            inflight.push_back(i);
            if inflight.len() >= WINDOW {
                self.ack(conn, batch, &mut inflight)?;
            }
        }
        while !inflight.is_empty() {
            self.ack(conn, batch, &mut inflight)?;
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
