//! Fetching a set from the DR site into a directory.
//!
//! The record gives every file's piece hashes; each file is written by
//! [`IoEngine::write_file`] from a reader that asks for a window of pieces
//! ahead and checks each one as it arrives: decompressed length, BLAKE3
//! against the record, crc32c against the manifest. A damaged piece is
//! [`TierError::Corrupt`] naming the file and chunk; a broken connection is
//! re-opened and the file goes on from the first piece not yet received.

use std::path::Path;

use super::blob::ChunkHash;
use super::client::{tier_error, DrTier, Session};
use super::conn::Conn;
use super::error::DrError;
use super::piece::{self, Piece, PieceRead, Pieces};
use super::proto::{ChunkRef, ErrorKind, MsgType, SetRef};
use super::record::{RecordError, SetRecord};
use crate::durable;
use crate::io::IoEngine;
use crate::manifest::{FileEntry, Manifest, ManifestError};
use crate::path::{JobName, SetName};
use crate::tier::TierError;

/// Pieces asked for ahead of the one being written.
const WINDOW: usize = 16;

pub(crate) fn fetch(
    tier: &DrTier,
    job: &JobName,
    set: &SetName,
    dest: &Path,
    engine: &IoEngine,
    progress: &dyn Fn(u64),
) -> Result<Manifest, TierError> {
    let mut s = tier.session();
    let got = s.run(|c| {
        c.send_json(
            MsgType::GetRecord,
            &SetRef {
                job: job.clone(),
                set: set.clone(),
            },
        )?;
        c.recv(MsgType::Record)
    });
    let bytes = match got {
        Ok(m) => m.payload,
        Err(DrError::Remote {
            kind: ErrorKind::NotFound,
            ..
        }) => {
            return Err(TierError::NotFound {
                tier: "dr".into(),
                job: job.clone(),
                set: set.clone(),
            })
        }
        Err(e) => return Err(tier_error(e)),
    };
    let bad = |source| TierError::Manifest {
        tier: "dr".into(),
        job: job.clone(),
        set: set.clone(),
        source,
    };
    let record = SetRecord::parse(&bytes).map_err(|e| match e {
        RecordError::Manifest(m) => bad(m),
        other => bad(ManifestError::Invalid {
            message: format!("its DR record: {other}"),
        }),
    })?;
    let m = &record.manifest;
    if &m.job != job || &m.set != set {
        return Err(bad(ManifestError::Invalid {
            message: format!("it describes {}/{}", m.job, m.set),
        }));
    }
    for (file, hashes) in m.files.iter().zip(&record.chunks) {
        let to = file.path.under(dest);
        if let Some(parent) = to.parent() {
            durable::create_dir_all_durable(parent, 0o700)
                .map_err(|e| TierError::local(parent, e))?;
        }
        let reader = PieceReader {
            s: &mut s,
            job,
            set,
            file,
            hashes,
            pieces: piece::pieces(file).collect(),
            sent: 0,
            got: 0,
            checker: piece::Checker::default(),
            progress,
        };
        let mut reader = PieceRead::new(reader);
        let written = engine.write_file(&to, file.mode, &mut reader, file.chunk_size);
        let failure = reader.failure.take();
        let digest = match written {
            Ok(d) => d,
            Err(e) => {
                // A `Source` error is the reader's, and it kept the reason.
                return Err(failure.unwrap_or_else(|| TierError::local(&to, e)));
            }
        };
        // Every piece was checked on arrival; this catches a reader that
        // stopped short.
        if digest.size != file.size || file.digest().first_mismatch(&digest).is_some() {
            let chunk = file.digest().first_mismatch(&digest).unwrap_or(0) as u64;
            return Err(TierError::corrupt(
                "dr",
                job,
                set,
                file,
                chunk,
                format!(
                    "{} bytes written, the manifest says {}",
                    digest.size, file.size
                ),
            ));
        }
        let _ = std::fs::File::options()
            .write(true)
            .open(&to)
            .and_then(|f| f.set_modified(file.mtime));
    }
    Ok(record.manifest)
}

/// The bytes of one file, piece by piece, checked as they arrive.
struct PieceReader<'s, 't, 'a> {
    s: &'s mut Session<'t>,
    job: &'a JobName,
    set: &'a SetName,
    file: &'a FileEntry,
    hashes: &'a [ChunkHash],
    pieces: Vec<Piece>,
    /// Pieces asked for.
    sent: usize,
    /// Pieces received and checked.
    got: usize,
    checker: piece::Checker,
    progress: &'a dyn Fn(u64),
}

impl PieceReader<'_, '_, '_> {
    fn corrupt(&self, piece: &Piece, detail: String) -> TierError {
        TierError::corrupt("dr", self.job, self.set, self.file, piece.chunk, detail)
    }

    fn hash(&self, i: usize) -> ChunkHash {
        // The record was checked to hold one hash per piece.
        self.hashes.get(i).copied().unwrap_or(ChunkHash([0; 32]))
    }

    fn fetch_piece(&mut self) -> Result<Vec<u8>, TierError> {
        let piece = self.pieces[self.got];
        loop {
            let mut conn = match self.s.take() {
                Ok(c) => c,
                Err(e) => {
                    self.s.pause(e)?;
                    continue;
                }
            };
            match self.receive(&mut conn) {
                Ok(blob) => {
                    self.s.put_back(conn);
                    return self.check(&piece, &blob);
                }
                Err(DrError::Remote {
                    kind: ErrorKind::NotFound,
                    message,
                    ..
                }) => {
                    return Err(self.corrupt(
                        &piece,
                        format!(
                            "the server has lost chunk {}: {message}",
                            self.hash(self.got)
                        ),
                    ))
                }
                Err(e) => {
                    // Whatever was asked for on the dead connection is asked
                    // for again on the next one.
                    self.sent = self.got;
                    self.s.pause(e)?;
                }
            }
        }
    }

    fn receive(&mut self, conn: &mut Conn) -> Result<Vec<u8>, DrError> {
        while self.sent < self.pieces.len() && self.sent - self.got < WINDOW {
            conn.send_json(
                MsgType::GetChunk,
                &ChunkRef {
                    hash: self.hash(self.sent),
                },
            )?;
            self.sent += 1;
        }
        Ok(conn.recv(MsgType::Chunk)?.payload)
    }

    fn check(&mut self, piece: &Piece, blob: &[u8]) -> Result<Vec<u8>, TierError> {
        let want = self.hash(self.got);
        let raw = self
            .checker
            .check(self.file, piece, want, blob)
            .map_err(|detail| self.corrupt(piece, detail))?;
        self.got += 1;
        self.s.progressed();
        (self.progress)(raw.len() as u64);
        Ok(raw)
    }
}

impl Pieces for PieceReader<'_, '_, '_> {
    fn next_piece(&mut self) -> Result<Option<Vec<u8>>, TierError> {
        if self.got == self.pieces.len() {
            return Ok(None);
        }
        self.fetch_piece().map(Some)
    }
}
