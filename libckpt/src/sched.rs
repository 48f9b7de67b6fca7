//! The drain's CPU priority: it is background work on a node whose cores
//! belong to the application.
//!
//! Drain threads (the per-tier workers, the threads they start, and the
//! pool that hashes and compresses for the DR push) run at a nice value,
//! `drain.nice` (10 by default), so a solver that wants every core gets
//! them and the drain takes what is left. On Linux the nice value is a
//! per-thread attribute that new threads inherit, so only the drain's own
//! threads are lowered, never the daemon's FUSE threads or the process
//! that embeds libckpt.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

/// `drain.nice` unless configured.
pub const DEFAULT_NICE: i32 = 10;
/// The range of `drain.nice`: 0 leaves the drain at the process's own
/// priority.
pub const NICE_RANGE: std::ops::RangeInclusive<i32> = 0..=19;

static NICE: AtomicI32 = AtomicI32::new(DEFAULT_NICE);

/// Set the nice value drain threads take from now on.
pub fn set_drain_nice(nice: i32) {
    NICE.store(
        nice.clamp(*NICE_RANGE.start(), *NICE_RANGE.end()),
        Ordering::Relaxed,
    );
}

/// Lower the calling thread to the drain's priority (never raise it: a
/// thread already nicer stays so). Failure only costs the application some
/// CPU, so it is logged, not returned.
pub fn enter_drain_priority() {
    let want = NICE.load(Ordering::Relaxed);
    if want == 0 {
        return;
    }
    // SAFETY: gettid(2) has no preconditions.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // getpriority(2) may legitimately return -1, so errno tells failure.
    // SAFETY: plain syscalls on this thread's id; errno is thread-local.
    let now = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, tid)
    };
    if now >= want {
        return;
    }
    // SAFETY: as above; raising one's own nice value needs no privilege.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, want) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), nice = want,
            "cannot lower the drain thread's priority");
    }
}

/// The pool that hashes and compresses for the drain, its threads at the
/// drain's priority; `None` if the threads could not be started (the
/// caller then uses the global pool).
pub fn drain_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("ckptfs-drain-cpu-{i}"))
            .start_handler(|_| enter_drain_priority())
            .build()
            .map_err(|e| tracing::warn!(error = %e, "cannot start the drain's thread pool"))
            .ok()
    })
    .as_ref()
}

/// Run `f` in [`drain_pool`], so its parallel iterators use that pool.
pub fn in_drain_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match drain_pool() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my_nice() -> i32 {
        // SAFETY: plain syscalls on this thread's id.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn drain_threads_run_nicer_and_other_threads_do_not() {
        let before = my_nice();
        let (in_pool, in_worker) = std::thread::spawn(|| {
            set_drain_nice(DEFAULT_NICE);
            enter_drain_priority();
            let worker = my_nice();
            (in_drain_pool(my_nice), worker)
        })
        .join()
        .unwrap();
        assert!(in_worker >= DEFAULT_NICE, "worker at nice {in_worker}");
        assert!(in_pool >= DEFAULT_NICE, "pool thread at nice {in_pool}");
        // The thread that started the drain thread is untouched.
        assert_eq!(my_nice(), before);
    }
}
