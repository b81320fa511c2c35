//! Ours, as the Kafka benchmarks run it: the order service's `EventPublisher` on the producer
//! side, and on the consumer side a whole notifier (email channel only, log-only delivery, its own
//! SQLite file), read through its stats counters. The raw baselines these are compared with, set
//! up with the very same settings, are in `raw`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _, future, stream};
use ordermesh_notifier::{Channel, Stats};
use ordermesh_order::publisher::EventPublisher;
use ordermesh_testkit::Broker;
use tokio::{sync::oneshot, task::JoinHandle};

use super::{
    payload::Event,
    setup::{ACK_TIMEOUT, IN_FLIGHT, PARTITIONS, STALL, fresh_name},
};

/// How often the notifier's counters are read in the throughput benchmark: tokio's timer
/// resolution, so the start and end of a window are each known to within a millisecond.
const POLL: Duration = Duration::from_millis(1);

/// The order service's publisher for `topic`, its instruments going nowhere.
pub(super) fn publisher(broker: &Broker, topic: &str) -> Result<EventPublisher> {
    Ok(EventPublisher::new(
        &ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
        topic,
        ACK_TIMEOUT,
        &opentelemetry::global::meter("bench"),
    )?)
}

pub(super) async fn send_ours(publisher: &EventPublisher, events: &[Event]) -> Result<()> {
    stream::iter(events)
        .map(|event| {
            publisher.publish(
                &event.order_id,
                &event.payload,
                &event.headers,
                opentelemetry::Context::new(),
            )
        })
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|_| future::ok(()))
        .await
        .context("publish through EventPublisher")
}

/// A running notifier: email channel only, log-only delivery, its own SQLite file and consumer
/// group, served on a free port.
pub(super) struct Notifier {
    pub(super) stats: Arc<Stats>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ordermesh_notifier::RunError>>,
    /// Holds the database; removed once the notifier has stopped.
    _database: tempfile::TempDir,
}

impl Notifier {
    pub(super) async fn start(broker: &Broker, topic: &str, fetch_wait_ms: u64) -> Result<Self> {
        // The embedded broker cannot create topics on request; the dead-letter topic must exist
        // or the notifier keeps trying to create it in the background.
        broker
            .create_topic(
                &ordermesh_notifier::dead_letter::topic(topic, Channel::Email),
                PARTITIONS,
            )
            .await?;
        let database = tempfile::tempdir()?;
        let config = ordermesh_notifier::Config {
            database_url: format!("sqlite://{}", database.path().join("notifier.db").display()),
            kafka: ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
            events_topic: topic.to_owned(),
            // One channel, so one consumer group reads the topic.
            channels: vec![Channel::Email],
            email_group: fresh_name("bench-email"),
            fetch_wait_max: std::time::Duration::from_millis(fetch_wait_ms),
            // Log only: no mail server in the measurement. No tracing subscriber is installed in
            // the bench process, so those log lines cost nothing either.
            smtp_url: None,
            ..ordermesh_notifier::Config::from_env()?
        };
        let stats = Arc::new(Stats::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(ordermesh_notifier::run_with_stats(
            listener,
            config,
            async move {
                let _ = stopped.await;
            },
            [(Channel::Email, stats.clone())].into(),
        ));
        Ok(Self {
            stats,
            stop,
            task,
            _database: database,
        })
    }

    /// Waits until the notifier has handled `target` events: when it saw that, and the count then.
    pub(super) async fn wait_for(&self, target: u64) -> Result<(Instant, u64)> {
        let mut last = handled(&self.stats);
        let mut moved = Instant::now();
        loop {
            let count = handled(&self.stats);
            let now = Instant::now();
            if count >= target {
                return Ok((now, count));
            }
            if self.task.is_finished() {
                bail!("the notifier stopped after {count} of {target} events");
            }
            if count != last {
                (last, moved) = (count, now);
            } else if now - moved > STALL {
                bail!("the notifier is stuck at {count} of {target} events");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fails unless every event handled was sent: anything else would time another path.
    pub(super) fn all_sent(&self, expected: u64) -> Result<()> {
        let sent = self.stats.sent.load(Ordering::Relaxed);
        ensure!(
            sent == expected,
            "the notifier sent {sent} of {expected} events ({:?})",
            self.stats
        );
        Ok(())
    }

    /// Stops the notifier: its consumer finishes the event in hand, commits and leaves its group.
    pub(super) async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// Events the notifier has finished with, whatever the outcome.
pub(super) fn handled(stats: &Stats) -> u64 {
    [
        &stats.sent,
        &stats.duplicates,
        &stats.skipped,
        &stats.retrying,
        &stats.dead_lettered,
    ]
    .iter()
    .map(|counter| counter.load(Ordering::Relaxed))
    .sum()
}
