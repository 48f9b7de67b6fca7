//! The control socket: how the `ckptfs` command talks to a running daemon
//! (status, commit, unmount).
//!
//! A Unix socket at `<cache>/.ckptfs/control.sock`, mode 0600, carrying one
//! JSON object per line in each direction, every one with a `version`:
//!
//! ```text
//! -> {"version":1,"op":"commit","job":"lulesh","set":"step-000100"}
//! -> {"version":1,"op":"committed","job":"heat","set":"ck.v0000000001"}
//! <- {"version":1,"ok":true,"result":{...}}
//! <- {"version":1,"ok":false,"error":{"kind":"busy","message":"..."}}
//! ```
//!
//! JSON lines so that an admin can poke a daemon with `socat` and read the
//! answer. Lines are bounded by [`MAX_FRAME`]: a peer that never sends a
//! newline gets an error, not an unbounded allocation. The version is read
//! before anything else, so a newer peer is told "newer protocol" rather
//! than a confusing unknown-field error.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::path::{JobName, SetName};

/// The protocol version this build speaks, and the newest it accepts.
pub const VERSION: u32 = 1;
/// Longest line either side may send, newline excluded.
pub const MAX_FRAME: usize = 1 << 20;
/// File name of the socket in the store's metadata directory.
pub const SOCKET_NAME: &str = "control.sock";
/// How long [`Client::call`] waits on each read or write unless told
/// otherwise with [`Client::set_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once; more are answered `busy` and closed, so a
/// runaway script cannot make the daemon spawn threads without bound.
const MAX_CONNECTIONS: usize = 64;
/// Suffix of the lock file that makes "is a daemon serving this socket?"
/// race-free between two daemons starting at the same instant.
const LOCK_SUFFIX: &str = ".lock";

/// `<cache>/.ckptfs/control.sock`
pub fn socket_path(cache_root: &Path) -> PathBuf {
    cache_root.join(crate::store::META_DIR).join(SOCKET_NAME)
}

/// What the command asks the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Commit {
        job: JobName,
        set: SetName,
    },
    Unmount {
        force: bool,
    },
    /// The C library (mounted mode) committed `set` in the cache itself:
    /// drain it now rather than at the next look.
    Committed {
        job: JobName,
        set: SetName,
    },
}

/// The class of a refused request, for the command's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The request itself is wrong (malformed, bad name, unknown op).
    Invalid,
    /// The job or set it names does not exist.
    NotFound,
    /// Not now: the set is being written, the mount is in use, too many
    /// connections.
    Busy,
    /// Never: the peer may not do this.
    Refused,
    /// The daemon tried and failed.
    Io,
}

/// The daemon's answer when it did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// Why a line is not a valid request or response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("message of {len} bytes is over the {MAX_FRAME}-byte limit")]
    TooLong { len: usize },
    #[error("a message must be a single line")]
    NotOneLine,
    #[error("message is not valid JSON: {0}")]
    Syntax(String),
    #[error("message is not a JSON object")]
    NotAnObject,
    #[error("message has no protocol version")]
    NoVersion,
    #[error("protocol version {0} is not a valid version")]
    BadVersion(String),
    #[error("protocol version {found} is newer than this ckptfs ({VERSION})")]
    FutureVersion { found: u64 },
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Everything that can go wrong talking over the control socket. Every
/// variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot connect to the control socket {path}: {source} \
         (is a ckptfs daemon running for this cache?)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("{failure}")]
    Failed { path: PathBuf, failure: Failure },
}

impl ControlError {
    pub fn path(&self) -> &Path {
        match self {
            ControlError::Connect { path, .. }
            | ControlError::Io { path, .. }
            | ControlError::Protocol { path, .. }
            | ControlError::Failed { path, .. } => path,
        }
    }

    /// True when no daemon is listening: the socket is missing, or its
    /// daemon died. The command can then work on the cache directly.
    pub fn daemon_absent(&self) -> bool {
        match self {
            ControlError::Connect { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }

    fn io(path: &Path, source: io::Error) -> Self {
        ControlError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn protocol(path: &Path, message: impl Into<String>) -> Self {
        ControlError::Protocol {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// The body of one line: the trailing newline (and a `\r` from a
/// hand-typed line) stripped, size and single-line-ness checked.
fn frame_body(line: &[u8]) -> Result<&[u8], DecodeError> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    if body.len() > MAX_FRAME {
        return Err(DecodeError::TooLong { len: body.len() });
    }
    if body.contains(&b'\n') {
        return Err(DecodeError::NotOneLine);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    Ok(body)
}

/// Parse a line into its fields, checking the version before anything else.
/// serde_json's own marker for a raw JSON value. An object whose first
/// key it is gets its string parsed as JSON, and re-encoding a map sorts
/// it first: so a message carrying it anywhere would decode one way and,
/// re-encoded, another (the `control` fuzz target found this).
const RESERVED_KEY: &str = "$serde_json::private::";

fn reserved_key(v: &Value) -> Option<&str> {
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(m) => {
                if let Some(k) = m.keys().find(|k| k.starts_with(RESERVED_KEY)) {
                    return Some(k);
                }
                todo.extend(m.values());
            }
            Value::Array(a) => todo.extend(a),
            _ => {}
        }
    }
    None
}

fn decode_object(line: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let body = frame_body(line)?;
    let value: Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::Syntax(e.to_string()))?;
    if let Some(k) = reserved_key(&value) {
        return Err(DecodeError::Invalid(format!("reserved key `{k}`")));
    }
    let Value::Object(mut map) = value else {
        return Err(DecodeError::NotAnObject);
    };
    match map.remove("version") {
        None => Err(DecodeError::NoVersion),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v == u64::from(VERSION) => Ok(map),
            Some(v) if v > u64::from(VERSION) => Err(DecodeError::FutureVersion { found: v }),
            _ => Err(DecodeError::BadVersion(n.to_string())),
        },
        Some(other) => Err(DecodeError::BadVersion(other.to_string())),
    }
}

/// Parse one request line (with or without its newline). Never panics.
pub fn decode_request(line: &[u8]) -> Result<Request, DecodeError> {
    let map = decode_object(line)?;
    let keys: Vec<String> = map.keys().cloned().collect();
    let req: Request = serde_json::from_value(Value::Object(map))
        .map_err(|e| DecodeError::Invalid(e.to_string()))?;
    // serde ignores extra fields next to a unit variant (`status`) even
    // with deny_unknown_fields: compare with what the request consists of.
    if let Ok(Value::Object(known)) = serde_json::to_value(&req) {
        if let Some(k) = keys.iter().find(|k| !known.contains_key(k.as_str())) {
            return Err(DecodeError::Invalid(format!("unknown field `{k}`")));
        }
    }
    Ok(req)
}

#[derive(Serialize)]
struct RequestOut<'a> {
    version: u32,
    #[serde(flatten)]
    request: &'a Request,
}

/// One request line, newline-terminated.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut out = serde_json::to_vec(&RequestOut {
        version: VERSION,
        request: req,
    })
    // Validated names and bools only: there is nothing that can fail.
    .expect("serializing a control request cannot fail");
    out.push(b'\n');
    out
}

/// Parse one response line: `Ok(Ok(result))`, `Ok(Err(failure))` when the
/// daemon refused, `Err` when the line itself is bad. Never panics.
pub fn decode_response(line: &[u8]) -> Result<Result<Value, Failure>, DecodeError> {
    let mut map = decode_object(line)?;
    let ok = match map.remove("ok") {
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(DecodeError::Invalid("`ok` must be true or false".into())),
        None => return Err(DecodeError::Invalid("missing field `ok`".into())),
    };
    let (want, other) = if ok {
        ("result", "error")
    } else {
        ("error", "result")
    };
    let Some(payload) = map.remove(want) else {
        return Err(DecodeError::Invalid(format!("missing field `{want}`")));
    };
    if map.contains_key(other) {
        return Err(DecodeError::Invalid(format!(
            "a response with \"ok\":{ok} has no `{other}`"
        )));
    }
    if let Some(key) = map.keys().next() {
        return Err(DecodeError::Invalid(format!("unknown field `{key}`")));
    }
    if ok {
        Ok(Ok(payload))
    } else {
        serde_json::from_value(payload)
            .map(Err)
            .map_err(|e| DecodeError::Invalid(format!("bad `error`: {e}")))
    }
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    version: u32,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Failure>,
}

/// One response line, newline-terminated. A result too large for a frame
/// is replaced by a failure saying so, so the peer never has to read past
/// [`MAX_FRAME`].
pub fn encode_response(r: &Result<Value, Failure>) -> Vec<u8> {
    let line = response_line(r);
    if line.len() <= MAX_FRAME + 1 {
        return line;
    }
    response_line(&Err(Failure::new(
        FailureKind::Io,
        format!(
            "the answer is {} bytes, over the {MAX_FRAME}-byte limit of the control protocol",
            line.len() - 1
        ),
    )))
}

fn response_line(r: &Result<Value, Failure>) -> Vec<u8> {
    let out = match r {
        Ok(v) => ResponseOut {
            version: VERSION,
            ok: true,
            result: Some(v),
            error: None,
        },
        Err(f) => ResponseOut {
            version: VERSION,
            ok: false,
            result: None,
            error: Some(f),
        },
    };
    // A `Value` has string keys and finite numbers by construction.
    let mut line = serde_json::to_vec(&out).expect("serializing a control response cannot fail");
    line.push(b'\n');
    line
}

/// Read one line of at most [`MAX_FRAME`] bytes (newline excluded).
/// `Ok(None)` on a clean end of stream between lines.
fn read_frame<R: BufRead>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    // One byte over the limit plus the newline: enough to tell "exactly
    // MAX_FRAME" from "too long" without reading further.
    let n = r
        .by_ref()
        .take(MAX_FRAME as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        return Ok(Some(line));
    }
    if line.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message is longer than the {MAX_FRAME}-byte limit"),
        ));
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection closed in the middle of a message",
    ))
}

/// What the daemon does with a request. Called on the connection's thread;
/// requests of one connection arrive in order, those of different
/// connections concurrently.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> Result<Value, Failure>;
}

/// The uid and pid of the process at the other end of a Unix socket.
fn peer_cred(sock: &impl AsRawFd) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred and `len` its exact size, as
    // SO_PEERCRED requires; the fd is a live socket borrowed from `sock`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// Who may drive the daemon: root, and the user it runs as. The socket's
/// mode already says so; this holds even if the mode is loosened or a
/// peer connected in the instant between bind and chmod.
fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == own_uid
}

/// Take the lock beside the socket without waiting. `Ok(None)` when
/// another process holds it.
fn try_lock(path: &Path) -> io::Result<Option<File>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // SAFETY: flock on a descriptor `f` owns; no pointers.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(f));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

fn in_use(pid: Option<i32>) -> io::Error {
    let who = match pid {
        Some(pid) if pid > 0 => format!("a ckptfs daemon (pid {pid})"),
        _ => "another ckptfs daemon".to_owned(),
    };
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("{who} is already serving this cache; unmount it first"),
    )
}

/// Clear the way for bind: refuse if a live process answers on `path`,
/// remove a socket left by a dead one, and leave anything that is not a
/// socket alone.
fn clear_stale(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "it exists and is not a socket; move it away",
        ));
    }
    match UnixStream::connect(path) {
        Ok(s) => Err(in_use(peer_cred(&s).ok().map(|c| c.pid))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Wait until `fd` is readable or hangs up; retries EINTR.
fn poll_in(fds: &mut [libc::pollfd]) -> io::Result<()> {
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of
        // the length passed.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// State shared between the server, its accept thread and its connections.
struct Shared {
    path: PathBuf,
    handler: Arc<dyn Handler>,
    own_uid: u32,
    /// Read halves of live connections, so that shutdown can end their
    /// blocking reads.
    conns: Mutex<HashMap<u64, UnixStream>>,
    next_id: AtomicU64,
    active: AtomicUsize,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, UnixStream>> {
        // A connection thread that panicked holding the lock left the map
        // consistent (insert/remove only): keep using it.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The daemon's side: a listening socket served on background threads.
/// Dropping it (or [`Server::shutdown`]) stops accepting, ends idle
/// connections and removes the socket file.
pub struct Server {
    shared: Arc<Shared>,
    /// Writing end of the wake-up pipe; dropping it wakes the accept loop.
    stop: Option<OwnedFd>,
    accept: Option<JoinHandle<()>>,
    /// Identity of the socket file we bound, so that we never remove one
    /// that a later daemon put in its place.
    ino: (u64, u64),
    _lock: File,
}

impl Server {
    /// Bind `path` and serve it. Refused (with `ErrorKind::AddrInUse`) if a
    /// live daemon is serving it; a socket left by a dead daemon is
    /// replaced.
    pub fn start(path: &Path, handler: Arc<dyn Handler>) -> Result<Server, ControlError> {
        let err = |e| ControlError::io(path, e);
        let mut lock_name = path.as_os_str().to_owned();
        lock_name.push(LOCK_SUFFIX);
        let lock = match try_lock(Path::new(&lock_name)).map_err(err)? {
            Some(lock) => lock,
            None => {
                let pid = UnixStream::connect(path)
                    .ok()
                    .and_then(|s| peer_cred(&s).ok())
                    .map(|c| c.pid);
                return Err(err(in_use(pid)));
            }
        };
        clear_stale(path).map_err(err)?;
        let listener = UnixListener::bind(path).map_err(err)?;
        let prepared = (|| {
            // bind honours the umask; a peer that connects before the chmod
            // still meets the uid check.
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
            let md = fs::symlink_metadata(path)?;
            let (stop_r, stop_w) = io::pipe()?;
            Ok((md, stop_r, stop_w))
        })();
        let (md, stop_r, stop_w) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(err(e));
            }
        };
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            handler,
            own_uid: effective_uid(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("ckptfs-control".into())
            .spawn(move || accept_loop(&s, &listener, &OwnedFd::from(stop_r)))
            .map_err(|e| {
                let _ = fs::remove_file(path);
                err(e)
            })?;
        Ok(Server {
            shared,
            stop: Some(OwnedFd::from(stop_w)),
            accept: Some(accept),
            ino: (md.dev(), md.ino()),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Stop accepting, end idle connections, remove the socket file. A
    /// request being handled finishes and its answer is still sent, so a
    /// handler may itself trigger the shutdown (unmount does).
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(stop) = self.stop.take() else {
            return;
        };
        drop(stop);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for conn in self.shared.conns().values() {
            // Only the read side: an answer being written still goes out.
            let _ = conn.shutdown(std::net::Shutdown::Read);
        }
        let path = &self.shared.path;
        if let Ok(md) = fs::symlink_metadata(path) {
            if (md.dev(), md.ino()) == self.ino {
                let _ = fs::remove_file(path);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener, stop: &OwnedFd) {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        if let Err(e) = poll_in(&mut fds) {
            tracing::error!("control socket {}: poll: {e}", shared.path.display());
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => admit(shared, stream),
            Err(e) => {
                tracing::warn!("control socket {}: accept: {e}", shared.path.display());
                // EMFILE and friends: back off instead of spinning on a
                // listener that stays readable.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn refuse(mut stream: UnixStream, kind: FailureKind, message: String) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(&encode_response(&Err(Failure::new(kind, message))));
}

fn admit(shared: &Arc<Shared>, stream: UnixStream) {
    let uid = match peer_cred(&stream) {
        Ok(c) => c.uid,
        Err(e) => {
            tracing::warn!("control socket {}: SO_PEERCRED: {e}", shared.path.display());
            return;
        }
    };
    if !peer_allowed(uid, shared.own_uid) {
        tracing::warn!(
            "control socket {}: refused a connection from uid {uid}",
            shared.path.display()
        );
        let msg = format!("uid {uid} may not control this ckptfs daemon (only root and its owner)");
        return refuse(stream, FailureKind::Refused, msg);
    }
    if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        let msg = format!("the daemon is already serving {MAX_CONNECTIONS} control connections");
        return refuse(stream, FailureKind::Busy, msg);
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    if let Ok(clone) = stream.try_clone() {
        shared.conns().insert(id, clone);
    }
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("ckptfs-control-conn".into())
        .spawn(move || {
            serve(&s, stream);
            s.conns().remove(&id);
            s.active.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        tracing::warn!("control socket {}: spawning: {e}", shared.path.display());
        shared.conns().remove(&id);
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answer the requests of one connection, in order, until it closes.
fn serve(shared: &Shared, stream: UnixStream) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("control socket {}: {e}", shared.path.display());
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_frame(&mut reader) {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) => {
                // The stream is out of step after a bad frame: answer, then
                // hang up.
                let f = Failure::new(FailureKind::Invalid, e.to_string());
                let _ = writer.write_all(&encode_response(&Err(f)));
                return;
            }
        };
        let answer = match decode_request(&line) {
            Ok(req) => call_handler(shared, req),
            Err(e) => Err(Failure::new(FailureKind::Invalid, e.to_string())),
        };
        if writer.write_all(&encode_response(&answer)).is_err() {
            return;
        }
    }
}

fn call_handler(shared: &Shared, req: Request) -> Result<Value, Failure> {
    let handler = &shared.handler;
    // A bug in one request's handling must not take the daemon (and with
    // it the mount) down; the panic message is in the daemon's log.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(req))).unwrap_or_else(
        |_| {
            Err(Failure::new(
                FailureKind::Io,
                "the daemon hit an internal error handling this request (see its log)",
            ))
        },
    )
}

/// The command's side: one connection, several calls in order.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connect to the daemon's socket. Reads and writes then time out after
    /// [`DEFAULT_TIMEOUT`].
    pub fn connect(path: &Path) -> Result<Client, ControlError> {
        let stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let writer = stream.try_clone().map_err(|e| ControlError::io(path, e))?;
        let mut client = Client {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
        };
        client.set_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(client)
    }

    /// Bound each read and write of [`Client::call`]: a daemon that hangs
    /// must not hang the command forever. `None` waits indefinitely (a
    /// commit of a large set takes as long as syncing it).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ControlError> {
        let s = self.reader.get_ref();
        s.set_read_timeout(timeout)
            .and_then(|()| s.set_write_timeout(timeout))
            .map_err(|e| ControlError::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send one request and wait for its answer. The daemon's refusal comes
    /// back as [`ControlError::Failed`].
    pub fn call(&mut self, req: &Request) -> Result<Value, ControlError> {
        let path = self.path.as_path();
        let timed_out = |e: io::Error, what: &str| {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                let msg = format!("the daemon did not {what} in time; it may be hung");
                ControlError::io(path, io::Error::new(io::ErrorKind::TimedOut, msg))
            } else {
                ControlError::io(path, e)
            }
        };
        if let Err(e) = self.writer.write_all(&encode_request(req)) {
            // A daemon that refuses a peer answers first and hangs up
            // without reading: its answer says more than EPIPE does.
            let hung_up = matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            );
            if let (true, Ok(Some(line))) = (hung_up, read_frame(&mut self.reader)) {
                if let Ok(Err(failure)) = decode_response(&line) {
                    return Err(ControlError::Failed {
                        path: path.to_owned(),
                        failure,
                    });
                }
            }
            return Err(timed_out(e, "accept the request"));
        }
        let line = match read_frame(&mut self.reader) {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Err(ControlError::protocol(
                    path,
                    "the daemon closed the connection without answering",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(ControlError::protocol(path, e.to_string()))
            }
            Err(e) => return Err(timed_out(e, "answer")),
        };
        match decode_response(&line) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(failure)) => Err(ControlError::Failed {
                path: path.to_owned(),
                failure,
            }),
            Err(e) => Err(ControlError::protocol(path, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicBool;

    fn commit(job: &str, set: &str) -> Request {
        Request::Commit {
            job: JobName::new(job).unwrap(),
            set: SetName::new(set).unwrap(),
        }
    }

    #[test]
    fn socket_path_is_in_the_metadata_dir() {
        assert_eq!(
            socket_path(Path::new("/var/tmp/ckptfs")),
            Path::new("/var/tmp/ckptfs/.ckptfs/control.sock")
        );
    }

    #[test]
    fn requests_round_trip_and_look_as_documented() {
        let line = encode_request(&commit("j", "s"));
        assert_eq!(
            line,
            b"{\"version\":1,\"op\":\"commit\",\"job\":\"j\",\"set\":\"s\"}\n"
        );
        for req in [
            Request::Status,
            commit("lulesh", "step-000100"),
            Request::Unmount { force: true },
            Request::Unmount { force: false },
            Request::Committed {
                job: JobName::new("heat").unwrap(),
                set: SetName::new("ck.v0000000001").unwrap(),
            },
        ] {
            let line = encode_request(&req);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(decode_request(&line).unwrap(), req);
            // Without its newline too, and as typed into socat.
            assert_eq!(decode_request(&line[..line.len() - 1]).unwrap(), req);
        }
        assert_eq!(
            decode_request(b"{\"op\":\"status\",\"version\":1}\r\n").unwrap(),
            Request::Status
        );
    }

    #[test]
    fn responses_round_trip_and_look_as_documented() {
        let ok: Result<Value, Failure> = Ok(json!({"sets": 3, "path": "passthrough"}));
        let line = encode_response(&ok);
        assert_eq!(
            line,
            b"{\"version\":1,\"ok\":true,\"result\":{\"path\":\"passthrough\",\"sets\":3}}\n"
        );
        let err: Result<Value, Failure> = Err(Failure::new(FailureKind::Busy, "set j/s is busy"));
        let line = encode_response(&err);
        assert_eq!(
            line,
            b"{\"version\":1,\"ok\":false,\"error\":{\"kind\":\"busy\",\"message\":\"set j/s is busy\"}}\n"
        );
        for r in [ok, err, Ok(Value::Null), Ok(json!([1, "x\ny", 2.5]))] {
            assert_eq!(decode_response(&encode_response(&r)).unwrap(), r);
        }
        for kind in [
            FailureKind::Invalid,
            FailureKind::NotFound,
            FailureKind::Busy,
            FailureKind::Refused,
            FailureKind::Io,
        ] {
            let r = Err(Failure::new(kind, "m"));
            assert_eq!(decode_response(&encode_response(&r)).unwrap(), r);
        }
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        let long = {
            let mut v = b"{\"version\":1,\"op\":\"status\",\"x\":\"".to_vec();
            v.resize(MAX_FRAME + 10, b'a');
            v
        };
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty"),
            (b"\n", "empty"),
            (b"   \r\n", "empty"),
            (b"{", "not valid JSON"),
            (b"\xff\xfe", "not valid JSON"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"op\":\"status\"}", "no protocol version"),
            (
                b"{\"version\":\"1\",\"op\":\"status\"}",
                "not a valid version",
            ),
            (b"{\"version\":0,\"op\":\"status\"}", "not a valid version"),
            (b"{\"version\":-1,\"op\":\"status\"}", "not a valid version"),
            (
                b"{\"version\":1.5,\"op\":\"status\"}",
                "not a valid version",
            ),
            (b"{\"version\":1,\"op\":\"reboot\"}", "unknown variant"),
            (b"{\"version\":1}", "missing field `op`"),
            (
                b"{\"version\":1,\"op\":\"commit\",\"job\":\"j\"}",
                "missing field `set`",
            ),
            (
                b"{\"version\":1,\"op\":\"commit\",\"job\":\"../etc\",\"set\":\"s\"}",
                "job name",
            ),
            (
                b"{\"version\":1,\"op\":\"unmount\",\"force\":1}",
                "invalid type",
            ),
            (
                b"{\"version\":1,\"op\":\"unmount\",\"force\":true,\"forse\":1}",
                "unknown field",
            ),
            (
                b"{\"version\":1,\"op\":\"status\"}\n{\"version\":1,\"op\":\"status\"}",
                "single line",
            ),
            (&long, "over the 1048576-byte limit"),
        ];
        for (line, want) in cases {
            let e = decode_request(line).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{:?}: {e}",
                String::from_utf8_lossy(&line[..line.len().min(60)])
            );
        }
    }

    #[test]
    fn unknown_fields_on_status_are_refused() {
        let e = decode_request(b"{\"version\":1,\"op\":\"status\",\"verbose\":true}");
        assert!(e.is_err(), "{e:?}");
    }

    #[test]
    fn future_versions_are_refused_before_anything_else() {
        // A newer peer may use ops and fields we have never heard of: the
        // version is what it must be told about.
        let line = b"{\"version\":2,\"op\":\"teleport\",\"where\":\"mars\"}";
        assert_eq!(
            decode_request(line).unwrap_err().to_string(),
            "protocol version 2 is newer than this ckptfs (1)"
        );
        let line = b"{\"version\":7,\"ok\":\"maybe\"}";
        assert_eq!(
            decode_response(line).unwrap_err(),
            DecodeError::FutureVersion { found: 7 }
        );
    }

    #[test]
    fn bad_responses_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            b"",
            b"null",
            b"{\"version\":1}",
            b"{\"version\":1,\"ok\":1,\"result\":1}",
            b"{\"version\":1,\"ok\":true}",
            b"{\"version\":1,\"ok\":false}",
            b"{\"version\":1,\"ok\":false,\"error\":\"boom\"}",
            b"{\"version\":1,\"ok\":false,\"error\":{\"kind\":\"weird\",\"message\":\"m\"}}",
            b"{\"version\":1,\"ok\":false,\"error\":{\"kind\":\"io\",\"message\":\"m\",\"x\":1}}",
            b"{\"version\":1,\"ok\":true,\"result\":1,\"error\":{\"kind\":\"io\",\"message\":\"m\"}}",
            b"{\"version\":1,\"ok\":true,\"result\":1,\"extra\":2}",
            // serde_json's raw-value marker, not first in its object (first,
            // it fails to parse already): the fuzzer's find.
            b"{\"version\":1,\"ok\":true,\"result\":{\"a\":1,\"$serde_json::private::RawValue\":\"[ -$\"}}",
            b"{\"version\":1,\"ok\":true,\"result\":[{\"a\":{\"b\":1,\"$serde_json::private::RawValue\":\"1\"}}]}",
        ];
        for line in cases {
            assert!(
                decode_response(line).is_err(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn frame_limit_is_exact() {
        // MAX_FRAME bytes plus a newline is a frame; one more byte is not.
        let mut at_limit = vec![b' '; MAX_FRAME];
        at_limit.push(b'\n');
        let mut r = io::Cursor::new(at_limit.clone());
        assert_eq!(read_frame(&mut r).unwrap().unwrap().len(), MAX_FRAME + 1);
        assert!(read_frame(&mut r).unwrap().is_none());
        assert_eq!(decode_request(&at_limit).unwrap_err(), DecodeError::Empty);

        let mut over = vec![b' '; MAX_FRAME + 1];
        over.push(b'\n');
        let e = read_frame(&mut io::Cursor::new(over)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A peer streaming without newlines is cut off at the limit.
        let mut endless = io::Read::take(io::repeat(b'x'), 64 << 20);
        let mut buffered = BufReader::new(&mut endless);
        assert!(read_frame(&mut buffered).is_err());
        assert!(endless.limit() > (60 << 20), "read far past the limit");

        let e = read_frame(&mut io::Cursor::new(b"{\"ver".to_vec())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn oversized_answers_become_failures() {
        let big = Ok(Value::String("x".repeat(MAX_FRAME)));
        let line = encode_response(&big);
        assert!(line.len() <= MAX_FRAME + 1);
        let Err(f) = decode_response(&line).unwrap() else {
            panic!("an oversized answer went out as is")
        };
        assert_eq!(f.kind, FailureKind::Io);
        assert!(f.message.contains("limit"), "{}", f.message);
    }

    #[test]
    fn only_root_and_the_owner_may_connect() {
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1000, 0));
    }

    // --- a real server on a real socket ---

    struct TestHandler {
        unmounted: AtomicBool,
    }

    impl Handler for TestHandler {
        fn handle(&self, req: Request) -> Result<Value, Failure> {
            match req {
                Request::Status => Ok(json!({"passthrough": true, "pid": std::process::id()})),
                Request::Commit { job, set } if job.as_str() == "busy" => Err(Failure::new(
                    FailureKind::Busy,
                    format!("set {job}/{set} is being written by pid 42"),
                )),
                Request::Commit { job, set } if set.as_str() == "slow" => {
                    std::thread::sleep(Duration::from_millis(300));
                    Ok(json!({"committed": format!("{job}/{set}")}))
                }
                Request::Commit { job, set } if set.as_str() == "panic" => {
                    panic!("test handler panics for {job}/{set}")
                }
                Request::Commit { job, set } => Ok(json!({"committed": format!("{job}/{set}")})),
                Request::Unmount { force } => {
                    self.unmounted.store(true, Ordering::SeqCst);
                    Ok(json!({"forced": force}))
                }
                Request::Committed { job, set } => Ok(json!({"notified": format!("{job}/{set}")})),
            }
        }
    }

    fn handler() -> Arc<TestHandler> {
        Arc::new(TestHandler {
            unmounted: AtomicBool::new(false),
        })
    }

    fn temp_dir() -> tempfile::TempDir {
        // Under /var/tmp: sun_path holds 108 bytes, and TMPDIR may be long.
        tempfile::Builder::new()
            .prefix("ckptfs-ctl-")
            .tempdir_in("/var/tmp")
            .unwrap()
    }

    #[test]
    fn serves_status_commit_unmount_with_mode_0600() {
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        let h = handler();
        let server = Server::start(&path, h.clone()).unwrap();
        assert_eq!(server.path(), path);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600, "socket mode {mode:o}");

        let mut c = Client::connect(&path).unwrap();
        let status = c.call(&Request::Status).unwrap();
        assert_eq!(status["passthrough"], json!(true));
        assert_eq!(
            c.call(&commit("j", "s")).unwrap(),
            json!({"committed": "j/s"})
        );
        assert_eq!(
            c.call(&Request::Unmount { force: true }).unwrap(),
            json!({"forced": true})
        );
        assert!(h.unmounted.load(Ordering::SeqCst));

        server.shutdown();
        assert!(!path.exists(), "shutdown left the socket file");
        // The connection was idle: shutdown ended it.
        assert!(c.call(&Request::Status).is_err());
        let e = Client::connect(&path).err().unwrap();
        assert!(e.daemon_absent(), "{e}");
        assert!(e.to_string().contains("is a ckptfs daemon running"), "{e}");
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
    }

    #[test]
    fn failures_come_back_with_kind_and_message() {
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        let _server = Server::start(&path, handler()).unwrap();
        let mut c = Client::connect(&path).unwrap();
        match c.call(&commit("busy", "s1")) {
            Err(e @ ControlError::Failed { .. }) => {
                assert_eq!(e.to_string(), "set busy/s1 is being written by pid 42");
                assert_eq!(e.path(), path);
                let ControlError::Failed { failure, .. } = e else {
                    unreachable!()
                };
                assert_eq!(failure.kind, FailureKind::Busy);
            }
            other => panic!("{other:?}"),
        }
        // A panicking handler is an error for that request, not for the
        // daemon or the connection.
        let e = c.call(&commit("j", "panic")).unwrap_err();
        assert!(
            matches!(&e, ControlError::Failed { failure, .. } if failure.kind == FailureKind::Io),
            "{e:?}"
        );
        assert!(c.call(&Request::Status).is_ok());
    }

    #[test]
    fn garbage_gets_an_answer_and_the_connection_goes_on() {
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        let _server = Server::start(&path, handler()).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        s.write_all(b"not json\n{\"version\":9,\"op\":\"status\"}\n")
            .unwrap();
        s.write_all(&encode_request(&Request::Status)).unwrap();
        let first = decode_response(&read_frame(&mut r).unwrap().unwrap()).unwrap();
        assert!(matches!(
            first,
            Err(Failure {
                kind: FailureKind::Invalid,
                ..
            })
        ));
        let second = decode_response(&read_frame(&mut r).unwrap().unwrap()).unwrap();
        assert_eq!(
            second.unwrap_err().message,
            "protocol version 9 is newer than this ckptfs (1)"
        );
        assert!(decode_response(&read_frame(&mut r).unwrap().unwrap())
            .unwrap()
            .is_ok());

        // An endless line is answered and the connection closed.
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..(MAX_FRAME / chunk.len() + 2) {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        let answer = decode_response(&read_frame(&mut r).unwrap().unwrap()).unwrap();
        assert!(answer.unwrap_err().message.contains("limit"));
        // Then it hangs up (a reset, as our unread bytes were discarded).
        assert!(!matches!(read_frame(&mut r), Ok(Some(_))));
    }

    #[test]
    fn two_clients_at_once() {
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        let _server = Server::start(&path, handler()).unwrap();
        let mut slow = Client::connect(&path).unwrap();
        let mut fast = Client::connect(&path).unwrap();
        let t = std::thread::spawn(move || slow.call(&commit("j", "slow")));
        // The slow commit does not hold the fast client up.
        for _ in 0..5 {
            fast.call(&Request::Status).unwrap();
        }
        assert_eq!(t.join().unwrap().unwrap(), json!({"committed": "j/slow"}));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut c = Client::connect(&path).unwrap();
                    for k in 0..20 {
                        let set = format!("s{i}-{k}");
                        let v = c.call(&commit("j", &set)).unwrap();
                        assert_eq!(v, json!({"committed": format!("j/{set}")}));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        // What a SIGKILLed daemon leaves: the socket file, nobody behind it.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert_eq!(
            UnixStream::connect(&path).unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        let _server = Server::start(&path, handler()).unwrap();
        Client::connect(&path)
            .unwrap()
            .call(&Request::Status)
            .unwrap();
    }

    #[test]
    fn a_live_socket_is_not_taken_over() {
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        let first = Server::start(&path, handler()).unwrap();
        let e = Server::start(&path, handler()).err().unwrap();
        let ControlError::Io { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
        // The refused start did not disturb the first one.
        Client::connect(&path)
            .unwrap()
            .call(&Request::Status)
            .unwrap();
        drop(first);
        assert!(!path.exists());
        // Once it is gone, the socket can be served again.
        let _again = Server::start(&path, handler()).unwrap();
    }

    #[test]
    fn a_foreign_listener_or_file_is_not_removed() {
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        let foreign = UnixListener::bind(&path).unwrap();
        let e = Server::start(&path, handler()).err().unwrap();
        assert!(e.to_string().contains("already serving"), "{e}");
        drop(foreign);
        fs::remove_file(&path).unwrap();

        fs::write(&path, b"precious").unwrap();
        let e = Server::start(&path, handler()).err().unwrap();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn shutdown_lets_an_answer_in_flight_out() {
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        let server = Server::start(&path, handler()).unwrap();
        let mut c = Client::connect(&path).unwrap();
        c.call(&Request::Status).unwrap();
        let t = std::thread::spawn(move || c.call(&commit("j", "slow")));
        std::thread::sleep(Duration::from_millis(100));
        server.shutdown();
        assert_eq!(t.join().unwrap().unwrap(), json!({"committed": "j/slow"}));
    }

    const PEER_ENV: &str = "CKPTFS_CONTROL_TEST_PEER";

    /// Runs only when re-executed by `another_user_is_refused`: connects as
    /// whatever user it was started as and reports what the daemon said.
    #[test]
    fn peer_helper() {
        let Some(path) = std::env::var_os(PEER_ENV) else {
            return;
        };
        let outcome =
            match Client::connect(Path::new(&path)).and_then(|mut c| c.call(&Request::Status)) {
                Ok(_) => "ok".to_owned(),
                Err(ControlError::Failed { failure, .. }) => {
                    format!("{:?}: {}", failure.kind, failure.message)
                }
                Err(e) => format!("error: {e}"),
            };
        println!("PEER-RESULT {outcome}");
    }

    #[test]
    fn another_user_is_refused() {
        use std::os::unix::process::CommandExt;
        if effective_uid() != 0 {
            eprintln!("another_user_is_refused: skipped, needs root to run a peer as another uid");
            return;
        }
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        let _server = Server::start(&path, handler()).unwrap();
        // Open the file modes wide, so that only the SO_PEERCRED check
        // stands between uid 65534 and the daemon.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let test_name = concat!(module_path!(), "::peer_helper");
        let test_name = test_name
            .split_once("::")
            .map_or(test_name, |(_, rest)| rest);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env(PEER_ENV, &path)
            .uid(65534)
            .gid(65534)
            .output();
        let out = match out {
            Ok(out) => out,
            // The test binary sits where uid 65534 cannot reach it (a
            // checkout under /root): nothing to learn here.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                eprintln!(
                    "another_user_is_refused: skipped, uid 65534 cannot run the test binary: {e}"
                );
                return;
            }
            Err(e) => panic!("running the peer as uid 65534: {e}"),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("PEER-RESULT ").map(|(_, r)| r))
            .unwrap_or_else(|| {
                panic!(
                    "helper printed no result: {stdout} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        assert!(
            line.contains("Refused: uid 65534 may not control this ckptfs daemon"),
            "{line}"
        );
    }

    #[test]
    fn a_hung_daemon_times_out() {
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        // Accepts (the kernel does, via the backlog) and never answers.
        let _mute = UnixListener::bind(&path).unwrap();
        let mut c = Client::connect(&path).unwrap();
        c.set_timeout(Some(Duration::from_millis(200))).unwrap();
        let e = c.call(&Request::Status).unwrap_err();
        let ControlError::Io { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("did not answer in time"), "{e}");
    }

    #[test]
    fn a_connection_closed_without_answer_is_a_protocol_error() {
        let dir = temp_dir();
        let path = dir.path().join(SOCKET_NAME);
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
        });
        let mut c = Client::connect(&path).unwrap();
        let e = c.call(&Request::Status).unwrap_err();
        assert!(matches!(e, ControlError::Protocol { .. }), "{e:?}");
        t.join().unwrap();
    }
}
