//! The worker: consume → claim → rate limit → call ABDM → record (one transaction) → ack.
//!
//! Manual acks, prefetch = `worker.in_flight`, a semaphore bounding calls in flight. A message
//! is acked only after its outcome is committed; a redelivered job that already finished is
//! acked without calling ABDM. Retries are outbox rows due later (exponential backoff with full
//! jitter, `Retry-After` honoured). On SIGTERM/SIGINT the worker stops consuming, lets in-flight
//! jobs finish within the grace period, and leaves the rest unacked for redelivery.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod claims;
mod classify;
mod gate;
mod group;
mod outcomes;
pub mod source;
mod support;

use std::sync::atomic::AtomicBool;

use crate::abdm::{AbdmClient, CallTrace, Disposition};
use crate::breaker::{Breaker, BreakerConfig};
use crate::jobs::execute::execute;
use crate::jobs::kind::{Job, JobKind};
use crate::queue::envelope::Envelope;
use crate::queue::publish::Publisher;
use crate::queue::{self, Topology};
use crate::ratelimit::RateLimiter;
use crate::relay::{reconnect_backoff, sleep_or_stop};
use crate::store::Store;
use crate::store::jobs::{Claim, ClaimedJob, ExternalJob, Outcome};
use crate::telemetry::metrics;
use claims::Claimer;
pub use gate::JobGate;
use outcomes::OutcomeWriter;
pub use source::{DeadLetters, Inbound, MemoryQueue, Settled};
use support::persist;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Lease owner name (host + pid by default).
    pub id: String,
    /// Calls in flight at once; also the prefetch (of the shared work queue, or of each
    /// kind's queue with `rabbitmq.queue_per_kind`).
    pub in_flight: u16,
    /// Lease length. The lease invariant: a job's lease is re-checked and extended to
    /// `lease_secs` right before every call that changes something at ABDM, and one HTTP
    /// attempt lasts at most the request timeout, which config validation keeps below half of
    /// `lease_secs`; so no other worker can take a job over while its call is in flight.
    pub lease_secs: u64,
    /// Attempts before a job is dead.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Time to finish in-flight jobs on shutdown.
    pub grace: Duration,
    /// Kinds to consume.
    pub kinds: Vec<JobKind>,
}

impl WorkerConfig {
    /// From `[worker]` settings.
    pub fn from_settings(s: &crate::config::WorkerSettings) -> Self {
        Self {
            id: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
                std::process::id()
            ),
            in_flight: s.in_flight,
            lease_secs: s.lease_secs,
            max_attempts: s.max_attempts,
            backoff_base: Duration::from_millis(s.backoff_base_ms),
            backoff_cap: Duration::from_millis(s.backoff_cap_ms),
            grace: Duration::from_secs(s.grace_period_secs),
            kinds: JobKind::ALL.to_vec(),
        }
    }

    /// Delay before attempt `attempt + 1`: full jitter over backon's capped exponential
    /// (base · 2^(attempt-1), at most the cap), never less than `retry_after`.
    pub fn retry_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let envelope = ExponentialBuilder::default()
            .with_min_delay(self.backoff_base)
            .with_max_delay(self.backoff_cap)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.backoff_cap);
        let jittered = envelope.mul_f64(rand::random::<f64>());
        jittered.max(retry_after.unwrap_or_default())
    }
}

/// Everything a worker needs.
pub struct Worker {
    /// Postgres.
    pub store: Store,
    /// ABDM.
    pub client: Arc<AbdmClient>,
    /// The rate contract.
    pub limiter: Arc<RateLimiter>,
    /// The circuit breaker shared with every replica.
    pub breaker: Arc<Breaker>,
    /// Queue names.
    pub topology: Topology,
    /// Settings.
    pub cfg: WorkerConfig,
}

impl Worker {
    /// A worker with the default circuit breaker of `client`'s ABDM client id.
    pub fn new(
        store: Store,
        client: Arc<AbdmClient>,
        limiter: Arc<RateLimiter>,
        topology: Topology,
        cfg: WorkerConfig,
    ) -> Arc<Self> {
        Self::with_breaker(
            store,
            client,
            limiter,
            topology,
            cfg,
            BreakerConfig::default(),
        )
    }

    /// A worker with explicit circuit breaker settings.
    pub fn with_breaker(
        store: Store,
        client: Arc<AbdmClient>,
        limiter: Arc<RateLimiter>,
        topology: Topology,
        cfg: WorkerConfig,
        breaker: BreakerConfig,
    ) -> Arc<Self> {
        let breaker = Arc::new(Breaker::new(store.clone(), client.client_id(), breaker));
        Arc::new(Self {
            store,
            client,
            limiter,
            breaker,
            topology,
            cfg,
        })
    }

    /// Consumes until `stop`, reconnecting to RabbitMQ with backoff.
    pub async fn run(self: Arc<Self>, amqp_url: String, stop: CancellationToken) {
        let mut backoff = reconnect_backoff();
        let recover = {
            let limiter = self.limiter.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    sleep_or_stop(Duration::from_secs(1), &stop).await;
                    limiter.recover().await;
                }
            })
        };
        while !stop.is_cancelled() {
            match self.clone().consume(&amqp_url, &stop).await {
                Ok(()) => break,
                Err(e) => {
                    let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                    queue::link::down("worker", &amqp_url, &e, wait);
                    sleep_or_stop(wait, &stop).await;
                }
            }
        }
        recover.abort();
    }

    /// One connection's life. `Ok` when stopped, `Err` when the connection failed.
    async fn consume(
        self: Arc<Self>,
        url: &str,
        stop: &CancellationToken,
    ) -> Result<(), queue::QueueError> {
        use crate::queue::AmqpContext;
        let conn = queue::connect(url).await?;
        let ch = conn.create_channel().await.ctx("opening a channel")?;
        self.topology.declare(&ch).await?;
        ch.basic_qos(self.cfg.in_flight, BasicQosOptions::default())
            .await
            .ctx("setting the prefetch")?;
        let publisher = Publisher::open(&conn, self.topology.clone()).await?;
        let mut consumers = Vec::new();
        for queue in self.topology.queues_for(&self.cfg.kinds) {
            let c = ch
                .basic_consume(
                    queue.as_str().into(),
                    format!("{}-{queue}", self.cfg.id).as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .ctx("starting a consumer")?;
            consumers.push(c);
        }
        let deliveries = futures::stream::select_all(consumers).map(|d| {
            d.map(source::lapin_inbound)
                .map_err(|cause| queue::QueueError::Amqp {
                    what: "receiving",
                    cause,
                })
        });
        let result = self
            .serve(deliveries, Arc::new(publisher.clone()), stop)
            .await;
        if result.is_ok() {
            publisher.close().await;
            let _ = ch.close(200, "worker stopping".into()).await;
        }
        let _ = conn.close(200, "worker stopping".into()).await;
        result
    }

    /// The consume loop over any [`source`] of messages: each delivery runs as its own task,
    /// at most `in_flight` at once. `Ok` when stopped (in-flight jobs finished within the
    /// grace period), `Err` when the source failed (in-flight jobs go on in the background:
    /// their outcomes still commit, and their redelivered messages find them running or
    /// final; aborting them would leave claimed jobs waiting for their lease to expire).
    pub async fn serve<S>(
        self: Arc<Self>,
        deliveries: S,
        dead: Arc<dyn DeadLetters>,
        stop: &CancellationToken,
    ) -> Result<(), queue::QueueError>
    where
        S: futures::Stream<Item = Result<Inbound, queue::QueueError>> + Send,
    {
        let mut deliveries = std::pin::pin!(deliveries);
        let permits = Arc::new(Semaphore::new(self.cfg.in_flight as usize));
        let writer = OutcomeWriter::start(self.store.clone(), self.cfg.id.clone());
        let claimer = Claimer::start(self.store.clone(), self.cfg.id.clone(), self.cfg.lease_secs);
        let mut tasks = tokio::task::JoinSet::new();
        tracing::info!(worker = %self.cfg.id, in_flight = self.cfg.in_flight, "worker consuming");
        let result = loop {
            tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let permit = tokio::select! {
                            p = permits.clone().acquire_owned() => p.expect("semaphore open"),
                            _ = stop.cancelled() => break Ok(()),
                        };
                        let me = self.clone();
                        let dead = dead.clone();
                        let stop = stop.clone();
                        let (writer, claimer) = (writer.clone(), claimer.clone());
                        tasks.spawn(async move {
                            me.handle(delivery, dead.as_ref(), &claimer, &writer, &stop).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => break Err(e),
                    None => break Err(queue::QueueError::NotConfirmed { count: 0, reason: "consumer cancelled by the broker" }),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        };
        if result.is_err() {
            tasks.detach_all();
            return result;
        }
        // Stopping: finish what is in flight within the grace period.
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                grace_secs = self.cfg.grace.as_secs(),
                "finishing in-flight jobs"
            );
        }
        let drained = tokio::time::timeout(self.cfg.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "grace period over: unfinished jobs will be redelivered"
            );
            tasks.abort_all();
        }
        result
    }

    /// One delivery, from envelope to ack. While Postgres is down the delivery is held (not
    /// requeued: a requeue counts towards the queue's delivery limit, after which RabbitMQ would
    /// dead-letter a job whose outbox row is gone); the in-flight bound stops this worker from
    /// taking more meanwhile. While the ABDM circuit breaker is open, likewise.
    async fn handle(
        &self,
        delivery: Inbound,
        dead: &dyn DeadLetters,
        claimer: &Claimer,
        writer: &OutcomeWriter,
        stop: &CancellationToken,
    ) {
        let envelope = match Envelope::decode(&delivery.data) {
            Ok(e) => e,
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
                match persist("recording a queue job", stop, || {
                    self.store.upsert_external(*kind, ext.clone())
                })
                .await
                {
                    Some(id) => id,
                    None => return,
                }
            }
        };
        // No job starts while ABDM is known to be down, and the rate token is taken before the
        // claim, so the lease does not tick away while this worker waits for its turn.
        if !self.breaker.wait_closed(&self.client, stop).await {
            return;
        }
        self.limiter.acquire().await;
        let token_at = std::time::Instant::now();
        let claim = persist("claiming a job", stop, || claimer.claim(job_id)).await;
        match claim {
            None => {}
            Some(Claim::Run(job)) => {
                let recorded = self
                    .run_job(&job, token_at, writer, stop)
                    .instrument(job_span(&job))
                    .await;
                if recorded {
                    delivery.settle(Settled::Ack).await
                }
            }
            Some(Claim::Finished(state)) => {
                tracing::debug!(
                    job_id,
                    state,
                    "redelivered job already finished; acked without calling ABDM"
                );
                delivery.settle(Settled::Ack).await
            }
            Some(Claim::NotDue | Claim::Busy | Claim::Missing) => {
                delivery.settle(Settled::Ack).await
            }
        }
    }

    /// Runs a claimed job and commits its outcome; returns whether the message may be acked
    /// (false only when stopping before the outcome could be written: the lease then makes
    /// the job run again).
    async fn run_job(
        &self,
        job: &ClaimedJob,
        token_at: std::time::Instant,
        writer: &OutcomeWriter,
        stop: &CancellationToken,
    ) -> bool {
        let kind = job.kind.as_str();
        let gate = Arc::new(JobGate {
            limiter: self.limiter.clone(),
            store: self.store.clone(),
            job_id: job.id,
            owner: self.cfg.id.clone(),
            lease_secs: self.cfg.lease_secs,
            prepaid: AtomicBool::new(true),
            token_at,
            claimed_at: std::time::Instant::now(),
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
        let Some(recorded) = persist("recording a job's outcome", stop, || {
            writer.record(job, &outcome, &trace.attempts)
        })
        .await
        else {
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

    async fn dead_letter(&self, delivery: &Inbound, dead: &dyn DeadLetters, reason: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_is_full_jitter_within_the_capped_envelope() {
        let cfg = WorkerConfig {
            id: "t".into(),
            in_flight: 1,
            lease_secs: 1,
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(1000),
            grace: Duration::from_secs(1),
            kinds: vec![],
        };
        for attempt in 1..=8u32 {
            let cap = Duration::from_millis((100u64 << (attempt - 1)).min(1000));
            for _ in 0..50 {
                assert!(cfg.retry_delay(attempt, None) <= cap);
            }
        }
        let many: Vec<Duration> = (0..200).map(|_| cfg.retry_delay(4, None)).collect();
        assert!(many.iter().any(|d| *d < Duration::from_millis(400)));
        assert!(many.iter().any(|d| *d > Duration::from_millis(400)));
        assert!(cfg.retry_delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
