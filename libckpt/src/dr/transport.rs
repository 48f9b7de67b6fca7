//! The byte streams the DR protocol runs over: TCP always, RDMA verbs with
//! the `rdma` feature. Framing, authentication, resume, checksums and dedup
//! sit above a [`Stream`] and never learn which one carries them.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::DrError;

/// Which transport to use, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// RDMA when a verbs device reaches the peer and the peer listens on
    /// it, else TCP.
    #[default]
    Auto,
    Tcp,
    Rdma,
}

impl FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Choice, String> {
        match s {
            "auto" => Ok(Choice::Auto),
            "tcp" => Ok(Choice::Tcp),
            "rdma" => Ok(Choice::Rdma),
            other => Err(format!(
                "unknown transport `{other}`: use auto, tcp or rdma"
            )),
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Choice::Auto => "auto",
            Choice::Tcp => "tcp",
            Choice::Rdma => "rdma",
        })
    }
}

/// The transport a connection actually runs on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InUse {
    /// "tcp" or "rdma".
    pub kind: String,
    /// The verbs device for RDMA; for TCP, why not RDMA.
    pub detail: String,
}

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{} ({})", self.kind, self.detail)
        }
    }
}

/// Sizes of the RDMA path, from the config; ignored over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaOptions {
    /// Registered buffers posted for receiving; the peer's credits.
    pub recv_bufs: u16,
    /// Registered buffers for sending.
    pub send_bufs: u16,
    /// Size of each buffer: the largest single RDMA message.
    pub buf_size: u32,
}

impl Default for RdmaOptions {
    fn default() -> Self {
        RdmaOptions {
            // 8 MiB each way. Under soft-RoCE the stream moved 0.78× of
            // ib_write_bw with 16, 0.88× with 32 (`ckpt-bench rdma`).
            recv_bufs: 32,
            send_bufs: 32,
            buf_size: 256 << 10,
        }
    }
}

/// A connected byte stream. Methods take `&self` so one
/// thread can cut a stream another is blocked on ([`Stream::shutdown`]),
/// and one thread may block in [`Stream::read`] while another writes: the
/// DR server reads requests on one and answers them on another.
pub trait Stream: Send + Sync {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write(&self, buf: &[u8]) -> io::Result<usize>;
    fn flush(&self) -> io::Result<()>;
    /// Longest a read or write may block.
    fn set_timeout(&self, t: Duration) -> io::Result<()>;
    /// Cut the stream: blocked and later calls fail or see end of stream.
    fn shutdown(&self);
    fn in_use(&self) -> InUse;
}

/// `Read` and `Write` over a shared [`Stream`], for the buffered readers
/// and writers of the frame layer.
#[derive(Clone)]
pub struct Io(pub Arc<dyn Stream>);

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// TCP, with Nagle off: the protocol flushes whole requests itself.
pub struct Tcp {
    stream: TcpStream,
    why: String,
}

impl Tcp {
    pub fn new(stream: TcpStream, why: impl Into<String>) -> Tcp {
        let _ = stream.set_nodelay(true);
        Tcp {
            stream,
            why: why.into(),
        }
    }
}

impl Stream for Tcp {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.stream).read(buf)
    }
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.stream).write(buf)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(t))?;
        self.stream.set_write_timeout(Some(t))
    }
    fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
    fn in_use(&self) -> InUse {
        InUse {
            kind: "tcp".into(),
            detail: self.why.clone(),
        }
    }
}

/// Resolve `addr` (`host:port`) to its addresses.
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>, DrError> {
    Ok(addr
        .to_socket_addrs()
        .map_err(|source| DrError::Resolve {
            peer: addr.into(),
            source,
        })?
        .collect())
}

/// Connect over TCP, trying each address in turn.
pub fn connect_tcp(
    addr: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
    why: &str,
) -> Result<Tcp, DrError> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "it resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => return Ok(Tcp::new(s, why)),
            Err(e) => last = e,
        }
    }
    Err(DrError::Connect {
        peer: addr.into(),
        source: last,
    })
}

/// Open a stream to `addr` over the chosen transport. In `auto`, RDMA is
/// tried first when this build has it and a verbs device exists; any
/// failure to set it up (no device on the route, nobody listening over
/// RDMA) falls back to TCP, and the reason is kept for `ckptfs status`.
pub fn connect(
    addr: &str,
    choice: Choice,
    rdma: &RdmaOptions,
    timeout: Duration,
) -> Result<Arc<dyn Stream>, DrError> {
    let addrs = resolve(addr)?;
    let why = match choice {
        Choice::Tcp => "configured".to_string(),
        Choice::Rdma => return connect_rdma(addr, &addrs, rdma, timeout),
        Choice::Auto => match rdma_unavailable() {
            Some(why) => why,
            None => match connect_rdma(addr, &addrs, rdma, timeout) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    tracing::debug!(peer = addr, error = %e, "RDMA failed; falling back to TCP");
                    format!("RDMA failed: {}", e.cause())
                }
            },
        },
    };
    Ok(Arc::new(connect_tcp(addr, &addrs, timeout, &why)?))
}

/// Why RDMA cannot be used at all on this host, or `None` when it might.
pub fn rdma_unavailable() -> Option<String> {
    #[cfg(feature = "rdma")]
    {
        super::rdma::unavailable()
    }
    #[cfg(not(feature = "rdma"))]
    {
        Some("built without RDMA support".into())
    }
}

#[cfg(feature = "rdma")]
fn connect_rdma(
    addr: &str,
    addrs: &[SocketAddr],
    opts: &RdmaOptions,
    timeout: Duration,
) -> Result<Arc<dyn Stream>, DrError> {
    let mut last = None;
    for a in addrs {
        match super::rdma::connect(addr, *a, opts, timeout) {
            Ok(s) => return Ok(Arc::new(s)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| DrError::Rdma {
        peer: addr.into(),
        device: String::new(),
        message: "it resolves to no address".into(),
    }))
}

#[cfg(not(feature = "rdma"))]
fn connect_rdma(
    addr: &str,
    _addrs: &[SocketAddr],
    _opts: &RdmaOptions,
    _timeout: Duration,
) -> Result<Arc<dyn Stream>, DrError> {
    Err(DrError::Rdma {
        peer: addr.into(),
        device: String::new(),
        message: "this ckptfs was built without RDMA support (cargo feature `rdma`)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parses_and_prints() {
        for c in [Choice::Auto, Choice::Tcp, Choice::Rdma] {
            assert_eq!(c.to_string().parse::<Choice>(), Ok(c));
        }
        assert!("infiniband"
            .parse::<Choice>()
            .unwrap_err()
            .contains("auto, tcp or rdma"));
    }
}
