-- no-transaction
-- The relay's recheck step leaves out jobs that still have an outbox job row (a retry due, a
-- postponement after an open breaker, an expired lease): the job row publishes them in their
-- programme's turn, and republishing them too only made duplicates, each costing a rate token
-- before its claim found the job busy (after an ABDM outage, every postponed job: the chaos
-- run's short storm fell to 0 jobs/s). That check looks an outbox row up by job id.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_job ON outbox (job_id) WHERE job_id IS NOT NULL;
