//! Embedded mode with a PFS tier: the library drains the cache itself;
//! ckpt_checkpoint_wait returns once the set is on the PFS, and a restart
//! on a node whose cache lost it stages it back in.

mod common;

use ckpt::*;
use common::*;

fn env_with_pfs() -> (Env, std::path::PathBuf) {
    let env = Env::new("");
    let pfs = env.path("pfs");
    std::fs::create_dir(&pfs).unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap()
        + &format!(
            "[pfs]\ndir = \"{}\"\n[drain]\njitter = \"0s\"\nbackoff_min = \"50ms\"\n\
             high_watermark = 100\nlow_watermark = 99\n",
            pfs.display()
        );
    std::fs::write(&env.config, text).unwrap();
    (env, pfs)
}

#[test]
fn wait_returns_once_on_the_pfs_and_restart_stages_in() {
    let _g = serial();
    let (env, pfs) = env_with_pfs();
    ok(env.init("heat"));
    assert_eq!(ckpt::is_mounted(), Some(false));
    // Nothing committed yet: nothing to wait for.
    ok(ckpt_checkpoint_wait());
    let mut grid: Vec<f32> = (0..500_000).map(|i| i as f32).collect();
    ok(protect(0, &mut grid));
    ok(checkpoint("heat", 1));
    ok(ckpt_checkpoint_wait());
    let manifest = pfs.join("heat/.manifests/heat.v0000000001.json");
    assert!(
        manifest.is_file(),
        "the set is on the PFS when wait returns"
    );
    assert!(pfs.join("heat/heat.v0000000001/mem/rank-0.ckpt").is_file());
    ok(ckpt_finalize());

    // The node's cache is lost.
    std::fs::remove_dir_all(&env.cache).unwrap();
    ok(env.init("heat"));
    let saved = grid.clone();
    grid.iter_mut().for_each(|x| *x = 0.0);
    ok(protect(0, &mut grid));
    assert_eq!(restart_test("heat", -1), 1, "found on the PFS");
    ok(restart("heat", 1));
    assert_eq!(grid, saved);
    assert!(
        env.cache
            .join("heat/heat.v0000000001/mem/rank-0.ckpt")
            .is_file(),
        "staged in"
    );
    ok(ckpt_finalize());
}

#[test]
fn file_based_checkpoint_drains_and_comes_back() {
    let _g = serial();
    let (env, _pfs) = env_with_pfs();
    ok(env.init("f"));
    ok(begin("out", 4));
    std::fs::write(route("state.bin", 4096).unwrap(), vec![9u8; 1 << 20]).unwrap();
    ok(ckpt_checkpoint_end(1));
    ok(ckpt_checkpoint_wait());
    // Finalize waits for the drain (it is done already) and stops it.
    ok(ckpt_finalize());
    std::fs::remove_dir_all(&env.cache).unwrap();
    ok(env.init("f"));
    assert_eq!(restart_test("out", 10), 4);
    ok(restart_begin("out", 4));
    let p = route("state.bin", 4096).unwrap();
    assert_eq!(std::fs::read(p).unwrap(), vec![9u8; 1 << 20]);
    ok(ckpt_restart_end(1));
    ok(ckpt_finalize());
}

#[test]
fn wait_times_out_when_the_tier_is_unreachable() {
    let _g = serial();
    let (env, pfs) = env_with_pfs();
    // The PFS directory is not there: every push fails.
    std::fs::remove_dir(&pfs).unwrap();
    std::fs::write(&pfs, b"not a directory").unwrap();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("wait_timeout = \"60s\"", "wait_timeout = \"300ms\"")
        .replace("finalize_timeout = \"20s\"", "finalize_timeout = \"300ms\"");
    std::fs::write(&env.config, text).unwrap();
    ok(env.init("heat"));
    let mut x = [1u8; 100];
    ok(protect(0, &mut x));
    ok(checkpoint("heat", 1));
    fails(ckpt_checkpoint_wait(), CKPT_ERR_TIMEOUT, "heat.v0000000001");
    // The checkpoint itself is fine in the cache.
    assert_eq!(restart_test("heat", -1), 1);
    fails(ckpt_finalize(), CKPT_ERR_TIMEOUT, "drain");
    // Finalized anyway.
    fails(ckpt_finalize(), CKPT_ERR_NOT_INIT, "ckpt_init");
}

#[test]
fn need_checkpoint_rules() {
    let _g = serial();
    let env = Env::new("");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[api]\n", "[api]\ninterval = 3\noverhead = 0\n");
    std::fs::write(&env.config, text).unwrap();
    ok(env.init("n"));
    let ask = || {
        let mut flag = -1;
        // SAFETY: a valid int.
        ok(unsafe { ckpt_need_checkpoint(&mut flag) });
        flag
    };
    assert_eq!(ask(), 1, "the first call always says yes");
    assert_eq!((ask(), ask()), (0, 1));
    let mut x = [0u8; 8];
    ok(protect(0, &mut x));
    ok(checkpoint("n", 1));
    assert_eq!((ask(), ask(), ask()), (0, 0, 1));
    ok(ckpt_finalize());
}
