//! File-based checkpoints: begin, route, write with any I/O, end; and
//! back with restart_begin / route / restart_end.

mod common;

use ckpt::*;
use common::*;

#[test]
fn round_trip() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("heat"));
    ok(begin("files", 1));
    let a = route("out/a.dat", CKPT_MAX_PATH as usize).unwrap();
    assert!(a.is_absolute());
    let set_dir = env.cache.join("heat/files.v0000000001");
    assert!(is_under(&a, &set_dir), "{}", a.display());
    assert!(a.ends_with("out/a.dat"));
    assert!(a.parent().unwrap().is_dir(), "parent directories are made");
    std::fs::write(&a, b"alpha").unwrap();
    let b = route("/some/where/else/b.dat", 4096).unwrap();
    assert_eq!(b.parent().unwrap(), a.parent().unwrap().parent().unwrap());
    std::fs::write(&b, vec![7u8; 3_000_000]).unwrap();
    // Routed but never written: not part of the checkpoint.
    route("never.dat", 4096).unwrap();
    // Before the end, the checkpoint is not offered.
    fails(restart_test("files", -1), CKPT_ERR_NOT_FOUND, "files");
    ok(ckpt_checkpoint_end(1));
    assert_eq!(restart_test("files", -1), 1);
    ok(ckpt_finalize());

    // The next run reads them back.
    ok(env.init("heat"));
    ok(restart_begin("files", 1));
    let a2 = route("./out/a.dat", 4096).unwrap();
    assert_eq!(std::fs::read(&a2).unwrap(), b"alpha");
    let b2 = route("b.dat", 4096).unwrap();
    assert_eq!(std::fs::read(&b2).unwrap().len(), 3_000_000);
    ok(ckpt_restart_end(1));
    ok(ckpt_finalize());
}

#[test]
fn end_zero_abandons() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("heat"));
    ok(begin("files", 1));
    std::fs::write(route("x", 4096).unwrap(), b"one").unwrap();
    ok(ckpt_checkpoint_end(1));
    ok(begin("files", 2));
    std::fs::write(route("x", 4096).unwrap(), b"two").unwrap();
    ok(ckpt_checkpoint_end(0));
    assert_eq!(restart_test("files", -1), 1);
    assert!(!env.cache.join("heat/files.v0000000002").exists());
    // A checkpoint open at finalize is abandoned too.
    ok(begin("files", 3));
    std::fs::write(route("x", 4096).unwrap(), b"three").unwrap();
    ok(ckpt_finalize());
    ok(env.init("heat"));
    assert_eq!(restart_test("files", -1), 1);
    ok(ckpt_finalize());
}

#[test]
fn a_changed_file_is_caught_at_restart() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("heat"));
    ok(begin("files", 1));
    let p = route("data", 4096).unwrap();
    std::fs::write(&p, vec![1u8; 100_000]).unwrap();
    ok(ckpt_checkpoint_end(1));
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[5] = 2;
    std::fs::write(&p, bytes).unwrap();
    fails(
        restart_begin("files", 1),
        CKPT_ERR_CORRUPT,
        "files.v0000000001",
    );
    ok(ckpt_finalize());
}
