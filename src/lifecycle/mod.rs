//! The data lifecycle (DPDP Act 2023, docs/privacy.md): identifiers are erased a set time
//! after their batch finishes ([`Sweeper`], run by every relay's housekeeping) and on a
//! person's request ([`erase`]); the tables that only grew are purged by age.
//!
//! Erasure overwrites in place (payload emptied, result and lookup hashes replaced) rather
//! than shredding a per-batch key: a request erases a few rows of many batches, which a
//! batch key cannot do without re-encrypting the rest of each batch, and one scheme for both
//! paths keeps `rekey` simple. Backups taken before an erasure keep the old values until they
//! age out (docs/privacy.md says how long to keep them).

use std::time::{Duration, Instant};

use crate::config::RetentionSettings;
use crate::store::Store;
use crate::store::retention::{IdentifierRetention, Purge};
use crate::telemetry::metrics;

pub mod erase;

const DAY: u64 = 86_400;

/// How long each kind of record is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionPolicy {
    /// Identifiers of finished batches.
    pub identifiers: IdentifierRetention,
    /// Rows of erased batches (after their erasure).
    pub rows: Duration,
    /// `attempts`.
    pub attempts: Duration,
    /// `webhook_deliveries`.
    pub webhook_deliveries: Duration,
    /// `api_idempotency` with an answer.
    pub api_idempotency: Duration,
    /// `api_idempotency` still marked running.
    pub api_idempotency_running: Duration,
    /// Outbox rows of finished jobs or batches.
    pub outbox_debris: Duration,
    /// `reveal_audit` and `erasure_log`.
    pub audit: Duration,
    /// Job ids per erasure chunk.
    pub chunk: i64,
}

impl RetentionPolicy {
    /// From the `[retention]` settings.
    pub fn from_settings(s: &RetentionSettings) -> Self {
        let days = |d: u32| Duration::from_secs(u64::from(d) * DAY);
        Self {
            identifiers: IdentifierRetention {
                default: days(s.identifiers_days),
                per_benefit: s
                    .benefit_identifiers_days
                    .iter()
                    .map(|(b, d)| (b.clone(), days(*d)))
                    .collect(),
            },
            rows: days(s.rows_days),
            attempts: days(s.attempts_days),
            webhook_deliveries: days(s.webhook_deliveries_days),
            api_idempotency: days(s.api_idempotency_days),
            api_idempotency_running: Duration::from_secs(
                u64::from(s.api_idempotency_running_hours) * 3600,
            ),
            outbox_debris: days(s.outbox_debris_days),
            audit: days(s.audit_days),
            chunk: i64::from(s.chunk.max(1)),
        }
    }

    /// How long rows of `table` are kept.
    pub fn keep(&self, table: Purge) -> Duration {
        match table {
            Purge::Attempts => self.attempts,
            Purge::WebhookDeliveries => self.webhook_deliveries,
            Purge::ApiIdempotency => self.api_idempotency,
            Purge::ApiIdempotencyRunning => self.api_idempotency_running,
            Purge::OutboxDebris => self.outbox_debris,
            Purge::RevealAudit | Purge::ErasureLog => self.audit,
        }
    }
}

/// The `config/default.toml` values.
impl Default for RetentionPolicy {
    fn default() -> Self {
        Self::from_settings(&RetentionSettings::default())
    }
}

/// Time one housekeeping round may spend erasing identifiers: the relay publishes from the
/// same loop, so a backlog of erasure is worked off in slices instead of one long stall.
const ROUND_BUDGET: Duration = Duration::from_millis(300);

/// How often the other tables are purged and the gauges refreshed (each a few short queries).
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Rows deleted per purge statement, and statements per table per purge.
const PURGE_CHUNK: i64 = 5000;
const PURGE_STATEMENTS: usize = 20;

/// How often a batch being erased logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The retention sweep of one relay. Its state is only pacing: every replica runs one, and
/// the database decides who erases what (see [`crate::store::retention`]).
#[derive(Debug)]
pub struct Sweeper {
    policy: RetentionPolicy,
    last_purge: Option<Instant>,
    last_progress: Instant,
    erased_since_progress: u64,
}

impl Sweeper {
    /// A sweeper with `policy`.
    pub fn new(policy: RetentionPolicy) -> Self {
        Self {
            policy,
            last_purge: None,
            last_progress: Instant::now(),
            erased_since_progress: 0,
        }
    }

    /// One housekeeping round: erase chunks of overdue batches for up to [`ROUND_BUDGET`],
    /// and every [`PURGE_EVERY`] purge the other tables and refresh the gauges. Errors are
    /// logged and tried again next round.
    pub async fn round(&mut self, store: &Store) {
        let started = Instant::now();
        while started.elapsed() < ROUND_BUDGET {
            match store
                .sweep_identifiers(&self.policy.identifiers, self.policy.chunk)
                .await
            {
                Ok(c) => {
                    let Some(batch) = c.batch else { break };
                    metrics::RETENTION_ERASED
                        .with_label_values(&["jobs"])
                        .inc_by(c.jobs);
                    self.erased_since_progress += c.jobs;
                    if c.batch_done {
                        tracing::info!(%batch, "retention: identifiers of the batch erased");
                    } else if self.last_progress.elapsed() >= PROGRESS_EVERY {
                        tracing::info!(
                            %batch,
                            rows = self.erased_since_progress,
                            "retention: erasing identifiers (rows erased since the last line)"
                        );
                        self.last_progress = Instant::now();
                        self.erased_since_progress = 0;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: erasing identifiers failed");
                    break;
                }
            }
        }
        while started.elapsed() < ROUND_BUDGET {
            match store.sweep_rows(self.policy.rows, self.policy.chunk).await {
                Ok(c) => {
                    let Some(batch) = c.batch else { break };
                    metrics::RETENTION_ERASED
                        .with_label_values(&["jobs_deleted"])
                        .inc_by(c.jobs);
                    if c.batch_done {
                        tracing::info!(%batch, "retention: rows of the erased batch deleted");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: deleting erased rows failed");
                    break;
                }
            }
        }
        if self.last_purge.is_some_and(|t| t.elapsed() < PURGE_EVERY) {
            return;
        }
        self.last_purge = Some(Instant::now());
        self.purge(store).await;
        match store.retention_stats(&self.policy.identifiers).await {
            Ok(s) => {
                metrics::RETENTION_OLDEST.set(s.oldest_unerased_secs);
                metrics::RETENTION_OVERDUE.set(s.overdue_secs);
            }
            Err(e) => tracing::warn!(error = %e, "retention: reading the oldest batch failed"),
        }
    }

    /// Purges every table by age, a bounded number of chunks each.
    pub async fn purge(&self, store: &Store) {
        for table in Purge::ALL {
            let mut total = 0;
            for _ in 0..PURGE_STATEMENTS {
                match store
                    .purge(table, self.policy.keep(table), PURGE_CHUNK)
                    .await
                {
                    Ok(n) => {
                        total += n;
                        if n < PURGE_CHUNK as u64 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, table = table.label(), "retention: purge failed");
                        break;
                    }
                }
            }
            if total > 0 {
                metrics::RETENTION_ERASED
                    .with_label_values(&[table.label()])
                    .inc_by(total);
                tracing::info!(
                    table = table.label(),
                    rows = total,
                    "retention: purged rows past their retention"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, Settings};

    fn load(vars: &[(&str, &str)]) -> Settings {
        Settings::load_with_env(
            &ConfigSource {
                dir: "/nonexistent".into(),
                env: "local".into(),
                file: None,
            },
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap()
    }

    #[test]
    fn default_is_what_default_toml_says() {
        let p = RetentionPolicy::from_settings(&load(&[]).retention);
        assert_eq!(p, RetentionPolicy::default());
        assert_eq!(p.identifiers.default, Duration::from_secs(30 * DAY));
        assert_eq!(p.audit, Duration::from_secs(365 * DAY));
    }

    #[test]
    fn a_programme_override_comes_from_the_environment() {
        let s = load(&[
            ("ABHA_BULK__RETENTION__BENEFIT_IDENTIFIERS_DAYS__PMJAY", "7"),
            ("ABHA_BULK__RETENTION__ROWS_DAYS", "5"),
        ]);
        let p = RetentionPolicy::from_settings(&s.retention);
        // Names are compared without case in SQL (environment variables arrive lower-cased).
        assert_eq!(
            p.identifiers.per_benefit,
            vec![("pmjay".to_string(), Duration::from_secs(7 * DAY))]
        );
        assert_eq!(p.rows, Duration::from_secs(5 * DAY));
        assert_eq!(p.keep(Purge::ErasureLog), p.audit);
    }
}
