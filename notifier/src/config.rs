//! Settings of the notifier: defaults, then environment variables, then flags.

use std::time::Duration;

use crate::channel::Channel;

/// Notifier settings. Flags and environment variables are listed in the README.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Database URL: a SQLite file (created if missing) or `sqlite::memory:`.
    #[arg(
        long,
        env = "NOTIFIER_DATABASE_URL",
        default_value = "sqlite://data/notifier.db"
    )]
    pub database_url: String,

    /// Kafka bootstrap servers (comma-separated host:port).
    #[arg(long, env = "KAFKA_BROKERS", default_value = ordermesh::kafka::DEFAULT_EMBEDDED_ADDR)]
    pub kafka_brokers: String,

    /// Topic to read OrderPlaced events from.
    #[arg(long, env = "ORDER_EVENTS_TOPIC", default_value = ordermesh::kafka::DEFAULT_ORDER_EVENTS_TOPIC)]
    pub events_topic: String,

    /// Channels to run, comma-separated: run one to stop the other channel.
    #[arg(
        long,
        env = "NOTIFIER_CHANNELS",
        value_enum,
        value_delimiter = ',',
        default_value = "email,sms"
    )]
    pub channels: Vec<Channel>,

    /// Consumer group of the email channel.
    #[arg(long, env = "NOTIFIER_EMAIL_GROUP", default_value = "notifier-email")]
    pub email_group: String,

    /// Consumer group of the SMS channel.
    #[arg(long, env = "NOTIFIER_SMS_GROUP", default_value = "notifier-sms")]
    pub sms_group: String,

    /// Consumer session timeout, in milliseconds: how soon the group gives a silent member's
    /// partitions to another (Kafka's own range is 6000 to 300000 by default).
    #[arg(long, env = "NOTIFIER_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,

    /// Most requests served at once; beyond it calls are refused with RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "NOTIFIER_MAX_CONCURRENT_REQUESTS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,

    /// How long in-flight calls may finish after SIGTERM, in milliseconds.
    #[arg(long, env = "NOTIFIER_DRAIN_GRACE_MS", default_value_t = 10_000)]
    pub drain_grace_ms: u64,
}

impl Config {
    /// Defaults overlaid with the environment, as the runner uses it.
    pub fn from_env() -> Result<Self, clap::Error> {
        ordermesh::service::config_from_env("notifier")
    }

    /// The consumer group of `channel`.
    pub fn group(&self, channel: Channel) -> &str {
        match channel {
            Channel::Email => &self.email_group,
            Channel::Sms => &self.sms_group,
        }
    }

    pub(crate) fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
    }

    pub(crate) fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }
}
