//! The outbox relay: publishes due outbox rows to RabbitMQ with confirms and deletes them in
//! the same transaction; every few seconds it also re-queues jobs whose lease expired, closes
//! finished batches, and refreshes the backlog gauges.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::queue::publish::Publisher;
use crate::queue::{self, Topology};
use crate::store::Store;

pub mod housekeeping;

use housekeeping::GAUGE_INTERVAL;

/// The relay's pace, from `[relay]` (see `config/default.toml` for why each value).
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Rows per publish round.
    pub batch: i64,
    /// Sleep when nothing is due.
    pub idle: Duration,
    /// How often to run the housekeeping (lease expiry, batch closing, gauges).
    pub housekeeping: Duration,
    /// How long a round may wait for RabbitMQ's confirms before it gives up and reconnects.
    /// The round's outbox rows are leased for this plus 5 s: if the relay dies mid-round they
    /// are published again that much later (confirms normally take milliseconds).
    pub publish_timeout: Duration,
    /// What the housekeeping erases and purges, and when (`[retention]`).
    pub retention: crate::lifecycle::RetentionPolicy,
}

impl RelayConfig {
    /// From the `[relay]` settings.
    pub fn from_settings(s: &crate::config::RelaySettings) -> Self {
        Self {
            batch: i64::from(s.batch),
            idle: s.idle,
            housekeeping: s.housekeeping,
            publish_timeout: s.publish_timeout,
            retention: crate::lifecycle::RetentionPolicy::default(),
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
        }
    }
}

/// Runs until `stop`; reconnects to RabbitMQ with backoff when the connection drops.
pub async fn run(
    store: Store,
    amqp_url: String,
    topology: Topology,
    cfg: RelayConfig,
    stop: CancellationToken,
) {
    let mut backoff = reconnect_backoff();
    let mut last_housekeeping = Instant::now() - cfg.housekeeping;
    let mut last_gauges = Instant::now() - GAUGE_INTERVAL;
    // Webhooks of the programme API go out from here (docs/api.md).
    let webhooks = reqwest::Client::new();
    let mut sweeper = crate::lifecycle::Sweeper::new(cfg.retention.clone());
    while !stop.is_cancelled() {
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
        loop {
            if stop.is_cancelled() {
                return;
            }
            if last_housekeeping.elapsed() >= cfg.housekeeping {
                housekeeping::round(&store).await;
                sweeper.round(&store).await;
                crate::api::webhooks::round(&store, &webhooks).await;
                last_housekeeping = Instant::now();
            }
            if last_gauges.elapsed() >= GAUGE_INTERVAL {
                housekeeping::batch_gauges(&store).await;
                last_gauges = Instant::now();
            }
            let round = store
                .publish_due(
                    cfg.batch,
                    cfg.publish_timeout + Duration::from_secs(5),
                    |rows| {
                        let publisher = &publisher;
                        let timeout = cfg.publish_timeout;
                        async move {
                            let count = rows.len();
                            tokio::time::timeout(timeout, publisher.publish_jobs(&rows))
                                .await
                                .unwrap_or(Err(queue::QueueError::NotConfirmed {
                                    count,
                                    reason: "no confirm within the publish timeout",
                                }))
                        }
                    },
                )
                .await;
            match round {
                Ok(Ok(0)) => sleep_or_stop(cfg.idle, &stop).await,
                Ok(Ok(n)) => tracing::debug!(published = n, "relay round"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "publishing failed; reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox unavailable; retrying");
                    sleep_or_stop(Duration::from_secs(1), &stop).await;
                }
            }
            if !publisher.is_connected() {
                tracing::warn!("RabbitMQ channel closed; reconnecting");
                break;
            }
        }
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
