-- Orders left PENDING_PAYMENT (the caller gave up, the process died between the charge and its
-- record) are settled by the reconciler: it asks payment about the order's charge key and records
-- the answer. An order whose key it had to close (no charge reached payment) ends ABANDONED.
-- payment_attempted_at_ms is when a CreateOrder last started to charge the order: the reconciler
-- leaves an order alone until a grace period after it, so it never closes a key under a live call.
-- The reconciler leases the orders it settles (reconcile_claimed_by, reconcile_claimed_until_ms)
-- like the relay leases outbox rows, so replicas settle each order once.
-- SQLite cannot change a CHECK constraint in place, hence the copy.
CREATE TABLE orders_v2 (
    seq                        INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id                   TEXT NOT NULL UNIQUE,
    request_id                 TEXT NOT NULL UNIQUE,
    request_fingerprint        TEXT NOT NULL,
    customer_email             TEXT NOT NULL,
    customer_phone             TEXT NOT NULL,
    items_json                 TEXT NOT NULL,
    currency_code              TEXT NOT NULL,
    total_minor_units          INTEGER NOT NULL,
    status                     TEXT NOT NULL
        CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'ABANDONED')),
    payment_id                 TEXT NOT NULL DEFAULT '',
    failure_reason             TEXT NOT NULL DEFAULT '',
    event_id                   TEXT NOT NULL DEFAULT '',
    event_published_at_ms      INTEGER,
    created_at_ms              INTEGER NOT NULL,
    updated_at_ms              INTEGER NOT NULL,
    payment_attempted_at_ms    INTEGER NOT NULL DEFAULT 0,
    reconcile_claimed_by       TEXT,
    reconcile_claimed_until_ms INTEGER
);
INSERT INTO orders_v2 (seq, order_id, request_id, request_fingerprint, customer_email,
                       customer_phone, items_json, currency_code, total_minor_units, status,
                       payment_id, failure_reason, event_id, event_published_at_ms, created_at_ms,
                       updated_at_ms, payment_attempted_at_ms)
SELECT seq, order_id, request_id, request_fingerprint, customer_email, customer_phone, items_json,
       currency_code, total_minor_units, status, payment_id, failure_reason, event_id,
       event_published_at_ms, created_at_ms, updated_at_ms, updated_at_ms
FROM orders;
DROP TABLE orders;
ALTER TABLE orders_v2 RENAME TO orders;
-- The reconciler's query: pending orders, longest untouched first.
CREATE INDEX orders_pending ON orders (payment_attempted_at_ms) WHERE status = 'PENDING_PAYMENT';
