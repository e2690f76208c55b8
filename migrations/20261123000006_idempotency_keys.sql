-- Idempotency keys: the first response to a command sent with an `Idempotency-Key`, stored in
-- the transaction of the command's events. A repeat of the same request gets it again.
CREATE TABLE idempotency_keys
(
    key         text PRIMARY KEY,
    -- digest of the request (method, path, body): the same key with another request is refused
    fingerprint text        NOT NULL,
    -- {status, headers, body} of the first response
    response    jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- after this the key is forgotten and may be used again
    expires_at  timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
