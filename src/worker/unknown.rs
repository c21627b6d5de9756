//! Messages of a newer release: a well-formed envelope of a kind or an envelope version this
//! worker does not know ([`EnvelopeError::Unknown`]).
//!
//! During a rolling deploy old and new workers consume the same queues. Dead-lettering what
//! only the new release understands (as a malformed message is) would leave its job `queued`
//! for ever; so the message goes back to the queue for a worker that knows it, after
//! [`HAND_BACK_PAUSE`] (a lone old worker would otherwise spin on it, taking it again at
//! once, and burn its delivery count in milliseconds).
//!
//! Every hand-back counts towards the queue's `x-delivery-limit`, after which RabbitMQ would
//! dead-letter the message itself. Near the limit (`delivery_count + 2 >= limit`):
//! - a stored-job envelope (a job id, no identifier) is acked and left to Postgres: the relay
//!   writes a "recheck" outbox row for every job it publishes and republishes a job still
//!   `queued` after `relay.republish_after_secs` (default 600 s; `store::recheck`, issue 18
//!   item 6). This relies on that recheck: without it the acked job would stay queued until
//!   someone resubmitted it;
//! - a producer's envelope exists nowhere else, and RabbitMQ would dead-letter it verbatim
//!   (identifiers included): it is dead-lettered as the redacted summary, with the reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DeadLetters, Inbound, Settled, Worker};
#[cfg(doc)]
use crate::queue::envelope::EnvelopeError;
use crate::telemetry::metrics;

/// How long an unknown message is held before it goes back to the queue.
pub const HAND_BACK_PAUSE: Duration = Duration::from_secs(1);

/// One log line per process (the metric counts every message).
static LOGGED: AtomicBool = AtomicBool::new(false);

impl Worker {
    /// Hands back (or, at the delivery limit, settles) a message of a newer release. `what`
    /// says what is unknown (`unknown kind`, `envelope version N`), never a value of the
    /// message.
    pub(super) async fn hand_back_unknown(
        &self,
        delivery: &Inbound,
        dead: &dyn DeadLetters,
        what: &str,
        stored: bool,
        stop: &CancellationToken,
    ) {
        if !LOGGED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                what,
                "a message this release does not know (a newer release's?) goes back to the queue for a worker that knows it; abha_unknown_envelopes_total counts them"
            );
        }
        let limit = i64::from(self.topology.delivery_limit);
        if delivery.delivery_count + 2 >= limit {
            if stored {
                metrics::UNKNOWN_ENVELOPES
                    .with_label_values(&["left_to_postgres"])
                    .inc();
                tracing::debug!(
                    what,
                    "unknown stored-job message at its delivery limit: acked; the outbox recheck publishes its job again"
                );
                return delivery.settle(Settled::Ack).await;
            }
            metrics::UNKNOWN_ENVELOPES
                .with_label_values(&["dead_lettered"])
                .inc();
            let reason = format!(
                "{what} that no worker took before the delivery limit (is the release that writes it running?)"
            );
            return self.dead_letter(delivery, dead, &reason).await;
        }
        metrics::UNKNOWN_ENVELOPES
            .with_label_values(&["requeued"])
            .inc();
        // A stop hands it back at once: the pause only keeps a lone old worker from spinning.
        tokio::select! {
            _ = tokio::time::sleep(HAND_BACK_PAUSE) => {}
            _ = stop.cancelled() => {}
        }
        delivery.settle(Settled::Requeue).await
    }
}
