//! Recording outcomes: the job's new state, its HTTP attempts and (for a retry) the next
//! outbox row, for many jobs in one statement.
//!
//! Why one statement for many jobs: at a thousand jobs a second, a commit per job is most of
//! the worker's and Postgres's work. The worker groups the outcomes that finish within a few
//! milliseconds (`worker::outcomes`) and writes them here in one round trip and one commit;
//! each job is still written only while its worker holds the lease, and its message is acked
//! only after the commit.

use sqlx::Row;

use super::jobs::{ClaimedJob, Outcome};
use super::{QueryContext, Store, StoreError};
use crate::abdm::AttemptRecord;

/// One job's outcome to record.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeRecord<'a> {
    /// The job, as claimed.
    pub job: &'a ClaimedJob,
    /// What happened.
    pub outcome: &'a Outcome,
    /// Its HTTP attempts.
    pub attempts: &'a [AttemptRecord],
}

impl Store {
    /// Records one outcome; false when the lease was lost (nothing is written).
    pub async fn record_outcome(
        &self,
        job: &ClaimedJob,
        owner: &str,
        outcome: &Outcome,
        attempts: &[AttemptRecord],
    ) -> Result<bool, StoreError> {
        let held = self
            .record_outcomes(
                owner,
                &[OutcomeRecord {
                    job,
                    outcome,
                    attempts,
                }],
            )
            .await?;
        Ok(held[0])
    }

    /// Records the outcomes of jobs that `owner` holds the lease on under the claim each record
    /// names (`ClaimedJob::claim_token`), atomically (one statement). Returns, per record,
    /// whether it was written (false: the job was claimed again, by another worker or by another
    /// task of this one, and nothing of that job was written: neither its state nor its
    /// attempts, and its intent flag stays).
    pub async fn record_outcomes(
        &self,
        owner: &str,
        records: &[OutcomeRecord<'_>],
    ) -> Result<Vec<bool>, StoreError> {
        let n = records.len();
        let (mut ids, mut kinds, mut states, mut labels, mut codes, mut messages) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut tokens = Vec::with_capacity(n);
        let (mut results, mut masked, mut dues, mut finished, mut refunds, mut clears) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        // Attempts, flattened, with the job they belong to.
        let (mut a_job, mut a_attempt, mut a_op, mut a_req, mut a_status) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut a_code, mut a_msg, mut a_disp, mut a_ms) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in records {
            let (label, code, message, result, result_masked, due) = match r.outcome {
                Outcome::Succeeded {
                    outcome,
                    code,
                    result,
                    result_masked,
                } => (
                    Some(outcome.clone()),
                    code.clone(),
                    None,
                    result.as_ref().map(|v| {
                        self.vault
                            .encrypt(v.as_bytes(), super::vault::Aad::JobResult(r.job.id))
                    }),
                    result_masked.clone(),
                    None,
                ),
                Outcome::Failed { code, message } | Outcome::Dead { code, message } => (
                    None,
                    Some(code.clone()),
                    Some(message.clone()),
                    None,
                    None,
                    None,
                ),
                Outcome::Retry {
                    due_at,
                    code,
                    message,
                }
                | Outcome::Postpone {
                    due_at,
                    code,
                    message,
                } => (
                    None,
                    Some(code.clone()),
                    Some(message.clone()),
                    None,
                    None,
                    Some(*due_at),
                ),
            };
            ids.push(r.job.id);
            tokens.push(r.job.claim_token);
            kinds.push(r.job.kind.as_str().to_string());
            states.push(r.outcome.state().to_string());
            labels.push(label);
            codes.push(code);
            messages.push(message);
            results.push(result);
            masked.push(result_masked);
            dues.push(due);
            finished.push(!matches!(
                r.outcome,
                Outcome::Retry { .. } | Outcome::Postpone { .. }
            ));
            refunds.push(i32::from(matches!(r.outcome, Outcome::Postpone { .. })));
            // The intent recorded by this attempt's claim stays only while an answer to a call
            // that changes something may have been lost; a refused, throttled or unsent call
            // (or a clear answer) leaves nothing to look for.
            clears.push(!r.job.effect_may_have_happened && !r.attempts.iter().any(answer_lost));
            for a in r.attempts {
                a_job.push(r.job.id);
                a_attempt.push(r.job.attempt);
                a_op.push(a.operation.as_str().to_string());
                a_req.push(a.request_id);
                a_status.push(a.http_status.map(i32::from));
                a_code.push(a.code.clone());
                a_msg.push(a.message.clone());
                a_disp.push(a.disposition.as_str().to_string());
                a_ms.push(a.duration.as_millis().min(i32::MAX as u128) as i32);
            }
        }
        let written: Vec<i64> = sqlx::query(
            "WITH i AS (
                SELECT * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                                     $7::text[], $8::bytea[], $9::text[], $10::timestamptz[],
                                     $11::bool[], $12::int[], $22::bool[], $23::uuid[])
                    AS i(id, kind, state, label, code, message, result, masked, due, finished, refund, clear, token)),
             upd AS (
                UPDATE jobs j SET state = i.state, outcome = COALESCE(i.label, j.outcome),
                       last_code = i.code, last_message = i.message,
                       result = COALESCE(i.result, j.result), result_masked = COALESCE(i.masked, j.result_masked),
                       next_due_at = i.due, lease_owner = NULL, lease_until = NULL, updated_at = now(),
                       finished_at = CASE WHEN i.finished THEN now() END,
                       attempts = GREATEST(j.attempts - i.refund, 0),
                       effect_started_at = CASE WHEN i.clear THEN NULL ELSE j.effect_started_at END
                FROM i WHERE j.id = i.id AND j.lease_owner = $1 AND j.claim_token = i.token AND j.state = 'running'
                RETURNING j.id, i.kind, i.due),
             att AS (
                INSERT INTO attempts (job_id, job_attempt, operation, request_id, http_status, code, message, disposition, duration_ms)
                SELECT a.job_id, a.job_attempt, a.operation, a.request_id, a.http_status, a.code, a.message, a.disposition, a.duration_ms
                FROM UNNEST($13::bigint[], $14::int[], $15::text[], $16::uuid[], $17::int[], $18::text[], $19::text[], $20::text[], $21::int[])
                     AS a(job_id, job_attempt, operation, request_id, http_status, code, message, disposition, duration_ms)
                WHERE a.job_id IN (SELECT id FROM upd)),
             out AS (
                INSERT INTO outbox (job_id, kind, due_at) SELECT id, kind, due FROM upd WHERE due IS NOT NULL)
             SELECT id FROM upd",
        )
        .bind(owner)
        .bind(&ids)
        .bind(&kinds)
        .bind(&states)
        .bind(&labels)
        .bind(&codes)
        .bind(&messages)
        .bind(&results)
        .bind(&masked)
        .bind(&dues)
        .bind(&finished)
        .bind(&refunds)
        .bind(&a_job)
        .bind(&a_attempt)
        .bind(&a_op)
        .bind(&a_req)
        .bind(&a_status)
        .bind(&a_code)
        .bind(&a_msg)
        .bind(&a_disp)
        .bind(&a_ms)
        .bind(&clears)
        .bind(&tokens)
        .fetch_all(&self.pool)
        .await
        .ctx("recording outcomes")?
        .into_iter()
        .map(|r| r.get::<i64, _>(0))
        .collect();
        let written: std::collections::HashSet<i64> = written.into_iter().collect();
        Ok(ids.iter().map(|id| written.contains(id)).collect())
    }
}

/// An attempt that changes something at ABDM and whose answer did not say whether it did:
/// no answer (timeout, broken connection), an unreadable 2xx, or a 5xx.
fn answer_lost(a: &AttemptRecord) -> bool {
    a.operation.changes_state()
        && (matches!(a.code.as_deref(), Some("timeout" | "transport" | "decode"))
            || a.http_status.is_some_and(|s| s >= 500))
}
