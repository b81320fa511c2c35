//! `ordermesh-churn`: the notifier's process-churn campaign (`ordermesh_bench::churn`). On
//! loopback, with a broker, a PostgreSQL server, an SMTP server and an SMS gateway of its own, it
//! starts, SIGTERMs and SIGKILLs notifier replicas on a seeded schedule while events are published,
//! then audits every delivery; it exits non-zero on any violation and prints the command that
//! replays the seed. Needs PostgreSQL (`/usr/lib/postgresql`) and aiosmtpd (`pip install aiosmtpd`).
//!
//! ```text
//! cargo build -p ordermesh-notifier -p ordermesh-bench --bins
//! target/debug/ordermesh-churn --seed 42 --events 500 --steps 20
//! ordermesh-churn --notifier /path/to/another/notifier --seed 7
//! ```

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ordermesh_bench::churn::{self, Settings};
use ordermesh_platform::cli::millis;

#[derive(Debug, Parser)]
#[command(
    name = "ordermesh-churn",
    version,
    about = "Starts, SIGTERMs and SIGKILLs notifier replicas while orders flow, then audits every delivery"
)]
struct Cli {
    /// The seed of the plan (default: taken from the clock, and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Events published during the steps.
    #[arg(long, default_value_t = 500)]
    events: usize,
    /// Bursts the events are published in (default: two per step). Fewer, bigger bursts leave
    /// longer backlogs in hand when a replica is stopped or killed.
    #[arg(long)]
    bursts: Option<usize>,
    /// Actions on the replicas (start, SIGTERM, SIGKILL).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Most replicas alive at once.
    #[arg(long, default_value_t = 3)]
    max_replicas: usize,
    /// Shortest pause after an action, in milliseconds.
    #[arg(long = "min-pause-ms", value_name = "MS", default_value = "200", value_parser = millis(..))]
    min_pause: Duration,
    /// Longest pause after an action, in milliseconds.
    #[arg(long = "max-pause-ms", value_name = "MS", default_value = "4000", value_parser = millis(..))]
    max_pause: Duration,
    /// Partitions of the events topic.
    #[arg(long, default_value_t = 3)]
    partitions: usize,
    /// How long the SMS gateway takes over each SMS, in milliseconds: slower makes longer batches.
    #[arg(long = "sms-delay-ms", value_name = "MS", default_value = "20", value_parser = millis(..))]
    sms_delay: Duration,
    /// The notifier binary (default: `notifier` beside this program).
    #[arg(long)]
    notifier: Option<PathBuf>,
    /// Bound on the wait for every event to be notified after the last step, in milliseconds.
    #[arg(long = "drain-timeout-ms", value_name = "MS", default_value = "120000", value_parser = millis(1..))]
    drain_timeout: Duration,
    /// Where to keep the logs, the Maildir and the database (default: a temporary directory, kept
    /// only after a violation).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ordermesh-churn: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether the audit passed.
async fn run(cli: Cli) -> Result<bool> {
    let seed = match cli.seed {
        Some(seed) => seed,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    let notifier = match cli.notifier {
        Some(path) => path,
        None => churn::notifier_beside_me()?,
    };
    if !notifier.is_file() {
        bail!(
            "no notifier binary at {} (build it: cargo build -p ordermesh-notifier; or pass --notifier)",
            notifier.display()
        );
    }
    // The replicas run in the campaign's directory: a relative path would mean another file there.
    let notifier = std::fs::canonicalize(&notifier)?;
    let (dir, temporary) = match cli.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            (dir, None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("ordermesh-churn-")
                .tempdir()?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let mut settings = Settings::new(seed, notifier.clone(), dir);
    let bursts = cli.bursts.unwrap_or(cli.steps * 2);
    settings.shape = churn::plan::Shape {
        events: cli.events,
        bursts,
        steps: cli.steps,
        max_replicas: cli.max_replicas,
        min_pause: cli.min_pause,
        max_pause: cli.max_pause,
        ..churn::plan::Shape::default()
    };
    settings.partitions = cli.partitions;
    settings.sms_delay = cli.sms_delay;
    settings.drain_timeout = cli.drain_timeout;
    settings.replay = format!(
        "ordermesh-churn --seed {seed} --events {} --bursts {bursts} --steps {} --max-replicas {} --min-pause-ms {} --max-pause-ms {} --partitions {} --sms-delay-ms {} --notifier {}",
        cli.events,
        cli.steps,
        cli.max_replicas,
        cli.min_pause.as_millis(),
        cli.max_pause.as_millis(),
        cli.partitions,
        cli.sms_delay.as_millis(),
        notifier.display()
    );
    eprintln!(
        "notifier churn campaign, seed {seed} (replay: {})",
        settings.replay
    );
    let Some(report) = churn::run(&settings).await? else {
        bail!("PostgreSQL and aiosmtpd are needed (install them, or run .ci/run)");
    };
    print!("{report}");
    if !report.passed()
        && let Some(temp) = temporary
    {
        let kept = temp.keep();
        println!("logs kept in {}", kept.display());
    }
    Ok(report.passed())
}
