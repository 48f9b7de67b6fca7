//! One RDMA connection as a byte stream: the verbs resources it owns, the
//! registered buffer pools, credits, and the blocking waits.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::io;
use std::os::raw::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdma_sys::*;

use super::super::transport::{InUse, RdmaOptions, Stream};

/// `wr_id` of a credit-only message (no buffer behind it).
const CREDIT_WR: u64 = u64::MAX;
/// `wr_id`s of receives are offset so they never collide with sends.
const RECV_BASE: u64 = 1 << 32;
/// Completions taken per `ibv_poll_cq`.
const POLL_BATCH: usize = 16;

/// A registered, fixed pool of equal buffers.
pub(super) struct Pool {
    mem: Vec<u8>,
    mr: *mut ibv_mr,
    size: usize,
}

impl Pool {
    pub(super) fn new(pd: *mut ibv_pd, count: usize, size: usize) -> io::Result<Pool> {
        let mut mem = vec![0u8; count * size];
        // SAFETY: `mem` outlives the registration: `Drop` deregisters
        // before the vector is freed, and the vector is never resized.
        let mr = unsafe {
            ibv_reg_mr(
                pd,
                mem.as_mut_ptr().cast::<c_void>(),
                mem.len(),
                ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as i32,
            )
        };
        if mr.is_null() {
            let e = io::Error::last_os_error();
            let what = format!(
                "registering {} of buffers",
                bytesize::ByteSize::b(mem.len() as u64)
            );
            // Registered memory is locked memory: the usual cause.
            return Err(match e.raw_os_error() {
                Some(libc::ENOMEM | libc::EPERM | libc::EAGAIN) => io::Error::new(
                    e.kind(),
                    format!(
                        "{what}: {e}; raise the locked-memory limit (`ulimit -l`, or \
                         LimitMEMLOCK= in a systemd unit) or lower --rdma-buffers"
                    ),
                ),
                _ => io::Error::new(e.kind(), format!("{what}: {e}")),
            });
        }
        Ok(Pool { mem, mr, size })
    }

    fn sge(&self, idx: usize, len: usize) -> ibv_sge {
        ibv_sge {
            addr: self.mem[idx * self.size..].as_ptr() as u64,
            length: len as u32,
            // SAFETY: `mr` is a live registration owned by this pool.
            lkey: unsafe { (*self.mr).lkey },
        }
    }

    fn buf(&self, idx: usize) -> &[u8] {
        &self.mem[idx * self.size..(idx + 1) * self.size]
    }

    fn buf_mut(&mut self, idx: usize) -> &mut [u8] {
        &mut self.mem[idx * self.size..(idx + 1) * self.size]
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: registered in `new`, deregistered once, before `mem` goes.
        unsafe { ibv_dereg_mr(self.mr) };
    }
}

/// The verbs objects behind one connection, torn down in reverse order.
pub(super) struct Resources {
    pub(super) ec: *mut rdma_event_channel,
    pub(super) id: *mut rdma_cm_id,
    pub(super) pd: *mut ibv_pd,
    pub(super) cc: *mut ibv_comp_channel,
    pub(super) cq: *mut ibv_cq,
    pub(super) send: Option<Pool>,
    pub(super) recv: Option<Pool>,
    pub(super) qp: bool,
}

impl Resources {
    /// Empty resources around an id and its own event channel, so that
    /// every early return of the set-up frees what was made so far.
    pub(super) fn new(ec: *mut rdma_event_channel, id: *mut rdma_cm_id) -> Resources {
        Resources {
            ec,
            id,
            pd: ptr::null_mut(),
            cc: ptr::null_mut(),
            cq: ptr::null_mut(),
            send: None,
            recv: None,
            qp: false,
        }
    }

    /// Protection domain, completion channel and queue, buffers and the
    /// RC queue pair, on the device the id is bound to.
    pub(super) fn build(&mut self, opts: &RdmaOptions) -> io::Result<()> {
        // SAFETY: `id` is a live cm id whose address is resolved (client) or
        // which came from a connect request (server), so `verbs` is set.
        let ctx = unsafe { (*self.id).verbs };
        if ctx.is_null() {
            return Err(io::Error::other("the connection has no verbs device"));
        }
        let depth = opts.send_bufs as usize + recv_wqes(opts) + 4;
        // SAFETY: plain verbs constructors on a live context; each result
        // is checked and owned by `self`, which frees it in `Drop`.
        unsafe {
            self.pd = ibv_alloc_pd(ctx);
            if self.pd.is_null() {
                return Err(io::Error::last_os_error());
            }
            self.cc = ibv_create_comp_channel(ctx);
            if self.cc.is_null() {
                return Err(io::Error::last_os_error());
            }
            nonblocking((*self.cc).fd)?;
            self.cq = ibv_create_cq(ctx, depth as i32, ptr::null_mut(), self.cc, 0);
            if self.cq.is_null() {
                return Err(io::Error::last_os_error());
            }
        }
        self.send = Some(Pool::new(
            self.pd,
            opts.send_bufs.into(),
            opts.buf_size as usize,
        )?);
        self.recv = Some(Pool::new(self.pd, recv_wqes(opts), opts.buf_size as usize)?);
        // SAFETY: zeroed is a valid ibv_qp_init_attr (pointers null, counts 0).
        let mut attr: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = self.cq;
        attr.recv_cq = self.cq;
        attr.qp_type = ibv_qp_type::IBV_QPT_RC;
        // One more send than buffers: credit-only messages have none.
        attr.cap.max_send_wr = u32::from(opts.send_bufs) + 2;
        attr.cap.max_recv_wr = recv_wqes(opts) as u32;
        attr.cap.max_send_sge = 1;
        attr.cap.max_recv_sge = 1;
        // SAFETY: id, pd and cq are live; `attr` is fully initialised.
        if unsafe { rdma_create_qp(self.id, self.pd, &mut attr) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.qp = true;
        Ok(())
    }

    pub(super) fn device(&self) -> String {
        // SAFETY: `id` is live; `verbs` and its device are owned by
        // librdmacm for as long as the id is.
        unsafe {
            let ctx = (*self.id).verbs;
            if ctx.is_null() || (*ctx).device.is_null() {
                return String::new();
            }
            CStr::from_ptr(ibv_get_device_name((*ctx).device))
                .to_string_lossy()
                .into_owned()
        }
    }

    fn qp(&self) -> *mut ibv_qp {
        // SAFETY: `id` is live; `qp` was set by rdma_create_qp.
        unsafe { (*self.id).qp }
    }

    pub(super) fn post_recv(&self, idx: usize) -> io::Result<()> {
        let pool = self
            .recv
            .as_ref()
            .ok_or_else(|| io::Error::other("no receive pool"))?;
        let mut sge = pool.sge(idx, pool.size);
        let mut wr = ibv_recv_wr {
            wr_id: RECV_BASE + idx as u64,
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is live, `wr` and `sge` outlive the call, and the
        // buffer stays registered and untouched until its completion.
        let rc = unsafe { ibv_post_recv(self.qp(), &mut wr, &mut bad) };
        errno(rc)
    }

    fn post_send(&self, wr_id: u64, len: usize, imm: u32) -> io::Result<()> {
        let mut sge = match (&self.send, wr_id) {
            (_, CREDIT_WR) => None,
            (Some(p), idx) => Some(p.sge(idx as usize, len)),
            (None, _) => return Err(io::Error::other("no send pool")),
        };
        // SAFETY: zeroed is a valid ibv_send_wr (no next, no sge list).
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_IMM;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
        if let Some(sge) = sge.as_mut() {
            wr.sg_list = sge;
            wr.num_sge = 1;
        }
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is live; `wr` and `sge` outlive the call; the
        // send buffer is not written again until its completion.
        let rc = unsafe { ibv_post_send(self.qp(), &mut wr, &mut bad) };
        errno(rc)
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        // SAFETY: each object was created by this struct and is destroyed
        // once, QP before the CQ it uses, MRs (the pools) before their PD,
        // the id before its event channel. Every cm and CQ event was acked
        // when it was read, as destroy requires.
        unsafe {
            if self.qp {
                rdma_destroy_qp(self.id);
            }
            if !self.cq.is_null() {
                ibv_destroy_cq(self.cq);
            }
            if !self.cc.is_null() {
                ibv_destroy_comp_channel(self.cc);
            }
            self.send = None;
            self.recv = None;
            if !self.pd.is_null() {
                ibv_dealloc_pd(self.pd);
            }
            if !self.id.is_null() {
                rdma_destroy_id(self.id);
            }
            if !self.ec.is_null() {
                rdma_destroy_event_channel(self.ec);
            }
        }
    }
}

/// Receives kept posted: one per credit announced, plus one for the
/// peer's credit-only message, which spends no credit (see [`Inner`]).
pub(super) fn recv_wqes(opts: &RdmaOptions) -> usize {
    opts.recv_bufs as usize + 1
}

pub(super) fn errno(rc: i32) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        // Verbs post calls return the errno; rdma_cm calls return -1 and
        // set errno.
        -1 => Err(io::Error::last_os_error()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

pub(super) fn nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor owned by a live verbs/cm object.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receiving: a message's bytes are read straight out of its registered
/// buffer, which is posted again once read. A side that has to wait to
/// send (no credit, no free send buffer) first spills what it holds into
/// the staging queue (bounded) and reposts those buffers: unread replies
/// then never pin the credits the peer needs to let it read on, so two
/// sides that both write cannot deadlock on buffers.
///
/// Flow control: a data message spends one of the peer's credits (a
/// posted receive); the receiver owes it back once the buffer is posted
/// again, and pays in
/// the immediate data of its next message. When it owes `threshold` and
/// has nothing to send, it sends an empty credit-only message. Those
/// spend no credit (so two sides waiting for credits can always pay each
/// other) and earn none (so they never bounce back and forth): the peer
/// posts one receive beyond its credits for them and reposts it at once,
/// and at most one is in flight. Should a second land before the first's
/// receive is back, infinite RNR retry holds it until it is.
struct Inner {
    res: Resources,
    /// Bytes received and not yet read, spilled out of their buffers;
    /// older than anything in `held`.
    staged: VecDeque<u8>,
    /// Receive buffers with unread bytes, in arrival order: (buffer,
    /// length); `held_off` bytes of the first are read.
    held: VecDeque<(usize, usize)>,
    held_off: usize,
    stage_max: usize,
    /// Credits the peer is owed: buffers reposted since it was last told.
    owed: u32,
    /// Messages we may still send.
    credits: u32,
    free_send: Vec<usize>,
    /// The send buffer being filled, and its fill.
    cur: Option<(usize, usize)>,
    /// Largest message: our buffer or the peer's, whichever is smaller.
    msg_max: usize,
    /// Sends posted and not completed (credit-only ones included).
    in_flight: u32,
    /// A credit-only message is in flight.
    credit_msg_out: bool,
    sq_depth: u32,
    established: bool,
    /// The peer disconnected: reads end once staging is drained.
    eof: bool,
    failed: Option<(io::ErrorKind, String)>,
    threshold: u32,
    /// A thread sleeps in `poll(2)` on the channels, without the lock
    /// ([`RdmaStream::block`]).
    polling: bool,
}

type Guard<'a> = MutexGuard<'a, Inner>;

/// A connected RDMA stream (see the module docs of `rdma`).
pub struct RdmaStream {
    inner: Mutex<Inner>,
    /// Signalled by the polling thread once it has taken what woke it.
    woken: Condvar,
    id: *mut rdma_cm_id,
    cut: AtomicBool,
    timeout_ms: AtomicU64,
    peer: String,
    device: String,
}

// SAFETY: the raw pointers are to verbs objects that librdmacm and
// libibverbs allow to be used from any thread. All use of them goes
// through the mutex but `rdma_disconnect` (documented thread-safe) and
// the polling thread's `poll(2)` on the two channels' descriptors.
unsafe impl Send for RdmaStream {}
// SAFETY: as above.
unsafe impl Sync for RdmaStream {}

impl RdmaStream {
    /// Wrap built resources whose receives are posted. `peer_credits` and
    /// `peer_buf` come from the peer's private data; `established` is
    /// false on the server until rdma_cm reports it.
    pub(super) fn new(
        res: Resources,
        opts: &RdmaOptions,
        peer_credits: u16,
        peer_buf: u32,
        established: bool,
        peer: String,
    ) -> RdmaStream {
        let id = res.id;
        let device = res.device();
        let recv_bufs = u32::from(opts.recv_bufs);
        RdmaStream {
            inner: Mutex::new(Inner {
                res,
                staged: VecDeque::new(),
                held: VecDeque::new(),
                held_off: 0,
                stage_max: (opts.recv_bufs as usize * opts.buf_size as usize).max(4 << 20),
                owed: 0,
                credits: peer_credits.into(),
                free_send: (0..opts.send_bufs as usize).rev().collect(),
                cur: None,
                msg_max: (opts.buf_size.min(peer_buf)) as usize,
                in_flight: 0,
                credit_msg_out: false,
                sq_depth: u32::from(opts.send_bufs) + 2,
                established,
                eof: false,
                failed: None,
                threshold: (recv_bufs / 2).max(1),
                polling: false,
            }),
            woken: Condvar::new(),
            id,
            cut: AtomicBool::new(false),
            timeout_ms: AtomicU64::new(300_000),
            peer,
            device,
        }
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Fault injection for the tests: move the queue pair to the error
    /// state, as a failing port or device does. Every posted request then
    /// completes in error and the stream reports it.
    #[doc(hidden)]
    pub fn inject_qp_error(&self) -> io::Result<()> {
        let g = self.lock();
        // SAFETY: zeroed is a valid ibv_qp_attr; only the state is read.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_ERR;
        // SAFETY: the QP is live while the stream is.
        let rc = unsafe {
            ibv_modify_qp(
                g.res.qp(),
                &mut attr,
                ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
            )
        };
        errno(rc)
    }

    fn lock(&self) -> Guard<'_> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    fn err(&self, kind: io::ErrorKind, what: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            kind,
            format!("RDMA over {} to {}: {what}", self.device, self.peer),
        )
    }

    /// Take every completion and cm event ready now; true if anything
    /// changed.
    fn progress(&self, g: &mut Inner) -> io::Result<bool> {
        let mut any = self.poll_cq(g)?;
        any |= self.cm_events(g)?;
        self.send_credits(g)?;
        Ok(any)
    }

    fn poll_cq(&self, g: &mut Inner) -> io::Result<bool> {
        let mut any = false;
        loop {
            // SAFETY: zeroed ibv_wc is valid plain data for the provider to fill.
            let mut wcs: [ibv_wc; POLL_BATCH] = unsafe { std::mem::zeroed() };
            // SAFETY: the CQ is live and `wcs` has room for POLL_BATCH entries.
            let n = unsafe { ibv_poll_cq(g.res.cq, POLL_BATCH as i32, wcs.as_mut_ptr()) };
            if n < 0 {
                return Err(self.err(io::ErrorKind::Other, "polling the completion queue failed"));
            }
            for wc in &wcs[..n as usize] {
                any = true;
                self.complete(g, wc)?;
            }
            if (n as usize) < POLL_BATCH {
                return Ok(any);
            }
        }
    }

    fn complete(&self, g: &mut Inner, wc: &ibv_wc) -> io::Result<()> {
        if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
            if wc.status == ibv_wc_status::IBV_WC_WR_FLUSH_ERR && (g.eof || self.is_cut()) {
                // The QP was torn down under posted work: expected after a
                // disconnect, not a fault of its own.
                return Ok(());
            }
            // SAFETY: ibv_wc_status_str returns a static string for any value.
            let what = unsafe { CStr::from_ptr(ibv_wc_status_str(wc.status)) }.to_string_lossy();
            let e = format!(
                "work completion failed: {what} (status {}, vendor error {:#x})",
                wc.status, wc.vendor_err
            );
            g.failed = Some((io::ErrorKind::ConnectionReset, e.clone()));
            return Err(self.err(io::ErrorKind::ConnectionReset, e));
        }
        if wc.opcode & ibv_wc_opcode::IBV_WC_RECV != 0 {
            let idx = wc.wr_id.checked_sub(RECV_BASE).map(|i| i as usize);
            let Some(idx) = idx.filter(|_| wc.wr_id != CREDIT_WR) else {
                return Err(self.err(io::ErrorKind::InvalidData, "a receive with an unknown id"));
            };
            if wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0 {
                // SAFETY: WITH_IMM says the union holds immediate data.
                let imm = u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data });
                g.credits = g.credits.saturating_add(imm);
            }
            let len = wc.byte_len as usize;
            if len == 0 {
                g.res.post_recv(idx)?;
            } else {
                g.held.push_back((idx, len));
            }
        } else {
            g.in_flight = g.in_flight.saturating_sub(1);
            if wc.wr_id == CREDIT_WR {
                g.credit_msg_out = false;
            } else {
                g.free_send.push(wc.wr_id as usize);
            }
        }
        Ok(())
    }

    /// Copy held buffers into the staging queue, while it has room, and
    /// post them again.
    fn spill(&self, g: &mut Inner) -> io::Result<()> {
        while let Some(&(idx, len)) = g.held.front() {
            let from = g.held_off;
            if g.staged.len() + (len - from) > g.stage_max {
                break;
            }
            let pool = g
                .res
                .recv
                .as_ref()
                .ok_or_else(|| io::Error::other("no receive pool"))?;
            let bytes = &pool.buf(idx)[from..len.min(pool.size)];
            g.staged.extend(bytes);
            self.release_front(g)?;
        }
        Ok(())
    }

    /// The first held buffer is read or spilled: post it again.
    fn release_front(&self, g: &mut Inner) -> io::Result<()> {
        if let Some((idx, _)) = g.held.pop_front() {
            g.held_off = 0;
            g.res.post_recv(idx)?;
            g.owed += 1;
        }
        Ok(())
    }

    /// Read from the first held buffer, in place.
    fn read_held(&self, g: &mut Inner, buf: &mut [u8]) -> io::Result<usize> {
        let Some(&(idx, len)) = g.held.front() else {
            return Ok(0);
        };
        let pool = g
            .res
            .recv
            .as_ref()
            .ok_or_else(|| io::Error::other("no receive pool"))?;
        let len = len.min(pool.size);
        let n = buf.len().min(len - g.held_off);
        buf[..n].copy_from_slice(&pool.buf(idx)[g.held_off..g.held_off + n]);
        g.held_off += n;
        if g.held_off == len {
            self.release_front(g)?;
        }
        Ok(n)
    }

    fn cm_events(&self, g: &mut Inner) -> io::Result<bool> {
        let mut any = false;
        loop {
            let mut ev = ptr::null_mut();
            // SAFETY: the channel is live and non-blocking; the event is
            // acked below before anything else touches the id.
            if unsafe { rdma_get_cm_event(g.res.ec, &mut ev) } != 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Ok(any);
                }
                return Err(self.err(e.kind(), format!("reading connection events: {e}")));
            }
            any = true;
            // SAFETY: `ev` is a valid event until acked.
            let kind = unsafe { (*ev).event };
            // SAFETY: acked once.
            unsafe { rdma_ack_cm_event(ev) };
            match kind {
                rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED => g.established = true,
                rdma_cm_event_type::RDMA_CM_EVENT_DISCONNECTED
                | rdma_cm_event_type::RDMA_CM_EVENT_TIMEWAIT_EXIT => g.eof = true,
                rdma_cm_event_type::RDMA_CM_EVENT_DEVICE_REMOVAL => {
                    g.eof = true;
                    g.failed = Some((
                        io::ErrorKind::ConnectionAborted,
                        "the RDMA device was removed".into(),
                    ));
                }
                rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_ERROR
                | rdma_cm_event_type::RDMA_CM_EVENT_UNREACHABLE
                | rdma_cm_event_type::RDMA_CM_EVENT_REJECTED => {
                    g.eof = true;
                    g.failed = Some((
                        io::ErrorKind::ConnectionRefused,
                        format!("connection failed: {}", super::cm::event_name(kind)),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Give credits back when enough are owed, in an empty message if
    /// there is no data to carry them.
    fn send_credits(&self, g: &mut Inner) -> io::Result<()> {
        if g.owed >= g.threshold
            && !g.credit_msg_out
            && g.in_flight < g.sq_depth
            && g.established
            && !g.eof
            && !self.is_cut()
        {
            g.res.post_send(CREDIT_WR, 0, g.owed)?;
            g.owed = 0;
            g.in_flight += 1;
            g.credit_msg_out = true;
        }
        Ok(())
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    fn check(&self, g: &Inner) -> io::Result<()> {
        if self.is_cut() {
            return Err(self.err(
                io::ErrorKind::ConnectionAborted,
                "the connection was shut down",
            ));
        }
        if let Some((kind, e)) = &g.failed {
            return Err(self.err(*kind, e));
        }
        Ok(())
    }

    /// Sleep until a completion or cm event arrives, or the deadline.
    ///
    /// One thread at a time sleeps in `poll(2)`, without the lock, so a
    /// reader waiting for data never holds up a writer. The others wait
    /// for it on `woken`: every completion and cm event comes through the
    /// two channels it sleeps on, and it wakes them once it has taken
    /// what arrived. Two threads in `poll` at once would not do: the one
    /// that reads the channel's event leaves the other asleep, possibly
    /// on a completion it was waiting for.
    fn block<'a>(&'a self, mut g: Guard<'a>, deadline: Instant) -> io::Result<Guard<'a>> {
        if g.polling {
            let wait = self.wait_until(deadline)?;
            let (g, _) = self
                .woken
                .wait_timeout(g, wait)
                .unwrap_or_else(|p| p.into_inner());
            return Ok(g);
        }
        // SAFETY: the CQ is live; arming it makes the next completion
        // signal the channel.
        if unsafe { ibv_req_notify_cq(g.res.cq, 0) } != 0 {
            return Err(self.err(io::ErrorKind::Other, "arming the completion queue failed"));
        }
        // A completion that landed before the arm would not signal.
        if self.progress(&mut g)? {
            return Ok(g);
        }
        let wait = self.wait_until(deadline)?;
        // SAFETY: both objects are live for as long as the stream, which
        // outlives this call; the descriptors are only polled.
        let mut fds = unsafe {
            [
                libc::pollfd {
                    fd: (*g.res.cc).fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: (*g.res.ec).fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ]
        };
        g.polling = true;
        drop(g);
        // SAFETY: `fds` is a valid array of two pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait.as_millis() as i32) };
        let polled = (n < 0).then(io::Error::last_os_error);
        let mut g = self.lock();
        g.polling = false;
        let progressed = self.after_poll(&mut g, &fds, polled);
        self.woken.notify_all();
        progressed.map(|()| g)
    }

    /// How long one wait may sleep: up to the deadline, at most a second
    /// (so a cut stream is noticed), or the timeout error once it passed.
    fn wait_until(&self, deadline: Instant) -> io::Result<Duration> {
        let now = Instant::now();
        if now >= deadline {
            return Err(self.err(io::ErrorKind::TimedOut, "timed out waiting for the peer"));
        }
        Ok((deadline - now).min(Duration::from_secs(1)))
    }

    /// Take what woke the poller: the channel's event, then every
    /// completion and cm event ready.
    fn after_poll(
        &self,
        g: &mut Inner,
        fds: &[libc::pollfd; 2],
        polled: Option<io::Error>,
    ) -> io::Result<()> {
        if let Some(e) = polled {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(self.err(e.kind(), format!("poll: {e}")));
            }
        }
        if fds[0].revents != 0 {
            let mut cq = ptr::null_mut();
            let mut ctx = ptr::null_mut();
            // SAFETY: non-blocking read of one event from our channel; it
            // is acked at once, as destroying the CQ requires.
            if unsafe { ibv_get_cq_event(g.res.cc, &mut cq, &mut ctx) } == 0 {
                // SAFETY: `cq` is the CQ the event was for.
                unsafe { ibv_ack_cq_events(cq, 1) };
            }
        }
        self.progress(g)?;
        Ok(())
    }

    /// Post the send buffer being filled, waiting for a credit.
    fn post_cur<'a>(&'a self, mut g: Guard<'a>, deadline: Instant) -> io::Result<Guard<'a>> {
        while g.cur.is_some() && !(g.established && g.credits >= 1 && g.in_flight < g.sq_depth) {
            self.check(&g)?;
            if g.eof {
                return Err(self.err(io::ErrorKind::BrokenPipe, "the peer closed the connection"));
            }
            // `block` pays what the spill freed before it sleeps.
            self.spill(&mut g)?;
            g = self.block(g, deadline)?;
        }
        let Some((idx, len)) = g.cur else {
            return Ok(g);
        };
        let owed = g.owed;
        g.res
            .post_send(idx as u64, len, owed)
            .map_err(|e| self.err(e.kind(), e))?;
        g.owed = 0;
        g.credits -= 1;
        g.in_flight += 1;
        g.cur = None;
        Ok(g)
    }
}

impl Stream for RdmaStream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.deadline();
        let mut g = self.lock();
        loop {
            if !g.staged.is_empty() {
                return io::Read::read(&mut g.staged, buf);
            }
            if !g.held.is_empty() {
                let n = self.read_held(&mut g, buf)?;
                self.send_credits(&mut g)?;
                return Ok(n);
            }
            self.check(&g)?;
            if g.eof {
                return Ok(0);
            }
            if !self.progress(&mut g)? {
                g = self.block(g, deadline)?;
            }
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.deadline();
        let mut g = self.lock();
        self.check(&g)?;
        if g.eof {
            return Err(self.err(io::ErrorKind::BrokenPipe, "the peer closed the connection"));
        }
        if g.cur.is_none() {
            while g.free_send.is_empty() {
                self.check(&g)?;
                if !self.progress(&mut g)? {
                    self.spill(&mut g)?;
                    g = self.block(g, deadline)?;
                }
            }
            let idx = g.free_send.pop().unwrap_or_default();
            g.cur = Some((idx, 0));
        }
        let Some((idx, fill)) = g.cur else {
            return Ok(0);
        };
        let n = buf.len().min(g.msg_max - fill);
        let pool = g
            .res
            .send
            .as_mut()
            .ok_or_else(|| io::Error::other("no send pool"))?;
        pool.buf_mut(idx)[fill..fill + n].copy_from_slice(&buf[..n]);
        g.cur = Some((idx, fill + n));
        if fill + n == g.msg_max {
            drop(self.post_cur(g, deadline)?);
        }
        Ok(n)
    }

    fn flush(&self) -> io::Result<()> {
        let deadline = self.deadline();
        let g = self.lock();
        self.check(&g)?;
        self.post_cur(g, deadline).map(drop)
    }

    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.timeout_ms
            .store(t.as_millis().max(1) as u64, Ordering::Relaxed);
        Ok(())
    }

    fn shutdown(&self) {
        if !self.cut.swap(true, Ordering::SeqCst) {
            // SAFETY: rdma_disconnect is thread-safe; the id lives until
            // the stream is dropped, which cannot race with `&self`.
            unsafe { rdma_disconnect(self.id) };
        }
    }

    fn in_use(&self) -> InUse {
        InUse {
            kind: "rdma".into(),
            detail: self.device.clone(),
        }
    }
}

impl Drop for RdmaStream {
    fn drop(&mut self) {
        // Let queued bytes go before telling the peer we are done; the
        // verbs objects are freed by `Resources::drop` after this.
        let this = &*self;
        let deadline = Instant::now() + Duration::from_secs(2);
        let g = this.lock();
        let sending = g.failed.is_none() && !g.eof && !this.is_cut();
        let mut waiting = sending
            .then_some(g)
            .and_then(|g| this.post_cur(g, deadline).ok());
        while let Some(g) = waiting.take() {
            if g.in_flight == 0 || g.failed.is_some() || g.eof {
                break;
            }
            waiting = this.block(g, deadline).ok();
        }
        // SAFETY: the id is live until `Resources` drops after this.
        unsafe { rdma_disconnect(self.id) };
    }
}
