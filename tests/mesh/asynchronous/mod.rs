//! The asynchronous hop, order to Kafka to the notifiers: the outbox, delivery to real servers,
//! recovery after stops, kills and rebalances, poison messages and dead-letter replay.

// The suite's shared helpers, reached from each test module as `super::support`.
use super::support;

mod cancellation;
mod delivery;
mod happy_path;
mod notifier_recovery;
mod outbox;
mod poison;
mod poll_loop;
mod replay;
