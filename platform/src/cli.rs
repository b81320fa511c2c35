//! The command line every service binary shares, so each `main.rs` is one call: the service's
//! settings (flags over environment variables over defaults), the log format, and the
//! `healthcheck` subcommand. Settings are checked before anything binds, connects or migrates.

use std::{future::Future, ops::RangeBounds, path::PathBuf, time::Duration};

use clap::{CommandFactory, FromArgMatches, builder::TypedValueParser};

use crate::{
    bootstrap,
    healthcheck::HealthcheckArgs,
    listeners::{Address, Listeners},
    telemetry::LogFormat,
};

/// The parser of a duration setting given in milliseconds within `range`, as every `*_MS` setting
/// is: `#[arg(long = "x-ms", value_name = "MS", value_parser = millis(1..))]`. Out of range is
/// refused naming the setting and the range, before anything starts.
pub fn millis(range: impl RangeBounds<u64>) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(range)
        .map(Duration::from_millis)
}

/// What a service's settings tell the shared command line: its name, where it listens, and whether
/// the settings make sense together.
pub trait ServiceSettings: clap::Args + FromArgMatches {
    /// The binary's name, also the service name in logs, traces and metrics.
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// Why the settings cannot be used.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The gRPC address and the setting it comes from.
    fn listen_addr(&self) -> Address<'static>;
    /// The admin HTTP address (metrics) and the setting it comes from.
    fn admin_addr(&self) -> Address<'static>;
    /// Every rule between settings that clap's per-value parsing cannot see (one setting must
    /// exceed another, a key must be long enough, a pair must be set together), checked before
    /// anything binds, connects or migrates. The error names the setting to change.
    fn check(&self) -> Result<(), Self::Error>;
    /// The certificate and key the health check presents, when the service requires client
    /// certificates (mutual TLS); None otherwise.
    fn healthcheck_identity(&self) -> Option<(PathBuf, PathBuf)> {
        None
    }
}

#[derive(Debug, clap::Parser)]
struct Cli<S: clap::Args, X: clap::Subcommand> {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command<X>>,
    #[command(flatten)]
    settings: S,
}

#[derive(Debug, clap::Subcommand)]
enum Command<X: clap::Subcommand> {
    /// Exits 0 if the service on its listen address answers SERVING to a health check (what a
    /// container health check runs), 1 otherwise.
    Healthcheck(HealthcheckArgs),
    /// The service's own subcommands.
    #[command(flatten)]
    Own(X),
}

/// The subcommands of a service that has none besides `healthcheck`.
#[derive(Debug, clap::Subcommand)]
pub enum NoCommands {}

/// The command line of service `S`'s binary, as `--help` shows it (and as the configuration
/// reference lists it).
pub fn command<S: ServiceSettings, X: clap::Subcommand>() -> clap::Command {
    Cli::<S, X>::command()
        .name(S::NAME)
        .bin_name(S::NAME)
        .about(S::ABOUT)
}

/// The whole `main` of a service binary: parse the command line (clap prints usage and exits on a
/// bad flag), run the health check if asked, else check the settings, then bind, serve with
/// `serve` until SIGINT/SIGTERM, and flush telemetry (see [`bootstrap::main`]).
pub async fn main<S, F, E>(serve: impl FnOnce(Listeners, S) -> F) -> anyhow::Result<()>
where
    S: ServiceSettings,
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    main_with::<S, NoCommands, _, _, _>(
        serve,
        |never: NoCommands, _, _| async move { match never {} },
    )
    .await
}

/// [`main`] for a service with subcommands of its own (`X`), which `own` runs, given the
/// (unchecked) settings and the log format, instead of serving.
pub async fn main_with<S, X, F, E, G>(
    serve: impl FnOnce(Listeners, S) -> F,
    own: impl FnOnce(X, S, LogFormat) -> G,
) -> anyhow::Result<()>
where
    S: ServiceSettings,
    X: clap::Subcommand,
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
    G: Future<Output = anyhow::Result<()>>,
{
    let cli = Cli::<S, X>::from_arg_matches(&command::<S, X>().get_matches())?;
    let settings = cli.settings;
    match cli.command {
        Some(Command::Healthcheck(check)) => {
            return check
                .run(settings.listen_addr().0, settings.healthcheck_identity())
                .await;
        }
        Some(Command::Own(command)) => return own(command, settings, cli.log_format).await,
        None => {}
    }
    settings.check()?;
    bootstrap::main(
        S::NAME,
        settings.listen_addr(),
        settings.admin_addr(),
        cli.log_format,
        |listeners| serve(listeners, settings),
    )
    .await
}
