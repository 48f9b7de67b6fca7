//! Pacing the drain: a token bucket in bytes per second, so draining never
//! starves the application's own I/O or the parallel filesystem.
//!
//! Written here rather than taken from a crate: the general rate-limiting
//! crates count cells of a fixed small size and are async-first, while the
//! drain takes megabyte-sized amounts from plain threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shared by every thread sending to one tier.
#[derive(Debug)]
pub struct RateLimiter {
    /// Bytes per second; `None` is unlimited.
    rate: Option<u64>,
    state: Mutex<Bucket>,
    /// Every byte taken so far: progress of the transfer in flight.
    taken: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may go now (negative: owed).
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// `rate` bytes per second (`None` or 0: unlimited). The bucket holds
    /// one second's worth, so a burst is bounded by the rate itself.
    pub fn new(rate: Option<u64>) -> RateLimiter {
        let rate = rate.filter(|r| *r > 0);
        RateLimiter {
            rate,
            state: Mutex::new(Bucket {
                tokens: rate.unwrap_or(0) as f64,
                last: Instant::now(),
            }),
            taken: AtomicU64::new(0),
        }
    }

    pub fn unlimited() -> RateLimiter {
        RateLimiter::new(None)
    }

    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Bytes taken since the limiter was made.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Take `bytes`, sleeping as long as the rate requires. Amounts larger
    /// than the bucket are allowed: they leave a debt paid by waiting.
    pub fn take(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// Take `bytes` from the bucket and say how long the caller must wait
    /// before sending them.
    pub fn reserve(&self, bytes: u64) -> Duration {
        self.taken.fetch_add(bytes, Ordering::Relaxed);
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        {
            let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(b.last).as_secs_f64() * rate as f64;
            b.tokens = (b.tokens + refill).min(rate as f64);
            b.last = now;
            b.tokens -= bytes as f64;
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / rate as f64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let r = RateLimiter::new(Some(0));
        assert_eq!(r.rate(), None);
        for _ in 0..1000 {
            assert_eq!(r.reserve(1 << 30), Duration::ZERO);
        }
    }

    #[test]
    fn debt_is_paid_by_waiting() {
        // 1 MB/s, the bucket starts full (1 MB): 1.2 MB owes 0.2 MB, i.e.
        // 0.2 s, less the refill of the instant between the two calls.
        let r = RateLimiter::new(Some(1_000_000));
        assert_eq!(r.reserve(1_000_000), Duration::ZERO);
        let wait = r.reserve(200_000);
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        assert!(wait >= Duration::from_millis(100), "{wait:?}");
        // The debt accumulates.
        assert!(r.reserve(1_000_000) >= Duration::from_millis(1000));
    }
}
