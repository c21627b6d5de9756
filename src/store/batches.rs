//! Batches: creation, chunked insertion of jobs with their outbox rows, rejections, counts.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::vault::Aad;
use super::{QueryContext, Store, StoreError};
use crate::jobs::kind::{Job, JobKind};

/// A batch to create.
#[derive(Debug, Clone)]
pub struct NewBatch<'a> {
    /// Job kind of every row.
    pub kind: JobKind,
    /// Benefit (programme) name.
    pub benefit: &'a str,
    /// `csv`, `queue`, `retry` or `reconcile`.
    pub source: &'a str,
    /// Uploaded file name.
    pub file_name: Option<&'a str>,
    /// SHA-256 of the uploaded file.
    pub file_sha256: Option<&'a str>,
    /// Batch this one was derived from.
    pub parent: Option<Uuid>,
    /// Its priority within its programme's share of the rate.
    pub priority: crate::scheduler::Priority,
}

/// A validated row ready for insertion: identifiers already encrypted and hashed.
#[derive(Debug, Clone)]
pub struct PreparedRow {
    /// Data row number in the file (1-based).
    pub row_number: i64,
    /// The programme's own reference.
    pub external_ref: Option<String>,
    /// Keyed hash of the main identifier.
    pub subject_hash: Vec<u8>,
    /// Masked main identifier.
    pub subject_masked: String,
    /// Keyed hash of kind + all fields: identical rows run once.
    pub dedup_hash: Vec<u8>,
    /// Encrypted payload.
    pub payload: Vec<u8>,
}

/// A rejected row to record.
#[derive(Debug, Clone)]
pub struct RejectedRow {
    /// Data row number.
    pub row_number: i64,
    /// The programme's reference, if readable.
    pub external_ref: Option<String>,
    /// Column (or `*` for the whole row).
    pub column: String,
    /// Why (never the value).
    pub reason: String,
}

/// What one chunk insert did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkOutcome {
    /// New jobs.
    pub accepted: u64,
    /// Rows identical to an earlier row of the batch.
    pub duplicates: u64,
}

/// A batch as stored.
#[derive(Debug, Clone)]
pub struct BatchInfo {
    /// Id.
    pub id: Uuid,
    /// Kind.
    pub kind: String,
    /// Benefit.
    pub benefit: String,
    /// Source.
    pub source: String,
    /// File name.
    pub file_name: Option<String>,
    /// State.
    pub state: String,
    /// Rows read.
    pub total_rows: i64,
    /// Rows accepted.
    pub accepted_rows: i64,
    /// Rows rejected.
    pub rejected_rows: i64,
    /// Duplicate rows.
    pub duplicate_rows: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Job counts of a batch by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts(pub BTreeMap<String, i64>);

impl StateCounts {
    /// Every job state, in the order status pages and gauges show them.
    pub const STATES: [&'static str; 7] = [
        "queued",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "dead",
        "cancelled",
    ];

    /// Count of one state.
    pub fn get(&self, state: &str) -> i64 {
        self.0.get(state).copied().unwrap_or(0)
    }
    /// Jobs still on their way.
    pub fn open(&self) -> i64 {
        self.get("queued") + self.get("running") + self.get("retrying")
    }
    /// Jobs in a final state.
    pub fn done(&self) -> i64 {
        self.get("succeeded") + self.get("failed") + self.get("dead") + self.get("cancelled")
    }
    /// All jobs.
    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }
}

pub(crate) fn batch_from_row(r: &sqlx::postgres::PgRow) -> BatchInfo {
    BatchInfo {
        id: r.get("id"),
        kind: r.get("kind"),
        benefit: r.get("benefit"),
        source: r.get("source"),
        file_name: r.get("file_name"),
        state: r.get("state"),
        total_rows: r.get("total_rows"),
        accepted_rows: r.get("accepted_rows"),
        rejected_rows: r.get("rejected_rows"),
        duplicate_rows: r.get("duplicate_rows"),
        created_at: r.get("created_at"),
        finished_at: r.get("finished_at"),
    }
}

/// The chunk insert of [`Store::insert_jobs`] and `Store::insert_new_jobs` (`conflict`: the
/// ON CONFLICT clause, or nothing). Returns the row numbers inserted. The batch must exist,
/// checked once per statement: the foreign key that checked it for every row cost a quarter
/// of Postgres's time on a large submit (migration 0010 drops it; batches are never deleted).
/// Refreshes the batch's heartbeat when it is 5 s old: an update of the batch row holds its
/// lock until the chunk commits, so refreshing it in every chunk made the two writers of a
/// submit wait for each other.
pub(super) fn chunk_insert<'q>(
    conflict: &str,
    (batch, kind, benefit): (Uuid, JobKind, &'q str),
    rows: &[PreparedRow],
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, i64, sqlx::postgres::PgArguments> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(chunk_insert_sql(conflict)))
        .bind(batch)
        .bind(kind.as_str())
        .bind(benefit)
        .bind(rows.iter().map(|r| r.row_number).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.external_ref.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.subject_hash.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.subject_masked.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.dedup_hash.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())
}

/// The statement behind [`chunk_insert`].
fn chunk_insert_sql(conflict: &str) -> String {
    format!(
        "WITH ins AS (
            INSERT INTO jobs (batch_id, kind, benefit, row_number, external_ref, subject_hash,
                              subject_masked, dedup_hash, payload)
            SELECT $1, $2, $3, r.row_number, r.external_ref, r.subject_hash, r.subject_masked,
                   r.dedup_hash, r.payload
            FROM UNNEST($4::bigint[], $5::text[], $6::bytea[], $7::text[], $8::bytea[], $9::bytea[])
                 AS r(row_number, external_ref, subject_hash, subject_masked, dedup_hash, payload)
            WHERE EXISTS (SELECT 1 FROM batches WHERE id = $1)
            {conflict}
            RETURNING row_number
         ), beat AS (
            UPDATE batches SET heartbeat_at = now()
            WHERE id = $1 AND (heartbeat_at IS NULL OR heartbeat_at < now() - interval '5 seconds')
         )
         SELECT row_number FROM ins"
    )
}

pub(crate) const BATCH_COLUMNS: &str = "id, kind, benefit, source, file_name, state, total_rows, accepted_rows, rejected_rows, duplicate_rows, created_at, finished_at";

impl Store {
    /// Encrypts and hashes a validated job for insertion.
    pub fn prepare(&self, row_number: i64, external_ref: Option<String>, job: &Job) -> PreparedRow {
        let dedup_hash = self.vault.hash(&job.dedup_key());
        PreparedRow {
            row_number,
            external_ref,
            subject_hash: self.vault.hash(&job.subject()),
            subject_masked: job.subject_masked(),
            payload: self.encrypt_job(job, &dedup_hash),
            dedup_hash,
        }
    }

    /// The job's fields as encrypted JSON, bound to the row's `dedup_hash`.
    pub fn encrypt_job(&self, job: &Job, dedup_hash: &[u8]) -> Vec<u8> {
        let json = serde_json::to_vec(&job.to_fields()).expect("a string map serialises");
        self.vault.encrypt(&json, Aad::JobPayload(dedup_hash))
    }

    /// Decrypts and re-validates a stored payload.
    pub fn decrypt_job(
        &self,
        job_id: i64,
        kind: JobKind,
        dedup_hash: &[u8],
        payload: &[u8],
    ) -> Result<Job, StoreError> {
        let json = self.vault.decrypt(payload, Aad::JobPayload(dedup_hash))?;
        let fields: HashMap<String, String> =
            serde_json::from_slice(&json).map_err(|e| StoreError::Corrupt {
                job_id,
                reason: format!("payload is not a field map: {e}"),
            })?;
        Job::from_fields(
            kind,
            |k| fields.get(k).map(String::as_str).filter(|v| !v.is_empty()),
            Utc::now().date_naive(),
        )
        .map_err(|errors| StoreError::Corrupt {
            job_id,
            reason: errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// Creates a batch in state `submitting`.
    pub async fn create_batch(&self, b: NewBatch<'_>) -> Result<Uuid, StoreError> {
        self.refuse_if_stale()?;
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO batches (id, kind, benefit, source, file_name, file_sha256, parent_batch, priority)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(b.kind.as_str())
        .bind(b.benefit)
        .bind(b.source)
        .bind(b.file_name)
        .bind(b.file_sha256)
        .bind(b.parent)
        .bind(b.priority.as_str())
        .execute(&self.pool)
        .await
        .ctx("creating a batch")?;
        Ok(id)
    }

    /// The most recent earlier completed upload (`active` or `finished`) of the same file for
    /// the same kind and benefit. Aborted and cancelled uploads do not count.
    pub async fn previous_upload(
        &self,
        sha256: &str,
        kind: JobKind,
        benefit: &str,
    ) -> Result<Option<BatchInfo>, StoreError> {
        let sql = format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE file_sha256 = $1 AND kind = $2 AND benefit = $3
             AND state IN ('active', 'finished') ORDER BY created_at DESC LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(sha256)
            .bind(kind.as_str())
            .bind(benefit)
            .fetch_optional(&self.pool)
            .await
            .ctx("looking for an earlier upload of the file")?;
        Ok(row.as_ref().map(batch_from_row))
    }

    /// Inserts a chunk of jobs in one transaction (and refreshes the batch's heartbeat). Rows
    /// identical to an earlier row of the batch are recorded as duplicates of it instead. No
    /// outbox row is written: nothing of a batch runs before `finish_submit` (`store::submits`) makes the
    /// whole file due at once.
    pub async fn insert_jobs(
        &self,
        batch: Uuid,
        kind: JobKind,
        benefit: &str,
        rows: &[PreparedRow],
    ) -> Result<ChunkOutcome, StoreError> {
        if rows.is_empty() {
            return Ok(ChunkOutcome::default());
        }
        self.refuse_if_stale()?;
        let mut tx = self.pool.begin().await.ctx("starting a chunk")?;
        let inserted: Vec<i64> = chunk_insert(
            "ON CONFLICT (batch_id, dedup_hash) DO NOTHING",
            (batch, kind, benefit),
            rows,
        )
        .fetch_all(&mut *tx)
        .await
        .ctx("inserting jobs")?;
        let accepted = inserted.len() as u64;
        let mut duplicates = 0u64;
        if inserted.len() < rows.len() {
            let inserted: std::collections::HashSet<i64> = inserted.into_iter().collect();
            let dups: Vec<&PreparedRow> = rows
                .iter()
                .filter(|r| !inserted.contains(&r.row_number))
                .collect();
            let originals: HashMap<Vec<u8>, i64> = sqlx::query(
                "SELECT dedup_hash, row_number FROM jobs WHERE batch_id = $1 AND dedup_hash = ANY($2)",
            )
            .bind(batch)
            .bind(dups.iter().map(|r| r.dedup_hash.clone()).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .ctx("finding the rows duplicates repeat")?
            .into_iter()
            .map(|r| (r.get::<Vec<u8>, _>(0), r.get::<Option<i64>, _>(1).unwrap_or(0)))
            .collect();
            let of: Vec<i64> = dups
                .iter()
                .map(|r| originals.get(&r.dedup_hash).copied().unwrap_or(0))
                .collect();
            sqlx::query(
                "INSERT INTO rejected_rows (batch_id, row_number, external_ref, column_name, reason, duplicate_of)
                 SELECT $1, r.row_number, r.external_ref, '*', 'duplicate of row ' || r.dup_of || ': run once', r.dup_of
                 FROM UNNEST($2::bigint[], $3::text[], $4::bigint[]) AS r(row_number, external_ref, dup_of)
                 ON CONFLICT DO NOTHING",
            )
            .bind(batch)
            .bind(dups.iter().map(|r| r.row_number).collect::<Vec<_>>())
            .bind(dups.iter().map(|r| r.external_ref.clone()).collect::<Vec<_>>())
            .bind(of)
            .execute(&mut *tx)
            .await
            .ctx("recording duplicate rows")?;
            duplicates = dups.len() as u64;
        }
        tx.commit().await.ctx("committing a chunk")?;
        Ok(ChunkOutcome {
            accepted,
            duplicates,
        })
    }

    /// Records rejected rows.
    pub async fn insert_rejections(
        &self,
        batch: Uuid,
        rows: &[RejectedRow],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rejected_rows (batch_id, row_number, external_ref, column_name, reason)
             SELECT $1, r.row_number, r.external_ref, r.column_name, r.reason
             FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[])
                  AS r(row_number, external_ref, column_name, reason)
             ON CONFLICT DO NOTHING",
        )
        .bind(batch)
        .bind(rows.iter().map(|r| r.row_number).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.external_ref.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.column.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.reason.clone()).collect::<Vec<_>>())
        .execute(&self.pool)
        .await
        .ctx("recording rejected rows")?;
        Ok(())
    }

    /// One batch.
    pub async fn batch(&self, id: Uuid) -> Result<Option<BatchInfo>, StoreError> {
        let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .ctx("reading a batch")?;
        Ok(row.as_ref().map(batch_from_row))
    }

    /// Batches, newest first (`active_only`: submitting or active).
    pub async fn list_batches(
        &self,
        active_only: bool,
        limit: i64,
    ) -> Result<Vec<BatchInfo>, StoreError> {
        let sql = format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE ($1 = false OR state IN ('submitting', 'active'))
             ORDER BY created_at DESC LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(active_only)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .ctx("listing batches")?;
        Ok(rows.iter().map(batch_from_row).collect())
    }

    /// Job counts of a batch by state.
    pub async fn batch_counts(&self, id: Uuid) -> Result<StateCounts, StoreError> {
        let rows =
            sqlx::query("SELECT state, count(*) FROM jobs WHERE batch_id = $1 GROUP BY state")
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .ctx("counting jobs")?;
        Ok(StateCounts(
            rows.into_iter()
                .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                .collect(),
        ))
    }

    /// Jobs of a batch finished in the last `secs` seconds (for the rate and ETA).
    pub async fn finished_recently(&self, id: Uuid, secs: i64) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE batch_id = $1 AND finished_at > now() - make_interval(secs => $2)",
        )
        .bind(id)
        .bind(secs as f64)
        .fetch_one(&self.pool)
        .await
        .ctx("counting recently finished jobs")
    }

    /// Marks active batches without open jobs as finished; returns how many.
    pub async fn finish_batches(&self) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE batches b SET state = 'finished', finished_at = now()
             WHERE state = 'active' AND NOT EXISTS (
                SELECT 1 FROM jobs j WHERE j.batch_id = b.id AND j.state IN ('queued', 'running', 'retrying'))",
        )
        .execute(&self.pool)
        .await
        .ctx("finishing batches")?;
        Ok(r.rows_affected())
    }

    /// Rows of active batches by job state (the `abha_batch_rows` gauge).
    pub async fn active_rows_by_state(&self) -> Result<StateCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT j.state, count(*) FROM jobs j JOIN batches b ON b.id = j.batch_id
             WHERE b.state IN ('submitting', 'active') GROUP BY j.state",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("counting rows of active batches")?;
        Ok(StateCounts(
            rows.into_iter()
                .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
                .collect(),
        ))
    }
}
