//! What operators and users see: metrics, replicas on one database, the mesh driven from outside
//! with grpcurl and kcat, and every command the docs show.

// The suite's shared helpers, reached from each test module as `super::support`.
use super::support;

mod black_box;
mod dashboards;
mod docs;
mod metrics;
mod replicas;
