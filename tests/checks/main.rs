//! Checks that start no service: the deployment files and docs read against the code, and the
//! manifests against the sources. A binary of their own, so they run once (not again in the
//! PostgreSQL suite) and in seconds.

// Test fixtures unwrap what they just built; a panic there is a broken fixture, reported as such.
#![allow(clippy::unwrap_used)]

mod compose;
mod dependencies;
mod docs;
