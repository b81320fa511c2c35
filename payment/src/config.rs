//! Settings of the payment service: defaults, then environment variables, then flags.

use ordermesh_platform::cli::millis;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ordermesh_platform::{
    cli::ServiceSettings, listeners::Address, tls::ServerTlsFiles as TlsFiles,
};

use crate::RunError;

/// Payment service settings (docs/configuration.md lists them all, generated from these).
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "PAYMENT_LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    pub listen_addr: SocketAddr,

    /// Address of the admin HTTP server: Prometheus metrics on /metrics.
    #[arg(long, env = "PAYMENT_ADMIN_ADDR", default_value = "127.0.0.1:9462")]
    pub admin_addr: SocketAddr,

    /// Database URL: a SQLite file (created if missing), `sqlite::memory:`, or PostgreSQL
    /// (`postgres://user:password@host/db`, for several replicas on one database).
    #[arg(
        long,
        env = "PAYMENT_DATABASE_URL",
        default_value = "sqlite://data/payment.db"
    )]
    pub database_url: String,

    /// Whether fault injection (x-fault-* headers and the PAYMENT_FAULT_* settings) is on. Off by
    /// default: for demos and tests only (the quick-start runner turns it on).
    #[arg(long, env = "PAYMENT_FAULTS_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub faults_enabled: bool,

    /// Fault for every Charge and Refund: delay in milliseconds before doing anything.
    #[arg(
        long = "fault-delay-ms",
        value_name = "MS",
        env = "PAYMENT_FAULT_DELAY_MS",
        default_value = "0",
        value_parser = millis(..)
    )]
    pub fault_delay: Duration,

    /// Fault for every Charge and Refund: fail with this gRPC code (e.g. unavailable).
    #[arg(long, env = "PAYMENT_FAULT_ABORT", value_parser = crate::fault::parse_code_arg)]
    pub fault_abort: Option<tonic::Code>,

    /// Fault for every Charge and Refund: abort before the write, or after it is stored.
    #[arg(long, env = "PAYMENT_FAULT_STAGE", value_enum, default_value_t)]
    pub fault_stage: crate::fault::Stage,

    /// Fault for every Charge and Refund: percentage of calls it applies to.
    #[arg(long, env = "PAYMENT_FAULT_PERCENT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub fault_percent: u32,

    /// Most requests served at once; beyond it calls are refused with RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "PAYMENT_MAX_CONCURRENT_REQUESTS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,

    /// How long in-flight calls may finish after SIGTERM, in milliseconds.
    #[arg(
        long = "drain-grace-ms",
        value_name = "MS",
        env = "PAYMENT_DRAIN_GRACE_MS",
        default_value = "10000",
        value_parser = millis(..)
    )]
    pub drain_grace: Duration,

    /// TLS: the server's certificate chain (PEM). With PAYMENT_TLS_KEY; without both, plaintext.
    #[arg(long, env = "PAYMENT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS: the server's private key (PEM).
    #[arg(long, env = "PAYMENT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: only clients with a certificate from this CA (PEM) get through the handshake.
    #[arg(long, env = "PAYMENT_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Mutual TLS: the client certificate names (DNS SANs) that may call PaymentService; others get
    /// PERMISSION_DENIED. Health and reflection stay open to any client the CA vouches for.
    #[arg(
        long,
        env = "PAYMENT_ALLOWED_CLIENTS",
        value_delimiter = ',',
        default_value = "order"
    )]
    pub allowed_clients: Vec<String>,
}

impl Config {
    /// Defaults overlaid with the environment, as the runner uses it.
    pub fn from_env() -> Result<Self, clap::Error> {
        ordermesh_platform::bootstrap::config_from_env("payment")
    }

    pub(crate) fn faults(&self) -> crate::fault::FaultConfig {
        crate::fault::FaultConfig {
            enabled: self.faults_enabled,
            delay: self.fault_delay,
            abort: self.fault_abort,
            stage: self.fault_stage,
            percent: self.fault_percent,
        }
    }

    pub(crate) fn tls(&self) -> TlsFiles {
        TlsFiles {
            prefix: "PAYMENT",
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: self.tls_client_ca.clone(),
        }
    }
}

impl ServiceSettings for Config {
    const NAME: &'static str = "payment";
    const ABOUT: &'static str = "Charges payment methods, at most once per idempotency key";
    type Error = RunError;

    fn listen_addr(&self) -> Address<'static> {
        (self.listen_addr, "PAYMENT_LISTEN_ADDR")
    }

    fn admin_addr(&self) -> Address<'static> {
        (self.admin_addr, "PAYMENT_ADMIN_ADDR")
    }

    fn check(&self) -> Result<(), RunError> {
        // The certificate, key and client CA: set together as they must be, and readable.
        self.tls().load()?;
        Ok(())
    }

    /// With mutual TLS the server asks every client for a certificate, the health check too.
    fn healthcheck_identity(&self) -> Option<(PathBuf, PathBuf)> {
        self.tls_client_ca
            .is_some()
            .then(|| self.tls_cert.clone().zip(self.tls_key.clone()))
            .flatten()
    }
}
