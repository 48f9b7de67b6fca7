//! How hard the push compresses: a fixed zstd level, or `auto`.
//!
//! Compression buys nothing when the link is faster than the compressor:
//! the link then idles while the node's cores (shared with the
//! application) compress. On a slow WAN link the opposite holds, and a
//! higher level pays. The push compresses a batch's chunks while it sends
//! those already compressed; `auto` starts at [`AUTO_START`] and, after
//! each batch, looks at where its time went:
//!
//! - the sender waited for the compressor more than a quarter of the
//!   batch's time: one level down (never below [`AUTO_MIN`], one of
//!   zstd's fast levels);
//! - the last chunk was compressed before half the batch's time had
//!   passed (the link is more than twice slower), in [`UP_AFTER`] batches
//!   in a row: one level up (never above [`AUTO_MAX`]).
//!
//! Between the two the level stays, which keeps it from flapping between
//! neighbours. Going up takes more than one batch because a checkpoint's
//! batches differ: one of zeros and sparse pages compresses in a fraction
//! of the time of one of doubles, so a single fast batch said little about
//! the next. With one batch enough, a 2 GiB push of the drain benchmark's
//! mixed data changed level after 14 to 16 of its 32 batches (2, 3, 2, 3,
//! 2, 1, 2, 1, …), and a batch of doubles at 3 left the sender waiting
//! for 113 ms of its 121. With two, it changed after 6 to 10. The level
//! reached carries over to the tier's next push.
//!
//! Below 1 come zstd's fast levels (`zstd --fast=N` is level -N): still
//! zstd frames, the receiver decompresses them like any other. On the
//! drain benchmark's checkpoint-like data (`zstd -b -B1M`, one core of
//! the development VM) level 1 compresses at 394 MB/s to 1.94:1, -1 at
//! 630 MB/s to 1.77:1, -3 at 800 MB/s to 1.59:1, -5 at 900 MB/s to
//! 1.52:1, and decompression speeds up about as much. A link that
//! outruns level 1 (loopback, RDMA) is better served by sending up to a
//! quarter more bytes than by idling; the DR site stores them as sent.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Lowest level `auto` uses: past -5 the fast levels gain little speed
/// for the ratio they give up.
pub const AUTO_MIN: i32 = -5;
/// Highest level `auto` uses: above it zstd slows down steeply for little
/// gain on checkpoint data.
pub const AUTO_MAX: i32 = 9;
/// Where `auto` starts before it has measured anything.
pub const AUTO_START: i32 = 3;
/// Batches in a row that must find the link the slower end before
/// `auto` goes one level up.
pub const UP_AFTER: u32 = 2;
/// The range of a fixed level, but for 0 (zstd's "default", which is 3:
/// refused rather than silently meaning something else). Negative levels
/// are zstd's fast ones.
pub const FIXED: std::ops::RangeInclusive<i32> = -7..=19;

/// What a refused level is told, naming the levels that are valid.
pub const FIXED_TEXT: &str = "1..=19, or -7..=-1 for zstd's fast levels";

/// Whether `level` is one a push may be set to.
pub fn valid(level: i32) -> bool {
    level != 0 && FIXED.contains(&level)
}

/// `dr.zstd_level`: `auto` or a [`valid`] level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZstdLevel {
    #[default]
    Auto,
    Fixed(i32),
}

impl ZstdLevel {
    /// Whether a fixed level is [`valid`] (`auto` always is).
    pub fn is_valid(&self) -> bool {
        match self {
            ZstdLevel::Auto => true,
            ZstdLevel::Fixed(l) => valid(*l),
        }
    }
}

impl fmt::Display for ZstdLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZstdLevel::Auto => f.write_str("auto"),
            ZstdLevel::Fixed(l) => write!(f, "{l}"),
        }
    }
}

impl FromStr for ZstdLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<ZstdLevel, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ZstdLevel::Auto);
        }
        let l: i32 = s
            .parse()
            .map_err(|_| format!("{s:?} is neither `auto` nor a zstd level"))?;
        let level = ZstdLevel::Fixed(l);
        if level.is_valid() {
            Ok(level)
        } else {
            Err(format!("zstd level {l} is not one of {FIXED_TEXT}"))
        }
    }
}

impl Serialize for ZstdLevel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ZstdLevel::Auto => s.serialize_str("auto"),
            ZstdLevel::Fixed(l) => s.serialize_i32(*l),
        }
    }
}

impl<'de> Deserialize<'de> for ZstdLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(i) => i.to_string(),
            Raw::Str(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The level a push compresses at, adjusted batch by batch under `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adaptive {
    level: i32,
    auto: bool,
    /// Batches in a row, up to now, that found the link the slower end.
    slow_link: u32,
}

impl Adaptive {
    /// Under `auto`, `from` is the level the tier's last push ended at.
    pub fn new(setting: ZstdLevel, from: Option<i32>) -> Adaptive {
        match setting {
            ZstdLevel::Fixed(level) => Adaptive {
                level,
                auto: false,
                slow_link: 0,
            },
            ZstdLevel::Auto => Adaptive {
                level: match from.unwrap_or(AUTO_START).clamp(AUTO_MIN, AUTO_MAX) {
                    0 => 1,
                    l => l,
                },
                auto: true,
                slow_link: 0,
            },
        }
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    /// One batch: its last chunk was compressed `compressed` after its
    /// start, the sender waited `starved` in all for compressed chunks, and
    /// the last acknowledgement came `total` after the start. Returns the
    /// new level when it changed.
    pub fn observe(
        &mut self,
        compressed: Duration,
        starved: Duration,
        total: Duration,
    ) -> Option<i32> {
        if total.is_zero() {
            return None;
        }
        self.decide(starved * 4 > total, compressed * 2 < total)
    }

    /// One window of a push that keeps many uploads in flight (S3): in
    /// all, its pieces spent `compressing` from being handed to the
    /// compressor to getting their bytes back (queueing for a core
    /// included), and `sending` from then until the server had them.
    /// Compression taking over a quarter of that time is one level down;
    /// under an eighth, in [`UP_AFTER`] windows in a row, one level up.
    /// Between the two the level stays. Returns the new level when it
    /// changed.
    pub fn observe_slots(&mut self, compressing: Duration, sending: Duration) -> Option<i32> {
        let total = compressing + sending;
        if total.is_zero() {
            return None;
        }
        self.decide(compressing * 4 > total, compressing * 8 < total)
    }

    /// `down`: compression holds the push up; `up`: the link does, by far.
    fn decide(&mut self, down: bool, up: bool) -> Option<i32> {
        if !self.auto {
            return None;
        }
        let next = if down {
            self.slow_link = 0;
            step(self.level, -1)
        } else if up {
            self.slow_link += 1;
            if self.slow_link >= UP_AFTER {
                self.slow_link = 0;
                step(self.level, 1)
            } else {
                self.level
            }
        } else {
            self.slow_link = 0;
            self.level
        };
        (next != self.level).then(|| {
            self.level = next;
            next
        })
    }
}

/// A tier's level setting and, under `auto`, the level its last push
/// ended at, where the next starts (shared by the tier's clones).
#[derive(Debug, Clone)]
pub struct Remembered {
    setting: ZstdLevel,
    learned: Arc<Mutex<Option<i32>>>,
}

impl Remembered {
    pub fn new(setting: ZstdLevel) -> Remembered {
        Remembered {
            setting,
            learned: Arc::new(Mutex::new(None)),
        }
    }

    fn learned_now(&self) -> std::sync::MutexGuard<'_, Option<i32>> {
        self.learned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The setting, and the level the last push ended at.
    pub fn get(&self) -> (ZstdLevel, Option<i32>) {
        (self.setting, *self.learned_now())
    }

    /// Start from `level` (kept from an earlier process).
    pub fn set(&self, level: Option<i32>) {
        *self.learned_now() = level;
    }

    /// The level the next push starts at, adjusted by it under `auto`.
    pub fn start(&self) -> Adaptive {
        Adaptive::new(self.setting, *self.learned_now())
    }

    /// Where a push's level ended. True when, under `auto`, that is a
    /// level other than the one kept before.
    pub fn remember(&self, level: i32) -> bool {
        let before = self.learned_now().replace(level);
        self.setting == ZstdLevel::Auto && before != Some(level)
    }

    /// For `ckptfs status`: `zstd 3`, `zstd auto, from 3`, `zstd auto, now -2`.
    pub fn describe(&self) -> String {
        match self.get() {
            (ZstdLevel::Auto, Some(now)) => format!("zstd auto, now {now}"),
            (ZstdLevel::Auto, None) => format!("zstd auto, from {AUTO_START}"),
            (ZstdLevel::Fixed(l), _) => format!("zstd {l}"),
        }
    }
}

/// One level from `level` in the direction of `by` (±1) within `auto`'s
/// range, over 0, which is not a level of its own.
fn step(level: i32, by: i32) -> i32 {
    let next = match level + by {
        0 => by,
        n => n,
    };
    next.clamp(AUTO_MIN, AUTO_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_auto_and_levels_and_refuses_the_rest() {
        assert_eq!("auto".parse(), Ok(ZstdLevel::Auto));
        assert_eq!("AUTO".parse(), Ok(ZstdLevel::Auto));
        assert_eq!("7".parse(), Ok(ZstdLevel::Fixed(7)));
        assert_eq!("-3".parse(), Ok(ZstdLevel::Fixed(-3)));
        assert!("0"
            .parse::<ZstdLevel>()
            .unwrap_err()
            .contains("not one of 1..=19, or -7..=-1"));
        assert!("20".parse::<ZstdLevel>().is_err());
        assert!("-8".parse::<ZstdLevel>().is_err());
        assert!("fast"
            .parse::<ZstdLevel>()
            .unwrap_err()
            .contains("neither `auto`"));
    }

    #[test]
    fn toml_takes_a_string_or_an_integer() {
        #[derive(Deserialize, Serialize)]
        struct T {
            l: ZstdLevel,
        }
        let t: T = toml::from_str("l = \"auto\"").unwrap();
        assert_eq!(t.l, ZstdLevel::Auto);
        let t: T = toml::from_str("l = 5").unwrap();
        assert_eq!(t.l, ZstdLevel::Fixed(5));
        assert!(toml::from_str::<T>("l = 42").is_err());
        assert!(toml::from_str::<T>("l = \"quick\"").is_err());
        assert_eq!(
            toml::to_string(&T { l: ZstdLevel::Auto }).unwrap().trim(),
            "l = \"auto\""
        );
        assert_eq!(
            toml::to_string(&T {
                l: ZstdLevel::Fixed(4)
            })
            .unwrap()
            .trim(),
            "l = 4"
        );
    }

    #[test]
    fn a_fixed_level_never_moves() {
        let mut a = Adaptive::new(ZstdLevel::Fixed(6), Some(1));
        assert_eq!(a.level(), 6);
        assert_eq!(a.observe(ms(100), ms(90), ms(100)), None);
        assert_eq!(a.observe(ms(1), ms(0), ms(100)), None);
        assert_eq!(a.level(), 6);
    }

    #[test]
    fn auto_follows_the_bottleneck_within_its_range() {
        let mut a = Adaptive::new(ZstdLevel::Auto, None);
        assert_eq!(a.level(), AUTO_START);
        // A fast link: the sender waits on the compressor, down through
        // the fast levels (never 0) to the floor.
        assert_eq!(a.observe(ms(60), ms(30), ms(62)), Some(AUTO_START - 1));
        assert_eq!(a.observe(ms(60), ms(30), ms(62)), Some(1));
        assert_eq!(a.observe(ms(60), ms(30), ms(62)), Some(-1));
        for _ in 0..20 {
            a.observe(ms(60), ms(30), ms(62));
        }
        assert_eq!(a.level(), AUTO_MIN);
        // And back up over 0 once the link is the slower end, after
        // UP_AFTER batches that say so.
        let mut up = Adaptive::new(ZstdLevel::Auto, Some(-1));
        assert_eq!(up.observe(ms(10), ms(1), ms(500)), None);
        assert_eq!(up.observe(ms(10), ms(1), ms(500)), Some(1));
        // A slow link: everything compressed early, up to the ceiling.
        for _ in 0..40 {
            a.observe(ms(10), ms(1), ms(500));
        }
        assert_eq!(a.level(), AUTO_MAX);
        // Balanced (little waiting, compression busy most of the batch):
        // stays.
        assert_eq!(a.observe(ms(50), ms(5), ms(60)), None);
        // A batch that took no time says nothing.
        assert_eq!(a.observe(ms(0), ms(0), Duration::ZERO), None);
    }

    #[test]
    fn one_quick_batch_between_slow_ones_does_not_move_the_level_up() {
        let mut a = Adaptive::new(ZstdLevel::Auto, Some(1));
        // A batch of zeros compresses early; the next, of doubles, keeps
        // the compressor busy (balanced: no move either way).
        for _ in 0..10 {
            assert_eq!(a.observe(ms(20), ms(2), ms(100)), None);
            assert_eq!(a.observe(ms(80), ms(10), ms(100)), None);
        }
        assert_eq!(a.level(), 1);
        // A starved batch between two quick ones breaks the streak too.
        assert_eq!(a.observe(ms(20), ms(2), ms(100)), None);
        assert_eq!(a.observe(ms(90), ms(40), ms(100)), Some(-1));
        assert_eq!(a.observe(ms(20), ms(2), ms(100)), None);
        assert_eq!(a.observe(ms(20), ms(2), ms(100)), Some(1));
    }

    #[test]
    fn many_slots_move_the_level_by_compression_s_share_of_their_time() {
        let mut a = Adaptive::new(ZstdLevel::Auto, None);
        // Compression a third of the slots' time: down at once.
        assert_eq!(a.observe_slots(ms(100), ms(200)), Some(AUTO_START - 1));
        // A fifth: between the bounds, stays, and breaks an up streak.
        assert_eq!(a.observe_slots(ms(100), ms(50)), Some(AUTO_START - 2));
        assert_eq!(a.observe_slots(ms(10), ms(200)), None);
        assert_eq!(a.observe_slots(ms(20), ms(80)), None);
        assert_eq!(a.observe_slots(ms(10), ms(200)), None);
        assert_eq!(a.level(), AUTO_START - 2);
        // A twentieth, twice in a row: up.
        assert_eq!(a.observe_slots(ms(10), ms(200)), Some(AUTO_START - 1));
        for _ in 0..40 {
            a.observe_slots(ms(10), ms(200));
        }
        assert_eq!(a.level(), AUTO_MAX);
        // A window with no time says nothing; a fixed level never moves.
        assert_eq!(a.observe_slots(Duration::ZERO, Duration::ZERO), None);
        let mut f = Adaptive::new(ZstdLevel::Fixed(3), None);
        assert_eq!(f.observe_slots(ms(100), ms(10)), None);
        assert_eq!(f.level(), 3);
    }

    #[test]
    fn auto_resumes_where_the_last_push_ended_clamped() {
        assert_eq!(Adaptive::new(ZstdLevel::Auto, Some(5)).level(), 5);
        assert_eq!(Adaptive::new(ZstdLevel::Auto, Some(15)).level(), AUTO_MAX);
        assert_eq!(Adaptive::new(ZstdLevel::Auto, Some(-3)).level(), -3);
        assert_eq!(Adaptive::new(ZstdLevel::Auto, Some(-30)).level(), AUTO_MIN);
        assert_eq!(Adaptive::new(ZstdLevel::Auto, Some(0)).level(), 1);
    }
}
