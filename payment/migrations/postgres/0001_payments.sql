-- One row per charge. The idempotency key is unique, so a retried Charge finds the first result
-- instead of charging again, however many copies race, on however many replicas.
-- (PostgreSQL version of migrations/sqlite/0001_payments.sql.)
CREATE TABLE payments (
    payment_id          TEXT PRIMARY KEY NOT NULL,
    idempotency_key     TEXT NOT NULL UNIQUE,
    -- SHA-256 of the request fields, to refuse a reused key carrying a different request.
    request_fingerprint TEXT NOT NULL,
    order_id            TEXT NOT NULL,
    currency_code       TEXT NOT NULL,
    minor_units         BIGINT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('SUCCEEDED', 'DECLINED')),
    decline_reason      TEXT NOT NULL DEFAULT '',
    created_at_ms       BIGINT NOT NULL
);
CREATE INDEX payments_order_id ON payments (order_id);
