-- One row per accepted CreateOrder. request_id is unique, so a retried request finds its order
-- instead of creating a second one, whichever replica it reaches.
-- (PostgreSQL version of migrations/sqlite/0001_orders.sql: same table, PostgreSQL types.)
CREATE TABLE orders (
    -- Insertion order, for stable keyset pagination in ListOrders.
    seq                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id              TEXT NOT NULL UNIQUE,
    request_id            TEXT NOT NULL UNIQUE,
    -- SHA-256 of the request fields, to refuse a reused request_id carrying a different order.
    request_fingerprint   TEXT NOT NULL,
    customer_email        TEXT NOT NULL,
    customer_phone        TEXT NOT NULL,
    -- The line items as JSON: [{"sku", "quantity", "currency_code", "unit_minor_units"}].
    items_json            TEXT NOT NULL,
    currency_code         TEXT NOT NULL,
    total_minor_units     BIGINT NOT NULL,
    status                TEXT NOT NULL
        CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'PAYMENT_FAILED')),
    payment_id            TEXT NOT NULL DEFAULT '',
    failure_reason        TEXT NOT NULL DEFAULT '',
    -- Set in the same statement that marks the order PAID, so a paid order always has exactly one
    -- event id, whichever request publishes it.
    event_id              TEXT NOT NULL DEFAULT '',
    -- When the broker acknowledged the event; NULL while it is still to be published.
    event_published_at_ms BIGINT,
    created_at_ms         BIGINT NOT NULL,
    updated_at_ms         BIGINT NOT NULL
);
