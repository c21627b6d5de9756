SET lock_timeout = '5s';
-- The fleet's key set (issue 18): every `pii.key` a process started with, newest last. A process
-- whose `pii.key` is not recorded yet while the newest recorded key is one of its
-- `pii.previous_keys` starts a rotation and records its key as the newest; a process whose keys
-- do not include the newest recorded key is stale and takes no work (docs/operations.md,
-- "Rotating pii.key").
--
-- Additive only: the previous release (56dcb3c) reads `pii_key_check`, which keeps meaning
-- "the key every stored value is under" and changes only when `rekey` completes, so its
-- startup check answers during a rotation as before. A new, empty table: no lock on anything
-- the running fleet uses.
CREATE TABLE IF NOT EXISTS pii_keys (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id      text NOT NULL,
    check_value bytea NOT NULL UNIQUE,
    first_seen  timestamptz NOT NULL DEFAULT now()
);

-- The key in use today is the first entry.
INSERT INTO pii_keys (key_id, check_value, first_seen)
SELECT key_id, check_value, updated_at FROM pii_key_check
ON CONFLICT (check_value) DO NOTHING;
