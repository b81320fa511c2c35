//! The order service binary: settings, logging, bind, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use ordermesh_platform::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "order",
    version,
    about = "Takes orders, has them paid, publishes OrderPlaced"
)]
struct Cli {
    /// Address to serve gRPC on.
    #[arg(long, env = "ORDER_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    listen_addr: SocketAddr,
    /// Address of the admin HTTP server: Prometheus metrics on /metrics.
    #[arg(long, env = "ORDER_ADMIN_ADDR", default_value = "127.0.0.1:9461")]
    admin_addr: SocketAddr,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ordermesh_order::Config,
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
        let own = None;
        return check.run(listen_addr, own).await;
    }
    ordermesh_platform::bootstrap::main(
        "order",
        (listen_addr, "ORDER_LISTEN_ADDR"),
        (admin_addr, "ORDER_ADMIN_ADDR"),
        log_format,
        |listeners| ordermesh_order::run(listeners, config, ordermesh_platform::shutdown::signal()),
    )
    .await
}
