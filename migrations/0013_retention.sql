-- Data lifecycle (issue 19, DPDP Act 2023): identifiers are erased a set time after their
-- batch finishes and on a person's request; what remains (counts, states, codes, masked
-- values, external references) keeps reports useful. Additive only: nullable columns, a new
-- table, and an index on the small `batches` table.

-- When the row's identifiers were erased (payload emptied, result and lookup hashes
-- replaced). An erased row never runs again and its report line says `erased`.
ALTER TABLE jobs ADD COLUMN erased_at timestamptz;

-- When the retention sweep finished erasing the batch's rows, and how far it got: the sweep
-- erases a batch in chunks of job ids (erase_cursor .. erase_upto), one short transaction per
-- chunk, holding only the batch row's lock (taken with SKIP LOCKED, so replicas share the work).
ALTER TABLE batches
    ADD COLUMN erased_at    timestamptz,
    ADD COLUMN erase_cursor bigint,
    ADD COLUMN erase_upto   bigint,
    -- When the batch's rows themselves were deleted (retention.rows_days after the erasure),
    -- and how far that got: the batch row and its counts stay, so the table stops growing.
    ADD COLUMN rows_deleted_at timestamptz,
    ADD COLUMN delete_cursor   bigint;

-- The sweep's question: finished batches not yet erased, oldest first (batches is small).
CREATE INDEX batches_unerased ON batches (COALESCE(finished_at, created_at))
    WHERE erased_at IS NULL AND state IN ('finished', 'cancelled', 'aborted');

-- The second stage: erased batches whose rows are due for deletion.
CREATE INDEX batches_rows_to_delete ON batches (erased_at)
    WHERE erased_at IS NOT NULL AND rows_deleted_at IS NULL;

-- What was erased, when and why: one row per request (batch_id NULL, the summary) and one per
-- batch touched. Never the identifier, nor its keyed hash.
CREATE TABLE erasure_log (
    id             bigserial PRIMARY KEY,
    -- 'retention' (the sweep) or 'request' (abha-bulk erase, POST /v1/erasures)
    kind           text NOT NULL CHECK (kind IN ('retention', 'request')),
    request_id     uuid,
    batch_id       uuid,
    benefit        text,
    -- benefits the request was limited to (NULL: every benefit)
    scope          text[],
    subjects       integer,
    jobs_erased    bigint NOT NULL DEFAULT 0,
    jobs_cancelled bigint NOT NULL DEFAULT 0,
    -- rows still running when the request ended (erased by a later run of the same request)
    jobs_waiting   bigint NOT NULL DEFAULT 0,
    requested_by   text,
    operator       text,
    reason         text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX erasure_log_request ON erasure_log (request_id) WHERE request_id IS NOT NULL;
