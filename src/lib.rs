//! The ordermesh API contract, what a client and a server share: the generated gRPC code, its
//! descriptor set ([`proto`]) and its codec ([`codec`]), what a valid CreateOrder is ([`validate`]) and how a refusal reads
//! ([`bad_request`]), the OrderPlaced event's codec and CloudEvents attributes ([`events`]), money
//! ([`money`]), timestamps ([`timestamp`]), page tokens ([`paging`]) and the metadata names both
//! sides of a call read ([`headers`]).
//!
//! Lean on purpose: no Kafka client, database or server machinery. The server runtime is
//! `ordermesh-platform`, Kafka is `ordermesh-kafka`, and the services are `ordermesh-order`,
//! `ordermesh-payment` and `ordermesh-notifier`.
#![forbid(unsafe_code)]

pub mod bad_request;
pub mod codec;
pub mod events;
pub mod headers;
pub mod money;
pub mod paging;
pub mod proto;
pub mod timestamp;
pub mod validate;
