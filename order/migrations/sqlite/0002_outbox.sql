-- The transactional outbox: an event row is written in the same transaction that marks its order
-- PAID, so a paid order always has its event stored, whatever happens to the broker or the process
-- afterwards. The relay publishes rows in `seq` order and marks them published.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    -- The Kafka message value: OrderPlaced in the proto3 JSON mapping.
    payload         BLOB NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    published_at_ms INTEGER
);
-- The relay's query: pending rows, oldest first.
CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at_ms IS NULL;
