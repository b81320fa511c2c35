//! The payment service binary: settings, logging, bind, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use ordermesh_platform::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "payment",
    version,
    about = "Charges payment methods, at most once per idempotency key"
)]
struct Cli {
    /// Address to serve gRPC on.
    #[arg(long, env = "PAYMENT_LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    listen_addr: SocketAddr,
    /// Address of the admin HTTP server: Prometheus metrics on /metrics.
    #[arg(long, env = "PAYMENT_ADMIN_ADDR", default_value = "127.0.0.1:9462")]
    admin_addr: SocketAddr,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ordermesh_payment::Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exits 0 if the service on --listen-addr answers SERVING to a health check (what a container
    /// health check runs), 1 otherwise.
    Healthcheck(ordermesh_platform::healthcheck::HealthcheckArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli {
        listen_addr,
        admin_addr,
        log_format,
        command,
        config,
    } = Cli::parse();
    if let Some(Command::Healthcheck(check)) = &command {
        // A server that requires client certificates (payment with mutual TLS) gets its own.
        let own = config
            .tls_client_ca
            .is_some()
            .then(|| config.tls_cert.clone().zip(config.tls_key.clone()))
            .flatten();
        return check.run(listen_addr, own).await;
    }
    ordermesh_platform::bootstrap::main(
        "payment",
        (listen_addr, "PAYMENT_LISTEN_ADDR"),
        (admin_addr, "PAYMENT_ADMIN_ADDR"),
        log_format,
        |listeners| {
            ordermesh_payment::run(listeners, config, ordermesh_platform::shutdown::signal())
        },
    )
    .await
}
