SET lock_timeout = '5s';
-- Recheck rows (issue 18): once the relay has published a job, its message is only a hint;
-- the job is still backed by Postgres through a recheck row, an outbox row shaped like a
-- batch row (batch_id, after_job, upto_job) that falls due `relay.republish_after_secs` after
-- the publish and republishes the jobs of its range that are still waiting to run (their
-- message was lost, acked unrun after a bounded hold, or dead-lettered). Why it is a batch row
-- and not a new table: the previous release (which may run beside this schema during a
-- rolling deploy) then reads a recheck row as a batch row and expands it the same way, which
-- is harmless (a duplicate message is acked by the claim) — docs/architecture.md.
--
-- A boolean with a constant default is a catalogue change (no rewrite); it needs a brief
-- ACCESS EXCLUSIVE lock on outbox: give up after 5 s rather than queue the relay behind a long
-- transaction (run `abha-bulk migrate` again).
ALTER TABLE outbox ADD COLUMN recheck boolean NOT NULL DEFAULT false;
