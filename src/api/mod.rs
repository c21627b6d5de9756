//! `abha-bulk serve`: the programme API (`/v1/...`).
//!
//! A programme's own systems upload CSV files, watch their batches, download reports and
//! re-run failed rows over HTTP with an API key scoped to their programme (benefit), instead of
//! needing shell access and the whole service's database credentials. Every upload goes
//! through the same validation and atomic submit as the CLI (`submit::submit_until`): the body
//! is streamed to a private temporary file (never held in memory) and submitted only once it
//! has arrived whole, so a body that stops halfway creates nothing.
//!
//! - [`auth`]: API keys on requests, scopes, programme scoping.
//! - [`problem`]: RFC 9457 problem documents.
//! - [`batches`]: the batch endpoints; [`upload`]: the upload (slots, spool, idempotency).
//! - [`guard`]: failed-authentication throttling and upload slots.
//! - [`webhooks`]: the webhook sender (its own task beside the relay).

pub mod auth;
pub mod batches;
pub mod console;
pub mod erasures;
pub mod guard;
pub mod problem;
pub mod upload;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// `[api]` settings (config/default.toml says why each default is what it is).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Listen address (loopback by default: put it behind the operator's ingress).
    #[serde(deserialize_with = "crate::config::addr::deserialize")]
    pub listen: std::net::SocketAddr,
    /// Where `serve` exports `/metrics` (the auth-failure counter among them).
    #[serde(deserialize_with = "crate::config::addr::deserialize")]
    pub metrics_listen: std::net::SocketAddr,
    /// Largest upload, in MiB (larger bodies get 413).
    pub max_upload_mib: u64,
    /// How long a client may leave the upload body idle before the upload is dropped (408),
    /// so slow clients cannot hold uploads (and their spool files) open.
    #[serde(rename = "read_timeout_secs", with = "crate::config::secs")]
    pub read_timeout: std::time::Duration,
    /// Uploads running at once in this process (more get 503).
    pub max_concurrent_uploads: usize,
    /// Uploads of one API key running at once (more get 429).
    pub max_uploads_per_key: usize,
    /// Free space, MiB, the spool's file system keeps: an upload that would go below is
    /// refused (507) and its spool file removed.
    pub spool_min_free_mib: u64,
    /// Failed authentications allowed at once per client address and per key prefix.
    pub auth_failure_burst: u32,
    /// Failed authentications allowed per second after the burst (then 429).
    pub auth_failures_per_sec: f64,
    /// A header the operator's ingress sets to the client's address (its last value is
    /// used); empty: the connection's peer address.
    pub client_ip_header: String,
    /// A console session ends after this many minutes without a request.
    pub console_idle_mins: u64,
    /// A console session ends this many hours after sign-in, whatever its use.
    pub console_max_hours: u64,
    /// An `Idempotency-Key` whose upload has not answered after this many seconds (its
    /// `serve` died mid-upload) is free again.
    pub idempotency_running_secs: u64,
    /// How long the answer of an upload is kept for retries with its `Idempotency-Key`.
    pub idempotency_keep_hours: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8090)),
            metrics_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9188)),
            max_upload_mib: 512,
            read_timeout: std::time::Duration::from_secs(30),
            max_concurrent_uploads: 8,
            max_uploads_per_key: 2,
            spool_min_free_mib: 1024,
            auth_failure_burst: 10,
            auth_failures_per_sec: 1.0,
            client_ip_header: String::new(),
            console_idle_mins: 30,
            console_max_hours: 12,
            idempotency_running_secs: 600,
            idempotency_keep_hours: 24,
        }
    }
}

/// The guards of one `serve` process: throttles, upload slots and the limits they apply.
#[derive(Debug)]
pub struct Guards {
    /// Failed-authentication throttling.
    pub auth: guard::AuthThrottle,
    /// Upload slots.
    pub uploads: std::sync::Arc<guard::UploadSlots>,
    /// Free bytes the spool keeps.
    pub spool_min_free: u64,
    /// See [`ApiSettings::client_ip_header`] (lower case; empty: the peer address).
    pub client_ip_header: String,
    /// Console session idle expiry.
    pub console_idle: Duration,
    /// Console session absolute expiry.
    pub console_max: Duration,
    /// Expiry of an unanswered `Idempotency-Key`.
    pub idempotency_running: Duration,
    /// Expiry of an answered `Idempotency-Key`.
    pub idempotency_keep: Duration,
}

impl Guards {
    /// From the `[api]` settings.
    pub fn new(s: &ApiSettings) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            auth: guard::AuthThrottle::new(s.auth_failure_burst, s.auth_failures_per_sec),
            uploads: guard::UploadSlots::new(s.max_concurrent_uploads, s.max_uploads_per_key),
            spool_min_free: s.spool_min_free_mib.saturating_mul(1 << 20),
            client_ip_header: s.client_ip_header.trim().to_ascii_lowercase(),
            console_idle: Duration::from_secs(s.console_idle_mins.saturating_mul(60)),
            console_max: Duration::from_secs(s.console_max_hours.saturating_mul(3600)),
            idempotency_running: Duration::from_secs(s.idempotency_running_secs),
            idempotency_keep: Duration::from_secs(s.idempotency_keep_hours.saturating_mul(3600)),
        })
    }

    /// The client's address: the last value of the ingress's header when one is configured,
    /// else the connection's peer (`None` when the server was started without connect info).
    pub fn client_ip(
        &self,
        headers: &axum::http::HeaderMap,
        extensions: &axum::http::Extensions,
    ) -> Option<std::net::IpAddr> {
        if !self.client_ip_header.is_empty() {
            return headers
                .get_all(self.client_ip_header.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .last()
                .and_then(|v| v.trim().parse().ok());
        }
        extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// Postgres.
    pub store: Store,
    /// Benefit names this deployment serves (empty: any well-formed one).
    pub served: Vec<String>,
    /// Largest upload, bytes.
    pub max_upload: u64,
    /// Longest pause inside an upload body.
    pub read_timeout: Duration,
    /// Where uploads are spooled while they arrive.
    pub spool: PathBuf,
    /// Throttles, upload slots and their limits.
    pub guards: std::sync::Arc<Guards>,
    /// Each programme's default batch priority (`benefits.priorities`).
    pub priorities: std::collections::HashMap<String, crate::scheduler::Priority>,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/batches", post(upload::upload).get(batches::list))
        .route("/v1/batches/{id}", get(batches::show))
        .route("/v1/batches/{id}/report", get(batches::report))
        .route("/v1/batches/{id}/retry-failed", post(batches::retry_failed))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/erasures", post(erasures::create))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(console::routes(state.max_upload))
        .method_not_allowed_fallback(|| async {
            problem::Problem::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this endpoint does not take that method (see /v1/openapi.json)",
            )
        })
        .fallback(|| async {
            problem::Problem::new(
                axum::http::StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "no such endpoint",
            )
        })
        .with_state(state)
}

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// The router as a service that knows each connection's peer address (the failed-auth
/// throttle's per-address bucket).
pub fn app(
    state: ApiState,
) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<Router, SocketAddr> {
    router(state).into_make_service_with_connect_info::<SocketAddr>()
}

/// Serves until `stop`.
pub async fn serve(
    state: ApiState,
    listen: SocketAddr,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "programme API listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// Serves `/metrics` (the auth-failure counter, webhook results) on its own address until
/// `stop`, so the public API port does not expose it.
pub async fn serve_metrics(listen: SocketAddr, stop: CancellationToken) -> std::io::Result<()> {
    crate::telemetry::metrics::register_all(&crate::jobs::kind::JobKind::ALL.map(|k| k.as_str()));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "programme API metrics listening");
    let app = Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                crate::telemetry::metrics::render(),
            )
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok(())
}
