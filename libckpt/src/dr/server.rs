//! The receiver's network side: the accept loop, one thread per connection
//! (bounded), the handshake, then requests until the client hangs up.
//!
//! Every socket has read and write timeouts, so a peer that dies without a
//! FIN (a node that lost power, a cut link) frees its thread after
//! [`ServerOptions::io_timeout`] at most; a peer that has not authenticated
//! gets [`HANDSHAKE_TIMEOUT`]. Connections beyond
//! [`ServerOptions::max_connections`] are answered `busy` and closed.
//! A malformed frame gets an `Error` reply naming what is wrong and the
//! connection is closed (the framing can no longer be trusted); the server
//! itself carries on.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::auth::{self, Key};
use super::error::DrError;
use super::frame::{self, read_message, write_message, FrameError};
use super::handler::{Repo, RepoOptions};
use super::proto::{ErrorKind, ErrorReply, MsgType};

/// How long an unauthenticated peer may take over the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest a read or write may stall before the connection is dropped.
    /// Longer than a rate-limited client needs between two chunks.
    pub io_timeout: Duration,
    pub repo: RepoOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 64,
            io_timeout: Duration::from_secs(300),
            repo: RepoOptions::default(),
        }
    }
}

struct Shared {
    stop: AtomicBool,
    /// Open connections, to cut them on shutdown.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
    active: AtomicUsize,
}

impl Shared {
    fn close_all(&self) {
        for s in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A bound DR server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    key: Arc<Key>,
    repo: Arc<Repo>,
    opts: ServerOptions,
    shared: Arc<Shared>,
}

/// Stops a running server from another thread (a signal handler's).
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
    wake: SocketAddr,
}

impl ShutdownHandle {
    /// Stop accepting, cut every open connection, and let
    /// [`Server::run`] return once their threads have finished.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // `accept` has no timeout: wake it with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.wake, Duration::from_secs(1));
    }
}

impl Server {
    /// Open the store under `root` (created if missing) and listen on
    /// `listen` (`host:port`; port 0 picks a free one).
    pub fn bind(
        listen: &str,
        root: &Path,
        key: Key,
        opts: ServerOptions,
    ) -> Result<Server, DrError> {
        let repo = Repo::open(root, opts.repo.clone())?;
        let listener = TcpListener::bind(listen).map_err(|source| DrError::Bind {
            addr: listen.into(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| DrError::Bind {
            addr: listen.into(),
            source,
        })?;
        Ok(Server {
            listener,
            addr,
            key: Arc::new(key),
            repo: Arc::new(repo),
            opts,
            shared: Arc::new(Shared {
                stop: AtomicBool::new(false),
                conns: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                active: AtomicUsize::new(0),
            }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn repo(&self) -> &Arc<Repo> {
        &self.repo
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        ShutdownHandle {
            shared: self.shared.clone(),
            wake: SocketAddr::new(ip, self.addr.port()),
        }
    }

    /// Serve until [`ShutdownHandle::shutdown`]; returns after every
    /// connection thread has finished.
    pub fn run(self) -> Result<(), DrError> {
        tracing::info!(addr = %self.addr, root = %self.repo.root().display(), "DR server listening");
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for incoming in self.listener.incoming() {
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let (done, live): (Vec<_>, Vec<_>) = threads.into_iter().partition(|t| t.is_finished());
            threads = live;
            for t in done {
                let _ = t.join();
            }
            let stream = match incoming {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors or a connection reset before
                    // accept: pause rather than spin, then go on.
                    tracing::warn!(error = %e, "accepting a DR connection failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
            if self.shared.active.load(Ordering::SeqCst) >= self.opts.max_connections {
                tracing::warn!(%peer, max = self.opts.max_connections, "too many DR connections; refusing one");
                refuse_busy(stream, &peer, self.opts.max_connections);
                continue;
            }
            self.shared.active.fetch_add(1, Ordering::SeqCst);
            let conn = Connection {
                id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
                peer: peer.clone(),
                key: self.key.clone(),
                repo: self.repo.clone(),
                shared: self.shared.clone(),
                io_timeout: self.opts.io_timeout,
            };
            let spawned = std::thread::Builder::new()
                .name("ckptfs-dr-conn".into())
                .spawn(move || conn.serve(stream));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.shared.active.fetch_sub(1, Ordering::SeqCst);
                    tracing::error!(%peer, error = %e, "cannot start a DR connection thread");
                }
            }
        }
        self.shared.close_all();
        for t in threads {
            let _ = t.join();
        }
        tracing::info!(addr = %self.addr, "DR server stopped");
        Ok(())
    }
}

fn refuse_busy(stream: TcpStream, peer: &str, max: usize) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut w = &stream;
    auth::send_error(
        &mut w,
        peer,
        ErrorKind::Busy,
        &format!("the server is serving its maximum of {max} connections; try again later"),
    );
}

struct Connection {
    id: u64,
    peer: String,
    key: Arc<Key>,
    repo: Arc<Repo>,
    shared: Arc<Shared>,
    io_timeout: Duration,
}

impl Connection {
    fn serve(self, stream: TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            self.shared
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.id, clone);
        }
        // A shutdown that raced with accept must still cut this one.
        if self.shared.stop.load(Ordering::SeqCst) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        self.repo
            .stats()
            .connections
            .fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.serve_stream(&stream) {
            tracing::debug!(peer = %self.peer, error = %e, "DR connection ended");
        }
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }

    fn serve_stream(&self, stream: &TcpStream) -> Result<(), DrError> {
        let peer = self.peer.as_str();
        let setup = |t| -> Result<(), DrError> {
            stream
                .set_read_timeout(Some(t))
                .and_then(|()| stream.set_write_timeout(Some(t)))
                .map_err(|source| FrameError::Io {
                    peer: peer.into(),
                    source,
                })?;
            Ok(())
        };
        let _ = stream.set_nodelay(true);
        setup(HANDSHAKE_TIMEOUT.min(self.io_timeout))?;
        let mut r = BufReader::with_capacity(256 << 10, stream);
        let mut w = BufWriter::with_capacity(64 << 10, stream);
        if let Err(e) = auth::server_handshake(&mut r, &mut w, peer, &self.key) {
            self.report(&mut w, &e);
            return Err(e);
        }
        tracing::info!(%peer, "DR client authenticated");
        setup(self.io_timeout)?;
        loop {
            let msg = match read_message(&mut r, peer, usize::MAX) {
                Ok(m) => m,
                Err(FrameError::Closed { .. }) => return Ok(()),
                Err(e) => {
                    let e = DrError::Frame(e);
                    self.report(&mut w, &e);
                    return Err(e);
                }
            };
            let reply = self.repo.handle(&msg);
            if reply.kind == MsgType::Error {
                if let Ok(e) = serde_json::from_slice::<ErrorReply>(&reply.payload) {
                    tracing::info!(%peer, request = %msg.kind, kind = ?e.kind, message = %e.message, "DR request refused");
                }
            }
            write_message(&mut w, peer, reply.kind, &reply.payload)?;
            w.flush().map_err(|source| FrameError::Io {
                peer: peer.into(),
                source,
            })?;
        }
    }

    /// Log why the connection ends, and tell the peer when it is its fault.
    fn report(&self, w: &mut dyn Write, e: &DrError) {
        let peer = self.peer.as_str();
        match e {
            DrError::AuthFailed { .. } => {
                self.repo
                    .stats()
                    .auth_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, error = %e, "DR authentication failed");
            }
            DrError::Frame(f) if f.is_timeout() => {
                tracing::info!(%peer, "DR connection idle past its timeout; closing");
            }
            DrError::Frame(f) if f.is_transport() => {
                tracing::info!(%peer, error = %e, "DR connection lost");
            }
            DrError::Frame(f) => {
                tracing::warn!(%peer, error = %e, "malformed DR frame; closing the connection");
                let (kind, message) = match f {
                    FrameError::FutureVersion { version, .. } => (
                        ErrorKind::Version,
                        format!(
                            "the client sent DR protocol version {version}; this server speaks up \
                             to version {}: upgrade ckptfs on the server",
                            frame::VERSION
                        ),
                    ),
                    other => (ErrorKind::Invalid, other.to_string()),
                };
                auth::send_error(w, peer, kind, &message);
            }
            other => tracing::warn!(%peer, error = %other, "DR connection failed"),
        }
    }
}
