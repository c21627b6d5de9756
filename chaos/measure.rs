//! The figures of a run and the bounds they must keep.
//!
//! How each is measured (also in docs/reliability.md):
//! - rows final: jobs in a final state against rows `submit` accepted (Postgres);
//! - side effects done twice: the sandbox's `duplicate_side_effects`;
//! - dead or systemically failed rows: dead jobs, and failed jobs whose last code is not an
//!   answer about the row itself ([`EXPECTED_ROW_CODES`]);
//! - ABDM calls per row: ABHA API requests the sandbox received (`received.api`: every request
//!   but gateway sessions and certificate fetches, which are per process, not per row;
//!   throttled, refused and fault-injected requests included) per job; allowed
//!   `1 + (faults the sandbox injected + calls cut by worker kills) / jobs + 0.5 %`, since each
//!   injected fault or cut call may cost one repeat;
//! - throttled answers: ABDM-1022 answers over ABHA API requests in each storm, after its
//!   first 2 s (the sandbox timeline);
//! - recovery: seconds from a fault's end until jobs finish at ≥ half the rate of the 10 s
//!   before it (3 s windows of Postgres `finished_at`).

use std::collections::BTreeMap;

use crate::db::Progress;
use crate::sandbox_api::{Calls, Second};
use crate::schedule::{Action, Window};

/// Failure codes that are answers about the row itself, not about the system: the chaos data
/// produces none, but they would not mean a systemic fault.
pub const EXPECTED_ROW_CODES: [&str; 2] = ["ABDM-1114", "ABDM-1139"];

/// Seconds at a storm's start during which throttled answers are allowed.
pub const STORM_GRACE_SECS: f64 = 2.0;

/// Everything measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Jobs at the end.
    pub progress: Progress,
    /// Final jobs by (state, last code).
    pub outcomes: Vec<(String, String, i64)>,
    /// Attempts the workers recorded by (operation, disposition).
    pub attempts: Vec<(String, String, i64)>,
    /// The sandbox's call log.
    pub calls: Calls,
    /// Faults as they happened.
    pub windows: Vec<Window>,
    /// Jobs finished per unix second.
    pub finished: BTreeMap<i64, i64>,
    /// The sandbox's per-second traffic.
    pub timeline: Vec<Second>,
    /// Jobs whose call a worker kill cut.
    pub cut_by_kills: i64,
    /// Exits nobody asked for, per process.
    pub unplanned_exits: BTreeMap<String, u32>,
    /// Unix second of the start (the last file submitted).
    pub t0: f64,
    /// Seconds from the start until every job was final (or the run gave up).
    pub elapsed: f64,
    /// The second programme's small batch and reconcile (issue 17).
    pub second: Option<crate::second::Second>,
    /// Messages in the run's dead-letter queue at the end (None: could not be read).
    pub dead_letters: Option<u64>,
    /// Channels RabbitMQ closed for a delivery not acknowledged within `consumer_timeout`.
    pub consumer_timeouts: u64,
    /// Per long-`Retry-After` storm: (attempts it spent, allowed).
    pub spent_by_waits: Vec<(i64, i64)>,
    /// Which release each process ran, as the run ended (and the upgrade steps).
    pub releases: String,
}

/// How fast the rate came back after a fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// Seconds after the fault ended.
    Secs(f64),
    /// Less than 1 job/s before the fault: nothing to compare with.
    NoLoad,
    /// The work ran out before the rate came back.
    WorkDone,
    /// A worker kill during another fault: that fault's recovery is what shows.
    Overlaps(String),
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secs(s) => write!(f, "{s:.0} s"),
            Self::NoLoad => write!(f, "n/a (no load before)"),
            Self::WorkDone => write!(f, "n/a (work ran out)"),
            Self::Overlaps(other) => write!(f, "n/a ({other})"),
        }
    }
}

fn sum(finished: &BTreeMap<i64, i64>, from: i64, to: i64) -> i64 {
    finished.range(from..to).map(|(_, n)| n).sum()
}

/// Jobs per second in the 10 s before `w` started.
pub fn rate_before(finished: &BTreeMap<i64, i64>, w: &Window) -> f64 {
    let s = w.start.floor() as i64;
    sum(finished, s - 10, s) as f64 / 10.0
}

/// Recovery after `w`.
pub fn recovery(finished: &BTreeMap<i64, i64>, w: &Window) -> Recovery {
    let before = rate_before(finished, w);
    if before < 1.0 {
        return Recovery::NoLoad;
    }
    let last = finished.keys().next_back().copied().unwrap_or(0);
    let from = w.end.ceil() as i64;
    let mut t = from;
    while t + 3 <= last + 1 {
        if sum(finished, t, t + 3) as f64 / 3.0 >= before / 2.0 {
            return Recovery::Secs((t as f64 - w.end).max(0.0));
        }
        t += 1;
    }
    Recovery::WorkDone
}

/// Recovery after `w`; a worker kill whose 10 s before or whose recovery meets another fault
/// (not a kill) is not measured: the other fault's dip would be counted as the kill's.
pub fn recovery_of(f: &Figures, w: &Window) -> Recovery {
    let r = recovery(&f.finished, w);
    if !matches!(w.action, Action::KillWorker(_)) {
        return r;
    }
    let until = match r {
        Recovery::Secs(s) => w.end + s + 3.0,
        _ => w.end + 3.0,
    };
    let other = f.windows.iter().find(|o| {
        !matches!(o.action, Action::KillWorker(_)) && o.start < until && o.end > w.start - 10.0
    });
    match other {
        Some(o) => Recovery::Overlaps(o.action.name()),
        None => r,
    }
}

/// Where the ABHA API requests beyond one per job went: (cause, requests).
pub fn extra_calls(f: &Figures) -> Vec<(&'static str, i64)> {
    let answer = |k: &str| f.calls.answers.get(k).copied().unwrap_or(0) as i64;
    let api = f.calls.received.get("api").copied().unwrap_or(0) as i64;
    let throttled = answer("ABDM-1022");
    let refused = answer("900901") + answer("401");
    let clock = answer("ABDM-1016");
    let injected = f.calls.faults.values().sum::<u64>() as i64;
    let cut = f.cut_by_kills;
    let extra = api - f.progress.jobs;
    vec![
        ("throttled (ABDM-1022)", throttled),
        ("refused token (401)", refused),
        ("refused TIMESTAMP (ABDM-1016)", clock),
        ("faults injected", injected),
        ("cut by worker kills (upper bound)", cut),
        (
            "other repeats",
            extra - throttled - refused - clock - injected - cut,
        ),
    ]
}

/// (throttled answers, ABHA API requests) in a storm after its grace period; None for other
/// faults.
/// A long-`Retry-After` storm is bounded apart ([`crate::fault_bounds`]): its waits leave too
/// few calls for a share to mean anything (32 in a 40 s storm at 15/s).
pub fn throttled_after_grace(timeline: &[Second], w: &Window) -> Option<(u64, u64)> {
    if !matches!(w.action, Action::Storm(_)) {
        return None;
    }
    Some(throttled_between(timeline, w))
}

/// (throttled answers, ABHA API requests) in `w` after its first [`STORM_GRACE_SECS`].
pub fn throttled_between(timeline: &[Second], w: &Window) -> (u64, u64) {
    let from = (w.start + STORM_GRACE_SECS).ceil() as u64;
    let to = w.end.floor() as u64;
    let mut throttled = 0;
    let mut api = 0;
    for s in timeline.iter().filter(|s| s.t >= from && s.t < to) {
        throttled += s.answers.get("ABDM-1022").copied().unwrap_or(0);
        api += s.received.get("api").copied().unwrap_or(0);
    }
    (throttled, api)
}

/// One bound and whether it held.
#[derive(Debug, Clone)]
pub struct Bound {
    /// What.
    pub name: String,
    /// Measured.
    pub measured: String,
    /// Allowed.
    pub limit: String,
    /// Held.
    pub ok: bool,
}

impl Bound {
    /// A bound as measured.
    pub fn new(name: &str, measured: String, limit: String, ok: bool) -> Self {
        Self {
            name: name.into(),
            measured,
            limit,
            ok,
        }
    }
}

fn bound(name: &str, measured: String, limit: String, ok: bool) -> Bound {
    Bound::new(name, measured, limit, ok)
}

/// Dead jobs, and failed jobs whose code is not an expected per-row answer.
pub fn systemic(f: &Figures) -> (i64, i64) {
    let dead = f
        .outcomes
        .iter()
        .filter(|(s, _, _)| s == "dead")
        .map(|(_, _, n)| n)
        .sum();
    let failed = f
        .outcomes
        .iter()
        .filter(|(s, c, _)| s == "failed" && !EXPECTED_ROW_CODES.contains(&c.as_str()))
        .map(|(_, _, n)| n)
        .sum();
    (dead, failed)
}

/// Children lists the workers sent: each is the look-first of a child creation whose earlier
/// answer may have been lost (a timeout, a dropped connection or a 5xx, all injected here), so
/// it is that fault's price, like the retry of any other row, and not a call of its own.
pub fn look_first_lists(f: &Figures) -> u64 {
    f.calls.requests.get("child_list").copied().unwrap_or(0)
}

/// (ABHA API requests, jobs, allowed per row): one call per row, plus one per injected fault
/// (a lost child creation's look-first list included), per call cut by a kill, per call
/// refused for a skewed clock (bounded on its own: [`crate::fault_bounds`]), plus 0.5 %.
pub fn calls_per_row(f: &Figures) -> (u64, i64, f64) {
    let api = f.calls.received.get("api").copied().unwrap_or(0);
    let jobs = f.progress.jobs.max(1);
    let injected: u64 = f.calls.faults.values().sum();
    // The second programme's reconcile looks its roster up: calls that are no row's.
    let lookups = f.second.as_ref().map_or(0, |s| s.lookups);
    let allowed = 1.0
        + (injected as f64
            + f.cut_by_kills.max(0) as f64
            + look_first_lists(f) as f64
            + crate::fault_bounds::clock_refusals(f) as f64
            + lookups as f64)
            / jobs as f64
        + 0.005;
    (api, jobs, allowed)
}

/// Every bound of the run.
pub fn bounds(f: &Figures, max_recovery: f64, rate: f64) -> Vec<Bound> {
    let p = f.progress;
    let mut out = vec![bound(
        "rows final (each exactly once)",
        format!("{}/{}", p.done(), p.accepted),
        "all".into(),
        p.open == 0 && p.jobs == p.accepted && p.accepted > 0,
    )];
    let twice: u64 = f.calls.duplicate_side_effects.values().sum();
    out.push(bound(
        "side effects done twice",
        twice.to_string(),
        "0".into(),
        twice == 0,
    ));
    let (dead, failed) = systemic(f);
    out.push(bound(
        "rows dead / failed by a systemic fault",
        format!("{dead} / {failed}"),
        "0 / 0".into(),
        dead == 0 && failed == 0,
    ));
    let (api, jobs, allowed) = calls_per_row(f);
    let per_row = api as f64 / jobs as f64;
    out.push(bound(
        "ABDM calls per row",
        format!("{per_row:.4}"),
        format!("≤ {allowed:.4}"),
        per_row <= allowed,
    ));
    for w in &f.windows {
        if let Some((throttled, api)) = throttled_after_grace(&f.timeline, w) {
            let share = if api == 0 {
                0.0
            } else {
                throttled as f64 / api as f64
            };
            out.push(bound(
                "throttled answers after 2 s of the storm",
                format!("{:.2} % ({throttled}/{api})", share * 100.0),
                "≤ 1 %".into(),
                share <= 0.01,
            ));
        }
    }
    let worst = f
        .windows
        .iter()
        .filter_map(|w| match recovery_of(f, w) {
            Recovery::Secs(s) => Some((s, w.action.name())),
            _ => None,
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((secs, name)) = worst {
        out.push(bound(
            "slowest recovery",
            format!("{secs:.0} s ({name})"),
            format!("≤ {max_recovery:.0} s"),
            secs <= max_recovery,
        ));
    }
    out.extend(crate::fault_bounds::bounds(f, rate));
    if let Some(s) = &f.second {
        let end = s.finished.unwrap_or(f.t0 + f.elapsed);
        let faults: f64 = f
            .windows
            .iter()
            .map(|w| (w.end.min(end) - w.start.max(s.submitted)).max(0.0))
            .sum();
        let allowed = crate::second::allowed_secs(s, rate, faults, max_recovery);
        let took = end - s.submitted;
        out.push(bound(
            "small programme's batch (weight 1 of 4) final",
            format!("{took:.0} s ({} rows)", s.rows),
            format!("≤ {allowed:.0} s (fair share + {faults:.0} s of faults + recovery)"),
            s.finished.is_some() && took <= allowed,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(action: Action, start: f64, end: f64) -> Window {
        Window {
            action,
            start,
            end,
            cut: 0,
        }
    }

    #[test]
    fn recovery_is_the_first_3s_window_at_half_the_rate_before() {
        // 10 jobs/s until 100, nothing until 110, 2/s until 115, 6/s after.
        let mut f = BTreeMap::new();
        for t in 80..100 {
            f.insert(t, 10);
        }
        for t in 110..115 {
            f.insert(t, 2);
        }
        for t in 115..130 {
            f.insert(t, 6);
        }
        let r = recovery(&f, &w(Action::Outage(10), 100.0, 108.5));
        // Half the rate before is 5/s: the window from 114 averages (2+6+6)/3 < 5, the one
        // from 115 averages 6.
        assert_eq!(r, Recovery::Secs(115.0 - 108.5));
        assert_eq!(
            recovery(&f, &w(Action::KillRelay, 50.0, 51.0)),
            Recovery::NoLoad
        );
        assert_eq!(
            recovery(&f, &w(Action::KillRelay, 129.0, 129.5)),
            Recovery::WorkDone
        );
    }

    #[test]
    fn throttling_counts_only_after_the_grace_period() {
        let sec = |t: u64, api: u64, throttled: u64| Second {
            t,
            received: [("api".to_string(), api)].into(),
            answers: [("ABDM-1022".to_string(), throttled)].into(),
        };
        let tl = vec![
            sec(100, 50, 30),
            sec(101, 50, 20),
            sec(102, 40, 1),
            sec(103, 40, 0),
        ];
        let storm = w(Action::Storm(4), 100.0, 104.3);
        assert_eq!(throttled_after_grace(&tl, &storm), Some((1, 80)));
        assert_eq!(
            throttled_after_grace(&tl, &w(Action::KillRelay, 100.0, 101.0)),
            None
        );
    }
}

#[cfg(test)]
mod overlap_tests {
    use super::*;

    #[test]
    fn a_kill_during_an_outage_is_not_measured_as_the_kill() {
        let mut finished = BTreeMap::new();
        for t in 80..100 {
            finished.insert(t, 10);
        }
        for t in 160..200 {
            finished.insert(t, 10);
        }
        let outage = Window {
            action: Action::Outage(60),
            start: 100.0,
            end: 160.0,
            cut: 0,
        };
        let kill = Window {
            action: Action::KillWorker(0),
            start: 100.0,
            end: 100.2,
            cut: 0,
        };
        let lone = Window {
            action: Action::KillWorker(1),
            start: 185.0,
            end: 185.2,
            cut: 0,
        };
        let f = Figures {
            finished,
            windows: vec![outage.clone(), kill.clone(), lone.clone()],
            ..Figures::default()
        };
        assert!(matches!(recovery_of(&f, &kill), Recovery::Overlaps(_)));
        assert_eq!(recovery_of(&f, &outage), Recovery::Secs(0.0));
        match recovery_of(&f, &lone) {
            Recovery::Secs(s) => assert!((s - 0.8).abs() < 1e-9),
            other => panic!("a lone kill is measured: {other:?}"),
        }
    }
}
