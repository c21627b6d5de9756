//! The worker: consume → claim → rate limit → call ABDM → record (one transaction) → ack.
//!
//! Manual acks, prefetch = `worker.in_flight`, a semaphore bounding calls in flight. A message
//! is acked only after its outcome is committed; a redelivered job that already finished is
//! acked without calling ABDM. Retries are outbox rows due later (exponential backoff with full
//! jitter, `Retry-After` honoured). On SIGTERM/SIGINT the worker stops consuming, lets in-flight
//! jobs finish within the grace period, and leaves the rest unacked for redelivery.
//!
//! This file holds the settings, the connection and the consume loop; one delivery's path
//! (claim, gated calls, outcome, ack) is in `worker/job.rs`.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

mod claims;
mod classify;
pub mod gate;
mod group;
mod job;
mod old_layout;
mod outage;
mod outcomes;
pub mod source;
mod support;
mod unknown;

use crate::abdm::AbdmClient;
use crate::breaker::{Breaker, BreakerConfig};
use crate::jobs::kind::JobKind;
use crate::queue::publish::Publisher;
use crate::queue::{self, Topology};
use crate::ratelimit::RateLimiter;
use crate::relay::{reconnect_backoff, sleep_or_stop};
use crate::store::Store;
use claims::Claimer;
pub use gate::{JobGate, Leases, MemoryLeases};
use outcomes::OutcomeWriter;
pub use source::{DeadLetters, Inbound, MemoryQueue, Settled};

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Lease owner name (host, pid and a random suffix by default).
    pub id: String,
    /// Calls in flight at once; also the prefetch (of the shared work queue, or of each
    /// kind's queue with `rabbitmq.queue_per_kind`).
    pub in_flight: u16,
    /// Lease length. The lease invariant: a job's lease is re-checked and extended to `lease`
    /// right before every call that changes something at ABDM, and one HTTP attempt lasts at
    /// most the request timeout, which config validation keeps below half of `lease`; so no
    /// other worker can take a job over while its call is in flight.
    pub lease: Duration,
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
    /// Work held unacked, in time at the current rate (the prefetch; see [`prefetch_for`]).
    pub prefetch_horizon: Duration,
    /// Longest a delivery that cannot start is held (`worker.hold_max_secs`): then a stored
    /// job's message is acked unrun (its recheck row publishes it again) and a producer's is
    /// requeued. Below RabbitMQ's `consumer_timeout`.
    pub hold_max: Duration,
}

impl WorkerConfig {
    /// From `[worker]` settings.
    pub fn from_settings(s: &crate::config::WorkerSettings) -> Self {
        Self {
            // A random suffix: two replicas with the same hostname and pid (containers on host
            // networking, pid 1) are two owners, also to a previous release's fence and outcome
            // write, which match only the owner (this release also matches the claim token).
            id: format!(
                "{}-{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            ),
            in_flight: s.in_flight,
            lease: s.lease,
            max_attempts: s.max_attempts,
            backoff_base: s.backoff_base,
            backoff_cap: s.backoff_cap,
            grace: s.grace_period,
            kinds: JobKind::ALL.to_vec(),
            prefetch_horizon: s.prefetch_horizon,
            hold_max: s.hold_max,
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

    /// Delay of a postponed job (one whose failure was not about its row): `retry_after`, or
    /// the first backoff step without one, spread over up to twice that so the jobs that
    /// failed together do not return together; a throttled job's over only a tenth more,
    /// since the limiter's shared pause and pacing spread those already (the full spread
    /// brought the last throttled job of an over-configured run back a second late: +5 % wall
    /// time).
    pub fn postpone_delay(&self, retry_after: Option<Duration>, throttled: bool) -> Duration {
        let spread = if throttled { 0.1 } else { 1.0 };
        retry_after
            .unwrap_or(self.backoff_base)
            .mul_f64(1.0 + spread * rand::random::<f64>())
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
    /// The store again, as the gate's lease holder (one allocation, not one per job).
    leases: Arc<dyn Leases>,
    /// Deliveries let go after a bounded hold (counted, logged once per hold).
    holds: support::Holds,
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
        let breaker = BreakerConfig {
            replica: cfg.id.clone(),
            ..breaker
        };
        let breaker = Arc::new(Breaker::new(store.clone(), client.client_id(), breaker));
        Arc::new(Self {
            leases: Arc::new(store.clone()),
            store,
            client,
            limiter,
            breaker,
            topology,
            cfg,
            holds: support::Holds::default(),
        })
    }

    /// Fetches the session and ABDM's key (through the limiter) before the first job takes a
    /// token: see [`AbdmClient::warm_up`]. Bounded (10 s) and never fatal: with ABDM down the
    /// jobs meet the circuit breaker instead.
    async fn warm_up(&self, stop: &CancellationToken) {
        let mut trace = crate::abdm::CallTrace::gated(self.limiter.clone());
        let bound = Duration::from_secs(10);
        tokio::select! {
            r = tokio::time::timeout(bound, self.client.warm_up(&mut trace)) => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "warm-up call failed; jobs will retry it"),
                Err(_) => tracing::debug!("warm-up timed out; jobs will retry it"),
            },
            _ = stop.cancelled() => {}
        }
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
        if self.store.key_stale() && !stop.is_cancelled() {
            tracing::warn!("stale pii.key: worker consumes nothing until it is restarted");
            stop.cancelled().await;
        }
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
        let prefetch = prefetch_for(
            self.limiter.current_rate(),
            self.cfg.prefetch_horizon,
            self.cfg.in_flight,
        );
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .ctx("setting the prefetch")?;
        let publisher = Publisher::open(&conn, self.topology.clone()).await?;
        // Warm up before consuming: a delivery's hold starts when the consume loop sees it, so
        // deliveries buffered during a warm-up that waits (up to 10 s, for the rate budget
        // while Postgres is down) were held that much longer than `hold_max` (the chaos run saw
        // a restarted worker's channel closed by a 20 s `consumer_timeout`).
        self.warm_up(stop).await;
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
        // A changed `rabbitmq.queue_per_kind`: the previous layout's queues are drained too.
        let (old, _rounds) =
            old_layout::start(url, &ch, &self.topology, &self.cfg.kinds, &self.cfg.id).await?;
        consumers.extend(old);
        let deliveries = futures::stream::select_all(consumers).map(|d| {
            d.map(source::lapin_inbound)
                .map_err(|cause| queue::QueueError::Amqp {
                    what: "receiving",
                    cause,
                })
        });
        let result = self
            .serve_warm(deliveries, Arc::new(publisher.clone()), stop)
            .await;
        if result.is_ok() {
            publisher.close().await;
            let _ = ch.close(200, "worker stopping".into()).await;
        }
        let _ = conn.close(200, "worker stopping".into()).await;
        result
    }

    /// The consume loop over any [`source`] of messages: each delivery runs as its own task,
    /// at most `in_flight` at once. `Ok` when stopped or stale (in-flight jobs finished within the
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
        self.warm_up(stop).await;
        self.serve_warm(deliveries, dead, stop).await
    }

    /// [`Self::serve`] without the warm-up (RabbitMQ's consumer warms up before it consumes).
    async fn serve_warm<S>(
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
        let claimer = Claimer::start(self.store.clone(), self.cfg.id.clone(), self.cfg.lease);
        let mut tasks = tokio::task::JoinSet::new();
        // The breaker's probe must not depend on deliveries: while it is open the relay
        // publishes nothing and a delivery is postponed, not held, so none would probe.
        let prober = {
            let me = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    sleep_or_stop(me.breaker.refresh_every(), &stop).await;
                    me.breaker.probe_if_due(&me.client).await;
                }
            })
        };
        let _prober = AbortOnDrop(prober);
        // A stale process (store::keyset) stops as on shutdown: nothing new is taken and what
        // has not started is handed back; the process stays up, not ready, until stopped.
        let halt = stop.child_token();
        let _stale = AbortOnDrop(tokio::spawn({
            let (halt, stale) = (halt.clone(), self.store.keys.stale_token());
            async move {
                tokio::select! {
                    _ = stale.cancelled() => halt.cancel(),
                    _ = halt.cancelled() => {}
                }
            }
        }));
        let stop = &halt;
        tracing::info!(worker = %self.cfg.id, in_flight = self.cfg.in_flight, "worker consuming");
        let result = loop {
            tokio::select! {
                // Stop first: a message handed back on stop must not be taken again.
                biased;
                _ = stop.cancelled() => break Ok(()),
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        // A delivery's hold starts when it arrives, not when a slot frees: while
                        // Postgres is down the slots stay taken by claimed jobs whose deliveries
                        // were let go, RabbitMQ sends more in their place, and those would wait
                        // here past `consumer_timeout`. So each waits for its slot in its own
                        // task, at most `hold_max` (the prefetch bounds how many wait).
                        let deadline = tokio::time::Instant::now() + self.cfg.hold_max;
                        let me = self.clone();
                        let dead = dead.clone();
                        let stop = stop.clone();
                        let (writer, claimer, permits) = (writer.clone(), claimer.clone(), permits.clone());
                        tasks.spawn(async move {
                            let permit = tokio::select! {
                                p = permits.acquire_owned() => p.expect("semaphore open"),
                                _ = stop.cancelled() => return delivery.settle(Settled::Requeue).await,
                                _ = tokio::time::sleep_until(deadline) => return me.let_go_unstarted(&delivery).await,
                            };
                            me.handle(delivery, dead.as_ref(), &claimer, &writer, &stop, deadline).await;
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
}

/// Aborts a background task when the consume loop ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The prefetch for a worker whose rate is `rate` calls/s: `horizon` of calls
/// (`worker.prefetch_horizon_ms`), at least 2, at most `in_flight` (the calls in flight at
/// once). Messages beyond what it can start soon only wait for tokens here while other
/// replicas idle, sit ahead of every other programme's work, and must be handed back on stop
/// (at 5/s, 60 prefetched messages took a whole 30 s grace). At the default 20/s and 0.5 s
/// that is 10; at 128/s and above, `in_flight`. Set when the consumer starts (RabbitMQ
/// applies a new `basic.qos` only to consumers started after it).
fn prefetch_for(rate: f64, horizon: Duration, in_flight: u16) -> u16 {
    let want = (rate * horizon.as_secs_f64()).ceil();
    if want.is_finite() {
        (want.max(2.0) as u64).min(u64::from(in_flight)) as u16
    } else {
        in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_holds_its_horizon_of_work() {
        let half = Duration::from_millis(500);
        assert_eq!(prefetch_for(5.0, half, 64), 3);
        assert_eq!(prefetch_for(20.0, half, 64), 10);
        assert_eq!(prefetch_for(100.0, half, 64), 50);
        assert_eq!(prefetch_for(200.0, half, 64), 64);
        assert_eq!(prefetch_for(0.2, half, 64), 2);
        assert_eq!(prefetch_for(f64::INFINITY, half, 64), 64);
    }

    #[test]
    fn retry_and_postpone_delays_stay_within_their_envelopes() {
        let cfg = WorkerConfig {
            id: "t".into(),
            in_flight: 1,
            lease: Duration::from_secs(1),
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(1000),
            grace: Duration::from_secs(1),
            kinds: vec![],
            prefetch_horizon: Duration::from_millis(500),
            hold_max: Duration::from_secs(600),
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
        let ra = Some(Duration::from_secs(1));
        let throttled: Vec<Duration> = (0..200).map(|_| cfg.postpone_delay(ra, true)).collect();
        assert!(
            throttled
                .iter()
                .all(|d| (Duration::from_secs(1)..=Duration::from_millis(1100)).contains(d))
        );
        let other: Vec<Duration> = (0..200).map(|_| cfg.postpone_delay(None, false)).collect();
        assert!(
            other
                .iter()
                .all(|d| (Duration::from_millis(100)..=Duration::from_millis(200)).contains(d))
        );
        assert!(other.iter().any(|d| *d > Duration::from_millis(150)));
    }
}
