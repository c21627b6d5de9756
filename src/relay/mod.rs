//! The outbox relay: publishes due outbox rows to RabbitMQ with confirms, a few seconds of
//! work at a time, in the order the fair scheduler picks (`broker`); and, in a task of its
//! own that keeps running while RabbitMQ is unreachable, the housekeeping (lease expiry,
//! batch closing, X-token sweep, aborted submits, gauges).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::queue::publish::Publisher;
use crate::queue::{self, Topology};
use crate::store::Store;

pub mod broker;
pub mod housekeeping;

use housekeeping::GAUGE_INTERVAL;

/// The relay's pace, from `[relay]` (see `config/default.toml` for why each value), and what
/// the scheduler needs from the rest of the settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Most messages per publish round.
    pub batch: i64,
    /// Sleep when nothing is due (or the broker is full).
    pub idle: Duration,
    /// How often to run the housekeeping (lease expiry, batch closing, gauges).
    pub housekeeping: Duration,
    /// How long a round may wait for RabbitMQ's confirms before it gives up and reconnects.
    /// The round's outbox rows are leased for this plus 5 s: if the relay dies mid-round they
    /// are published again that much later (confirms normally take milliseconds).
    pub publish_timeout: Duration,
    /// Seconds of work the work queue holds at the fleet's rate.
    pub broker_horizon: Duration,
    /// Fewest ready messages kept in the work queue.
    pub broker_min: u32,
    /// Most ready messages kept in the work queue (also when the rate is unknown).
    pub broker_max: u32,
    /// The ABDM client whose shared rate budget gives the fleet's rate (`None`: no shared
    /// budget, the rate is `fallback_rate`).
    pub rate_client: Option<String>,
    /// The rate workers are configured with, when the shared budget says nothing.
    pub fallback_rate: Option<f64>,
    /// Programme weights (`benefits.weights`).
    pub weights: HashMap<String, f64>,
    /// What the housekeeping erases and purges, and when (`[retention]`).
    pub retention: crate::lifecycle::RetentionPolicy,
    /// How long after a publish the relay looks again at what it published (the outbox's
    /// recheck rows, `store::outbox`): jobs still waiting to run then are published again.
    pub republish_after: Duration,
    /// The ABDM client whose shared circuit breaker gates publishing: while it is open the
    /// relay publishes nothing (every message would only be postponed by a worker). `None`:
    /// no gate (tools and tests that run a relay without workers).
    pub circuit_client: Option<String>,
}

impl RelayConfig {
    /// From the `[relay]` settings alone (no rate known: the broker holds `broker_max`).
    pub fn from_settings(s: &crate::config::RelaySettings) -> Self {
        Self {
            batch: i64::from(s.batch),
            idle: s.idle,
            housekeeping: s.housekeeping,
            publish_timeout: s.publish_timeout,
            retention: crate::lifecycle::RetentionPolicy::default(),
            broker_horizon: s.broker_horizon,
            broker_min: s.broker_min,
            broker_max: s.broker_max,
            republish_after: s.republish_after,
            circuit_client: None,
            rate_client: None,
            fallback_rate: None,
            weights: HashMap::new(),
        }
    }

    /// For a relay of the fleet: `[relay]`, plus the fleet's rate (the shared budget of
    /// `abdm.client_id`, else `worker.rate_per_second`) and the programme weights.
    pub fn for_fleet(s: &crate::config::Settings) -> Self {
        Self {
            rate_client: s.worker.global_rate_limit.then(|| s.abdm.client_id.clone()),
            circuit_client: Some(s.abdm.client_id.clone()),
            fallback_rate: Some(s.worker.rate_per_second),
            weights: s.benefits.weights.clone(),
            ..Self::from_settings(&s.relay).with_retention(&s.retention)
        }
    }

    /// Ready messages to keep in the work queue at `rate` calls/s.
    pub fn broker_target(&self, rate: Option<f64>) -> u64 {
        let (min, max) = (u64::from(self.broker_min), u64::from(self.broker_max));
        match rate {
            Some(r) if r.is_finite() && r > 0.0 => {
                ((r * self.broker_horizon.as_secs_f64()).ceil() as u64).clamp(min, max)
            }
            _ => max,
        }
    }

    /// With the `[retention]` settings.
    pub fn with_retention(mut self, s: &crate::config::RetentionSettings) -> Self {
        self.retention = crate::lifecycle::RetentionPolicy::from_settings(s);
        self
    }
}

/// The values of `config/default.toml` (tests and benchmarks that build a relay without
/// settings; a unit test keeps the two equal).
impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            idle: Duration::from_millis(100),
            housekeeping: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(10),
            retention: crate::lifecycle::RetentionPolicy::default(),
            broker_horizon: Duration::from_millis(500),
            broker_min: 20,
            broker_max: 2000,
            republish_after: Duration::from_secs(600),
            circuit_client: None,
            rate_client: None,
            fallback_rate: None,
            weights: HashMap::new(),
        }
    }
}

/// Runs until `stop`; reconnects to RabbitMQ with backoff when the connection drops. The
/// housekeeping runs beside it and does not wait for RabbitMQ.
pub async fn run(
    store: Store,
    amqp_url: String,
    topology: Topology,
    cfg: RelayConfig,
    stop: CancellationToken,
) {
    let chores = tokio::spawn(chores(store.clone(), cfg.clone(), stop.clone()));
    let mut backoff = reconnect_backoff();
    let mut scheduling = broker::Scheduling::default();
    'connect: while !stop.is_cancelled() {
        let publisher = match connect(&amqp_url, &topology).await {
            Ok(p) => {
                backoff = reconnect_backoff();
                p
            }
            Err(e) => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                queue::link::down("relay", &amqp_url, &e, wait);
                sleep_or_stop(wait, &stop).await;
                continue;
            }
        };
        tracing::info!("relay publishing");
        while !stop.is_cancelled() {
            match scheduling.round(&store, &publisher, &cfg).await {
                Ok(broker::Round::Idle) => sleep_or_stop(cfg.idle, &stop).await,
                Ok(broker::Round::Published(n)) => tracing::debug!(published = n, "relay round"),
                Err(broker::RoundError::Queue(e)) => {
                    tracing::warn!(error = %e, "publishing failed; reconnecting");
                    continue 'connect;
                }
                Err(broker::RoundError::Store(e)) => {
                    tracing::warn!(error = %e, "outbox unavailable; retrying");
                    sleep_or_stop(Duration::from_secs(1), &stop).await;
                }
            }
            if !publisher.is_connected() {
                tracing::warn!("RabbitMQ channel closed; reconnecting");
                continue 'connect;
            }
        }
    }
    let _ = chores.await;
}

/// The housekeeping and the gauges, every `every`, until `stop`: in a task of its own so that
/// lease expiry, batch closing, the X-token sweep and aborted submits go on while RabbitMQ is
/// unreachable (they need only Postgres). Webhooks go out from a task of their own
/// (`api::webhooks::run`, started beside the relay), so a hung receiver delays nothing here.
async fn chores(store: Store, cfg: RelayConfig, stop: CancellationToken) {
    let mut last_gauges = Instant::now() - GAUGE_INTERVAL;
    // The data lifecycle's retention sweep (docs/privacy.md) is housekeeping too.
    let mut sweeper = crate::lifecycle::Sweeper::new(cfg.retention.clone());
    while !stop.is_cancelled() {
        housekeeping::round(&store).await;
        // A stale process (store::keyset) writes no retention erasures or purges.
        if !store.key_stale() {
            sweeper.round(&store).await;
        }
        if last_gauges.elapsed() >= GAUGE_INTERVAL {
            housekeeping::batch_gauges(&store).await;
            last_gauges = Instant::now();
        }
        sleep_or_stop(cfg.housekeeping, &stop).await;
    }
}

/// Capped exponential backoff for reconnects (0.2 s doubling to 30 s, forever).
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn connect(url: &str, topology: &Topology) -> Result<Publisher, queue::QueueError> {
    let conn = queue::connect(url).await?;
    let ch = conn
        .create_channel()
        .await
        .map_err(|cause| queue::QueueError::Amqp {
            what: "opening a channel",
            cause,
        })?;
    topology.declare(&ch).await?;
    Publisher::open(&conn, topology.clone()).await
}

/// Sleeps `d` or until `stop`.
pub async fn sleep_or_stop(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_what_default_toml_says() {
        let settings = crate::config::Settings::load_with_env(
            &crate::config::ConfigSource {
                dir: "/nonexistent".into(),
                env: "local".into(),
                file: None,
            },
            Vec::new(),
        )
        .unwrap();
        assert_eq!(
            RelayConfig::from_settings(&settings.relay),
            RelayConfig::default()
        );
    }
}
