//! Several ranks as separate processes (this test binary, run again with
//! the launcher's variables set), sharing one cache: a set is complete
//! only once every rank ended its part, and a rank that dies leaves the
//! set incomplete, so every rank restarts from the previous one.

mod common;

use std::process::{Command, Stdio};

use ckpt::*;
use common::*;
use libckpt::io::IoEngine;
use libckpt::path::{JobName, SetName};
use libckpt::set::SetState;
use libckpt::store::{Store, StoreOptions};

const ROLE: &str = "CKPT_TEST_RANK_ROLE";
const CONFIG: &str = "CKPT_TEST_RANK_CONFIG";
const N: i32 = 3;

fn data_of(rank: i32, version: i32) -> Vec<u64> {
    (0..20_000u64)
        .map(|i| i * 7 + (rank as u64) * 1_000_000 + version as u64)
        .collect()
}

/// What one rank does, when this binary runs as a rank.
#[test]
fn rank_process() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let config = c(&std::env::var(CONFIG).unwrap());
    let rank: i32 = std::env::var("OMPI_COMM_WORLD_RANK")
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: valid C strings.
    ok(unsafe { ckpt_init(config.as_ptr(), c("mpi").as_ptr()) });
    let mut data = vec![0u64; 20_000];
    ok(protect(0, &mut data));
    match role.as_str() {
        "write" | "die" => {
            for v in 1..=2 {
                data.copy_from_slice(&data_of(rank, v));
                ok(checkpoint("r", v));
            }
            // Every rank has ended its part of version 2 once this returns.
            ok(ckpt_checkpoint_wait());
            if role == "die" && rank == N - 1 {
                // Killed before its part of version 3.
                std::process::exit(42);
            }
            data.copy_from_slice(&data_of(rank, 3));
            ok(checkpoint("r", 3));
            let rc = ckpt_finalize();
            assert!(
                rc == CKPT_SUCCESS || (role == "die" && rc == CKPT_ERR_TIMEOUT),
                "{rc}: {}",
                last_error()
            );
        }
        "restart" => {
            let want: i32 = std::env::var("CKPT_TEST_WANT").unwrap().parse().unwrap();
            assert_eq!(restart_test("r", -1), want, "{}", last_error());
            ok(restart("r", want));
            assert!(data == data_of(rank, want), "rank {rank} got other data");
            ok(ckpt_finalize());
        }
        other => panic!("unknown role {other}"),
    }
}

fn run_ranks(env: &Env, role: &str, extra: &[(&str, String)]) -> Vec<std::process::ExitStatus> {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..N)
        .map(|r| {
            let mut cmd = Command::new(&exe);
            cmd.args(["rank_process", "--exact", "--test-threads=1"])
                .stdout(Stdio::piped())
                .env(ROLE, role)
                .env(CONFIG, &env.config)
                .env("OMPI_COMM_WORLD_RANK", r.to_string())
                .env("OMPI_COMM_WORLD_SIZE", N.to_string());
            for (k, v) in extra {
                cmd.env(k, v);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            if !out.status.success() {
                // The rank's failure report, for this test's own output.
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
            }
            out.status
        })
        .collect()
}

fn state(env: &Env, v: i32) -> Option<SetState> {
    let engine = std::sync::Arc::new(IoEngine::new(&Default::default()).unwrap());
    let s = Store::open(&env.cache, engine, StoreOptions::default()).unwrap();
    s.info(
        &JobName::new("mpi").unwrap(),
        &SetName::new(format!("r.v{v:010}")).unwrap(),
    )
    .unwrap()
    .map(|i| i.state)
}

#[test]
fn ranks_in_processes() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let _g = serial();
    let env = Env::new("[store]\nkeep = 0\n");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("finalize_timeout = \"20s\"", "finalize_timeout = \"2s\"");
    std::fs::write(&env.config, text).unwrap();

    // Every rank writes three versions.
    let st = run_ranks(&env, "write", &[]);
    assert!(st.iter().all(|s| s.success()), "{st:?}");
    for v in 1..=3 {
        assert_eq!(state(&env, v), Some(SetState::Complete), "version {v}");
    }
    let st = run_ranks(&env, "restart", &[("CKPT_TEST_WANT", "3".into())]);
    assert!(st.iter().all(|s| s.success()), "{st:?}");

    // Again from scratch, and the last rank dies before its part of v3.
    std::fs::remove_dir_all(&env.cache).unwrap();
    let st = run_ranks(&env, "die", &[]);
    assert_eq!(st[N as usize - 1].code(), Some(42));
    assert!(st[..N as usize - 1].iter().all(|s| s.success()), "{st:?}");
    assert_eq!(state(&env, 2), Some(SetState::Complete));
    assert_eq!(state(&env, 3), Some(SetState::Abandoned));
    // Every rank restarts from version 2.
    let st = run_ranks(&env, "restart", &[("CKPT_TEST_WANT", "2".into())]);
    assert!(st.iter().all(|s| s.success()), "{st:?}");
    // A new run writes version 3 again over the abandoned one.
    let st = run_ranks(&env, "write", &[]);
    assert!(st.iter().all(|s| s.success()), "{st:?}");
    assert_eq!(state(&env, 3), Some(SetState::Complete));
}
