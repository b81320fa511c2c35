//! Settings of the order service: defaults, then environment variables, then flags.

use std::time::Duration;

/// Order service settings. Flags and environment variables are listed in the README.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Database URL: a SQLite file (created if missing) or `sqlite::memory:`.
    #[arg(
        long,
        env = "ORDER_DATABASE_URL",
        default_value = "sqlite://data/order.db"
    )]
    pub database_url: String,

    /// The payment service's gRPC endpoint.
    #[arg(
        long,
        env = "ORDER_PAYMENT_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub payment_url: String,

    /// Deadline of each Charge call, in milliseconds.
    #[arg(long, env = "ORDER_PAYMENT_TIMEOUT_MS", default_value_t = 3_000)]
    pub payment_timeout_ms: u64,

    /// Kafka bootstrap servers (comma-separated host:port).
    #[arg(long, env = "KAFKA_BROKERS", default_value = ordermesh::kafka::DEFAULT_EMBEDDED_ADDR)]
    pub kafka_brokers: String,

    /// Topic OrderPlaced events are published to.
    #[arg(long, env = "ORDER_EVENTS_TOPIC", default_value = ordermesh::kafka::DEFAULT_ORDER_EVENTS_TOPIC)]
    pub events_topic: String,

    /// How long CreateOrder waits for the broker to acknowledge an event, in milliseconds
    /// (librdkafka's message.timeout.ms: retries included).
    #[arg(long, env = "ORDER_PUBLISH_TIMEOUT_MS", default_value_t = 5_000)]
    pub publish_timeout_ms: u64,

    /// How long in-flight calls may finish after SIGTERM, in milliseconds.
    #[arg(long, env = "ORDER_DRAIN_GRACE_MS", default_value_t = 10_000)]
    pub drain_grace_ms: u64,
}

impl Config {
    /// Defaults overlaid with the environment, as the runner uses it.
    pub fn from_env() -> Result<Self, clap::Error> {
        ordermesh::service::config_from_env("order")
    }

    pub(crate) fn payment_timeout(&self) -> Duration {
        Duration::from_millis(self.payment_timeout_ms)
    }

    pub(crate) fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    pub(crate) fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }
}
