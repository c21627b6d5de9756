//! The Prometheus registry and the helpers that record into it.

mod faults;

pub use faults::*;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// Every metric abha-bulk exports (the names of DESIGN.md; dashboards and alerts use these).
pub const NAMES: &[&str] = &[
    "abha_jobs_total",
    "abha_job_duration_seconds",
    "abha_abdm_requests_total",
    "abha_abdm_request_duration_seconds",
    "abha_ratelimit_wait_seconds",
    "abha_ratelimit_rate",
    "abha_ratelimit_configured_rate",
    "abha_retries_total",
    "abha_jobs_in_flight",
    "abha_outbox_pending",
    "abha_outbox_lag_seconds",
    "abha_batch_rows",
    "abha_session_refresh_total",
    "abha_queue_messages",
    "abha_scheduler_published_total",
    "abha_scheduler_share",
    "abha_broker_target_messages",
    "abha_reconcile_last_run_timestamp_seconds",
    "abha_reconcile_drift",
    "abha_reconcile_errors",
    "abha_abdm_circuit_open",
    "abha_retention_erased_total",
    "abha_retention_oldest_unerased_seconds",
    "abha_retention_overdue_seconds",
    "abha_abdm_circuit_probes_total",
    "abha_abdm_clock_rejected_total",
    "abha_abdm_clock_hold",
    "abha_abdm_failure_ratio",
    "abha_ratelimit_stale_tokens_total",
    "abha_api_auth_failures_total",
    "abha_webhook_deliveries_total",
    "abha_build_info",
    "abha_ratelimit_expired_tokens_total",
    "abha_lease_kept_total",
    "abha_worker_holds_released_total",
    "abha_outbox_republished_total",
    "abha_unknown_envelopes_total",
    "abha_pii_key_stale",
];

/// The process-wide registry served at `/metrics`.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// A counter without labels, registered.
fn plain_counter(name: &str, help: &str) -> prometheus::IntCounter {
    let c = prometheus::IntCounter::new(name, help).expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    REGISTRY
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

/// `abha_abdm_requests_total{endpoint,status,code}`.
pub static ABDM_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "abha_abdm_requests_total",
        "HTTP attempts to ABDM by endpoint, HTTP status and ABDM code",
        &["endpoint", "status", "code"],
    )
});

/// `abha_abdm_request_duration_seconds{endpoint}`.
pub static ABDM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "abha_abdm_request_duration_seconds",
        "Time from sending an ABDM request to its answer",
        &["endpoint"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ],
    )
});

/// `abha_session_refresh_total{result}`.
pub static SESSION_REFRESH: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "abha_session_refresh_total",
        "Gateway session requests by result (ok, error) and forced refreshes after a 401",
        &["result"],
    )
});

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn gauge(name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// `abha_jobs_total{kind,outcome}`: jobs reaching a state (succeeded, failed, dead,
/// retrying, cancelled).
pub static JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "abha_jobs_total",
        "Job outcomes by kind: succeeded, failed, dead, retrying",
        &["kind", "outcome"],
    )
});

/// `abha_job_duration_seconds{kind}`: accepted → finished.
pub static JOB_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "abha_job_duration_seconds",
        "Time from a job being accepted to its final state",
        &["kind"],
        vec![
            0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
        ],
    )
});

/// `abha_retries_total{kind,reason}`.
pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "abha_retries_total",
        "Retries scheduled by kind and reason (transient, throttled, auth, lease_expired)",
        &["kind", "reason"],
    )
});

/// `abha_ratelimit_wait_seconds`.
pub static RATELIMIT_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "abha_ratelimit_wait_seconds",
            "Time an ABDM call waited for the rate limiter",
        )
        .buckets(vec![0.0005, 0.005, 0.05, 0.25, 1.0, 5.0, 30.0]),
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
});

/// `abha_ratelimit_rate`: the effective calls/s after adaptive slow-downs.
pub static RATELIMIT_RATE: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_ratelimit_rate",
        "Effective ABDM calls per second allowed now",
    )
});

/// `abha_ratelimit_configured_rate`.
pub static RATELIMIT_CONFIGURED: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_ratelimit_configured_rate",
        "Configured ABDM calls per second (worker.rate_per_second)",
    )
});

/// `abha_jobs_in_flight`.
pub static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::new("abha_jobs_in_flight", "Jobs being worked on now").expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
});

/// `abha_outbox_pending`.
pub static OUTBOX_PENDING: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_outbox_pending",
        "Jobs in the outbox not yet published, due now or later (a submitted batch still being published counts the ids left in its range, an upper bound)",
    )
});

/// `abha_outbox_lag_seconds`.
pub static OUTBOX_LAG: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_outbox_lag_seconds",
        "Age of the oldest due outbox row not yet published",
    )
});

/// `abha_batch_rows{batch_state}`.
pub static BATCH_ROWS: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "abha_batch_rows",
        "Rows of active batches by job state",
        &["batch_state"],
    )
});

/// `abha_queue_messages{queue}`.
pub static QUEUE_MESSAGES: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "abha_queue_messages",
        "Ready messages per RabbitMQ queue (the dead-letter queue included)",
        &["queue"],
    )
});

/// `abha_scheduler_published_total{programme}`: messages the fair scheduler handed to
/// RabbitMQ per programme (its rate is the programme's rate: RabbitMQ holds only about
/// a second of work). Programme names are few and not personal.
pub static SCHED_PUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "abha_scheduler_published_total",
        "Messages the fair scheduler published per programme (benefit name)",
        &["programme"],
    )
});

/// `abha_scheduler_share{programme}`.
pub static SCHED_SHARE: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "abha_scheduler_share",
        "Fraction of the published messages that went to each programme over the last few seconds",
        &["programme"],
    )
});

/// `abha_broker_target_messages`.
pub static BROKER_TARGET: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_broker_target_messages",
        "Ready messages the scheduling relay keeps in the work queue (the fleet's rate times relay.broker_horizon_ms, within relay.broker_min..broker_max)",
    )
});

/// `abha_reconcile_last_run_timestamp_seconds{benefit}`.
pub static RECONCILE_LAST_RUN: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "abha_reconcile_last_run_timestamp_seconds",
        "When the last reconciliation of a benefit finished (Unix time)",
        &["benefit"],
    )
});

/// `abha_reconcile_drift{benefit,class}`.
pub static RECONCILE_DRIFT: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "abha_reconcile_drift",
        "Drift found by the last reconciliation (distinct ABHA numbers): missing_link, unexpected_link, unknown; NaN: not checked",
        &["benefit", "class"],
    )
});

/// `abha_reconcile_errors{benefit,source}`: kept apart from the drift, and from each
/// other, so an alert on ABDM trouble does not fire on a malformed roster.
pub static RECONCILE_ERRORS: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "abha_reconcile_errors",
        "Rows the last reconciliation could not check: source=roster (invalid roster rows), source=abdm (lookups ABDM answered with an error)",
        &["benefit", "source"],
    )
});

/// `abha_api_auth_failures_total{surface,reason}`: failed authentications of the programme
/// API (`surface="api"`) and the console sign-in (`surface="console"`); `reason` is
/// `missing`, `unknown`, `revoked` or `throttled` (refused with 429 before any check).
pub static AUTH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "abha_api_auth_failures_total",
        "Failed authentications of the programme API and console by surface and reason",
        &["surface", "reason"],
    )
});

/// `abha_webhook_deliveries_total{result}`: webhook delivery attempts by result
/// (`delivered`, `failed`, `timeout`, `refused`: a destination the operator did not allow).
pub static WEBHOOK_DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "abha_webhook_deliveries_total",
        "Webhook delivery attempts by result",
        &["result"],
    )
});

/// `abha_retention_erased_total{table}`.
pub static RETENTION_ERASED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "abha_retention_erased_total",
        "Rows erased (jobs: identifiers erased by retention or request) or purged (other tables) by the data lifecycle",
        &["table"],
    )
});

/// `abha_retention_oldest_unerased_seconds`.
pub static RETENTION_OLDEST: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_retention_oldest_unerased_seconds",
        "Age of the oldest finished batch whose identifiers are not yet erased (0: none)",
    )
});

/// `abha_retention_overdue_seconds`.
pub static RETENTION_OVERDUE: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "abha_retention_overdue_seconds",
        "How long past its programme's retention the most overdue unerased batch is (0: none)",
    )
});

/// `abha_build_info{version,commit}`: always 1; the labels say which build this replica
/// runs, so `count by (version, commit) (abha_build_info)` shows a rolling deploy's mix.
pub static BUILD_INFO: LazyLock<GaugeVec> = LazyLock::new(|| {
    let g = gauge_vec(
        "abha_build_info",
        "Always 1: the release and commit this process was built from",
        &["version", "commit"],
    );
    g.with_label_values(&[super::build::VERSION, super::build::COMMIT])
        .set(1.0);
    g
});

/// Touches every metric so that `/metrics` lists them all from the start. `kinds` are the
/// job kind labels: the caller passes them so that telemetry, which everything uses, does
/// not depend on the jobs registry.
pub fn register_all(kinds: &[&str]) {
    LazyLock::force(&BUILD_INFO);
    LazyLock::force(&CIRCUIT_OPEN);
    LazyLock::force(&CIRCUIT_PROBES);
    LazyLock::force(&CLOCK_REJECTED);
    LazyLock::force(&CLOCK_HOLD);
    LazyLock::force(&FAILURE_RATIO);
    LazyLock::force(&RATELIMIT_STALE);
    LazyLock::force(&LEASE_KEPT);
    LazyLock::force(&HOLDS_RELEASED);
    LazyLock::force(&REPUBLISHED);
    LazyLock::force(&RATELIMIT_EXPIRED);
    LazyLock::force(&PII_KEY_STALE);
    LazyLock::force(&ABDM_REQUESTS);
    LazyLock::force(&ABDM_DURATION);
    LazyLock::force(&SESSION_REFRESH);
    LazyLock::force(&JOBS);
    LazyLock::force(&JOB_DURATION);
    LazyLock::force(&RETRIES);
    LazyLock::force(&RATELIMIT_WAIT);
    LazyLock::force(&RATELIMIT_RATE);
    LazyLock::force(&RATELIMIT_CONFIGURED);
    LazyLock::force(&IN_FLIGHT);
    LazyLock::force(&OUTBOX_PENDING);
    LazyLock::force(&OUTBOX_LAG);
    LazyLock::force(&BATCH_ROWS);
    LazyLock::force(&QUEUE_MESSAGES);
    LazyLock::force(&SCHED_PUBLISHED);
    LazyLock::force(&SCHED_SHARE);
    LazyLock::force(&BROKER_TARGET);
    LazyLock::force(&RECONCILE_LAST_RUN);
    LazyLock::force(&RECONCILE_DRIFT);
    for surface in ["api", "console"] {
        for reason in ["missing", "unknown", "revoked", "throttled"] {
            AUTH_FAILURES.with_label_values(&[surface, reason]);
        }
    }
    for action in ["requeued", "left_to_postgres", "dead_lettered"] {
        UNKNOWN_ENVELOPES.with_label_values(&[action]);
    }
    for result in ["delivered", "failed", "timeout", "refused"] {
        WEBHOOK_DELIVERIES.with_label_values(&[result]);
    }
    LazyLock::force(&RETENTION_OLDEST);
    LazyLock::force(&RETENTION_OVERDUE);
    for table in [
        "jobs",
        "jobs_deleted",
        "attempts",
        "webhook_deliveries",
        "api_idempotency",
        "api_idempotency_running",
        "outbox",
        "reveal_audit",
        "erasure_log",
    ] {
        RETENTION_ERASED.with_label_values(&[table]);
    }
    LazyLock::force(&RECONCILE_ERRORS);
    // Known label values start at 0, so rates and alerts see a series from the start.
    for kind in kinds {
        for outcome in ["succeeded", "failed", "dead", "retrying", "cancelled"] {
            JOBS.with_label_values(&[kind, outcome]);
        }
        for reason in ["transient", "throttled", "auth"] {
            RETRIES.with_label_values(&[kind, reason]);
        }
    }
    RETRIES.with_label_values(&["any", "lease_expired"]);
    for envelope in ["stored", "producer"] {
        HOLDS_RELEASED.with_label_values(&[envelope]);
    }
    for result in ["ok", "error", "after_401"] {
        SESSION_REFRESH.with_label_values(&[result]);
    }
}

/// Records one ABDM HTTP attempt.
pub fn observe_abdm_request(
    endpoint: &str,
    status: Option<u16>,
    code: Option<&str>,
    duration: Duration,
) {
    let status = status.map_or_else(|| "none".to_string(), |s| s.to_string());
    ABDM_REQUESTS
        .with_label_values(&[endpoint, status.as_str(), code.unwrap_or("")])
        .inc();
    ABDM_DURATION
        .with_label_values(&[endpoint])
        .observe(duration.as_secs_f64());
    if endpoint == "session" {
        let result = if code.is_none() { "ok" } else { "error" };
        SESSION_REFRESH.with_label_values(&[result]).inc();
    }
}

/// Counts a refresh forced by a 401 from ABDM.
pub fn session_refresh_after_401() {
    SESSION_REFRESH.with_label_values(&["after_401"]).inc();
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("prometheus text is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_names_this_build() {
        register_all(&[]);
        let want = format!(
            "abha_build_info{{commit=\"{}\",version=\"{}\"}} 1\n",
            crate::telemetry::build::COMMIT,
            crate::telemetry::build::VERSION
        );
        let text = render();
        assert!(text.contains(&want), "{want:?} not in /metrics:\n{text}");
    }
}
