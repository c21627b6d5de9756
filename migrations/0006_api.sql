-- The programme API (abha-bulk serve): API keys per programme, and the answers of uploads
-- sent with an Idempotency-Key.

-- A key is shown once as abk_<prefix>_<secret>; only the prefix (to find it) and the SHA-256
-- of the secret are kept. A key sees and acts on batches of its benefits only.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    prefix        text NOT NULL UNIQUE,
    secret_sha256 bytea NOT NULL,
    name          text,
    benefits      text[] NOT NULL,
    -- submit, read, reveal
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz
);

-- The first answer to an upload with an Idempotency-Key; a retried upload gets it again.
-- A row without a status is an upload still running.
CREATE TABLE api_idempotency (
    key_id          uuid NOT NULL REFERENCES api_keys (id),
    idempotency_key text NOT NULL,
    status          integer,
    body            jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, idempotency_key)
);
