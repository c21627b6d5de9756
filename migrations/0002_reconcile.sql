-- Nightly reconciliation runs: what the programme's roster says against what ABDM says.
CREATE TABLE reconcile_runs (
    id              uuid PRIMARY KEY,
    benefit         text NOT NULL,
    roster_file     text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    roster_rows     bigint NOT NULL DEFAULT 0,
    linked_ok       bigint NOT NULL DEFAULT 0,
    missing_link    bigint NOT NULL DEFAULT 0,
    unexpected_link bigint NOT NULL DEFAULT 0,
    unknown         bigint NOT NULL DEFAULT 0,
    errors          bigint NOT NULL DEFAULT 0,
    report_path     text,
    -- batches submitted by --apply to fix the drift
    link_batch      uuid REFERENCES batches (id),
    delink_batch    uuid REFERENCES batches (id),
    -- repairs of abha-bulk's own state done by the run
    repaired_leases  bigint NOT NULL DEFAULT 0,
    repaired_outbox  bigint NOT NULL DEFAULT 0,
    repaired_batches bigint NOT NULL DEFAULT 0
);
CREATE INDEX reconcile_runs_benefit ON reconcile_runs (benefit, started_at DESC);

-- Finding the ABHA numbers this service linked (or de-linked) for a benefit. Only finished
-- jobs enter it, so a million-row upload does not pay for it at insert time.
CREATE INDEX jobs_benefit_links ON jobs (benefit, kind) WHERE kind IN ('benefit-link', 'benefit-delink') AND state = 'succeeded';
