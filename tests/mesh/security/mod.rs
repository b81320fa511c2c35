//! Who may call what: TLS and mutual TLS, bearer tokens, and Kafka with TLS and SASL.

// The suite's shared helpers, reached from each test module as `super::support`.
use super::support;

mod auth;
mod kafka_security;
mod tls;
