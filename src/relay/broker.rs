//! The scheduling relay's round: RabbitMQ holds only a second or so of work (the bounded
//! broker), and the fair scheduler picks what fills it.
//!
//! Why bound the broker: a message in RabbitMQ is first come, first served. When the relay
//! published a whole file at once, a 50-row batch submitted behind a million rows waited for
//! all of them (14 hours at 20/s), 20 000 messages sat in the queue, and nothing could change
//! the order any more. Now the relay reads the work queue's ready count before each round and
//! publishes only up to `rate × relay.broker_horizon_ms` (within `broker_min..broker_max`);
//! everything else waits in Postgres, where the stride scheduler (`crate::scheduler`) decides,
//! round by round, which programme and batch go next.
//!
//! While the shared ABDM circuit breaker is open the relay publishes nothing: every message
//! would only be postponed by a worker (and held, before issue 18). The work waits in
//! Postgres; the workers' background probe closes the breaker again.
//!
//! Due recheck rows (`store::recheck`) are expanded first in each round, within the same room:
//! they republish only jobs whose message was lost, so they are few, and their jobs have
//! waited longest.
//!
//! Only one relay schedules at a time (the advisory lock of
//! [`crate::store::schedule::SchedulerLock`]): two relays reading the same depth would each
//! fill it. The others keep their housekeeping and take over within a second when it dies.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::RelayConfig;
use crate::queue::{self, publish::Publisher};
use crate::scheduler::{Candidate, Scheduler};
use crate::store::schedule::{BatchShare, SchedulerLock};
use crate::store::{Store, StoreError};
use crate::telemetry::metrics;

/// How often a standby relay tries to take the lock, the leader checks it still holds it, and
/// the fleet's rate is read again.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How often the scheduler's view (`batch_shares`, `batch_minutes`, the share gauges) is
/// written: the window its shares and rates are measured over.
const VIEW_EVERY: Duration = Duration::from_secs(3);

/// What a round did.
#[derive(Debug, PartialEq)]
pub enum Round {
    /// Published this many messages.
    Published(usize),
    /// Nothing to do now (not the leader, the broker is full, or nothing is due).
    Idle,
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// RabbitMQ failed: reconnect.
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    /// Postgres failed: try again shortly.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The scheduling state of one relay.
pub struct Scheduling {
    scheduler: Scheduler,
    lock: Option<SchedulerLock>,
    checked: Option<Instant>,
    rate: Option<f64>,
    view_since: Instant,
    /// Published per batch since the view was last written.
    published: BTreeMap<Uuid, u64>,
    /// The last round's candidates (backlog and programme per batch).
    seen: HashMap<Uuid, Candidate>,
    /// The ABDM circuit breaker was open when last read (every [`CHECK_EVERY`]).
    circuit_open: bool,
}

impl Default for Scheduling {
    fn default() -> Self {
        Self {
            scheduler: Scheduler::new(),
            lock: None,
            checked: None,
            rate: None,
            view_since: Instant::now(),
            published: BTreeMap::new(),
            seen: HashMap::new(),
            circuit_open: false,
        }
    }
}

impl Scheduling {
    /// True while this relay holds the scheduling lock.
    pub fn is_leader(&self) -> bool {
        self.lock.as_ref().is_some_and(SchedulerLock::held)
    }

    /// One round: leadership, the broker's room, the fair plan, the publish.
    pub async fn round(
        &mut self,
        store: &Store,
        publisher: &Publisher,
        cfg: &RelayConfig,
    ) -> Result<Round, RoundError> {
        if self.checked.is_none_or(|t| t.elapsed() >= CHECK_EVERY) {
            self.checked = Some(Instant::now());
            self.check_lock(store).await?;
            if let Some(client) = &cfg.rate_client {
                self.rate = store.fleet_rate(client).await?.or(cfg.fallback_rate);
            } else {
                self.rate = cfg.fallback_rate;
            }
            if let Some(client) = &cfg.circuit_client {
                let open = store.circuit(client).await?.open;
                if open != self.circuit_open && self.is_leader() {
                    if open {
                        tracing::warn!(
                            "ABDM circuit breaker open: the relay publishes nothing until it closes"
                        );
                    } else {
                        tracing::info!("ABDM circuit breaker closed: the relay publishes again");
                    }
                }
                self.circuit_open = open;
            }
        }
        if !self.is_leader() {
            return Ok(Round::Idle);
        }
        if self.circuit_open {
            if self.view_since.elapsed() >= VIEW_EVERY {
                self.write_view(store).await?;
            }
            return Ok(Round::Idle);
        }
        let target = cfg.broker_target(self.rate);
        metrics::BROKER_TARGET.set(target as f64);
        let ready = publisher.ready_messages().await?;
        let mut room = target.saturating_sub(ready).min(cfg.batch.max(1) as u64);
        // Top up in steps of at least a quarter of the target (or the whole room when the
        // target is small), so a busy queue is not refilled one message per round trip.
        let step = (target / 4).clamp(1, 50);
        let mut published_now = 0;
        if room >= step {
            let lease = cfg.publish_timeout + Duration::from_secs(5);
            let timeout = cfg.publish_timeout;
            let republished = store
                .publish_rechecks(room as i64, lease, cfg.republish_after, |rows| {
                    publish_within(publisher, timeout, rows)
                })
                .await??;
            if republished > 0 {
                metrics::REPUBLISHED.inc_by(republished as u64);
                tracing::info!(
                    jobs = republished,
                    "republished jobs whose message was lost (recheck rows)"
                );
                published_now += republished;
                room = room.saturating_sub(republished as u64);
            }
        }
        if room >= step {
            let candidates = store.due_candidates(room as i64).await?;
            if !candidates.is_empty() {
                let weights = &cfg.weights;
                let plan = self.scheduler.allocate(
                    &candidates,
                    |p| weights.get(p).copied().unwrap_or(1.0),
                    room,
                );
                let lease = cfg.publish_timeout + Duration::from_secs(5);
                let timeout = cfg.publish_timeout;
                let result = store
                    .publish_plan(&plan, lease, cfg.republish_after, |rows| {
                        publish_within(publisher, timeout, rows)
                    })
                    .await?;
                let published = result?;
                tracing::debug!(
                    target: "abha_bulk::relay::plan",
                    room,
                    ready,
                    planned = ?plan.counts,
                    ?published,
                    "scheduling round"
                );
                for (batch, n) in &published {
                    published_now += *n as usize;
                    *self.published.entry(*batch).or_default() += n;
                    if let Some(c) = candidates.iter().find(|c| c.batch == *batch) {
                        metrics::SCHED_PUBLISHED
                            .with_label_values(&[c.programme.as_str()])
                            .inc_by(*n);
                    }
                }
            }
            self.seen = candidates.into_iter().map(|c| (c.batch, c)).collect();
        }
        if self.view_since.elapsed() >= VIEW_EVERY {
            self.write_view(store).await?;
        }
        Ok(if published_now > 0 {
            Round::Published(published_now)
        } else {
            Round::Idle
        })
    }

    /// Takes the lock when free (on a connection kept for it); drops the connection when it
    /// no longer answers (a new one is opened next time).
    async fn check_lock(&mut self, store: &Store) -> Result<(), StoreError> {
        let was = self.is_leader();
        if self.lock.is_none() {
            self.lock = Some(store.scheduler_lock().await?);
        }
        let lock = self.lock.as_mut().expect("just set");
        let ok = if lock.held() {
            lock.alive().await
        } else {
            lock.try_take().await.is_ok()
        };
        if !ok {
            self.lock = None;
        }
        match (was, self.is_leader()) {
            (false, true) => tracing::info!("this relay schedules (it holds the scheduling lock)"),
            (true, false) => {
                tracing::warn!("lost the scheduling lock's connection; standing by");
                self.scheduler = Scheduler::new();
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes the shares and rates measured since the last view, and the per-minute counts.
    async fn write_view(&mut self, store: &Store) -> Result<(), StoreError> {
        let secs = self.view_since.elapsed().as_secs_f64().max(1e-3);
        let total: u64 = self.published.values().sum();
        let shares: Vec<BatchShare> = self
            .seen
            .values()
            .map(|c| {
                let n = self.published.get(&c.batch).copied().unwrap_or(0);
                BatchShare {
                    batch: c.batch,
                    programme: c.programme.clone(),
                    share: if total > 0 {
                        n as f64 / total as f64
                    } else {
                        0.0
                    },
                    rate: n as f64 / secs,
                    backlog: c.available,
                }
            })
            .collect();
        let mut by_programme: BTreeMap<&str, f64> = BTreeMap::new();
        for s in &shares {
            *by_programme.entry(s.programme.as_str()).or_default() += s.share;
        }
        metrics::SCHED_SHARE.reset();
        for (p, share) in by_programme {
            metrics::SCHED_SHARE.with_label_values(&[p]).set(share);
        }
        store.write_shares(&shares).await?;
        store.add_minutes(&self.published).await?;
        self.published.clear();
        self.view_since = Instant::now();
        Ok(())
    }
}

/// Publishes `rows` with confirms, giving up after `timeout` (the rows' lease outlasts it by
/// 5 s, so no other relay publishes them meanwhile).
async fn publish_within(
    publisher: &Publisher,
    timeout: Duration,
    rows: Vec<crate::store::outbox::OutboxRow>,
) -> Result<(), queue::QueueError> {
    let count = rows.len();
    tokio::time::timeout(timeout, publisher.publish_jobs(&rows))
        .await
        .unwrap_or(Err(queue::QueueError::NotConfirmed {
            count,
            reason: "no confirm within the publish timeout",
        }))
}
