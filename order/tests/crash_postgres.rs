//! `crash.rs` again, with the order service on PostgreSQL instead of SQLite: the same tests, compiled
//! into a second binary (`ordermesh_testkit::on_postgres` tells them apart by name), each with a
//! PostgreSQL server of its own. Where PostgreSQL is not installed and CI is not set, they skip.

#[path = "crash.rs"]
mod crash;
