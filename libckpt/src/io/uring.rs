//! The io_uring path: registered buffers, `queue_depth` requests in flight.
//!
//! Writes: while earlier buffers are on their way to disk, the next one is
//! filled from the source and checksummed, so the CPU work of producing and
//! hashing the bytes overlaps the device. Reads: up to `queue_depth` reads
//! are in flight; completions may arrive in any order but are handed to the
//! hasher and the sink strictly in file order.
//!
//! Each ring owns its buffers, registered once when the ring is made (the
//! registration pins the pages, which is the expensive part). Rings live in
//! a small pool: an operation checks one out for its whole duration, so
//! concurrent callers each get their own ring instead of queueing on a lock.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::buffer::AlignedBuf;
use super::{fill, pool_limit, shrank, IoError, Target};
use crate::chunk::ChunkHasher;

/// `user_data` of the probe's no-op; buffer indices are below 256.
const PROBE_TAG: u64 = u64::MAX;

/// One ring with its registered buffers.
pub(super) struct Ring {
    // Declared before `bufs` so it is dropped (and the registration
    // released) before the memory it points at is freed.
    uring: IoUring,
    bufs: Vec<AlignedBuf>,
    /// Requests submitted and not yet reaped. A ring goes back to the pool
    /// only at zero, so no stale completion or kernel write into a buffer
    /// can leak into the next operation.
    in_flight: usize,
    /// Most requests ever in flight at once, to show the depth is used.
    peak_in_flight: usize,
}

impl Ring {
    fn new(depth: u32, buffer_size: usize) -> Result<Ring, String> {
        let uring = IoUring::new(depth)
            .map_err(|e| format!("io_uring_setup({depth}) failed: {e}{}", setup_hint(&e)))?;
        check_opcodes(&uring)?;
        let mut bufs = Vec::with_capacity(depth as usize);
        for _ in 0..depth {
            bufs.push(AlignedBuf::new(buffer_size).map_err(|e| e.to_string())?);
        }
        let iovecs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| {
                let s = b.as_mut_slice();
                libc::iovec {
                    iov_base: s.as_mut_ptr().cast(),
                    iov_len: s.len(),
                }
            })
            .collect();
        // SAFETY: the iovecs describe `bufs`, which move into the returned
        // `Ring` (a `Vec` move does not move its heap buffers) and are freed
        // only after `uring`, i.e. after the registration is gone.
        unsafe { uring.submitter().register_buffers(&iovecs) }.map_err(|e| {
            format!(
                "registering {depth} buffers of {buffer_size} bytes failed: {e}{}",
                register_hint(&e)
            )
        })?;
        Ok(Ring {
            uring,
            bufs,
            in_flight: 0,
            peak_in_flight: 0,
        })
    }

    /// A full submit/complete round trip, to catch kernels or sandboxes
    /// that accept io_uring_setup but do not run requests.
    fn round_trip(&mut self) -> io::Result<()> {
        self.push(opcode::Nop::new().build().user_data(PROBE_TAG))?;
        self.drain()
    }

    /// Queue `entry` and submit it at once, so the device starts on it
    /// while the caller prepares the next buffer.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry built in this module either carries no buffer
        // (the probe's no-op) or points into `self.bufs`, which are
        // registered and live as long as the ring; its descriptor is kept
        // open by the operation until the completion is reaped, because
        // operations drain the ring before returning.
        let pushed = unsafe { self.uring.submission().push(&entry) };
        if pushed.is_err() {
            // Cannot happen while at most `depth` requests are in flight
            // (the queue has at least `depth` slots); refuse, don't spin.
            return Err(io::Error::other("io_uring submission queue is full"));
        }
        self.in_flight += 1;
        self.peak_in_flight = self.peak_in_flight.max(self.in_flight);
        self.submit()
    }

    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.uring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The queue entries stay queued; the next wait submits them.
                Err(e) if is_busy(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Wait for at least one completion and collect all that are ready as
    /// (user_data, result) into `out`.
    fn wait(&mut self, out: &mut Vec<(u64, i32)>) -> io::Result<()> {
        out.clear();
        loop {
            match self.uring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_busy(&e) => break,
                Err(e) => return Err(e),
            }
        }
        out.extend(
            self.uring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        self.in_flight = self.in_flight.saturating_sub(out.len());
        Ok(())
    }

    /// Reap every outstanding request, ignoring their results: used after
    /// a failure, when the operation is being abandoned.
    fn drain(&mut self) -> io::Result<()> {
        let mut done = Vec::new();
        while self.in_flight > 0 {
            self.wait(&mut done)?;
        }
        Ok(())
    }
}

fn is_busy(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN))
}

fn check_opcodes(uring: &IoUring) -> Result<(), String> {
    let mut probe = Probe::new();
    // Kernels before 5.6 cannot be probed; the no-op round trip and the
    // first real request will tell instead.
    if uring.submitter().register_probe(&mut probe).is_err() {
        return Ok(());
    }
    for (name, code) in [
        ("READ_FIXED", opcode::ReadFixed::CODE),
        ("WRITE_FIXED", opcode::WriteFixed::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel does not support IORING_OP_{name}"));
        }
    }
    Ok(())
}

fn setup_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => " (kernel.io_uring_disabled sysctl, or a seccomp filter)",
        Some(libc::ENOSYS) => " (kernel without io_uring, or the syscall is filtered)",
        Some(libc::ENOMEM) => " (locked-memory limit, see `ulimit -l`)",
        _ => "",
    }
}

fn register_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOMEM) => {
            " (locked-memory limit too low for queue_depth * buffer_size, see `ulimit -l`)"
        }
        _ => "",
    }
}

/// The engine's rings, created on demand up to a limit.
pub(super) struct RingPool {
    depth: u32,
    buffer_size: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Ring>,
    /// Rings in existence, idle or checked out.
    live: usize,
    /// Lowered to `live` when making another ring fails (usually the
    /// locked-memory limit), so later callers wait instead of retrying.
    max: usize,
}

impl RingPool {
    /// Make the first ring, proving io_uring works here; the error is the
    /// human-readable reason it does not.
    pub(super) fn probe(depth: u32, buffer_size: usize) -> Result<RingPool, String> {
        let mut ring = Ring::new(depth, buffer_size)?;
        ring.round_trip()
            .map_err(|e| format!("io_uring no-op round trip failed: {e}"))?;
        Ok(RingPool {
            depth,
            buffer_size,
            state: Mutex::new(PoolState {
                idle: vec![ring],
                live: 1,
                max: pool_limit(),
            }),
            returned: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // The state is a plain list and two counters, consistent at every
        // unlock; a panic elsewhere while holding it leaves nothing torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ring for one operation, waiting if all are busy. `None` only if no
    /// ring can exist at all any more; the caller then uses pread/pwrite.
    pub(super) fn checkout(&self) -> Option<RingGuard<'_>> {
        let mut st = self.lock();
        loop {
            if let Some(ring) = st.idle.pop() {
                return Some(self.guard(ring));
            }
            if st.live < st.max {
                st.live += 1;
                drop(st);
                match Ring::new(self.depth, self.buffer_size) {
                    Ok(ring) => return Some(self.guard(ring)),
                    Err(reason) => {
                        st = self.lock();
                        st.live -= 1;
                        st.max = st.live;
                        tracing::warn!(%reason, rings = st.live, "cannot add an io_uring ring");
                    }
                }
                continue;
            }
            if st.live == 0 {
                return None;
            }
            st = self
                .returned
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn guard(&self, ring: Ring) -> RingGuard<'_> {
        RingGuard {
            pool: self,
            ring: Some(ring),
        }
    }

    fn give_back(&self, mut ring: Ring) {
        if ring.in_flight > 0 && ring.drain().is_err() {
            // The kernel may still write into these buffers: never free or
            // reuse them. Leaking one ring is the price of staying sound.
            tracing::error!(
                in_flight = ring.in_flight,
                "cannot reap io_uring requests; abandoning the ring"
            );
            std::mem::forget(ring);
            self.lock().live -= 1;
        } else {
            self.lock().idle.push(ring);
        }
        self.returned.notify_one();
    }
}

/// A checked-out ring, returned to the pool on drop (also when the
/// caller's sink panics).
pub(super) struct RingGuard<'p> {
    pool: &'p RingPool,
    ring: Option<Ring>,
}

impl RingGuard<'_> {
    pub(super) fn get(&mut self) -> &mut Ring {
        self.ring
            .as_mut()
            .expect("a ring guard holds its ring until dropped")
    }
}

impl Drop for RingGuard<'_> {
    fn drop(&mut self) {
        if let Some(ring) = self.ring.take() {
            self.pool.give_back(ring);
        }
    }
}

/// One buffer's share of the file: `len` bytes at `off`, `done` of them
/// transferred so far.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    off: u64,
    len: usize,
    done: usize,
    busy: bool,
    /// Whether the request in flight was issued with O_DIRECT on.
    direct: bool,
    /// A write that must go buffered, held back until no direct write is
    /// in flight (see [`submit_write`]).
    held: bool,
}

impl Slot {
    fn new(off: u64, len: usize) -> Slot {
        Slot {
            off,
            len,
            ..Slot::default()
        }
    }

    fn pos(&self) -> u64 {
        self.off + self.done as u64
    }

    fn remaining(&self) -> usize {
        self.len - self.done
    }
}

/// Per-operation bookkeeping shared by the read and write loops.
struct Slots {
    slot: Vec<Slot>,
    idle: Vec<usize>,
    completions: Vec<(u64, i32)>,
}

impl Slots {
    fn new(depth: usize) -> Slots {
        Slots {
            slot: vec![Slot::default(); depth],
            // Reversed so that buffer 0 is used first: nicer to debug.
            idle: (0..depth).rev().collect(),
            completions: Vec::with_capacity(depth),
        }
    }

    /// The slot a completion's `user_data` names; anything else is a
    /// completion this operation never asked for.
    fn index(&self, user_data: u64) -> io::Result<usize> {
        usize::try_from(user_data)
            .ok()
            .filter(|&i| i < self.slot.len())
            .ok_or_else(|| io::Error::other(format!("unexpected io_uring completion {user_data}")))
    }

    /// The lowest file offset still in flight, to name in an error that is
    /// not about any one request.
    fn first_busy_pos(&self, default: u64) -> u64 {
        self.slot
            .iter()
            .filter(|s| s.busy)
            .map(Slot::pos)
            .min()
            .unwrap_or(default)
    }
}

/// Write everything `src` yields to `target` through `ring`.
pub(super) fn write_all(
    ring: &mut Ring,
    target: &mut Target,
    src: &mut dyn Read,
    hasher: &mut ChunkHasher,
) -> Result<(), IoError> {
    let result = write_loop(ring, target, src, hasher);
    if result.is_err() {
        // Let the writes already issued finish before the file is closed
        // and the buffers reused; if even that fails the pool abandons the
        // ring.
        let _ = ring.drain();
    }
    result
}

fn write_loop(
    ring: &mut Ring,
    target: &mut Target,
    src: &mut dyn Read,
    hasher: &mut ChunkHasher,
) -> Result<(), IoError> {
    let mut slots = Slots::new(ring.bufs.len());
    let mut next_off = 0u64;
    let mut at_end = false;
    loop {
        while !at_end {
            let Some(idx) = slots.idle.pop() else { break };
            let buf = ring.bufs[idx].as_mut_slice();
            let n = fill(src, buf).map_err(|e| target.source_err(e))?;
            at_end = n < buf.len();
            if n == 0 {
                slots.idle.push(idx);
                break;
            }
            hasher.update(&ring.bufs[idx].as_slice()[..n]);
            slots.slot[idx] = Slot::new(next_off, n);
            next_off += n as u64;
            submit_write(ring, target, &mut slots.slot[idx], idx)?;
        }
        if ring.in_flight == 0 {
            if let Some(idx) = slots.slot.iter().position(|s| s.held) {
                slots.slot[idx].held = false;
                submit_write(ring, target, &mut slots.slot[idx], idx)?;
                continue;
            }
            // Nothing left to wait for, and the filling above stops only at
            // the end of the source or when every buffer is busy.
            return Ok(());
        }
        ring.wait(&mut slots.completions)
            .map_err(|e| target.write_err(slots.first_busy_pos(next_off), e))?;
        for i in 0..slots.completions.len() {
            let (user_data, res) = slots.completions[i];
            write_done(ring, target, &mut slots, user_data, res)?;
        }
    }
}

fn submit_write(
    ring: &mut Ring,
    target: &mut Target,
    slot: &mut Slot,
    idx: usize,
) -> Result<(), IoError> {
    let pos = slot.pos();
    // Clearing O_DIRECT for an unaligned tail while direct writes are in
    // flight turns them buffered too: io_uring re-reads the file's flags
    // when it hands a write that would block (an extending write on ext4)
    // to a worker: every page of a 3 × 64 KiB + 123 byte file was found
    // dirty in the page cache after such a write (cachestat). So the tail
    // waits for the ring to empty.
    if ring.in_flight > 0 && !target.direct_fits(pos, slot.remaining()) {
        slot.held = true;
        return Ok(());
    }
    let len = target
        .write_len(pos, slot.remaining())
        .map_err(|e| target.write_err(pos, e))?;
    let bytes = &ring.bufs[idx].as_slice()[slot.done..slot.done + len];
    let entry = opcode::WriteFixed::new(
        types::Fd(target.fd()),
        bytes.as_ptr(),
        len as u32,
        idx as u16,
    )
    .offset(pos)
    .build()
    .user_data(idx as u64);
    slot.busy = true;
    slot.direct = target.is_direct();
    ring.push(entry).map_err(|e| target.write_err(pos, e))
}

fn write_done(
    ring: &mut Ring,
    target: &mut Target,
    slots: &mut Slots,
    user_data: u64,
    res: i32,
) -> Result<(), IoError> {
    let idx = slots
        .index(user_data)
        .map_err(|e| target.write_err(slots.first_busy_pos(0), e))?;
    let slot = &mut slots.slot[idx];
    slot.busy = false;
    let pos = slot.pos();
    match usize::try_from(res) {
        Ok(0) => Err(target.write_err(pos, io::ErrorKind::WriteZero.into())),
        Ok(n) => {
            let n = n.min(slot.remaining());
            target.count(slot.direct, n);
            slot.done += n;
            if slot.done < slot.len {
                submit_write(ring, target, slot, idx)
            } else {
                slots.idle.push(idx);
                Ok(())
            }
        }
        Err(_) => {
            let err = io::Error::from_raw_os_error(-res);
            let retry = target
                .should_retry(&err, slot.direct)
                .map_err(|e| target.write_err(pos, e))?;
            if retry {
                submit_write(ring, target, slot, idx)
            } else {
                Err(target.write_err(pos, err))
            }
        }
    }
}

/// Read the first `size` bytes of `target` through `ring`, feeding them in
/// order to `hasher` and `sink`.
pub(super) fn read_all(
    ring: &mut Ring,
    target: &mut Target,
    size: u64,
    hasher: &mut ChunkHasher,
    sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<(), IoError> {
    let result = read_loop(ring, target, size, hasher, sink);
    if result.is_err() {
        let _ = ring.drain();
    }
    result
}

fn read_loop(
    ring: &mut Ring,
    target: &mut Target,
    size: u64,
    hasher: &mut ChunkHasher,
    sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<(), IoError> {
    let mut slots = Slots::new(ring.bufs.len());
    // Slots in file order, oldest first: completions are delivered from
    // the front only, whatever order the kernel finishes them in.
    let mut order = VecDeque::with_capacity(ring.bufs.len());
    let mut next_off = 0u64;
    loop {
        while next_off < size {
            let Some(idx) = slots.idle.pop() else { break };
            let len = (size - next_off).min(ring.bufs[idx].capacity() as u64) as usize;
            slots.slot[idx] = Slot::new(next_off, len);
            next_off += len as u64;
            order.push_back(idx);
            submit_read(ring, target, &mut slots.slot[idx], idx)?;
        }
        let delivered = deliver_ready(ring, target, &mut slots, &mut order, hasher, sink)?;
        if order.is_empty() && next_off >= size {
            return Ok(());
        }
        if delivered {
            // Refill the freed buffers before sleeping.
            continue;
        }
        ring.wait(&mut slots.completions)
            .map_err(|e| target.read_err(slots.first_busy_pos(next_off), e))?;
        for i in 0..slots.completions.len() {
            let (user_data, res) = slots.completions[i];
            read_done(ring, target, &mut slots, user_data, res)?;
        }
    }
}

/// Hand the finished buffers at the front of `order` to the hasher and the
/// sink; true if any was.
fn deliver_ready(
    ring: &Ring,
    target: &Target,
    slots: &mut Slots,
    order: &mut VecDeque<usize>,
    hasher: &mut ChunkHasher,
    sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<bool, IoError> {
    let mut delivered = false;
    while let Some(&idx) = order.front() {
        let slot = slots.slot[idx];
        if slot.busy {
            break;
        }
        let bytes = &ring.bufs[idx].as_slice()[..slot.len];
        hasher.update(bytes);
        sink(slot.off, bytes).map_err(|e| target.sink_err(slot.off, e))?;
        order.pop_front();
        slots.idle.push(idx);
        delivered = true;
    }
    Ok(delivered)
}

fn submit_read(
    ring: &mut Ring,
    target: &mut Target,
    slot: &mut Slot,
    idx: usize,
) -> Result<(), IoError> {
    let pos = slot.pos();
    let room = ring.bufs[idx].capacity() - slot.done;
    let len = target
        .read_len(pos, slot.remaining(), room)
        .map_err(|e| target.read_err(pos, e))?;
    let space = &mut ring.bufs[idx].as_mut_slice()[slot.done..slot.done + len];
    let entry = opcode::ReadFixed::new(
        types::Fd(target.fd()),
        space.as_mut_ptr(),
        len as u32,
        idx as u16,
    )
    .offset(pos)
    .build()
    .user_data(idx as u64);
    slot.busy = true;
    slot.direct = target.is_direct();
    ring.push(entry).map_err(|e| target.read_err(pos, e))
}

fn read_done(
    ring: &mut Ring,
    target: &mut Target,
    slots: &mut Slots,
    user_data: u64,
    res: i32,
) -> Result<(), IoError> {
    let idx = slots
        .index(user_data)
        .map_err(|e| target.read_err(slots.first_busy_pos(0), e))?;
    let slot = &mut slots.slot[idx];
    slot.busy = false;
    let pos = slot.pos();
    match usize::try_from(res) {
        Ok(0) => Err(target.read_err(pos, shrank())),
        Ok(n) => {
            // A direct read may return more than wanted (rounded up, file
            // grown since open): only the wanted part counts.
            let n = n.min(slot.remaining());
            target.count(slot.direct, n);
            slot.done += n;
            if slot.done < slot.len {
                submit_read(ring, target, slot, idx)?;
            }
            Ok(())
        }
        Err(_) => {
            let err = io::Error::from_raw_os_error(-res);
            let retry = target
                .should_retry(&err, slot.direct)
                .map_err(|e| target.read_err(pos, e))?;
            if retry {
                submit_read(ring, target, slot, idx)
            } else {
                Err(target.read_err(pos, err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::FileDigest;

    fn pool(depth: u32, buffer_size: usize) -> Option<RingPool> {
        match RingPool::probe(depth, buffer_size) {
            Ok(pool) => Some(pool),
            Err(reason) => {
                println!("skipping: io_uring refused: {reason}");
                None
            }
        }
    }

    #[test]
    fn the_queue_depth_is_actually_used() {
        let Some(pool) = pool(4, 16 << 10) else {
            return;
        };
        let dir = tempfile::Builder::new()
            .prefix("ckpt-uring-")
            .tempdir_in("/var/tmp")
            .expect("scratch dir");
        let path = dir.path().join("deep");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut guard = pool.checkout().expect("ring");
        let ring = guard.get();

        let mut target = Target::create(&path, 0o600, true).expect("create");
        let mut hasher = ChunkHasher::new(4096);
        write_all(ring, &mut target, &mut &data[..], &mut hasher).expect("write");
        assert_eq!(hasher.finish(), FileDigest::of_bytes(&data, 4096));
        assert_eq!(ring.peak_in_flight, 4, "writes overlap");
        assert_eq!(ring.in_flight, 0);

        ring.peak_in_flight = 0;
        let (mut target, size) =
            Target::open_read(&path, true, crate::io::ReadFrom::Disk).expect("open");
        let mut hasher = ChunkHasher::new(4096);
        let mut next = 0u64;
        let mut sink = |off: u64, b: &[u8]| {
            assert_eq!(off, next);
            next += b.len() as u64;
            Ok(())
        };
        read_all(ring, &mut target, size, &mut hasher, &mut sink).expect("read");
        assert_eq!(next, data.len() as u64);
        assert_eq!(ring.peak_in_flight, 4, "reads overlap");
        assert_eq!(ring.in_flight, 0);
    }

    #[test]
    fn the_pool_grows_to_its_limit_and_reuses_rings() {
        let Some(pool) = pool(2, 4096) else { return };
        let limit = pool_limit();
        let guards: Vec<_> = (0..limit).map(|_| pool.checkout().expect("ring")).collect();
        assert_eq!(pool.lock().live, limit);
        drop(guards);
        assert_eq!(pool.lock().idle.len(), limit);
        let _again = pool.checkout().expect("ring");
        assert_eq!(
            pool.lock().live,
            limit,
            "an idle ring is reused, none is added"
        );
    }

    #[test]
    fn a_waiting_caller_gets_the_next_returned_ring() {
        let Some(pool) = pool(2, 4096) else { return };
        let held: Vec<_> = (0..pool_limit())
            .map(|_| pool.checkout().expect("ring"))
            .collect();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.checkout().is_some());
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(held);
            assert!(waiter.join().expect("waiter"));
        });
    }
}
