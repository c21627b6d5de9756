//! What reconciliation reads and writes: the ABHAs this service linked, repairs of its own
//! state, and the record of each run.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{QueryContext, Store, StoreError};
use crate::jobs::kind::JobKind;

/// Counts of one reconciliation run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Roster rows read.
    pub roster_rows: i64,
    /// Linked, as the roster says.
    pub linked_ok: i64,
    /// In the roster, not linked at ABDM.
    pub missing_link: i64,
    /// Linked at ABDM (by this service earlier), not in the roster.
    pub unexpected_link: i64,
    /// ABDM does not know the ABHA number (ABDM-1114).
    pub unknown: i64,
    /// Rows whose check failed (invalid row, ABDM error).
    pub errors: i64,
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
    /// Records the start of a run.
    pub async fn start_reconcile(&self, benefit: &str, roster: &str) -> Result<Uuid, StoreError> {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO reconcile_runs (id, benefit, roster_file) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(benefit)
            .bind(roster)
            .execute(&self.pool)
            .await
            .ctx("recording a reconciliation run")?;
        Ok(id)
    }

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
            "UPDATE reconcile_runs SET finished_at = now(), roster_rows = $2, linked_ok = $3,
                    missing_link = $4, unexpected_link = $5, unknown = $6, errors = $7,
                    report_path = $8, link_batch = $9, delink_batch = $10,
                    repaired_leases = $11, repaired_outbox = $12, repaired_batches = $13
             WHERE id = $1",
        )
        .bind(id)
        .bind(c.roster_rows)
        .bind(c.linked_ok)
        .bind(c.missing_link)
        .bind(c.unexpected_link)
        .bind(c.unknown)
        .bind(c.errors)
        .bind(report)
        .bind(link_batch)
        .bind(delink_batch)
        .bind(repairs.0 as i64)
        .bind(repairs.1 as i64)
        .bind(repairs.2 as i64)
        .execute(&self.pool)
        .await
        .ctx("finishing a reconciliation run")?;
        Ok(())
    }

    /// The latest finished run per benefit.
    pub async fn last_reconcile_runs(&self) -> Result<Vec<LastRun>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (benefit) benefit, finished_at, roster_rows, linked_ok, missing_link,
                    unexpected_link, unknown, errors
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
                    errors: r.get(7),
                },
            })
            .collect())
    }

    /// For each ABHA this service linked or de-linked for `benefit`, the latest successful job:
    /// `(job id, dedup hash, encrypted payload, encrypted result)`, links only. Streamed: the history of a
    /// benefit can be millions of jobs.
    pub fn service_links(
        &self,
        benefit: &str,
    ) -> impl futures::Stream<Item = Result<ServiceLink, StoreError>> + '_ {
        use futures::TryStreamExt;
        sqlx::query(SERVICE_LINKS)
            .bind(benefit.to_string())
            .fetch(&self.pool)
            .map_ok(|r| (r.get(0), r.get(4), r.get(2), r.get(3)))
            .map_err(|cause| StoreError::Query {
                what: "reading the ABHAs this service linked",
                cause,
            })
    }

    /// How many rows [`Self::service_links`] yields (for the progress of the sweep).
    pub async fn service_links_count(&self, benefit: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM ({SERVICE_LINKS}) l"
        )))
        .bind(benefit)
        .fetch_one(&self.pool)
        .await
        .ctx("counting the ABHAs this service linked")?;
        Ok(n as u64)
    }

    /// Subject hashes with an open (queued, running, retrying) job of `kind` for `benefit`:
    /// reconciliation does not queue the same fix twice.
    pub async fn open_subjects(
        &self,
        benefit: &str,
        kind: JobKind,
    ) -> Result<HashSet<Vec<u8>>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT subject_hash FROM jobs WHERE benefit = $1 AND kind = $2
             AND state IN ('queued', 'running', 'retrying')",
        )
        .bind(benefit)
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await
        .ctx("reading open jobs")?;
        Ok(rows.into_iter().collect())
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
                  -- nor a job whose batch row (store::outbox) has yet to reach it
                  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.batch_id = j.batch_id
                                  AND j.id > o.after_job)
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

/// A link made by this service: `(job id, dedup hash, encrypted payload, encrypted result)`.
pub type ServiceLink = (i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// The latest successful link or de-link per subject of a benefit, keeping the links.
const SERVICE_LINKS: &str = "SELECT id, kind, payload, result, dedup_hash FROM (
        SELECT DISTINCT ON (subject_hash) id, kind, payload, result, dedup_hash FROM jobs
        WHERE benefit = $1 AND kind IN ('benefit-link', 'benefit-delink') AND state = 'succeeded'
          AND erased_at IS NULL
        ORDER BY subject_hash, finished_at DESC) latest
     WHERE kind = 'benefit-link'";
