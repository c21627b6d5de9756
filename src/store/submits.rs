//! A submission's life in Postgres: the batch of an upload is created under an advisory lock
//! (two uploads of one file make one batch), becomes due as a whole when the file is stored
//! (`finish_submit`), or is aborted when the submit fails, is interrupted or was abandoned.

use uuid::Uuid;

use super::batches::{
    BATCH_COLUMNS, BatchInfo, ChunkOutcome, NewBatch, PreparedRow, batch_from_row, chunk_insert,
};
use super::{QueryContext, Store, StoreError};
use crate::jobs::kind::JobKind;

/// Why an upload's batch was not created.
#[derive(Debug, Clone)]
pub enum UploadConflict {
    /// The same file is being submitted right now (this batch).
    InProgress(BatchInfo),
    /// The same file was submitted before (this batch).
    Done(BatchInfo),
}

impl Store {
    /// Creates the batch of an uploaded file unless the same file (same kind and benefit) is
    /// being submitted right now, or (without `force`) was submitted before. The check and the
    /// insert hold a transaction-level advisory lock on the file's hash, so two uploads of one
    /// file at the same moment make one batch.
    pub async fn create_upload_batch(
        &self,
        b: NewBatch<'_>,
        force: bool,
    ) -> Result<Result<Uuid, UploadConflict>, StoreError> {
        self.refuse_if_stale()?;
        let sha = b.file_sha256.unwrap_or_default();
        let mut tx = self.pool.begin().await.ctx("starting a batch")?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
            .bind(format!("{sha}|{}|{}", b.kind.as_str(), b.benefit))
            .execute(&mut *tx)
            .await
            .ctx("locking the upload")?;
        let sql = format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE file_sha256 = $1 AND kind = $2 AND benefit = $3
             AND (state IN ('active', 'finished') OR (state = 'submitting'
                  AND COALESCE(heartbeat_at, created_at) > now() - interval '10 minutes'))
             ORDER BY (state = 'submitting') DESC, created_at DESC LIMIT 1"
        );
        let earlier = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(sha)
            .bind(b.kind.as_str())
            .bind(b.benefit)
            .fetch_optional(&mut *tx)
            .await
            .ctx("looking for an earlier upload of the file")?
            .as_ref()
            .map(batch_from_row);
        match earlier {
            Some(e) if e.state == "submitting" => return Ok(Err(UploadConflict::InProgress(e))),
            Some(e) if !force => return Ok(Err(UploadConflict::Done(e))),
            _ => {}
        }
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO batches (id, kind, benefit, source, file_name, file_sha256, parent_batch, heartbeat_at, priority)
             VALUES ($1, $2, $3, $4, $5, $6, $7, now(), $8)",
        )
        .bind(id)
        .bind(b.kind.as_str())
        .bind(b.benefit)
        .bind(b.source)
        .bind(b.file_name)
        .bind(b.file_sha256)
        .bind(b.parent)
        .bind(b.priority.as_str())
        .execute(&mut *tx)
        .await
        .ctx("creating a batch")?;
        tx.commit().await.ctx("creating a batch")?;
        Ok(Ok(id))
    }

    /// [`Store::insert_jobs`] for a chunk expected to repeat no row: a plain insert, which
    /// descends the `(batch_id, dedup_hash)` index once per row where `ON CONFLICT` descends it
    /// twice (it probes before it inserts; 15 % of Postgres's time on a 1 M-row submit).
    /// `None` when a row repeats one already stored: nothing of the chunk was written, and the
    /// caller stores it with `insert_jobs`, which records the duplicates.
    pub async fn insert_new_jobs(
        &self,
        batch: Uuid,
        kind: JobKind,
        benefit: &str,
        rows: &[PreparedRow],
    ) -> Result<Option<ChunkOutcome>, StoreError> {
        self.refuse_if_stale()?;
        let mut tx = self.pool.begin().await.ctx("starting a chunk")?;
        let inserted = chunk_insert("", (batch, kind, benefit), rows)
            .fetch_all(&mut *tx)
            .await;
        let inserted = match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(None),
            other => other.ctx("inserting jobs")?,
        };
        tx.commit().await.ctx("committing a chunk")?;
        Ok(Some(ChunkOutcome {
            accepted: inserted.len() as u64,
            duplicates: 0,
        }))
    }

    /// Marks the end of a submission, in one transaction: the counts, one outbox row that
    /// stands for every job of the batch, and `active` (or `finished` when nothing was accepted). This is the
    /// moment the batch's rows become due: a submit that fails or is interrupted before it
    /// leaves no row that could run. Refuses a batch that is no longer `submitting` (aborted).
    pub async fn finish_submit(
        &self,
        batch: Uuid,
        total: u64,
        accepted: u64,
        rejected: u64,
        duplicates: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .ctx("starting to activate the batch")?;
        let updated = sqlx::query(
            "UPDATE batches SET total_rows = $2, accepted_rows = $3, rejected_rows = $4,
                    duplicate_rows = $5, submitted_at = now(), heartbeat_at = now(),
                    state = CASE WHEN $3 = 0 THEN 'finished' ELSE 'active' END,
                    finished_at = CASE WHEN $3 = 0 THEN now() END
             WHERE id = $1 AND state = 'submitting'",
        )
        .bind(batch)
        .bind(total as i64)
        .bind(accepted as i64)
        .bind(rejected as i64)
        .bind(duplicates as i64)
        .execute(&mut *tx)
        .await
        .ctx("finishing the submission")?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::Refused(format!(
                "batch {batch} is no longer being submitted (it was aborted); submit the file again"
            )));
        }
        // One outbox row for the whole batch: the relay expands it into the batch's jobs
        // (store::outbox). Every job of the batch was committed before this, so its id lies
        // between the sequence's position when the batch was created and its position now.
        sqlx::query(
            "INSERT INTO outbox (batch_id, kind, after_job, upto_job)
             SELECT id, kind, COALESCE(jobs_after, 0),
                    COALESCE(pg_sequence_last_value('jobs_id_seq'), 0)
             FROM batches WHERE id = $1 AND $2 > 0",
        )
        .bind(batch)
        .bind(accepted as i64)
        .execute(&mut *tx)
        .await
        .ctx("queueing the batch's jobs")?;
        tx.commit().await.ctx("activating the batch")?;
        Ok(())
    }

    /// Marks a submission that failed or was interrupted as `aborted`: its jobs become
    /// `cancelled` (code `submit_aborted`) and never run, and the file may be submitted again.
    /// Returns false when the batch was not `submitting` any more.
    pub async fn abort_submit(&self, batch: Uuid, why: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting an abort")?;
        let aborted = sqlx::query(
            "UPDATE batches SET state = 'aborted', finished_at = now() WHERE id = $1 AND state = 'submitting'",
        )
        .bind(batch)
        .execute(&mut *tx)
        .await
        .ctx("aborting the batch")?;
        if aborted.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', last_code = 'submit_aborted', last_message = $2,
                    finished_at = now(), updated_at = now()
             WHERE batch_id = $1 AND state = 'queued'",
        )
        .bind(batch)
        .bind(why)
        .execute(&mut *tx)
        .await
        .ctx("cancelling the aborted batch's jobs")?;
        tx.commit().await.ctx("committing an abort")?;
        Ok(true)
    }

    /// Aborts `submitting` batches whose submit stopped writing `stale_secs` ago (killed
    /// without a chance to abort itself). Returns how many.
    pub async fn abort_abandoned_submits(&self, stale_secs: u64) -> Result<u64, StoreError> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM batches WHERE state = 'submitting'
               AND COALESCE(heartbeat_at, created_at) < now() - make_interval(secs => $1)",
        )
        .bind(stale_secs as f64)
        .fetch_all(&self.pool)
        .await
        .ctx("finding abandoned submits")?;
        let mut n = 0;
        for id in ids {
            if self
                .abort_submit(id, "the submit stopped before the whole file was stored")
                .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }
}
