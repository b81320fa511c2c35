-- A paid order can be cancelled (CancelOrder): PAID -> CANCELLING (stored before payment is asked to
-- refund, so a cancel cut short is finished later rather than lost) -> CANCELLED once payment has
-- refunded the charge, with an OrderCancelled event in the outbox in the same transaction.
-- cancel_requested_at_ms is when the cancel was first asked for (by the database's clock: the
-- reconciler finishes CANCELLING orders left past a grace period, as it settles pending ones).
-- The outbox now carries more than one event type: event_type is each row's ce_type; the rows
-- written before it are OrderPlaced.
-- (PostgreSQL version of migrations/sqlite/0006_cancellation.sql, which has to rebuild the table
-- to change its CHECK; PostgreSQL changes it in place.)
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'ABANDONED', 'CANCELLING',
                      'CANCELLED'));
ALTER TABLE orders ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN cancel_requested_at_ms BIGINT;
ALTER TABLE orders ADD COLUMN refund_id TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN cancel_event_id TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN cancelled_at_ms BIGINT;
CREATE INDEX orders_cancelling ON orders (cancel_requested_at_ms) WHERE status = 'CANCELLING';
ALTER TABLE outbox ADD COLUMN event_type TEXT NOT NULL DEFAULT 'ordermesh.events.v1.OrderPlaced';
