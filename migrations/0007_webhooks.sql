-- Webhooks of the programme API: a key may name an HTTPS URL that is told when one of the
-- batches uploaded with it finishes or is cancelled. Deliveries are an outbox of their own,
-- retried with backoff by the relay's housekeeping.
ALTER TABLE api_keys
    ADD COLUMN webhook_url    text,
    -- AES-256-GCM under pii.key (the signing secret must be kept to sign)
    ADD COLUMN webhook_secret bytea;
ALTER TABLE batches ADD COLUMN api_key_id uuid REFERENCES api_keys (id);

CREATE TABLE webhook_deliveries (
    id           uuid PRIMARY KEY,
    key_id       uuid NOT NULL REFERENCES api_keys (id),
    batch_id     uuid NOT NULL REFERENCES batches (id),
    -- batch.finished, batch.cancelled
    event        text NOT NULL,
    body         jsonb NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    -- HTTP status of the last attempt, or NULL with last_error
    last_status  integer,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (batch_id, event)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE delivered_at IS NULL;
