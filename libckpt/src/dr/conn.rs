//! The client's connection to a DR server: connect (TCP or RDMA, see
//! [`super::transport`]), authenticate, then request and reply, with
//! timeouts on every read and write.

use std::io::{BufReader, BufWriter, Write};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth::{self, Key};
use super::error::DrError;
use super::frame::{read_message, write_message, write_parts, FrameError, Message};
use super::proto::{self, MsgType};
use super::transport::{self, Choice, InUse, Io, RdmaOptions, Stream};

/// How a client reaches its server: the configured transport and the
/// RDMA sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transport {
    pub choice: Choice,
    pub rdma: RdmaOptions,
}

/// How hard a client tries before reporting the server unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Consecutive failures (without progress in between) allowed; the
    /// last one is reported.
    pub attempts: u32,
    /// Pause after the first failure; doubled after each further one.
    pub first: Duration,
    /// Longest pause.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            first: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

impl Retry {
    /// The pause after the `n`th consecutive failure (0-based).
    pub fn delay(&self, n: u32) -> Duration {
        self.first
            .saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
            .min(self.max)
    }
}

/// An authenticated connection.
pub struct Conn {
    r: BufReader<Io>,
    w: BufWriter<Io>,
    stream: Arc<dyn Stream>,
    peer: String,
}

impl Conn {
    /// Connect to `addr` (`host:port`) over the chosen transport, trying
    /// each address it resolves to, and authenticate with `key`.
    pub fn open(
        addr: &str,
        key: &Key,
        transport: &Transport,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Conn, DrError> {
        let stream = transport::connect(addr, transport.choice, &transport.rdma, connect_timeout)?;
        stream.set_timeout(io_timeout).map_err(|source| {
            DrError::Frame(FrameError::Io {
                peer: addr.into(),
                source,
            })
        })?;
        let io = Io(stream.clone());
        let mut conn = Conn {
            r: BufReader::with_capacity(256 << 10, io.clone()),
            w: BufWriter::with_capacity(64 << 10, io),
            stream,
            peer: addr.into(),
        };
        let server = auth::client_handshake(&mut conn.r, &mut conn.w, addr, key)?;
        tracing::debug!(peer = addr, %server, transport = %conn.stream.in_use(), "connected to the DR server");
        Ok(conn)
    }

    /// The transport this connection runs on.
    pub fn in_use(&self) -> InUse {
        self.stream.in_use()
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Queue a message; it goes out at the next [`recv`](Conn::recv) or
    /// when the buffer fills.
    pub fn send(&mut self, kind: MsgType, payload: &[u8]) -> Result<(), DrError> {
        write_message(&mut self.w, &self.peer, kind, payload)?;
        Ok(())
    }

    /// Queue a single-frame message made of parts.
    pub fn send_parts(&mut self, kind: MsgType, parts: &[&[u8]]) -> Result<(), DrError> {
        write_parts(&mut self.w, &self.peer, kind, parts)?;
        Ok(())
    }

    pub fn send_json<T: Serialize>(&mut self, kind: MsgType, body: &T) -> Result<(), DrError> {
        self.send(kind, &proto::encode(body))
    }

    /// Flush what is queued and read the next message, which must be of
    /// type `want` (an `Error` becomes the error it reports).
    pub fn recv(&mut self, want: MsgType) -> Result<Message, DrError> {
        self.w.flush().map_err(|source| FrameError::Io {
            peer: self.peer.clone(),
            source,
        })?;
        let m = read_message(&mut self.r, &self.peer, usize::MAX)?;
        if m.kind == want {
            Ok(m)
        } else if m.kind == MsgType::Error {
            Err(auth::remote_error(&self.peer, &m))
        } else {
            Err(DrError::Protocol {
                peer: self.peer.clone(),
                message: format!("expected a {want} message, got {}", m.kind),
            })
        }
    }

    pub fn recv_json<R: DeserializeOwned>(&mut self, want: MsgType) -> Result<R, DrError> {
        let m = self.recv(want)?;
        proto::decode(m.kind, &m.payload).map_err(|message| DrError::Protocol {
            peer: self.peer.clone(),
            message,
        })
    }

    /// One request, one reply.
    pub fn call_json<T: Serialize, R: DeserializeOwned>(
        &mut self,
        kind: MsgType,
        body: &T,
        want: MsgType,
    ) -> Result<R, DrError> {
        self.send_json(kind, body)?;
        self.recv_json(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = Retry {
            attempts: 10,
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(r.delay(0), Duration::from_millis(100));
        assert_eq!(r.delay(2), Duration::from_millis(400));
        assert_eq!(r.delay(4), Duration::from_secs(1));
        assert_eq!(r.delay(64), Duration::from_secs(1));
    }
}
