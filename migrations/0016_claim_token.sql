-- A lease belongs to a claim, not to a process (issue 18). Additive only: the previous release
-- keeps running beside this schema during a rolling deploy and never reads or writes it.
--
-- Every claim by this release writes a fresh random token here; its fence and its outcome write
-- match the token as well as `lease_owner`, so a late write of a first claim never matches a
-- second claim of the same job by the same process (or by a replica with the same name).
-- NULL on rows never claimed by this release (and left as it was by the previous release's
-- claims: docs/reliability.md, "Mixed versions", says why that is safe).
-- A nullable column without a default is a catalogue change (no rewrite), but it needs a brief
-- ACCESS EXCLUSIVE lock on jobs: give up after 5 s rather than queue every worker behind a
-- long transaction (run `abha-bulk migrate` again).
SET LOCAL lock_timeout = '5s';
ALTER TABLE jobs ADD COLUMN claim_token uuid;
