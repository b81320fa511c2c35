-- A paid order can be cancelled (CancelOrder): PAID -> CANCELLING (stored before payment is asked to
-- refund, so a cancel cut short is finished later rather than lost) -> CANCELLED once payment has
-- refunded the charge, with an OrderCancelled event in the outbox in the same transaction.
-- cancel_requested_at_ms is when the cancel was first asked for (by the database's clock: the
-- reconciler finishes CANCELLING orders left past a grace period, as it settles pending ones).
-- The outbox now carries more than one event type: event_type is each row's ce_type; the rows
-- written before it are OrderPlaced.
-- SQLite cannot change a CHECK constraint in place, hence the copy.
CREATE TABLE orders_v3 (
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
        CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'ABANDONED', 'CANCELLING',
                          'CANCELLED')),
    payment_id                 TEXT NOT NULL DEFAULT '',
    failure_reason             TEXT NOT NULL DEFAULT '',
    event_id                   TEXT NOT NULL DEFAULT '',
    event_published_at_ms      INTEGER,
    created_at_ms              INTEGER NOT NULL,
    updated_at_ms              INTEGER NOT NULL,
    payment_attempted_at_ms    INTEGER NOT NULL DEFAULT 0,
    reconcile_claimed_by       TEXT,
    reconcile_claimed_until_ms INTEGER,
    cancel_reason              TEXT NOT NULL DEFAULT '',
    cancel_requested_at_ms     INTEGER,
    refund_id                  TEXT NOT NULL DEFAULT '',
    cancel_event_id            TEXT NOT NULL DEFAULT '',
    cancelled_at_ms            INTEGER
);
INSERT INTO orders_v3 (seq, order_id, request_id, request_fingerprint, customer_email,
                       customer_phone, items_json, currency_code, total_minor_units, status,
                       payment_id, failure_reason, event_id, event_published_at_ms, created_at_ms,
                       updated_at_ms, payment_attempted_at_ms, reconcile_claimed_by,
                       reconcile_claimed_until_ms)
SELECT seq, order_id, request_id, request_fingerprint, customer_email, customer_phone, items_json,
       currency_code, total_minor_units, status, payment_id, failure_reason, event_id,
       event_published_at_ms, created_at_ms, updated_at_ms, payment_attempted_at_ms,
       reconcile_claimed_by, reconcile_claimed_until_ms
FROM orders;
DROP TABLE orders;
ALTER TABLE orders_v3 RENAME TO orders;
CREATE INDEX orders_pending ON orders (payment_attempted_at_ms) WHERE status = 'PENDING_PAYMENT';
CREATE INDEX orders_cancelling ON orders (cancel_requested_at_ms) WHERE status = 'CANCELLING';
ALTER TABLE outbox ADD COLUMN event_type TEXT NOT NULL DEFAULT 'ordermesh.events.v1.OrderPlaced';
