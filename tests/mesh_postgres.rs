//! The mesh suite (`tests/mesh/`) again, with every service on PostgreSQL instead of SQLite: the
//! same tests, compiled into a second binary whose helpers give each test a PostgreSQL server of its
//! own (see `Databases` in `tests/mesh/helpers.rs`). Where PostgreSQL is not installed and CI is not
//! set, its tests skip; `.ci/run` installs it.

#[path = "mesh/main.rs"]
mod mesh;
