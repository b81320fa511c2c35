//! kcat, the second baseline of the consume benchmark: librdkafka's own command-line consumer,
//! printing each message's offset and nothing more (no decoding, no database, no consumer group).
//! It can only be timed as a whole process, which is why its figure is worked out differently from
//! ours and raw: see [`throughput`]. The benchmark skips it when kcat is not on PATH.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use ordermesh_testkit::Broker;

use super::setup::{STALL, per_second};

/// Runs of kcat per round, of which the fastest counts.
const KCAT_RUNS: usize = 3;

/// Events per second kcat reads from `topic` (holding `messages`): `messages - 1` over the run
/// time of `kcat -c messages` less that of `kcat -c 1`, the fastest of [`KCAT_RUNS`] runs each.
pub(super) async fn throughput(broker: &Broker, topic: &str, messages: usize) -> Result<f64> {
    let brokers = broker.bootstrap_servers();
    // Runs of the same command stopping after the first message and after all of them: the
    // difference is the time kcat took for all but the first, as ours and raw are timed. Both
    // are a process start apart from a few milliseconds of reading, so each is the fastest of a
    // few runs (the least disturbed by the machine).
    let mut first = Duration::MAX;
    let mut all = Duration::MAX;
    for _ in 0..KCAT_RUNS {
        let (took, read) = run(&brokers, topic, 1).await?;
        ensure!(read == 1, "kcat read {read} messages, asked for 1");
        first = first.min(took);
        let (took, read) = run(&brokers, topic, messages).await?;
        ensure!(read == messages, "kcat read {read} of {messages} messages");
        all = all.min(took);
    }
    // Should noise still make the short run the longer one, the whole run time is the fallback.
    let reading = all
        .checked_sub(first)
        .filter(|d| !d.is_zero())
        .unwrap_or(all);
    Ok(per_second(messages - 1, reading))
}

/// Whether kcat is on PATH (and runs).
pub(super) async fn available() -> bool {
    tokio::process::Command::new("kcat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success())
}

/// Runs kcat over `topic` from the beginning until it has read `count` messages (or reached the
/// end), one line per message: its run time and the lines it printed.
///
/// `-c` rather than the end (`-e`) ends the run: kcat sees the end of a partition only from a
/// fetch that finds nothing, and the embedded broker holds such a fetch for `fetch.wait.max.ms`
/// (500 ms), which would be most of kcat's time.
async fn run(brokers: &str, topic: &str, count: usize) -> Result<(Duration, usize)> {
    let count = count.to_string();
    let started = Instant::now();
    let output = tokio::process::Command::new("kcat")
        .args([
            "-b",
            brokers,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args(["-c", &count, "-f", "%o\n"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(STALL, output)
        .await
        .context("kcat did not finish")??;
    let elapsed = started.elapsed();
    ensure!(
        output.status.success(),
        "kcat failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = output
        .stdout
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .count();
    Ok((elapsed, lines))
}
