//! The synchronous hop, order to payment, and the money promise: deadlines, retries, fault
//! injection, idempotency, settling every charge, the ledger campaign, and bad or oversized input.

// The suite's shared helpers, reached from each test module as `super::support`.
use super::support;

mod campaign;
mod cancel;
mod failures;
mod idempotency;
mod limits;
mod settlement;
mod sync_path;
mod validation;
