//! `ckpt_need_checkpoint`: when is it time to checkpoint? A pure function
//! of what happened and the `[api]` rules, like SCR_Need_checkpoint.

use std::time::{Duration, Instant};

/// The rules (`api.interval`, `api.seconds`, `api.overhead`); 0 is off.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub interval: u64,
    pub seconds: u64,
    pub overhead: u8,
}

/// What the library has seen since `ckpt_init`.
#[derive(Debug, Clone)]
pub struct Need {
    /// Calls of `ckpt_need_checkpoint` since the last checkpoint (or init).
    calls: u64,
    asked: bool,
    /// When the last checkpoint ended (or init, before the first).
    since: Instant,
    /// How long the last checkpoint blocked the application.
    cost: Option<Duration>,
}

impl Need {
    pub fn new(now: Instant) -> Need {
        Need {
            calls: 0,
            asked: false,
            since: now,
            cost: None,
        }
    }

    /// A checkpoint that started at `start` ended at `end`.
    pub fn checkpointed(&mut self, start: Instant, end: Instant) {
        self.calls = 0;
        self.since = end;
        self.cost = Some(end.saturating_duration_since(start));
    }

    /// One call of `ckpt_need_checkpoint` at `now`: checkpoint now?
    pub fn ask(&mut self, rules: Rules, now: Instant) -> bool {
        self.calls += 1;
        if !self.asked {
            self.asked = true;
            return true;
        }
        let elapsed = now.saturating_duration_since(self.since);
        if rules.interval > 0 && self.calls >= rules.interval {
            return true;
        }
        if rules.seconds > 0 && elapsed >= Duration::from_secs(rules.seconds) {
            return true;
        }
        if rules.overhead > 0 {
            if let Some(cost) = self.cost {
                // cost <= overhead% of the time since it ended.
                return cost.as_secs_f64() * 100.0
                    <= elapsed.as_secs_f64() * f64::from(rules.overhead);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn rules_table() {
        let t0 = Instant::now();
        let off = Rules {
            interval: 0,
            seconds: 0,
            overhead: 0,
        };
        // The first call always says yes; with every rule off, never again.
        let mut n = Need::new(t0);
        assert!(n.ask(off, t0));
        assert!(!n.ask(off, t0 + 1000 * S));

        // Every 3 calls, counted from the last checkpoint.
        let every3 = Rules { interval: 3, ..off };
        let mut n = Need::new(t0);
        let got: Vec<bool> = (0..4).map(|_| n.ask(every3, t0)).collect();
        assert_eq!(got, [true, false, true, true]);
        n.checkpointed(t0, t0);
        let got: Vec<bool> = (0..3).map(|_| n.ask(every3, t0)).collect();
        assert_eq!(got, [false, false, true]);

        // Every 60 s since the last checkpoint ended.
        let minute = Rules { seconds: 60, ..off };
        let mut n = Need::new(t0);
        n.ask(minute, t0);
        n.checkpointed(t0, t0 + 10 * S);
        assert!(!n.ask(minute, t0 + 69 * S));
        assert!(n.ask(minute, t0 + 70 * S));

        // Overhead 10 %: a checkpoint of 2 s is due 20 s after it ended.
        let ten = Rules {
            overhead: 10,
            ..off
        };
        let mut n = Need::new(t0);
        assert!(n.ask(ten, t0));
        assert!(!n.ask(ten, t0 + 5 * S), "no cost known yet");
        n.checkpointed(t0 + 5 * S, t0 + 7 * S);
        assert!(!n.ask(ten, t0 + 26 * S));
        assert!(n.ask(ten, t0 + 27 * S));
    }
}
