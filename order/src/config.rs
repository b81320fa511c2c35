//! Settings of the order service: defaults, then environment variables, then flags.

use ordermesh_platform::cli::millis;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ordermesh_platform::{
    auth::{AuthKey, Secret},
    cli::ServiceSettings,
    listeners::Address,
    tls::{ClientTlsFiles, ServerTlsFiles},
};

use crate::{
    RunError,
    payment_client::{PaymentClientConfig, breaker::BreakerConfig},
};

/// Order service settings (docs/configuration.md lists them all, generated from these).
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "ORDER_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// Address of the admin HTTP server: Prometheus metrics on /metrics.
    #[arg(long, env = "ORDER_ADMIN_ADDR", default_value = "127.0.0.1:9461")]
    pub admin_addr: SocketAddr,

    /// Database URL: a SQLite file (created if missing), `sqlite::memory:`, or PostgreSQL
    /// (`postgres://user:password@host/db`, for several replicas on one database).
    #[arg(
        long,
        env = "ORDER_DATABASE_URL",
        default_value = "sqlite://data/order.db"
    )]
    pub database_url: String,

    /// The payment service's gRPC endpoints: one URL or several, comma-separated. A host name
    /// stands for every address it resolves to (e.g. each replica behind a Docker service name),
    /// resolved again every ORDER_PAYMENT_RESOLVE_INTERVAL_MS; calls are spread over them.
    #[arg(
        long,
        env = "ORDER_PAYMENT_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub payment_url: String,

    /// How often the host names of ORDER_PAYMENT_URL are resolved again, in milliseconds.
    #[arg(
        long = "payment-resolve-interval-ms",
        value_name = "MS",
        env = "ORDER_PAYMENT_RESOLVE_INTERVAL_MS",
        default_value = "5000",
        value_parser = millis(100..)
    )]
    pub payment_resolve_interval: Duration,

    /// How often each payment endpoint's health is checked, in milliseconds; one not SERVING gets
    /// no calls until it is again.
    #[arg(
        long = "payment-health-interval-ms",
        value_name = "MS",
        env = "ORDER_PAYMENT_HEALTH_INTERVAL_MS",
        default_value = "1000",
        value_parser = millis(100..)
    )]
    pub payment_health_interval: Duration,

    /// Deadline of the whole Charge call, retries included, in milliseconds (a shorter deadline of
    /// the CreateOrder caller wins).
    #[arg(
        long = "payment-timeout-ms",
        value_name = "MS",
        env = "ORDER_PAYMENT_TIMEOUT_MS",
        default_value = "3000",
        value_parser = millis(1..)
    )]
    pub payment_timeout: Duration,

    /// Deadline of one Charge attempt, in milliseconds.
    #[arg(
        long = "payment-attempt-timeout-ms",
        value_name = "MS",
        env = "ORDER_PAYMENT_ATTEMPT_TIMEOUT_MS",
        default_value = "1000",
        value_parser = millis(1..)
    )]
    pub payment_attempt_timeout: Duration,

    /// Time kept free before the caller's deadline to record the outcome and answer, in milliseconds.
    #[arg(
        long = "deadline-margin-ms",
        value_name = "MS",
        env = "ORDER_DEADLINE_MARGIN_MS",
        default_value = "50",
        value_parser = millis(..)
    )]
    pub deadline_margin: Duration,

    /// Most Charge attempts per CreateOrder, the first included.
    #[arg(long, env = "ORDER_PAYMENT_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub payment_max_attempts: u32,

    /// First retry backoff, in milliseconds; it doubles per retry, plus up to 100% jitter.
    #[arg(
        long = "payment-backoff-base-ms",
        value_name = "MS",
        env = "ORDER_PAYMENT_BACKOFF_BASE_MS",
        default_value = "50",
        value_parser = millis(1..)
    )]
    pub payment_backoff_base: Duration,

    /// Longest retry backoff, in milliseconds.
    #[arg(
        long = "payment-backoff-max-ms",
        value_name = "MS",
        env = "ORDER_PAYMENT_BACKOFF_MAX_MS",
        default_value = "1000",
        value_parser = millis(1..)
    )]
    pub payment_backoff_max: Duration,

    /// Retries allowed as a percentage of Charge calls (over the last 10 s), beyond the minimum.
    #[arg(long, env = "ORDER_PAYMENT_RETRY_BUDGET_PERCENT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub payment_retry_budget_percent: u32,

    /// Retries per second always allowed, whatever the budget.
    #[arg(long, env = "ORDER_PAYMENT_RETRY_MIN_PER_SEC", default_value_t = 10)]
    pub payment_retry_min_per_sec: u32,

    /// Breaker: how many of the latest Charge attempts the failure and slow-call rates cover.
    #[arg(long, env = "ORDER_BREAKER_WINDOW", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub breaker_window: u32,

    /// Breaker: no verdict on fewer attempts than this.
    #[arg(long, env = "ORDER_BREAKER_MIN_CALLS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub breaker_min_calls: u32,

    /// Breaker: open when at least this percentage of the window failed.
    #[arg(long, env = "ORDER_BREAKER_FAILURE_RATE_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub breaker_failure_rate_percent: u32,

    /// Breaker: an attempt slower than this, in milliseconds, is slow.
    #[arg(
        long = "breaker-slow-call-ms",
        value_name = "MS",
        env = "ORDER_BREAKER_SLOW_CALL_MS",
        default_value = "2000",
        value_parser = millis(1..)
    )]
    pub breaker_slow_call: Duration,

    /// Breaker: open when at least this percentage of the window was slow.
    #[arg(long, env = "ORDER_BREAKER_SLOW_CALL_RATE_PERCENT", default_value_t = 80, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub breaker_slow_call_rate_percent: u32,

    /// Breaker: how long it stays open before probing, in milliseconds.
    #[arg(
        long = "breaker-open-ms",
        value_name = "MS",
        env = "ORDER_BREAKER_OPEN_MS",
        default_value = "5000",
        value_parser = millis(1..)
    )]
    pub breaker_open: Duration,

    /// Breaker: probes let through when half-open; all must succeed to close it.
    #[arg(long, env = "ORDER_BREAKER_HALF_OPEN_PROBES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub breaker_half_open_probes: u32,

    /// The brokers, and TLS and SASL for a secured cluster (KAFKA_* settings).
    #[command(flatten)]
    pub kafka: ordermesh_kafka::KafkaSettings,

    /// Topic OrderPlaced events are published to.
    #[arg(long, env = "ORDER_EVENTS_TOPIC", default_value = ordermesh_kafka::DEFAULT_ORDER_EVENTS_TOPIC)]
    pub events_topic: String,

    /// How long CreateOrder waits for the broker to acknowledge its event, in milliseconds, before
    /// answering with the event pending (the outbox relay keeps trying). Also the producer's
    /// message.timeout.ms, after which the relay retries the event.
    #[arg(
        long = "publish-timeout-ms",
        value_name = "MS",
        env = "ORDER_PUBLISH_TIMEOUT_MS",
        default_value = "5000",
        value_parser = millis(..)
    )]
    pub publish_timeout: Duration,

    /// Pass the caller's fault injection headers (x-fault-*) on to payment. For demos and tests
    /// only: with it on, any caller of CreateOrder or CancelOrder can make payment misbehave.
    #[arg(long, env = "ORDER_FORWARD_FAULT_HEADERS", default_value_t = false, action = clap::ArgAction::Set)]
    pub forward_fault_headers: bool,

    /// Reconciler: how long an order must have waited for payment (since a CreateOrder last tried
    /// to charge it) before the reconciler settles it with payment, in milliseconds. Must exceed
    /// ORDER_PAYMENT_TIMEOUT_MS, so it never competes with a live call.
    #[arg(
        long = "reconcile-grace-ms",
        value_name = "MS",
        env = "ORDER_RECONCILE_GRACE_MS",
        default_value = "60000",
        value_parser = millis(1..)
    )]
    pub reconcile_grace: Duration,

    /// Reconciler: how often it looks for pending orders past the grace period, in milliseconds.
    #[arg(
        long = "reconcile-interval-ms",
        value_name = "MS",
        env = "ORDER_RECONCILE_INTERVAL_MS",
        default_value = "5000",
        value_parser = millis(10..)
    )]
    pub reconcile_interval: Duration,

    /// One try at settling an order's charge key with payment (CloseChargeKey), in milliseconds.
    #[arg(
        long = "settle-timeout-ms",
        value_name = "MS",
        env = "ORDER_SETTLE_TIMEOUT_MS",
        default_value = "2000",
        value_parser = millis(1..)
    )]
    pub settle_timeout: Duration,

    /// Most requests served at once; beyond it calls are refused with RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "ORDER_MAX_CONCURRENT_REQUESTS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,

    /// How long in-flight calls may finish after SIGTERM, in milliseconds.
    #[arg(
        long = "drain-grace-ms",
        value_name = "MS",
        env = "ORDER_DRAIN_GRACE_MS",
        default_value = "10000",
        value_parser = millis(..)
    )]
    pub drain_grace: Duration,

    /// TLS: the server's certificate chain (PEM). With ORDER_TLS_KEY; without both, plaintext.
    #[arg(long, env = "ORDER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS: the server's private key (PEM).
    #[arg(long, env = "ORDER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// TLS to payment: the CA its certificate must chain to (PEM). Use an https:// payment URL.
    #[arg(long, env = "ORDER_PAYMENT_TLS_CA")]
    pub payment_tls_ca: Option<PathBuf>,

    /// Mutual TLS to payment: this service's client certificate (PEM), naming `order`.
    #[arg(long, env = "ORDER_PAYMENT_TLS_CERT")]
    pub payment_tls_cert: Option<PathBuf>,

    /// Mutual TLS to payment: the client certificate's private key (PEM).
    #[arg(long, env = "ORDER_PAYMENT_TLS_KEY")]
    pub payment_tls_key: Option<PathBuf>,

    /// Key (at least 32 bytes) that bearer tokens are signed with (HS256); set, every OrderService
    /// call needs a token with the method's scope. Unset: the API is open (the quick start).
    #[arg(long, env = "ORDER_AUTH_KEY", hide_env_values = true)]
    pub auth_key: Option<Secret>,

    /// TLS to payment: the name its certificate must carry, if not the payment URL's host.
    #[arg(long, env = "ORDER_PAYMENT_TLS_DOMAIN")]
    pub payment_tls_domain: Option<String>,
}

impl Config {
    /// Defaults overlaid with the environment, as the runner uses it.
    pub fn from_env() -> Result<Self, clap::Error> {
        ordermesh_platform::bootstrap::config_from_env("order")
    }

    pub(crate) fn payment_client(&self) -> PaymentClientConfig {
        let share = |percent: u32| f64::from(percent) / 100.0;
        PaymentClientConfig {
            url: self.payment_url.clone(),
            resolve_interval: self.payment_resolve_interval,
            health_interval: self.payment_health_interval,
            timeout: self.payment_timeout,
            attempt_timeout: self.payment_attempt_timeout,
            deadline_margin: self.deadline_margin,
            max_attempts: self.payment_max_attempts,
            backoff_base: self.payment_backoff_base,
            backoff_max: self.payment_backoff_max,
            retry_budget_ratio: self.payment_retry_budget_percent as f32 / 100.0,
            retry_min_per_sec: self.payment_retry_min_per_sec,
            breaker: BreakerConfig {
                window: self.breaker_window as usize,
                min_calls: self.breaker_min_calls as usize,
                failure_rate: share(self.breaker_failure_rate_percent),
                slow_call: self.breaker_slow_call,
                slow_call_rate: share(self.breaker_slow_call_rate_percent),
                open_for: self.breaker_open,
                half_open_probes: self.breaker_half_open_probes,
            },
            tls: ClientTlsFiles {
                prefix: "ORDER_PAYMENT",
                ca: self.payment_tls_ca.clone(),
                cert: self.payment_tls_cert.clone(),
                key: self.payment_tls_key.clone(),
                domain: self.payment_tls_domain.clone(),
            },
        }
    }

    pub(crate) fn tls(&self) -> ServerTlsFiles {
        ServerTlsFiles {
            prefix: "ORDER",
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: None,
        }
    }

    pub(crate) fn create_settings(&self) -> crate::api::CreateSettings {
        crate::api::CreateSettings {
            publish_wait: self.publish_timeout,
            deadline_margin: self.deadline_margin,
            settle_timeout: self.settle_timeout,
            forward_faults: self.forward_fault_headers,
        }
    }

    pub(crate) fn reconciler(&self) -> crate::reconciler::ReconcilerSettings {
        crate::reconciler::ReconcilerSettings {
            grace: self.reconcile_grace,
            interval: self.reconcile_interval,
            settle_timeout: self.settle_timeout,
        }
    }
}

impl ServiceSettings for Config {
    const NAME: &'static str = "order";
    const ABOUT: &'static str = "Takes orders, has them paid, publishes OrderPlaced";
    type Error = RunError;

    fn listen_addr(&self) -> Address<'static> {
        (self.listen_addr, "ORDER_LISTEN_ADDR")
    }

    fn admin_addr(&self) -> Address<'static> {
        (self.admin_addr, "ORDER_ADMIN_ADDR")
    }

    fn check(&self) -> Result<(), RunError> {
        if self.breaker_min_calls > self.breaker_window {
            return Err(RunError::Config(format!(
                "ORDER_BREAKER_MIN_CALLS ({}) exceeds ORDER_BREAKER_WINDOW ({}): the breaker could never open",
                self.breaker_min_calls, self.breaker_window
            )));
        }
        if self.reconcile_grace <= self.payment_timeout {
            return Err(RunError::Config(format!(
                "ORDER_RECONCILE_GRACE_MS ({}) must exceed ORDER_PAYMENT_TIMEOUT_MS ({}): the reconciler would close the charge keys of calls still charging",
                self.reconcile_grace.as_millis(),
                self.payment_timeout.as_millis()
            )));
        }
        self.kafka.check()?;
        if let Some(secret) = &self.auth_key {
            AuthKey::new("ORDER_AUTH_KEY", secret)?;
        }
        // The server's certificate, key and client CA: set together as they must be, and readable.
        self.tls().load()?;
        Ok(())
    }
}
