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

/// A thread blocked in `read` does not hold up a writer on the same
/// stream, as the DR server's reader and reply threads need. The peer
/// answers only once it has all 16 MiB (twice the credits, so the writer
/// also has to wait for the peer), so a reader that kept the stream to
/// itself while it slept would starve the writer until its own timeout.
#[cfg(feature = "rdma")]
#[test]
fn a_blocked_reader_does_not_hold_up_a_writer() {
    use libckpt::dr::rdma::{connect, RdmaListener};
    use libckpt::dr::transport::{RdmaOptions, Stream};
    use std::sync::Arc;
    const TOTAL: usize = 16 << 20;
    let Some(ip) = setup("a_blocked_reader_does_not_hold_up_a_writer") else {
        return;
    };
    let addr: std::net::SocketAddr = format!("{ip}:7478").parse().expect("address");
    let opts = RdmaOptions::default();
    let listener = RdmaListener::bind(addr, opts).expect("listen over RDMA");
    let server = std::thread::spawn(move || -> Result<usize, String> {
        let s = loop {
            if let Some(s) = listener
                .accept(Duration::from_secs(30))
                .map_err(|e| e.to_string())?
            {
                break s;
            }
        };
        s.set_timeout(Duration::from_secs(20))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < TOTAL {
            match s.read(&mut buf).map_err(|e| format!("server read: {e}"))? {
                0 => return Err(format!("end of stream after {got} bytes")),
                n => got += n,
            }
        }
        s.write(b"all here").map_err(|e| e.to_string())?;
        s.flush().map_err(|e| e.to_string())?;
        // Until the client is done with the stream.
        while s.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
        Ok(got)
    });
    let s: Arc<dyn Stream> = Arc::new(
        connect(&addr.to_string(), addr, &opts, Duration::from_secs(30)).expect("connect"),
    );
    s.set_timeout(Duration::from_secs(20)).expect("timeout");
    let reader = {
        let s = s.clone();
        std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let mut answer = vec![0u8; 8];
            let mut off = 0;
            while off < answer.len() {
                match s.read(&mut answer[off..])? {
                    0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    n => off += n,
                }
            }
            Ok(answer)
        })
    };
    // Let the reader get into its wait first: the case under test.
    std::thread::sleep(Duration::from_millis(300));
    let block = vec![5u8; 1 << 20];
    for _ in 0..TOTAL / block.len() {
        let mut off = 0;
        while off < block.len() {
            off += s
                .write(&block[off..])
                .expect("write while another thread reads");
        }
    }
    s.flush().expect("flush");
    let answer = reader
        .join()
        .expect("reader thread")
        .expect("the reader got the peer's answer");
    assert_eq!(answer, b"all here");
    drop(s);
    assert_eq!(server.join().expect("server thread"), Ok(TOTAL));
}

/// Without the feature there is no verbs stream to share: say so.
#[cfg(not(feature = "rdma"))]
#[test]
fn a_blocked_reader_does_not_hold_up_a_writer() {
    assert!(setup("a_blocked_reader_does_not_hold_up_a_writer").is_none());
}

/// Without the feature there is no verbs stream to fault: say so.
#[cfg(not(feature = "rdma"))]
#[test]
fn a_queue_pair_error_mid_stream_is_reported_naming_device_and_peer() {
    assert!(setup("a_queue_pair_error_mid_stream_is_reported_naming_device_and_peer").is_none());
}
