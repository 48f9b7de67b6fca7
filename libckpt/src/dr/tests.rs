//! The DR tier end to end: a real server thread on 127.0.0.1, real
//! sockets, a real cache built with the store.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

use super::auth::{self, Key};
use super::blob::{self, ChunkHash};
use super::conn::{Conn, Retry};
use super::frame::{self, read_message, write_message, Message, MAGIC};
use super::handler::{Repo, RepoOptions, StatsSnapshot};
use super::level::ZstdLevel;
use super::proto::{self, ErrorKind, ErrorReply, MsgType, SetStored};
use super::record::SetRecord;
use super::server::{Server, ServerOptions, ShutdownHandle};
use super::{DrError, DrTier};
use crate::manifest::Manifest;
use crate::path::{JobName, RelPath, SetName};
use crate::rate::RateLimiter;
use crate::store::{Store, StoreOptions};
use crate::tier::{NoResume, Source, Tier, TierError};

const CHUNK: usize = 64 * 1024;

struct Site {
    dir: tempfile::TempDir,
    store: Store,
    key: PathBuf,
}

impl Site {
    fn new() -> Site {
        Site::with_chunk_size(CHUNK as u64)
    }

    fn with_chunk_size(chunk_size: u64) -> Site {
        let dir = crate::testutil::scratch("ckpt-dr-");
        let store = Store::open(
            &dir.path().join("cache"),
            crate::testutil::fallback_engine(),
            StoreOptions {
                chunk_size,
                keep: 0,
                ..Default::default()
            },
        )
        .unwrap();
        let key = write_key(dir.path(), "key", b"correct horse battery staple");
        Site { dir, store, key }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("dr")
    }

    fn start(&self) -> Running {
        self.start_with("127.0.0.1:0", ServerOptions::default())
    }

    fn start_with(&self, listen: &str, opts: ServerOptions) -> Running {
        Running::start(&self.root(), &self.key, listen, opts)
    }

    fn tier(&self, addr: SocketAddr) -> DrTier {
        DrTier::new(addr.to_string(), &self.key, ZstdLevel::Fixed(3))
            .unwrap()
            .with_retry(Retry {
                attempts: 4,
                first: Duration::from_millis(20),
                max: Duration::from_millis(100),
            })
    }

    fn commit(&self, set: &str, files: &[(&str, &[u8])]) -> Manifest {
        let job = JobName::new("job").unwrap();
        let mut w = self
            .store
            .create_set(&job, &SetName::new(set).unwrap())
            .unwrap();
        for (name, bytes) in files {
            w.write_bytes(&RelPath::new(*name).unwrap(), bytes).unwrap();
        }
        w.commit().unwrap()
    }

    fn source<'a>(&'a self, m: &'a Manifest) -> Source<'a> {
        Source {
            engine: self.store.engine(),
            manifest: m,
            dir: self.store.set_dir(&m.job, &m.set),
        }
    }

    fn push(&self, tier: &DrTier, m: &Manifest) -> Result<crate::tier::PushReport, TierError> {
        tier.push(&self.source(m), &RateLimiter::unlimited(), &mut NoResume)
    }

    fn fetch_into(&self, tier: &DrTier, m: &Manifest, name: &str) -> Result<PathBuf, TierError> {
        let dest = self.dir.path().join(name);
        fs::create_dir(&dest).unwrap();
        tier.fetch(&m.job, &m.set, &dest, self.store.engine(), &|_| {})?;
        Ok(dest)
    }

    /// Every chunk file in the server's store.
    fn stored_chunks(&self) -> Vec<PathBuf> {
        files_under(&self.root().join("chunks"))
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    v.sort();
    v
}

fn write_key(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

struct Running {
    addr: SocketAddr,
    stop: ShutdownHandle,
    repo: Arc<Repo>,
    thread: Option<JoinHandle<Result<(), DrError>>>,
}

impl Running {
    fn start(root: &Path, key: &Path, listen: &str, opts: ServerOptions) -> Running {
        let server = Server::bind(listen, root, Key::load(key).unwrap(), opts).unwrap();
        let addr = server.local_addr();
        let stop = server.shutdown_handle();
        let repo = server.repo().clone();
        let thread = std::thread::spawn(move || server.run());
        Running {
            addr,
            stop,
            repo,
            thread: Some(thread),
        }
    }

    fn stats(&self) -> StatsSnapshot {
        self.repo.stats().snapshot()
    }

    fn stop(mut self) -> StatsSnapshot {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn push_list_fetch_compare() {
    let site = Site::new();
    let server = site.start();
    let tier = site.tier(server.addr);
    assert_eq!(tier.name(), "dr");
    assert_eq!(tier.location(), server.addr.to_string());
    assert!(tier.jobs().unwrap().is_empty());

    let a = random(1, 3 << 20);
    let m = site.commit(
        "s1",
        &[("a.bin", &a), ("d/e/b.bin", b"small"), ("empty", b"")],
    );
    let r = site.push(&tier, &m).unwrap();
    assert_eq!(r.bytes_read, a.len() as u64 + 5);
    assert_eq!(r.files, 3);
    assert_eq!(r.skipped, 0);
    // Random bytes do not compress: a little over the raw size.
    assert!(r.bytes_sent >= a.len() as u64, "{r:?}");
    assert!(r.bytes_sent < a.len() as u64 * 102 / 100, "{r:?}");

    assert_eq!(tier.jobs().unwrap(), vec![m.job.clone()]);
    let sets = tier.sets(&m.job).unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(
        (sets[0].set.as_str(), sets[0].bytes, sets[0].files),
        ("s1", m.total_bytes, 3)
    );
    assert_eq!(tier.manifest(&m.job, &m.set).unwrap(), m);

    let dest = site.fetch_into(&tier, &m, "restore").unwrap();
    assert_eq!(fs::read(dest.join("a.bin")).unwrap(), a);
    assert_eq!(fs::read(dest.join("d/e/b.bin")).unwrap(), b"small");
    assert_eq!(fs::read(dest.join("empty")).unwrap(), b"");

    // Pushing it again sends nothing.
    let again = site.push(&tier, &m).unwrap();
    assert_eq!(again.bytes_sent, 0, "{again:?}");
    let st = server.stats();
    assert_eq!(st.chunks_stored, 49, "48 chunks of a.bin and one of b.bin");
    assert_eq!(st.chunks_existed, 0);
    assert_eq!(st.sets_stored, 1);

    let e = tier
        .manifest(&m.job, &SetName::new("absent").unwrap())
        .unwrap_err();
    assert!(matches!(e, TierError::NotFound { .. }), "{e}");
    let e = site.fetch_into(
        &tier,
        &Manifest {
            set: SetName::new("absent").unwrap(),
            ..m.clone()
        },
        "x",
    );
    assert!(matches!(e, Err(TierError::NotFound { .. })), "{e:?}");
}

#[test]
fn a_second_set_sends_only_its_changed_chunks() {
    let site = Site::new();
    let server = site.start();
    let tier = site.tier(server.addr);
    let chunks = 96;
    let base = random(2, chunks * CHUNK);
    let m1 = site.commit("s1", &[("state.bin", &base)]);
    site.push(&tier, &m1).unwrap();

    // Every tenth chunk rewritten: 10 of 96.
    let mut next = base.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for c in (0..chunks).step_by(10) {
        rng.fill_bytes(&mut next[c * CHUNK..(c + 1) * CHUNK]);
    }
    let m2 = site.commit("s2", &[("state.bin", &next)]);
    let before = server.stats();
    let r = site.push(&tier, &m2).unwrap();
    let after = server.stats();
    let ratio = r.bytes_sent as f64 / m2.total_bytes as f64;
    assert!(
        ratio <= 0.12,
        "sent {} of {} bytes ({ratio:.3})",
        r.bytes_sent,
        m2.total_bytes
    );
    assert!(
        ratio >= 0.10,
        "random data should not compress ({ratio:.3})"
    );
    assert_eq!(r.skipped, 86);
    assert_eq!(after.chunks_stored - before.chunks_stored, 10);
    assert_eq!(after.chunks_existed, 0, "no chunk was sent twice");
    assert_eq!(site.stored_chunks().len(), 106);

    let dest = site.fetch_into(&tier, &m2, "restore").unwrap();
    assert_eq!(fs::read(dest.join("state.bin")).unwrap(), next);
}

#[test]
fn wrong_key_fails_on_both_sides_and_changes_nothing() {
    let site = Site::new();
    let server = site.start();
    let other = write_key(site.dir.path(), "other", b"a different key entirely");
    let tier = DrTier::new(server.addr.to_string(), &other, ZstdLevel::Fixed(3)).unwrap();
    let e = tier.jobs().unwrap_err();
    assert!(matches!(e, TierError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(!e.is_transient());
    wait_for("the server to count the failure", || {
        server.stats().auth_failures >= 1
    });

    let m = site.commit("s1", &[("a", b"abc")]);
    let e = site.push(&tier, &m).unwrap_err();
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(site.stored_chunks().is_empty());
    assert!(files_under(&site.root().join("sets")).is_empty());
    // The right key still works.
    site.tier(server.addr).jobs().unwrap();
}

#[test]
fn open_key_file_is_refused() {
    let site = Site::new();
    let k = site.dir.path().join("open");
    fs::write(&k, b"secret").unwrap();
    fs::set_permissions(&k, fs::Permissions::from_mode(0o644)).unwrap();
    let e = DrTier::new("127.0.0.1:1".into(), &k, ZstdLevel::Fixed(3))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&*k.to_string_lossy()) && e.contains("0644"),
        "{e}"
    );
    // The server loads its key the same way.
    let e = Key::load(&k).unwrap_err();
    assert!(e.to_string().contains("group or others"), "{e}");
    let e = DrTier::new("127.0.0.1:1".into(), &site.key, ZstdLevel::Fixed(99)).unwrap_err();
    assert!(matches!(e, DrError::Level { .. }), "{e}");
}

#[test]
fn unreachable_server_is_transient() {
    let site = Site::new();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = site.tier(addr).jobs().unwrap_err();
    assert!(matches!(e, TierError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

/// Read the server's reply to a bad frame: an `Error`, then the end.
fn error_reply(s: &mut TcpStream) -> ErrorReply {
    let m = read_message(s, "server", usize::MAX).unwrap();
    assert_eq!(m.kind, MsgType::Error);
    let e: ErrorReply = proto::decode(m.kind, &m.payload).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "the connection should close after a bad frame"
    );
    e
}

fn header(version: u8, kind: u8, flags: u8, len: u32) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&[version, kind, flags, 0]);
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// An authenticated raw connection.
fn authed(addr: SocketAddr, key: &Path) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let key = Key::load(key).unwrap();
    auth::client_handshake(&mut &s, &mut &s, "server", &key).unwrap();
    s
}

#[test]
fn malformed_frames_get_typed_errors_and_the_server_stays_up() {
    let site = Site::new();
    let server = site.start();
    let connect = || {
        let s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };

    let mut s = connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let e = error_reply(&mut s);
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("not a ckptfs DR peer"), "{e:?}");

    let mut s = connect();
    s.write_all(&header(1, MsgType::Hello as u8, 0, u32::MAX))
        .unwrap();
    let e = error_reply(&mut s);
    assert!(e.message.contains("over the"), "{e:?}");

    let mut s = connect();
    s.write_all(&header(2, MsgType::Hello as u8, 0, 2)).unwrap();
    s.write_all(b"{}").unwrap();
    let e = error_reply(&mut s);
    assert_eq!(e.kind, ErrorKind::Version);
    assert!(e.message.contains("version 2"), "{e:?}");

    // A hello over its (small, pre-authentication) bound.
    let mut s = connect();
    s.write_all(&header(1, MsgType::Hello as u8, 0, 1 << 20))
        .unwrap();
    let e = error_reply(&mut s);
    assert!(e.message.contains("hello message over"), "{e:?}");

    // Truncated: the server just sees the connection go.
    let mut s = connect();
    s.write_all(&header(1, MsgType::Hello as u8, 0, 100))
        .unwrap();
    s.write_all(b"{\"nonce\":").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);

    // A request before authenticating.
    let mut s = connect();
    write_message(&mut s, "server", MsgType::ListJobs, b"{}").unwrap();
    let e = error_reply(&mut s);
    assert!(e.message.contains("authenticate first"), "{e:?}");

    // After authenticating: a bad body is refused and the connection goes
    // on; a bad frame ends it.
    let mut s = authed(server.addr, &site.key);
    write_message(&mut s, "server", MsgType::ListJobs, br#"{"x":1}"#).unwrap();
    let m = read_message(&mut s, "server", usize::MAX).unwrap();
    assert_eq!(m.kind, MsgType::Error);
    assert!(String::from_utf8_lossy(&m.payload).contains("unknown field"));
    write_message(&mut s, "server", MsgType::ListJobs, b"{}").unwrap();
    assert_eq!(
        read_message(&mut s, "server", usize::MAX).unwrap().kind,
        MsgType::Jobs
    );
    write_message(&mut s, "server", MsgType::Jobs, b"{}").unwrap();
    assert_eq!(
        read_message(&mut s, "server", usize::MAX).unwrap().kind,
        MsgType::Error
    );
    s.write_all(&header(
        1,
        MsgType::PutChunk as u8,
        0,
        frame::MAX_FRAME_PAYLOAD as u32 + 1,
    ))
    .unwrap();
    let e = error_reply(&mut s);
    assert!(e.message.contains("limit"), "{e:?}");

    let mut s = authed(server.addr, &site.key);
    s.write_all(&header(1, MsgType::PutChunk as u8, 0, 100))
        .unwrap();
    s.write_all(&[0u8; 100]).unwrap();
    let m = read_message(&mut s, "server", usize::MAX).unwrap();
    let e: ErrorReply = proto::decode(m.kind, &m.payload).unwrap();
    assert_eq!(e.kind, ErrorKind::Corrupt, "{e:?}");

    // Still serving.
    let tier = site.tier(server.addr);
    tier.jobs().unwrap();
    let m = site.commit("s1", &[("a", b"abc")]);
    site.push(&tier, &m).unwrap();
    assert!(site.stored_chunks().len() == 1);
}

#[test]
fn names_and_paths_outside_the_root_are_refused_and_nothing_is_written() {
    let site = Site::new();
    let server = site.start();
    let tier = site.tier(server.addr);
    let m = site.commit("s1", &[("a", b"abc")]);
    let good = SetRecord {
        manifest: m.clone(),
        chunks: vec![vec![ChunkHash::of(b"abc")]],
    };
    let text = String::from_utf8(good.to_bytes()).unwrap();
    let before = files_under(site.dir.path());

    let mut conn = tier.connect().unwrap();
    let mut refused = |kind: MsgType, body: &[u8], want: &str| {
        conn.send(kind, body).unwrap();
        match conn.recv(MsgType::SetStored) {
            Err(DrError::Remote {
                kind: ErrorKind::Invalid,
                message,
                ..
            }) => assert!(message.contains(want), "{want}: {message}"),
            other => panic!("{want}: {other:?}"),
        }
    };
    refused(
        MsgType::PutSet,
        text.replace("\"path\":\"a\"", "\"path\":\"../x\"")
            .as_bytes(),
        "'..'",
    );
    refused(
        MsgType::PutSet,
        text.replace("\"path\":\"a\"", "\"path\":\"/etc/x\"")
            .as_bytes(),
        "absolute",
    );
    refused(
        MsgType::PutSet,
        text.replace("\"job\":\"job\"", "\"job\":\"..\"").as_bytes(),
        "job name",
    );
    refused(
        MsgType::PutSet,
        text.replace("\"set\":\"s1\"", "\"set\":\"a/b\"").as_bytes(),
        "set name",
    );
    refused(MsgType::ListSets, br#"{"job":".."}"#, "job name");
    refused(
        MsgType::GetRecord,
        br#"{"job":"job","set":"../../etc"}"#,
        "set name",
    );
    refused(MsgType::DeleteSet, br#"{"job":"/","set":"s1"}"#, "job name");
    refused(
        MsgType::GetChunk,
        br#"{"hash":"../../../etc/passwd"}"#,
        "hash",
    );
    refused(MsgType::PutSet, b"{}", "not a set record");

    // The server still has nothing; nothing appeared anywhere else either.
    assert!(files_under(&site.root().join("sets")).is_empty());
    assert!(site.stored_chunks().is_empty());
    let mut after = files_under(site.dir.path());
    after.retain(|p| !p.starts_with(site.root()));
    assert_eq!(after, before);
    let top: Vec<_> = fs::read_dir(site.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut top = top;
    top.sort();
    assert_eq!(top, ["cache", "dr", "key"]);
}

#[test]
fn server_killed_mid_push_then_restarted_the_push_completes() {
    let site = Site::new();
    let first = site.start();
    let addr = first.addr;
    let data = random(4, 80 * CHUNK);
    let m = site.commit("s1", &[("big.bin", &data)]);

    // Paced so the server can be stopped in the middle.
    let tier = DrTier::new(addr.to_string(), &site.key, ZstdLevel::Fixed(3))
        .unwrap()
        .with_retry(Retry {
            attempts: 20,
            first: Duration::from_millis(20),
            max: Duration::from_millis(200),
        });
    let pusher = {
        let m = m.clone();
        let tier = tier.clone();
        let engine_site = &site;
        std::thread::scope(|scope| {
            let h = scope.spawn(move || {
                let limiter = RateLimiter::new(Some(2 << 20));
                tier.push(&engine_site.source(&m), &limiter, &mut NoResume)
            });
            wait_for("some chunks to land", || first.stats().chunks_stored >= 15);
            let a = first.stop();
            assert!(a.chunks_stored < 80, "stopped too late: {a:?}");
            let second = site.start_with(&addr.to_string(), ServerOptions::default());
            let r = h.join().unwrap();
            (r, a, second)
        })
    };
    let (r, a, second) = pusher;
    let r = r.unwrap();
    let b = second.stats();
    assert_eq!(
        a.chunks_stored + b.chunks_stored,
        80,
        "first {a:?}, second {b:?}"
    );
    assert_eq!(
        a.chunks_existed + b.chunks_existed,
        0,
        "a chunk was sent twice"
    );
    assert_eq!(b.sets_stored, 1);
    // Stored by the first server but never acknowledged: found, not resent.
    assert!(r.skipped <= a.chunks_stored, "{r:?}");
    assert_eq!(site.stored_chunks().len(), 80);
    let dest = site
        .fetch_into(&site.tier(second.addr), &m, "restore")
        .unwrap();
    assert_eq!(fs::read(dest.join("big.bin")).unwrap(), data);
}

#[test]
fn a_flipped_byte_on_the_server_is_caught_on_fetch() {
    let site = Site::new();
    let server = site.start();
    let tier = site.tier(server.addr);
    let data = random(5, 10 * CHUNK);
    let m = site.commit("s1", &[("x/a.bin", &data)]);
    site.push(&tier, &m).unwrap();

    let hash = ChunkHash::of(&data[3 * CHUNK..4 * CHUNK]);
    let path = site
        .root()
        .join("chunks")
        .join(&hash.to_hex()[..2])
        .join(hash.to_hex());
    let mut blob = fs::read(&path).unwrap();
    let at = blob::CHUNK_HEADER_LEN + (blob.len() - blob::CHUNK_HEADER_LEN) / 2;
    blob[at] ^= 0x10;
    fs::write(&path, blob).unwrap();

    let e = site.fetch_into(&tier, &m, "restore").unwrap_err();
    match &e {
        TierError::Corrupt(c) => {
            assert_eq!(
                (c.tier.as_str(), c.file.as_str(), c.chunk),
                ("dr", "x/a.bin", 3),
                "{e}"
            );
            assert_eq!(c.offset, 3 * CHUNK as u64);
        }
        other => panic!("{other}"),
    }
    assert!(!e.is_transient());
}

#[test]
fn delete_removes_the_record_then_only_unshared_chunks() {
    let site = Site::new();
    let server = site.start_with(
        "127.0.0.1:0",
        ServerOptions {
            repo: RepoOptions {
                gc_grace: Duration::ZERO,
                ..RepoOptions::default()
            },
            ..ServerOptions::default()
        },
    );
    let tier = site.tier(server.addr);
    let shared = random(6, 4 * CHUNK);
    let only1 = random(7, 2 * CHUNK);
    let only2 = random(8, 3 * CHUNK);
    let m1 = site.commit("s1", &[("shared", &shared), ("mine", &only1)]);
    let m2 = site.commit("s2", &[("shared", &shared), ("mine", &only2)]);
    site.push(&tier, &m1).unwrap();
    site.push(&tier, &m2).unwrap();
    assert_eq!(site.stored_chunks().len(), 9);

    tier.delete(&m1.job, &m1.set).unwrap();
    let sets: Vec<_> = tier
        .sets(&m1.job)
        .unwrap()
        .into_iter()
        .map(|s| s.set)
        .collect();
    assert_eq!(sets, vec![m2.set.clone()]);
    assert_eq!(site.stored_chunks().len(), 7, "s1's own two chunks went");
    assert_eq!(server.stats().chunks_removed, 2);
    let dest = site.fetch_into(&tier, &m2, "restore").unwrap();
    assert_eq!(fs::read(dest.join("shared")).unwrap(), shared);
    // Deleting again is not an error.
    tier.delete(&m1.job, &m1.set).unwrap();

    tier.delete(&m2.job, &m2.set).unwrap();
    assert!(tier.jobs().unwrap().is_empty());
    assert!(site.stored_chunks().is_empty());
    assert!(files_under(&site.root().join("sets")).is_empty());
}

#[test]
fn chunks_larger_than_a_frame_travel_as_several_pieces() {
    let site = Site::with_chunk_size(32 << 20);
    let server = site.start();
    let tier = site.tier(server.addr);
    let data = random(10, 40 << 20);
    let m = site.commit("s1", &[("big", &data)]);
    let r = site.push(&tier, &m).unwrap();
    assert_eq!(r.bytes_read, 40 << 20);
    // 32 MiB → 16 + 16, then 8.
    assert_eq!(server.stats().chunks_stored, 3);
    let dest = site.fetch_into(&tier, &m, "restore").unwrap();
    assert!(fs::read(dest.join("big")).unwrap() == data);
}

fn blob_of(raw: &[u8]) -> Vec<u8> {
    let (h, data) = blob::seal(raw, crc32c::crc32c(raw), 3).unwrap();
    let mut b = h.encode().to_vec();
    b.extend(data);
    b
}

fn ask(repo: &Repo, kind: MsgType, payload: &[u8]) -> Message {
    repo.handle(&Message {
        kind,
        payload: payload.to_vec(),
    })
}

#[test]
fn the_record_is_written_only_when_every_chunk_is_held_and_matches() {
    let site = Site::new();
    let repo = Repo::open(&site.root(), RepoOptions::default()).unwrap();
    let data = random(9, 2 * CHUNK + 10);
    let m = site.commit("s1", &[("f", &data)]);
    let hashes: Vec<_> = data.chunks(CHUNK).map(ChunkHash::of).collect();
    let record = SetRecord {
        manifest: m.clone(),
        chunks: vec![hashes.clone()],
    }
    .to_bytes();
    assert_eq!(
        ask(&repo, MsgType::PutChunk, &blob_of(&data[..CHUNK])).kind,
        MsgType::ChunkStored
    );
    let r = ask(&repo, MsgType::PutSet, &record);
    let r: SetStored = proto::decode(r.kind, &r.payload).unwrap();
    assert_eq!((r.stored, r.missing), (false, hashes[1..].to_vec()));
    assert!(files_under(&site.root().join("sets")).is_empty());

    // A chunk with the right hash but a crc32c the manifest disagrees with.
    let mut wrong = m.clone();
    wrong.files[0].crc32c[0] ^= 1;
    let bad = SetRecord {
        manifest: wrong,
        chunks: vec![hashes.clone()],
    };
    for c in data.chunks(CHUNK).skip(1) {
        ask(&repo, MsgType::PutChunk, &blob_of(c));
    }
    let r = ask(&repo, MsgType::PutSet, &bad.to_bytes());
    assert_eq!(r.kind, MsgType::Error);
    assert!(
        String::from_utf8_lossy(&r.payload).contains("crc32c"),
        "{}",
        String::from_utf8_lossy(&r.payload)
    );

    let r = ask(&repo, MsgType::PutSet, &record);
    assert_eq!(r.kind, MsgType::SetStored);
    assert_eq!(files_under(&site.root().join("sets")).len(), 1);

    // The default grace period spares an unreferenced chunk just stored.
    ask(&repo, MsgType::PutChunk, &blob_of(b"orphan"));
    let r = ask(&repo, MsgType::DeleteSet, br#"{"job":"job","set":"s1"}"#);
    let d: proto::Deleted = proto::decode(r.kind, &r.payload).unwrap();
    assert_eq!((d.existed, d.chunks_removed), (true, 0));
    assert_eq!(site.stored_chunks().len(), 4);
}

#[test]
fn too_many_connections_is_transient() {
    let site = Site::new();
    let server = site.start_with(
        "127.0.0.1:0",
        ServerOptions {
            max_connections: 1,
            ..ServerOptions::default()
        },
    );
    let held = site.tier(server.addr).connect().unwrap();
    let e = site
        .tier(server.addr)
        .with_retry(Retry {
            attempts: 1,
            ..Retry::default()
        })
        .jobs()
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    drop(held);
    wait_for("the slot to free", || site.tier(server.addr).jobs().is_ok());
}

#[test]
fn conn_reports_the_peer() {
    let site = Site::new();
    let server = site.start();
    let c = Conn::open(
        &server.addr.to_string(),
        &Key::load(&site.key).unwrap(),
        &super::Transport::default(),
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(c.peer(), server.addr.to_string());
    // `auto` on a host without a verbs device (or a build without the
    // feature) says why it fell back.
    if super::transport::rdma_unavailable().is_some() {
        let used = c.in_use();
        assert_eq!(used.kind, "tcp");
        assert!(!used.detail.is_empty(), "{used}");
    }
}

/// Writes the fuzz seeds: `DR_FUZZ_SEEDS=$PWD/fuzz/seeds cargo test -p
/// libckpt write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let Some(out) = std::env::var_os("DR_FUZZ_SEEDS") else {
        return;
    };
    let out = PathBuf::from(out);
    let frames = out.join("dr_frame");
    let requests = out.join("dr_request");
    fs::create_dir_all(&frames).unwrap();
    fs::create_dir_all(&requests).unwrap();
    let msg = |kind: MsgType, payload: &[u8]| {
        let mut v = Vec::new();
        write_message(&mut v, "seed", kind, payload).unwrap();
        v
    };
    let chunk = b"hello, disaster recovery".repeat(10);
    let blob = blob_of(&chunk);
    let hash = ChunkHash::of(&chunk);
    let m = Manifest::new(
        JobName::new("job").unwrap(),
        SetName::new("s1").unwrap(),
        std::time::SystemTime::UNIX_EPOCH,
        "node".into(),
        vec![crate::manifest::FileEntry {
            path: RelPath::new("d/f").unwrap(),
            size: chunk.len() as u64,
            mode: 0o600,
            mtime: std::time::SystemTime::UNIX_EPOCH,
            chunk_size: 4096,
            crc32c: vec![crc32c::crc32c(&chunk)],
        }],
    );
    let record = SetRecord {
        manifest: m,
        chunks: vec![vec![hash]],
    }
    .to_bytes();
    let record_text = String::from_utf8(record.clone()).unwrap();
    let set_ref = br#"{"job":"job","set":"s1"}"#;
    let lacking = format!(r#"{{"hashes":["{hash}","{}"]}}"#, ChunkHash([7; 32]));
    let get_chunk = format!(r#"{{"hash":"{hash}"}}"#);

    let session = [
        msg(MsgType::ListJobs, b"{}"),
        msg(MsgType::Lacking, lacking.as_bytes()),
        msg(MsgType::PutChunk, &blob),
        msg(MsgType::PutSet, &record),
        msg(MsgType::ListSets, br#"{"job":"job"}"#),
        msg(MsgType::GetManifest, set_ref),
        msg(MsgType::GetRecord, set_ref),
        msg(MsgType::GetChunk, get_chunk.as_bytes()),
        msg(MsgType::DeleteSet, set_ref),
    ]
    .concat();
    let mut requests_seeds: Vec<(&str, Vec<u8>)> = vec![
        ("session.bin", session),
        ("put-chunk.bin", msg(MsgType::PutChunk, &blob)),
        ("put-set-missing.bin", msg(MsgType::PutSet, &record)),
        (
            "put-set-dotdot.bin",
            msg(
                MsgType::PutSet,
                record_text.replace("d/f", "../f").as_bytes(),
            ),
        ),
        (
            "put-set-absolute.bin",
            msg(
                MsgType::PutSet,
                record_text.replace("d/f", "/etc/f").as_bytes(),
            ),
        ),
        (
            "list-sets-dotdot.bin",
            msg(MsgType::ListSets, br#"{"job":".."}"#),
        ),
        ("lacking.bin", msg(MsgType::Lacking, lacking.as_bytes())),
        ("delete.bin", msg(MsgType::DeleteSet, set_ref)),
        ("hello.bin", msg(MsgType::Hello, b"{}")),
    ];
    let mut split = Vec::new();
    let half = record.len() / 2;
    split.extend(header(1, MsgType::PutSet as u8, 1, half as u32));
    split.extend(&record[..half]);
    split.extend(header(
        1,
        MsgType::PutSet as u8,
        0,
        (record.len() - half) as u32,
    ));
    split.extend(&record[half..]);
    requests_seeds.push(("put-set-split.bin", split.clone()));
    for (name, bytes) in &requests_seeds {
        fs::write(requests.join(name), bytes).unwrap();
    }
    let frame_seeds: Vec<(&str, Vec<u8>)> = vec![
        ("list-jobs.bin", msg(MsgType::ListJobs, b"{}")),
        (
            "error.bin",
            msg(MsgType::Error, br#"{"kind":"busy","message":"later"}"#),
        ),
        ("chunk.bin", msg(MsgType::Chunk, &blob)),
        ("split.bin", split),
        (
            "future-version.bin",
            [header(2, 0x10, 0, 2), b"{}".to_vec()].concat(),
        ),
        ("oversized.bin", header(1, 0x15, 0, u32::MAX)),
        (
            "truncated.bin",
            [header(1, 0x10, 0, 10), b"{}".to_vec()].concat(),
        ),
        ("bad-magic.bin", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("unknown-type.bin", header(1, 0x42, 0, 0)),
        ("bad-flags.bin", header(1, 0x10, 0x02, 0)),
        ("empty-welcome.bin", header(1, MsgType::Welcome as u8, 0, 0)),
    ];
    // The frame target's first byte picks the bound (odd: the server's
    // pre-authentication one).
    for (name, bytes) in &frame_seeds {
        fs::write(frames.join(name), [&[0u8][..], bytes].concat()).unwrap();
    }
    let hello = format!(r#"{{"nonce":"{}"}}"#, ChunkHash([9; 32]));
    fs::write(
        frames.join("hello-before-auth.bin"),
        [&[1u8][..], &msg(MsgType::Hello, hello.as_bytes())].concat(),
    )
    .unwrap();
}

#[test]
fn auto_compression_climbs_on_a_slow_link_and_the_next_push_starts_there() {
    let site = Site::with_chunk_size(1 << 20);
    let server = site.start();
    let tier = DrTier::new(server.addr.to_string(), &site.key, ZstdLevel::Auto).unwrap();
    assert_eq!(tier.zstd_level(), (ZstdLevel::Auto, None));
    // 72 MiB that compress about 2:1: two batches, as many as `auto`
    // needs to see before it climbs (UP_AFTER).
    let data: Vec<u8> = random(41, 72 << 20).iter().map(|b| b & 0x0f).collect();
    let m = site.commit("s1", &[("a", &data)]);
    // At 16 MiB/s a batch spends seconds on the link and a fraction of
    // that compressing, on any machine: auto must climb after them.
    let slow = RateLimiter::new(Some(16 << 20));
    tier.push(&site.source(&m), &slow, &mut NoResume).unwrap();
    let (_, reached) = tier.zstd_level();
    let reached = reached.expect("auto remembers its level");
    assert!(
        reached > super::level::AUTO_START,
        "still at {reached} after a slow link"
    );
    // The next push starts where this one ended.
    assert_eq!(tier.compression().level(), reached);
    let dest = site.fetch_into(&tier, &m, "back").unwrap();
    assert_eq!(fs::read(dest.join("a")).unwrap(), data);
}

#[test]
fn the_level_reached_outlives_the_process_in_its_file() {
    let site = Site::with_chunk_size(1 << 20);
    let server = site.start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dr-zstd-level");
    let tier = || {
        DrTier::new(server.addr.to_string(), &site.key, ZstdLevel::Auto)
            .unwrap()
            .with_level_file(file.clone())
    };
    // Nothing learned yet: a fresh tier starts at the default.
    assert_eq!(tier().compression().level(), super::level::AUTO_START);
    // Two batches on a slow link: enough for `auto` to move.
    let data: Vec<u8> = random(43, 72 << 20).iter().map(|b| b & 0x0f).collect();
    let m = site.commit("s1", &[("a", &data)]);
    let slow = RateLimiter::new(Some(16 << 20));
    let first = tier();
    first.push(&site.source(&m), &slow, &mut NoResume).unwrap();
    let reached = first.zstd_level().1.expect("auto remembers its level");
    assert_ne!(reached, super::level::AUTO_START);
    assert_eq!(
        fs::read_to_string(&file).unwrap().trim(),
        reached.to_string()
    );
    // A new process (a new tier) starts where the last push ended.
    assert_eq!(tier().compression().level(), reached);
    assert_eq!(tier().zstd_level(), (ZstdLevel::Auto, Some(reached)));
    // A damaged or out-of-range file is no level learned, not an error.
    for junk in ["", "fast\n", "0\n", "42\n"] {
        fs::write(&file, junk).unwrap();
        assert_eq!(
            tier().compression().level(),
            super::level::AUTO_START,
            "{junk:?}"
        );
    }
    // A fixed level neither reads nor writes it.
    fs::write(&file, "7\n").unwrap();
    let fixed = DrTier::new(server.addr.to_string(), &site.key, ZstdLevel::Fixed(2))
        .unwrap()
        .with_level_file(file.clone());
    assert_eq!(fixed.compression().level(), 2);
    fixed.push(&site.source(&m), &slow, &mut NoResume).unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "7\n");
}

#[test]
fn a_receiver_whose_io_cannot_be_set_up_names_its_chunk_directory() {
    let site = Site::new();
    let opts = RepoOptions {
        io: crate::io::IoOptions {
            buffer_size: 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    let Err(e) = Repo::open(&site.root(), opts) else {
        panic!("a buffer of 1000 bytes was accepted");
    };
    let text = e.to_string();
    let chunks = site.root().join("chunks");
    assert!(
        text.contains(&chunks.display().to_string()),
        "the error names {}: {text}",
        chunks.display()
    );
}
