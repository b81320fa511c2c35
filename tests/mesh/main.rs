//! End-to-end tests of the mesh: real gRPC over TCP, a real Kafka-protocol broker, real SQLite files.
//! One test binary (faster to build and link than one per file), a directory per area (the
//! synchronous hop, the asynchronous hop, security, operations) with a module per concern, and the
//! helpers in `support/`.

// Helpers are `pub` for the sibling modules; nothing outside this binary can reach them anyway.
#![allow(unreachable_pub)]
// Test fixtures unwrap what they just built; a panic there is a broken fixture, reported as such.
#![allow(clippy::unwrap_used)]

// Shared helpers first, then one module per area, each a directory of concerns.
mod support;

mod asynchronous;
mod operations;
mod security;
mod synchronous;
