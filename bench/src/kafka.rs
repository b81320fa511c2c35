//! The Kafka hops beside raw rdkafka with the same settings: publishing OrderPlaced (the order
//! service's `EventPublisher`), consuming it (the notifier's email consumer, database record
//! included), and the two end to end (accepted -> notification handled).
//!
//! Every benchmark starts its own embedded broker (librdkafka's mock cluster, in process) and uses
//! fresh topics and consumer groups per round and per side, so no round reads what another wrote.
//! Payloads are real OrderPlaced events, encoded as the order service encodes them, with their
//! CloudEvents headers; they are built before any clock starts.
//!
//! Two things about the embedded broker shape what is timed, for both sides alike:
//! - a consumer group's first join waits `group.initial.rebalance.delay.ms`, 3 s on the mock
//!   cluster, and the safe rdkafka API cannot lower it. Consumer clocks therefore start once the
//!   consumer has handled its first message, never at start-up;
//! - the mock (and tansu 0.6 too) holds a fetch that finds no data for the whole
//!   `fetch.wait.max.ms` (500 ms by default) instead of answering as soon as data arrives, as
//!   Kafka does. That does not touch the throughput figures (the topics are full or being
//!   filled), but it would be the whole latency of a lone event; see [`event_latency`].

use std::{
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _, future, stream};
use ordermesh::{
    events, events::CloudEventHeaders, proto::events::v1::OrderPlaced, proto::order::v1::Customer,
    proto::order::v1::LineItem, proto::types::v1::Money, timestamp,
};
use ordermesh_kafka::KafkaHeaders;
use ordermesh_notifier::{Channel, Stats};
use ordermesh_order::publisher::EventPublisher;
use ordermesh_testkit::{Broker, Tansu};
use rdkafka::{
    Message as _,
    consumer::{CommitMode, Consumer as _, StreamConsumer},
    error::KafkaError,
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
    util::Timeout,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    Scale,
    compare::{Better, Comparison, interleave},
};

/// Partitions of every benchmark topic, as the services create theirs.
const PARTITIONS: i32 = ordermesh_kafka::DEFAULT_PARTITIONS;
/// Bound on one publish, retries included (`message.timeout.ms`), as the benchmarks give it.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Sends in flight at once in the publish benchmark (and when filling topics).
const IN_FLIGHT: usize = 256;
/// A wait that sees no progress for this long fails the benchmark instead of hanging it.
const STALL: Duration = Duration::from_secs(30);
/// How often the notifier's counters are read in the throughput benchmark: tokio's timer
/// resolution, so the start and end of a window are each known to within a millisecond.
const POLL: Duration = Duration::from_millis(1);
/// How often a latency watcher reads its counter. It sleeps on a blocking thread, not on tokio's
/// timer (1 ms resolution), so the figure is not rounded to whole milliseconds.
const WATCH_INTERVAL: Duration = Duration::from_micros(50);
/// Pause between two events of the latency benchmark, so each event crosses an idle pipeline.
const GAP: Duration = Duration::from_millis(5);
/// Messages of a smoke run at most: it checks the harness, in seconds.
const SMOKE_MESSAGES: usize = 200;
/// Runs of kcat per round, of which the fastest counts.
const KCAT_RUNS: usize = 3;
/// Events per latency round at most: they go one at a time.
const LATENCY_EVENTS: usize = 200;
/// The notifier's default `fetch.wait.max.ms`, for the throughput benchmarks.
const DEFAULT_FETCH_WAIT_MS: u64 = 500;
/// `fetch.wait.max.ms` of both sides in the latency benchmark. Kafka answers a waiting fetch as
/// soon as data arrives, but the embedded mock and tansu hold it for this long whatever comes, so
/// with the default (500 ms) both sides measure the broker's wait, not the pipeline. Both sides
/// get the same setting (the notifier's `NOTIFIER_FETCH_WAIT_MAX_MS`).
const LATENCY_FETCH_WAIT_MS: u64 = 5;
/// Events per latency round of a smoke run.
const SMOKE_LATENCY_EVENTS: usize = 10;

/// Event publish throughput: `EventPublisher` against a raw `FutureProducer` with its settings.
///
/// Each round and side: a fresh topic and producer, one warm-up publish (connections, metadata and
/// the idempotent producer id are start-up, not throughput), then `messages` OrderPlaced events
/// with up to 256 sends in flight, each waiting for its acknowledgement. Figure: events
/// acknowledged per second.
pub async fn publish(scale: &Scale) -> Result<Vec<Comparison>> {
    let (rounds, messages) = size(scale, SMOKE_MESSAGES);
    let broker = Broker::embedded(&[], PARTITIONS)?;
    // Built once: both sides send the very same payloads, keys and headers every round.
    let events = order_events(messages + 1)?;
    let mut comparison = Comparison::new(
        "Event publish throughput, ours vs raw rdkafka with identical settings",
        "events/s",
        Better::Higher,
        Some(0.85),
    );
    let measured = interleave(
        &mut comparison,
        rounds,
        || publish_ours(&broker, &events),
        || publish_raw(&broker, &events),
    )
    .await;
    drop(broker);
    measured?;
    Ok(vec![comparison])
}

async fn publish_ours(broker: &Broker, events: &[Event]) -> Result<f64> {
    let topic = fresh_topic(broker, "publish-ours").await?;
    let publisher = publisher(broker, &topic)?;
    let measured = async {
        let (warm_up, timed) = events.split_first().context("no events")?;
        send_ours(&publisher, std::slice::from_ref(warm_up)).await?;
        let started = Instant::now();
        send_ours(&publisher, timed).await?;
        Ok(per_second(timed.len(), started.elapsed()))
    }
    .await;
    drop_blocking(publisher).await;
    measured
}

async fn publish_raw(broker: &Broker, events: &[Event]) -> Result<f64> {
    let topic = fresh_topic(broker, "publish-raw").await?;
    let producer = raw_producer(&broker.bootstrap_servers())?;
    let measured = async {
        let (warm_up, timed) = events.split_first().context("no events")?;
        send_raw(&producer, &topic, std::slice::from_ref(warm_up)).await?;
        let started = Instant::now();
        send_raw(&producer, &topic, timed).await?;
        Ok(per_second(timed.len(), started.elapsed()))
    }
    .await;
    drop_blocking(producer).await;
    measured
}

/// Notifier consume throughput on a pre-filled topic: the notifier (email channel only, log-only
/// delivery, a fresh SQLite file) against a raw `StreamConsumer` that decodes each event and
/// stores its offset as the notifier does, and against kcat.
///
/// Each round fills one fresh topic with `messages` events; then ours, raw and kcat each read all
/// of it (ours and raw in fresh consumer groups), in an order that rotates every round so no side
/// always goes first. (Not [`interleave`]: three sides share one filled topic per round; ours is
/// measured once and its figure stands in both rows.)
///
/// Figures are events per second over a window that opens once a consumer has handled its first
/// events, so the 3 s group join of the embedded broker and the notifier's start-up (database
/// migrations, gRPC server) are left out: ours counts the events its stats gain between the first
/// change it sees and the last (read every millisecond); raw, the events after its first. kcat
/// joins no group and is timed as a process: its figure is `messages - 1` over the run time of
/// `kcat -c messages` less that of `kcat -c 1` (process start, metadata, offset lookup, first
/// fetch), the fastest of 3 runs each.
///
/// Ours records each notification in SQLite before storing the offset (what makes a redelivery
/// recognisable), so it is expected to be slower than the raw loop: that is the cost measured.
pub async fn consume(scale: &Scale) -> Result<Vec<Comparison>> {
    let (rounds, messages) = size(scale, SMOKE_MESSAGES);
    let broker = Broker::embedded(&[], PARTITIONS)?;
    let kcat = kcat_available().await;
    let mut vs_raw = Comparison::new(
        "Notifier consume throughput vs raw rdkafka consumer",
        "events/s",
        Better::Higher,
        Some(0.8),
    );
    let mut vs_kcat = Comparison::new(
        if kcat {
            "Notifier consume throughput vs kcat"
        } else {
            "Notifier consume throughput vs kcat (skipped: no kcat on PATH)"
        },
        "events/s",
        Better::Higher,
        Some(1.0),
    );
    let measured = async {
        for round in 0..rounds {
            let topic = fresh_topic(&broker, "consume").await?;
            send_raw_to(
                &broker.bootstrap_servers(),
                &topic,
                &order_events(messages)?,
            )
            .await?;
            let (mut ours, mut raw, mut tool) = (None, None, None);
            for side in rotation(round) {
                match side {
                    Side::Ours => ours = Some(consume_ours(&broker, &topic, messages).await?),
                    Side::Raw => raw = Some(consume_raw(&broker, &topic, messages).await?),
                    Side::Kcat if kcat => {
                        tool = Some(consume_kcat(&broker, &topic, messages).await?);
                    }
                    Side::Kcat => {}
                }
            }
            let ours = ours.context("ours not measured")?;
            vs_raw.ours.push(ours);
            vs_raw.raw.push(raw.context("raw not measured")?);
            if let Some(tool) = tool {
                vs_kcat.ours.push(ours);
                vs_kcat.raw.push(tool);
            }
        }
        anyhow::Ok(())
    }
    .await;
    drop(broker);
    measured?;
    Ok(vec![vs_raw, vs_kcat])
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Ours,
    Raw,
    Kcat,
}

/// The order the three sides run in, in `round`: each goes first once every three rounds.
fn rotation(round: usize) -> impl Iterator<Item = Side> {
    const SIDES: [Side; 3] = [Side::Ours, Side::Raw, Side::Kcat];
    (0..SIDES.len()).map(move |i| SIDES[(round + i) % SIDES.len()])
}

async fn consume_ours(broker: &Broker, topic: &str, messages: usize) -> Result<f64> {
    let notifier = Notifier::start(broker, topic, DEFAULT_FETCH_WAIT_MS).await?;
    let measured = async {
        let target = messages as u64;
        let (opened, before) = notifier.wait_for(1).await?;
        let (closed, _) = notifier.wait_for(target).await?;
        ensure!(
            before < target,
            "the notifier handled all {messages} events within one poll: too few to time"
        );
        notifier.all_sent(target)?;
        Ok(per_second((target - before) as usize, closed - opened))
    }
    .await;
    notifier.stop().await?;
    measured
}

async fn consume_raw(broker: &Broker, topic: &str, messages: usize) -> Result<f64> {
    let consumer = raw_consumer(&broker.bootstrap_servers(), topic, DEFAULT_FETCH_WAIT_MS)?;
    let measured = async {
        // The window opens after the first event, as ours opens after its first handled ones.
        next_event(&consumer).await?;
        let opened = Instant::now();
        for _ in 1..messages {
            next_event(&consumer).await?;
        }
        Ok(per_second(messages - 1, opened.elapsed()))
    }
    .await;
    commit_and_close(consumer).await;
    measured
}

async fn consume_kcat(broker: &Broker, topic: &str, messages: usize) -> Result<f64> {
    let brokers = broker.bootstrap_servers();
    // Runs of the same command stopping after the first message and after all of them: the
    // difference is the time kcat took for all but the first, as ours and raw are timed. Both
    // are a process start apart from a few milliseconds of reading, so each is the fastest of a
    // few runs (the least disturbed by the machine).
    let mut first = Duration::MAX;
    let mut all = Duration::MAX;
    for _ in 0..KCAT_RUNS {
        let (took, read) = kcat_read(&brokers, topic, 1).await?;
        ensure!(read == 1, "kcat read {read} messages, asked for 1");
        first = first.min(took);
        let (took, read) = kcat_read(&brokers, topic, messages).await?;
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

async fn kcat_available() -> bool {
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
async fn kcat_read(brokers: &str, topic: &str, count: usize) -> Result<(Duration, usize)> {
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

/// End-to-end latency of one event, order accepted -> notification handled: `EventPublisher`
/// into the notifier (email only, log-only delivery) against a raw `FutureProducer` (the
/// publisher's settings) into a raw `StreamConsumer` (the notifier consumer's settings) that
/// decodes the event and stores its offset, in this process.
///
/// Each round and side: fresh topic, group and database; one warm-up event handled first (group
/// join, connections); then `min(messages, 500)` events (10 in a smoke run) one at a time: start
/// a watcher on the consumer's count of handled events, publish (waiting for the acknowledgement,
/// as the order service does), wait until the count moves past the event, 5 ms pause, next.
/// Latency = when the watcher saw the count move - when publish was called. Ours reads the
/// notifier's stats counters, raw a counter its loop bumps, by the same watcher (every 50 µs on a
/// blocking thread). Rows: the p50 and p99 of each round, in ms.
///
/// Runs on tansu where it is installed, else on the embedded broker. Neither answers a waiting
/// fetch when an event arrives (Kafka does): with the default `fetch.wait.max.ms` (500 ms) a lone
/// event would wait out the rest of that fetch on both sides, and the benchmark would measure the
/// broker. Both sides therefore fetch with [`LATENCY_FETCH_WAIT_MS`].
pub async fn event_latency(scale: &Scale) -> Result<Vec<Comparison>> {
    let (rounds, messages) = size(scale, SMOKE_MESSAGES);
    let events = messages.min(if scale.smoke {
        SMOKE_LATENCY_EVENTS
    } else {
        LATENCY_EVENTS
    });
    // An independent broker where there is one; the row names say which.
    let dir = tempfile::tempdir()?;
    let (broker, on) = match Tansu::start_in(dir.path()).await? {
        Some(tansu) => (Broker::Tansu(Box::new(tansu)), "tansu"),
        None => (Broker::embedded(&[], PARTITIONS)?, "embedded broker"),
    };
    let mut p50 = Comparison::new(
        &format!("Event latency p50, accepted -> notified, vs raw rdkafka pair ({on})"),
        "ms",
        Better::Lower,
        Some(1.2),
    );
    let mut p99 = Comparison::new(
        &format!("Event latency p99, accepted -> notified, vs raw rdkafka pair ({on})"),
        "ms",
        Better::Lower,
        Some(1.5),
    );
    // One run gives both percentiles: the closures return p50 to `interleave` and keep p99 here,
    // pushed in round order like the p50s.
    let (ours_p99, raw_p99) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let measured = interleave(
        &mut p50,
        rounds,
        || async {
            let latencies = latency_ours(&broker, events).await?;
            keep(&ours_p99, percentile_ms(&latencies, 0.99));
            Ok(percentile_ms(&latencies, 0.50))
        },
        || async {
            let latencies = latency_raw(&broker, events).await?;
            keep(&raw_p99, percentile_ms(&latencies, 0.99));
            Ok(percentile_ms(&latencies, 0.50))
        },
    )
    .await;
    drop(broker);
    measured?;
    p99.ours = ours_p99.into_inner().unwrap_or_else(|e| e.into_inner());
    p99.raw = raw_p99.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(vec![p50, p99])
}

fn keep(figures: &Mutex<Vec<f64>>, figure: f64) {
    figures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(figure);
}

async fn latency_ours(broker: &Broker, count: usize) -> Result<Vec<Duration>> {
    let topic = fresh_topic(broker, "latency-ours").await?;
    let notifier = Notifier::start(broker, &topic, LATENCY_FETCH_WAIT_MS).await?;
    let publisher = publisher(broker, &topic)?;
    let measured = async {
        let stats = notifier.stats.clone();
        let events = order_events(count + 1)?;
        let publish = |event| send_ours(&publisher, std::slice::from_ref(event));
        let latencies = one_at_a_time(&events, move || handled(&stats), publish).await?;
        notifier.all_sent(count as u64 + 1)?;
        Ok(latencies)
    }
    .await;
    drop_blocking(publisher).await;
    notifier.stop().await?;
    measured
}

async fn latency_raw(broker: &Broker, count: usize) -> Result<Vec<Duration>> {
    let brokers = broker.bootstrap_servers();
    let topic = fresh_topic(broker, "latency-raw").await?;
    let producer = raw_producer(&brokers)?;
    let consumer = raw_consumer(&brokers, &topic, LATENCY_FETCH_WAIT_MS)?;
    // The consumer loop runs in a task of its own, as the notifier's does.
    let handled = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let consuming = tokio::spawn(consume_loop(consumer, handled.clone(), stop.clone()));
    let publish = |event| send_raw(&producer, &topic, std::slice::from_ref(event));
    let measured = match order_events(count + 1) {
        Ok(events) => {
            one_at_a_time(&events, move || handled.load(Ordering::Relaxed), publish).await
        }
        Err(error) => Err(error),
    };
    stop.cancel();
    let (consumer, failed) = consuming.await?;
    commit_and_close(consumer).await;
    drop_blocking(producer).await;
    if let Some(error) = failed {
        return Err(error.context("raw consumer"));
    }
    measured
}

/// Sends the first of `events` and waits until it is handled (warm-up), then the others one at a
/// time, each timed from its publish until `handled()` counts it.
async fn one_at_a_time<'e, P, F>(
    events: &'e [Event],
    handled: impl Fn() -> u64 + Clone + Send + 'static,
    publish: P,
) -> Result<Vec<Duration>>
where
    P: Fn(&'e Event) -> F,
    F: Future<Output = Result<()>>,
{
    let (warm_up, timed) = events.split_first().context("no events")?;
    publish(warm_up).await?;
    Watch::start(handled.clone(), 1).seen().await?;
    let mut latencies = Vec::with_capacity(timed.len());
    for (i, event) in timed.iter().enumerate() {
        // Watching before publishing: the event may be handled before its acknowledgement is back.
        let watch = Watch::start(handled.clone(), i as u64 + 2);
        let started = Instant::now();
        publish(event).await?;
        latencies.push(watch.seen().await? - started);
        tokio::time::sleep(GAP).await;
    }
    Ok(latencies)
}

/// Watches a counter on a blocking thread until it reaches a target; dropped, it stops watching.
struct Watch {
    seen: JoinHandle<Result<Instant>>,
    abandoned: Arc<AtomicBool>,
}

impl Watch {
    fn start(count: impl Fn() -> u64 + Send + 'static, target: u64) -> Self {
        let abandoned = Arc::new(AtomicBool::new(false));
        let given_up = abandoned.clone();
        let seen = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + STALL;
            loop {
                if count() >= target {
                    return Ok(Instant::now());
                }
                if given_up.load(Ordering::Relaxed) {
                    bail!("no longer watched");
                }
                if Instant::now() > deadline {
                    bail!("event {target} not handled within {STALL:?}");
                }
                std::thread::sleep(WATCH_INTERVAL);
            }
        });
        Self { seen, abandoned }
    }

    /// When the counter was seen at its target.
    async fn seen(mut self) -> Result<Instant> {
        (&mut self.seen).await?
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

/// The raw consumer of the latency benchmark: handles events until `stop`, counting each, and
/// gives the consumer back to be committed and closed, with the error that ended it early, if one
/// did.
async fn consume_loop(
    consumer: StreamConsumer,
    handled: Arc<AtomicU64>,
    stop: CancellationToken,
) -> (StreamConsumer, Option<anyhow::Error>) {
    loop {
        tokio::select! {
            // Only between messages, as the notifier's loop.
            _ = stop.cancelled() => return (consumer, None),
            event = next_event(&consumer) => match event {
                Ok(()) => {
                    handled.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => return (consumer, Some(error)),
            },
        }
    }
}

/// A running notifier: email channel only, log-only delivery, its own SQLite file and consumer
/// group, served on a free port.
struct Notifier {
    stats: Arc<Stats>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ordermesh_notifier::RunError>>,
    /// Holds the database; removed once the notifier has stopped.
    _database: tempfile::TempDir,
}

impl Notifier {
    async fn start(broker: &Broker, topic: &str, fetch_wait_ms: u64) -> Result<Self> {
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
            fetch_wait_max_ms: fetch_wait_ms,
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
    async fn wait_for(&self, target: u64) -> Result<(Instant, u64)> {
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
    fn all_sent(&self, expected: u64) -> Result<()> {
        let sent = self.stats.sent.load(Ordering::Relaxed);
        ensure!(
            sent == expected,
            "the notifier sent {sent} of {expected} events ({:?})",
            self.stats
        );
        Ok(())
    }

    /// Stops the notifier: its consumer finishes the event in hand, commits and leaves its group.
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// Events the notifier has finished with, whatever the outcome.
fn handled(stats: &Stats) -> u64 {
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

/// A `FutureProducer` with exactly `EventPublisher`'s settings (order/src/publisher.rs).
fn raw_producer(brokers: &str) -> Result<FutureProducer> {
    Ok(ordermesh_kafka::KafkaSettings::plaintext(brokers)
        .client_config("ordermesh-order")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", ACK_TIMEOUT.as_millis().to_string())
        .create()?)
}

/// A `StreamConsumer` of `topic` in a fresh group with exactly the settings of the notifier's
/// channel consumer (notifier/src/consumer.rs, `ChannelConsumer::new`), the session timeout taken
/// from the same configuration the notifier starts from.
fn raw_consumer(brokers: &str, topic: &str, fetch_wait_ms: u64) -> Result<StreamConsumer> {
    let session_timeout = ordermesh_notifier::Config::from_env()?.session_timeout_ms;
    let consumer: StreamConsumer = ordermesh_kafka::KafkaSettings::plaintext(brokers)
        .client_config("ordermesh-notifier-email")
        .set("group.id", fresh_name("bench-raw"))
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_timeout.to_string())
        .set("heartbeat.interval.ms", (session_timeout / 4).to_string())
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        // The notifier's STATISTICS_INTERVAL (for its lag metric).
        .set("statistics.interval.ms", "5000")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Receives one message, decodes it as OrderPlaced and stores its offset. Consumer errors are
/// reports (librdkafka reconnects by itself): the loop waits and goes on, as the notifier's does.
async fn next_event(consumer: &StreamConsumer) -> Result<()> {
    loop {
        let received = tokio::time::timeout(STALL, consumer.recv())
            .await
            .context("no message for a while")?;
        match received {
            Ok(message) => {
                let event = events::decode_order_placed(message.payload().unwrap_or_default())?;
                std::hint::black_box(event);
                consumer.store_offset_from_message(&message)?;
                return Ok(());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Commits the stored offsets and closes `consumer`, on a blocking thread (both wait for the
/// broker), as the notifier does on shutdown. Outside every measurement.
async fn commit_and_close(consumer: StreamConsumer) {
    let _ = tokio::task::spawn_blocking(move || {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::debug!(%error, "final commit of a benchmark consumer failed"),
        }
        drop(consumer);
    })
    .await;
}

/// Drops a Kafka client on a blocking thread: librdkafka's destroy waits for its threads.
async fn drop_blocking<T: Send + 'static>(client: T) {
    let _ = tokio::task::spawn_blocking(move || drop(client)).await;
}

async fn send_ours(publisher: &EventPublisher, events: &[Event]) -> Result<()> {
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

/// Sends `events` as `EventPublisher` does (key, payload, CloudEvents headers), waiting for each
/// acknowledgement, up to [`IN_FLIGHT`] at once.
async fn send_raw(producer: &FutureProducer, topic: &str, events: &[Event]) -> Result<()> {
    stream::iter(events)
        .map(|event| async move {
            let record = FutureRecord::to(topic)
                .key(event.order_id.as_bytes())
                .payload(&event.payload)
                .headers(event.headers.to_kafka());
            producer
                .send(record, Timeout::Never)
                .await
                .map(|_| ())
                .map_err(|(error, _)| error)
        })
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|()| future::ok(()))
        .await
        .context("publish through FutureProducer")
}

/// Fills `topic` with `events` through a raw producer of its own.
async fn send_raw_to(brokers: &str, topic: &str, events: &[Event]) -> Result<()> {
    let producer = raw_producer(brokers)?;
    let sent = send_raw(&producer, topic, events).await;
    drop_blocking(producer).await;
    sent
}

/// An encoded OrderPlaced ready to send.
struct Event {
    order_id: String,
    payload: Vec<u8>,
    headers: CloudEventHeaders,
}

/// `count` OrderPlaced events as the order service publishes them: its id formats, a customer with
/// both contacts, two line items, a total, a payment id.
fn order_events(count: usize) -> Result<Vec<Event>> {
    let placed_at = timestamp::now_millis();
    (0..count)
        .map(|i| {
            let price = |minor_units| Money {
                currency_code: "EUR".into(),
                minor_units,
            };
            let event = OrderPlaced {
                event_id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
                order_id: format!("ord_{}", uuid::Uuid::now_v7().simple()),
                customer: Some(Customer {
                    email: format!("customer{i}@example.com"),
                    phone: "+14155550100".into(),
                }),
                items: vec![
                    LineItem {
                        sku: "SKU-BOOK-0042".into(),
                        quantity: 2,
                        unit_price: Some(price(1_999)),
                    },
                    LineItem {
                        sku: "SKU-MUG-0007".into(),
                        quantity: 1,
                        unit_price: Some(price(1_250)),
                    },
                ],
                total: Some(price(5_248)),
                placed_at: Some(timestamp::from_millis(placed_at)),
                payment_id: format!("pay_{}", uuid::Uuid::now_v7().simple()),
            };
            Ok(Event {
                payload: events::encode_order_placed(&event)?,
                headers: CloudEventHeaders::order_placed(&event),
                order_id: event.order_id,
            })
        })
        .collect()
}

/// Rounds and messages per round: a smoke run is capped to 2 rounds of `smoke_messages`.
/// At least 2 messages, so a window that opens after the first still holds one.
fn size(scale: &Scale, smoke_messages: usize) -> (usize, usize) {
    let (rounds, messages) = if scale.smoke {
        (scale.rounds.clamp(1, 2), scale.messages.min(smoke_messages))
    } else {
        (scale.rounds.max(1), scale.messages)
    };
    (rounds, messages.max(2))
}

/// A topic nobody used, created on `broker`.
async fn fresh_topic(broker: &Broker, what: &str) -> Result<String> {
    let topic = fresh_name(&format!("bench-{what}"));
    broker.create_topic(&topic, PARTITIONS).await?;
    Ok(topic)
}

/// The order service's publisher for `topic`, its instruments going nowhere.
fn publisher(broker: &Broker, topic: &str) -> Result<EventPublisher> {
    Ok(EventPublisher::new(
        &ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
        topic,
        ACK_TIMEOUT,
        &opentelemetry::global::meter("bench"),
    )?)
}

fn fresh_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// The `q` quantile of `latencies` (nearest rank), in milliseconds; NaN if there are none.
fn percentile_ms(latencies: &[Duration], q: f64) -> f64 {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted
        .get(rank - 1)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1_000.0)
}

#[cfg(test)]
mod tests {
    //! The helpers; each benchmark's smoke run is `bench/tests/smoke.rs`, through the binary.

    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let latencies: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(percentile_ms(&latencies, 0.50), 50.0);
        assert_eq!(percentile_ms(&latencies, 0.99), 99.0);
        assert_eq!(percentile_ms(&[ms(7)], 0.99), 7.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn every_side_goes_first_in_turn() {
        let firsts: Vec<String> = (0..3)
            .map(|r| format!("{:?}", rotation(r).next()))
            .collect();
        assert_eq!(firsts, ["Some(Ours)", "Some(Raw)", "Some(Kcat)"]);
    }
}
