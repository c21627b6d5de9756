-- Reliability under faults (issue 8): durable intent, aborted submits, one shared rate with
-- AIMD for every replica, and a circuit breaker per ABDM client shared by every replica.

-- Set, in its own committed statement, right before the first call of a job that changes
-- something at ABDM. From then on a retry must look before it acts (a child creation lists the
-- parent's children first), whatever its attempt counter says; retry-failed keeps it.
ALTER TABLE jobs ADD COLUMN effect_started_at timestamptz;

-- A submit that fails or is interrupted leaves its batch 'aborted': its jobs never run.
-- heartbeat_at is refreshed by every chunk a submit writes, so a submit killed with -9 is
-- recognised as abandoned (housekeeping aborts 'submitting' batches without a heartbeat).
ALTER TABLE batches DROP CONSTRAINT batches_state_check;
ALTER TABLE batches ADD CONSTRAINT batches_state_check
    CHECK (state IN ('submitting', 'active', 'finished', 'cancelled', 'aborted'));
ALTER TABLE batches ADD COLUMN heartbeat_at timestamptz;

-- The shared rate: AIMD changes `rate` for every replica at once; `paused_until` is a
-- Retry-After that every replica honours.
ALTER TABLE rate_budget
    ADD COLUMN rate             double precision,
    ADD COLUMN last_decrease_at timestamptz,
    ADD COLUMN last_throttle_at timestamptz,
    ADD COLUMN last_increase_at timestamptz,
    ADD COLUMN paused_until     timestamptz;

-- Circuit breaker per ABDM client (gateway login refused, ABDM unreachable, a run of 5xx or
-- timeouts across jobs). While open, no worker takes a job; one probe per interval.
CREATE TABLE abdm_circuit (
    client         text PRIMARY KEY,
    state          text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open')),
    reason         text,
    opened_at      timestamptz,
    next_probe_at  timestamptz,
    probe_interval double precision NOT NULL DEFAULT 1,
    changed_at     timestamptz NOT NULL DEFAULT now()
);
