-- Guards of the programme API and console (issue 20). Additive only: the previous release
-- keeps running beside this schema during a rolling deploy.

-- Console sessions live on the server: the cookie carries a random session id (only its
-- SHA-256 is kept), never the API key. A session ends at sign-out (everywhere: every copy of
-- the cookie), when idle too long, at its absolute expiry, or when its key is revoked.
CREATE TABLE console_sessions (
    id_sha256    bytea PRIMARY KEY,
    key_id       uuid NOT NULL REFERENCES api_keys (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz
);
CREATE INDEX console_sessions_key ON console_sessions (key_id) WHERE ended_at IS NULL;

-- draft-ietf-httpapi-idempotency-key-header: the fingerprint of the first request with a key
-- (SHA-256 of its parameters and body); a reuse with another fingerprint is answered 422.
-- NULL on rows written by the previous release (those are matched on the key alone).
ALTER TABLE api_idempotency ADD COLUMN fingerprint bytea;
