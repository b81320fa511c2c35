//! A short process-churn campaign (`ordermesh_bench::churn`, the library behind `ordermesh-churn`):
//! notifier replicas sharing one PostgreSQL database are started, SIGTERMed and SIGKILLed while
//! events are published in bursts; once the last replicas have drained, every event has exactly one
//! SENT row per channel and reached the SMTP server and the SMS gateway, and the only repeats there
//! are sends a SIGKILL interrupted, at most one per partition per kill. On PostgreSQL only: several
//! replicas on one database is what PostgreSQL is for here. The seed is printed;
//! `ORDERMESH_CHURN_SEED=<seed>` replays it.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, ensure};
use ordermesh_bench::churn::{self, Settings, plan::Shape};

fn seed() -> Result<u64> {
    match std::env::var("ORDERMESH_CHURN_SEED") {
        Ok(seed) => seed.parse().context("ORDERMESH_CHURN_SEED: a number"),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_stopped_and_killed_while_orders_flow_notify_each_event_once() -> Result<()>
{
    // Arrange: 200 events in 8 bursts over 10 steps of up to 3 replicas, pauses of 0.2 to 3 s.
    let dir = tempfile::tempdir()?;
    let seed = seed()?;
    let mut settings = Settings::new(
        seed,
        PathBuf::from(env!("CARGO_BIN_EXE_notifier")),
        dir.path().to_owned(),
    );
    settings.shape = Shape {
        events: 200,
        bursts: 8,
        steps: 10,
        max_pause: Duration::from_millis(3_000),
        ..Shape::default()
    };
    settings.drain_timeout = Duration::from_secs(90);
    settings.replay =
        format!("ORDERMESH_CHURN_SEED={seed} cargo test -p ordermesh-notifier --test churn");
    eprintln!(
        "notifier churn campaign, seed {seed} (replay: {})",
        settings.replay
    );

    // Act
    let Some(report) = churn::run(&settings).await? else {
        return Ok(());
    };

    // Assert
    eprint!("{report}");
    if !report.passed() {
        // The replicas' logs and the Maildir, for whoever reads the failure.
        let kept = dir.keep();
        eprintln!("logs kept in {}", kept.display());
    }
    ensure!(report.passed(), "{report}");
    Ok(())
}
