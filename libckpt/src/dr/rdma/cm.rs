//! Connection set-up through rdma_cm: the client's resolve and connect,
//! the server's listen and accept, and the private data exchanged on the
//! way (see [`super::private`]).

use std::ffi::CStr;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;
use std::time::{Duration, Instant};

use rdma_sys::*;

use super::link::{errno, nonblocking, RdmaStream, Resources};
use super::private::Announce;
use crate::dr::error::DrError;
use crate::dr::transport::RdmaOptions;

pub(super) fn event_name(kind: rdma_cm_event_type::Type) -> String {
    // SAFETY: rdma_event_str returns a static string for any value.
    unsafe { CStr::from_ptr(rdma_event_str(kind)) }
        .to_string_lossy()
        .into_owned()
}

/// One rdma_cm event, copied out and acked.
struct Event {
    kind: rdma_cm_event_type::Type,
    status: i32,
    id: *mut rdma_cm_id,
    private: Vec<u8>,
}

/// The next event on `ec` (non-blocking), waiting until `deadline`;
/// `Ok(None)` at the deadline.
fn next_event(ec: *mut rdma_event_channel, deadline: Instant) -> io::Result<Option<Event>> {
    loop {
        let mut ev = ptr::null_mut();
        // SAFETY: `ec` is a live, non-blocking event channel.
        if unsafe { rdma_get_cm_event(ec, &mut ev) } == 0 {
            // SAFETY: `ev` is valid until acked; the private data is
            // copied out first, as acking frees it.
            let out = unsafe {
                let e = &*ev;
                let conn = &e.param.conn;
                let private = if conn.private_data.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(
                        conn.private_data.cast::<u8>(),
                        conn.private_data_len as usize,
                    )
                    .to_vec()
                };
                Event {
                    kind: e.event,
                    status: e.status,
                    id: e.id,
                    private,
                }
            };
            // SAFETY: acked once.
            unsafe { rdma_ack_cm_event(ev) };
            return Ok(Some(out));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(e);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let mut pfd = libc::pollfd {
            // SAFETY: `ec` is live.
            fd: unsafe { (*ec).fd },
            events: libc::POLLIN,
            revents: 0,
        };
        let wait = (deadline - now).as_millis().min(1000) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait) };
    }
}

fn sockaddr(addr: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    ss
}

fn socket_addr(sa: &libc::sockaddr) -> Option<SocketAddr> {
    match sa.sa_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe { &*(sa as *const libc::sockaddr).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                sin.sin_addr.s_addr.to_ne_bytes().into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe { &*(sa as *const libc::sockaddr).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A fresh event channel (non-blocking) and an RC id on it.
fn new_id() -> io::Result<Resources> {
    // SAFETY: plain constructor; checked for null.
    let ec = unsafe { rdma_create_event_channel() };
    if ec.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut res = Resources::new(ec, ptr::null_mut());
    // SAFETY: `ec` is live.
    nonblocking(unsafe { (*ec).fd })?;
    let mut id = ptr::null_mut();
    // SAFETY: `ec` is live; the id is owned by `res` from here on.
    errno(unsafe { rdma_create_id(ec, &mut id, ptr::null_mut(), rdma_port_space::RDMA_PS_TCP) })?;
    res.id = id;
    Ok(res)
}

fn conn_param(announce: &[u8; super::private::LEN]) -> rdma_conn_param {
    rdma_conn_param {
        private_data: announce.as_ptr().cast(),
        private_data_len: announce.len() as u8,
        // Only sends: no RDMA reads in either direction.
        responder_resources: 0,
        initiator_depth: 0,
        flow_control: 0,
        retry_count: 7,
        // Credits keep a receive posted for every send; 7 means retry for
        // ever on the rare receiver-not-ready anyway.
        rnr_retry_count: 7,
        srq: 0,
        qp_num: 0,
    }
}

fn post_all_recvs(res: &Resources, opts: &RdmaOptions) -> io::Result<()> {
    (0..super::link::recv_wqes(opts)).try_for_each(|i| res.post_recv(i))
}

/// Connect to `addr` over RDMA; `peer` names it in errors.
pub fn connect(
    peer: &str,
    addr: SocketAddr,
    opts: &RdmaOptions,
    timeout: Duration,
) -> Result<RdmaStream, DrError> {
    let fail = |device: &str, message: String| DrError::Rdma {
        peer: peer.into(),
        device: device.into(),
        message,
    };
    let deadline = Instant::now() + timeout;
    let ms = timeout.as_millis().clamp(100, 30_000) as i32;
    let mut res = new_id().map_err(|e| fail("", format!("cannot open rdma_cm: {e}")))?;
    let mut dst = sockaddr(addr);
    // SAFETY: the id is live; `dst` outlives the call.
    errno(unsafe {
        rdma_resolve_addr(
            res.id,
            ptr::null_mut(),
            (&mut dst as *mut libc::sockaddr_storage).cast(),
            ms,
        )
    })
    .map_err(|e| fail("", format!("no RDMA device reaches it: {e}")))?;
    let expect = |res: &Resources, want, what: &str| -> Result<Event, DrError> {
        match next_event(res.ec, deadline) {
            Ok(Some(ev)) if ev.kind == want => Ok(ev),
            Ok(Some(ev)) => Err(fail(
                &res.device(),
                format!("{what}: {} (status {})", event_name(ev.kind), ev.status),
            )),
            Ok(None) => Err(fail(&res.device(), format!("{what}: timed out"))),
            Err(e) => Err(fail(&res.device(), format!("{what}: {e}"))),
        }
    };
    expect(
        &res,
        rdma_cm_event_type::RDMA_CM_EVENT_ADDR_RESOLVED,
        "no RDMA device reaches it",
    )?;
    // SAFETY: the id's address is resolved.
    errno(unsafe { rdma_resolve_route(res.id, ms) })
        .map_err(|e| fail(&res.device(), format!("resolving the route: {e}")))?;
    expect(
        &res,
        rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_RESOLVED,
        "resolving the route",
    )?;
    let device = res.device();
    res.build(opts)
        .and_then(|()| post_all_recvs(&res, opts))
        .map_err(|e| fail(&device, format!("setting up the queue pair: {e}")))?;
    let ours = Announce {
        recv_bufs: opts.recv_bufs,
        buf_size: opts.buf_size,
    }
    .encode();
    let mut param = conn_param(&ours);
    // SAFETY: the id has a QP; `param` and `ours` outlive the call.
    errno(unsafe { rdma_connect(res.id, &mut param) })
        .map_err(|e| fail(&device, format!("connecting: {e}")))?;
    let ev = match next_event(res.ec, deadline) {
        Ok(Some(ev)) if ev.kind == rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED => ev,
        Ok(Some(ev)) if ev.kind == rdma_cm_event_type::RDMA_CM_EVENT_REJECTED => {
            return Err(fail(
                &device,
                "the peer rejected the connection (no ckptfs serve listening over RDMA on that \
                 port, or it refused our buffer sizes: see its log)"
                    .into(),
            ))
        }
        Ok(Some(ev)) => {
            return Err(fail(
                &device,
                format!("connecting: {} (status {})", event_name(ev.kind), ev.status),
            ))
        }
        Ok(None) => return Err(fail(&device, "connecting: timed out".into())),
        Err(e) => return Err(fail(&device, format!("connecting: {e}"))),
    };
    let theirs = Announce::parse(&ev.private)
        .map_err(|e| fail(&device, format!("the peer's connection data: {e}")))?;
    tracing::debug!(peer, %device, ?theirs, "RDMA connection established");
    Ok(RdmaStream::new(
        res,
        opts,
        theirs.recv_bufs,
        theirs.buf_size,
        true,
        peer.into(),
    ))
}

/// A bound and listening rdma_cm id.
pub struct RdmaListener {
    res: Resources,
    addr: SocketAddr,
    opts: RdmaOptions,
}

// SAFETY: the listener's id and channel are only used through `&self`
// from the one accept thread at a time (`accept` is not re-entered), and
// librdmacm objects may move between threads.
unsafe impl Send for RdmaListener {}
// SAFETY: as above.
unsafe impl Sync for RdmaListener {}

impl RdmaListener {
    /// Listen on `addr` (port 0 picks one).
    pub fn bind(addr: SocketAddr, opts: RdmaOptions) -> Result<RdmaListener, DrError> {
        let fail = |source: io::Error| DrError::Bind {
            addr: format!("{addr} (RDMA)"),
            source,
        };
        if let Some(why) = super::unavailable() {
            return Err(fail(io::Error::new(io::ErrorKind::NotFound, why)));
        }
        let res = new_id().map_err(fail)?;
        let mut sa = sockaddr(addr);
        // SAFETY: the id is live; `sa` outlives the call.
        errno(unsafe { rdma_bind_addr(res.id, (&mut sa as *mut libc::sockaddr_storage).cast()) })
            .map_err(fail)?;
        // SAFETY: the id is bound.
        errno(unsafe { rdma_listen(res.id, 64) }).map_err(fail)?;
        // SAFETY: the id is bound, so it has a source port.
        let port = u16::from_be(unsafe { rdma_get_src_port(res.id) });
        let mut bound = addr;
        bound.set_port(port);
        Ok(RdmaListener {
            res,
            addr: bound,
            opts,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The device the address is on; empty when bound to every address.
    pub fn device(&self) -> String {
        self.res.device()
    }

    /// Take the next connection request, waiting at most `wait`;
    /// `Ok(None)` when none came. A request with bad private data is
    /// rejected and reported as an error; the listener carries on.
    pub fn accept(&self, wait: Duration) -> Result<Option<RdmaStream>, DrError> {
        let here = self.addr.to_string();
        let ev = match next_event(self.res.ec, Instant::now() + wait) {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(DrError::Rdma {
                    peer: here,
                    device: self.device(),
                    message: format!("reading connection requests: {e}"),
                })
            }
        };
        if ev.kind != rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST {
            tracing::debug!(event = %event_name(ev.kind), "RDMA listener event");
            return Ok(None);
        }
        let child = ev.id;
        // SAFETY: a connect request's id is a live child id.
        let peer = socket_addr(unsafe { rdma_get_peer_addr(&*child) })
            .map_or_else(|| "unknown RDMA peer".to_string(), |a| a.to_string());
        let mut res = Resources::new(ptr::null_mut(), child);
        let fail = |res: &Resources, message: String| DrError::Rdma {
            peer: peer.clone(),
            device: res.device(),
            message,
        };
        let theirs = match Announce::parse(&ev.private) {
            Ok(a) => a,
            Err(e) => {
                // SAFETY: the child has not been accepted; rejecting it is
                // the answer, and `res` destroys it after.
                unsafe { rdma_reject(child, ptr::null(), 0) };
                return Err(fail(&res, format!("refused a connection: {e}")));
            }
        };
        // SAFETY: plain constructor; `res` owns it from here on.
        res.ec = unsafe { rdma_create_event_channel() };
        if res.ec.is_null() {
            return Err(fail(
                &res,
                format!("event channel: {}", io::Error::last_os_error()),
            ));
        }
        // The connection gets its own channel, so its disconnect wakes its
        // own thread rather than the accept loop.
        // SAFETY: both live; the request event was acked in `next_event`.
        nonblocking(unsafe { (*res.ec).fd })
            .and_then(|()| errno(unsafe { rdma_migrate_id(child, res.ec) }))
            .and_then(|()| res.build(&self.opts))
            .and_then(|()| post_all_recvs(&res, &self.opts))
            .map_err(|e| fail(&res, format!("setting up the queue pair: {e}")))?;
        let ours = Announce {
            recv_bufs: self.opts.recv_bufs,
            buf_size: self.opts.buf_size,
        }
        .encode();
        let mut param = conn_param(&ours);
        // SAFETY: the child has a QP; `param` and `ours` outlive the call.
        errno(unsafe { rdma_accept(child, &mut param) })
            .map_err(|e| fail(&res, format!("accepting: {e}")))?;
        Ok(Some(RdmaStream::new(
            res,
            &self.opts,
            theirs.recv_bufs,
            theirs.buf_size,
            false,
            peer,
        )))
    }
}
