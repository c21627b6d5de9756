//! The worker's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (process alive),
//! `/readyz` (Postgres and RabbitMQ reachable, ABDM session valid).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::abdm::AbdmClient;
use crate::store::Store;

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    /// Postgres.
    pub store: Store,
    /// ABDM session.
    pub client: Arc<AbdmClient>,
    /// AMQP URL (a connection is opened and closed per check).
    pub amqp_url: String,
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::metrics::render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(r): State<Arc<Readiness>>) -> impl IntoResponse {
    let db = r.store.ping().await;
    let mq = match crate::queue::connect(&r.amqp_url).await {
        Ok(c) => {
            let _ = c.close(200, "readiness check".into()).await;
            true
        }
        Err(_) => false,
    };
    let abdm = r.client.session().is_valid().await || r.client.ensure_session().await.is_ok();
    let body = format!(
        "postgres {}\nrabbitmq {}\nabdm_session {}\n",
        ok(db),
        ok(mq),
        ok(abdm)
    );
    let status = if db && mq && abdm {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

fn ok(b: bool) -> &'static str {
    if b { "ok" } else { "down" }
}

/// Serves until `stop`. Returns the bound address.
pub async fn serve(
    listen: &str,
    readiness: Readiness,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    crate::telemetry::metrics::register_all();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(readiness));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    tracing::info!(%addr, "metrics and health endpoints listening");
    Ok(addr)
}
