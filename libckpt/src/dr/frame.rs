//! Framing: how a DR message crosses a byte stream.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "CKDR"
//!      4     1  protocol version (1)
//!      5     1  message type (see proto::MsgType)
//!      6     1  flags: bit 0 = MORE (the message continues in the next
//!               frame, which must have the same type); other bits 0
//!      7     1  reserved, 0
//!      8     4  payload length, big-endian, at most MAX_FRAME_PAYLOAD
//!     12     …  payload
//! ```
//!
//! The header is checked whole before a byte of the payload is read or a
//! byte of memory reserved for it: a wrong magic, a future version, an
//! unknown type or a length over the frame limit (or over the message
//! type's own bound, or the caller's) is refused with a typed error naming
//! the peer. Payload memory then grows only as bytes actually arrive, so a
//! peer that announces 16 MiB and sends ten bytes costs ten bytes.

use std::io::{self, Read, Write};

use super::proto::MsgType;

pub const MAGIC: [u8; 4] = *b"CKDR";
/// The protocol version this build speaks, and the newest it accepts.
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 12;
/// The largest piece of a file one chunk message carries.
pub const MAX_PIECE: usize = 16 << 20;
/// Largest frame payload: a piece, plus zstd's worst-case growth of
/// incompressible bytes (under 64 KiB for 16 MiB) and the chunk header.
pub const MAX_FRAME_PAYLOAD: usize = MAX_PIECE + (128 << 10);

const FLAG_MORE: u8 = 0x01;

/// One whole message: a type and its (reassembled) payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: MsgType,
    pub payload: Vec<u8>,
}

/// Why a frame could not be read or written. Every variant names the peer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{peer} closed the connection")]
    Closed { peer: String },
    #[error("{peer} closed the connection inside a frame ({got} of {want} bytes received)")]
    Truncated {
        peer: String,
        got: usize,
        want: usize,
    },
    #[error("{peer}: {source}")]
    Io {
        peer: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{peer} is not a ckptfs DR peer: its frame starts with {} instead of \"CKDR\"",
        show_magic(got)
    )]
    BadMagic { peer: String, got: [u8; 4] },
    #[error(
        "{peer} speaks DR protocol version {version}, newer than this ckptfs understands \
         (up to {VERSION}); upgrade ckptfs on this side"
    )]
    FutureVersion { peer: String, version: u8 },
    #[error("{peer} sent protocol version 0, which does not exist")]
    ZeroVersion { peer: String },
    #[error("{peer} sent a frame of unknown message type {code:#04x}")]
    UnknownType { peer: String, code: u8 },
    #[error("{peer} sent a frame with unknown flags {flags:#04x} (reserved byte {reserved:#04x})")]
    BadFlags {
        peer: String,
        flags: u8,
        reserved: u8,
    },
    #[error("{peer} announced a {len}-byte frame, over the {max}-byte limit")]
    TooLarge { peer: String, len: u64, max: usize },
    #[error("{peer} sent a {kind} message over its {max}-byte limit")]
    MessageTooLarge {
        peer: String,
        kind: MsgType,
        max: usize,
    },
    #[error("{peer} continued a {first} message with a {next} frame")]
    Interleaved {
        peer: String,
        first: MsgType,
        next: MsgType,
    },
    #[error("{peer} split a {kind} message over several frames")]
    Split { peer: String, kind: MsgType },
}

fn show_magic(got: &[u8; 4]) -> String {
    if got.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(got))
    } else {
        format!(
            "bytes {:02x} {:02x} {:02x} {:02x}",
            got[0], got[1], got[2], got[3]
        )
    }
}

impl FrameError {
    /// The link broke or stalled (as opposed to the peer saying something
    /// wrong): worth reconnecting.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            FrameError::Closed { .. } | FrameError::Truncated { .. } | FrameError::Io { .. }
        )
    }

    /// A read or write timeout expired.
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: MsgType,
    pub more: bool,
    pub len: usize,
}

impl Header {
    /// Check a header. Never panics.
    pub fn parse(bytes: &[u8; HEADER_LEN], peer: &str) -> Result<Header, FrameError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic {
                peer: peer.into(),
                got: magic,
            });
        }
        match bytes[4] {
            0 => return Err(FrameError::ZeroVersion { peer: peer.into() }),
            v if v > VERSION => {
                return Err(FrameError::FutureVersion {
                    peer: peer.into(),
                    version: v,
                })
            }
            _ => {}
        }
        let kind = MsgType::from_u8(bytes[5]).ok_or_else(|| FrameError::UnknownType {
            peer: peer.into(),
            code: bytes[5],
        })?;
        let (flags, reserved) = (bytes[6], bytes[7]);
        if flags & !FLAG_MORE != 0 || reserved != 0 {
            return Err(FrameError::BadFlags {
                peer: peer.into(),
                flags,
                reserved,
            });
        }
        let len = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if len as usize > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge {
                peer: peer.into(),
                len: len.into(),
                max: MAX_FRAME_PAYLOAD,
            });
        }
        Ok(Header {
            kind,
            more: flags & FLAG_MORE != 0,
            len: len as usize,
        })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[5] = self.kind as u8;
        h[6] = if self.more { FLAG_MORE } else { 0 };
        h[8..].copy_from_slice(&(self.len as u32).to_be_bytes());
        h
    }
}

/// Read one whole message, refusing one longer than `cap` or than its
/// type's own bound. A clean end of stream before the first byte is
/// [`FrameError::Closed`]; anywhere else it is [`FrameError::Truncated`].
pub fn read_message(r: &mut dyn Read, peer: &str, cap: usize) -> Result<Message, FrameError> {
    let mut payload: Vec<u8> = Vec::new();
    let mut first: Option<MsgType> = None;
    loop {
        let mut raw = [0u8; HEADER_LEN];
        let got = read_full(r, &mut raw, peer)?;
        if got < HEADER_LEN {
            return Err(if got == 0 && first.is_none() {
                FrameError::Closed { peer: peer.into() }
            } else {
                FrameError::Truncated {
                    peer: peer.into(),
                    got,
                    want: HEADER_LEN,
                }
            });
        }
        let h = Header::parse(&raw, peer)?;
        let kind = match first {
            None => h.kind,
            Some(k) if k == h.kind => k,
            Some(k) => {
                return Err(FrameError::Interleaved {
                    peer: peer.into(),
                    first: k,
                    next: h.kind,
                })
            }
        };
        first = Some(kind);
        if h.more && kind.single_frame() {
            return Err(FrameError::Split {
                peer: peer.into(),
                kind,
            });
        }
        let max = kind.max_len().min(cap);
        if payload.len() + h.len > max {
            return Err(FrameError::MessageTooLarge {
                peer: peer.into(),
                kind,
                max,
            });
        }
        let before = payload.len();
        let got = r
            .take(h.len as u64)
            .read_to_end(&mut payload)
            .map_err(|source| FrameError::Io {
                peer: peer.into(),
                source,
            })?;
        if got < h.len {
            return Err(FrameError::Truncated {
                peer: peer.into(),
                got: payload.len() - before,
                want: h.len,
            });
        }
        if !h.more {
            return Ok(Message { kind, payload });
        }
    }
}

/// Fill `buf` unless the stream ends first; the count read.
fn read_full(r: &mut dyn Read, buf: &mut [u8], peer: &str) -> Result<usize, FrameError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(FrameError::Io {
                    peer: peer.into(),
                    source,
                })
            }
        }
    }
    Ok(n)
}

/// Write one message, split into as many frames as its size needs. The
/// caller flushes.
pub fn write_message(
    w: &mut dyn Write,
    peer: &str,
    kind: MsgType,
    payload: &[u8],
) -> Result<(), FrameError> {
    if payload.len() > kind.max_len() {
        return Err(FrameError::MessageTooLarge {
            peer: peer.into(),
            kind,
            max: kind.max_len(),
        });
    }
    let io = |source| FrameError::Io {
        peer: peer.into(),
        source,
    };
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAME_PAYLOAD);
        let (now, later) = rest.split_at(n);
        let h = Header {
            kind,
            more: !later.is_empty(),
            len: n,
        };
        w.write_all(&h.encode()).map_err(io)?;
        w.write_all(now).map_err(io)?;
        if later.is_empty() {
            return Ok(());
        }
        rest = later;
    }
}

/// Write a single-frame message given in parts (a chunk header and its
/// data), without copying them together.
pub fn write_parts(
    w: &mut dyn Write,
    peer: &str,
    kind: MsgType,
    parts: &[&[u8]],
) -> Result<(), FrameError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let max = kind.max_len().min(MAX_FRAME_PAYLOAD);
    if len > max {
        return Err(FrameError::MessageTooLarge {
            peer: peer.into(),
            kind,
            max,
        });
    }
    let io = |source| FrameError::Io {
        peer: peer.into(),
        source,
    };
    let h = Header {
        kind,
        more: false,
        len,
    };
    w.write_all(&h.encode()).map_err(io)?;
    for p in parts {
        w.write_all(p).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "192.0.2.1:7070";

    fn frame(version: u8, kind: u8, flags: u8, len: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&[version, kind, flags, 0]);
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn read(bytes: &[u8]) -> Result<Message, FrameError> {
        read_message(&mut &bytes[..], PEER, usize::MAX)
    }

    #[test]
    fn round_trip_small_and_split() {
        let mut out = Vec::new();
        write_message(&mut out, PEER, MsgType::ListJobs, b"{}").unwrap();
        let big = vec![7u8; MAX_FRAME_PAYLOAD + 10];
        write_message(&mut out, PEER, MsgType::PutSet, &big).unwrap();
        write_message(&mut out, PEER, MsgType::Welcome, b"").unwrap();
        let mut r = &out[..];
        assert_eq!(
            read_message(&mut r, PEER, usize::MAX).unwrap(),
            Message {
                kind: MsgType::ListJobs,
                payload: b"{}".to_vec()
            }
        );
        let m = read_message(&mut r, PEER, usize::MAX).unwrap();
        assert_eq!((m.kind, m.payload.len()), (MsgType::PutSet, big.len()));
        assert_eq!(read_message(&mut r, PEER, usize::MAX).unwrap().payload, b"");
        assert!(matches!(
            read_message(&mut r, PEER, usize::MAX),
            Err(FrameError::Closed { .. })
        ));
    }

    #[test]
    fn typed_errors_name_the_peer() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "\"GET \""),
            (frame(2, 0x10, 0, 0, b""), "version 2"),
            (frame(0, 0x10, 0, 0, b""), "version 0"),
            (frame(1, 0x42, 0, 0, b""), "0x42"),
            (frame(1, 0x10, 0x80, 0, b""), "flags"),
            (frame(1, 0x15, 0, u32::MAX, b""), "limit"),
            (frame(1, 0x10, 0, 10, b"{}"), "2 of 10"),
            (frame(1, 0x10, 0, 0, b"")[..5].to_vec(), "5 of 12"),
            (frame(1, 0x01, 0, 5000, &[b' '; 5000]), "hello message over"),
            (frame(1, 0x15, 1, 1, b"x"), "split"),
        ];
        for (bytes, want) in cases {
            let e = read(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.contains(PEER), "{e}");
        }
        let mut two = frame(1, 0x10, 1, 1, b"{");
        two.extend(frame(1, 0x11, 0, 1, b"}"));
        assert!(matches!(read(&two), Err(FrameError::Interleaved { .. })));
    }

    #[test]
    fn future_version_is_refused_before_the_payload() {
        // The length is absurd but the version is checked first, so the
        // error says what is actually wrong.
        let e = read(&frame(9, 0x10, 0, u32::MAX, b"")).unwrap_err();
        assert!(
            matches!(e, FrameError::FutureVersion { version: 9, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("upgrade"), "{e}");
    }

    #[test]
    fn caller_cap_applies() {
        let bytes = frame(1, 0x10, 0, 100, &[b' '; 100]);
        let e = read_message(&mut &bytes[..], PEER, 50).unwrap_err();
        assert!(
            matches!(e, FrameError::MessageTooLarge { max: 50, .. }),
            "{e}"
        );
    }

    #[test]
    fn continued_messages_are_bounded_in_total() {
        let mut bytes = Vec::new();
        for _ in 0..20 {
            bytes.extend(frame(1, 0x01, 1, 400, &[b' '; 400]));
        }
        let e = read(&bytes).unwrap_err();
        assert!(matches!(e, FrameError::MessageTooLarge { .. }), "{e}");
    }
}
