//! The notifier service binary: settings, logging, bind, serve until SIGINT/SIGTERM; or, with
//! `replay-dead-letters`, replay a channel's dead letters and exit.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use ordermesh_notifier::Channel;
use ordermesh_platform::telemetry::LogFormat;

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
    /// Address of the admin HTTP server: Prometheus metrics on /metrics.
    #[arg(long, env = "NOTIFIER_ADMIN_ADDR", default_value = "127.0.0.1:9463")]
    admin_addr: SocketAddr,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(flatten)]
    config: ordermesh_notifier::Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Handles a channel's dead-lettered messages again (after the cause is fixed), parks what still
    /// fails, prints what happened and exits. The notifier may keep running meanwhile.
    ReplayDeadLetters {
        #[arg(long, value_enum)]
        channel: Channel,
    },
    /// Exits 0 if the service on --listen-addr answers SERVING to a health check (what a container
    /// health check runs), 1 otherwise.
    Healthcheck(ordermesh_platform::healthcheck::HealthcheckArgs),
}

#[tokio::main]
#[allow(clippy::print_stdout)]
async fn main() -> anyhow::Result<()> {
    let Cli {
        listen_addr,
        admin_addr,
        log_format,
        config,
        command,
    } = Cli::parse();
    if let Some(Command::Healthcheck(check)) = &command {
        // A server that requires client certificates (payment with mutual TLS) gets its own.
        let own = None;
        return check.run(listen_addr, own).await;
    }
    if let Some(Command::ReplayDeadLetters { channel }) = command {
        let telemetry = ordermesh_platform::telemetry::init(log_format, "notifier-replay")?;
        let report = ordermesh_notifier::replay_dead_letters(&config, channel).await?;
        telemetry.shutdown();
        println!(
            "replayed {}: {} sent, {} already sent, {} skipped, {} parked again",
            report.replayed, report.sent, report.duplicates, report.skipped, report.parked_again
        );
        return Ok(());
    }
    ordermesh_platform::bootstrap::main(
        "notifier",
        (listen_addr, "NOTIFIER_LISTEN_ADDR"),
        (admin_addr, "NOTIFIER_ADMIN_ADDR"),
        log_format,
        |listeners| {
            ordermesh_notifier::run(listeners, config, ordermesh_platform::shutdown::signal())
        },
    )
    .await
}
