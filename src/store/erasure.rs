//! Erasure on request in Postgres: the rows about given people (found by their keyed lookup
//! hash), a range of job ids at a time, erased and (when they have not run) cancelled in one
//! short transaction that also records what it did in `erasure_log`.
//!
//! A row that a worker is running right now is not touched: the worker is calling ABDM with
//! its identifiers and will write a result. The caller collects such rows and tries them again
//! once they left `running` (finished, or back in the queue), so no row is left half-erased
//! and none runs after its erasure: a queued row is cancelled under its row lock, which a
//! worker's claim waits for and then finds no longer queued.

use sqlx::Row;
use uuid::Uuid;

use super::retention::ERASE_SET;
use super::{QueryContext, Store, StoreError};

/// Who asked for an erasure, and why (recorded in `erasure_log`; never the identifiers).
#[derive(Debug, Clone)]
pub struct ErasureRequest {
    /// Groups the log rows of one run.
    pub id: Uuid,
    /// Lookup hashes of the people (`Vault::hashes_all_keys` of each identifier).
    pub hashes: Vec<Vec<u8>>,
    /// How many people (distinct identifiers) the request names.
    pub people: usize,
    /// Benefits the request may touch; None: every benefit.
    pub scope: Option<Vec<String>>,
    /// The OS account or API key that asked.
    pub requested_by: String,
    /// The person responsible, when named.
    pub operator: Option<String>,
    /// Why (required).
    pub reason: String,
}

/// What one chunk of an erasure request did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErasedChunk {
    /// Rows erased (including those cancelled).
    pub erased: u64,
    /// Rows that had not run and were cancelled.
    pub cancelled: u64,
    /// Rows running right now: try them again later.
    pub running: Vec<i64>,
}

/// The rows of a request: in an id range, or a list of ids (the ones found running before).
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// `from < id <= to`.
    Range(i64, i64),
    /// These ids.
    Ids(&'a [i64]),
}

impl Store {
    /// The lowest and highest job ids (what an erasure request scans).
    pub async fn job_id_bounds(&self) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query("SELECT COALESCE(min(id), 1) - 1, COALESCE(max(id), 0) FROM jobs")
            .fetch_one(&self.pool)
            .await
            .ctx("reading the job id range")?;
        Ok((row.get(0), row.get(1)))
    }

    /// Erases the rows of `rows` about the request's people, within its scope, and logs it.
    pub async fn erase_subjects(
        &self,
        req: &ErasureRequest,
        rows: Rows<'_>,
    ) -> Result<ErasedChunk, StoreError> {
        let (from, to, ids): (i64, i64, Option<&[i64]>) = match rows {
            Rows::Range(a, b) => (a, b, None),
            Rows::Ids(ids) => (0, 0, Some(ids)),
        };
        const MATCH: &str = "(($4::bigint[] IS NULL AND id > $1 AND id <= $2) OR id = ANY($4))
               AND subject_hash = ANY($3) AND erased_at IS NULL
               AND ($5::text[] IS NULL OR benefit = ANY($5))";
        let mut tx = self.pool.begin().await.ctx("starting an erasure chunk")?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH hit AS (
                SELECT id, state FROM jobs WHERE {MATCH} AND state <> 'running'
                FOR UPDATE),
             e AS (
                UPDATE jobs SET {ERASE_SET},
                    state = CASE WHEN hit.state IN ('queued', 'retrying') THEN 'cancelled' ELSE jobs.state END,
                    outcome = CASE WHEN hit.state IN ('queued', 'retrying') THEN 'erased' ELSE jobs.outcome END,
                    finished_at = COALESCE(jobs.finished_at, now()),
                    lease_owner = NULL, lease_until = NULL, next_due_at = NULL
                FROM hit WHERE jobs.id = hit.id
                RETURNING jobs.id, jobs.batch_id, jobs.benefit, hit.state AS old_state),
             o AS (DELETE FROM outbox WHERE job_id IN (SELECT id FROM e)),
             l AS (
                INSERT INTO erasure_log (kind, request_id, batch_id, benefit, scope, jobs_erased,
                                         jobs_cancelled, requested_by, operator, reason)
                SELECT 'request', $6, batch_id, min(benefit), $5, count(*),
                       count(*) FILTER (WHERE old_state IN ('queued', 'retrying')), $7, $8, $9
                FROM e GROUP BY batch_id
                RETURNING jobs_erased, jobs_cancelled)
             SELECT COALESCE(sum(jobs_erased), 0)::int8, COALESCE(sum(jobs_cancelled), 0)::int8 FROM l"
        )))
        .bind(from)
        .bind(to)
        .bind(&req.hashes)
        .bind(ids.map(<[i64]>::to_vec))
        .bind(&req.scope)
        .bind(req.id)
        .bind(&req.requested_by)
        .bind(&req.operator)
        .bind(&req.reason)
        .fetch_one(&mut *tx)
        .await
        .ctx("erasing the rows of an erasure request")?;
        // A fresh snapshot: a row claimed by a worker while the statement above ran is seen
        // running here.
        let running: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM jobs WHERE {MATCH} AND state = 'running'"
        )))
        .bind(from)
        .bind(to)
        .bind(&req.hashes)
        .bind(ids.map(<[i64]>::to_vec))
        .bind(&req.scope)
        .fetch_all(&mut *tx)
        .await
        .ctx("finding running rows of an erasure request")?;
        tx.commit().await.ctx("committing an erasure chunk")?;
        Ok(ErasedChunk {
            erased: row.get::<i64, _>(0) as u64,
            cancelled: row.get::<i64, _>(1) as u64,
            running,
        })
    }

    /// The summary row of a request: how many people, rows erased and cancelled, and rows
    /// still running when it ended.
    pub async fn log_erasure_request(
        &self,
        req: &ErasureRequest,
        erased: u64,
        cancelled: u64,
        waiting: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO erasure_log (kind, request_id, scope, subjects, jobs_erased, jobs_cancelled,
                                      jobs_waiting, requested_by, operator, reason)
             VALUES ('request', $1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(req.id)
        .bind(&req.scope)
        .bind(req.people as i32)
        .bind(erased as i64)
        .bind(cancelled as i64)
        .bind(waiting as i64)
        .bind(&req.requested_by)
        .bind(&req.operator)
        .bind(&req.reason)
        .execute(&self.pool)
        .await
        .ctx("logging an erasure request")?;
        Ok(())
    }
}
