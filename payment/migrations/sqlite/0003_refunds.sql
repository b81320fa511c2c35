-- Refunds: the whole amount of a SUCCEEDED payment, given back once. A refund has an idempotency
-- key of its own (unique, so a retried Refund finds the first one), and a payment has at most one
-- refund (payment_id unique, so of two refunds racing under different keys exactly one is
-- stored). The refund insert and the payment's change from SUCCEEDED to REFUNDED are one
-- transaction, so a payment shows REFUNDED exactly when a refund row holds it.
CREATE TABLE refunds (
    refund_id           TEXT PRIMARY KEY NOT NULL,
    idempotency_key     TEXT NOT NULL UNIQUE,
    -- SHA-256 of the request fields, to refuse a reused key carrying a different request.
    request_fingerprint TEXT NOT NULL,
    payment_id          TEXT NOT NULL UNIQUE,
    order_id            TEXT NOT NULL,
    currency_code       TEXT NOT NULL,
    minor_units         INTEGER NOT NULL,
    reason              TEXT NOT NULL DEFAULT '',
    created_at_ms       INTEGER NOT NULL
);
-- A payment can now be REFUNDED, with when and by which refund. SQLite cannot change a CHECK
-- constraint in place, hence the copy (seq is copied too: ListPayments' page tokens stay valid).
CREATE TABLE payments_v3 (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id          TEXT NOT NULL UNIQUE,
    idempotency_key     TEXT NOT NULL UNIQUE,
    -- SHA-256 of the request fields, to refuse a reused key carrying a different request; empty for
    -- a closed key.
    request_fingerprint TEXT NOT NULL,
    order_id            TEXT NOT NULL,
    currency_code       TEXT NOT NULL,
    minor_units         INTEGER NOT NULL,
    -- SUCCEEDED, DECLINED and REFUNDED are payments; CLOSED is a key closed with no charge.
    status              TEXT NOT NULL
        CHECK (status IN ('SUCCEEDED', 'DECLINED', 'CLOSED', 'REFUNDED')),
    decline_reason      TEXT NOT NULL DEFAULT '',
    close_reason        TEXT NOT NULL DEFAULT '',
    created_at_ms       INTEGER NOT NULL,
    -- When the payment was refunded, and by which refund: set exactly when status is REFUNDED.
    refunded_at_ms      INTEGER,
    refund_id           TEXT NOT NULL DEFAULT '',
    CHECK ((status = 'REFUNDED') = (refunded_at_ms IS NOT NULL))
);
INSERT INTO payments_v3 (seq, payment_id, idempotency_key, request_fingerprint, order_id,
                         currency_code, minor_units, status, decline_reason, close_reason,
                         created_at_ms)
SELECT seq, payment_id, idempotency_key, request_fingerprint, order_id, currency_code, minor_units,
       status, decline_reason, close_reason, created_at_ms
FROM payments ORDER BY seq;
DROP TABLE payments;
ALTER TABLE payments_v3 RENAME TO payments;
CREATE INDEX payments_order_id ON payments (order_id);
