//! The per-ABHA rows of a reconciliation run (`reconcile_rows`): how a run at a million roster
//! rows de-duplicates repeated rows, survives an interruption and writes its report in roster
//! order while holding only a chunk in memory. Each distinct ABHA of the roster (and each
//! earlier link the sweep finds) is one row; its class is NULL until looked up.

use sqlx::Row;
use uuid::Uuid;

use super::reconcile::SERVICE_LINKS;
use super::{QueryContext, Store, StoreError};

/// A run found or started by [`Store::start_or_resume_reconcile`].
#[derive(Debug, Clone)]
pub struct RunStart {
    /// Run id.
    pub id: Uuid,
    /// An unfinished run of the same roster was continued.
    pub resumed: bool,
    /// Its roster rows are all in `reconcile_rows` already.
    pub roster_staged: bool,
    /// Its sweep rows are all in `reconcile_rows` already.
    pub sweep_staged: bool,
    /// Fix batches an interrupted `--apply` of this run created.
    pub batches: (Option<Uuid>, Option<Uuid>),
}

/// The result of one lookup.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The ABHA's keyed hash.
    pub subject_hash: Vec<u8>,
    /// Class (`linked`, `missing_link`, `unexpected_link`, `unknown`, `error`).
    pub class: &'static str,
    /// ABDM code, if any.
    pub code: String,
    /// Human detail (never an identifier).
    pub detail: String,
    /// Masked ABHA (kept for swept links, whose ABHA is not in the roster).
    pub masked: Option<String>,
}

/// What `reconcile_rows` holds for one ABHA.
#[derive(Debug, Clone)]
pub struct StagedRow {
    /// The ABHA's keyed hash.
    pub subject_hash: Vec<u8>,
    /// Roster row of its first occurrence (`None`: a swept earlier link).
    pub first_row: Option<i64>,
    /// The swept link's job.
    pub job_id: Option<i64>,
    /// Class, `None` until looked up.
    pub class: Option<String>,
    /// ABDM code.
    pub code: Option<String>,
    /// Detail.
    pub detail: Option<String>,
    /// Masked ABHA of a swept link.
    pub masked: Option<String>,
    /// An open fix job exists already.
    pub fix_open: bool,
}

/// A run idle (no progress committed) for longer than this is not resumed: its answers are
/// too old to trust; a new run starts instead.
pub const RESUME_WITHIN_SECS: f64 = 48.0 * 3600.0;

const STAGED_COLUMNS: &str =
    "subject_hash, first_row, job_id, class, abdm_code, detail, subject_masked, fix_open";

fn staged(r: &sqlx::postgres::PgRow) -> StagedRow {
    StagedRow {
        subject_hash: r.get(0),
        first_row: r.get(1),
        job_id: r.get(2),
        class: r.get(3),
        code: r.get(4),
        detail: r.get(5),
        masked: r.get(6),
        fix_open: r.get(7),
    }
}

impl Store {
    /// Continues the latest unfinished run of `benefit` over a roster with the same content
    /// (`sha256`) that made progress within [`RESUME_WITHIN_SECS`], unless `restart`;
    /// otherwise records a new run. Every other unfinished run of the benefit is marked
    /// abandoned and its rows dropped (one reconciliation per benefit at a time).
    pub async fn start_or_resume_reconcile(
        &self,
        benefit: &str,
        roster: &str,
        sha256: &[u8],
        restart: bool,
    ) -> Result<RunStart, StoreError> {
        if let Some(why) = self.rotation_unfinished().await? {
            return Err(StoreError::Refused(format!(
                "a pii.key rotation is in progress ({why}); until it completes the links' lookup \
                 hashes are under two keys and a reconciliation would misreport rostered people \
                 as unexpected links: finish the rotation (docs/operations.md, \"Rotating \
                 pii.key\"), then reconcile"
            )));
        }
        let found = if restart {
            None
        } else {
            sqlx::query(
                "SELECT id, roster_staged, sweep_staged, link_batch, delink_batch FROM reconcile_runs
                 WHERE benefit = $1 AND roster_sha256 = $2 AND finished_at IS NULL
                   AND abandoned_at IS NULL
                   AND COALESCE(progress_at, started_at) > now() - make_interval(secs => $3)
                 ORDER BY started_at DESC LIMIT 1",
            )
            .bind(benefit)
            .bind(sha256)
            .bind(RESUME_WITHIN_SECS)
            .fetch_optional(&self.pool)
            .await
            .ctx("finding an unfinished reconciliation")?
        };
        let start = match found {
            Some(r) => RunStart {
                id: r.get(0),
                resumed: true,
                roster_staged: r.get(1),
                sweep_staged: r.get(2),
                batches: (r.get(3), r.get(4)),
            },
            None => {
                let id = Uuid::new_v4();
                sqlx::query(
                    "INSERT INTO reconcile_runs (id, benefit, roster_file, roster_sha256, progress_at)
                     VALUES ($1, $2, $3, $4, now())",
                )
                .bind(id)
                .bind(benefit)
                .bind(roster)
                .bind(sha256)
                .execute(&self.pool)
                .await
                .ctx("recording a reconciliation run")?;
                RunStart {
                    id,
                    resumed: false,
                    roster_staged: false,
                    sweep_staged: false,
                    batches: (None, None),
                }
            }
        };
        sqlx::query(
            "UPDATE reconcile_runs SET abandoned_at = now()
             WHERE benefit = $1 AND finished_at IS NULL AND abandoned_at IS NULL AND id <> $2",
        )
        .bind(benefit)
        .bind(start.id)
        .execute(&self.pool)
        .await
        .ctx("abandoning older unfinished reconciliations")?;
        self.drop_abandoned_rows(Some(benefit)).await?;
        Ok(start)
    }

    /// Before `rekey` rewrites the lookup hashes: refuses while a reconciliation that may still
    /// be resumed made progress within the last hour (naming it), and abandons older
    /// unfinished runs (their staged rows are under the old hashes; resuming one after the
    /// rewrite would misreport every row).
    pub async fn abandon_reconciles_for_rekey(&self) -> Result<u64, StoreError> {
        let busy: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT id, benefit FROM reconcile_runs
             WHERE finished_at IS NULL AND abandoned_at IS NULL
               AND COALESCE(progress_at, started_at) > now() - interval '1 hour'
             ORDER BY started_at DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .ctx("looking for a running reconciliation")?;
        if let Some((id, benefit)) = busy {
            return Err(StoreError::Refused(format!(
                "reconciliation {id} of benefit {benefit} is in progress (it made progress within the \
                 last hour): let it finish before `rekey` rewrites the lookup hashes it matches by"
            )));
        }
        let n = sqlx::query(
            "UPDATE reconcile_runs SET abandoned_at = now()
             WHERE finished_at IS NULL AND abandoned_at IS NULL",
        )
        .execute(&self.pool)
        .await
        .ctx("abandoning unfinished reconciliations")?
        .rows_affected();
        self.drop_abandoned_rows(None).await?;
        Ok(n)
    }

    /// Drops the staged rows of abandoned reconciliations (of `benefit`, or of every benefit).
    async fn drop_abandoned_rows(&self, benefit: Option<&str>) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM reconcile_rows r USING reconcile_runs u
             WHERE r.run_id = u.id AND u.abandoned_at IS NOT NULL
               AND ($1::text IS NULL OR u.benefit = $1)",
        )
        .bind(benefit)
        .execute(&self.pool)
        .await
        .ctx("dropping the rows of abandoned reconciliations")?;
        Ok(())
    }

    /// Stages a chunk of valid roster rows `(subject hash, row number)`, in roster order:
    /// the first occurrence of an ABHA keeps its row; later ones (in this chunk or an earlier
    /// one) change nothing. Safe to repeat after an interruption.
    pub async fn stage_roster_rows(
        &self,
        run: Uuid,
        hashes: &[Vec<u8>],
        rows: &[i64],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO reconcile_rows (run_id, subject_hash, first_row)
             SELECT DISTINCT ON (h) $1, h, r FROM unnest($2::bytea[], $3::bigint[]) AS t(h, r)
             ORDER BY h, r
             ON CONFLICT (run_id, subject_hash) DO NOTHING",
        )
        .bind(run)
        .bind(hashes)
        .bind(rows)
        .execute(&self.pool)
        .await
        .ctx("staging roster rows")?;
        Ok(())
    }

    /// Stages the earlier links of `benefit` that this service made and the roster lacks
    /// (a roster ABHA is staged already, so `ON CONFLICT` leaves it out). Returns how many.
    pub async fn stage_sweep(&self, run: Uuid, benefit: &str) -> Result<u64, StoreError> {
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO reconcile_rows (run_id, subject_hash, job_id)
             SELECT $1, l.subject_hash, l.id FROM ({SERVICE_LINKS}) l
             ON CONFLICT (run_id, subject_hash) DO NOTHING"
        )))
        .bind(run)
        .bind(benefit)
        .execute(&self.pool)
        .await
        .ctx("staging the earlier links")?
        .rows_affected();
        Ok(n)
    }

    /// Records that the roster (`sweep` false) or the sweep is fully staged.
    pub async fn mark_staged(&self, run: Uuid, sweep: bool) -> Result<(), StoreError> {
        let sql = if sweep {
            "UPDATE reconcile_runs SET sweep_staged = true, progress_at = now() WHERE id = $1"
        } else {
            "UPDATE reconcile_runs SET roster_staged = true, progress_at = now() WHERE id = $1"
        };
        sqlx::query(sql)
            .bind(run)
            .execute(&self.pool)
            .await
            .ctx("recording reconciliation progress")?;
        Ok(())
    }

    /// ABHAs still to be looked up: of the roster (`sweep` false) or of the sweep. This is
    /// the progress total: what will actually be looked up, repeats and earlier answers of a
    /// resumed run left out.
    pub async fn reconcile_todo(&self, run: Uuid, sweep: bool) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reconcile_rows
             WHERE run_id = $1 AND class IS NULL AND (first_row IS NULL) = $2",
        )
        .bind(run)
        .bind(sweep)
        .fetch_one(&self.pool)
        .await
        .ctx("counting the lookups to do")?;
        Ok(n as u64)
    }

    /// The staged rows of `hashes` (a chunk of the roster).
    pub async fn staged_rows(
        &self,
        run: Uuid,
        hashes: &[Vec<u8>],
    ) -> Result<Vec<StagedRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STAGED_COLUMNS} FROM reconcile_rows
             WHERE run_id = $1 AND subject_hash = ANY($2)"
        )))
        .bind(run)
        .bind(hashes)
        .fetch_all(&self.pool)
        .await
        .ctx("reading staged roster rows")?;
        Ok(rows.iter().map(staged).collect())
    }

    /// A page of swept rows after `after_job`, in job order (`unchecked`: only those not yet
    /// looked up), with the link job's `(dedup hash, payload, result)` to recover the ABHA.
    pub async fn swept_page(
        &self,
        run: Uuid,
        after_job: i64,
        limit: i64,
        unchecked: bool,
    ) -> Result<Vec<(StagedRow, Vec<u8>, Vec<u8>, Option<Vec<u8>>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.subject_hash, r.first_row, r.job_id, r.class, r.abdm_code, r.detail,
                    r.subject_masked, r.fix_open, j.dedup_hash, j.payload, j.result
             FROM reconcile_rows r JOIN jobs j ON j.id = r.job_id
             WHERE r.run_id = $1 AND r.first_row IS NULL AND r.job_id > $2
               AND (NOT $4 OR r.class IS NULL)
             ORDER BY r.job_id LIMIT $3",
        )
        .bind(run)
        .bind(after_job)
        .bind(limit)
        .bind(unchecked)
        .fetch_all(&self.pool)
        .await
        .ctx("reading swept links")?;
        Ok(rows
            .iter()
            .map(|r| (staged(r), r.get(8), r.get(9), r.get(10)))
            .collect())
    }

    /// Records a chunk of lookups, and the run's progress.
    pub async fn record_checks(&self, run: Uuid, checks: &[CheckResult]) -> Result<(), StoreError> {
        if checks.is_empty() {
            return Ok(());
        }
        let hashes: Vec<&[u8]> = checks.iter().map(|c| c.subject_hash.as_slice()).collect();
        let classes: Vec<&str> = checks.iter().map(|c| c.class).collect();
        let codes: Vec<&str> = checks.iter().map(|c| c.code.as_str()).collect();
        let details: Vec<&str> = checks.iter().map(|c| c.detail.as_str()).collect();
        let masked: Vec<Option<&str>> = checks.iter().map(|c| c.masked.as_deref()).collect();
        let mut tx = self.pool.begin().await.ctx("starting to record lookups")?;
        sqlx::query(
            "UPDATE reconcile_rows r SET class = t.c, abdm_code = NULLIF(t.code, ''),
                    detail = NULLIF(t.d, ''), subject_masked = COALESCE(t.m, r.subject_masked)
             FROM unnest($2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[])
                  AS t(h, c, code, d, m)
             WHERE r.run_id = $1 AND r.subject_hash = t.h",
        )
        .bind(run)
        .bind(&hashes)
        .bind(&classes)
        .bind(&codes)
        .bind(&details)
        .bind(&masked)
        .execute(&mut *tx)
        .await
        .ctx("recording lookups")?;
        sqlx::query("UPDATE reconcile_runs SET progress_at = now() WHERE id = $1")
            .bind(run)
            .execute(&mut *tx)
            .await
            .ctx("recording reconciliation progress")?;
        tx.commit().await.ctx("recording lookups")?;
        Ok(())
    }

    /// Distinct ABHAs per class of `run`: `(class, swept, count)` (class `None`: not looked up).
    pub async fn reconcile_class_counts(
        &self,
        run: Uuid,
    ) -> Result<Vec<(Option<String>, bool, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT class, first_row IS NULL, count(*) FROM reconcile_rows WHERE run_id = $1
             GROUP BY 1, 2",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await
        .ctx("counting a run's classes")?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Records a fix batch as soon as `--apply` creates it, so a resumed run finds it.
    pub async fn set_reconcile_batch(
        &self,
        run: Uuid,
        delink: bool,
        batch: Uuid,
    ) -> Result<(), StoreError> {
        let sql = if delink {
            "UPDATE reconcile_runs SET delink_batch = $2 WHERE id = $1"
        } else {
            "UPDATE reconcile_runs SET link_batch = $2 WHERE id = $1"
        };
        sqlx::query(sql)
            .bind(run)
            .bind(batch)
            .execute(&self.pool)
            .await
            .ctx("recording a fix batch")?;
        Ok(())
    }
}
