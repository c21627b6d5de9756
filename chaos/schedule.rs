//! The faults and when they happen (how each is done: [`crate::inject`]).
//!
//! Times are seconds after the last file was submitted. Faults of the plan run one after the
//! other (none overlaps another), except the full run's worker kills every 10 s, which run
//! beside them as in a cluster whose pods keep being rescheduled. Every fault is recorded as a
//! [`Window`] (from its start to the moment it was undone) for the recovery figures.

/// The lease the run's workers hold (`worker.lease_secs`): short, so a killed worker's jobs
/// come back within the run; the long faults are sized against it.
pub const LEASE_SECS: u64 = 15;
/// The run's RabbitMQ `consumer_timeout` when the plan has [`Action::PastConsumerTimeout`].
pub const CONSUMER_TIMEOUT_MS: u64 = 20_000;
/// The clock offset of the skewed replica ([`Action::SkewedClock`]): 10 minutes, twice the
/// sandbox's `TIMESTAMP` tolerance of 5 minutes.
pub const CLOCK_OFFSET_SECS: i64 = 600;

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `kill -9` worker i (0-based), started again at once.
    KillWorker(usize),
    /// `kill -9` the relay, started again at once.
    KillRelay,
    /// Stop and start the RabbitMQ node.
    RestartRabbit,
    /// `pg_ctl restart`.
    RestartPostgres,
    /// ABDM refuses connections for this many seconds.
    Outage(u64),
    /// The sandbox refuses the workers' client secret for this many seconds.
    WrongSecret(u64),
    /// The sandbox's rate limit is halved for this many seconds.
    Storm(u64),
    /// The ABHA endpoints answer 500 for this many seconds; sessions and the certificate are
    /// fine (the partial outage a session probe cannot see).
    AbhaOutage(u64),
    /// Half the ABHA calls answer 500 for this many seconds.
    HalfErrors(u64),
    /// Worker 1 runs with its `TIMESTAMP` clock [`CLOCK_OFFSET_SECS`] ahead for this many
    /// seconds (restarted with the offset, then restarted without it).
    SkewedClock(u64),
    /// Postgres stopped for this many seconds (longer than the lease).
    PostgresDown(u64),
    /// Postgres stopped for this many seconds, longer than the broker's lowered
    /// `consumer_timeout` ([`CONSUMER_TIMEOUT_MS`]): a worker that holds its messages
    /// until Postgres is back has its channel closed by RabbitMQ.
    PastConsumerTimeout(u64),
    /// The rate limit halved with a `Retry-After` of the lease + 10 s, for this many seconds.
    LongRetryAfter(u64),
    /// `migrate` of the new release while the previous release's processes run.
    Migrate,
    /// Worker i (0-based) replaced by the new release (stopped with SIGTERM, started new).
    UpgradeWorker(usize),
    /// The relay replaced by the new release.
    UpgradeRelay,
}

/// Names `--only` accepts, each with the fault it selects (durations: the plan's).
pub const FAULT_IDS: [&str; 14] = [
    "worker-kill",
    "relay-kill",
    "rabbit-restart",
    "postgres-restart",
    "outage",
    "wrong-secret",
    "storm",
    "abha-outage",
    "half-errors",
    "skewed-clock",
    "postgres-down",
    "consumer-timeout",
    "long-retry-after",
    "upgrade",
];

impl Action {
    /// Name in the figures.
    pub fn name(&self) -> String {
        match self {
            Self::KillWorker(i) => format!("kill -9 worker-{}", i + 1),
            Self::KillRelay => "kill -9 relay".into(),
            Self::RestartRabbit => "RabbitMQ restart".into(),
            Self::RestartPostgres => "Postgres restart".into(),
            Self::Outage(s) => format!("ABDM outage {s} s"),
            Self::WrongSecret(s) => format!("wrong secret {s} s"),
            Self::Storm(s) => format!("throttling storm {s} s"),
            Self::AbhaOutage(s) => format!("ABHA endpoints 5xx {s} s"),
            Self::HalfErrors(s) => format!("50 % 5xx {s} s"),
            Self::SkewedClock(s) => format!("clock +10 min worker-1 {s} s"),
            Self::PostgresDown(s) => format!("Postgres down {s} s"),
            Self::PastConsumerTimeout(s) => format!("Postgres down {s} s > ack timeout"),
            Self::LongRetryAfter(s) => format!("storm, Retry-After 25 s, {s} s"),
            Self::Migrate => "migrate (new release)".into(),
            Self::UpgradeWorker(i) => format!("upgrade worker-{}", i + 1),
            Self::UpgradeRelay => "upgrade relay".into(),
        }
    }

    /// The `--only` name of this fault.
    pub fn id(&self) -> &'static str {
        match self {
            Self::KillWorker(_) => "worker-kill",
            Self::KillRelay => "relay-kill",
            Self::RestartRabbit => "rabbit-restart",
            Self::RestartPostgres => "postgres-restart",
            Self::Outage(_) => "outage",
            Self::WrongSecret(_) => "wrong-secret",
            Self::Storm(_) => "storm",
            Self::AbhaOutage(_) => "abha-outage",
            Self::HalfErrors(_) => "half-errors",
            Self::SkewedClock(_) => "skewed-clock",
            Self::PostgresDown(_) => "postgres-down",
            Self::PastConsumerTimeout(_) => "consumer-timeout",
            Self::LongRetryAfter(_) => "long-retry-after",
            Self::Migrate | Self::UpgradeWorker(_) | Self::UpgradeRelay => "upgrade",
        }
    }

    /// Seconds the fault lasts when planned (the schedule spaces faults by it).
    pub fn lasts(&self) -> u64 {
        match self {
            Self::Outage(s)
            | Self::WrongSecret(s)
            | Self::Storm(s)
            | Self::AbhaOutage(s)
            | Self::HalfErrors(s)
            | Self::SkewedClock(s)
            | Self::PostgresDown(s)
            | Self::PastConsumerTimeout(s)
            | Self::LongRetryAfter(s) => *s,
            // A node stop takes several seconds.
            Self::RestartRabbit => 8,
            // A graceful stop (grace period 5 s) and a start.
            Self::UpgradeWorker(_) => 8,
            Self::Migrate | Self::UpgradeRelay => 3,
            Self::KillWorker(_) | Self::KillRelay | Self::RestartPostgres => 1,
        }
    }

    /// True for the steps of a rolling upgrade (not faults: their windows are shown, but a
    /// recovery after them is not a bound).
    pub fn is_upgrade(&self) -> bool {
        matches!(
            self,
            Self::Migrate | Self::UpgradeWorker(_) | Self::UpgradeRelay
        )
    }
}

/// The schedule of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// (seconds after the start, fault), in time order.
    pub steps: Vec<(u64, Action)>,
    /// Kill -9 a worker (in turn) this often until the last step has ended.
    pub kill_every: Option<u64>,
}

impl Plan {
    /// `--short`: each fault once, within 140 s (the work lasts about 190 s at 30/s, so every
    /// fault hits a busy pipeline). The storm starts 27 s after the wrong secret ends: the
    /// breaker's probe backs off, so that recovery takes 5 to 24 s, and a storm that begins
    /// while the breaker is still open measures a cold start, not convergence. The storm lasts
    /// 30 s, not 15: AIMD has to probe for the halved limit once, and a probe that finds it
    /// costs the two or three calls then in flight; over 13 s at 15/s (about 190 calls) that
    /// alone is 1 %, so a 15 s storm could not tell a converged rate from a sawing one (CI saw
    /// 2 of 191 on a run that had converged). The faults of issue 18 are in the full run only:
    /// each lasts 30 s or more, and CI's budget is about 3 minutes.
    pub fn short() -> Self {
        Self {
            steps: vec![
                (6, Action::KillWorker(0)),
                (12, Action::KillRelay),
                // A node stop takes about 10 s and drops the connections at its end: the
                // Postgres restart comes 10 s after that, and the outage 12 s after it, so each
                // recovery is measured on its own.
                (16, Action::RestartRabbit),
                (36, Action::RestartPostgres),
                (48, Action::Outage(15)),
                (73, Action::WrongSecret(10)),
                (110, Action::Storm(30)),
            ],
            kill_every: None,
        }
    }

    /// The full run: a worker killed every 10 s throughout, a 60 s outage, then the long and
    /// partial faults of issue 18, each 20 to 25 s after the previous one ended (recovery is
    /// measured on its own). The work (20 000 rows) lasts about 13 minutes at 50/s with them,
    /// so the last fault (t+640..680) still meets a busy pipeline.
    pub fn full() -> Self {
        Self {
            steps: vec![
                (25, Action::KillRelay),
                (45, Action::RestartRabbit),
                (75, Action::RestartPostgres),
                (100, Action::Outage(60)),
                (190, Action::WrongSecret(20)),
                (235, Action::Storm(30)),
                (280, Action::KillRelay),
                (300, Action::AbhaOutage(45)),
                (370, Action::HalfErrors(60)),
                (450, Action::SkewedClock(40)),
                (515, Action::PostgresDown(LEASE_SECS + 20)),
                (575, Action::PastConsumerTimeout(40)),
                (640, Action::LongRetryAfter(40)),
            ],
            kill_every: Some(10),
        }
    }

    /// `--only`: the faults of `base` named in `ids` (each once, the first of its kind),
    /// at t+6 and then each 20 s after the previous ended; no kill loop. `upgrade` selects the
    /// rolling upgrade ([`Plan::with_upgrade`] adds it).
    pub fn only(base: &Plan, ids: &[String]) -> Self {
        let mut steps = Vec::new();
        let mut at = 6;
        let mut seen = Vec::new();
        let actions = base.steps.iter().map(|(_, a)| a);
        for a in actions.chain(std::iter::once(&Action::KillWorker(0))) {
            if a.is_upgrade() || !ids.iter().any(|i| i == a.id()) || seen.contains(&a.id()) {
                continue;
            }
            seen.push(a.id());
            steps.push((at, *a));
            at += a.lasts() + 20;
        }
        Self {
            steps,
            kill_every: None,
        }
    }

    /// The plan with a rolling upgrade from the previous release: `migrate` of the new release
    /// at t+5, then worker 1, worker 2, worker 3 and the relay replaced one by one, in the
    /// gaps between the first faults (the previous release rides out the relay kill and, for
    /// two workers and the relay, the RabbitMQ restart; the new release, beside it, too).
    pub fn with_upgrade(mut self, workers: usize) -> Self {
        let mut upgrade = vec![(5, Action::Migrate)];
        // The full plan's first faults are at 25 (relay kill), 45 (RabbitMQ, ~10 s) and 75:
        // the upgrade steps fit between them.
        let slots: &[u64] = if self.steps.first().is_some_and(|(at, _)| *at >= 25) {
            &[12, 33, 58, 68]
        } else {
            &[]
        };
        let times: Vec<u64> = if slots.len() > workers {
            slots.to_vec()
        } else {
            (0..=workers as u64).map(|k| 12 + 11 * k).collect()
        };
        for (i, at) in times.iter().take(workers).enumerate() {
            upgrade.push((*at, Action::UpgradeWorker(i)));
        }
        upgrade.push((times[workers], Action::UpgradeRelay));
        if slots.len() <= workers {
            // A custom plan (`--only`): its faults move after the upgrade.
            let shift = times[workers] + 10;
            for (at, _) in &mut self.steps {
                *at += shift;
            }
        }
        self.steps.extend(upgrade);
        self.steps.sort_by_key(|(at, _)| *at);
        self
    }

    /// True when a step is `a` (by kind).
    pub fn has(&self, id: &str) -> bool {
        self.steps.iter().any(|(_, a)| a.id() == id)
    }

    /// Seconds after the start when the last fault has ended (planned).
    pub fn end(&self) -> u64 {
        self.steps
            .iter()
            .map(|(at, a)| {
                at + match a {
                    Action::KillWorker(_)
                    | Action::KillRelay
                    | Action::RestartRabbit
                    | Action::RestartPostgres => 0,
                    _ => a.lasts(),
                }
            })
            .max()
            .unwrap_or(0)
    }
}

/// A fault as it happened (unix seconds).
#[derive(Debug, Clone)]
pub struct Window {
    /// What.
    pub action: Action,
    /// When it began.
    pub start: f64,
    /// When it was undone (process ready again, server back, switch restored).
    pub end: f64,
    /// For a worker kill: the jobs the killed worker still held (calls it may have cut).
    pub cut: i64,
}

/// Now, unix seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_no_overlap(plan: &Plan) {
        let mut free_from = 0;
        for (at, a) in &plan.steps {
            assert!(
                *at >= free_from,
                "{} starts at {at}, before the previous fault ended ({free_from})",
                a.name()
            );
            free_from = at + a.lasts();
        }
    }

    #[test]
    fn plans_are_in_time_order_and_faults_do_not_overlap() {
        for plan in [
            Plan::short(),
            Plan::full(),
            Plan::full().with_upgrade(3),
            Plan::only(&Plan::full(), &["skewed-clock".into(), "storm".into()]).with_upgrade(3),
        ] {
            assert_no_overlap(&plan);
        }
        assert_eq!(Plan::short().end(), 140);
        assert_eq!(Plan::full().end(), 680);
        let short = Plan::short();
        for kind in [
            "kill -9 worker",
            "relay",
            "RabbitMQ",
            "Postgres",
            "outage",
            "secret",
            "storm",
        ] {
            assert_eq!(
                short
                    .steps
                    .iter()
                    .filter(|(_, a)| a.name().contains(kind))
                    .count(),
                1,
                "short mode runs each fault once: {kind}"
            );
        }
    }

    #[test]
    fn the_full_plan_has_every_fault_and_the_long_ones_outlast_what_they_must() {
        let full = Plan::full();
        for id in FAULT_IDS {
            if id != "worker-kill" && id != "upgrade" {
                assert!(full.has(id), "the full plan lacks {id}");
            }
        }
        for (_, a) in &full.steps {
            match a {
                Action::PostgresDown(s) => assert!(*s > LEASE_SECS, "longer than the lease"),
                Action::PastConsumerTimeout(s) => {
                    // The broker checks on its channel tick (1 s here): well past the timeout.
                    assert!(*s * 1000 >= CONSUMER_TIMEOUT_MS + 10_000)
                }
                _ => {}
            }
        }
        let upgraded = Plan::full().with_upgrade(3);
        let steps: Vec<Action> = upgraded.steps.iter().map(|(_, a)| *a).collect();
        let migrate = steps.iter().position(|a| *a == Action::Migrate).unwrap();
        let first = steps
            .iter()
            .position(|a| matches!(a, Action::UpgradeWorker(_)))
            .unwrap();
        assert!(migrate < first, "the schema moves before any new process");
        assert!(steps.contains(&Action::UpgradeRelay));
        // The upgrade is over before the first long fault.
        let done = upgraded
            .steps
            .iter()
            .filter(|(_, a)| a.is_upgrade())
            .map(|(at, a)| at + a.lasts())
            .max()
            .unwrap();
        assert!(done < 100);
    }

    #[test]
    fn only_picks_the_named_faults_in_plan_order() {
        let p = Plan::only(
            &Plan::full(),
            &["postgres-down".into(), "worker-kill".into()],
        );
        let names: Vec<String> = p.steps.iter().map(|(_, a)| a.id().to_string()).collect();
        assert_eq!(names, ["postgres-down", "worker-kill"]);
        assert_eq!(p.steps[0].0, 6);
        assert_eq!(p.steps[1].0, 6 + LEASE_SECS + 20 + 20);
        assert!(p.kill_every.is_none());
    }
}
