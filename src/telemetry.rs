//! Logs (tracing, human or JSON) and the Prometheus metrics registry.
//!
//! Nothing here takes an identifier: log fields and metric labels are job ids, kinds,
//! endpoints, codes and counts. Identifiers reach log lines only through the masked `Display`
//! of the [`crate::pii`] types.

use std::io::IsTerminal;

pub mod build;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetrySettings};

/// HTTP client crates log request URLs at debug level, and an ABDM lookup URL carries an ABHA
/// number: these targets are capped at `info` whatever `RUST_LOG` says.
const CAPPED_TARGETS: &[&str] = &["reqwest", "hyper", "hyper_util", "h2"];

/// The log filter: `RUST_LOG` or `telemetry.log_filter`, with [`CAPPED_TARGETS`] capped.
pub fn filter(settings: &TelemetrySettings) -> EnvFilter {
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log_filter.clone()));
    for target in CAPPED_TARGETS {
        filter = filter.add_directive(format!("{target}=info").parse().expect("valid directive"));
    }
    // lapin logs every connection and channel failure at ERROR without naming the broker;
    // the same failures reach our code, which logs them once per state change
    // (`queue::link`). `RUST_LOG=lapin=debug` still shows them.
    let asked = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("lapin"));
    if !asked {
        filter = filter.add_directive("lapin=off".parse().expect("valid directive"));
    }
    filter
}

/// Installs the global subscriber: human-readable on a terminal (or `human`), JSON lines
/// otherwise (or `json`). Logs go to stderr so that command output on stdout stays clean.
pub fn init(settings: &TelemetrySettings) {
    let json = match settings.log_format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let ansi = !json && std::io::stderr().is_terminal();
    init_with_writer(settings, json, ansi, std::io::stderr);
}

/// Installs the global subscriber writing to `writer` (tests capture logs with it); `ansi`
/// colours the human format.
pub fn init_with_writer<W>(settings: &TelemetrySettings, json: bool, ansi: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(settings))
        .with_ansi(ansi)
        .with_writer(writer);
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

pub mod metrics;
