//! The DR protocol over RDMA verbs: a reliable-connected queue pair set up
//! through rdma_cm, carrying the same frames as TCP.
//!
//! The stream ([`link::RdmaStream`]) sends with `SEND_WITH_IMM` out of a
//! fixed pool of registered buffers and receives into another, both
//! registered once per connection. Flow control is by credits: each side
//! announces how many receive buffers it keeps posted ([`private`]), a send
//! spends one, and the receiver gives them back in the immediate data of
//! its own sends or, when it has nothing to send, in an empty message that
//! spends no credit of its own (a spare posted receive takes it), so two
//! sides that both wait for credits can always tell each other about freed
//! buffers.
//! Received bytes are copied out of their buffer at once (into a bounded
//! staging queue) and the buffer reposted: a reply the application has
//! not read yet does not pin a registered buffer, so pipelined requests
//! cannot deadlock on buffers the way they could on credits alone.
//!
//! Waiting never spins: the completion queue is armed and the thread
//! sleeps in `poll(2)` on the completion channel and the connection's
//! rdma_cm event channel (which reports a peer's disconnect). It sleeps
//! without the stream's lock, so one thread can wait for data while
//! another writes; a second thread that has to wait meanwhile waits for
//! the first to wake it rather than polling the same channels.
//!
//! [`private`] is compiled without the feature, for its fuzz target.

pub mod private;

#[cfg(feature = "rdma")]
mod cm;
#[cfg(feature = "rdma")]
mod link;

#[cfg(feature = "rdma")]
pub use cm::{connect, RdmaListener};
#[cfg(feature = "rdma")]
pub use link::RdmaStream;

/// Why RDMA cannot be used on this host at all, or `None` when a verbs
/// device exists (whether it reaches a given peer is found out by trying).
#[cfg(feature = "rdma")]
pub fn unavailable() -> Option<String> {
    if !std::path::Path::new("/dev/infiniband/rdma_cm").exists() {
        return Some("no RDMA device: no /dev/infiniband/rdma_cm".into());
    }
    let devices = std::fs::read_dir("/sys/class/infiniband")
        .map(|d| d.count())
        .unwrap_or(0);
    (devices == 0).then(|| "no RDMA device".into())
}
