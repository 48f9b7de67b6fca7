//! The DR receiver's request handling, fed frames as an authenticated
//! client could send them, over a store in a scratch directory. It must
//! never panic, answer every request with a reply it can frame, and never
//! create anything outside its root nor anything inside it but chunks and
//! set records.

#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use libckpt::dr::frame::{read_message, write_message};
use libckpt::dr::handler::{Repo, RepoOptions};
use libfuzzer_sys::fuzz_target;

/// A per-process scratch directory, on tmpfs where there is one: the
/// store fsyncs, and the fuzzer runs it a million times. libFuzzer exits
/// without unwinding, so each run first clears what dead runs left.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            Path::new("/dev/shm")
        } else {
            Path::new("/tmp")
        };
        const PREFIX: &str = "ckptfs-fuzz-dr-";
        for name in names(base) {
            let dead = name
                .strip_prefix(PREFIX)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if dead {
                let _ = fs::remove_dir_all(base.join(&name));
            }
        }
        let d = base.join(format!("{PREFIX}{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("creating the scratch directory");
        d
    })
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Only `chunks/<2 hex>/<64 hex>` and `sets/<job>/<set>.json` (plus temp
/// files of the atomic writes) may exist under the root.
fn check_tree(root: &Path) {
    for name in names(root) {
        assert!(
            name == "chunks" || name == "sets",
            "unexpected {name} in the root"
        );
    }
    for fan in names(&root.join("chunks")) {
        assert!(
            fan.len() == 2 && fan.bytes().all(|b| b.is_ascii_hexdigit()),
            "chunk dir {fan}"
        );
        for c in names(&root.join("chunks").join(&fan)) {
            assert!(c.len() == 64 && c.starts_with(&fan), "chunk file {fan}/{c}");
        }
    }
    for job in names(&root.join("sets")) {
        assert!(!job.starts_with('.') && job != "..", "job dir {job}");
        let dir = root.join("sets").join(&job);
        assert!(
            fs::symlink_metadata(&dir).unwrap().is_dir(),
            "{job} is not a directory"
        );
        for set in names(&dir) {
            assert!(
                set.ends_with(".json") && !set.starts_with('.'),
                "record {job}/{set}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let base = scratch();
    let work = base.join("w");
    let _ = fs::remove_dir_all(&work);
    let root = work.join("root");
    let repo = Repo::open(
        &root,
        RepoOptions {
            gc_grace: Duration::ZERO,
            ..RepoOptions::default()
        },
    )
    .expect("opening the scratch store");
    let mut r = data;
    for _ in 0..32 {
        let Ok(msg) = read_message(&mut r, "fuzz-client", usize::MAX) else {
            break;
        };
        let reply = repo.handle(&msg);
        assert!(
            reply.kind as u8 >= 0x80,
            "{} answered with a {}",
            msg.kind,
            reply.kind
        );
        let mut out = Vec::new();
        write_message(&mut out, "fuzz-client", reply.kind, &reply.payload)
            .unwrap_or_else(|e| panic!("the reply to {} cannot be framed: {e}", msg.kind));
    }
    // Chunks are synced and renamed into place by the store's threads;
    // closing it waits for them.
    drop(repo);
    assert_eq!(
        names(&work),
        ["root"],
        "something was written beside the root"
    );
    assert_eq!(
        names(base),
        ["w"],
        "something was written beside the scratch dir"
    );
    check_tree(&root);
});
