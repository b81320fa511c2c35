-- Refunds: the whole amount of a SUCCEEDED payment, given back once. A refund has an idempotency
-- key of its own (unique, so a retried Refund finds the first one), and a payment has at most one
-- refund (payment_id unique, so of two refunds racing under different keys exactly one is
-- stored). The refund insert and the payment's change from SUCCEEDED to REFUNDED are one
-- transaction, so a payment shows REFUNDED exactly when a refund row holds it.
-- (PostgreSQL version of migrations/sqlite/0003_refunds.sql, which has to rebuild the payments
-- table; PostgreSQL changes it in place.)
CREATE TABLE refunds (
    refund_id           TEXT PRIMARY KEY NOT NULL,
    idempotency_key     TEXT NOT NULL UNIQUE,
    -- SHA-256 of the request fields, to refuse a reused key carrying a different request.
    request_fingerprint TEXT NOT NULL,
    payment_id          TEXT NOT NULL UNIQUE,
    order_id            TEXT NOT NULL,
    currency_code       TEXT NOT NULL,
    minor_units         BIGINT NOT NULL,
    reason              TEXT NOT NULL DEFAULT '',
    created_at_ms       BIGINT NOT NULL
);
-- A payment can now be REFUNDED, with when and by which refund.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
-- SUCCEEDED, DECLINED and REFUNDED are payments; CLOSED is a key closed with no charge.
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('SUCCEEDED', 'DECLINED', 'CLOSED', 'REFUNDED'));
-- When the payment was refunded, and by which refund: set exactly when status is REFUNDED.
ALTER TABLE payments ADD COLUMN refunded_at_ms BIGINT;
ALTER TABLE payments ADD COLUMN refund_id TEXT NOT NULL DEFAULT '';
ALTER TABLE payments ADD CONSTRAINT payments_refunded_check
    CHECK ((status = 'REFUNDED') = (refunded_at_ms IS NOT NULL));
