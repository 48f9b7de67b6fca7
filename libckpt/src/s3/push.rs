//! Pushing a set to S3.
//!
//! A reader thread reads the set's pieces from the cache (each checked
//! against the manifest's crc32c) and hashes them; up to
//! `parallel` pieces are then in flight at once, each on its own way:
//!
//! - a piece some record of the job already names, or that an earlier
//!   piece of this push claimed, is not sent;
//! - else a HEAD asks whether the bucket holds it (another job's set, or
//!   an interrupted push of this one brought it); if so it is not sent;
//! - else it is compressed (zstd where it pays) on the rayon pool, paced
//!   by the rate limiter, and PUT (in parts above the multipart threshold).
//!
//! Under `auto` the zstd level follows the share of the uploads' time
//! that compression takes, window by window of [`WINDOW_PIECES`] pieces
//! sent ([`Adaptive::observe_slots`]): it falls while the node's cores
//! hold the push up, and rises while the link or the store does.
//!
//! Then the set record goes up, last: the set is complete on S3 exactly
//! when its record exists, and it names only chunks this push saw there.
//! An in-flight marker written first, and removed after, lists the chunks
//! the push relies on without sending, so a concurrent retention sweep
//! leaves them alone (see [`super::marker`]).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};

use super::marker::Marker;
use super::{S3Tier, TIER};
use crate::dr::blob::{self, ChunkHash};
use crate::dr::level::Adaptive;
use crate::dr::piece::{self, ReadPiece};
use crate::dr::record::SetRecord;
use crate::manifest::Manifest;
use crate::rate::RateLimiter;
use crate::tier::{PushReport, Source, TierError};

/// Raw bytes the reader hashes at once.
const BATCH_BYTES: usize = 8 << 20;
const BATCH_PIECES: usize = 64;
/// Bytes of pieces in flight at most, whatever `parallel` says.
const MAX_INFLIGHT_BYTES: usize = 256 << 20;
/// Pieces sent between two looks at the `auto` level.
const WINDOW_PIECES: u32 = 32;

/// The zstd level, and where the current window's time went.
struct Level {
    adaptive: Adaptive,
    /// Windows completed in this push.
    windows: u32,
    pieces: u32,
    compressing: Duration,
    sending: Duration,
}

impl Level {
    fn now(level: &Mutex<Level>) -> i32 {
        level
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .adaptive
            .level()
    }

    /// One piece sent: `compressing` from handing it to the compressor to
    /// having its bytes, `sending` from then until the server had them.
    fn sent(level: &Mutex<Level>, compressing: Duration, sending: Duration) {
        let mut l = level.lock().unwrap_or_else(|p| p.into_inner());
        l.pieces += 1;
        l.compressing += compressing;
        l.sending += sending;
        if l.pieces < WINDOW_PIECES {
            return;
        }
        let (c, s) = (l.compressing, l.sending);
        // The first window says little of the link: every slot hands its
        // piece to the compressor at once while nothing is being sent yet
        // (in a push capped at 16 MiB/s on loopback, compressing took a
        // quarter of the first window's time and under 3 % of the later
        // ones').
        if l.windows > 0 {
            if let Some(next) = l.adaptive.observe_slots(c, s) {
                tracing::debug!(level = next, compressing = ?c, sending = ?s, "S3 compression level adjusted");
            }
        }
        l.windows += 1;
        l.pieces = 0;
        l.compressing = Duration::ZERO;
        l.sending = Duration::ZERO;
    }
}

/// What became of one piece.
enum Outcome {
    /// Named by a record, claimed by an earlier piece, or found by HEAD.
    Skipped { found: bool },
    /// Uploaded: the bytes that crossed.
    Sent(u64),
}

struct Done {
    file: usize,
    index: usize,
    hash: ChunkHash,
    outcome: Outcome,
}

pub(super) fn push(
    tier: &S3Tier,
    src: &Source<'_>,
    limiter: &RateLimiter,
) -> Result<PushReport, TierError> {
    let m = src.manifest;
    let pieces: u64 = m.files.iter().map(piece::count).sum();
    let known = match tier.rt.block_on(prepare(tier, m))? {
        Prepared::AlreadyThere => {
            return Ok(PushReport {
                skipped: pieces,
                files: m.files.len() as u64,
                ..PushReport::default()
            })
        }
        Prepared::Known(k) => k,
    };
    // The marker goes up before anything relies on what is there.
    let marker_key = tier.layout.inflight(&m.job, &m.set);
    let started = match tier.rt.block_on(tier.get(&marker_key))? {
        // A resumed push keeps the first attempt's start, so the chunks
        // that attempt uploaded stay protected.
        Some(b) => Marker::parse(&b)
            .map(|old| old.started)
            .unwrap_or_else(|_| SystemTime::now()),
        None => SystemTime::now(),
    };
    let mut relied: Vec<ChunkHash> = known.iter().copied().collect();
    relied.sort();
    tier.rt
        .block_on(tier.put(&marker_key, Marker::new(started, relied.clone()).to_bytes()))?;

    let mut report = PushReport::default();
    let mut chunks: Vec<Vec<ChunkHash>> = m
        .files
        .iter()
        .map(|f| vec![ChunkHash([0; 32]); piece::count(f) as usize])
        .collect();
    let mut found = Vec::new();
    let max_piece = m
        .files
        .iter()
        .map(|f| f.chunk_size.min(piece::MAX_PIECE as u64) as usize)
        .max()
        .unwrap_or(1)
        .max(1);
    let parallel = tier
        .opts
        .parallel
        .clamp(1, (MAX_INFLIGHT_BYTES / max_piece).max(1));
    let claimed = Mutex::new(HashSet::new());
    let level = Mutex::new(Level {
        adaptive: tier.level.start(),
        windows: 0,
        pieces: 0,
        compressing: Duration::ZERO,
        sending: Duration::ZERO,
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<ReadPiece>(parallel * 2);
    let sent = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            piece::read_batches(src, BATCH_BYTES, BATCH_PIECES, &mut |batch| {
                batch.into_iter().all(|p| tx.blocking_send(p).is_ok())
            })
        });
        let sent = tier.rt.block_on(async {
            let pieces =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|p| (p, rx)) },
                );
            pieces
                .map(|p| one(tier, p, &known, &claimed, &level, limiter))
                .buffer_unordered(parallel)
                .try_for_each(|d| {
                    if let Some(slot) = chunks.get_mut(d.file).and_then(|v| v.get_mut(d.index)) {
                        *slot = d.hash;
                    }
                    match d.outcome {
                        Outcome::Skipped { found: f } => {
                            report.skipped += 1;
                            if f {
                                found.push(d.hash);
                            }
                        }
                        Outcome::Sent(n) => report.bytes_sent += n,
                    }
                    futures::future::ready(Ok(()))
                })
                .await
        });
        // On failure the stream, and with it the channel, is gone: the
        // reader stops at its next piece.
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(TierError::local(&src.dir, "the reader thread panicked")));
        match read {
            Ok(bytes) => report.bytes_read = bytes,
            // A chunk corrupt in the cache is the cause of everything else.
            Err(e) => return Err(e),
        }
        sent
    });
    sent?;

    tier.rt.block_on(async {
        if !found.is_empty() {
            // Chunks found by asking are relied on too: say so, then make
            // sure a sweep did not take them in between.
            relied.extend(found.iter().copied());
            tier.put(&marker_key, Marker::new(started, relied).to_bytes())
                .await?;
            for h in &found {
                if !tier.exists(&tier.layout.chunk(h)).await? {
                    return Err(TierError::Unavailable {
                        tier: TIER.into(),
                        message: format!(
                            "{}: chunk {h} vanished during the push (a retention sweep \
                             elsewhere); the push will be retried",
                            tier.at(&tier.layout.chunk(h))
                        ),
                    });
                }
            }
        }
        let record = SetRecord {
            manifest: m.clone(),
            chunks,
        }
        .to_bytes();
        report.bytes_sent += record.len() as u64;
        tier.put(&tier.layout.set(&m.job, &m.set), record).await?;
        tier.delete_key(&marker_key).await
    })?;
    report.files = m.files.len() as u64;
    let zstd_level = Level::now(&level);
    tier.level.remember(zstd_level);
    tracing::info!(
        job = %m.job, set = %m.set, url = %tier.opts.url, report = ?report, zstd_level,
        "set pushed to S3"
    );
    Ok(report)
}

enum Prepared {
    /// This very set is complete on S3 already.
    AlreadyThere,
    /// Chunks the job's records on S3 name: there, without asking.
    Known(HashSet<ChunkHash>),
}

async fn prepare(tier: &S3Tier, m: &Manifest) -> Result<Prepared, TierError> {
    let mut known = HashSet::new();
    for set in tier.set_names(&m.job).await? {
        match tier.record(&m.job, &set).await {
            Ok(Some(r)) if set == m.set && r.manifest.files == m.files => {
                return Ok(Prepared::AlreadyThere)
            }
            Ok(Some(r)) if set != m.set => known.extend(r.chunks.into_iter().flatten()),
            Ok(_) => {}
            // This push replaces a damaged record of its own set; another
            // set's is only not relied on.
            Err(e @ TierError::Manifest { .. }) => {
                tracing::warn!(error = %e, "not relying on an unreadable set record on S3")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Prepared::Known(known))
}

async fn one(
    tier: &S3Tier,
    p: ReadPiece,
    known: &HashSet<ChunkHash>,
    claimed: &Mutex<HashSet<ChunkHash>>,
    level: &Mutex<Level>,
    limiter: &RateLimiter,
) -> Result<Done, TierError> {
    let done = |outcome| Done {
        file: p.file,
        index: p.index,
        hash: p.hash,
        outcome,
    };
    if known.contains(&p.hash) {
        return Ok(done(Outcome::Skipped { found: false }));
    }
    let first = claimed.lock().map(|mut c| c.insert(p.hash)).unwrap_or(true);
    if !first {
        return Ok(done(Outcome::Skipped { found: false }));
    }
    let key = tier.layout.chunk(&p.hash);
    if tier.exists(&key).await? {
        return Ok(done(Outcome::Skipped { found: true }));
    }
    let (file, index, hash) = (p.file, p.index, p.hash);
    let zstd = Level::now(level);
    let handed = Instant::now();
    let (otx, orx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let crc = p.crc.unwrap_or_else(|| crc32c::crc32c(&p.raw));
        let _ = otx.send(
            blob::seal_hashed(&p.raw, p.hash, crc, zstd).map(|(h, data)| {
                let mut b = Vec::with_capacity(blob::CHUNK_HEADER_LEN + data.len());
                b.extend_from_slice(&h.encode());
                b.extend_from_slice(&data);
                b
            }),
        );
    });
    let blob = orx
        .await
        .map_err(|_| TierError::local(std::path::Path::new(key.as_ref()), "compression stopped"))?
        .map_err(|e| TierError::local(std::path::Path::new(key.as_ref()), e))?;
    let compressed = Instant::now();
    let len = blob.len() as u64;
    let wait = limiter.reserve(len);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    tier.put(&key, blob).await?;
    Level::sent(level, compressed - handed, compressed.elapsed());
    tracing::debug!(chunk = %hash, bytes = len, "chunk uploaded to S3");
    Ok(Done {
        file,
        index,
        hash,
        outcome: Outcome::Sent(len),
    })
}
