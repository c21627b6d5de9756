//! The relay's housekeeping: the periodic chores that keep jobs moving when nobody else will
//! (a worker that died holds a lease, a killed submit leaves a batch `submitting`, a finished
//! batch needs closing) and the gauges that are cheaper to refresh from one place than from
//! every worker. A failure is logged and tried again next round, so a database hiccup never
//! stops publishing.

use std::time::Duration;

use crate::store::Store;
use crate::telemetry::metrics;

/// A `submitting` batch that wrote nothing for this long was abandoned (its submit was
/// killed): housekeeping aborts it. Each chunk of a live submit refreshes the heartbeat within
/// seconds, even on a loaded database.
const ABANDONED_SUBMIT: Duration = Duration::from_secs(600);

/// How often the gauges that count rows of active batches are refreshed (a scan of those
/// batches' jobs: too heavy for every housekeeping round).
pub(super) const GAUGE_INTERVAL: Duration = Duration::from_secs(15);

/// Lease expiry, batch closing and the outbox gauges. Errors are logged, never fatal.
pub async fn round(store: &Store) {
    match store.requeue_expired_leases().await {
        Ok(0) => {}
        Ok(n) => {
            tracing::warn!(jobs = n, "re-queued jobs whose worker lease expired");
            metrics::RETRIES
                .with_label_values(&["any", "lease_expired"])
                .inc_by(n);
        }
        Err(e) => tracing::warn!(error = %e, "lease expiry check failed"),
    }
    // A stale process cannot read what the newer key wrote: it rewrites no payload.
    if !store.key_stale()
        && let Err(e) = store.delete_final_tokens(1000).await
    {
        tracing::warn!(error = %e, "deleting finished jobs' X-tokens failed");
    }
    match store
        .abort_abandoned_submits(ABANDONED_SUBMIT.as_secs())
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            batches = n,
            "aborted submits that stopped writing (their rows never run; submit the files again)"
        ),
        Err(e) => tracing::warn!(error = %e, "checking for abandoned submits failed"),
    }
    if let Err(e) = store.finish_batches().await {
        tracing::warn!(error = %e, "closing finished batches failed");
    }
    match store.outbox_stats().await {
        Ok(s) => {
            metrics::OUTBOX_PENDING.set(s.pending as f64);
            metrics::OUTBOX_LAG.set(s.lag_secs);
        }
        Err(e) => tracing::warn!(error = %e, "reading outbox figures failed"),
    }
}

/// `abha_batch_rows` and the `abha_reconcile_*` gauges.
pub async fn batch_gauges(store: &Store) {
    if let Ok(runs) = store.last_reconcile_runs().await {
        for r in runs {
            let b = r.benefit.as_str();
            metrics::RECONCILE_LAST_RUN
                .with_label_values(&[b])
                .set(r.finished_at.timestamp() as f64);
            // A class that was not checked is NaN ("not checked"), never 0: an alert on
            // `> 0` stays quiet, and a dashboard does not show a clean bill it never got.
            for (class, n) in [
                ("missing_link", Some(r.counts.missing_link)),
                ("unexpected_link", r.counts.unexpected_link),
                ("unknown", Some(r.counts.unknown)),
            ] {
                metrics::RECONCILE_DRIFT
                    .with_label_values(&[b, class])
                    .set(n.map_or(f64::NAN, |n| n as f64));
            }
            for (source, n) in [
                ("roster", r.counts.invalid_rows),
                ("abdm", r.counts.abdm_errors),
            ] {
                metrics::RECONCILE_ERRORS
                    .with_label_values(&[b, source])
                    .set(n as f64);
            }
        }
    }
    if let Ok(counts) = store.active_rows_by_state().await {
        for state in crate::store::batches::StateCounts::STATES {
            metrics::BATCH_ROWS
                .with_label_values(&[state])
                .set(counts.get(state) as f64);
        }
    }
}
