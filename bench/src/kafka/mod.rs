//! The Kafka hops beside raw rdkafka with the same settings: publishing OrderPlaced (the order
//! service's `EventPublisher`), consuming it (the notifier's email consumer, database record
//! included), and the two end to end (accepted -> notification handled).
//!
//! Every benchmark starts its own embedded broker (librdkafka's mock cluster, in process) and uses
//! fresh topics and consumer groups per round and per side, so no round reads what another wrote.
//! Payloads are real OrderPlaced events, encoded as the order service encodes them, with their
//! CloudEvents headers; they are built before any clock starts.
//!
//! Two things about the embedded broker shape what is timed, for both sides alike:
//! - a consumer group's first join waits `group.initial.rebalance.delay.ms`, 3 s on the mock
//!   cluster, and the safe rdkafka API cannot lower it. Consumer clocks therefore start once the
//!   consumer has handled its first message, never at start-up;
//! - the mock (and tansu 0.6 too) holds a fetch that finds no data for the whole
//!   `fetch.wait.max.ms` (500 ms by default) instead of answering as soon as data arrives, as
//!   Kafka does. That does not touch the throughput figures (the topics are full or being
//!   filled), but it would be the whole latency of a lone event; see [`event_latency()`].
//!
//! Layout: one module per benchmark, and one per thing they share, so that what is timed and
//! what it is compared with can be read apart:
//! - the benchmarks: [`publish()`] (4), [`consume()`] (5) and [`event_latency()`] (6);
//! - the two sides: `ours` (the services' own publisher and a running notifier) and `raw` (plain
//!   rdkafka clients with exactly their settings), plus `kcat`, the second baseline of `consume`;
//! - what every benchmark stands on: `setup` (partitions, bounds, fresh names, run size) and
//!   `payload` (the events both sides send).
//!
//! The unit tests cover the helpers; each benchmark's smoke run is `bench/tests/smoke.rs`,
//! through the binary.

mod consume;
mod event_latency;
mod kcat;
mod ours;
mod payload;
mod publish;
mod raw;
mod setup;

pub(crate) use self::raw::consume_cpu_us;
pub use self::{consume::consume, event_latency::event_latency, publish::publish};
