//! Adaptive request concurrency (after Vector's Adaptive Request
//! Concurrency): how many requests to keep in flight so that a rate limit's
//! budget stays busy, and no more, whatever the answers take.
//!
//! The controller is fed windows of observations (answers, their mean time,
//! how many were 429) and keeps a limit between 1 and a ceiling:
//! - it **grows** while answer times stay flat: doubling at first (slow
//!   start, until the first sign of trouble), then by one per window;
//! - it **backs off** on a 429 (×0.7) and when answer times rise well above
//!   the fastest window seen (×0.9): a queue is building at the server;
//! - it never passes the ceiling (`extract --concurrency`, `run
//!   --extract-concurrency`), nor, when the
//!   rate limit is known, what keeps that budget busy (Little's law: the
//!   rate × the answer time, with headroom): more in flight would only
//!   queue at the client's own bucket, where the serial listing calls wait
//!   behind them.
//!
//! It is pure: no clock, no I/O; the caller decides what a window is (a
//! quarter second of answers) and tests drive it with made-up windows.

use std::time::Duration;

/// Answer times this much above the best window mean a queue is building.
const RISE: f64 = 1.5;

/// In flight beyond what the budget needs on average: answer times vary
/// (jitter, a slow tail), and a request waiting for a token is cheap.
const HEADROOM: f64 = 1.5;
const SPARE: f64 = 4.0;

#[derive(Debug, Clone)]
pub struct Controller {
    limit: f64,
    ceiling: usize,
    /// The fastest window mean seen, drifting up slowly so it can follow a
    /// server that got slower for good.
    base: Option<f64>,
    slow_start: bool,
    /// Requests a second the rate limit allows, when known.
    budget: Option<f64>,
}

/// What one window of answers showed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub answers: u64,
    pub mean: Duration,
    pub throttled: u64,
}

impl Controller {
    pub fn new(initial: usize, ceiling: usize) -> Controller {
        let ceiling = ceiling.max(1);
        Controller {
            limit: initial.clamp(1, ceiling) as f64,
            ceiling,
            base: None,
            slow_start: true,
            budget: None,
        }
    }

    /// Keep no more in flight than `per_second` needs (None: no known limit).
    pub fn with_budget(mut self, per_second: Option<f64>) -> Controller {
        self.budget = per_second.filter(|r| *r > 0.0);
        self
    }

    /// Requests (or profiles) to keep in flight now.
    pub fn limit(&self) -> usize {
        (self.limit as usize).clamp(1, self.ceiling)
    }

    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// Adjust the limit to one window of answers; returns the new limit.
    pub fn observe(&mut self, w: Window) -> usize {
        if w.throttled > 0 {
            self.slow_start = false;
            self.limit = (self.limit * 0.7).max(1.0);
            return self.limit();
        }
        if w.answers == 0 {
            return self.limit();
        }
        let mean = w.mean.as_secs_f64();
        let base = self.base.map_or(mean, |b| b.min(mean));
        if mean > base * RISE {
            self.slow_start = false;
            self.limit = (self.limit * 0.9).max(1.0);
        } else if self.slow_start {
            self.limit = (self.limit * 2.0).min(self.ceiling as f64);
        } else {
            self.limit = (self.limit + 1.0).min(self.ceiling as f64);
        }
        if let Some(rate) = self.budget {
            let needed = (rate * mean * HEADROOM + SPARE).ceil();
            self.limit = self.limit.min(needed).max(1.0);
        }
        // Let the base drift up a little, so a lasting change is followed.
        self.base = Some(base * 1.01);
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(ms: u64) -> Window {
        Window {
            answers: 20,
            mean: Duration::from_millis(ms),
            throttled: 0,
        }
    }

    #[test]
    fn grows_under_flat_latency_fast_then_steadily() {
        let mut c = Controller::new(4, 512);
        let seen: Vec<usize> = (0..5).map(|_| c.observe(flat(150))).collect();
        assert_eq!(seen, [8, 16, 32, 64, 128]);
    }

    #[test]
    fn backs_off_on_a_429_then_grows_by_one() {
        let mut c = Controller::new(32, 512);
        c.observe(flat(100));
        let after = c.observe(Window {
            throttled: 3,
            ..flat(100)
        });
        assert_eq!(after, 44, "64 × 0.7");
        assert_eq!(c.observe(flat(100)), 45);
        assert_eq!(c.observe(flat(100)), 46);
    }

    #[test]
    fn backs_off_when_latency_rises() {
        let mut c = Controller::new(40, 512);
        c.observe(flat(100)); // 80, base 100 ms
        assert_eq!(c.observe(flat(400)), 72, "80 × 0.9: a queue is building");
        assert_eq!(c.observe(flat(400)), 64);
        // Back to flat: additive growth (slow start is over).
        assert_eq!(c.observe(flat(100)), 65);
    }

    #[test]
    fn keeps_no_more_in_flight_than_the_budget_needs() {
        // 100 requests a second answered in 500 ms: 50 in flight keep the
        // budget busy; with headroom, 79 (100 × 0.5 × 1.5 + 4).
        let mut c = Controller::new(4, 512).with_budget(Some(100.0));
        for _ in 0..20 {
            c.observe(flat(500));
        }
        assert_eq!(c.limit(), 79);
        // Answers get faster: fewer are needed.
        for _ in 0..3 {
            c.observe(flat(40));
        }
        assert_eq!(c.limit(), 10, "100 × 0.04 × 1.5 + 4");
        // Without a known budget only the ceiling bounds it.
        let mut free = Controller::new(4, 512);
        for _ in 0..20 {
            free.observe(flat(500));
        }
        assert_eq!(free.limit(), 512);
    }

    #[test]
    fn never_passes_the_ceiling_nor_falls_below_one() {
        let mut c = Controller::new(4, 16);
        for _ in 0..10 {
            c.observe(flat(50));
        }
        assert_eq!(c.limit(), 16);
        for _ in 0..50 {
            c.observe(Window {
                throttled: 1,
                ..flat(50)
            });
        }
        assert_eq!(c.limit(), 1);
    }
}
