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
//! - [`batches`]: the batch endpoints.

pub mod auth;
pub mod batches;
pub mod console;
pub mod erasures;
pub mod problem;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// `[api]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Listen address (loopback by default: put it behind the operator's ingress).
    #[serde(deserialize_with = "crate::config::addr::deserialize")]
    pub listen: std::net::SocketAddr,
    /// Largest upload, in MiB (larger bodies get 413).
    pub max_upload_mib: u64,
    /// How long a client may leave the upload body idle before the upload is dropped (408),
    /// so slow clients cannot hold uploads (and their spool files) open.
    #[serde(rename = "read_timeout_secs", with = "crate::config::secs")]
    pub read_timeout: std::time::Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8090)),
            max_upload_mib: 512,
            read_timeout: std::time::Duration::from_secs(30),
        }
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
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/batches", post(batches::upload).get(batches::list))
        .route("/v1/batches/{id}", get(batches::show))
        .route("/v1/batches/{id}/report", get(batches::report))
        .route("/v1/batches/{id}/retry-failed", post(batches::retry_failed))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/erasures", post(erasures::create))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(console::routes(state.max_upload))
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

/// Serves until `stop`.
pub async fn serve(
    state: ApiState,
    listen: SocketAddr,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "programme API listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
