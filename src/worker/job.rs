//! One delivery's path, from envelope to ack: decode (or dead-letter), record a producer's
//! job, wait for a closed breaker and a rate token, claim, run the job through its gate (the
//! lease fence), classify and record the outcome. The consume loop that spawns it is in
//! `worker/mod.rs`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::claims::Claimer;
use super::outcomes::OutcomeWriter;
use super::support::{Held, persist, persist_until};
use super::{DeadLetters, Inbound, JobGate, Settled, Worker};
use crate::abdm::{CallTrace, Disposition};
use crate::breaker::Gate;
use crate::jobs::execute::execute;
use crate::jobs::kind::Job;
use crate::queue::envelope::{Envelope, EnvelopeError};
use crate::store::jobs::{Claim, ClaimedJob, ExternalJob, Outcome};
use crate::store::{StoreError, VaultError};
use crate::telemetry::metrics;

impl Worker {
    /// One delivery, from envelope to ack. While Postgres is down the delivery is held (not
    /// requeued: a requeue counts towards the queue's delivery limit), for `hold_max` at most:
    /// then a stored job's message is acked unrun (its recheck row publishes the job again,
    /// `store::recheck`) and a producer's is requeued; the in-flight bound stops this worker
    /// from taking more meanwhile. While the ABDM circuit breaker is open nothing is held: the
    /// job is postponed in Postgres without spending an attempt (`worker::outage`).
    /// `deadline` is the delivery's arrival plus `hold_max`.
    pub(super) async fn handle(
        &self,
        delivery: Inbound,
        dead: &dyn DeadLetters,
        claimer: &Claimer,
        writer: &OutcomeWriter,
        stop: &CancellationToken,
        deadline: tokio::time::Instant,
    ) {
        let envelope = match Envelope::decode(&delivery.data) {
            Ok(e) => e,
            Err(EnvelopeError::Unknown { what, stored }) => {
                return self
                    .hand_back_unknown(&delivery, dead, &what, stored, stop)
                    .await;
            }
            Err(reason) => {
                return self.dead_letter(&delivery, dead, &reason.to_string()).await;
            }
        };
        // A producer's envelope carries identifiers. If this is its last delivery before the
        // queue's limit, RabbitMQ would dead-letter it verbatim after a crash: dead-letter the
        // redacted summary now instead (stored-job envelopes carry only a job id).
        if matches!(envelope, Envelope::External { .. })
            && delivery.delivery_count + 1 >= i64::from(self.topology.delivery_limit)
        {
            return self
                .dead_letter(
                    &delivery,
                    dead,
                    "delivery limit reached: the message kept failing to be processed",
                )
                .await;
        }
        let job_id = match &envelope {
            Envelope::Stored { job_id, .. } => *job_id,
            Envelope::External {
                kind,
                idempotency_key,
                benefit,
                external_ref,
                payload,
            } => {
                let job = match Job::from_fields(
                    *kind,
                    |k| {
                        payload
                            .get(k)
                            .map(String::as_str)
                            .filter(|v| !v.trim().is_empty())
                    },
                    Utc::now().date_naive(),
                ) {
                    Ok(job) => job,
                    Err(errors) => {
                        let reason = errors
                            .iter()
                            .map(|e| format!("{}: {}", e.field, e.reason))
                            .collect::<Vec<_>>()
                            .join("; ");
                        return self
                            .dead_letter(&delivery, dead, &format!("invalid payload: {reason}"))
                            .await;
                    }
                };
                // The benefit goes into a request header: refuse what is not a header-safe name
                // here, with the reason, rather than failing every attempt at ABDM.
                if let Err(e) = crate::jobs::benefit::BenefitName::parse(benefit) {
                    return self
                        .dead_letter(&delivery, dead, &format!("invalid benefit: {e}"))
                        .await;
                }
                let ext = ExternalJob {
                    idempotency_key,
                    benefit,
                    external_ref: external_ref.as_deref(),
                    job: &job,
                };
                // Recorded with its outbox row: the scheduler publishes it in its programme's
                // turn, as a stored job. Nothing runs from the producer's message itself.
                match persist_until("recording a queue job", stop, Some(deadline), || {
                    self.store.upsert_external(*kind, ext.clone())
                })
                .await
                {
                    Held::Done(_) => delivery.settle(Settled::Ack).await,
                    // Nothing but the message holds this job yet: hand it back (one delivery).
                    Held::Expired => self.hand_back(&delivery).await,
                    Held::Stopped => {}
                }
                return;
            }
        };
        // No job starts while ABDM is known to be down, and the rate token is taken before the
        // claim, so the lease does not tick away while this worker waits for its turn.
        // Stopping hands back at once what has not started: a worker at 5/s would otherwise sit
        // on its prefetched messages, waiting for tokens, for its whole grace period.
        match self.breaker.gate(&self.client, stop, deadline).await {
            Gate::Closed => {}
            Gate::Stopped => return delivery.settle(Settled::Requeue).await,
            Gate::Expired => return self.let_go(&delivery).await,
            Gate::Open => {
                return self
                    .postpone_while_open(job_id, &delivery, claimer, writer, stop, deadline)
                    .await;
            }
        }
        // The token wait is a hold too: with Postgres down the shared rate budget cannot be
        // leased and the limiter waits for it (seen in the chaos run: channels closed by
        // `consumer_timeout` before the hold was let go).
        tokio::select! {
            _ = self.limiter.acquire() => {}
            _ = stop.cancelled() => return delivery.settle(Settled::Requeue).await,
            _ = tokio::time::sleep_until(deadline) => return self.let_go(&delivery).await,
        }
        let token_at = tokio::time::Instant::now();
        let claim = match persist_until("claiming a job", stop, Some(deadline), || {
            claimer.claim(job_id)
        })
        .await
        {
            Held::Done(claim) => claim,
            Held::Stopped => return,
            Held::Expired => return self.let_go(&delivery).await,
        };
        match claim {
            Claim::Run(job) => {
                let run = self
                    .run_job(&job, token_at, writer, stop)
                    .instrument(job_span(&job));
                tokio::pin!(run);
                // Once claimed, the job is backed by its lease, not by the message: a delivery
                // still held at `hold_max` (a fence or the outcome write waiting for Postgres,
                // a long pause in the gate, this replica's clock refused) is acked and the job
                // goes on; if this process dies meanwhile, lease expiry queues the job again.
                // The chaos run saw such holds close channels at its 20 s `consumer_timeout`.
                tokio::select! {
                    recorded = &mut run => {
                        if recorded {
                            delivery.settle(Settled::Ack).await
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        self.let_go(&delivery).await;
                        run.await;
                    }
                }
            }
            Claim::Finished(state) => {
                tracing::debug!(
                    job_id,
                    state,
                    "redelivered job already finished; acked without calling ABDM"
                );
                delivery.settle(Settled::Ack).await
            }
            Claim::NotDue | Claim::Busy | Claim::Missing => delivery.settle(Settled::Ack).await,
        }
    }

    /// Runs a claimed job and commits its outcome; returns whether the message may be acked
    /// (false when stopping before the outcome could be written: the lease then makes the job
    /// run again).
    async fn run_job(
        &self,
        job: &ClaimedJob,
        token_at: tokio::time::Instant,
        writer: &OutcomeWriter,
        stop: &CancellationToken,
    ) -> bool {
        let kind = job.kind.as_str();
        let gate = Arc::new(JobGate {
            limiter: self.limiter.clone(),
            leases: self.leases.clone(),
            job_id: job.id,
            owner: self.cfg.id.clone(),
            claim_token: job.claim_token,
            lease: self.cfg.lease,
            prepaid: AtomicBool::new(true),
            token_at,
            claimed_at: tokio::time::Instant::now(),
            extended_at: std::sync::Mutex::new(tokio::time::Instant::now()),
        });
        let mut trace = CallTrace::gated(gate);
        let outcome = if job.attempt as u32 > self.cfg.max_attempts {
            Outcome::Dead {
                code: "lease_expired".into(),
                message: format!(
                    "no answer recorded after {} attempts (worker leases expired)",
                    job.attempt - 1
                ),
            }
        } else {
            match self
                .store
                .decrypt_job(job.id, job.kind, &job.dedup_hash, &job.payload)
            {
                // A newer key wrote it: not this process's row to fail (store::keyset).
                Err(StoreError::Vault(VaultError::UnknownKey(key_id))) => {
                    self.postpone_unknown_key(job, &key_id)
                }
                Err(e) => Outcome::Failed {
                    code: "invalid_stored_job".into(),
                    message: e.to_string(),
                },
                Ok(payload) => {
                    metrics::IN_FLIGHT.inc();
                    let result = execute(
                        &self.client,
                        &job.benefit,
                        &payload,
                        job.effect_may_have_happened,
                        &mut trace,
                    )
                    .await;
                    metrics::IN_FLIGHT.dec();
                    let open = self.breaker.observe(result.as_ref().err()).await;
                    if let Err(e) = &result
                        && e.disposition() == Disposition::Throttled
                    {
                        let sent_ago = trace.last().map(|a| a.duration);
                        self.limiter
                            .on_throttled_call(e.retry_after(), sent_ago)
                            .await;
                    }
                    self.classify(job, result, open)
                }
            }
        };
        let recorded = persist("recording a job's outcome", stop, || {
            writer.record(job, &outcome, &trace.attempts)
        })
        .await;
        let Some(recorded) = recorded else {
            return false;
        };
        if !recorded {
            tracing::warn!(
                job_id = job.id,
                "lease lost before the outcome was recorded; another worker owns the job"
            );
            return true;
        }
        let state = outcome.state();
        metrics::JOBS.with_label_values(&[kind, state]).inc();
        if state != "retrying" {
            let secs = (Utc::now() - job.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::JOB_DURATION
                .with_label_values(&[kind])
                .observe(secs);
        }
        tracing::debug!(job_id = job.id, state, "job recorded");
        true
    }

    pub(super) async fn dead_letter(
        &self,
        delivery: &Inbound,
        dead: &dyn DeadLetters,
        reason: &str,
    ) {
        tracing::warn!(reason, "malformed message sent to the dead-letter queue");
        match dead.dead_letter(&delivery.data, reason).await {
            Ok(()) => delivery.settle(Settled::Ack).await,
            Err(e) => {
                tracing::warn!(error = %e, "dead-lettering failed; message requeued");
                delivery.settle(Settled::Requeue).await
            }
        }
    }
}

/// The span of one job: ids and kind, never identifiers.
fn job_span(job: &ClaimedJob) -> tracing::Span {
    tracing::info_span!("job", job_id = job.id, batch_id = %job.batch_id, kind = job.kind.as_str(), attempt = job.attempt)
}
