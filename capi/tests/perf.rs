//! A rough look at the time blocked in ckpt_checkpoint against a raw
//! write(2) + fsync of the same bytes to the same filesystem. Ignored by
//! default and never asserting on time (the benchmark, in bench/,
//! measures it properly); run with
//! `cargo test --release -p ckpt-capi --test perf -- --ignored --nocapture`.

mod common;

use std::io::Write;
use std::time::Instant;

use common::*;

#[test]
#[ignore = "a measurement, not a test: run by hand in release mode"]
fn checkpoint_vs_raw_write() {
    let _g = serial();
    let env = Env::new("[store]\nkeep = 1\n");
    ok(env.init("perf"));
    let gib = std::env::var("CKPT_PERF_MIB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1024)
        << 20;
    let mut data: Vec<u8> = (0..gib).map(|i| (i * 31 % 251) as u8).collect();
    ok(protect(0, &mut data));
    for round in 0..3 {
        let raw = env.path(&format!("raw-{round}.bin"));
        let t = Instant::now();
        let mut f = std::fs::File::create(&raw).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        let raw_s = t.elapsed().as_secs_f64();
        drop(f);
        std::fs::remove_file(&raw).unwrap();
        let t = Instant::now();
        ok(checkpoint("perf", round));
        let ck_s = t.elapsed().as_secs_f64();
        eprintln!(
            "{} MiB: write+fsync {raw_s:.3} s, ckpt_checkpoint {ck_s:.3} s, ratio {:.3}",
            gib >> 20,
            ck_s / raw_s
        );
    }
    ok(ckpt::ckpt_finalize());
}

#[test]
#[ignore = "a measurement, not a test: run by hand in release mode"]
fn fixed_cost_of_a_small_checkpoint() {
    let _g = serial();
    let env = Env::new("");
    ok(env.init("small"));
    let mut data = vec![1u8; 4096];
    ok(protect(0, &mut data));
    let n = 30;
    let t = Instant::now();
    for v in 0..n {
        ok(checkpoint("small", v));
    }
    let per = t.elapsed().as_secs_f64() / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        let mut f = std::fs::File::create(env.path("raw")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let raw = t.elapsed().as_secs_f64() / f64::from(n);
    eprintln!(
        "4 KiB: ckpt_checkpoint {:.2} ms, write+fsync {:.2} ms",
        per * 1e3,
        raw * 1e3
    );
    ok(ckpt::ckpt_finalize());
}
