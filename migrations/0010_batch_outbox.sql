-- A submitted file becomes due as ONE outbox row, not one row per job (issue 10: writing a
-- million outbox rows at finish_submit, each with a foreign-key check that locks and dirties
-- its job's heap page, took longer than storing the jobs themselves). The relay expands a
-- batch row into the batch's queued jobs in id order: `after_job` is the last job id it has
-- published (its cursor), `upto_job` the highest id any job of the batch can have. Per-job
-- rows (retries, lease expiry, retry-failed, repaired messages) are unchanged.
ALTER TABLE outbox ALTER COLUMN job_id DROP NOT NULL;
ALTER TABLE outbox
    ADD COLUMN batch_id  uuid REFERENCES batches (id),
    ADD COLUMN after_job bigint,
    ADD COLUMN upto_job  bigint,
    ADD CONSTRAINT outbox_job_or_batch CHECK (
        (job_id IS NOT NULL AND batch_id IS NULL)
        OR (job_id IS NULL AND batch_id IS NOT NULL AND after_job IS NOT NULL AND upto_job IS NOT NULL));
-- Batch rows only (a handful): cancel and the lost-message repair look a batch's row up.
CREATE INDEX outbox_batch ON outbox (batch_id) WHERE batch_id IS NOT NULL;

-- A lower bound on the ids of a batch's jobs: the job sequence's position when the batch is
-- created (every job of the batch is inserted after that; jobs_id_seq caches one value, so no
-- session holds an id below it). NULL for older batches (read as 0).
ALTER TABLE batches ADD COLUMN jobs_after bigint;
ALTER TABLE batches ALTER COLUMN jobs_after SET DEFAULT COALESCE(pg_sequence_last_value('jobs_id_seq'), 0);

-- (No schema change) batches.heartbeat_at is now refreshed by a chunk only when it is 5 s old,
-- not by every chunk: the update holds the batch row's lock until the chunk commits, which
-- made a submit's two chunk writers wait for each other.

-- A job's batch is checked once per insert statement (store::batches::chunk_insert_sql), not
-- by a foreign key for every row: that check, a lookup of the same batch row per job, took a
-- quarter of Postgres's time on a 1 M-row submit. Batches are never deleted.
ALTER TABLE jobs DROP CONSTRAINT jobs_batch_id_fkey;
