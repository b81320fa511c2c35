//! `validation_props.rs` again, with order and payment on PostgreSQL instead of SQLite: the same
//! tests, compiled into a second binary (`ordermesh_testkit::on_postgres` tells them apart by name).
//! Where PostgreSQL is not installed and CI is not set, the gRPC test skips.

#[path = "validation_props.rs"]
mod validation_props;
