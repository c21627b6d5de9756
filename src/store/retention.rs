//! Retention in Postgres: erasing the identifiers of batches whose retention ran out, in
//! chunks of job ids, and purging the operational and audit tables that only grow.
//!
//! Every statement is short and touches a bounded number of rows, so the sweep can run on
//! every replica's housekeeping at once: a batch is worked on by whoever locked its row
//! (`FOR UPDATE SKIP LOCKED`; the others take the next batch or nothing), and a purge deletes
//! the oldest rows of a table a chunk at a time (two replicas deleting the same rows simply
//! find fewer).

use std::time::Duration;

use sqlx::Row;
use uuid::Uuid;

use super::{QueryContext, Store, StoreError};

/// What erasing one row does, shared by retention and erasure requests: the payload is
/// emptied, the result dropped, the lookup hashes replaced by values that match nothing (the
/// dedup hash by the job id, unique within the batch as the constraint needs), the X-token
/// flag set so the token sweep skips it. Counts, state, codes, masked values and the external
/// reference stay.
pub(crate) const ERASE_SET: &str = "payload = '\\x'::bytea, result = NULL,
    subject_hash = '\\x'::bytea, dedup_hash = int8send(jobs.id), token_deleted = true,
    erased_at = now(), updated_at = now()";

/// The retention of identifiers: a default and per-benefit overrides (benefit names compared
/// without case: environment variables arrive lower-cased).
#[derive(Debug, Clone, PartialEq)]
pub struct IdentifierRetention {
    /// After a batch finishes.
    pub default: Duration,
    /// `(benefit, retention)` overrides.
    pub per_benefit: Vec<(String, Duration)>,
}

impl IdentifierRetention {
    fn binds(&self) -> (Vec<String>, Vec<f64>, f64) {
        let names = self
            .per_benefit
            .iter()
            .map(|(b, _)| b.to_lowercase())
            .collect();
        let secs = self
            .per_benefit
            .iter()
            .map(|(_, d)| d.as_secs_f64())
            .collect();
        (names, secs, self.default.as_secs_f64())
    }
}

/// The retention of a batch, as SQL over `b` (`$1` names, `$2` seconds, `$3` default).
const BATCH_RETENTION: &str =
    "COALESCE((SELECT o.s FROM unnest($1::text[], $2::float8[]) AS o(b, s)
                                        WHERE o.b = lower(b.benefit) LIMIT 1), $3)";

/// One chunk of the sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepChunk {
    /// The batch worked on (None: nothing due, or every due batch is locked by another replica).
    pub batch: Option<Uuid>,
    /// Jobs erased by this chunk.
    pub jobs: u64,
    /// True when the chunk finished the batch.
    pub batch_done: bool,
}

/// Where the erasure of identifiers stands, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RetentionStats {
    /// Age in seconds of the oldest finished batch whose identifiers are not erased.
    pub oldest_unerased_secs: f64,
    /// How far past its retention the most overdue unerased batch is, seconds (0: none).
    pub overdue_secs: f64,
}

impl Store {
    /// Erases one chunk (`chunk` job ids) of the batch most overdue for erasure, in one short
    /// transaction that holds the batch row's lock. Another replica's sweep skips a locked
    /// batch. Running this again after a crash continues at the batch's `erase_cursor`.
    pub async fn sweep_identifiers(
        &self,
        retention: &IdentifierRetention,
        chunk: i64,
    ) -> Result<SweepChunk, StoreError> {
        let (names, secs, default) = retention.binds();
        let mut tx = self.pool.begin().await.ctx("starting a retention chunk")?;
        let sql = format!(
            "SELECT b.id, b.erase_cursor, b.erase_upto,
                    b.state = 'aborted' AS aborted
             FROM batches b
             WHERE b.erased_at IS NULL AND b.state IN ('finished', 'cancelled', 'aborted')
               AND COALESCE(b.finished_at, b.created_at) < now() - make_interval(secs => {BATCH_RETENTION})
             ORDER BY COALESCE(b.finished_at, b.created_at)
             LIMIT 1 FOR UPDATE SKIP LOCKED"
        );
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&names)
            .bind(&secs)
            .bind(default)
            .fetch_optional(&mut *tx)
            .await
            .ctx("finding a batch due for erasure")?
        else {
            return Ok(SweepChunk::default());
        };
        let batch: Uuid = row.get(0);
        let aborted: bool = row.get(3);
        let (cursor, upto): (i64, i64) = match (row.get(1), row.get(2)) {
            (Some(c), Some(u)) => (c, u),
            _ => {
                // The batch is closed: no job joins it any more, so its id range bounds the
                // work (one look at the batch's index entries, once).
                let r = sqlx::query(
                    "SELECT COALESCE(min(id) - 1, 0), COALESCE(max(id), 0) FROM jobs WHERE batch_id = $1",
                )
                .bind(batch)
                .fetch_one(&mut *tx)
                .await
                .ctx("finding a batch's job id range")?;
                let (c, u): (i64, i64) = (r.get(0), r.get(1));
                sqlx::query("UPDATE batches SET erase_cursor = $2, erase_upto = $3 WHERE id = $1")
                    .bind(batch)
                    .bind(c)
                    .bind(u)
                    .execute(&mut *tx)
                    .await
                    .ctx("recording a batch's job id range")?;
                (c, u)
            }
        };
        let end = upto.min(cursor.saturating_add(chunk));
        // Only rows that cannot run (an aborted batch's rows never run): a batch is closed
        // when none is open, and a batch re-opened by retry-failed is no longer picked.
        let jobs = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET {ERASE_SET}
             WHERE batch_id = $1 AND id > $2 AND id <= $3 AND erased_at IS NULL
               AND ($4 OR state NOT IN ('queued', 'running', 'retrying'))"
        )))
        .bind(batch)
        .bind(cursor)
        .bind(end)
        .bind(aborted)
        .execute(&mut *tx)
        .await
        .ctx("erasing a chunk of a batch's identifiers")?
        .rows_affected();
        let batch_done = end >= upto;
        if batch_done {
            let erased: i64 = sqlx::query_scalar(
                "UPDATE batches SET erase_cursor = $2, erased_at = now() WHERE id = $1
                 RETURNING (SELECT count(*) FROM jobs WHERE batch_id = $1)",
            )
            .bind(batch)
            .bind(end)
            .fetch_one(&mut *tx)
            .await
            .ctx("marking a batch erased")?;
            sqlx::query(
                "INSERT INTO erasure_log (kind, batch_id, benefit, jobs_erased, reason)
                 SELECT 'retention', id, benefit, $2, 'retention period after the batch finished ran out'
                 FROM batches WHERE id = $1",
            )
            .bind(batch)
            .bind(erased)
            .execute(&mut *tx)
            .await
            .ctx("logging a batch's erasure")?;
        } else {
            sqlx::query("UPDATE batches SET erase_cursor = $2 WHERE id = $1")
                .bind(batch)
                .bind(end)
                .execute(&mut *tx)
                .await
                .ctx("advancing a batch's erasure")?;
        }
        tx.commit().await.ctx("committing a retention chunk")?;
        Ok(SweepChunk {
            batch: Some(batch),
            jobs,
            batch_done,
        })
    }

    /// Deletes one chunk (`chunk` job ids) of the rows of the batch whose identifiers were
    /// erased longest ago, once that is more than `keep` ago: their attempts, outbox rows and
    /// the jobs themselves, in one short transaction holding the batch row's lock (`SKIP
    /// LOCKED`, as [`Self::sweep_identifiers`]). The batch row and its counts stay.
    pub async fn sweep_rows(&self, keep: Duration, chunk: i64) -> Result<SweepChunk, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .ctx("starting a row deletion chunk")?;
        let Some(row) = sqlx::query(
            "SELECT id, delete_cursor, erase_upto FROM batches
             WHERE erased_at IS NOT NULL AND rows_deleted_at IS NULL
               AND erased_at < now() - make_interval(secs => $1)
             ORDER BY erased_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(keep.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await
        .ctx("finding an erased batch due for deletion")?
        else {
            return Ok(SweepChunk::default());
        };
        let batch: Uuid = row.get(0);
        let (cursor, upto): (i64, i64) = match (row.get(1), row.get(2)) {
            (Some(c), Some(u)) => (c, u),
            _ => {
                let r = sqlx::query(
                    "SELECT COALESCE(min(id) - 1, 0), COALESCE(max(id), 0) FROM jobs WHERE batch_id = $1",
                )
                .bind(batch)
                .fetch_one(&mut *tx)
                .await
                .ctx("finding a batch's job id range")?;
                (r.get(0), r.get(1))
            }
        };
        let end = upto.min(cursor.saturating_add(chunk));
        sqlx::query(
            "DELETE FROM attempts WHERE job_id IN (
                SELECT id FROM jobs WHERE batch_id = $1 AND id > $2 AND id <= $3)",
        )
        .bind(batch)
        .bind(cursor)
        .bind(end)
        .execute(&mut *tx)
        .await
        .ctx("deleting the attempts of erased rows")?;
        sqlx::query(
            "DELETE FROM outbox WHERE job_id IN (
                SELECT id FROM jobs WHERE batch_id = $1 AND id > $2 AND id <= $3)",
        )
        .bind(batch)
        .bind(cursor)
        .bind(end)
        .execute(&mut *tx)
        .await
        .ctx("deleting the outbox rows of erased rows")?;
        // Only rows already erased: a row can only be unerased here if it ran again.
        let jobs = sqlx::query(
            "DELETE FROM jobs WHERE batch_id = $1 AND id > $2 AND id <= $3 AND erased_at IS NOT NULL",
        )
        .bind(batch)
        .bind(cursor)
        .bind(end)
        .execute(&mut *tx)
        .await
        .ctx("deleting erased rows")?
        .rows_affected();
        let batch_done = end >= upto;
        if batch_done {
            sqlx::query("DELETE FROM rejected_rows WHERE batch_id = $1")
                .bind(batch)
                .execute(&mut *tx)
                .await
                .ctx("deleting a batch's rejected rows")?;
            sqlx::query("DELETE FROM outbox WHERE batch_id = $1")
                .bind(batch)
                .execute(&mut *tx)
                .await
                .ctx("deleting a batch's outbox row")?;
        }
        sqlx::query(
            "UPDATE batches SET delete_cursor = $2,
                    rows_deleted_at = CASE WHEN $3 THEN now() END
             WHERE id = $1",
        )
        .bind(batch)
        .bind(end)
        .bind(batch_done)
        .execute(&mut *tx)
        .await
        .ctx("advancing a batch's deletion")?;
        tx.commit().await.ctx("committing a row deletion chunk")?;
        Ok(SweepChunk {
            batch: Some(batch),
            jobs,
            batch_done,
        })
    }

    /// The oldest unerased finished batch: its age, and how far past its retention it is.
    pub async fn retention_stats(
        &self,
        retention: &IdentifierRetention,
    ) -> Result<RetentionStats, StoreError> {
        let (names, secs, default) = retention.binds();
        let sql = format!(
            "SELECT COALESCE(max(EXTRACT(EPOCH FROM now() - COALESCE(b.finished_at, b.created_at))), 0)::float8,
                    COALESCE(max(GREATEST(EXTRACT(EPOCH FROM now() - COALESCE(b.finished_at, b.created_at)) - {BATCH_RETENTION}, 0)), 0)::float8
             FROM batches b
             WHERE b.erased_at IS NULL AND b.state IN ('finished', 'cancelled', 'aborted')"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&names)
            .bind(&secs)
            .bind(default)
            .fetch_one(&self.pool)
            .await
            .ctx("reading the oldest unerased batch")?;
        Ok(RetentionStats {
            oldest_unerased_secs: row.get(0),
            overdue_secs: row.get(1),
        })
    }

    /// Deletes up to `limit` rows of `table` older than `keep`, oldest first. Returns how many.
    pub async fn purge(&self, table: Purge, keep: Duration, limit: i64) -> Result<u64, StoreError> {
        // Tables keyed by an increasing id take the `limit` lowest ids and delete those that
        // are old enough: one short index range, whatever the table's size (ids follow time).
        let sql = match table {
            Purge::Attempts => {
                "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts ORDER BY id LIMIT $2)
                   AND created_at < now() - make_interval(secs => $1)"
            }
            Purge::RevealAudit => {
                "DELETE FROM reveal_audit WHERE id IN (SELECT id FROM reveal_audit ORDER BY id LIMIT $2)
                   AND created_at < now() - make_interval(secs => $1)"
            }
            Purge::ErasureLog => {
                "DELETE FROM erasure_log WHERE id IN (SELECT id FROM erasure_log ORDER BY id LIMIT $2)
                   AND created_at < now() - make_interval(secs => $1)"
            }
            Purge::WebhookDeliveries => {
                "DELETE FROM webhook_deliveries WHERE id IN (
                   SELECT id FROM webhook_deliveries WHERE created_at < now() - make_interval(secs => $1)
                   LIMIT $2)"
            }
            Purge::ApiIdempotency => {
                "DELETE FROM api_idempotency WHERE (key_id, idempotency_key) IN (
                   SELECT key_id, idempotency_key FROM api_idempotency
                   WHERE status IS NOT NULL AND created_at < now() - make_interval(secs => $1)
                   LIMIT $2)"
            }
            Purge::ApiIdempotencyRunning => {
                "DELETE FROM api_idempotency WHERE (key_id, idempotency_key) IN (
                   SELECT key_id, idempotency_key FROM api_idempotency
                   WHERE status IS NULL AND created_at < now() - make_interval(secs => $1)
                   LIMIT $2)"
            }
            Purge::OutboxDebris => {
                "DELETE FROM outbox WHERE id IN (
                   SELECT o.id FROM outbox o
                   LEFT JOIN jobs j ON j.id = o.job_id
                   LEFT JOIN batches b ON b.id = o.batch_id
                   WHERE o.due_at < now() - make_interval(secs => $1)
                     AND (j.state IN ('succeeded', 'failed', 'dead', 'cancelled')
                          OR b.state IN ('finished', 'cancelled', 'aborted'))
                   LIMIT $2)"
            }
        };
        let n = sqlx::query(sql)
            .bind(keep.as_secs_f64())
            .bind(limit)
            .execute(&self.pool)
            .await
            .ctx("purging records past their retention")?
            .rows_affected();
        Ok(n)
    }
}

/// A table the sweep purges by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    /// `attempts`.
    Attempts,
    /// `webhook_deliveries`.
    WebhookDeliveries,
    /// `api_idempotency` rows with an answer.
    ApiIdempotency,
    /// `api_idempotency` rows still marked running (their `serve` crashed).
    ApiIdempotencyRunning,
    /// `outbox` rows of finished jobs and batches.
    OutboxDebris,
    /// `reveal_audit`.
    RevealAudit,
    /// `erasure_log`.
    ErasureLog,
}

impl Purge {
    /// Every table, in the order the sweep purges them.
    pub const ALL: [Purge; 7] = [
        Purge::Attempts,
        Purge::WebhookDeliveries,
        Purge::ApiIdempotency,
        Purge::ApiIdempotencyRunning,
        Purge::OutboxDebris,
        Purge::RevealAudit,
        Purge::ErasureLog,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Purge::Attempts => "attempts",
            Purge::WebhookDeliveries => "webhook_deliveries",
            Purge::ApiIdempotency => "api_idempotency",
            Purge::ApiIdempotencyRunning => "api_idempotency_running",
            Purge::OutboxDebris => "outbox",
            Purge::RevealAudit => "reveal_audit",
            Purge::ErasureLog => "erasure_log",
        }
    }
}
