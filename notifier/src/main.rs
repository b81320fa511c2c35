//! The notifier service binary: settings, logging, bind, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
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
    let cli = Cli::parse();
    ordermesh::telemetry::init(cli.log_format)?;
    let listener = tokio::net::TcpListener::bind(cli.listen_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (NOTIFIER_LISTEN_ADDR)",
                cli.listen_addr
            )
        })?;
    ordermesh_notifier::run(listener, cli.config, ordermesh::shutdown::signal()).await?;
    Ok(())
}
