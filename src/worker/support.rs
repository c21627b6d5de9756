//! Holding on to Postgres through an outage, for the consume loop, and letting a delivery go
//! once it was held for `worker.hold_max_secs`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::relay::reconnect_backoff;
use crate::store::StoreError;
use crate::telemetry::metrics;

/// How a bounded hold ended.
pub(super) enum Held<T> {
    /// Postgres answered.
    Done(T),
    /// `stop` fired first.
    Stopped,
    /// The deadline passed first: let the delivery go.
    Expired,
}

/// Runs a Postgres operation until it succeeds (backing off, one WARN per outage) or `stop`
/// fires (`None`). For what must be written whatever the wait (an outcome whose delivery was
/// already let go: the job's lease backs it meanwhile).
pub(super) async fn persist<T, F, Fut>(
    what: &'static str,
    stop: &CancellationToken,
    op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    match persist_until(what, stop, None, op).await {
        Held::Done(v) => Some(v),
        Held::Stopped | Held::Expired => None,
    }
}

/// [`persist`] until `deadline` at most. Why a bound: a delivery held past RabbitMQ's
/// `consumer_timeout` closes the channel, and every close counts towards the queue's delivery
/// limit, after which the message is dead-lettered. The caller lets the delivery go instead
/// (a stored job is backed by its recheck row; a producer's message is requeued).
pub(super) async fn persist_until<T, F, Fut>(
    what: &'static str,
    stop: &CancellationToken,
    deadline: Option<Instant>,
    mut op: F,
) -> Held<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = reconnect_backoff();
    let mut warned = false;
    loop {
        // One try is bounded too: with Postgres gone, a try waits for a pool connection for
        // up to the pool's acquire timeout (the chaos run saw 28 s), past `consumer_timeout`.
        // A claim cut off after it committed leaves the job leased to this worker: lease
        // expiry queues it again.
        let attempt = match deadline {
            Some(d) => match tokio::time::timeout_at(d, op()).await {
                Ok(r) => r,
                Err(_) => return Held::Expired,
            },
            None => op().await,
        };
        match attempt {
            Ok(v) => {
                if warned {
                    tracing::info!(what, "Postgres answers again");
                }
                return Held::Done(v);
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, what, "Postgres unavailable; holding the message until it answers");
                    warned = true;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Held::Expired;
                }
                // At most 2 s between tries: a Postgres restart is usually over in seconds, and
                // a held message costs one cheap query per try.
                let wait = backoff.next().unwrap_or(Duration::from_secs(2));
                let until = Instant::now() + wait.min(Duration::from_secs(2));
                let until = deadline.map_or(until, |d| until.min(d));
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = stop.cancelled() => return Held::Stopped,
                }
            }
        }
    }
}

/// Deliveries let go after a bounded hold: counted (`abha_worker_holds_released_total`) and
/// logged at most once per `hold_max` with how many, never which (no identifiers).
#[derive(Default)]
pub(super) struct Holds {
    since_log: AtomicU64,
    logged_at: Mutex<Option<Instant>>,
}

impl Holds {
    /// Counts one delivery let go (`envelope`: `stored` or `producer`).
    pub(super) fn released(&self, envelope: &'static str, hold_max: Duration) {
        metrics::HOLDS_RELEASED.with_label_values(&[envelope]).inc();
        let n = self.since_log.fetch_add(1, Ordering::Relaxed) + 1;
        let mut at = self.logged_at.lock().expect("holds");
        if at.is_none_or(|t| t.elapsed() >= hold_max) {
            *at = Some(Instant::now());
            self.since_log.store(0, Ordering::Relaxed);
            tracing::warn!(
                deliveries = n,
                hold_max_secs = hold_max.as_secs(),
                "deliveries held longer than worker.hold_max_secs let go: stored jobs acked unrun \
                 (their recheck rows publish them again), producer messages requeued"
            );
        }
    }
}
