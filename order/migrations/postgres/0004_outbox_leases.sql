-- Several relays (one per order replica, on PostgreSQL) share the outbox. A relay leases the rows it
-- is about to publish: claimed_until_ms is when the lease ends, claimed_by which relay holds it. A
-- row under a live lease is left to its holder, so an event is published once in the normal case;
-- a relay that dies mid-round leaves its rows to be taken again when the lease ends.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_until_ms BIGINT;
-- An order's later events wait for its earlier ones (per-order order across relays): the relay
-- looks up pending rows of the same order.
CREATE INDEX outbox_pending_by_order ON outbox (order_id, seq) WHERE published_at_ms IS NULL;
