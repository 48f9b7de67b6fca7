//! The private data an RDMA peer sends in its CONNECT request or ACCEPT
//! reply, before it has authenticated. Parsing must never panic, and what
//! it accepts must be within the bounds that size our send path and must
//! encode back to the bytes it came from.

#![no_main]

use libckpt::dr::rdma::private::{Announce, LEN, MAX_BUF, MAX_BUFS, MIN_BUF, MIN_BUFS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Announce::parse(data) {
        assert!((MIN_BUFS..=MAX_BUFS).contains(&a.recv_bufs));
        assert!((MIN_BUF..=MAX_BUF).contains(&a.buf_size));
        let mut head = data[..LEN].to_vec();
        head[5] = 0;
        assert_eq!(a.encode().to_vec(), head);
    }
});
