//! Every documented error path of ckpt.h: a code and a message that names
//! what is concerned; never a crash, never output on stdout.

mod common;

use std::ffi::CStr;
use std::ptr;

use ckpt::*;
use common::*;

#[test]
fn before_init_everything_is_not_init() {
    let _g = serial();
    let mut x = [0u8; 4];
    let mut flag = 0;
    fails(ckpt_finalize(), CKPT_ERR_NOT_INIT, "ckpt_init");
    fails(protect(0, &mut x), CKPT_ERR_NOT_INIT, "ckpt_init");
    fails(ckpt_mem_unprotect(0), CKPT_ERR_NOT_INIT, "ckpt_init");
    fails(checkpoint("a", 1), CKPT_ERR_NOT_INIT, "ckpt_init");
    fails(restart("a", 1), CKPT_ERR_NOT_INIT, "ckpt_init");
    fails(restart_test("a", 1), CKPT_ERR_NOT_INIT, "ckpt_init");
    fails(begin("a", 1), CKPT_ERR_NOT_INIT, "ckpt_init");
    fails(restart_begin("a", 1), CKPT_ERR_NOT_INIT, "ckpt_init");
    assert_eq!(route("f", 100), Err(CKPT_ERR_NOT_INIT));
    fails(ckpt_checkpoint_end(1), CKPT_ERR_NOT_INIT, "ckpt_init");
    fails(ckpt_restart_end(1), CKPT_ERR_NOT_INIT, "ckpt_init");
    fails(ckpt_checkpoint_wait(), CKPT_ERR_NOT_INIT, "ckpt_init");
    // SAFETY: a valid pointer to an int.
    fails(
        unsafe { ckpt_need_checkpoint(&mut flag) },
        CKPT_ERR_NOT_INIT,
        "ckpt_init",
    );
}

#[test]
fn init_twice_finalize_twice_and_reinit() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("job"));
    fails(
        env.init("job"),
        CKPT_ERR_STATE,
        "ckpt_init() was already called",
    );
    fails(ckpt_init_rank(0, 1), CKPT_ERR_STATE, "before ckpt_init");
    ok(ckpt_finalize());
    fails(ckpt_finalize(), CKPT_ERR_NOT_INIT, "ckpt_init");
    ok(env.init("job"));
    ok(ckpt_finalize());
}

#[test]
fn null_pointers_and_bad_arguments() {
    let _g = serial();
    let env = Env::new("");
    // SAFETY: NULL is allowed for config and refused for job.
    fails(
        unsafe { ckpt_init(env.config_c().as_ptr(), ptr::null()) },
        CKPT_ERR_INVALID,
        "job name is NULL",
    );
    fails(env.init("../evil"), CKPT_ERR_INVALID, "../evil");
    fails(env.init(""), CKPT_ERR_INVALID, "job");
    fails(ckpt_init_rank(2, 2), CKPT_ERR_INVALID, "rank 2 of 2");
    fails(ckpt_init_rank(0, 0), CKPT_ERR_INVALID, "rank 0 of 0");
    ok(env.init("job"));
    // SAFETY: NULL pointers are refused, not dereferenced.
    unsafe {
        fails(
            ckpt_checkpoint(ptr::null(), 1),
            CKPT_ERR_INVALID,
            "checkpoint name is NULL",
        );
        fails(ckpt_restart(ptr::null(), 1), CKPT_ERR_INVALID, "NULL");
        fails(ckpt_restart_test(ptr::null(), 1), CKPT_ERR_INVALID, "NULL");
        fails(
            ckpt_checkpoint_begin(ptr::null(), 1),
            CKPT_ERR_INVALID,
            "NULL",
        );
        fails(ckpt_restart_begin(ptr::null(), 1), CKPT_ERR_INVALID, "NULL");
        fails(
            ckpt_need_checkpoint(ptr::null_mut()),
            CKPT_ERR_INVALID,
            "NULL",
        );
        fails(
            ckpt_mem_protect(3, ptr::null_mut(), 10, 8),
            CKPT_ERR_INVALID,
            "id 3",
        );
        // COUNT 0 with a NULL pointer is allowed.
        ok(ckpt_mem_protect(4, ptr::null_mut(), 0, 8));
        // A negative count from C or Fortran arrives as a huge size_t.
        let mut x = [0u8; 8];
        fails(
            ckpt_mem_protect(5, x.as_mut_ptr().cast(), usize::MAX, 8),
            CKPT_ERR_INVALID,
            "id 5",
        );
        fails(
            ckpt_mem_protect(-1, x.as_mut_ptr().cast(), 8, 1),
            CKPT_ERR_INVALID,
            "id -1",
        );
        let mut buf = [0 as std::os::raw::c_char; 64];
        fails(
            ckpt_route_file(ptr::null(), buf.as_mut_ptr(), 64),
            CKPT_ERR_INVALID,
            "NULL",
        );
        fails(
            ckpt_route_file(c("f").as_ptr(), ptr::null_mut(), 64),
            CKPT_ERR_INVALID,
            "NULL",
        );
    }
    fails(ckpt_mem_unprotect(99), CKPT_ERR_NOT_FOUND, "id 99");
    fails(checkpoint("a/b", 1), CKPT_ERR_INVALID, "a/b");
    fails(checkpoint("", 1), CKPT_ERR_INVALID, "name");
    fails(checkpoint("ok", -3), CKPT_ERR_INVALID, "version -3");
    fails(restart("ok", -1), CKPT_ERR_INVALID, "version -1");
    fails(begin("ok", -1), CKPT_ERR_INVALID, "version -1");
    fails(
        restart("missing", 3),
        CKPT_ERR_NOT_FOUND,
        "missing.v0000000003",
    );
    fails(
        restart_begin("missing", 3),
        CKPT_ERR_NOT_FOUND,
        "missing.v0000000003",
    );
    fails(restart_test("missing", -1), CKPT_ERR_NOT_FOUND, "missing");
    ok(ckpt_finalize());
}

#[test]
fn calls_out_of_order() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("job"));
    assert_eq!(route("f.dat", 4096), Err(CKPT_ERR_STATE));
    assert!(last_error().contains("f.dat"), "{}", last_error());
    fails(
        ckpt_checkpoint_end(1),
        CKPT_ERR_STATE,
        "ckpt_checkpoint_begin",
    );
    fails(ckpt_restart_end(1), CKPT_ERR_STATE, "ckpt_restart_begin");
    ok(begin("c", 1));
    fails(begin("c", 2), CKPT_ERR_STATE, "c.v0000000001");
    fails(checkpoint("m", 1), CKPT_ERR_STATE, "ckpt_checkpoint_end");
    fails(restart_begin("c", 1), CKPT_ERR_STATE, "c.v0000000001");
    fails(ckpt_restart_end(1), CKPT_ERR_STATE, "ckpt_restart_begin");
    // Too short a buffer: the needed size is said, nothing else changes.
    assert_eq!(route("f.dat", 5), Err(CKPT_ERR_TRUNCATED));
    assert!(last_error().contains("f.dat"), "{}", last_error());
    assert_eq!(route("../f.dat", 4096), Err(CKPT_ERR_INVALID));
    assert!(last_error().contains("../f.dat"), "{}", last_error());
    ok(ckpt_checkpoint_end(1));
    ok(restart_begin("c", 1));
    fails(begin("c", 2), CKPT_ERR_STATE, "restart");
    fails(
        ckpt_checkpoint_end(1),
        CKPT_ERR_STATE,
        "ckpt_checkpoint_begin",
    );
    ok(ckpt_restart_end(1));
    ok(ckpt_finalize());
}

#[test]
fn bad_configuration_and_environment() {
    let _g = serial();
    let env = Env::new("");
    std::fs::write(
        &env.config,
        "cache = \"/var/tmp/x\"\n[api]\nmode = \"sometimes\"\n",
    )
    .unwrap();
    fails(
        env.init("job"),
        CKPT_ERR_CONFIG,
        env.config.to_str().unwrap(),
    );
    std::fs::write(&env.config, "[api]\noverhead = 101\n").unwrap();
    fails(env.init("job"), CKPT_ERR_CONFIG, "api.overhead");
    std::fs::remove_file(&env.config).unwrap();
    fails(
        env.init("job"),
        CKPT_ERR_CONFIG,
        env.config.to_str().unwrap(),
    );

    let env = Env::new("");
    std::env::set_var("PMI_RANK", "x1");
    std::env::set_var("PMI_SIZE", "4");
    let rc = env.init("job");
    std::env::remove_var("PMI_RANK");
    std::env::remove_var("PMI_SIZE");
    fails(rc, CKPT_ERR_CONFIG, "PMI_RANK");

    // Mounted mode with no daemon answering.
    let env = Env::new("");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("mode = \"embedded\"", "mode = \"mounted\"");
    std::fs::write(&env.config, text).unwrap();
    fails(env.init("job"), CKPT_ERR_DAEMON, "control.sock");
}

#[test]
fn strerror_and_last_error() {
    for (name, code) in CONSTANTS.iter().filter(|(n, _)| n.starts_with("CKPT_ERR_")) {
        // SAFETY: ckpt_strerror returns a static C string.
        let s = unsafe { CStr::from_ptr(ckpt_strerror(*code)) };
        assert!(
            !s.to_bytes().is_empty() && s.to_bytes() != b"unknown error code",
            "{name}"
        );
    }
    for code in [1, -14, -100, i32::MIN] {
        // SAFETY: as above.
        let s = unsafe { CStr::from_ptr(ckpt_strerror(code)) };
        assert_eq!(s.to_str().unwrap(), "unknown error code");
    }
    // SAFETY: as above.
    let s = unsafe { CStr::from_ptr(ckpt_strerror(CKPT_SUCCESS)) };
    assert_eq!(s.to_str().unwrap(), "success");
    // Per thread: a fresh thread has no message.
    std::thread::spawn(|| assert_eq!(last_error(), ""))
        .join()
        .unwrap();
}
