//! Memory-based checkpoints through the C ABI, in process.

mod common;

use ckpt::*;
use common::*;
use libckpt::io::IoEngine;
use libckpt::path::{JobName, RelPath, SetName};
use libckpt::store::{Store, StoreOptions};
use std::sync::Arc;

fn store(env: &Env) -> Store {
    let engine = Arc::new(IoEngine::new(&Default::default()).unwrap());
    Store::open(&env.cache, engine, StoreOptions::default()).unwrap()
}

#[test]
fn round_trip() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("heat"));
    let mut grid: Vec<f64> = (0..300_000).map(|i| i as f64 * 0.5).collect();
    let mut step = [42i32];
    let mut empty: Vec<u8> = Vec::new();
    ok(protect(0, &mut grid));
    ok(protect(1, &mut step));
    ok(protect(2, &mut empty));
    ok(checkpoint("heat", 7));
    let saved = grid.clone();
    grid.iter_mut().for_each(|x| *x = -1.0);
    step[0] = 0;
    assert_eq!(restart_test("heat", -1), 7);
    ok(restart("heat", 7));
    assert_eq!(grid, saved);
    assert_eq!(step[0], 42);
    // The file is the rank's, mode 0600, in a complete set of the store.
    let s = store(&env);
    let job = JobName::new("heat").unwrap();
    let set = SetName::new("heat.v0000000007").unwrap();
    assert!(s.info(&job, &set).unwrap().unwrap().is_complete());
    let m = s.manifest(&job, &set).unwrap();
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.files[0].path.as_str(), "mem/rank-0.ckpt");
    assert_eq!(m.files[0].mode, 0o600);
    assert!(s.verify(&job, &set).unwrap().ok());
    ok(ckpt_finalize());
}

#[test]
fn restart_after_finalize_and_reinit() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("sim"));
    let mut a = vec![1u32, 2, 3];
    ok(protect(5, &mut a));
    ok(checkpoint("sim", 1));
    ok(ckpt_finalize());
    // A new "run".
    ok(env.init("sim"));
    let mut b = vec![0u32; 3];
    ok(protect(5, &mut b));
    assert_eq!(restart_test("sim", 100), 1);
    ok(restart("sim", 1));
    assert_eq!(b, [1, 2, 3]);
    ok(ckpt_finalize());
}

#[test]
fn restart_test_picks_newest_complete_at_most_max() {
    let _g = serial();
    let env = Env::new("[store]\nkeep = 0\n");
    ok(env.init("heat"));
    let mut v = [0u64; 16];
    ok(protect(0, &mut v));
    for version in [1, 2, 5, 8] {
        v[0] = version as u64;
        ok(checkpoint("heat", version));
    }
    // Another name does not count.
    ok(checkpoint("other", 50));
    // Version 9 abandoned (its writer died), version 10 being written.
    let s = store(&env);
    let job = JobName::new("heat").unwrap();
    let mut w9 = s
        .create_set(&job, &SetName::new("heat.v0000000009").unwrap())
        .unwrap();
    w9.write_bytes(&RelPath::new("mem/rank-0.ckpt").unwrap(), b"partial")
        .unwrap();
    drop(w9);
    let _w10 = s
        .create_set(&job, &SetName::new("heat.v0000000010").unwrap())
        .unwrap();
    assert_eq!(restart_test("heat", -1), 8);
    assert_eq!(restart_test("heat", 100), 8);
    assert_eq!(restart_test("heat", 7), 5);
    assert_eq!(restart_test("heat", 5), 5);
    assert_eq!(restart_test("heat", 1), 1);
    fails(restart_test("heat", 0), CKPT_ERR_NOT_FOUND, "heat");
    fails(restart_test("nothing", -1), CKPT_ERR_NOT_FOUND, "nothing");
    fails(restart("heat", 9), CKPT_ERR_NOT_FOUND, "heat.v0000000009");
    ok(restart("heat", 5));
    assert_eq!(v[0], 5);
    drop(_w10);
    ok(ckpt_finalize());
}

#[test]
fn size_mismatch_copies_nothing() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("heat"));
    let mut a = vec![1.5f64; 100];
    let mut b = vec![7u8; 10];
    ok(protect(0, &mut a));
    ok(protect(1, &mut b));
    ok(checkpoint("heat", 1));
    ok(ckpt_mem_unprotect(0));
    ok(ckpt_mem_unprotect(1));
    let mut a2 = vec![0.0f64; 100];
    let mut b2 = vec![0u8; 11];
    ok(protect(0, &mut a2));
    ok(protect(1, &mut b2));
    fails(restart("heat", 1), CKPT_ERR_SIZE, "protected id 1");
    assert!(a2.iter().all(|x| *x == 0.0), "nothing may be copied");
    assert!(b2.iter().all(|x| *x == 0));
    // The same count of another element size is a size change too.
    ok(ckpt_mem_unprotect(1));
    let mut b3 = vec![0u16; 10];
    ok(protect(1, &mut b3));
    fails(restart("heat", 1), CKPT_ERR_SIZE, "20 bytes");
    // An id the checkpoint does not have.
    ok(ckpt_mem_unprotect(1));
    let mut c = [0u8; 4];
    ok(protect(9, &mut c));
    fails(restart("heat", 1), CKPT_ERR_NOT_FOUND, "protected id 9");
    assert!(a2.iter().all(|x| *x == 0.0));
    ok(ckpt_mem_unprotect(9));
    // Fewer regions than saved is fine: the others are skipped.
    ok(restart("heat", 1));
    assert!(a2.iter().all(|x| *x == 1.5));
    ok(ckpt_finalize());
}

#[test]
fn corrupt_checkpoint_is_refused_and_memory_untouched() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("heat"));
    let mut a = vec![3u8; 200_000];
    ok(protect(0, &mut a));
    ok(checkpoint("heat", 1));
    let file = env.cache.join("heat/heat.v0000000001/mem/rank-0.ckpt");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[150_000] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    a.iter_mut().for_each(|x| *x = 9);
    fails(restart("heat", 1), CKPT_ERR_CORRUPT, "rank-0.ckpt");
    assert!(a.iter().all(|x| *x == 9));
    // A damaged header is refused the same way.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] = b'X';
    std::fs::write(&file, bytes).unwrap();
    fails(restart("heat", 1), CKPT_ERR_CORRUPT, "magic");
    ok(ckpt_finalize());
}

#[test]
fn reprotect_replaces_and_overwrite_of_a_version() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("heat"));
    let mut a = vec![1u8; 10];
    let mut b = vec![2u8; 20];
    ok(protect(0, &mut a));
    ok(protect(0, &mut b));
    ok(checkpoint("heat", 3));
    // Checkpointing the same version again replaces it.
    b.iter_mut().for_each(|x| *x = 4);
    ok(checkpoint("heat", 3));
    b.iter_mut().for_each(|x| *x = 0);
    ok(restart("heat", 3));
    assert!(b.iter().all(|x| *x == 4));
    ok(ckpt_finalize());
}
