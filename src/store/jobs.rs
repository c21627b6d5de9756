//! Jobs: claiming under a lease, recording outcomes with their attempts and next step in one
//! transaction, queue-producer jobs, lease expiry, cancel and retry-failed.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::vault::Aad;
use super::{QueryContext, Store, StoreError};
use crate::abdm::AttemptRecord;
use crate::jobs::kind::{Job, JobKind};

/// A job this worker now holds the lease on.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// Job id.
    pub id: i64,
    /// Batch.
    pub batch_id: Uuid,
    /// Kind.
    pub kind: JobKind,
    /// Benefit name.
    pub benefit: String,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    /// When the job was accepted (for the enqueue → finished duration).
    pub created_at: DateTime<Utc>,
    /// Encrypted payload (decrypt with [`Store::decrypt_job`]).
    pub payload: Vec<u8>,
    /// The row's `dedup_hash` (the payload's associated data).
    pub dedup_hash: Vec<u8>,
}

/// Result of trying to claim a job.
#[derive(Debug, Clone)]
pub enum Claim {
    /// Run it.
    Run(ClaimedJob),
    /// Already in a final state (a redelivery): ack without calling ABDM.
    Finished(String),
    /// Scheduled for later (a stale delivery): the outbox will publish it again when due.
    NotDue,
    /// Another worker holds a live lease.
    Busy,
    /// No such job.
    Missing,
}

/// What to record for a claimed job.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Done: `outcome` says what happened, `result` is an identifier to keep (encrypted).
    Succeeded {
        /// `linked`, `already_linked`, `created`, `existing`, `found`, ...
        outcome: String,
        /// Code of an idempotent answer (ABDM-1140/1138).
        code: Option<String>,
        /// Raw identifier to keep (an ABHA number created or found).
        result: Option<String>,
        /// What the report shows.
        result_masked: Option<String>,
    },
    /// Will not succeed by retrying.
    Failed {
        /// ABDM code.
        code: String,
        /// Scrubbed message.
        message: String,
    },
    /// Try again at `due_at`.
    Retry {
        /// When.
        due_at: DateTime<Utc>,
        /// Code of this attempt's failure.
        code: String,
        /// Message.
        message: String,
    },
    /// Retries exhausted.
    Dead {
        /// Last code.
        code: String,
        /// Last message.
        message: String,
    },
}

impl Outcome {
    /// The job state this outcome leads to.
    pub fn state(&self) -> &'static str {
        match self {
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Retry { .. } => "retrying",
            Self::Dead { .. } => "dead",
        }
    }
}

/// A job from an external producer, validated.
#[derive(Debug, Clone)]
pub struct ExternalJob<'a> {
    /// Producer's idempotency key.
    pub idempotency_key: &'a str,
    /// Benefit.
    pub benefit: &'a str,
    /// Producer's reference.
    pub external_ref: Option<&'a str>,
    /// The job.
    pub job: &'a Job,
}

/// One line of a per-row report.
#[derive(Debug, Clone)]
pub struct ReportRow {
    /// Data row number (uploads) or job id (queue jobs).
    pub row_number: Option<i64>,
    /// Programme's reference.
    pub external_ref: Option<String>,
    /// Masked identifier.
    pub identifier: Option<String>,
    /// Final or current state, `rejected` or `duplicate`.
    pub state: String,
    /// What happened.
    pub outcome: Option<String>,
    /// ABDM code (or the rejected column).
    pub code: Option<String>,
    /// ABDM message (or the rejection reason).
    pub message: Option<String>,
    /// Attempts.
    pub attempts: i32,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Masked result (an ABHA number created or found).
    pub result: Option<String>,
    /// Encrypted result, for `--reveal`.
    pub result_ciphertext: Option<Vec<u8>>,
    /// Job id (0 for rejected rows): the result's associated data.
    pub job_id: i64,
}

impl Store {
    /// Takes the lease on a job if it may run now.
    pub async fn claim(
        &self,
        job_id: i64,
        owner: &str,
        lease_secs: u64,
    ) -> Result<Claim, StoreError> {
        let row = sqlx::query(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $2,
                    lease_until = now() + make_interval(secs => $3), updated_at = now()
             WHERE id = $1 AND (
                (state IN ('queued', 'retrying') AND (next_due_at IS NULL OR next_due_at <= now() + interval '2 seconds'))
                OR (state = 'running' AND lease_until < now()))
             RETURNING id, batch_id, kind, benefit, attempts, created_at, payload, dedup_hash",
        )
        .bind(job_id)
        .bind(owner)
        .bind(lease_secs as f64)
        .fetch_optional(&self.pool)
        .await
        .ctx("claiming a job")?;
        if let Some(r) = row {
            let kind: String = r.get("kind");
            let kind = JobKind::parse(&kind).ok_or_else(|| StoreError::Corrupt {
                job_id,
                reason: format!("unknown kind {kind:?}"),
            })?;
            return Ok(Claim::Run(ClaimedJob {
                id: r.get("id"),
                batch_id: r.get("batch_id"),
                kind,
                benefit: r.get("benefit"),
                attempt: r.get("attempts"),
                created_at: r.get("created_at"),
                payload: r.get("payload"),
                dedup_hash: r.get("dedup_hash"),
            }));
        }
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
            .ctx("reading a job's state")?;
        Ok(match state.as_deref() {
            None => Claim::Missing,
            Some("running") => Claim::Busy,
            Some("queued" | "retrying") => Claim::NotDue,
            Some(other) => Claim::Finished(other.to_string()),
        })
    }

    /// Records the attempts, the outcome and (for a retry) the next outbox row, in one
    /// transaction, if this worker still holds the lease. Returns false when the lease was lost
    /// (another worker took over; nothing is written).
    pub async fn record_outcome(
        &self,
        job: &ClaimedJob,
        owner: &str,
        outcome: &Outcome,
        attempts: &[AttemptRecord],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting an outcome")?;
        let (code, message, result, result_masked, due, label) = match outcome {
            Outcome::Succeeded {
                outcome,
                code,
                result,
                result_masked,
            } => (
                code.clone(),
                None,
                result
                    .as_ref()
                    .map(|r| self.vault.encrypt(r.as_bytes(), Aad::JobResult(job.id))),
                result_masked.clone(),
                None,
                Some(outcome.clone()),
            ),
            Outcome::Failed { code, message } | Outcome::Dead { code, message } => (
                Some(code.clone()),
                Some(message.clone()),
                None,
                None,
                None,
                None,
            ),
            Outcome::Retry {
                due_at,
                code,
                message,
            } => (
                Some(code.clone()),
                Some(message.clone()),
                None,
                None,
                Some(*due_at),
                None,
            ),
        };
        let finished = !matches!(outcome, Outcome::Retry { .. });
        let updated = sqlx::query(
            "UPDATE jobs SET state = $3, outcome = COALESCE($4, outcome), last_code = $5, last_message = $6,
                    result = COALESCE($7, result), result_masked = COALESCE($8, result_masked),
                    next_due_at = $9, lease_owner = NULL, lease_until = NULL, updated_at = now(),
                    finished_at = CASE WHEN $10 THEN now() END
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job.id)
        .bind(owner)
        .bind(outcome.state())
        .bind(label)
        .bind(code)
        .bind(message)
        .bind(result)
        .bind(result_masked)
        .bind(due)
        .bind(finished)
        .execute(&mut *tx)
        .await
        .ctx("recording a job's outcome")?;
        if updated.rows_affected() == 0 {
            tx.rollback().await.ctx("abandoning an outcome")?;
            return Ok(false);
        }
        if !attempts.is_empty() {
            sqlx::query(
                "INSERT INTO attempts (job_id, job_attempt, operation, request_id, http_status, code, message, disposition, duration_ms)
                 SELECT $1, $2, a.operation, a.request_id, a.http_status, a.code, a.message, a.disposition, a.duration_ms
                 FROM UNNEST($3::text[], $4::uuid[], $5::int[], $6::text[], $7::text[], $8::text[], $9::int[])
                      AS a(operation, request_id, http_status, code, message, disposition, duration_ms)",
            )
            .bind(job.id)
            .bind(job.attempt)
            .bind(attempts.iter().map(|a| a.operation.as_str().to_string()).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.request_id).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.http_status.map(i32::from)).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.code.clone()).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.message.clone()).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.disposition.as_str().to_string()).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.duration.as_millis().min(i32::MAX as u128) as i32).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .ctx("recording attempts")?;
        }
        if let Some(due) = due {
            sqlx::query("INSERT INTO outbox (job_id, kind, due_at) VALUES ($1, $2, $3)")
                .bind(job.id)
                .bind(job.kind.as_str())
                .bind(due)
                .execute(&mut *tx)
                .await
                .ctx("scheduling a retry")?;
        }
        tx.commit().await.ctx("committing an outcome")?;
        Ok(true)
    }

    /// Records a job from an external producer on first sight; returns its id (the existing
    /// one when the key, or an identical job of the same day, was seen before).
    pub async fn upsert_external(
        &self,
        kind: JobKind,
        j: ExternalJob<'_>,
    ) -> Result<i64, StoreError> {
        let batch: Uuid = sqlx::query_scalar(
            "WITH ins AS (
                INSERT INTO batches (id, kind, benefit, source, state, queue_day, submitted_at)
                VALUES ($1, $2, $3, 'queue', 'active', (now() AT TIME ZONE 'UTC')::date, now())
                ON CONFLICT (kind, benefit, queue_day) WHERE source = 'queue' DO UPDATE
                    SET state = 'active', finished_at = NULL
                RETURNING id)
             SELECT id FROM ins",
        )
        .bind(Uuid::new_v4())
        .bind(kind.as_str())
        .bind(j.benefit)
        .fetch_one(&self.pool)
        .await
        .ctx("finding the day's queue batch")?;
        let dedup = self.vault.hash(&j.job.dedup_key());
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO jobs (batch_id, kind, benefit, idempotency_key, external_ref, subject_hash,
                               subject_masked, dedup_hash, payload)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(batch)
        .bind(kind.as_str())
        .bind(j.benefit)
        .bind(j.idempotency_key)
        .bind(j.external_ref)
        .bind(self.vault.hash(&j.job.subject()))
        .bind(j.job.subject_masked())
        .bind(&dedup)
        .bind(self.encrypt_job(j.job, &dedup))
        .fetch_optional(&self.pool)
        .await
        .ctx("recording a queue job")?;
        if let Some(id) = inserted {
            return Ok(id);
        }
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE idempotency_key = $1 AND idempotency_key IS NOT NULL
             UNION ALL SELECT id FROM jobs WHERE batch_id = $2 AND dedup_hash = $3 LIMIT 1",
        )
        .bind(j.idempotency_key)
        .bind(batch)
        .bind(&dedup)
        .fetch_optional(&self.pool)
        .await
        .ctx("finding a queue job seen before")?;
        existing.ok_or_else(|| StoreError::Refused("queue job vanished after a conflict".into()))
    }

    /// Jobs left `running` past their lease (their worker died) go back to `retrying` with an
    /// outbox row due now. Returns how many.
    pub async fn requeue_expired_leases(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "WITH expired AS (
                UPDATE jobs SET state = 'retrying', lease_owner = NULL, lease_until = NULL,
                       next_due_at = now(), updated_at = now()
                WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND lease_until < now()
                             ORDER BY lease_until LIMIT 10000 FOR UPDATE SKIP LOCKED)
                RETURNING id, kind),
             out AS (INSERT INTO outbox (job_id, kind) SELECT id, kind FROM expired)
             SELECT count(*) FROM expired",
        )
        .fetch_one(&self.pool)
        .await
        .ctx("re-queueing jobs whose lease expired")?;
        Ok(n as u64)
    }

    /// Cancels a batch: open jobs not yet running become `cancelled` and their outbox rows go.
    pub async fn cancel_batch(&self, batch: Uuid) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting a cancel")?;
        let n = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(),
                    next_due_at = NULL
             WHERE batch_id = $1 AND state IN ('queued', 'retrying')",
        )
        .bind(batch)
        .execute(&mut *tx)
        .await
        .ctx("cancelling jobs")?
        .rows_affected();
        sqlx::query(
            "DELETE FROM outbox o USING jobs j WHERE o.job_id = j.id AND j.batch_id = $1 AND j.state = 'cancelled'",
        )
        .bind(batch)
        .execute(&mut *tx)
        .await
        .ctx("removing cancelled jobs from the outbox")?;
        sqlx::query("UPDATE batches SET state = 'cancelled', finished_at = now() WHERE id = $1")
            .bind(batch)
            .execute(&mut *tx)
            .await
            .ctx("cancelling the batch")?;
        tx.commit().await.ctx("committing a cancel")?;
        Ok(n)
    }

    /// Puts failed and dead jobs of a batch (only those with `code`, if given) back in the
    /// queue with a fresh attempt budget. Returns how many.
    pub async fn retry_failed(&self, batch: Uuid, code: Option<&str>) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting retry-failed")?;
        let n: i64 = sqlx::query_scalar(
            "WITH again AS (
                UPDATE jobs SET state = 'queued', attempts = 0, next_due_at = NULL, finished_at = NULL,
                       updated_at = now()
                WHERE batch_id = $1 AND state IN ('failed', 'dead') AND ($2::text IS NULL OR last_code = $2)
                RETURNING id, kind),
             out AS (INSERT INTO outbox (job_id, kind) SELECT id, kind FROM again)
             SELECT count(*) FROM again",
        )
        .bind(batch)
        .bind(code)
        .fetch_one(&mut *tx)
        .await
        .ctx("re-queueing failed jobs")?;
        if n > 0 {
            sqlx::query("UPDATE batches SET state = 'active', finished_at = NULL WHERE id = $1")
                .bind(batch)
                .execute(&mut *tx)
                .await
                .ctx("re-opening the batch")?;
        }
        tx.commit().await.ctx("committing retry-failed")?;
        Ok(n as u64)
    }

    /// Every row of a batch, accepted or rejected, in row order.
    pub fn report_rows(
        &self,
        batch: Uuid,
    ) -> impl futures::Stream<Item = Result<ReportRow, StoreError>> + '_ {
        use futures::TryStreamExt;
        sqlx::query(
            "SELECT row_number, external_ref, subject_masked AS identifier, state, outcome,
                    last_code AS code, last_message AS message, attempts, finished_at,
                    result_masked AS result, result AS result_ciphertext, id AS ord
             FROM jobs WHERE batch_id = $1
             UNION ALL
             SELECT row_number, external_ref, NULL, CASE WHEN duplicate_of IS NULL THEN 'rejected' ELSE 'duplicate' END,
                    NULL, CASE WHEN duplicate_of IS NULL THEN column_name END, reason, 0, NULL, NULL, NULL, 0
             FROM rejected_rows WHERE batch_id = $1
             ORDER BY row_number NULLS LAST, ord",
        )
        .bind(batch)
        .fetch(&self.pool)
        .map_ok(|r| ReportRow {
            row_number: r.get("row_number"),
            external_ref: r.get("external_ref"),
            identifier: r.get("identifier"),
            state: r.get("state"),
            outcome: r.get("outcome"),
            code: r.get("code"),
            message: r.get("message"),
            attempts: r.get("attempts"),
            finished_at: r.get("finished_at"),
            result: r.get("result"),
            result_ciphertext: r.get("result_ciphertext"),
            job_id: r.get("ord"),
        })
        .map_err(|cause| StoreError::Query {
            what: "reading the report",
            cause,
        })
    }

    /// Records a `--reveal` export in the audit table.
    pub async fn audit_reveal(
        &self,
        batch: Uuid,
        who: &str,
        reason: Option<&str>,
        rows: u64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO reveal_audit (batch_id, revealed_by, reason, rows) VALUES ($1, $2, $3, $4)")
            .bind(batch)
            .bind(who)
            .bind(reason)
            .bind(rows as i64)
            .execute(&self.pool)
            .await
            .ctx("recording the reveal in the audit table")?;
        Ok(())
    }
}
