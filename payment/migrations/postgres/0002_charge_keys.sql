-- An idempotency key can be closed without a charge (CloseChargeKey): a row with status CLOSED
-- holds the key, so the unique constraint that makes a retried Charge find the first one also makes
-- every Charge after the close find the closed key instead of charging. Closing and charging race on
-- that one constraint, so exactly one of them holds the key. `seq` orders payments for ListPayments.
-- (PostgreSQL version of migrations/sqlite/0002_charge_keys.sql, which has to rebuild the table;
-- PostgreSQL changes it in place.)
ALTER TABLE payments DROP CONSTRAINT payments_pkey;
ALTER TABLE payments ADD CONSTRAINT payments_payment_id_key UNIQUE (payment_id);
ALTER TABLE payments ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY;
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
-- SUCCEEDED and DECLINED are payments; CLOSED is a key closed with no charge (no amount).
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('SUCCEEDED', 'DECLINED', 'CLOSED'));
ALTER TABLE payments ADD COLUMN close_reason TEXT NOT NULL DEFAULT '';
