//! The server runtime every ordermesh service shares, written once so each service holds only its
//! domain: how a service starts ([`cli`], [`bootstrap`], [`listeners`], [`healthcheck`]), how it serves gRPC
//! ([`grpc`] with its [`limits`] and the tower layers [`rpc_telemetry`], [`oversize`], [`shed`],
//! [`auth`]), how it is secured ([`tls`], [`auth`]), observed ([`telemetry`], [`metrics`],
//! [`trace_context`], [`admin`]) and stopped ([`shutdown`]), and how it stores ([`db`], with
//! [`unit_of_work`], the one way a store runs its operations on either backend, with
//! [`sqlite_writer`] committing a SQLite file's in groups, [`batch_sql`] giving batch statements
//! few shapes, and [`pii`] keeping personal data out of logs).
//!
//! The API contract (generated code, events, money) is the `ordermesh` crate; Kafka is
//! `ordermesh-kafka`, which the payment service does not link.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod batch_sql;
pub mod bootstrap;
pub mod cli;
pub mod db;
pub mod deadline;
pub mod grpc;
pub mod healthcheck;
pub mod limits;
pub mod listeners;
pub mod metrics;
pub mod oversize;
pub mod pii;
pub mod rpc_telemetry;
pub mod shed;
pub mod shutdown;
pub mod sqlite_writer;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod unit_of_work;
