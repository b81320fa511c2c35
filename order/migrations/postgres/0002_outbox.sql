-- The transactional outbox: an event row is written in the same transaction that marks its order
-- PAID, so a paid order always has its event stored, whatever happens to the broker or the process
-- afterwards. The relay publishes rows in `seq` order and marks them published.
-- (PostgreSQL version of migrations/sqlite/0002_outbox.sql.)
CREATE TABLE outbox (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    -- The Kafka message value: OrderPlaced in the proto3 JSON mapping.
    payload         BYTEA NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    published_at_ms BIGINT
);
-- The relay's query: pending rows, oldest first.
CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at_ms IS NULL;
