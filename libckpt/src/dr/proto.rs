//! The messages of the DR protocol: their type codes, size bounds and the
//! JSON bodies of the control messages.
//!
//! A reply's type is its request's type with the high bit set, so a stray
//! reply is recognisable from its code alone. Chunk data (`PutChunk`,
//! `Chunk`) is binary (see [`super::blob`]); a manifest travels as the
//! manifest's own JSON bytes; everything else is one JSON object whose
//! fields are checked strictly (`deny_unknown_fields`): a peer that sends
//! something this version does not know is told so, not half-understood.

use std::fmt;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::blob::ChunkHash;
use super::frame::MAX_FRAME_PAYLOAD;
use crate::path::{JobName, SetName};

/// Bound on the handshake messages: a peer that has not proved it knows the
/// key gets no more than this much of our memory.
pub const MAX_AUTH_MESSAGE: usize = 4 << 10;
/// Bound on an error message.
pub const MAX_ERROR_MESSAGE: usize = 64 << 10;
/// Bound on the other JSON messages (a list of sets, a batch of hashes).
pub const MAX_CONTROL_MESSAGE: usize = 16 << 20;
/// Bound on a set record (manifest plus chunk hashes) and on a manifest.
/// At 1 MiB chunks this is a set of a few TiB.
pub const MAX_RECORD_BYTES: usize = crate::manifest::MAX_MANIFEST_BYTES;
/// Most hashes one `Lacking` request may ask about.
pub const MAX_LACKING_BATCH: usize = 8192;

/// A message's type code: the byte after the version in every frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    // The handshake (see `auth`).
    Hello = 0x01,
    Proof = 0x02,
    // Requests.
    ListJobs = 0x10,
    ListSets = 0x11,
    GetManifest = 0x12,
    GetRecord = 0x13,
    Lacking = 0x14,
    PutChunk = 0x15,
    PutSet = 0x16,
    GetChunk = 0x17,
    DeleteSet = 0x18,
    // Replies: the request's code | 0x80.
    Challenge = 0x81,
    Welcome = 0x82,
    Jobs = 0x90,
    Sets = 0x91,
    Manifest = 0x92,
    Record = 0x93,
    Missing = 0x94,
    ChunkStored = 0x95,
    SetStored = 0x96,
    Chunk = 0x97,
    Deleted = 0x98,
    /// The request failed: [`ErrorReply`].
    Error = 0xff,
}

impl MsgType {
    pub const ALL: [MsgType; 23] = [
        MsgType::Hello,
        MsgType::Proof,
        MsgType::ListJobs,
        MsgType::ListSets,
        MsgType::GetManifest,
        MsgType::GetRecord,
        MsgType::Lacking,
        MsgType::PutChunk,
        MsgType::PutSet,
        MsgType::GetChunk,
        MsgType::DeleteSet,
        MsgType::Challenge,
        MsgType::Welcome,
        MsgType::Jobs,
        MsgType::Sets,
        MsgType::Manifest,
        MsgType::Record,
        MsgType::Missing,
        MsgType::ChunkStored,
        MsgType::SetStored,
        MsgType::Chunk,
        MsgType::Deleted,
        MsgType::Error,
    ];

    pub fn from_u8(code: u8) -> Option<MsgType> {
        MsgType::ALL.into_iter().find(|t| *t as u8 == code)
    }

    /// The largest message of this type either side accepts, checked
    /// before each frame's payload is read.
    pub fn max_len(self) -> usize {
        match self {
            MsgType::Hello | MsgType::Proof | MsgType::Challenge | MsgType::Welcome => {
                MAX_AUTH_MESSAGE
            }
            MsgType::Error => MAX_ERROR_MESSAGE,
            MsgType::PutChunk | MsgType::Chunk => MAX_FRAME_PAYLOAD,
            MsgType::PutSet | MsgType::Record | MsgType::Manifest => MAX_RECORD_BYTES,
            _ => MAX_CONTROL_MESSAGE,
        }
    }

    /// Chunk data always fits one frame: a continued chunk is a broken peer.
    pub fn single_frame(self) -> bool {
        matches!(self, MsgType::PutChunk | MsgType::Chunk)
    }

    pub fn name(self) -> &'static str {
        match self {
            MsgType::Hello => "hello",
            MsgType::Proof => "proof",
            MsgType::ListJobs => "list-jobs",
            MsgType::ListSets => "list-sets",
            MsgType::GetManifest => "get-manifest",
            MsgType::GetRecord => "get-record",
            MsgType::Lacking => "lacking",
            MsgType::PutChunk => "put-chunk",
            MsgType::PutSet => "put-set",
            MsgType::GetChunk => "get-chunk",
            MsgType::DeleteSet => "delete-set",
            MsgType::Challenge => "challenge",
            MsgType::Welcome => "welcome",
            MsgType::Jobs => "jobs",
            MsgType::Sets => "sets",
            MsgType::Manifest => "manifest",
            MsgType::Record => "record",
            MsgType::Missing => "missing",
            MsgType::ChunkStored => "chunk-stored",
            MsgType::SetStored => "set-stored",
            MsgType::Chunk => "chunk",
            MsgType::Deleted => "deleted",
            MsgType::Error => "error",
        }
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// 32 bytes as 64 lowercase hex digits: nonces and proofs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex32(pub [u8; 32]);

impl fmt::Debug for Hex32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl Serialize for Hex32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode32(&s)
            .map(Hex32)
            .map_err(serde::de::Error::custom)
    }
}

/// Lowercase hex, without a crate for twenty lines.
pub(crate) mod hex {
    pub fn encode(bytes: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
    }

    pub fn decode32(s: &str) -> Result<[u8; 32], String> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(format!("{s:?} is not 64 hex digits"));
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
                _ => return Err(format!("{s:?} is not 64 lowercase hex digits")),
            }
        }
        Ok(out)
    }
}

/// `Hello`: the client's fresh nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub nonce: Hex32,
}

/// `Challenge`: the server's fresh nonce and its proof over both nonces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    pub nonce: Hex32,
    pub proof: Hex32,
}

/// `Proof`: the client's proof over both nonces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    pub proof: Hex32,
}

/// `Welcome`: the client is authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// The server's software, for logs.
    pub server: String,
}

/// `ListJobs` and any other request without arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `ListSets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRef {
    pub job: JobName,
}

/// `GetManifest`, `GetRecord`, `DeleteSet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRef {
    pub job: JobName,
    pub set: SetName,
}

/// `Lacking`: which of these chunks does the server not hold?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lacking {
    pub hashes: Vec<ChunkHash>,
}

/// `Missing`: positions (in the request's list) of the chunks the server
/// lacks. The ones it holds are refreshed, so a concurrent delete leaves
/// them alone for its grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Missing {
    pub missing: Vec<u32>,
}

/// `GetChunk`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    pub hash: ChunkHash,
}

/// `ChunkStored`: the answer to each `PutChunk`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkStored {
    pub hash: ChunkHash,
    /// The server held it already and did not write it again.
    pub existed: bool,
}

/// `SetStored`: whether the record was written. It is not when a chunk it
/// names is absent (`missing`); the client sends those and asks again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStored {
    pub stored: bool,
    pub missing: Vec<ChunkHash>,
}

/// `Jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jobs {
    pub jobs: Vec<JobName>,
}

/// One complete set in a `Sets` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSummary {
    pub set: SetName,
    #[serde(with = "humantime_serde")]
    pub created: SystemTime,
    pub bytes: u64,
    pub files: u64,
}

/// `Sets`: complete sets of a job, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sets {
    pub sets: Vec<SetSummary>,
}

/// `Deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deleted {
    /// The set was there (deleting an absent set is not an error).
    pub existed: bool,
    pub chunks_removed: u64,
    pub bytes_removed: u64,
}

/// Why a request failed, so the client can tell "try later" from "never".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or names something it may not (a bad name,
    /// a manifest with `../`, an unexpected message).
    Invalid,
    /// No such set or chunk.
    NotFound,
    /// Bytes did not match their hash or crc32c: damaged in transit, send again.
    Corrupt,
    /// Too many connections now.
    Busy,
    /// Authentication failed.
    Auth,
    /// The peer speaks another protocol version.
    Version,
    /// The server tried and failed (its disk is full, unreadable…).
    Internal,
}

impl ErrorKind {
    /// Worth asking again later without human help.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Busy | ErrorKind::Internal | ErrorKind::Corrupt
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Invalid => "invalid request",
            ErrorKind::NotFound => "not found",
            ErrorKind::Corrupt => "corrupt data",
            ErrorKind::Busy => "busy",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::Version => "protocol version mismatch",
            ErrorKind::Internal => "server error",
        })
    }
}

/// `Error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
        let mut message = message.into();
        // Long enough to name any path; short enough to stay one frame.
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ErrorReply { kind, message }
    }
}

/// Serialize a control message body.
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    // Plain structs of strings, numbers and validated names always serialize.
    serde_json::to_vec(body).unwrap_or_default()
}

/// Parse a control message body strictly.
pub fn decode<T: DeserializeOwned>(kind: MsgType, payload: &[u8]) -> Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| format!("malformed {kind} message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_replies_have_the_high_bit() {
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_u8(t as u8), Some(t));
        }
        let mut codes: Vec<u8> = MsgType::ALL.iter().map(|t| *t as u8).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), MsgType::ALL.len());
        assert_eq!(MsgType::from_u8(0), None);
        assert_eq!(
            MsgType::ListSets as u8 | 0x80,
            MsgType::Sets as u8,
            "reply = request | 0x80"
        );
    }

    #[test]
    fn strict_bodies() {
        let e = decode::<SetRef>(MsgType::GetRecord, br#"{"job":"..","set":"s"}"#).unwrap_err();
        assert!(e.contains("'.' and '..' are not names"), "{e}");
        let e =
            decode::<SetRef>(MsgType::GetRecord, br#"{"job":"j","set":"s","x":1}"#).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = decode::<JobRef>(MsgType::ListSets, br#"{"job":"a/b"}"#).unwrap_err();
        assert!(e.contains("'/'"), "{e}");
    }

    #[test]
    fn long_error_messages_are_cut_on_a_char_boundary() {
        let r = ErrorReply::new(ErrorKind::Invalid, "é".repeat(5000));
        assert!(r.message.len() <= 4096);
        assert!(encode(&r).len() < MAX_ERROR_MESSAGE);
    }
}
