//! Settings of the notifier: defaults, then environment variables, then flags.

use ordermesh_platform::cli::millis;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ordermesh_platform::{
    auth::{AuthKey, Secret},
    cli::ServiceSettings,
    listeners::Address,
    tls::ServerTlsFiles,
};

use crate::{RunError, channel::Channel};

/// Notifier settings (docs/configuration.md lists them all, generated from these).
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "NOTIFIER_LISTEN_ADDR", default_value = "127.0.0.1:50053")]
    pub listen_addr: SocketAddr,

    /// Address of the admin HTTP server: Prometheus metrics on /metrics.
    #[arg(long, env = "NOTIFIER_ADMIN_ADDR", default_value = "127.0.0.1:9463")]
    pub admin_addr: SocketAddr,

    /// Database URL: a SQLite file (created if missing), `sqlite::memory:`, or PostgreSQL
    /// (`postgres://user:password@host/db`, for several replicas on one database).
    #[arg(
        long,
        env = "NOTIFIER_DATABASE_URL",
        default_value = "sqlite://data/notifier.db"
    )]
    pub database_url: String,

    /// The brokers, and TLS and SASL for a secured cluster (KAFKA_* settings).
    #[command(flatten)]
    pub kafka: ordermesh_kafka::KafkaSettings,

    /// Topic to read OrderPlaced events from.
    #[arg(long, env = "ORDER_EVENTS_TOPIC", default_value = ordermesh_kafka::DEFAULT_ORDER_EVENTS_TOPIC)]
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
    #[arg(
        long = "session-timeout-ms",
        value_name = "MS",
        env = "NOTIFIER_SESSION_TIMEOUT_MS",
        default_value = "10000",
        value_parser = millis(..)
    )]
    pub session_timeout: Duration,

    /// Longest time, in milliseconds, the consumer may spend on one batch between two polls
    /// (librdkafka's max.poll.interval.ms): a member silent for longer is dropped from its group.
    /// Sends of a batch start only in its first half, and a send (NOTIFIER_SEND_TIMEOUT_MS) and a
    /// park on the dead-letter topic are each bounded by a fifth of it, so a batch ends in time
    /// whatever the mail server or the SMS gateway does. At least NOTIFIER_SESSION_TIMEOUT_MS.
    #[arg(
        long = "max-poll-interval-ms",
        value_name = "MS",
        env = "NOTIFIER_MAX_POLL_INTERVAL_MS",
        default_value = "300000",
        value_parser = millis(1..=86_400_000)
    )]
    pub max_poll_interval: Duration,

    /// Longest time the broker may hold a fetch that finds nothing, in milliseconds (librdkafka's
    /// fetch.wait.max.ms). Kafka answers as soon as data arrives, so this only bounds idle polling;
    /// a broker that holds the fetch regardless (the embedded mock, tansu) adds up to this much
    /// latency to a lone event.
    #[arg(
        long = "fetch-wait-max-ms",
        value_name = "MS",
        env = "NOTIFIER_FETCH_WAIT_MAX_MS",
        default_value = "500",
        value_parser = millis(1..=300_000)
    )]
    pub fetch_wait_max: Duration,

    /// SMTP server for email, e.g. `smtp://mail.internal:25`, `smtps://user:pass@smtp.example.com`
    /// or `smtp://host:587?tls=required`. Unset: emails are recorded and logged, not sent. It may
    /// carry a password, so `--help` does not show its value and errors hide the password.
    #[arg(long, env = "NOTIFIER_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Sender of the emails.
    #[arg(
        long,
        env = "NOTIFIER_EMAIL_FROM",
        default_value = "ordermesh <orders@ordermesh.example>"
    )]
    pub email_from: String,

    /// SMS gateway webhook: each SMS is a JSON POST `{"to", "body", "reference"}` with an
    /// `Idempotency-Key` header. Unset: SMS are recorded and logged, not sent.
    #[arg(long, env = "NOTIFIER_SMS_WEBHOOK_URL")]
    pub sms_webhook_url: Option<String>,

    /// Bearer token for the SMS gateway, if it wants one.
    #[arg(long, env = "NOTIFIER_SMS_WEBHOOK_TOKEN", hide_env_values = true)]
    pub sms_webhook_token: Option<Secret>,

    /// Time limit of one send (connect included), in milliseconds.
    #[arg(
        long = "send-timeout-ms",
        value_name = "MS",
        env = "NOTIFIER_SEND_TIMEOUT_MS",
        default_value = "10000",
        value_parser = millis(1..)
    )]
    pub send_timeout: Duration,

    /// Sends tried per notification before it is parked on the dead-letter topic (1 = no retry).
    #[arg(long, env = "NOTIFIER_SEND_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub send_attempts: u32,

    /// Wait before the first retry, in milliseconds; doubled after each failure, with jitter.
    #[arg(
        long = "retry-backoff-ms",
        value_name = "MS",
        env = "NOTIFIER_RETRY_BACKOFF_MS",
        default_value = "1000",
        value_parser = millis(1..)
    )]
    pub retry_backoff: Duration,

    /// Longest wait between two retries, in milliseconds.
    #[arg(
        long = "retry-max-backoff-ms",
        value_name = "MS",
        env = "NOTIFIER_RETRY_MAX_BACKOFF_MS",
        default_value = "60000",
        value_parser = millis(1..)
    )]
    pub retry_max_backoff: Duration,

    /// Most requests served at once; beyond it calls are refused with RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "NOTIFIER_MAX_CONCURRENT_REQUESTS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,

    /// How long in-flight calls may finish after SIGTERM, in milliseconds.
    #[arg(
        long = "drain-grace-ms",
        value_name = "MS",
        env = "NOTIFIER_DRAIN_GRACE_MS",
        default_value = "10000",
        value_parser = millis(..)
    )]
    pub drain_grace: Duration,

    /// Key (at least 32 bytes) that bearer tokens are signed with (HS256); set, every
    /// NotificationService call needs a token with the method's scope. Unset: the API is open.
    #[arg(long, env = "NOTIFIER_AUTH_KEY", hide_env_values = true)]
    pub auth_key: Option<Secret>,

    /// TLS: the server's certificate chain (PEM). With NOTIFIER_TLS_KEY; without both, plaintext.
    #[arg(long, env = "NOTIFIER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS: the server's private key (PEM).
    #[arg(long, env = "NOTIFIER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl Config {
    /// Defaults overlaid with the environment, as the runner uses it.
    pub fn from_env() -> Result<Self, clap::Error> {
        ordermesh_platform::bootstrap::config_from_env("notifier")
    }

    /// The consumer group of `channel`.
    pub fn group(&self, channel: Channel) -> &str {
        match channel {
            Channel::Email => &self.email_group,
            Channel::Sms => &self.sms_group,
        }
    }

    /// How long after a batch starts its sends may start: half of `max_poll_interval`. The last
    /// one, at most a send timeout and a park later, still ends within the interval (see `check`).
    pub(crate) fn send_budget(&self) -> Duration {
        self.max_poll_interval / 2
    }

    /// How long parking a message on the dead-letter topic may take before it counts as failed
    /// (the producer's message.timeout.ms): 30 s, or a fifth of `max_poll_interval` if less.
    pub(crate) fn park_timeout(&self) -> Duration {
        (self.max_poll_interval / 5).min(Duration::from_secs(30))
    }

    /// When to retry a notification after its `failures`-th failed send.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.send_attempts,
            backoff: self.retry_backoff,
            max_backoff: self.retry_max_backoff.max(self.retry_backoff),
        }
    }

    pub(crate) fn tls(&self) -> ServerTlsFiles {
        ServerTlsFiles {
            prefix: "NOTIFIER",
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: None,
        }
    }
}

/// The notifier binary's own subcommands, beside the shared `healthcheck`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Handles a channel's dead-lettered messages again (after the cause is fixed), parks what still
    /// fails, prints what happened and exits. The notifier may keep running meanwhile.
    ReplayDeadLetters {
        /// The channel whose dead letters to replay.
        #[arg(long, value_enum)]
        channel: Channel,
    },
}

impl ServiceSettings for Config {
    const NAME: &'static str = "notifier";
    const ABOUT: &'static str = "Notifies customers of placed orders by email and SMS";
    type Error = RunError;

    fn listen_addr(&self) -> Address<'static> {
        (self.listen_addr, "NOTIFIER_LISTEN_ADDR")
    }

    fn admin_addr(&self) -> Address<'static> {
        (self.admin_addr, "NOTIFIER_ADMIN_ADDR")
    }

    fn check(&self) -> Result<(), RunError> {
        if self.channels.is_empty() {
            return Err(RunError::NoChannel);
        }
        self.kafka.check()?;
        if self.max_poll_interval < self.session_timeout {
            return Err(RunError::PollBelowSession {
                max_poll_ms: self.max_poll_interval.as_millis(),
                session_ms: self.session_timeout.as_millis(),
            });
        }
        if self.send_timeout > self.max_poll_interval / 5 {
            return Err(RunError::SendOutlastsPoll {
                send_ms: self.send_timeout.as_millis(),
                max_poll_ms: self.max_poll_interval.as_millis(),
            });
        }
        if let Some(secret) = &self.auth_key {
            AuthKey::new("NOTIFIER_AUTH_KEY", secret)?;
        }
        // The server's certificate and key: set together as they must be, and readable.
        self.tls().load()?;
        Ok(())
    }
}

/// How often and how soon a failed send is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Sends in all, the first included.
    pub(crate) attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed send: `backoff * 2^(failures-1)` capped at
    /// `max_backoff`, then "equal jitter" (between half and all of it) so notifications that failed
    /// together, when a server went down, do not all come back at the same instant.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        let full = self
            .backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_within_jitter_and_stops_at_the_cap() {
        let policy = RetryPolicy {
            attempts: 8,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
        };
        for _ in 0..100 {
            let first = policy.delay(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let third = policy.delay(3);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&third));
            let late = policy.delay(30);
            assert!((Duration::from_millis(500)..=Duration::from_millis(1_000)).contains(&late));
        }
    }
}
