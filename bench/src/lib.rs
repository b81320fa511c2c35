//! Measuring ordermesh: a load generator that drives CreateOrder against any order endpoint
//! (`load`, the `ordermesh-load` binary), and benchmarks that put each hop beside its raw baseline
//! in the same run (`compare`, the `ordermesh-bench` binary). The ledger audit of the money promise
//! (`audit`, shared with the mesh tests) and the fault campaign that drives it (`campaign`,
//! `ordermesh-load --faults random`). The notifier's process-churn campaign (`churn`, the
//! `ordermesh-churn` binary and `notifier/tests/churn.rs`).
//!
//! Our machines are shared and noisy, so an absolute time alone means little: every benchmark runs
//! ours and the raw baseline alternately, several rounds, and reports the median ratio and its
//! spread. Nothing here asserts a time; CI runs a tiny smoke version that checks the harness works.
#![forbid(unsafe_code)]

pub mod audit;
pub mod campaign;
pub mod churn;
pub mod compare;
pub mod cost;
pub mod echo;
pub mod events;
pub mod grpc;
pub mod kafka;
pub mod load;
pub mod rss;

/// How big the benchmarks are: full runs for figures, a smoke run for CI (checks the harness
/// works, in seconds).
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Rounds of ours-then-raw (alternating which goes first).
    pub rounds: usize,
    /// Calls or messages per round.
    pub messages: usize,
    pub smoke: bool,
}
