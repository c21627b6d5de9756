//! Logs (tracing, human or JSON) and the Prometheus metrics registry.
//!
//! Nothing here takes an identifier: log fields and metric labels are job ids, kinds,
//! endpoints, codes and counts. Identifiers reach log lines only through the masked `Display`
//! of the [`crate::pii`] types.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::TelemetrySettings;

/// Installs the global subscriber: human-readable on a terminal (or `human`), JSON lines
/// otherwise (or `json`). `RUST_LOG` overrides `telemetry.log_filter`. Logs go to stderr so
/// that command output on stdout stays clean.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log_filter.clone()));
    let json = match settings.log_format.as_str() {
        "json" => true,
        "human" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}

/// The Prometheus registry and the helpers that record into it.
pub mod metrics {
    use std::sync::LazyLock;
    use std::time::Duration;

    use prometheus::{
        Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
    };

    /// The process-wide registry served at `/metrics`.
    pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

    fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
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
}
