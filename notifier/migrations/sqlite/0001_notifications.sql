-- One row per (event, channel): the unique key is what makes a redelivered event a no-op.
CREATE TABLE notifications (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id  TEXT NOT NULL UNIQUE,
    event_id         TEXT NOT NULL,
    order_id         TEXT NOT NULL,
    channel          TEXT NOT NULL CHECK (channel IN ('EMAIL', 'SMS')),
    recipient        TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at_ms    INTEGER NOT NULL,
    sent_at_ms       INTEGER,
    source_topic     TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    INTEGER NOT NULL,
    UNIQUE (event_id, channel)
);
CREATE INDEX notifications_order_id ON notifications (order_id);
