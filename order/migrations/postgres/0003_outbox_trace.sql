-- The W3C trace context (`traceparent`, `tracestate` as a JSON object) of the call that wrote the
-- event: the relay publishes later, from another task, and continues that trace from here. NULL
-- when the call was not traced.
ALTER TABLE outbox ADD COLUMN trace_context TEXT;
