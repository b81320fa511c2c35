//! The runner as a library: the tools it offers besides running the mesh, which the tests use too.
#![forbid(unsafe_code)]

pub mod dev_certs;
