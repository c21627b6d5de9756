-- The key check value of pii.key: every command refuses to start with a key that does not
-- match (abha-bulk rekey replaces it once every value is re-encrypted under the new key).
CREATE TABLE pii_key_check (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key_id      text NOT NULL,
    check_value bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Parents' X-tokens are bearer credentials: the relay's housekeeping rewrites the payload of
-- finished child-create jobs without the token (failed and dead ones an hour after they
-- finished, so retry-failed can still run them) and sets this flag.
ALTER TABLE jobs ADD COLUMN token_deleted boolean NOT NULL DEFAULT false;
CREATE INDEX jobs_tokens_to_delete ON jobs (id)
    WHERE kind = 'child-create' AND NOT token_deleted
      AND state IN ('succeeded', 'failed', 'dead', 'cancelled');

-- ABDM's message text can echo names, and non-JSON bodies were kept as excerpts: only fixed
-- descriptions per code or HTTP status are stored from now on; drop what was kept before
-- (the codes stay).
UPDATE attempts SET message = NULL WHERE message IS NOT NULL;
UPDATE jobs SET last_message = NULL WHERE last_message IS NOT NULL;
