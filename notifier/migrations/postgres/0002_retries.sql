-- Failed sends are retried from here, not from Kafka: the row keeps the message until it is sent or
-- parked, so the consumer stores the offset and moves on (the partition never waits for a mail
-- server). (PostgreSQL version of migrations/sqlite/0002_retries.sql, which has to rebuild the table
-- to change its CHECK; PostgreSQL changes it in place.)
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
-- PENDING: first send under way; RETRYING: waiting for next_attempt_at_ms; SENT; FAILED: parked on
-- the dead-letter topic.
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('PENDING', 'RETRYING', 'SENT', 'FAILED'));
ALTER TABLE notifications ADD COLUMN last_error TEXT;
ALTER TABLE notifications ADD COLUMN first_failure_at_ms BIGINT;
ALTER TABLE notifications ADD COLUMN next_attempt_at_ms BIGINT;
-- The Kafka message as read (key, value, headers as JSON), kept while it may still have to be sent
-- or parked; cleared once it is done.
ALTER TABLE notifications ADD COLUMN message_key BYTEA;
ALTER TABLE notifications ADD COLUMN message_payload BYTEA;
ALTER TABLE notifications ADD COLUMN message_headers TEXT;
-- What the retry loop asks for: due retries of a channel, soonest first.
CREATE INDEX notifications_due ON notifications (channel, next_attempt_at_ms) WHERE status = 'RETRYING';
