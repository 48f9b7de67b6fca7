//! Calls from several threads at once: serialised inside the library, each
//! thread with its own last error.

mod common;

use ckpt::*;
use common::*;

#[test]
fn many_threads_checkpoint_and_fail_at_once() {
    let _g = serial();
    let env = Env::new("[store]\nkeep = 0\n");
    ok(env.init("mt"));
    std::thread::scope(|s| {
        for t in 0..6i32 {
            s.spawn(move || {
                let mut data = vec![t as u8; 50_000 + t as usize];
                for i in 0..5 {
                    // Each thread its own id, name and versions.
                    ok(protect(t, &mut data));
                    ok(checkpoint(&format!("t{t}"), i));
                    fails(
                        checkpoint(&format!("bad/{t}"), i),
                        CKPT_ERR_INVALID,
                        &format!("bad/{t}"),
                    );
                    // The message is this thread's, whatever the others did.
                    assert!(last_error().contains(&format!("bad/{t}")));
                    fails(
                        ckpt_mem_unprotect(1000 + t),
                        CKPT_ERR_NOT_FOUND,
                        &format!("id {}", 1000 + t),
                    );
                    ok(ckpt_mem_unprotect(t));
                    let mut flag = -1;
                    // SAFETY: a valid int.
                    ok(unsafe { ckpt_need_checkpoint(&mut flag) });
                    assert!(flag == 0 || flag == 1);
                }
            });
        }
    });
    for t in 0..6 {
        assert_eq!(restart_test(&format!("t{t}"), -1), 4);
    }
    // init and finalize racing: exactly one init wins, one finalize wins.
    ok(ckpt_finalize());
    let results: Vec<(i32, i32)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| env.init("mt"))).collect();
        let inits: Vec<i32> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| ckpt_finalize())).collect();
        let fins: Vec<i32> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        inits.into_iter().zip(fins).collect()
    });
    let inits = results.iter().filter(|(i, _)| *i == CKPT_SUCCESS).count();
    let fins = results.iter().filter(|(_, f)| *f == CKPT_SUCCESS).count();
    assert_eq!((inits, fins), (1, 1), "{results:?}");
    assert!(results
        .iter()
        .all(|(i, f)| (*i == 0 || *i == CKPT_ERR_STATE) && (*f == 0 || *f == CKPT_ERR_NOT_INIT)));
}
