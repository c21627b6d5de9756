//! Outages that last hours: a delivery is never held for longer than `worker.hold_max_secs`
//! (RabbitMQ's `consumer_timeout` would close the channel, every close counting towards the
//! delivery limit), and while the shared ABDM circuit breaker is open nothing is held at all.
//!
//! Why a stored job's message may be dropped: it only names a job that Postgres already holds,
//! and every published job is backed by a recheck row (`store::recheck`) that publishes it
//! again if it is still waiting `relay.republish_after_secs` later. A producer's message is
//! the only copy of its job until recorded: it is requeued instead.

use super::claims::Claimer;
use super::outcomes::OutcomeWriter;
use super::support::{Held, persist_until};
use super::{Inbound, Settled, Worker};
use crate::queue::envelope::Envelope;
use crate::store::jobs::{Claim, Outcome};
use crate::telemetry::metrics;
use tokio_util::sync::CancellationToken;

impl Worker {
    /// The breaker is open: postpones the job in Postgres until around the breaker's next
    /// probe, as the degraded mode does (an `Outcome::Postpone`: the claim's attempt is given
    /// back), and acks. The relay publishes nothing while the breaker is open, so the job
    /// waits in the outbox, not in a worker.
    pub(super) async fn postpone_while_open(
        &self,
        job_id: i64,
        delivery: &Inbound,
        claimer: &Claimer,
        writer: &OutcomeWriter,
        stop: &CancellationToken,
        deadline: tokio::time::Instant,
    ) {
        let what = "postponing a job while ABDM is down";
        let claim = match persist_until(what, stop, Some(deadline), || claimer.claim(job_id)).await
        {
            Held::Done(claim) => claim,
            Held::Stopped => return,
            Held::Expired => return self.let_go(delivery).await,
        };
        if let Claim::Run(job) = claim {
            let outcome = Outcome::Postpone {
                due_at: self.breaker.resume_at(),
                code: "circuit_open".into(),
                message: self
                    .breaker
                    .reason()
                    .unwrap_or_else(|| "ABDM circuit breaker open".into()),
            };
            match persist_until(what, stop, Some(deadline), || {
                writer.record(&job, &outcome, &[])
            })
            .await
            {
                // Written, or the lease was lost to another claim: the job is Postgres's.
                Held::Done(_) => {}
                // The lease expires and housekeeping queues the job again.
                Held::Stopped => return,
                Held::Expired => return self.let_go(delivery).await,
            }
            metrics::RETRIES
                .with_label_values(&[job.kind.as_str(), "circuit_open"])
                .inc();
        }
        delivery.settle(Settled::Ack).await
    }

    /// A delivery that waited `hold_max` for a slot and never started: a stored job's is let
    /// go (acked), anything else (a producer's, an undecodable one) handed back.
    pub(super) async fn let_go_unstarted(&self, delivery: &Inbound) {
        match Envelope::decode(&delivery.data) {
            Ok(Envelope::Stored { .. }) => self.let_go(delivery).await,
            _ => self.hand_back(delivery).await,
        }
    }

    /// Requeues a producer's delivery after a bounded hold: nothing but the message holds its
    /// job yet (one delivery counted).
    pub(super) async fn hand_back(&self, delivery: &Inbound) {
        self.holds.released("producer", self.cfg.hold_max);
        delivery.settle(Settled::Requeue).await
    }

    /// Acks a stored job's delivery unrun after a bounded hold: its recheck row publishes the
    /// job again later.
    pub(super) async fn let_go(&self, delivery: &Inbound) {
        self.holds.released("stored", self.cfg.hold_max);
        delivery.settle(Settled::Ack).await
    }
}
