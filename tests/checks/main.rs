//! Checks that start no service: the deployment files and docs (the AsyncAPI document too) read
//! against the code, the manifests against the sources, the protos against the API as released, and
//! the events earlier versions published against today's codec. A binary of their own, so they run once (not again in the
//! PostgreSQL suite) and in seconds.

// Test fixtures unwrap what they just built; a panic there is a broken fixture, reported as such.
#![allow(clippy::unwrap_used)]

mod alerts;
mod api_schema;
mod asyncapi;
mod compose;
mod dependencies;
mod docs;
mod event_fixtures;
mod tool_run;
