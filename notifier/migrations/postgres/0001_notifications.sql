-- One row per (event, channel): the unique key is what makes a redelivered event a no-op, whichever
-- replica reads it. (PostgreSQL version of migrations/sqlite/0001_notifications.sql.)
CREATE TABLE notifications (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id  TEXT NOT NULL UNIQUE,
    event_id         TEXT NOT NULL,
    order_id         TEXT NOT NULL,
    channel          TEXT NOT NULL CHECK (channel IN ('EMAIL', 'SMS')),
    recipient        TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at_ms    BIGINT NOT NULL,
    sent_at_ms       BIGINT,
    source_topic     TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    BIGINT NOT NULL,
    UNIQUE (event_id, channel)
);
CREATE INDEX notifications_order_id ON notifications (order_id);
