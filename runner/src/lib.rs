//! The runner as a library: its command line and the tools it offers besides running the mesh,
//! which the tests use too.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config_reference;
pub mod dev_certs;
pub mod tokens;
