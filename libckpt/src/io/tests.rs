//! Tests of both I/O paths against real files.
use super::*;
use crate::chunk::FileDigest;
use std::os::unix::fs::PermissionsExt;

const KIB: usize = 1024;

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ckpt-io-")
        .tempdir_in("/var/tmp")
        .expect("scratch dir under /var/tmp")
}

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn opts(kind: EngineKind, buffer_size: usize, queue_depth: u32) -> IoOptions {
    IoOptions {
        kind,
        queue_depth,
        buffer_size,
        direct: true,
    }
}

fn engine(kind: EngineKind, buffer_size: usize, queue_depth: u32) -> IoEngine {
    IoEngine::new(&opts(kind, buffer_size, queue_depth)).expect("engine")
}

/// One engine per forced path; the io_uring one is skipped, loudly, where
/// the kernel refuses it (e.g. an unprivileged user whose locked-memory
/// limit is below queue_depth * buffer_size).
fn forced_engines(o: IoOptions) -> Vec<IoEngine> {
    let mut engines = Vec::new();
    for kind in [EngineKind::Uring, EngineKind::Fallback] {
        match IoEngine::new(&IoOptions { kind, ..o.clone() }) {
            Ok(eng) => engines.push(eng),
            Err(IoError::UringUnavailable { reason }) => {
                println!("skipping the io_uring path: {reason}")
            }
            Err(e) => panic!("{kind}: {e}"),
        }
    }
    engines
}

fn ring_pool(depth: u32, buffer_size: usize) -> Option<uring::RingPool> {
    uring::RingPool::probe(depth, buffer_size)
        .map_err(|reason| println!("skipping the io_uring path: {reason}"))
        .ok()
}

fn sizes(bs: usize) -> Vec<usize> {
    vec![0, 1, 4095, 4096, 4097, bs - 1, bs, bs + 1, 3 * bs + 123]
}

/// A source that hands out at most `step` bytes per call.
struct Dribble<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Yields `good` bytes, then fails.
struct Failing {
    good: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.good == 0 {
            return Err(io::Error::other("source broke"));
        }
        let n = self.good.min(buf.len());
        buf[..n].fill(0xAB);
        self.good -= n;
        Ok(n)
    }
}

fn read_back(eng: &IoEngine, path: &Path, chunk: u64) -> (Vec<u8>, FileDigest) {
    let mut got = Vec::new();
    let digest = eng
        .read_file(path, chunk, &mut |off, bytes| {
            assert_eq!(off, got.len() as u64, "runs arrive in file order");
            assert!(!bytes.is_empty());
            got.extend_from_slice(bytes);
            Ok(())
        })
        .expect("read_file");
    (got, digest)
}

fn check_roundtrip(eng: &IoEngine, dir: &Path, size: usize, chunk: u64, step: Option<usize>) {
    let want = data(size, size as u64 + chunk);
    let path = dir.join(format!("f-{size}-{chunk}"));
    let written = match step {
        None => eng.write_file(&path, 0o600, &mut &want[..], chunk),
        Some(step) => {
            let mut src = Dribble { data: &want, step };
            eng.write_file(&path, 0o600, &mut src, chunk)
        }
    }
    .expect("write_file");
    let ctx = format!("{} size {size} chunk {chunk} step {step:?}", eng.path());
    assert_eq!(std::fs::read(&path).expect("read back"), want, "{ctx}");
    assert_eq!(written, FileDigest::of_bytes(&want, chunk), "{ctx}");
    assert_eq!(
        eng.digest_file(&path, chunk).expect("digest"),
        written,
        "{ctx}"
    );
    let (got, digest) = read_back(eng, &path, chunk);
    assert!(got == want, "read_file bytes differ: {ctx}");
    assert_eq!(digest, written, "{ctx}");
}

#[test]
fn both_paths_roundtrip_all_sizes_small_buffers() {
    let dir = scratch();
    for eng in forced_engines(opts(EngineKind::Auto, 64 * KIB, 4)) {
        for size in sizes(64 * KIB) {
            for chunk in [12 * KIB as u64, 1 << 20] {
                check_roundtrip(&eng, dir.path(), size, chunk, None);
            }
        }
    }
}

#[test]
fn both_paths_roundtrip_all_sizes_default_options() {
    let dir = scratch();
    for eng in forced_engines(IoOptions::default()) {
        for size in sizes(eng.options().buffer_size) {
            check_roundtrip(&eng, dir.path(), size, 1 << 20, None);
        }
    }
}

#[test]
fn buffered_only_and_depth_one_roundtrip() {
    let dir = scratch();
    let o = IoOptions {
        direct: false,
        ..opts(EngineKind::Auto, 16 * KIB, 1)
    };
    for eng in forced_engines(o) {
        for size in sizes(16 * KIB) {
            check_roundtrip(&eng, dir.path(), size, 4096, None);
        }
    }
}

#[test]
fn short_reads_from_the_source_still_fill_buffers() {
    let dir = scratch();
    for eng in forced_engines(opts(EngineKind::Auto, 64 * KIB, 4)) {
        for size in [0, 999, 1000, 64 * KIB + 1, 3 * 64 * KIB + 123] {
            check_roundtrip(&eng, dir.path(), size, 8192, Some(1000));
        }
    }
}

/// Whole pages go direct and only the tail is buffered, on both paths;
/// reads stay direct to the end (the kernel stops at end of file).
#[test]
fn whole_pages_go_direct_and_only_the_tail_is_buffered() {
    let dir = scratch();
    let bs = 64 * KIB;
    let size = 3 * bs + 123;
    let want = data(size, 7);
    let Some(pool) = ring_pool(4, bs) else { return };
    for kind in [EngineKind::Uring, EngineKind::Fallback] {
        let path = dir.path().join(format!("direct-{kind}"));
        let mut target = Target::create(&path, 0o600, true).expect("create");
        if !target.is_direct() {
            println!("skipping: {} refuses O_DIRECT", dir.path().display());
            return;
        }
        let mut hasher = ChunkHasher::new(4096);
        let mut buf = AlignedBuf::new(bs).expect("buf");
        let mut ring = pool.checkout().expect("ring");
        match kind {
            EngineKind::Uring => {
                uring::write_all(ring.get(), &mut target, &mut &want[..], &mut hasher)
            }
            _ => fallback::write_all(&mut buf, &mut target, &mut &want[..], &mut hasher),
        }
        .expect("write");
        assert_eq!(
            (target.direct_bytes, target.buffered_bytes),
            ((3 * bs) as u64, 123),
            "{kind}"
        );
        drop(target);

        let (mut target, len) = Target::open_read(&path, true, ReadFrom::Disk).expect("open");
        assert_eq!(len, size as u64);
        let mut hasher = ChunkHasher::new(4096);
        let mut got = Vec::new();
        let mut sink = |_: u64, b: &[u8]| {
            got.extend_from_slice(b);
            Ok(())
        };
        match kind {
            EngineKind::Uring => {
                uring::read_all(ring.get(), &mut target, len, &mut hasher, &mut sink)
            }
            _ => fallback::read_all(&mut buf, &mut target, len, &mut hasher, &mut sink),
        }
        .expect("read");
        assert!(got == want);
        assert_eq!(
            (target.direct_bytes, target.buffered_bytes),
            (size as u64, 0),
            "{kind}"
        );
    }
}

#[test]
fn a_refused_direct_transfer_is_retried_buffered() {
    let dir = scratch();
    let mut target = Target::create(&dir.path().join("einval"), 0o600, true).expect("create");
    if !target.is_direct() {
        println!("skipping: {} refuses O_DIRECT", dir.path().display());
        return;
    }
    let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
    assert!(!target.should_retry(&enospc, true).expect("classify"));
    let einval = io::Error::from_raw_os_error(libc::EINVAL);
    assert!(target.should_retry(&einval, true).expect("classify"));
    assert!(!target.is_direct());
    // SAFETY: F_GETFL on a descriptor the target owns.
    let flags = unsafe { libc::fcntl(target.fd(), libc::F_GETFL) };
    assert_eq!(
        flags & libc::O_DIRECT,
        0,
        "O_DIRECT cleared on the descriptor"
    );
    // A buffered request's EINVAL is a real error, not a retry.
    assert!(!target.should_retry(&einval, false).expect("classify"));
    let eintr = io::Error::from_raw_os_error(libc::EINTR);
    assert!(target.should_retry(&eintr, false).expect("classify"));
}

#[test]
fn a_file_truncated_while_read_is_an_error() {
    let dir = scratch();
    let path = dir.path().join("shrinks");
    std::fs::write(&path, data(100_000, 1)).expect("seed file");
    let Some(pool) = ring_pool(4, 16 * KIB) else {
        return;
    };
    for kind in [EngineKind::Uring, EngineKind::Fallback] {
        let (mut target, len) = Target::open_read(&path, true, ReadFrom::Disk).expect("open");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(50_000))
            .expect("truncate");
        let mut hasher = ChunkHasher::new(4096);
        let mut sink = |_: u64, _: &[u8]| Ok(());
        let err = match kind {
            EngineKind::Uring => {
                let mut ring = pool.checkout().expect("ring");
                uring::read_all(ring.get(), &mut target, len, &mut hasher, &mut sink)
            }
            _ => {
                let mut buf = AlignedBuf::new(16 * KIB).expect("buf");
                fallback::read_all(&mut buf, &mut target, len, &mut hasher, &mut sink)
            }
        }
        .expect_err("must notice");
        match &err {
            IoError::Read { offset, source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof, "{kind}: {err}");
                // With several reads in flight, a later one may be the
                // first to come back short: any offset past the new end.
                assert!((49_152..100_000).contains(offset), "{kind}: {err}");
            }
            other => panic!("{kind}: unexpected {other:?}"),
        }
        std::fs::write(&path, data(100_000, 1)).expect("restore file");
    }
    // The ring survived the abandoned operation in working order.
    let mut ring = pool.checkout().expect("ring");
    let path = dir.path().join("after");
    let want = data(70_000, 2);
    let mut target = Target::create(&path, 0o600, true).expect("create");
    let mut hasher = ChunkHasher::new(4096);
    uring::write_all(ring.get(), &mut target, &mut &want[..], &mut hasher).expect("write");
    assert!(std::fs::read(&path).expect("read back") == want);
}

#[test]
fn source_error_is_typed_and_names_the_path() {
    let dir = scratch();
    for eng in forced_engines(opts(EngineKind::Auto, 16 * KIB, 4)) {
        let path = dir
            .path()
            .join(format!("broken-{}", eng.path()).replace('/', "-"));
        let err = eng
            .write_file(&path, 0o600, &mut Failing { good: 40_000 }, 4096)
            .expect_err("source fails");
        assert!(
            matches!(&err, IoError::Source { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("source broke"), "{err}");
        // The engine is still usable afterwards.
        check_roundtrip(&eng, dir.path(), 50_000, 4096, None);
    }
}

#[test]
fn sink_error_aborts_the_read() {
    let dir = scratch();
    for eng in forced_engines(opts(EngineKind::Auto, 16 * KIB, 4)) {
        let kind = eng.path();
        let path = dir.path().join(format!("sink-{kind}").replace('/', "-"));
        let bytes = data(100_000, 3);
        eng.write_file(&path, 0o600, &mut &bytes[..], 4096)
            .expect("write");
        let mut calls = 0;
        let err = eng
            .read_file(&path, 4096, &mut |off, _| {
                calls += 1;
                if off > 0 {
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
                Ok(())
            })
            .expect_err("sink fails");
        assert_eq!(calls, 2, "{kind}: stops at the first failure");
        assert!(
            matches!(err, IoError::Sink { offset, .. } if offset == 16 * KIB as u64),
            "{err:?}"
        );
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        check_roundtrip(&eng, dir.path(), 50_000, 4096, None);
    }
}

#[test]
fn missing_directory_is_an_open_error() {
    let dir = scratch();
    for eng in forced_engines(opts(EngineKind::Auto, 16 * KIB, 2)) {
        let path = dir.path().join("no/such/dir/file");
        let err = eng
            .write_file(&path, 0o600, &mut &b"x"[..], 4096)
            .expect_err("no dir");
        assert!(
            matches!(&err, IoError::Open { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(err
            .to_string()
            .starts_with(&format!("opening {}: ", path.display())));
        let err = eng.digest_file(&path, 4096).expect_err("no file");
        assert!(matches!(err, IoError::Open { .. }), "{err:?}");
    }
}

#[test]
fn symlinks_are_not_followed_and_mode_is_applied() {
    let dir = scratch();
    let eng = engine(EngineKind::Auto, 16 * KIB, 2);
    let real = dir.path().join("real");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let err = eng
        .write_file(&link, 0o600, &mut &b"secret"[..], 4096)
        .expect_err("symlink refused");
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
    assert!(!real.exists());
    eng.write_file(&real, 0o600, &mut &b"secret"[..], 4096)
        .expect("write");
    let mode = std::fs::metadata(&real).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn reading_something_that_is_not_a_regular_file_is_refused() {
    let eng = engine(EngineKind::Auto, 16 * KIB, 2);
    let err = eng
        .digest_file(Path::new("/dev/null"), 4096)
        .expect_err("char device");
    assert!(matches!(err, IoError::Open { .. }), "{err:?}");
}

#[test]
fn enospc_is_typed_on_both_paths() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        println!("skipping: no /dev/full");
        return;
    }
    for eng in forced_engines(opts(EngineKind::Auto, 64 * KIB, 4)) {
        let kind = eng.path();
        let bytes = data(3 * 64 * KIB + 5, 9);
        let err = eng
            .write_file(full, 0o600, &mut &bytes[..], 4096)
            .expect_err("disk full");
        assert!(
            matches!(&err, IoError::Write { path, .. } if path == full),
            "{err:?}"
        );
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{kind}: {err}");
        let msg = err.to_string();
        assert!(msg.starts_with("writing /dev/full at offset "), "{msg}");
        assert!(msg.contains("No space left on device"), "{msg}");
    }
}

#[test]
fn bad_options_are_refused() {
    let bad = [
        IoOptions {
            queue_depth: 0,
            ..IoOptions::default()
        },
        IoOptions {
            queue_depth: 257,
            ..IoOptions::default()
        },
        IoOptions {
            buffer_size: 0,
            ..IoOptions::default()
        },
        IoOptions {
            buffer_size: 2048,
            ..IoOptions::default()
        },
        IoOptions {
            buffer_size: 4097,
            ..IoOptions::default()
        },
        IoOptions {
            buffer_size: (1 << 20) + 512,
            ..IoOptions::default()
        },
        IoOptions {
            buffer_size: 128 << 20,
            ..IoOptions::default()
        },
    ];
    for o in bad {
        for kind in [EngineKind::Auto, EngineKind::Uring, EngineKind::Fallback] {
            let o = IoOptions { kind, ..o.clone() };
            let err = IoEngine::new(&o).expect_err("bad options");
            assert!(matches!(err, IoError::BadOptions { .. }), "{o:?}: {err:?}");
        }
    }
    for o in [
        IoOptions {
            queue_depth: 1,
            buffer_size: 4096,
            ..IoOptions::default()
        },
        IoOptions {
            queue_depth: 256,
            buffer_size: 64 << 10,
            ..IoOptions::default()
        },
    ] {
        IoEngine::new(&o).expect("edge values are valid");
    }
    let eng = engine(EngineKind::Fallback, 4096, 1);
    let err = eng
        .digest_file(Path::new("/etc/hostname"), 0)
        .expect_err("chunk 0");
    assert!(matches!(err, IoError::BadOptions { .. }), "{err:?}");
}

#[test]
fn auto_picks_io_uring_here() {
    let eng = IoEngine::new(&IoOptions::default()).expect("engine");
    match eng.fallback_reason() {
        None => assert_eq!(eng.path(), IoPath::Uring),
        Some(reason) => {
            assert_eq!(eng.path(), IoPath::Fallback);
            println!("io_uring refused by this kernel, Auto fell back: {reason}");
        }
    }
}

#[test]
fn forced_paths_report_themselves() {
    let eng = engine(EngineKind::Fallback, 16 * KIB, 2);
    assert_eq!(eng.path(), IoPath::Fallback);
    assert_eq!(
        eng.fallback_reason(),
        Some("forced by config (io.engine = fallback)")
    );
    match IoEngine::new(&opts(EngineKind::Uring, 16 * KIB, 2)) {
        Ok(eng) => {
            assert_eq!(eng.path(), IoPath::Uring);
            assert_eq!(eng.fallback_reason(), None);
        }
        Err(IoError::UringUnavailable { reason }) => println!("io_uring refused: {reason}"),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn concurrent_callers_share_the_engine() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<IoEngine>();
    let dir = scratch();
    for eng in forced_engines(opts(EngineKind::Auto, 32 * KIB, 4)) {
        std::thread::scope(|s| {
            for t in 0..6 {
                let (eng, dir) = (&eng, dir.path());
                s.spawn(move || {
                    for size in [t * 10_000 + 1, 200_000 + t] {
                        check_roundtrip(eng, dir, size, 8192, None);
                    }
                });
            }
        });
    }
}

#[test]
fn engine_kind_parses_prints_and_serializes() {
    for (s, k) in [
        ("auto", EngineKind::Auto),
        ("uring", EngineKind::Uring),
        ("fallback", EngineKind::Fallback),
    ] {
        assert_eq!(s.parse::<EngineKind>(), Ok(k));
        assert_eq!(k.to_string(), s);
        assert_eq!(serde_json::to_string(&k).expect("ser"), format!("\"{s}\""));
        assert_eq!(
            serde_json::from_str::<EngineKind>(&format!("\"{s}\"")).expect("de"),
            k
        );
    }
    assert_eq!("io_uring".parse::<EngineKind>(), Ok(EngineKind::Uring));
    assert!("turbo".parse::<EngineKind>().unwrap_err().contains("turbo"));
    assert_eq!(EngineKind::default(), EngineKind::Auto);
    assert_eq!(IoPath::Uring.to_string(), "io_uring");
    assert_eq!(IoPath::Fallback.to_string(), "pread/pwrite");
    assert_eq!(
        serde_json::to_string(&IoPath::Fallback).expect("ser"),
        "\"fallback\""
    );
}

#[test]
fn a_warm_read_of_a_cached_file_goes_through_the_page_cache_and_a_plain_one_does_not() {
    use std::os::fd::AsRawFd;
    let dir = scratch();
    let path = dir.path().join("warm");
    std::fs::write(&path, data(1 << 20, 3)).expect("write");
    let (disk, _) = Target::open_read(&path, true, ReadFrom::Disk).expect("open");
    if !disk.is_direct() {
        println!("skipping: {} refuses O_DIRECT", dir.path().display());
        return;
    }
    let file = std::fs::File::open(&path).expect("open");
    if !cached::mostly_cached(&file, 1 << 20) {
        println!("skipping: the kernel cannot say what is cached (cachestat, Linux 6.5+)");
        return;
    }
    let (warm, len) = Target::open_read(&path, true, ReadFrom::CacheIfWarm).expect("open");
    assert_eq!(len, 1 << 20);
    assert!(!warm.is_direct(), "a cached file is read through the cache");
    // Dropped from the cache (clean first: dirty pages are not dropped),
    // a warm read goes to the disk again.
    file.sync_all().expect("sync");
    // SAFETY: fadvise on an owned descriptor, no pointers.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
    let (cold, _) = Target::open_read(&path, true, ReadFrom::CacheIfWarm).expect("open");
    assert!(cold.is_direct(), "a file not in the cache is read direct");
}
