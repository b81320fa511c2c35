//! The synchronous benchmarks, each beside its raw baseline:
//!
//! 1. CreateOrder latency at low load (open loop) vs the sum of its parts measured in the same
//!    round: two raw tonic unary hops, one raw rdkafka produce-with-ack, one durable SQLite commit.
//! 2. CreateOrder saturation throughput and CPU per order vs a raw tonic echo server under the same
//!    generator.
//! 3. The payment client's middleware stack (deadline, retry, breaker, telemetry layer; no tracing
//!    subscriber installed) vs the raw generated tonic client, both against the same stub payment
//!    server that answers at once, so only the client side differs.
//!
//! The raw tonic server is the standard health service alone (`grpc.health.v1.Health/Check`): a
//! real tonic unary call with a tiny message and no layers. Everything runs in this process, on
//! loopback, against the embedded broker; CPU time is this process's (its CPU clock), so it
//! covers the generator, the services and the broker alike on both sides.
//!
//! Layout: one module per benchmark ([`create_order_latency()`], [`saturation()`],
//! [`payment_client_stack`]), and one per thing they share: `servers` (what is called: ours, the
//! raw echo, the stub payment server, each on port 0 in this process), `drive` (the load loops
//! that call them, also used by [`crate::rss`]), `parts` (the raw parts CreateOrder is compared
//! with) and `cpu` (this process's CPU time).

mod cpu;
mod create_order_latency;
mod drive;
pub(crate) mod parts;
mod payment_client;
mod saturation;
pub(crate) mod servers;

pub(crate) use self::drive::{create_orders, echo_calls, no_errors};
pub use self::{
    cpu::cpu_seconds, create_order_latency::create_order_latency,
    payment_client::payment_client_stack, saturation::saturation,
};
