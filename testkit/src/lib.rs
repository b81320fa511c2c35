//! Test support shared by the ordermesh suites: the Kafka-protocol broker a test runs against (the
//! embedded mock cluster, or `tansu`, an independent broker nobody here wrote), service binaries
//! run as real processes so a test can SIGKILL them, a PostgreSQL server of a test's own, the
//! servers the notifier delivers to, and the waits they need.
//!
//! Tools from outside the Rust toolchain are found on PATH or in `~/.cargo/bin` (tansu, kcat, ...)
//! or, for PostgreSQL, under `/usr/lib/postgresql`. Without them a local run says so and skips;
//! under CI=true (where `.ci/run` installs them) a missing tool fails.
//!
//! One concept per module, each depending only on those above it:
//!
//! - `tools`: finding an external tool, or skipping (locally) / failing (in CI) without it.
//! - `addr`: a free loopback address to give a server process.
//! - `event_fixtures`: the events as earlier versions published them, for compatibility tests.
//! - `wait`: the one bound on asynchronous waits ([`EVENTUALLY`]), the polling loop, the gRPC
//!   readiness probe.
//! - `process`: a child process a test can kill or stop, with its log.
//! - `tansu`: the tansu broker as such a process, stopped and started with its storage.
//! - `broker`: the broker a test runs against, embedded or tansu, behind one type.
//! - `tls_terminator`: TLS in front of a plaintext broker.
//! - [`postgres`]: a PostgreSQL server of a test's own.
//! - `backends`: the two database backends, where a test's services keep their data on each, and
//!   [`on_both_backends`], the one way a test runs on both.
//! - `smtp`, `sms_gateway`: the servers the notifier delivers to (aiosmtpd into a Maildir, and a
//!   wiremock SMS gateway), each recording every delivery with its identity and time.
//! - `dashboards`: the Grafana dashboards' panels and their queries, as files.
//! - `prometheus`: a real Prometheus scraping a test's services, and its HTTP API.
//!
//! The modules are private and everything is re-exported here, so a test names one path,
//! `ordermesh_testkit::X` (only `postgres` is public, for its template helpers).
#![allow(clippy::unwrap_used)]

mod addr;
mod backends;
mod broker;
mod dashboards;
mod event_fixtures;
pub mod postgres;
mod process;
mod prometheus;
mod sms_gateway;
mod smtp;
mod tansu;
mod tls_terminator;
mod tools;
mod wait;

pub use addr::unused_addr;
pub use backends::{Backend, Databases, on_both_backends, unit_database};
pub use broker::Broker;
pub use dashboards::{DASHBOARDS_DIR, Dashboard, Panel, dashboards};
pub use event_fixtures::{EventFixture, event_fixtures, event_fixtures_dir};
pub use postgres::Postgres;
pub use process::Process;
pub use prometheus::{Alert, PROMETHEUS_INTERVAL, Prometheus, Sample};
pub use sms_gateway::{SMS_TOKEN, Sms, SmsGateway};
pub use smtp::{Email, SmtpServer, read_maildir, smtp_available};
pub use tansu::Tansu;
pub use tls_terminator::TlsTerminator;
pub use tools::tool;
pub use wait::{EVENTUALLY, eventually, eventually_sync, is_serving};
