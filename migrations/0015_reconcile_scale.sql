-- Reconciliation at a million rows (issue 22). Additive only: the previous release keeps
-- writing and reading reconcile_runs beside these columns during a rolling deploy.
--
-- The classes a run keeps apart. NULL in a run written before this migration (or by the
-- previous release). From this release `errors` holds ABDM errors only (= abdm_errors);
-- `unexpected_link` stays 0 when not checked for the previous release's readers, and
-- `unexpected_checked` = false says it was not checked.
ALTER TABLE reconcile_runs
    ADD COLUMN roster_sha256      bytea,
    ADD COLUMN invalid_rows       bigint,
    ADD COLUMN abdm_errors        bigint,
    ADD COLUMN repeated_rows      bigint,
    ADD COLUMN unexpected_checked boolean,
    -- resumption: the roster has been staged into reconcile_rows / the sweep too
    ADD COLUMN roster_staged      boolean NOT NULL DEFAULT false,
    ADD COLUMN sweep_staged       boolean NOT NULL DEFAULT false,
    -- the last committed progress (a run idle for long is not resumed)
    ADD COLUMN progress_at        timestamptz,
    -- set when a later run of the benefit replaced this unfinished one
    ADD COLUMN abandoned_at       timestamptz;

-- An unfinished run of the same benefit and roster content is resumed.
CREATE INDEX reconcile_runs_resume ON reconcile_runs (benefit, roster_sha256)
    WHERE finished_at IS NULL;

-- One row per distinct ABHA of a run (roster rows and swept earlier links): the
-- de-duplication of repeated roster rows at a million rows without holding them in memory,
-- the progress a resumed run continues from, and the classes the report is written from.
-- Emptied when the run finishes or is abandoned.
CREATE TABLE reconcile_rows (
    run_id         uuid NOT NULL REFERENCES reconcile_runs (id) ON DELETE CASCADE,
    -- the vault's keyed hash of the ABHA number (as jobs.subject_hash)
    subject_hash   bytea NOT NULL,
    -- roster row of the first occurrence; NULL for an earlier link found by the sweep
    first_row      bigint,
    -- the swept link's job (its payload holds the ABHA number, encrypted)
    job_id         bigint,
    -- NULL until looked up: linked, missing_link, unexpected_link, unknown, error
    class          text,
    abdm_code      text,
    detail         text,
    -- masked ABHA number of a swept link, for the report
    subject_masked text,
    -- an open link (de-link) job already fixes this drift: --apply does not queue another
    fix_open       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, subject_hash)
);
CREATE INDEX reconcile_rows_sweep ON reconcile_rows (run_id, job_id) WHERE first_row IS NULL;
