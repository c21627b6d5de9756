-- abha-bulk schema. Identifiers are never stored in clear: `payload` and `result` are
-- AES-256-GCM ciphertext (nonce || ciphertext || tag), `subject_hash`/`dedup_hash` are
-- HMAC-SHA256 under a key derived from the same secret, `subject_masked` is for display.

CREATE TABLE batches (
    id             uuid PRIMARY KEY,
    kind           text NOT NULL,
    benefit        text NOT NULL,
    -- 'csv' (submit), 'queue' (external producers), 'retry' (retry-failed), 'reconcile'
    source         text NOT NULL,
    file_name      text,
    file_sha256    text,
    -- submitting → active → finished | cancelled
    state          text NOT NULL DEFAULT 'submitting'
                   CHECK (state IN ('submitting', 'active', 'finished', 'cancelled')),
    total_rows     bigint NOT NULL DEFAULT 0,
    accepted_rows  bigint NOT NULL DEFAULT 0,
    rejected_rows  bigint NOT NULL DEFAULT 0,
    duplicate_rows bigint NOT NULL DEFAULT 0,
    parent_batch   uuid REFERENCES batches (id),
    -- for source 'queue': the UTC day whose external jobs this batch collects
    queue_day      date,
    created_by     text NOT NULL DEFAULT current_user,
    created_at     timestamptz NOT NULL DEFAULT now(),
    submitted_at   timestamptz,
    finished_at    timestamptz
);
CREATE INDEX batches_file ON batches (file_sha256, kind, benefit) WHERE file_sha256 IS NOT NULL;
CREATE UNIQUE INDEX batches_queue_day ON batches (kind, benefit, queue_day) WHERE source = 'queue';

CREATE TABLE jobs (
    id              bigserial PRIMARY KEY,
    batch_id        uuid NOT NULL REFERENCES batches (id),
    kind            text NOT NULL,
    benefit         text NOT NULL,
    -- the producer's key for queue jobs (uploads are keyed by batch and dedup_hash)
    idempotency_key text,
    row_number      bigint,
    external_ref    text,
    subject_hash    bytea NOT NULL,
    subject_masked  text NOT NULL,
    dedup_hash      bytea NOT NULL,
    payload         bytea NOT NULL,
    -- queued → running → succeeded | failed | retrying → … → dead; cancelled
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    -- what happened, for reports: 'linked', 'already_linked', 'created', 'existing', 'found', ...
    outcome         text,
    last_code       text,
    last_message    text,
    result          bytea,
    result_masked   text,
    lease_owner     text,
    lease_until     timestamptz,
    next_due_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (batch_id, dedup_hash)
);
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Jobs still on their way: what status, the batch sweeper and retry-failed look at.
CREATE INDEX jobs_open ON jobs (batch_id, state) WHERE state IN ('queued', 'running', 'retrying');
CREATE INDEX jobs_closed ON jobs (batch_id, state) WHERE state IN ('failed', 'dead');
CREATE INDEX jobs_running_lease ON jobs (lease_until) WHERE state = 'running';

-- One row per HTTP attempt to ABDM made for a job.
CREATE TABLE attempts (
    id           bigserial PRIMARY KEY,
    job_id       bigint NOT NULL REFERENCES jobs (id),
    job_attempt  integer NOT NULL,
    operation    text NOT NULL,
    request_id   uuid NOT NULL,
    http_status  integer,
    code         text,
    message      text,
    disposition  text NOT NULL,
    duration_ms  integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attempts_job ON attempts (job_id);

-- Messages to publish: a row per job to run now or at due_at (retries). The relay deletes a
-- row in the same transaction in which RabbitMQ confirmed its message.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    job_id     bigint NOT NULL REFERENCES jobs (id),
    kind       text NOT NULL,
    due_at     timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_due ON outbox (due_at);

-- Rows of an upload that were not accepted (invalid) or ran once for an identical earlier row.
CREATE TABLE rejected_rows (
    batch_id     uuid NOT NULL REFERENCES batches (id),
    row_number   bigint NOT NULL,
    external_ref text,
    column_name  text NOT NULL,
    reason       text NOT NULL,
    duplicate_of bigint,
    PRIMARY KEY (batch_id, row_number)
);

-- Global rate budget: one token bucket per ABDM client, shared by every worker replica.
CREATE TABLE rate_budget (
    client     text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Every export that revealed identifiers.
CREATE TABLE reveal_audit (
    id          bigserial PRIMARY KEY,
    batch_id    uuid NOT NULL REFERENCES batches (id),
    revealed_by text NOT NULL,
    reason      text,
    rows        bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
