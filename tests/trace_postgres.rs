//! `trace.rs` again, with every service on PostgreSQL instead of SQLite: the same test, compiled into
//! a second binary (the mesh helpers tell them apart by name). Where PostgreSQL is not installed and
//! CI is not set, it skips.

#[path = "trace.rs"]
mod trace;
