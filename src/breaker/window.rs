//! The failure ratio over a sliding window of time, per second.
//!
//! Why a ratio over a window and not a run: a run of failures "with no good answer between
//! them" is reset by any good answer, so a 50 % degradation never opens the breaker and rows
//! burn their attempts on coin flips (0.5⁶ ≈ 1.6 % of rows died at six attempts). The window
//! sees the degradation whatever the order of the answers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Good and bad results of the last `span`, in one-second buckets.
#[derive(Debug)]
pub struct Window {
    span: Duration,
    /// (start of the bucket, good, bad), oldest first.
    buckets: VecDeque<(Instant, u32, u32)>,
}

impl Window {
    /// An empty window of `span` (at least a second).
    pub fn new(span: Duration) -> Self {
        Self {
            span: span.max(Duration::from_secs(1)),
            buckets: VecDeque::new(),
        }
    }

    /// Records one result at `now`.
    pub fn record(&mut self, now: Instant, bad: bool) {
        self.expire(now);
        match self.buckets.back_mut() {
            Some((start, good, b)) if now.duration_since(*start) < Duration::from_secs(1) => {
                if bad { *b += 1 } else { *good += 1 }
            }
            _ => self
                .buckets
                .push_back((now, u32::from(!bad), u32::from(bad))),
        }
    }

    /// (results, bad share) over the window ending at `now`; the share is 0 when empty.
    pub fn ratio(&mut self, now: Instant) -> (u32, f64) {
        self.expire(now);
        let (good, bad) = self
            .buckets
            .iter()
            .fold((0u32, 0u32), |(g, b), (_, g2, b2)| (g + g2, b + b2));
        let total = good + bad;
        let share = if total == 0 {
            0.0
        } else {
            f64::from(bad) / f64::from(total)
        };
        (total, share)
    }

    /// Forgets everything (the breaker closed: what came before the outage says nothing about
    /// what comes after it).
    pub fn clear(&mut self) {
        self.buckets.clear();
    }

    fn expire(&mut self, now: Instant) {
        while let Some((start, _, _)) = self.buckets.front() {
            if now.saturating_duration_since(*start) >= self.span {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternating_answers_keep_a_half_ratio_that_a_run_would_reset() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(30));
        for i in 0..40u64 {
            w.record(t0 + Duration::from_millis(100 * i), i % 2 == 0);
        }
        let (n, share) = w.ratio(t0 + Duration::from_secs(4));
        assert_eq!(n, 40);
        assert!((share - 0.5).abs() < 1e-9, "{share}");
    }

    #[test]
    fn old_results_leave_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10));
        for i in 0..10u64 {
            w.record(t0 + Duration::from_millis(10 * i), true);
        }
        w.record(t0 + Duration::from_secs(9), false);
        assert_eq!(w.ratio(t0 + Duration::from_secs(9)).0, 11);
        // 10 s after the first bucket it is gone; the good answer at 9 s stays.
        let (n, share) = w.ratio(t0 + Duration::from_secs(10));
        assert_eq!((n, share), (1, 0.0));
        w.clear();
        assert_eq!(w.ratio(t0 + Duration::from_secs(10)), (0, 0.0));
    }
}
