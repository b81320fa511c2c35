//! Settings of the payment service: defaults, then environment variables, then flags.

use std::time::Duration;

/// Payment service settings. Flags and environment variables are listed in the README.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Database URL: a SQLite file (created if missing) or `sqlite::memory:`.
    #[arg(
        long,
        env = "PAYMENT_DATABASE_URL",
        default_value = "sqlite://data/payment.db"
    )]
    pub database_url: String,

    /// How long in-flight calls may finish after SIGTERM, in milliseconds.
    #[arg(long, env = "PAYMENT_DRAIN_GRACE_MS", default_value_t = 10_000)]
    pub drain_grace_ms: u64,
}

impl Config {
    /// Defaults overlaid with the environment, as the runner uses it.
    pub fn from_env() -> Result<Self, clap::Error> {
        ordermesh::service::config_from_env("payment")
    }

    pub(crate) fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }
}
