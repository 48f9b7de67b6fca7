//! The store through its public API, on both I/O paths.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use libckpt::io::{EngineKind, IoEngine, IoOptions};
use libckpt::path::{JobName, RelPath, SetName};
use libckpt::set::SetState;
use libckpt::store::{Store, StoreError, StoreOptions};
use libckpt::verify::Problem;

fn engines() -> Vec<EngineKind> {
    vec![EngineKind::Uring, EngineKind::Fallback]
}

fn open(root: &Path, kind: EngineKind, keep: usize) -> Store {
    let engine = IoEngine::new(&IoOptions {
        kind,
        ..IoOptions::default()
    })
    .or_else(|e| {
        // A kernel that refuses io_uring still exercises the store.
        eprintln!("io_uring refused ({e}); testing with the fallback path");
        IoEngine::new(&IoOptions {
            kind: EngineKind::Fallback,
            ..IoOptions::default()
        })
    })
    .unwrap();
    Store::open(
        root,
        Arc::new(engine),
        StoreOptions {
            chunk_size: 64 * 1024,
            keep,
            ..Default::default()
        },
    )
    .unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ckpt-store-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn job(s: &str) -> JobName {
    JobName::new(s).unwrap()
}
fn set(s: &str) -> SetName {
    SetName::new(s).unwrap()
}
fn rel(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn write_commit_list_verify() {
    for kind in engines() {
        let d = tmp();
        let store = open(d.path(), kind, 0);
        let j = job("heat");
        let mut w = store.create_set(&j, &set("s1")).unwrap();
        w.write_bytes(&rel("rank-0.bin"), &data(1, 300_000))
            .unwrap();
        w.write_bytes(&rel("sub/dir/rank-1.bin"), &data(2, 65_536))
            .unwrap();
        w.write_bytes(&rel("empty"), &[]).unwrap();
        // A file written by other means, sealed explicitly.
        fs::write(w.dir().join("side.txt"), b"hello").unwrap();
        w.seal(&rel("side.txt")).unwrap();
        // And one left for commit to seal.
        fs::write(w.dir().join("late.txt"), b"late").unwrap();

        assert_eq!(store.sets(&j).unwrap()[0].state, SetState::Writing);
        assert!(store.latest(&j).unwrap().is_none(), "writing set offered");
        let m = w.commit().unwrap();
        assert_eq!(m.files.len(), 5);
        assert_eq!(m.total_bytes, 300_000 + 65_536 + 5 + 4);
        let f = m
            .files
            .iter()
            .find(|f| f.path.as_str() == "rank-0.bin")
            .unwrap();
        assert_eq!(f.crc32c.len(), 5, "300000 bytes in 64 KiB chunks");
        assert_eq!(f.mode, 0o600);

        let latest = store.latest(&j).unwrap().unwrap();
        assert_eq!(latest.set, set("s1"));
        assert_eq!(latest.bytes, m.total_bytes);
        let r = store.verify(&j, &set("s1")).unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(store.jobs().unwrap(), vec![j.clone()]);

        // Checkpoint files are private to their writer.
        let mode = fs::metadata(store.set_dir(&j, &set("s1")).join("rank-0.bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Metadata is kept apart from user files.
        assert!(!store.set_dir(&j, &set("s1")).join("manifest.json").exists());
    }
}

#[test]
fn flipped_byte_names_file_and_chunk() {
    let d = tmp();
    let store = open(d.path(), EngineKind::Auto, 0);
    let j = job("j");
    let mut w = store.create_set(&j, &set("s")).unwrap();
    w.write_bytes(&rel("a.bin"), &data(3, 5 * 65_536)).unwrap();
    w.write_bytes(&rel("b.bin"), &data(4, 1000)).unwrap();
    w.commit().unwrap();
    let path = store.set_dir(&j, &set("s")).join("a.bin");
    let mut bytes = fs::read(&path).unwrap();
    bytes[3 * 65_536 + 17] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    fs::write(store.set_dir(&j, &set("s")).join("b.bin"), b"short").unwrap();
    let r = store.verify(&j, &set("s")).unwrap();
    assert!(!r.ok());
    assert!(r.problems.contains(&Problem::SizeMismatch {
        path: rel("b.bin"),
        expected: 1000,
        found: 5
    }));
    let corrupt = r
        .problems
        .iter()
        .find_map(|p| match p {
            Problem::Corrupt {
                path,
                chunk,
                offset,
                ..
            } => Some((path.clone(), *chunk, *offset)),
            _ => None,
        })
        .expect("corruption found");
    assert_eq!(corrupt, (rel("a.bin"), 3, 3 * 65_536));
    fs::remove_file(&path).unwrap();
    let r = store.verify(&j, &set("s")).unwrap();
    assert!(r
        .problems
        .contains(&Problem::Missing { path: rel("a.bin") }));
}

#[test]
fn dropped_writer_leaves_an_abandoned_set_that_is_never_offered() {
    let d = tmp();
    let store = open(d.path(), EngineKind::Auto, 2);
    let j = job("j");
    let mut w = store.create_set(&j, &set("s1")).unwrap();
    w.write_bytes(&rel("x"), &data(1, 10)).unwrap();
    w.commit().unwrap();
    let mut w = store.create_set(&j, &set("s2")).unwrap();
    w.write_bytes(&rel("x"), &data(2, 10)).unwrap();
    drop(w);
    let sets = store.sets(&j).unwrap();
    assert_eq!(sets[1].state, SetState::Abandoned);
    assert_eq!(store.latest(&j).unwrap().unwrap().set, set("s1"));
    assert!(matches!(
        store.verify(&j, &set("s2")),
        Err(StoreError::NotComplete { .. })
    ));
    // A reopened store recognises it too.
    let again = open(d.path(), EngineKind::Fallback, 2);
    assert_eq!(again.sets(&j).unwrap()[1].state, SetState::Abandoned);
    // And retention removes it, keeping the complete one.
    let r = again.apply_retention(&j, 2).unwrap();
    assert_eq!(r.deleted, vec![set("s2")]);
    assert!(!again.set_dir(&j, &set("s2")).exists());
    assert_eq!(again.sets(&j).unwrap().len(), 1);
}

#[test]
fn retention_keeps_newest_n_after_each_commit() {
    let d = tmp();
    let store = open(d.path(), EngineKind::Auto, 3);
    let j = job("j");
    for i in 0..6 {
        let name = format!("s{i}");
        let mut w = store.create_set(&j, &set(&name)).unwrap();
        w.write_bytes(&rel("f"), &data(i, 100)).unwrap();
        w.commit().unwrap();
    }
    let names: Vec<String> = store
        .sets(&j)
        .unwrap()
        .iter()
        .map(|s| s.set.to_string())
        .collect();
    assert_eq!(names, ["s3", "s4", "s5"]);
    // A set being written survives retention.
    let w = store.create_set(&j, &set("s6")).unwrap();
    let r = store.apply_retention(&j, 1).unwrap();
    assert_eq!(r.deleted, vec![set("s3"), set("s4")]);
    assert_eq!(store.sets(&j).unwrap().len(), 2);
    assert!(matches!(
        store.delete_set(&j, &set("s6")),
        Err(StoreError::Busy { .. })
    ));
    drop(w);
}

#[test]
fn duplicate_and_missing_sets() {
    let d = tmp();
    let store = open(d.path(), EngineKind::Auto, 0);
    let j = job("j");
    store.create_set(&j, &set("s")).unwrap().commit().unwrap();
    assert!(matches!(
        store.create_set(&j, &set("s")),
        Err(StoreError::SetExists { .. })
    ));
    let e = store.delete_set(&j, &set("nope")).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("j/nope"), "{e}");
    assert!(store.latest(&job("other")).unwrap().is_none());
}

#[test]
fn commit_dir_of_a_hand_written_set() {
    let d = tmp();
    let store = open(d.path(), EngineKind::Auto, 0);
    let dir = d.path().join("sim/step-10");
    fs::create_dir_all(dir.join("ranks")).unwrap();
    fs::write(dir.join("ranks/0"), data(9, 200_000)).unwrap();
    fs::write(dir.join("meta.txt"), b"t=10").unwrap();
    let j = job("sim");
    assert_eq!(store.sets(&j).unwrap()[0].state, SetState::Uncommitted);
    // Retention never touches sets copied in by hand.
    assert!(store.apply_retention(&j, 1).unwrap().deleted.is_empty());
    let m = store.commit_dir(&dir, false).unwrap();
    assert_eq!(m.files.len(), 2);
    assert!(store.verify(&j, &set("step-10")).unwrap().ok());
    assert!(matches!(
        store.commit_dir(&dir, false),
        Err(StoreError::AlreadyComplete { .. })
    ));
    // Outside the cache, or not <job>/<set>.
    assert!(matches!(
        store.commit_dir(d.path().join("sim").as_path(), false),
        Err(StoreError::NotASetDir { .. })
    ));
    let outside = tmp();
    assert!(matches!(
        store.commit_dir(outside.path(), false),
        Err(StoreError::NotASetDir { .. })
    ));
    // Symlinks are refused, naming the file.
    let bad = d.path().join("sim/step-11");
    fs::create_dir_all(&bad).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", bad.join("link")).unwrap();
    let e = store.commit_dir(&bad, false).unwrap_err();
    assert!(e.to_string().contains("link"), "{e}");
    assert!(store.info(&j, &set("step-11")).unwrap().unwrap().state != SetState::Complete);
}

#[test]
fn commit_dir_of_an_abandoned_set_needs_force() {
    let d = tmp();
    let store = open(d.path(), EngineKind::Auto, 0);
    let j = job("j");
    let mut w = store.create_set(&j, &set("s")).unwrap();
    w.write_bytes(&rel("x"), b"partial").unwrap();
    let dir = w.dir().to_owned();
    drop(w);
    let e = store.commit_dir(&dir, false).unwrap_err();
    assert!(matches!(e, StoreError::Abandoned { .. }), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    store.commit_dir(&dir, true).unwrap();
    assert_eq!(store.latest(&j).unwrap().unwrap().set, set("s"));
}

#[test]
fn bad_manifests_are_typed_errors_and_nothing_is_deleted() {
    let d = tmp();
    let store = open(d.path(), EngineKind::Auto, 1);
    let j = job("j");
    for name in ["s1", "s2"] {
        let mut w = store.create_set(&j, &set(name)).unwrap();
        w.write_bytes(&rel("f"), b"data").unwrap();
        w.commit().unwrap();
    }
    // keep = 1 removed s1 already; make more sets to damage.
    let good = fs::read(store.manifest_path(&j, &set("s2"))).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"\x7fELF\x02\x01\x01garbage".to_vec()),
        (
            "future",
            text.replace("\"version\":1", "\"version\":99").into_bytes(),
        ),
    ];
    for (what, bytes) in variants {
        fs::write(store.manifest_path(&j, &set("s2")), &bytes).unwrap();
        let info = store.info(&j, &set("s2")).unwrap().unwrap();
        assert!(
            matches!(info.state, SetState::Damaged(_)),
            "{what}: {:?}",
            info.state
        );
        assert!(
            store.latest(&j).unwrap().is_none(),
            "{what}: damaged offered"
        );
        let e = store.verify(&j, &set("s2")).unwrap_err();
        assert!(matches!(e, StoreError::Manifest { .. }), "{what}: {e}");
        assert!(e.to_string().contains("manifest.json"), "{what}: {e}");
        if what == "future" {
            assert!(e.to_string().contains("newer"), "{e}");
        }
        // Retention leaves damaged sets for a human.
        assert!(store.apply_retention(&j, 1).unwrap().deleted.is_empty());
        assert_eq!(
            fs::read(store.manifest_path(&j, &set("s2"))).unwrap(),
            bytes
        );
        assert!(store.set_dir(&j, &set("s2")).join("f").exists());
    }
    fs::write(store.manifest_path(&j, &set("s2")), &good).unwrap();
    assert_eq!(store.latest(&j).unwrap().unwrap().set, set("s2"));
}

#[test]
fn future_store_layout_is_refused() {
    let d = tmp();
    drop(open(d.path(), EngineKind::Auto, 0));
    fs::write(d.path().join(".ckptfs/LAYOUT"), "ckptfs-store 9\n").unwrap();
    let engine = Arc::new(IoEngine::new(&IoOptions::default()).unwrap());
    let e = Store::open(d.path(), engine, StoreOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("ckptfs-store 9"), "{e}");
}

#[test]
fn bad_names_are_refused_before_touching_disk() {
    for bad in ["..", "a/b", "", ".ckptfs", "x\0y"] {
        let e = JobName::new(bad).unwrap_err();
        assert!(e.to_string().contains("job name"), "{e}");
    }
}
