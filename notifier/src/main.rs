//! The notifier service binary: settings, logging, bind, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;

use clap::Parser;
use ordermesh::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "notifier",
    version,
    about = "Notifies customers of placed orders by email and SMS"
)]
struct Cli {
    /// Address to serve gRPC on.
    #[arg(long, env = "NOTIFIER_LISTEN_ADDR", default_value = "127.0.0.1:50053")]
    listen_addr: SocketAddr,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(flatten)]
    config: ordermesh_notifier::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli {
        listen_addr,
        log_format,
        config,
    } = Cli::parse();
    ordermesh::service::main(
        listen_addr,
        "NOTIFIER_LISTEN_ADDR",
        log_format,
        |listener| ordermesh_notifier::run(listener, config, ordermesh::shutdown::signal()),
    )
    .await
}
