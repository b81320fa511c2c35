//! End-to-end tests of the mesh: real gRPC over TCP, a real Kafka-protocol broker, real SQLite files.
//! One test binary (faster to build and link than one per file), one module per concern.

// Helpers are `pub` for the sibling modules; nothing outside this binary can reach them anyway.
#![allow(unreachable_pub)]
// Test fixtures unwrap what they just built; a panic there is a broken fixture, reported as such.
#![allow(clippy::unwrap_used)]

mod helpers;

mod auth;
mod black_box;
mod campaign;
mod delivery;
mod docs;
mod failures;
mod happy_path;
mod idempotency;
mod kafka_security;
mod ledger;
mod limits;
mod metrics;
mod notifier_recovery;
mod outbox;
mod poison;
mod replay;
mod replicas;
mod servers;
mod settlement;
mod sync_path;
mod tls;
mod validation;
