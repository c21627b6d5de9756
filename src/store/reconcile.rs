//! What reconciliation reads and writes: the ABHAs this service linked, repairs of its own
//! state, and the record of each run.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{QueryContext, Store, StoreError};
use crate::jobs::kind::JobKind;

/// Counts of one reconciliation run. Each class counts distinct ABHA numbers (a repeated
/// roster row is counted once, under `repeated_rows`); invalid roster rows and ABDM errors are
/// kept apart, and a class that was not checked is `None`, never 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Roster data rows read (every row: valid, invalid and repeated).
    pub roster_rows: i64,
    /// Rows whose ABHA number an earlier row already had (looked up and counted once, there).
    pub repeated_rows: i64,
    /// Roster rows that are not a valid ABHA number (the input, not ABDM).
    pub invalid_rows: i64,
    /// Linked, as the roster says.
    pub linked_ok: i64,
    /// In the roster, not linked at ABDM.
    pub missing_link: i64,
    /// Linked at ABDM (by this service earlier), not in the roster; `None`: not checked
    /// (no `--sweep-unexpected`).
    pub unexpected_link: Option<i64>,
    /// ABDM does not know the ABHA number (ABDM-1114).
    pub unknown: i64,
    /// Lookups ABDM answered with an error (or that failed on the way): the alerting class.
    pub abdm_errors: i64,
}

/// The latest run of a benefit (for the `abha_reconcile_*` gauges).
#[derive(Debug, Clone)]
pub struct LastRun {
    /// Benefit.
    pub benefit: String,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Its counts.
    pub counts: RunCounts,
}

impl Store {
    /// Records the end of a run.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_reconcile(
        &self,
        id: Uuid,
        c: &RunCounts,
        report: &str,
        link_batch: Option<Uuid>,
        delink_batch: Option<Uuid>,
        repairs: (u64, u64, u64),
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE reconcile_runs SET finished_at = now(), progress_at = now(), roster_rows = $2,
                    linked_ok = $3, missing_link = $4, unexpected_link = COALESCE($5, 0),
                    unexpected_checked = $5 IS NOT NULL, unknown = $6, errors = $7,
                    abdm_errors = $7, invalid_rows = $8, repeated_rows = $9,
                    report_path = $10, link_batch = $11, delink_batch = $12,
                    repaired_leases = $13, repaired_outbox = $14, repaired_batches = $15
             WHERE id = $1",
        )
        .bind(id)
        .bind(c.roster_rows)
        .bind(c.linked_ok)
        .bind(c.missing_link)
        .bind(c.unexpected_link)
        .bind(c.unknown)
        .bind(c.abdm_errors)
        .bind(c.invalid_rows)
        .bind(c.repeated_rows)
        .bind(report)
        .bind(link_batch)
        .bind(delink_batch)
        .bind(repairs.0 as i64)
        .bind(repairs.1 as i64)
        .bind(repairs.2 as i64)
        .execute(&self.pool)
        .await
        .ctx("finishing a reconciliation run")?;
        // The per-ABHA rows served the run only (resumption, de-duplication, the report).
        sqlx::query("DELETE FROM reconcile_rows WHERE run_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .ctx("clearing a finished run's rows")?;
        Ok(())
    }

    /// The latest finished run per benefit.
    pub async fn last_reconcile_runs(&self) -> Result<Vec<LastRun>, StoreError> {
        // Runs written before migration 0015 have NULL in the new columns: `errors` then
        // held invalid rows and ABDM errors together, and 0 unexpected links may mean "not
        // checked"; they are read as they were.
        let rows = sqlx::query(
            "SELECT DISTINCT ON (benefit) benefit, finished_at, roster_rows, linked_ok, missing_link,
                    CASE WHEN unexpected_checked IS FALSE THEN NULL ELSE unexpected_link END,
                    unknown, COALESCE(abdm_errors, errors), COALESCE(invalid_rows, 0),
                    COALESCE(repeated_rows, 0)
             FROM reconcile_runs WHERE finished_at IS NOT NULL ORDER BY benefit, finished_at DESC",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("reading the last reconciliation runs")?;
        Ok(rows
            .into_iter()
            .map(|r| LastRun {
                benefit: r.get(0),
                finished_at: r.get(1),
                counts: RunCounts {
                    roster_rows: r.get(2),
                    linked_ok: r.get(3),
                    missing_link: r.get(4),
                    unexpected_link: r.get(5),
                    unknown: r.get(6),
                    abdm_errors: r.get(7),
                    invalid_rows: r.get(8),
                    repeated_rows: r.get(9),
                },
            })
            .collect())
    }

    /// Marks the drift of `run` that already has an open (queued, running, retrying) fix job
    /// of its kind (a link for a missing link, a de-link for an unexpected one):
    /// reconciliation does not queue the same fix twice. One hash join in Postgres, so memory
    /// stays bounded however much drift or how many open jobs there are. Returns how many.
    pub async fn mark_open_fixes(&self, run: Uuid, benefit: &str) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "UPDATE reconcile_rows r SET fix_open = true FROM jobs j
             WHERE r.run_id = $1 AND j.benefit = $2 AND j.subject_hash = r.subject_hash
               AND j.state IN ('queued', 'running', 'retrying')
               AND ((r.class = 'missing_link' AND j.kind = 'benefit-link')
                 OR (r.class = 'unexpected_link' AND j.kind = 'benefit-delink'))",
        )
        .bind(run)
        .bind(benefit)
        .execute(&self.pool)
        .await
        .ctx("finding fixes already queued")?
        .rows_affected();
        Ok(n)
    }

    /// Open jobs of `kind` in `active` batches that lost their message (no outbox row, not
    /// leased, untouched for `stale_secs`) get a new outbox row. Call only when the kind's queue is empty, so that a
    /// message still waiting there is not mistaken for a lost one. Returns how many.
    pub async fn repair_lost_messages(
        &self,
        kind: JobKind,
        stale_secs: i64,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "WITH lost AS (
                SELECT j.id, j.kind FROM jobs j
                WHERE j.kind = $1 AND j.state IN ('queued', 'retrying')
                  AND j.updated_at < now() - make_interval(secs => $2)
                  AND (j.next_due_at IS NULL OR j.next_due_at < now() - make_interval(secs => $2))
                  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id)
                  -- nor a job whose batch row (store::outbox) has yet to reach it. A recheck
                  -- row (store::recheck) would publish a stranded job again too, but only
                  -- relay.republish_after_secs after its publish: the repair does not wait for it
                  -- (a second message is harmless, the claim runs the job once)
                  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.batch_id = j.batch_id
                                  AND NOT o.recheck AND j.id > o.after_job)
                  -- never the rows of a submit still running or abandoned: they are not due
                  AND EXISTS (SELECT 1 FROM batches b WHERE b.id = j.batch_id AND b.state = 'active')
                FOR UPDATE OF j SKIP LOCKED),
             touched AS (UPDATE jobs SET updated_at = now() WHERE id IN (SELECT id FROM lost)),
             ins AS (INSERT INTO outbox (job_id, kind) SELECT id, kind FROM lost)
             SELECT count(*) FROM lost",
        )
        .bind(kind.as_str())
        .bind(stale_secs as f64)
        .fetch_one(&self.pool)
        .await
        .ctx("re-queueing jobs whose message was lost")?;
        Ok(n as u64)
    }

    /// Recomputes batch counters from the jobs (queue batches have no submit to count them)
    /// and closes finished batches. Returns how many batches changed.
    pub async fn repair_batch_counters(&self) -> Result<u64, StoreError> {
        let fixed = sqlx::query(
            "UPDATE batches b SET accepted_rows = c.n, total_rows = GREATEST(b.total_rows, c.n + b.rejected_rows + b.duplicate_rows)
             FROM (SELECT batch_id, count(*) AS n FROM jobs GROUP BY batch_id) c
             WHERE c.batch_id = b.id AND b.state <> 'submitting' AND b.accepted_rows <> c.n",
        )
        .execute(&self.pool)
        .await
        .ctx("repairing batch counters")?
        .rows_affected();
        Ok(fixed + self.finish_batches().await?)
    }
}

/// The latest successful link or de-link per subject of a benefit, keeping the links: what
/// this service knows it linked (links made by other integrators are not in it).
pub(super) const SERVICE_LINKS: &str = "SELECT id, subject_hash FROM (
        SELECT DISTINCT ON (subject_hash) id, kind, subject_hash FROM jobs
        WHERE benefit = $2 AND kind IN ('benefit-link', 'benefit-delink') AND state = 'succeeded'
          AND erased_at IS NULL
        ORDER BY subject_hash, finished_at DESC) latest
     WHERE kind = 'benefit-link'";
