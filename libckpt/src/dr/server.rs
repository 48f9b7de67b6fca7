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
use super::frame::{self, FrameError};
use super::handler::{Repo, RepoOptions};
use super::pipeline;
use super::proto::ErrorKind;
use super::transport::{Choice, Io, RdmaOptions, Stream, Tcp};

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
    /// `tcp`: TCP only; `rdma`: RDMA only; `auto`: TCP, and RDMA on the
    /// same port too where a verbs device exists.
    pub transport: Choice,
    pub rdma: RdmaOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 64,
            io_timeout: Duration::from_secs(300),
            repo: RepoOptions::default(),
            transport: Choice::Auto,
            rdma: RdmaOptions::default(),
        }
    }
}

struct Shared {
    stop: AtomicBool,
    /// Open connections, to cut them on shutdown.
    conns: Mutex<HashMap<u64, Arc<dyn Stream>>>,
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
            s.shutdown();
        }
    }
}

/// A bound DR server, ready to [`run`](Server::run).
pub struct Server {
    listener: Option<TcpListener>,
    #[cfg(feature = "rdma")]
    rdma: Option<super::rdma::RdmaListener>,
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
    /// The TCP listener to wake, when there is one.
    wake: Option<SocketAddr>,
}

impl ShutdownHandle {
    /// Stop accepting, cut every open connection, and let
    /// [`Server::run`] return once their threads have finished.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // `accept` has no timeout: wake it with a connection of our own.
        // The RDMA accept loop polls the stop flag.
        if let Some(wake) = self.wake {
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        }
    }
}

impl Server {
    /// Open the store under `root` (created if missing) and listen on
    /// `listen` (`host:port`; port 0 picks a free one) over the transports
    /// `opts.transport` asks for.
    pub fn bind(
        listen: &str,
        root: &Path,
        key: Key,
        opts: ServerOptions,
    ) -> Result<Server, DrError> {
        let repo = Repo::open(root, opts.repo.clone())?;
        let bind_err = |source| DrError::Bind {
            addr: listen.into(),
            source,
        };
        let listener = match opts.transport {
            Choice::Rdma => None,
            Choice::Tcp | Choice::Auto => Some(TcpListener::bind(listen).map_err(bind_err)?),
        };
        let tcp_addr = match &listener {
            Some(l) => Some(l.local_addr().map_err(bind_err)?),
            None => None,
        };
        #[cfg(feature = "rdma")]
        let rdma = Self::bind_rdma(listen, tcp_addr, &opts)?;
        #[cfg(feature = "rdma")]
        let rdma_addr = rdma.as_ref().map(|r| r.local_addr());
        #[cfg(not(feature = "rdma"))]
        let rdma_addr: Option<SocketAddr> = match opts.transport {
            Choice::Rdma => {
                return Err(bind_err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "this ckptfs was built without RDMA support (cargo feature `rdma`)",
                )))
            }
            _ => None,
        };
        let Some(addr) = tcp_addr.or(rdma_addr) else {
            return Err(bind_err(std::io::Error::other("no transport to listen on")));
        };
        Ok(Server {
            listener,
            #[cfg(feature = "rdma")]
            rdma,
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

    /// The RDMA listener: required for `rdma`, best effort for `auto` (on
    /// the port TCP got, so clients need one address).
    #[cfg(feature = "rdma")]
    fn bind_rdma(
        listen: &str,
        tcp: Option<SocketAddr>,
        opts: &ServerOptions,
    ) -> Result<Option<super::rdma::RdmaListener>, DrError> {
        if opts.transport == Choice::Tcp {
            return Ok(None);
        }
        let addr = match tcp {
            Some(a) => a,
            None => *super::transport::resolve(listen)?
                .first()
                .ok_or_else(|| DrError::Bind {
                    addr: listen.into(),
                    source: std::io::Error::other("it resolves to no address"),
                })?,
        };
        if opts.transport == Choice::Auto {
            if let Some(why) = super::transport::rdma_unavailable() {
                tracing::info!(%addr, reason = %why, "DR server: TCP only");
                return Ok(None);
            }
        }
        match super::rdma::RdmaListener::bind(addr, opts.rdma) {
            Ok(l) => Ok(Some(l)),
            Err(e) if opts.transport == Choice::Auto => {
                tracing::warn!(%addr, error = %e, "DR server: RDMA listener failed; TCP only");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The address actually bound (TCP's, or RDMA's when TCP is off).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The transports listening, for the start-up message: "tcp",
    /// "tcp+rdma (rxe0)", "rdma (rxe0)".
    pub fn transports(&self) -> String {
        let mut out = Vec::new();
        if self.listener.is_some() {
            out.push("tcp".to_string());
        }
        #[cfg(feature = "rdma")]
        if let Some(r) = &self.rdma {
            let dev = r.device();
            out.push(if dev.is_empty() {
                "rdma".into()
            } else {
                format!("rdma ({dev})")
            });
        }
        out.join("+")
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
            wake: self
                .listener
                .is_some()
                .then(|| SocketAddr::new(ip, self.addr.port())),
        }
    }

    /// Serve until [`ShutdownHandle::shutdown`]; returns after every
    /// connection thread has finished.
    pub fn run(self) -> Result<(), DrError> {
        tracing::info!(addr = %self.addr, transports = %self.transports(), root = %self.repo.root().display(), "DR server listening");
        let spawner = Spawner {
            key: self.key.clone(),
            repo: self.repo.clone(),
            shared: self.shared.clone(),
            opts: self.opts.clone(),
            threads: Arc::new(Mutex::new(Vec::new())),
        };
        #[cfg(feature = "rdma")]
        let rdma_thread = match self.rdma {
            Some(l) => {
                let sp = spawner.clone();
                let t = std::thread::Builder::new()
                    .name("ckptfs-dr-rdma".into())
                    .spawn(move || sp.accept_rdma(&l))
                    .map_err(|source| DrError::Bind {
                        addr: format!("{} (RDMA)", self.addr),
                        source,
                    })?;
                Some(t)
            }
            None => None,
        };
        if let Some(listener) = &self.listener {
            spawner.accept_tcp(listener);
        }
        #[cfg(feature = "rdma")]
        if let Some(t) = rdma_thread {
            let _ = t.join();
        }
        self.shared.close_all();
        let threads =
            std::mem::take(&mut *spawner.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        tracing::info!(addr = %self.addr, "DR server stopped");
        Ok(())
    }
}

/// Starts connection threads, from whichever accept loop.
#[derive(Clone)]
struct Spawner {
    key: Arc<Key>,
    repo: Arc<Repo>,
    shared: Arc<Shared>,
    opts: ServerOptions,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Spawner {
    fn accept_tcp(&self, listener: &TcpListener) {
        for incoming in listener.incoming() {
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
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
            self.start(Arc::new(Tcp::new(stream, "")), peer);
        }
    }

    #[cfg(feature = "rdma")]
    fn accept_rdma(&self, listener: &super::rdma::RdmaListener) {
        while !self.shared.stop.load(Ordering::SeqCst) {
            match listener.accept(Duration::from_millis(200)) {
                Ok(Some(s)) => {
                    let peer = format!("{} (RDMA)", s.peer());
                    self.start(Arc::new(s), peer);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an RDMA DR connection failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn start(&self, stream: Arc<dyn Stream>, peer: String) {
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        let (done, live): (Vec<_>, Vec<_>) = std::mem::take(&mut *threads)
            .into_iter()
            .partition(|t| t.is_finished());
        *threads = live;
        for t in done {
            let _ = t.join();
        }
        if self.shared.active.load(Ordering::SeqCst) >= self.opts.max_connections {
            tracing::warn!(%peer, max = self.opts.max_connections, "too many DR connections; refusing one");
            refuse_busy(&stream, &peer, self.opts.max_connections);
            return;
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
}

fn refuse_busy(stream: &Arc<dyn Stream>, peer: &str, max: usize) {
    let _ = stream.set_timeout(Duration::from_secs(1));
    let mut w = Io(stream.clone());
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
    fn serve(self, stream: Arc<dyn Stream>) {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.id, stream.clone());
        // A shutdown that raced with accept must still cut this one.
        if self.shared.stop.load(Ordering::SeqCst) {
            stream.shutdown();
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

    fn serve_stream(&self, stream: &Arc<dyn Stream>) -> Result<(), DrError> {
        let peer = self.peer.as_str();
        let setup = |t| -> Result<(), DrError> {
            stream.set_timeout(t).map_err(|source| FrameError::Io {
                peer: peer.into(),
                source,
            })?;
            Ok(())
        };
        setup(HANDSHAKE_TIMEOUT.min(self.io_timeout))?;
        let mut r = BufReader::with_capacity(256 << 10, Io(stream.clone()));
        let mut w = BufWriter::with_capacity(64 << 10, Io(stream.clone()));
        if let Err(e) = auth::server_handshake(&mut r, &mut w, peer, &self.key) {
            self.report(&mut w, &e);
            return Err(e);
        }
        tracing::info!(%peer, "DR client authenticated");
        setup(self.io_timeout)?;
        let ended = pipeline::serve(&self.repo, peer, &mut r, w);
        if let Err(e) = &ended.result {
            match ended.writer {
                Some(mut w) => self.report(&mut w, e),
                // The replies could not be written: the peer is gone,
                // so the reason is only logged.
                None => self.report(&mut std::io::sink(), e),
            }
        }
        ended.result
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
