//! `binary.rs` again, with payment on PostgreSQL instead of SQLite: the same tests, compiled into a
//! second binary (`ordermesh_testkit::on_postgres` tells them apart by name). Where PostgreSQL is
//! not installed and CI is not set, they skip.

#[path = "binary.rs"]
mod binary;
