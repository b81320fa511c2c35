//! The runner's command line: which services to start and where, the embedded broker, and its
//! tools (`dev-certs`, `token`, `config-reference`). Each service's own settings are its `Config`,
//! read from the same environment variables its binary reads.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use ordermesh_platform::telemetry::LogFormat;

/// A service the runner can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    Payment,
    Order,
    Notifier,
}

#[derive(Debug, Parser)]
#[command(
    name = "ordermesh",
    version,
    about = "Runs the ordermesh services and an embedded Kafka broker"
)]
pub struct Cli {
    /// Services to start, comma-separated.
    #[arg(
        long,
        env = "ORDERMESH_SERVICES",
        value_enum,
        value_delimiter = ',',
        default_value = "payment,order,notifier"
    )]
    pub services: Vec<Service>,
    /// An external Kafka cluster (comma-separated host:port). Without it an embedded broker is started.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Where the embedded broker listens (for kcat and other clients).
    #[arg(long, env = "ORDERMESH_EMBEDDED_KAFKA_ADDR", default_value = ordermesh_kafka::DEFAULT_EMBEDDED_ADDR)]
    pub embedded_kafka_addr: SocketAddr,
    /// Directory of the services' SQLite databases (overrides each service's *_DATABASE_URL).
    #[arg(long, env = "ORDERMESH_DATA_DIR")]
    pub data_dir: Option<String>,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Prints the configuration reference (docs/configuration.md): every setting of every binary,
    /// generated from their own flag definitions, then exits.
    ConfigReference,
    /// Creates a development CA and a certificate and key for each service in DIR (ca.pem,
    /// order.pem/.key, payment.pem/.key, notifier.pem/.key), then exits. For development only.
    DevCerts {
        #[arg(long, default_value = "certs")]
        dir: std::path::PathBuf,
    },
    /// Prints a bearer token signed with KEY (the services' ORDER_AUTH_KEY / NOTIFIER_AUTH_KEY),
    /// for grpcurl's `-H "authorization: Bearer <token>"`.
    Token {
        /// The signing key, as the service is configured with it.
        #[arg(long, env = "ORDERMESH_AUTH_KEY", hide_env_values = true)]
        key: ordermesh_platform::auth::Secret,
        /// Scopes to grant, comma-separated: orders:write, orders:read, notifications:read.
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<String>,
        /// Who the token is for.
        #[arg(long, default_value = "ordermesh-cli")]
        subject: String,
        /// How long it is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}
