//! What every service binary does the same way, so each `main.rs` only says what differs.

use std::{future::Future, net::SocketAddr};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::telemetry::{self, LogFormat};

/// A service's settings from their defaults and the environment alone (no command line): how the
/// runner configures the services it hosts, so they read the same variables as their binaries.
pub fn config_from_env<T>(name: &'static str) -> Result<T, clap::Error>
where
    T: clap::Args + clap::FromArgMatches,
{
    let command = T::augment_args(clap::Command::new(name));
    T::from_arg_matches(&command.try_get_matches_from([name])?)
}

/// The body of a service's `main`: install logging, bind `listen_addr` (naming `setting` if that
/// fails), and hand the listener to `serve`, which runs until SIGINT/SIGTERM.
pub async fn main<F, E>(
    listen_addr: SocketAddr,
    setting: &str,
    log_format: LogFormat,
    serve: impl FnOnce(TcpListener) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    telemetry::init(log_format)?;
    let listener = TcpListener::bind(listen_addr)
        .await
        .with_context(|| format!("cannot listen on {listen_addr} ({setting})"))?;
    serve(listener).await?;
    Ok(())
}
