//! The bounds of the long and partial faults (issue 18), beside the run's own
//! ([`crate::measure::bounds`]):
//! - messages dead-lettered: the run's dead-letter queue depth at the end (every run);
//! - ABHA calls during an ABHA-endpoints outage: the sandbox timeline's ABHA API requests in
//!   the outage; at most 3 s at the rate (the run that opens the breaker and the calls in
//!   flight) plus one probe per second of the outage, plus the second programme's reconcile
//!   look-ups if it ran meanwhile (a one-shot tool at its own 5/s, not the fleet's);
//! - calls the skewed replica had refused: the sandbox's ABDM-1016 answers, at most four per
//!   in-flight slot of one worker plus 16 (each job in flight refused and retried once, then
//!   the replica's own probes, 1 s, 2 s, 4 s ... apart), per life of its process (a kill
//!   inside the window starts a process that must learn its clock is refused again);
//! - attempts a long `Retry-After` spent: throttled calls in the storm (and its last wait)
//!   whose job was claimed again, at most the jobs held by workers killed meanwhile;
//! - throttled answers in a long-`Retry-After` storm after its first 2 s: at most one per
//!   `Retry-After` period of the storm. Each pause ends in a call at the decreased rate that
//!   may find the limit (AIMD halves onto the halved limit) and pauses everyone again; the
//!   ≤ 1 % of a short storm means nothing here, where the pauses leave some 30 calls.

use crate::measure::{Bound, Figures};
use crate::schedule::{Action, LEASE_SECS};

/// The run's `worker.in_flight`.
pub const IN_FLIGHT: u64 = 16;
/// The reconcile's shipped `reconcile.rate_per_second`.
pub const RECONCILE_RATE: f64 = 5.0;

/// Look-ups the second programme's reconcile may have made in `[from, to]`: it starts when
/// its batch's submit returned and looks its roster up at [`RECONCILE_RATE`].
pub fn reconcile_calls_between(f: &Figures, from: f64, to: f64) -> u64 {
    let Some(s) = &f.second else { return 0 };
    let (start, end) = (
        s.submitted,
        s.submitted + s.lookups as f64 / RECONCILE_RATE + 2.0,
    );
    let overlap = (end.min(to) - start.max(from)).max(0.0);
    (overlap * RECONCILE_RATE).ceil() as u64
}

/// (ABHA API requests during the outage, allowed) for an ABHA-endpoints outage window.
pub fn abha_outage_calls(f: &Figures, rate: f64) -> Vec<(u64, u64)> {
    f.windows
        .iter()
        .filter(|w| matches!(w.action, Action::AbhaOutage(_)))
        .map(|w| {
            let from = w.start.floor() as u64;
            let to = w.end.ceil() as u64;
            let calls = f
                .timeline
                .iter()
                .filter(|s| s.t >= from && s.t < to)
                .map(|s| s.received.get("api").copied().unwrap_or(0))
                .sum();
            let allowed = (3.0 * rate).ceil() as u64
                + (w.end - w.start).ceil() as u64
                + reconcile_calls_between(f, w.start, w.end);
            (calls, allowed)
        })
        .collect()
}

/// Calls the sandbox refused for their `TIMESTAMP` (ABDM-1016): the skewed replica's.
pub fn clock_refusals(f: &Figures) -> u64 {
    f.calls.answers.get("ABDM-1016").copied().unwrap_or(0)
}

/// Refusals allowed for one skewed replica: per life of its process. The kill loop may kill
/// worker-1 while its clock is off; the driver starts it again with the same offset, and the
/// new process knows nothing of the old one's hold, so it is refused afresh (at 30/s on a
/// run without the kill loop, one life cost 42; the full run at 50/s with two kills of it
/// inside the window, 86).
pub fn clock_refusals_allowed(f: &Figures) -> u64 {
    let lives = 1 + f
        .windows
        .iter()
        .filter(|s| matches!(s.action, Action::SkewedClock(_)))
        .map(|s| {
            f.windows
                .iter()
                .filter(|w| {
                    matches!(w.action, Action::KillWorker(0))
                        && w.start > s.start
                        && w.start < s.end
                })
                .count() as u64
        })
        .sum::<u64>();
    lives * (4 * IN_FLIGHT + 16)
}

/// Seconds after a long-`Retry-After` storm during which its last wait may still end in a
/// new claim.
pub fn long_wait_tail() -> f64 {
    (LEASE_SECS + 10) as f64
}

/// Jobs that workers killed during `[from, to]` held (each may rightly be claimed again).
pub fn cut_between(f: &Figures, from: f64, to: f64) -> i64 {
    f.windows
        .iter()
        .filter(|w| matches!(w.action, Action::KillWorker(_)) && w.start >= from && w.start <= to)
        .map(|w| w.cut)
        .sum()
}

/// The bounds of the faults in `f`'s windows (and the dead-letter queue).
pub fn bounds(f: &Figures, rate: f64) -> Vec<Bound> {
    let mut out = Vec::new();
    match f.dead_letters {
        Some(n) => out.push(Bound::new(
            "messages dead-lettered",
            n.to_string(),
            "0".into(),
            n == 0,
        )),
        None => out.push(Bound::new(
            "messages dead-lettered",
            "not read".into(),
            "0".into(),
            false,
        )),
    }
    for (calls, allowed) in abha_outage_calls(f, rate) {
        out.push(Bound::new(
            "ABHA calls during the ABHA-endpoints outage",
            calls.to_string(),
            format!("≤ {allowed}"),
            calls <= allowed,
        ));
    }
    if f.windows
        .iter()
        .any(|w| matches!(w.action, Action::SkewedClock(_)))
    {
        let n = clock_refusals(f);
        let allowed = clock_refusals_allowed(f);
        out.push(Bound::new(
            "calls refused for a skewed clock (ABDM-1016)",
            n.to_string(),
            format!("≤ {allowed}"),
            n <= allowed,
        ));
    }
    for w in &f.windows {
        if let Action::LongRetryAfter(secs) = w.action {
            let (throttled, api) = crate::measure::throttled_between(&f.timeline, w);
            let allowed = secs.div_ceil(LEASE_SECS + 10);
            out.push(Bound::new(
                "throttled after 2 s of a long Retry-After",
                format!("{throttled} of {api}"),
                format!("≤ {allowed} (1 per pause)"),
                throttled <= allowed,
            ));
        }
    }
    for (spent, allowed) in &f.spent_by_waits {
        out.push(Bound::new(
            "attempts spent by a long Retry-After",
            spent.to_string(),
            format!("≤ {allowed} (cut by kills)"),
            spent <= allowed,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox_api::Second;
    use crate::schedule::Window;

    #[test]
    fn outage_calls_are_counted_inside_the_window_only() {
        let sec = |t: u64, api: u64| Second {
            t,
            received: [("api".to_string(), api)].into(),
            answers: Default::default(),
        };
        let f = Figures {
            timeline: vec![
                sec(99, 50),
                sec(100, 40),
                sec(101, 3),
                sec(110, 2),
                sec(111, 50),
            ],
            windows: vec![Window {
                action: Action::AbhaOutage(10),
                start: 100.2,
                end: 110.4,
                cut: 0,
            }],
            ..Figures::default()
        };
        // 100 .. 111 (exclusive): 40 + 3 + 2; allowed 3 s at 10/s + 11 s.
        assert_eq!(abha_outage_calls(&f, 10.0), vec![(45, 41)]);
        let b = bounds(&f, 10.0);
        assert!(!b[0].ok, "a dead-letter depth not read is not a pass");
        assert!(!b[1].ok);
    }

    #[test]
    fn kills_during_a_wait_allow_reclaims() {
        let kill = |start: f64, cut: i64| Window {
            action: Action::KillWorker(0),
            start,
            end: start + 0.2,
            cut,
        };
        let f = Figures {
            windows: vec![kill(90.0, 5), kill(100.0, 3), kill(130.0, 4)],
            ..Figures::default()
        };
        assert_eq!(cut_between(&f, 95.0, 125.0), 3);
    }
}
