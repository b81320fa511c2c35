-- Orders left PENDING_PAYMENT (the caller gave up, the process died between the charge and its
-- record) are settled by the reconciler: it asks payment about the order's charge key and records
-- the answer. An order whose key it had to close (no charge reached payment) ends ABANDONED.
-- payment_attempted_at_ms is when a CreateOrder last started to charge the order: the reconciler
-- leaves an order alone until a grace period after it, so it never closes a key under a live call.
-- The reconciler leases the orders it settles (reconcile_claimed_by, reconcile_claimed_until_ms)
-- like the relay leases outbox rows, so replicas settle each order once.
-- (PostgreSQL version of migrations/sqlite/0005_reconciler.sql, which has to rebuild the table to
-- change its CHECK; PostgreSQL changes it in place.)
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED', 'ABANDONED'));
ALTER TABLE orders ADD COLUMN payment_attempted_at_ms BIGINT NOT NULL DEFAULT 0;
UPDATE orders SET payment_attempted_at_ms = updated_at_ms;
ALTER TABLE orders ADD COLUMN reconcile_claimed_by TEXT;
ALTER TABLE orders ADD COLUMN reconcile_claimed_until_ms BIGINT;
-- The reconciler's query: pending orders, longest untouched first.
CREATE INDEX orders_pending ON orders (payment_attempted_at_ms) WHERE status = 'PENDING_PAYMENT';
