//! What every service binary does the same way, so each `main.rs` only says what differs: settings
//! from the environment, logging and tracing, binding, and serving until a signal.

use std::future::Future;

use crate::{
    listeners::{Address, Listeners, bind},
    telemetry::{self, LogFormat},
};

/// A service's settings from their defaults and the environment alone (no command line): how the
/// runner configures the services it hosts, so they read the same variables as their binaries.
pub fn config_from_env<T>(name: &'static str) -> Result<T, clap::Error>
where
    T: clap::Args + clap::FromArgMatches,
{
    let command = T::augment_args(clap::Command::new(name));
    T::from_arg_matches(&command.try_get_matches_from([name])?)
}

/// The body of a service's `main`: install logging and tracing for `service`, bind the gRPC and
/// admin addresses (naming the setting if that fails), and hand the listeners to `serve`, which
/// runs until SIGINT/SIGTERM; then flush the spans not yet exported.
pub async fn main<F, E>(
    service: &str,
    grpc: Address<'_>,
    admin: Address<'_>,
    log_format: LogFormat,
    serve: impl FnOnce(Listeners) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let telemetry = telemetry::init(log_format, service)?;
    let listeners = Listeners {
        grpc: bind(grpc).await?,
        admin: Some(bind(admin).await?),
    };
    let served = serve(listeners).await;
    telemetry.shutdown();
    Ok(served?)
}
