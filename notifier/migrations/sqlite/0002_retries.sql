-- Failed sends are retried from here, not from Kafka: the row keeps the message until it is sent or
-- parked, so the consumer stores the offset and moves on (the partition never waits for a mail
-- server). SQLite cannot change a CHECK constraint in place, hence the copy.
CREATE TABLE notifications_v2 (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id     TEXT NOT NULL UNIQUE,
    event_id            TEXT NOT NULL,
    order_id            TEXT NOT NULL,
    channel             TEXT NOT NULL CHECK (channel IN ('EMAIL', 'SMS')),
    recipient           TEXT NOT NULL,
    -- PENDING: first send under way; RETRYING: waiting for next_attempt_at_ms; SENT; FAILED: parked
    -- on the dead-letter topic.
    status              TEXT NOT NULL CHECK (status IN ('PENDING', 'RETRYING', 'SENT', 'FAILED')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    created_at_ms       INTEGER NOT NULL,
    sent_at_ms          INTEGER,
    source_topic        TEXT NOT NULL,
    source_partition    INTEGER NOT NULL,
    source_offset       INTEGER NOT NULL,
    last_error          TEXT,
    first_failure_at_ms INTEGER,
    next_attempt_at_ms  INTEGER,
    -- The Kafka message as read (key, value, headers as JSON), kept while it may still have to be
    -- sent or parked; cleared once it is done.
    message_key         BLOB,
    message_payload     BLOB,
    message_headers     TEXT,
    UNIQUE (event_id, channel)
);
INSERT INTO notifications_v2 (seq, notification_id, event_id, order_id, channel, recipient, status,
        attempts, created_at_ms, sent_at_ms, source_topic, source_partition, source_offset)
    SELECT seq, notification_id, event_id, order_id, channel, recipient, status, attempts,
        created_at_ms, sent_at_ms, source_topic, source_partition, source_offset
    FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_v2 RENAME TO notifications;
CREATE INDEX notifications_order_id ON notifications (order_id);
-- What the retry loop asks for: due retries of a channel, soonest first.
CREATE INDEX notifications_due ON notifications (channel, next_attempt_at_ms) WHERE status = 'RETRYING';
