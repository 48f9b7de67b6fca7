//! Mounted mode: a daemon answers on the cache's control socket; the
//! library writes and commits in the cache itself, then tells the daemon
//! (`committed`) so its drain starts now. The daemon here is a stand-in
//! serving the real control protocol.

mod common;

use std::sync::{Arc, Mutex};

use ckpt::*;
use common::*;
use libckpt::control::{self, Failure, FailureKind, Handler, Request, Server};
use serde_json::{json, Value};

#[derive(Default)]
struct FakeDaemon {
    seen: Mutex<Vec<Request>>,
    refuse: bool,
}

impl Handler for FakeDaemon {
    fn handle(&self, req: Request) -> Result<Value, Failure> {
        self.seen.lock().unwrap().push(req.clone());
        match req {
            Request::Committed { .. } if self.refuse => {
                Err(Failure::new(FailureKind::Refused, "not today"))
            }
            _ => Ok(json!({})),
        }
    }
}

fn start(env: &Env, refuse: bool) -> (Arc<FakeDaemon>, Server) {
    std::fs::create_dir_all(env.cache.join(".ckptfs")).unwrap();
    let d = Arc::new(FakeDaemon {
        refuse,
        ..Default::default()
    });
    let server = Server::start(&control::socket_path(&env.cache), d.clone()).unwrap();
    (d, server)
}

fn auto_env() -> Env {
    let env = Env::new("");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("mode = \"embedded\"", "mode = \"auto\"");
    std::fs::write(&env.config, text).unwrap();
    env
}

#[test]
fn auto_finds_the_daemon_and_tells_it_of_each_commit() {
    let _g = serial();
    let env = auto_env();
    let (daemon, server) = start(&env, false);
    ok(env.init("heat"));
    assert_eq!(ckpt::is_mounted(), Some(true));
    let mut x = vec![5u16; 1000];
    ok(protect(0, &mut x));
    ok(checkpoint("heat", 1));
    ok(begin("files", 2));
    std::fs::write(route("a", 4096).unwrap(), b"a").unwrap();
    ok(ckpt_checkpoint_end(1));
    ok(ckpt_checkpoint_wait());
    let seen = daemon.seen.lock().unwrap().clone();
    let committed: Vec<String> = seen
        .iter()
        .filter_map(|r| match r {
            Request::Committed { job, set } => Some(format!("{job}/{set}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        committed,
        ["heat/heat.v0000000001", "heat/files.v0000000002"]
    );
    ok(ckpt_finalize());
    // Without the daemon, auto is embedded.
    server.shutdown();
    ok(env.init("heat"));
    assert_eq!(ckpt::is_mounted(), Some(false));
    assert_eq!(restart_test("heat", -1), 1);
    ok(ckpt_finalize());
}

#[test]
fn a_daemon_that_refuses_is_an_error_but_the_checkpoint_stands() {
    let _g = serial();
    let env = auto_env();
    let (_daemon, _server) = start(&env, true);
    ok(env.init("heat"));
    let mut x = [1u8; 10];
    ok(protect(0, &mut x));
    fails(checkpoint("heat", 1), CKPT_ERR_DAEMON, "not today");
    assert!(
        last_error().contains("heat.v0000000001"),
        "{}",
        last_error()
    );
    assert_eq!(restart_test("heat", -1), 1);
    ok(ckpt_finalize());
}
