//! The notifier service binary: the shared command line (settings, `healthcheck`), then serve
//! until SIGINT/SIGTERM; or, with `replay-dead-letters`, replay a channel's dead letters and exit.

use ordermesh_notifier::{Command, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ordermesh_platform::cli::main_with(
        |listeners, config: Config| {
            ordermesh_notifier::run(listeners, config, ordermesh_platform::shutdown::signal())
        },
        replay,
    )
    .await
}

/// `replay-dead-letters`: prints what happened to the channel's dead letters.
#[allow(clippy::print_stdout)]
async fn replay(
    command: Command,
    config: Config,
    log_format: ordermesh_platform::telemetry::LogFormat,
) -> anyhow::Result<()> {
    let Command::ReplayDeadLetters { channel } = command;
    let telemetry = ordermesh_platform::telemetry::init(log_format, "notifier-replay")?;
    let report = ordermesh_notifier::replay_dead_letters(&config, channel).await?;
    telemetry.shutdown();
    println!(
        "replayed {}: {} sent, {} already sent, {} skipped, {} parked again",
        report.replayed, report.sent, report.duplicates, report.skipped, report.parked_again
    );
    Ok(())
}
