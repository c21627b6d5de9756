//! Holding on to Postgres through an outage, for the consume loop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::relay::reconnect_backoff;
use crate::store::StoreError;

/// Runs a Postgres operation until it succeeds (backing off, one WARN per outage) or `stop`
/// fires (`None`). Holding on instead of failing is what keeps a Postgres outage of any length
/// from losing or dead-lettering a job.
pub(super) async fn persist<T, F, Fut>(
    what: &'static str,
    stop: &CancellationToken,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = reconnect_backoff();
    let mut warned = false;
    loop {
        match op().await {
            Ok(v) => {
                if warned {
                    tracing::info!(what, "Postgres answers again");
                }
                return Some(v);
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, what, "Postgres unavailable; holding the message until it answers");
                    warned = true;
                }
                // At most 2 s between tries: a Postgres restart is usually over in seconds, and
                // a held message costs one cheap query per try.
                let wait = backoff.next().unwrap_or(Duration::from_secs(2));
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(Duration::from_secs(2))) => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
    }
}
