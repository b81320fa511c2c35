-- An idempotency key can be closed without a charge (CloseChargeKey): a row with status CLOSED
-- holds the key, so the unique constraint that makes a retried Charge find the first one also makes
-- every Charge after the close find the closed key instead of charging. Closing and charging race on
-- that one constraint, so exactly one of them holds the key. `seq` orders payments for ListPayments.
-- SQLite cannot change a CHECK constraint or the primary key in place, hence the copy.
CREATE TABLE payments_v2 (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id          TEXT NOT NULL UNIQUE,
    idempotency_key     TEXT NOT NULL UNIQUE,
    -- SHA-256 of the request fields, to refuse a reused key carrying a different request; empty for
    -- a closed key.
    request_fingerprint TEXT NOT NULL,
    order_id            TEXT NOT NULL,
    currency_code       TEXT NOT NULL,
    minor_units         INTEGER NOT NULL,
    -- SUCCEEDED and DECLINED are payments; CLOSED is a key closed with no charge (no amount).
    status              TEXT NOT NULL CHECK (status IN ('SUCCEEDED', 'DECLINED', 'CLOSED')),
    decline_reason      TEXT NOT NULL DEFAULT '',
    close_reason        TEXT NOT NULL DEFAULT '',
    created_at_ms       INTEGER NOT NULL
);
INSERT INTO payments_v2 (payment_id, idempotency_key, request_fingerprint, order_id, currency_code,
                         minor_units, status, decline_reason, created_at_ms)
SELECT payment_id, idempotency_key, request_fingerprint, order_id, currency_code, minor_units,
       status, decline_reason, created_at_ms
FROM payments ORDER BY created_at_ms, payment_id;
DROP TABLE payments;
ALTER TABLE payments_v2 RENAME TO payments;
CREATE INDEX payments_order_id ON payments (order_id);
