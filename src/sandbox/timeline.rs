//! A per-second record of what the sandbox received and answered (`GET /sandbox/timeline`).
//!
//! The call log's totals say how much happened, not when; the chaos run needs *when*: the
//! throttled answers after the first two seconds of a throttling storm, the traffic during an
//! outage, how fast a worker fleet picks up after a fault. Plots of a run (issue 10) read the
//! same series. Seconds without traffic are left out (the series is sparse); it keeps the last
//! [`KEPT_SECONDS`] seconds that had traffic, so a sandbox left running never grows without
//! bound.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Seconds with traffic kept (a day).
pub const KEPT_SECONDS: usize = 86_400;

/// One second of traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Unix time, whole seconds (UTC).
    pub t: u64,
    /// Requests received, by class: `session` (gateway sessions), `certificate` (public key)
    /// and `api` (every other ABHA API request, whatever its answer: throttled, refused and
    /// fault-injected ones included).
    pub received: BTreeMap<String, u64>,
    /// Answers to ABHA API requests by ABDM code (`ABDM-1022`, `900901`, ...), `ok`, `401` or
    /// `validation`, as in `GET /sandbox/calls`.
    pub answers: BTreeMap<String, u64>,
    /// Answers to session requests: `ok` or `900901`.
    pub session_answers: BTreeMap<String, u64>,
    /// Faults injected, by kind (`5xx`, `timeout`, `drop`, `scripted`).
    pub faults: BTreeMap<String, u64>,
}

/// What is counted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event<'a> {
    Received(&'a str),
    Answer(&'a str),
    SessionAnswer(&'a str),
    Fault(&'a str),
}

/// The seconds, oldest first.
#[derive(Debug, Default)]
pub struct Timeline {
    seconds: VecDeque<Second>,
}

impl Timeline {
    /// Counts `event` in second `t`. A clock that steps back counts into the latest second
    /// rather than reordering the series.
    pub(crate) fn record(&mut self, t: u64, event: Event<'_>) {
        let needs_new = self.seconds.back().is_none_or(|s| s.t < t);
        if needs_new {
            if self.seconds.len() >= KEPT_SECONDS {
                self.seconds.pop_front();
            }
            self.seconds.push_back(Second {
                t,
                ..Second::default()
            });
        }
        let s = self.seconds.back_mut().expect("just ensured");
        let (map, key) = match event {
            Event::Received(k) => (&mut s.received, k),
            Event::Answer(k) => (&mut s.answers, k),
            Event::SessionAnswer(k) => (&mut s.session_answers, k),
            Event::Fault(k) => (&mut s.faults, k),
        };
        *map.entry(key.to_string()).or_default() += 1;
    }

    /// The seconds at or after `since` (unix seconds), oldest first.
    pub fn since(&self, since: u64) -> Vec<Second> {
        let start = self.seconds.partition_point(|s| s.t < since);
        self.seconds.range(start..).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_second_and_filters_by_start() {
        let mut t = Timeline::default();
        t.record(10, Event::Received("api"));
        t.record(10, Event::Answer("ok"));
        t.record(12, Event::Received("api"));
        t.record(12, Event::Answer("ABDM-1022"));
        t.record(11, Event::Fault("5xx")); // clock stepped back: counted in second 12
        let all = t.since(0);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].received["api"], 1);
        assert_eq!(all[1].answers["ABDM-1022"], 1);
        assert_eq!(all[1].faults["5xx"], 1);
        assert_eq!(t.since(11).len(), 1);
        assert!(t.since(13).is_empty());
    }
}
