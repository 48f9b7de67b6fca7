//! The RDMA stream in this process, through the library: set-up failures
//! and a queue pair that fails mid-stream. Apart from `tests/rdma.rs`
//! because librdmacm keeps every device open for the life of a process
//! that used it, and `rdma link delete` there waits for all of them.
//! Skipped, saying how to run them, without a verbs device.

mod common;

use std::time::Duration;

use common::rdma::setup;

/// Set-up failures are typed errors that name the device and the peer:
/// nobody listening over RDMA, and an address no device reaches.
#[test]
fn rdma_connect_failures_name_the_device_and_the_peer() {
    use libckpt::dr::transport::{connect, Choice, RdmaOptions};
    let Some(ip) = setup("rdma_connect_failures_name_the_device_and_the_peer") else {
        return;
    };
    let peer = format!("{ip}:7479");
    let e = connect(
        &peer,
        Choice::Rdma,
        &RdmaOptions::default(),
        Duration::from_secs(10),
    )
    .err()
    .expect("a connect with no listener succeeded");
    let msg = e.to_string();
    eprintln!("no listener: {msg}");
    assert!(msg.contains(&peer), "{msg}");
    assert!(msg.contains(" over "), "no device named: {msg}");
    assert!(
        e.is_transient(),
        "a peer not listening yet is worth a retry: {msg}"
    );

    // TEST-NET-1 (RFC 5737) is never routed: no device reaches it.
    let far = "192.0.2.1:7479";
    let e = connect(
        far,
        Choice::Rdma,
        &RdmaOptions::default(),
        Duration::from_secs(3),
    )
    .err()
    .expect("a connect to an unrouted address succeeded");
    let msg = e.to_string();
    eprintln!("unrouted: {msg}");
    assert!(msg.contains(far), "{msg}");
}

/// A queue pair that goes to the error state mid-stream (what a failing
/// port or device does) is a typed error naming the device and the peer
/// on the next write or read, not a hang; the other end sees the stream
/// end or fail within its timeout.
#[cfg(feature = "rdma")]
#[test]
fn a_queue_pair_error_mid_stream_is_reported_naming_device_and_peer() {
    use libckpt::dr::rdma::{connect, RdmaListener};
    use libckpt::dr::transport::{RdmaOptions, Stream};
    let Some(ip) = setup("a_queue_pair_error_mid_stream_is_reported_naming_device_and_peer") else {
        return;
    };
    let addr: std::net::SocketAddr = format!("{ip}:7476").parse().expect("address");
    let opts = RdmaOptions::default();
    let listener = RdmaListener::bind(addr, opts).expect("listen over RDMA");
    let server = std::thread::spawn(move || -> String {
        let s = loop {
            if let Some(s) = listener.accept(Duration::from_secs(30)).expect("accept") {
                break s;
            }
        };
        s.set_timeout(Duration::from_secs(20)).expect("timeout");
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return "end of stream".into(),
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    });
    let s = connect(&addr.to_string(), addr, &opts, Duration::from_secs(30)).expect("connect");
    s.set_timeout(Duration::from_secs(20)).expect("timeout");
    let block = vec![7u8; 1 << 20];
    for _ in 0..4 {
        let mut off = 0;
        while off < block.len() {
            off += s.write(&block[off..]).expect("write before the fault");
        }
    }
    s.flush().expect("flush before the fault");
    s.inject_qp_error().expect("move the QP to the error state");
    let e = (0..64)
        .find_map(|_| s.write(&block).and_then(|_| s.flush()).err())
        .expect("writes kept succeeding on a QP in the error state");
    let msg = e.to_string();
    eprintln!("client: {msg}");
    assert!(
        msg.contains(s.device()) && msg.contains(&addr.to_string()),
        "{msg}"
    );
    assert_ne!(
        e.kind(),
        std::io::ErrorKind::TimedOut,
        "a QP error must not wait for the timeout: {msg}"
    );
    drop(s);
    let end = server.join().expect("server thread");
    eprintln!("server: {end}");
}

/// Without the feature there is no verbs stream to fault: say so.
#[cfg(not(feature = "rdma"))]
#[test]
fn a_queue_pair_error_mid_stream_is_reported_naming_device_and_peer() {
    assert!(setup("a_queue_pair_error_mid_stream_is_reported_naming_device_and_peer").is_none());
}
