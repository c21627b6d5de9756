-- Fair shares of the one ABDM rate (issue 17). Additive only: the previous release keeps
-- running beside this schema during a rolling deploy (it never reads these columns).

-- A batch's priority within its programme's share: the scheduler weighs its batches
-- low 1, normal 2, high 4, urgent 8 (docs/architecture.md, "Fair shares").
ALTER TABLE batches ADD COLUMN priority text NOT NULL DEFAULT 'normal'
    CHECK (priority IN ('low', 'normal', 'high', 'urgent'));

-- Every outbox row names the batch it works for, so the scheduler reads each active batch's
-- due rows through one index instead of joining every due row to its job. A trigger fills it
-- for rows inserted by code that does not set it (the previous release during a deploy).
ALTER TABLE outbox ADD COLUMN batch_ref uuid;
CREATE FUNCTION outbox_batch_ref() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.batch_ref IS NULL THEN
        NEW.batch_ref := COALESCE(NEW.batch_id, (SELECT batch_id FROM jobs WHERE id = NEW.job_id));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER outbox_batch_ref BEFORE INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_batch_ref();
-- The outbox holds only what is not yet published (rows are deleted once confirmed): small.
UPDATE outbox o SET batch_ref = COALESCE(o.batch_id, (SELECT j.batch_id FROM jobs j WHERE j.id = o.job_id))
WHERE batch_ref IS NULL;
CREATE INDEX outbox_batch_ref_due ON outbox (batch_ref, due_at);

-- The fleet's configured rate, written by workers only: side work (reconcile, retry-failed's
-- look-ups, --apply) spends tokens from the same bucket at its own rate but never lowers the
-- ceiling every replica refills at (before, the lowest caller's rate became everyone's).
ALTER TABLE rate_budget ADD COLUMN fleet_rate double precision;

-- The scheduler's current view of each active batch, rewritten every few seconds by the relay
-- that schedules: its share of the fleet's rate and the calls/s that stands for, the work it
-- has left, and its place in the programme's queue. status, the API and the console read it.
CREATE TABLE batch_shares (
    batch_id   uuid PRIMARY KEY,
    programme  text NOT NULL,
    share      double precision NOT NULL,
    rate       double precision NOT NULL,
    backlog    bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Messages published per batch per minute (the console's rate chart of the last hour). One
-- row per active batch per minute; rows older than a day are deleted by housekeeping.
CREATE TABLE batch_minutes (
    batch_id  uuid NOT NULL,
    minute    timestamptz NOT NULL,
    published bigint NOT NULL,
    PRIMARY KEY (batch_id, minute)
);
