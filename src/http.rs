//! The worker's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (process alive),
//! `/readyz` (Postgres and RabbitMQ reachable, ABDM session valid, `pii.key` not stale).
//!
//! `/readyz` answers from the last check for [`READY_CACHE`]; a check runs its three parts at
//! once, each within [`CHECK_TIMEOUT`], one check at a time however many probes arrive.
//! RabbitMQ is the state of this process's own connection ([`crate::queue::link`]), so a
//! probe opens no AMQP connection; the ABDM session is requested only when none is valid.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::abdm::AbdmClient;
use crate::jobs::kind::JobKind;
use crate::store::Store;

/// How long a `/readyz` answer is reused.
pub const READY_CACHE: Duration = Duration::from_secs(5);
/// Longest time each part of a readiness check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    /// Postgres.
    pub store: Store,
    /// ABDM session.
    pub client: Arc<AbdmClient>,
    /// AMQP URL (whose connection state [`crate::queue::link`] keeps).
    pub amqp_url: String,
    /// The worker's ABDM circuit breaker: while it is open the worker is not ready (and no
    /// gateway session is requested for the probe).
    pub breaker: Option<Arc<crate::breaker::Breaker>>,
}

#[derive(Clone, Copy)]
struct Checks {
    db: bool,
    mq: bool,
    abdm: bool,
    circuit_closed: bool,
    clock_ok: bool,
}

struct Ready {
    r: Readiness,
    last: tokio::sync::Mutex<Option<(Instant, Checks)>>,
}

impl Ready {
    async fn checks(&self) -> Checks {
        let mut last = self.last.lock().await;
        if let Some((at, c)) = *last
            && at.elapsed() < READY_CACHE
        {
            return c;
        }
        let client = &self.r.client;
        let circuit_closed = self.r.breaker.as_ref().is_none_or(|b| !b.is_open());
        let clock_ok = self.r.breaker.as_ref().is_none_or(|b| !b.clock_held());
        let (db, abdm) = tokio::join!(
            within(self.r.store.ping()),
            within(async {
                circuit_closed
                    && (client.session().is_valid().await || client.ensure_session().await.is_ok())
            }),
        );
        let c = Checks {
            db,
            mq: crate::queue::link::is_up(&self.r.amqp_url),
            abdm,
            circuit_closed,
            clock_ok,
        };
        *last = Some((Instant::now(), c));
        c
    }
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

/// `f`, or false when it takes longer than [`CHECK_TIMEOUT`].
async fn within(f: impl std::future::Future<Output = bool>) -> bool {
    tokio::time::timeout(CHECK_TIMEOUT, f)
        .await
        .unwrap_or(false)
}

async fn readyz(State(r): State<Arc<Ready>>) -> impl IntoResponse {
    let Checks {
        db,
        mq,
        abdm,
        circuit_closed,
        clock_ok,
    } = r.checks().await;
    let body = format!(
        "postgres {}\nrabbitmq {}\nabdm_session {}\nabdm_circuit {}\nabdm_clock {}\n",
        ok(db),
        ok(mq),
        ok(abdm),
        if circuit_closed { "closed" } else { "open" },
        if clock_ok { "ok" } else { "refused" }
    );
    // Not cached: a stale process (store::keyset) is out of service from the moment it knows.
    let stale = r.r.store.keys.reason();
    let body = match &stale {
        Some(reason) => format!("{body}pii_key stale: {reason}\n"),
        None => format!("{body}pii_key ok\n"),
    };
    let status = if db && mq && abdm && circuit_closed && clock_ok && stale.is_none() {
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
    listen: impl tokio::net::ToSocketAddrs,
    readiness: Readiness,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    crate::telemetry::metrics::register_all(&JobKind::ALL.map(JobKind::as_str));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(Ready {
            r: readiness,
            last: tokio::sync::Mutex::new(None),
        }));
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
