//! The receiver's request handling, apart from any socket: one message in,
//! one reply out, over the chunk store and the set records under a root.
//!
//! Every name a request carries is a [`JobName`] or [`SetName`] and every
//! manifest goes through [`Manifest::parse`] (inside
//! [`SetRecord::parse`]), so a request naming anything outside the root is
//! refused before it touches the disk. A request that fails is answered
//! with an `Error` and changes nothing.
//!
//! Writing a set record and deleting one (with the sweep of chunks it
//! leaves unreferenced) take one lock, so a sweep can never remove a chunk
//! between a record's check that the chunk exists and the record landing.
//!
//! [`JobName`]: crate::path::JobName
//! [`SetName`]: crate::path::SetName
//! [`Manifest::parse`]: crate::manifest::Manifest::parse

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::blob::ChunkHash;
use super::chunkstore::{ChunkStore, Put, PutError};
use super::error::DrError;
use super::frame::Message;
use super::proto::{
    self, ChunkRef, ChunkStored, Deleted, Empty, ErrorKind, ErrorReply, JobRef, Jobs, Lacking,
    Missing, MsgType, SetRef, SetStored, SetSummary, Sets, MAX_LACKING_BATCH,
};
use super::record::SetRecord;
use super::setstore::SetStore;
use crate::durable::PathError;
use crate::path::{JobName, SetName};

/// How the server keeps its store.
#[derive(Debug, Clone)]
pub struct RepoOptions {
    /// A delete spares unreferenced chunks used more recently than this:
    /// they may belong to a push still in flight.
    pub gc_grace: Duration,
    /// How chunks are written (O_DIRECT, buffer size).
    pub io: crate::io::IoOptions,
}

impl Default for RepoOptions {
    fn default() -> Self {
        RepoOptions {
            gc_grace: Duration::from_secs(3600),
            io: crate::io::IoOptions::default(),
        }
    }
}

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Chunks written to disk.
    pub chunks_stored: AtomicU64,
    /// Chunks sent although already held (each one is bandwidth wasted).
    pub chunks_existed: AtomicU64,
    /// Compressed bytes of the chunks written.
    pub chunk_bytes_stored: AtomicU64,
    pub sets_stored: AtomicU64,
    pub sets_deleted: AtomicU64,
    pub chunks_removed: AtomicU64,
}

/// A copy of [`Stats`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub connections: u64,
    pub auth_failures: u64,
    pub chunks_stored: u64,
    pub chunks_existed: u64,
    pub chunk_bytes_stored: u64,
    pub sets_stored: u64,
    pub sets_deleted: u64,
    pub chunks_removed: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: g(&self.connections),
            auth_failures: g(&self.auth_failures),
            chunks_stored: g(&self.chunks_stored),
            chunks_existed: g(&self.chunks_existed),
            chunk_bytes_stored: g(&self.chunk_bytes_stored),
            sets_stored: g(&self.sets_stored),
            sets_deleted: g(&self.sets_deleted),
            chunks_removed: g(&self.chunks_removed),
        }
    }
}

fn bump(a: &AtomicU64, by: u64) {
    a.fetch_add(by, Ordering::Relaxed);
}

/// The receiver's store under one root.
pub struct Repo {
    root: PathBuf,
    chunks: ChunkStore,
    sets: SetStore,
    opts: RepoOptions,
    /// Held while a record is checked and written, and while a delete
    /// removes a record and sweeps.
    records: Mutex<()>,
    stats: Stats,
}

/// A refused request: what the client is told.
struct Refusal {
    kind: ErrorKind,
    message: String,
}

fn refuse(kind: ErrorKind, message: impl Into<String>) -> Refusal {
    Refusal {
        kind,
        message: message.into(),
    }
}

impl From<PathError> for Refusal {
    fn from(e: PathError) -> Refusal {
        tracing::error!(error = %e, "DR store I/O failed");
        refuse(ErrorKind::Internal, e.to_string())
    }
}

fn reply<T: Serialize>(kind: MsgType, body: &T) -> Result<Message, Refusal> {
    Ok(Message {
        kind,
        payload: proto::encode(body),
    })
}

impl Repo {
    /// Open (creating if needed, mode 0700) the store under `root`.
    pub fn open(root: &Path, opts: RepoOptions) -> Result<Repo, DrError> {
        let at = |e: PathError| DrError::Root {
            op: e.op,
            path: e.path,
            source: e.source,
        };
        crate::durable::create_dir_all_durable(root, 0o700).map_err(at)?;
        // Chunks are written with pwrite (`FileWriter`), never through a
        // ring: the pread/pwrite path spares the registered buffers an
        // io_uring probe would pin (queue depth × buffer size) for nothing.
        let io = crate::io::IoOptions {
            kind: crate::io::EngineKind::Fallback,
            ..opts.io.clone()
        };
        let chunks = root.join("chunks");
        let engine = crate::io::IoEngine::new(&io).map_err(|e| at(e.into_path_error(&chunks)))?;
        Ok(Repo {
            root: root.to_owned(),
            chunks: ChunkStore::open(&chunks, engine).map_err(at)?,
            sets: SetStore::open(&root.join("sets")).map_err(at)?,
            opts,
            records: Mutex::new(()),
            stats: Stats::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Answer one request. Never panics; a failure is an `Error` reply.
    pub fn handle(&self, msg: &Message) -> Message {
        self.reply(msg, None)
    }

    /// [`Repo::handle`] for a request from `peer`, a refusal logged with
    /// what was asked.
    pub fn answer(&self, peer: &str, msg: &Message) -> Message {
        self.reply(msg, Some(peer))
    }

    fn reply(&self, msg: &Message, peer: Option<&str>) -> Message {
        match self.dispatch(msg) {
            Ok(m) => m,
            Err(r) => {
                if let Some(peer) = peer {
                    tracing::info!(%peer, request = %msg.kind, kind = ?r.kind, message = %r.message, "DR request refused");
                }
                Message {
                    kind: MsgType::Error,
                    payload: proto::encode(&ErrorReply::new(r.kind, r.message)),
                }
            }
        }
    }

    fn dispatch(&self, msg: &Message) -> Result<Message, Refusal> {
        let p = &msg.payload;
        match msg.kind {
            MsgType::ListJobs => {
                decode::<Empty>(msg)?;
                reply(
                    MsgType::Jobs,
                    &Jobs {
                        jobs: self.sets.jobs()?,
                    },
                )
            }
            MsgType::ListSets => {
                let r: JobRef = decode(msg)?;
                reply(MsgType::Sets, &self.list_sets(&r.job)?)
            }
            MsgType::GetManifest => {
                let r: SetRef = decode(msg)?;
                let record = self.record(&r.job, &r.set)?;
                Ok(Message {
                    kind: MsgType::Manifest,
                    payload: record.manifest.to_bytes(),
                })
            }
            MsgType::GetRecord => {
                let r: SetRef = decode(msg)?;
                let bytes = self
                    .sets
                    .read(&r.job, &r.set)?
                    .ok_or_else(|| not_found(&r.job, &r.set))?;
                Ok(Message {
                    kind: MsgType::Record,
                    payload: bytes,
                })
            }
            MsgType::Lacking => {
                let r: Lacking = decode(msg)?;
                reply(MsgType::Missing, &self.lacking(&r.hashes)?)
            }
            MsgType::PutChunk => reply(MsgType::ChunkStored, &self.put_chunk(p)?),
            MsgType::PutSet => reply(MsgType::SetStored, &self.put_set(p)?),
            MsgType::GetChunk => {
                let r: ChunkRef = decode(msg)?;
                let blob = self
                    .chunks
                    .read(&r.hash)?
                    .ok_or_else(|| refuse(ErrorKind::NotFound, format!("no chunk {}", r.hash)))?;
                Ok(Message {
                    kind: MsgType::Chunk,
                    payload: blob,
                })
            }
            MsgType::DeleteSet => {
                let r: SetRef = decode(msg)?;
                reply(MsgType::Deleted, &self.delete(&r.job, &r.set)?)
            }
            other => Err(refuse(
                ErrorKind::Invalid,
                format!("a {other} message is not a request this server answers"),
            )),
        }
    }

    fn record(&self, job: &JobName, set: &SetName) -> Result<SetRecord, Refusal> {
        let bytes = self
            .sets
            .read(job, set)?
            .ok_or_else(|| not_found(job, set))?;
        SetRecord::parse(&bytes).map_err(|e| {
            let path = self.sets.path(job, set);
            tracing::error!(path = %path.display(), error = %e, "damaged set record");
            refuse(
                ErrorKind::Internal,
                format!("the record of {job}/{set} is damaged: {e}"),
            )
        })
    }

    fn list_sets(&self, job: &JobName) -> Result<Sets, Refusal> {
        let mut sets = Vec::new();
        for set in self.sets.sets(job)? {
            match self.record(job, &set) {
                Ok(r) => sets.push(SetSummary {
                    set,
                    created: r.manifest.created,
                    bytes: r.manifest.total_bytes,
                    files: r.manifest.files.len() as u64,
                }),
                // Reported to whoever asks for that set; the listing goes on.
                Err(_) => continue,
            }
        }
        sets.sort_by(|a, b| (a.created, &a.set).cmp(&(b.created, &b.set)));
        Ok(Sets { sets })
    }

    fn lacking(&self, hashes: &[ChunkHash]) -> Result<Missing, Refusal> {
        if hashes.len() > MAX_LACKING_BATCH {
            return Err(refuse(
                ErrorKind::Invalid,
                format!(
                    "{} hashes in one query, over the limit of {MAX_LACKING_BATCH}",
                    hashes.len()
                ),
            ));
        }
        let mut missing = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            if !self.chunks.touch(h)? {
                missing.push(i as u32);
            }
        }
        Ok(Missing { missing })
    }

    fn put_chunk(&self, blob: &[u8]) -> Result<ChunkStored, Refusal> {
        match self.chunks.put(blob) {
            Ok((hash, Put::Stored(bytes))) => {
                bump(&self.stats.chunks_stored, 1);
                bump(&self.stats.chunk_bytes_stored, bytes);
                Ok(ChunkStored {
                    hash,
                    existed: false,
                })
            }
            Ok((hash, Put::Existed)) => {
                bump(&self.stats.chunks_existed, 1);
                Ok(ChunkStored {
                    hash,
                    existed: true,
                })
            }
            Err(PutError::Bad(e)) => Err(refuse(ErrorKind::Corrupt, format!("not stored: {e}"))),
            Err(PutError::Io(e)) => Err(e.into()),
        }
    }

    fn put_set(&self, bytes: &[u8]) -> Result<SetStored, Refusal> {
        let record = SetRecord::parse(bytes)
            .map_err(|e| refuse(ErrorKind::Invalid, format!("set record refused: {e}")))?;
        let (job, set) = (&record.manifest.job, &record.manifest.set);
        let _held = self.records.lock().unwrap_or_else(|p| p.into_inner());
        // Chunks still being synced count as held.
        self.chunks.settle();
        let missing = self.check_chunks(&record)?;
        if !missing.is_empty() {
            return Ok(SetStored {
                stored: false,
                missing,
            });
        }
        self.chunks.sync_dirty()?;
        self.sets.write(job, set, &record.to_bytes())?;
        bump(&self.stats.sets_stored, 1);
        tracing::info!(%job, %set, files = record.manifest.files.len(), bytes = record.manifest.total_bytes, "set complete");
        Ok(SetStored {
            stored: true,
            missing: Vec::new(),
        })
    }

    /// The chunks the record names that are not held (damaged ones are
    /// removed and count as not held), after checking that each held one
    /// has the length and crc32c the manifest says.
    fn check_chunks(&self, record: &SetRecord) -> Result<Vec<ChunkHash>, Refusal> {
        let mut seen: HashMap<ChunkHash, Option<(u32, u32)>> = HashMap::new();
        let mut missing = Vec::new();
        // crc32c of the chunk so far, over its pieces; `None` once a piece
        // of it is missing (the record is not stored then anyway).
        let mut crc: Option<u32> = None;
        for (fi, piece, hash) in record.pieces() {
            let file = &record.manifest.files[fi];
            let held = match seen.get(&hash) {
                Some(h) => *h,
                None => {
                    let h = match self.chunks.header(&hash)? {
                        None => None,
                        Some(Ok(hdr)) => Some((hdr.raw_len, hdr.crc32c)),
                        Some(Err(damaged)) => {
                            tracing::warn!(error = %damaged, "removing a damaged chunk");
                            self.chunks.remove(&hash)?;
                            None
                        }
                    };
                    if h.is_none() {
                        missing.push(hash);
                    }
                    seen.insert(hash, h);
                    h
                }
            };
            let at = || format!("file {} chunk {} (piece {hash})", file.path, piece.chunk);
            if let Some((len, _)) = held {
                if len as usize != piece.len {
                    return Err(refuse(
                        ErrorKind::Invalid,
                        format!(
                            "{}: {len} bytes stored, the manifest calls for {}",
                            at(),
                            piece.len
                        ),
                    ));
                }
            }
            crc = match (held, piece.starts_chunk, crc) {
                (None, _, _) => None,
                (Some((_, c)), true, _) => Some(c),
                (Some((_, c)), false, Some(so_far)) => {
                    Some(crc32c::crc32c_combine(so_far, c, piece.len))
                }
                (Some(_), false, None) => None,
            };
            if let (true, Some(got)) = (piece.ends_chunk, crc) {
                let want = file.crc32c.get(piece.chunk as usize).copied();
                if want != Some(got) {
                    return Err(refuse(
                        ErrorKind::Invalid,
                        format!(
                            "{}: crc32c {got:08x}, the manifest says {}",
                            at(),
                            want.map_or("nothing".into(), |w| format!("{w:08x}"))
                        ),
                    ));
                }
            }
        }
        Ok(missing)
    }

    fn delete(&self, job: &JobName, set: &SetName) -> Result<Deleted, Refusal> {
        let _held = self.records.lock().unwrap_or_else(|p| p.into_inner());
        // The record first: from here on the set is not complete, whatever
        // happens to the sweep.
        let existed = self.sets.remove(job, set)?;
        if existed {
            bump(&self.stats.sets_deleted, 1);
        }
        let mut keep = HashSet::new();
        for (j, s) in self.sets.all()? {
            let Some(bytes) = self.sets.read(&j, &s)? else {
                continue;
            };
            match SetRecord::parse(&bytes) {
                Ok(r) => keep.extend(r.chunks.into_iter().flatten()),
                Err(e) => {
                    // What it references is unknowable: sweep nothing.
                    tracing::warn!(job = %j, set = %s, error = %e, "unreadable record; no chunk removed");
                    return Ok(Deleted {
                        existed,
                        chunks_removed: 0,
                        bytes_removed: 0,
                    });
                }
            }
        }
        let before = SystemTime::now()
            .checked_sub(self.opts.gc_grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let swept = self.chunks.sweep(&keep, before)?;
        bump(&self.stats.chunks_removed, swept.chunks);
        tracing::info!(%job, %set, existed, chunks = swept.chunks, bytes = swept.bytes, "set deleted");
        Ok(Deleted {
            existed,
            chunks_removed: swept.chunks,
            bytes_removed: swept.bytes,
        })
    }
}

fn decode<T: serde::de::DeserializeOwned>(msg: &Message) -> Result<T, Refusal> {
    proto::decode(msg.kind, &msg.payload).map_err(|m| refuse(ErrorKind::Invalid, m))
}

fn not_found(job: &JobName, set: &SetName) -> Refusal {
    refuse(ErrorKind::NotFound, format!("no complete set {job}/{set}"))
}
