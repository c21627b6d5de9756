//! Jobs: claiming under a lease, recording outcomes with their attempts and next step in one
//! transaction, queue-producer jobs, lease expiry, cancel and retry-failed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{QueryContext, Store, StoreError};
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
    /// An earlier attempt (of this or an earlier run of the row) may have changed something at
    /// ABDM and its answer was not recorded: this attempt must look before it acts.
    pub effect_may_have_happened: bool,
    /// This claim's token: the fence and the outcome write match it (with the owner), so
    /// nothing of this claim is written once another claim took the job, even by the same
    /// process.
    pub claim_token: Uuid,
}

/// What the fence found right before a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The lease is ours and now runs `lease` from now: the call may go.
    Held,
    /// Another worker took the job over (or it was cancelled): make no call.
    Lost,
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
    /// A systemic failure (ABDM unreachable, gateway login refused, an outage): try again at
    /// `due_at` without spending one of the job's attempts, since the answer was not about it.
    Postpone {
        /// When.
        due_at: DateTime<Utc>,
        /// Code of the failure.
        code: String,
        /// Message.
        message: String,
    },
}

impl Outcome {
    /// The job state this outcome leads to.
    pub fn state(&self) -> &'static str {
        match self {
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Retry { .. } | Self::Postpone { .. } => "retrying",
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
    /// ABDM code.
    pub code: Option<String>,
    /// The invalid column of a rejected row (`*` for the whole row).
    pub rejected_column: Option<String>,
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
    /// The row's identifiers were erased (retention or a request): the report says `erased`.
    pub erased: bool,
}

impl Store {
    /// The fence, right before a call to ABDM: checks that `owner` still holds the job's lease
    /// under the same claim (`claim_token`: a later claim by the same process does not pass)
    /// and extends it to `lease` from now, in one statement, so the call (which lasts at
    /// most the request timeout, shorter than the lease) finishes before anyone may take the
    /// job over. With `changes_state` it also records, committed before the call is sent, that
    /// the side effect may have started (the durable intent that makes every later attempt look
    /// first).
    pub async fn fence(
        &self,
        job_id: i64,
        owner: &str,
        claim_token: Uuid,
        lease: Duration,
        changes_state: bool,
    ) -> Result<Fence, StoreError> {
        let held = sqlx::query(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => $3),
                    effect_started_at = CASE WHEN $4 THEN COALESCE(effect_started_at, now())
                                             ELSE effect_started_at END
             WHERE id = $1 AND lease_owner = $2 AND claim_token = $5 AND state = 'running'",
        )
        .bind(job_id)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(changes_state)
        .bind(claim_token)
        .execute(&self.pool)
        .await
        .ctx("checking and extending a job's lease")?;
        Ok(if held.rows_affected() == 1 {
            Fence::Held
        } else {
            Fence::Lost
        })
    }

    /// Records a job from an external producer on first sight, with its outbox row in the same
    /// statement, so the fair scheduler publishes it like an uploaded row (a producer's flood
    /// cannot jump the other programmes' queue); returns its id (the existing one when the
    /// key, or an identical job of the same day, was seen before: that one got its outbox row
    /// when it was recorded).
    pub async fn upsert_external(
        &self,
        kind: JobKind,
        j: ExternalJob<'_>,
    ) -> Result<i64, StoreError> {
        self.refuse_if_stale()?;
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
            "WITH j AS (
                INSERT INTO jobs (batch_id, kind, benefit, idempotency_key, external_ref, subject_hash,
                                  subject_masked, dedup_hash, payload)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                ON CONFLICT DO NOTHING RETURNING id, kind, batch_id),
             o AS (INSERT INTO outbox (job_id, kind, batch_ref) SELECT id, kind, batch_id FROM j)
             SELECT id FROM j",
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
        // A batch not yet fully published has its own row (store::outbox): nothing is left
        // for it to publish.
        sqlx::query("DELETE FROM outbox WHERE batch_id = $1")
            .bind(batch)
            .execute(&mut *tx)
            .await
            .ctx("removing the batch's outbox row")?;
        sqlx::query("UPDATE batches SET state = 'cancelled', finished_at = now() WHERE id = $1")
            .bind(batch)
            .execute(&mut *tx)
            .await
            .ctx("cancelling the batch")?;
        tx.commit().await.ctx("committing a cancel")?;
        Ok(n)
    }

    /// Puts failed and dead jobs of a batch (only those with `code`, if given) back in the
    /// queue with a fresh attempt budget. The durable intent (`effect_started_at`) stays, so
    /// a row whose side effect may have happened still looks before it acts. Returns how many.
    pub async fn retry_failed(&self, batch: Uuid, code: Option<&str>) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting retry-failed")?;
        let n: i64 = sqlx::query_scalar(
            "WITH again AS (
                UPDATE jobs SET state = 'queued', attempts = 0, next_due_at = NULL, finished_at = NULL,
                       updated_at = now()
                WHERE batch_id = $1 AND state IN ('failed', 'dead') AND ($2::text IS NULL OR last_code = $2)
                      AND erased_at IS NULL
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
                    last_code AS code, NULL AS rejected_column, last_message AS message, attempts,
                    finished_at, result_masked AS result, result AS result_ciphertext, id AS ord,
                    erased_at IS NOT NULL AS erased
             FROM jobs WHERE batch_id = $1
             UNION ALL
             SELECT row_number, external_ref, NULL, CASE WHEN duplicate_of IS NULL THEN 'rejected' ELSE 'duplicate' END,
                    NULL, NULL, CASE WHEN duplicate_of IS NULL THEN column_name END, reason, 0, NULL, NULL, NULL, 0,
                    false
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
            rejected_column: r.get("rejected_column"),
            message: r.get("message"),
            attempts: r.get("attempts"),
            finished_at: r.get("finished_at"),
            result: r.get("result"),
            result_ciphertext: r.get("result_ciphertext"),
            job_id: r.get("ord"),
            erased: r.get("erased"),
        })
        .map_err(|cause| StoreError::Query {
            what: "reading the report",
            cause,
        })
    }

    /// Records a `--reveal` export in the audit table before anything is written: the row
    /// counts the identifiers the export will hold, `os_user` is the account the command
    /// runs as, `operator` the person named with `--operator`. Returns that count. The export
    /// must be written only once this has returned (the audit row is committed).
    pub async fn audit_reveal(
        &self,
        batch: Uuid,
        os_user: &str,
        operator: Option<&str>,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let rows: i64 = sqlx::query_scalar(
            "INSERT INTO reveal_audit (batch_id, revealed_by, os_user, operator, reason, rows)
             SELECT $1, COALESCE($3, $2), $2, $3, $4, count(*) FROM jobs
             WHERE batch_id = $1 AND result IS NOT NULL
             RETURNING rows",
        )
        .bind(batch)
        .bind(os_user)
        .bind(operator)
        .bind(reason)
        .fetch_one(&self.pool)
        .await
        .ctx("recording the reveal in the audit table")?;
        Ok(rows as u64)
    }
}
