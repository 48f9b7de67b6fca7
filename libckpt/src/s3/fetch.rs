//! Restoring a set from S3 into a directory.
//!
//! The record names every piece of every file. Several files are fetched
//! at once ([`par_files`]); for each, `parallel` GETs run ahead of the
//! writer, in order, and each piece is checked as it is written (blob
//! header, BLAKE3 against the record, crc32c against the manifest, by
//! [`Checker`]). A damaged or missing chunk is [`TierError::Corrupt`]
//! naming the file, chunk and object key, so the caller can turn to the
//! next tier.

use std::path::Path;

use futures::StreamExt;

use super::{S3Tier, TIER};
use crate::dr::blob::ChunkHash;
use crate::dr::piece::{self, Checker, Piece, PieceRead, Pieces};
use crate::durable;
use crate::io::IoEngine;
use crate::manifest::{FileEntry, Manifest};
use crate::path::{JobName, SetName};
use crate::tier::{par_files, TierError};

pub(super) fn fetch(
    tier: &S3Tier,
    job: &JobName,
    set: &SetName,
    dest: &Path,
    engine: &IoEngine,
    progress: &dyn Fn(u64),
) -> Result<Manifest, TierError> {
    let record = tier
        .rt
        .block_on(tier.record(job, set))?
        .ok_or_else(|| TierError::NotFound {
            tier: TIER.into(),
            job: job.clone(),
            set: set.clone(),
        })?;
    let m = &record.manifest;
    // Files in parallel share the request budget.
    let per_file = (tier.opts.parallel / m.files.len().clamp(1, 4)).max(2);
    par_files(&m.files, dest, progress, &|file, sent| {
        let fi = m
            .files
            .iter()
            .position(|f| std::ptr::eq(f, file))
            .unwrap_or(0);
        let hashes = record.chunks.get(fi).map(Vec::as_slice).unwrap_or(&[]);
        fetch_file(tier, m, file, hashes, per_file, dest, engine, sent)
    })?;
    Ok(record.manifest)
}

#[allow(clippy::too_many_arguments)]
fn fetch_file(
    tier: &S3Tier,
    m: &Manifest,
    file: &FileEntry,
    hashes: &[ChunkHash],
    parallel: usize,
    dest: &Path,
    engine: &IoEngine,
    progress: &dyn Fn(u64),
) -> Result<(), TierError> {
    let to = file.path.under(dest);
    if let Some(parent) = to.parent() {
        durable::create_dir_all_durable(parent, 0o700).map_err(|e| TierError::local(parent, e))?;
    }
    let pieces: Vec<Piece> = piece::pieces(file).collect();
    let corrupt =
        |chunk: u64, detail: String| TierError::corrupt(TIER, &m.job, &m.set, file, chunk, detail);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, TierError>>(parallel);
    let (pieces, corrupt) = (&pieces, &corrupt);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            tier.rt.block_on(async move {
                let mut gets = futures::stream::iter(pieces.iter().enumerate())
                    .map(|(i, p)| {
                        let hash = hashes.get(i).copied().unwrap_or(ChunkHash([0; 32]));
                        let key = tier.layout.chunk(&hash);
                        async move {
                            match tier.get(&key).await {
                                Ok(Some(b)) => Ok(b),
                                Ok(None) => Err(corrupt(
                                    p.chunk,
                                    format!("{} is missing from the bucket", tier.at(&key)),
                                )),
                                Err(e) => Err(e),
                            }
                        }
                    })
                    .buffered(parallel);
                while let Some(r) = gets.next().await {
                    let failed = r.is_err();
                    if tx.send(r).await.is_err() || failed {
                        break;
                    }
                }
            })
        });
        let reader = BlobReader {
            rx,
            file,
            pieces,
            hashes,
            got: 0,
            checker: Checker::default(),
            progress,
            corrupt,
            tier,
        };
        let mut reader = PieceRead::new(reader);
        let written = engine.write_file(&to, file.mode, &mut reader, file.chunk_size);
        let failure = reader.failure.take();
        // The producer stops once nobody takes its pieces.
        drop(reader);
        let _ = producer.join();
        let digest = match written {
            Ok(d) => d,
            Err(e) => return Err(failure.unwrap_or_else(|| TierError::local(&to, e))),
        };
        if digest.size != file.size || file.digest().first_mismatch(&digest).is_some() {
            let chunk = file.digest().first_mismatch(&digest).unwrap_or(0) as u64;
            return Err(corrupt(
                chunk,
                format!(
                    "{} bytes written, the manifest says {}",
                    digest.size, file.size
                ),
            ));
        }
        Ok(())
    })?;
    let _ = std::fs::File::options()
        .write(true)
        .open(&to)
        .and_then(|f| f.set_modified(file.mtime));
    Ok(())
}

/// One file's bytes, piece by piece, checked as they arrive.
struct BlobReader<'a> {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, TierError>>,
    file: &'a FileEntry,
    pieces: &'a [Piece],
    hashes: &'a [ChunkHash],
    got: usize,
    checker: Checker,
    progress: &'a dyn Fn(u64),
    corrupt: &'a (dyn Fn(u64, String) -> TierError + Sync),
    tier: &'a S3Tier,
}

impl Pieces for BlobReader<'_> {
    fn next_piece(&mut self) -> Result<Option<Vec<u8>>, TierError> {
        let Some(&piece) = self.pieces.get(self.got) else {
            return Ok(None);
        };
        let blob = match self.rx.blocking_recv() {
            Some(r) => r?,
            None => {
                return Err(TierError::Unavailable {
                    tier: TIER.into(),
                    message: format!("{}: the download stopped", self.tier.opts.url),
                })
            }
        };
        let want = self
            .hashes
            .get(self.got)
            .copied()
            .unwrap_or(ChunkHash([0; 32]));
        let raw = self
            .checker
            .check(self.file, &piece, want, &blob)
            .map_err(|detail| {
                (self.corrupt)(
                    piece.chunk,
                    format!("{}: {detail}", self.tier.at(&self.tier.layout.chunk(&want))),
                )
            })?;
        self.got += 1;
        (self.progress)(raw.len() as u64);
        Ok(Some(raw))
    }
}
