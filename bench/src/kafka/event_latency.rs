//! 6. End-to-end latency of one event, order accepted -> notification handled, ours beside a raw
//!    producer -> consumer pair; and how a lone event is timed (one at a time, a counter watched
//!    on a blocking thread), since that is finer than tokio's timer can see.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ordermesh_testkit::{Broker, Tansu};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    ours::{Notifier, handled, publisher, send_ours},
    payload::{Event, order_events},
    raw::{commit_and_close, consume_loop, raw_consumer, raw_producer, send_raw},
    setup::{PARTITIONS, SMOKE_MESSAGES, STALL, drop_blocking, fresh_topic, size},
};
use crate::{
    Scale,
    compare::{Better, Comparison, interleave},
};

/// How often a latency watcher reads its counter. It sleeps on a blocking thread, not on tokio's
/// timer (1 ms resolution), so the figure is not rounded to whole milliseconds.
const WATCH_INTERVAL: Duration = Duration::from_micros(50);
/// Pause between two events of the latency benchmark, so each event crosses an idle pipeline.
const GAP: Duration = Duration::from_millis(5);
/// Events per latency round at most: they go one at a time.
const LATENCY_EVENTS: usize = 200;
/// `fetch.wait.max.ms` of both sides in the latency benchmark. Kafka answers a waiting fetch as
/// soon as data arrives, but the embedded mock and tansu hold it for this long whatever comes, so
/// with the default (500 ms) both sides measure the broker's wait, not the pipeline. Both sides
/// get the same setting (the notifier's `NOTIFIER_FETCH_WAIT_MAX_MS`).
const LATENCY_FETCH_WAIT_MS: u64 = 5;
/// Events per latency round of a smoke run.
const SMOKE_LATENCY_EVENTS: usize = 10;

/// End-to-end latency of one event, order accepted -> notification handled: `EventPublisher`
/// into the notifier (email only, log-only delivery) against a raw `FutureProducer` (the
/// publisher's settings) into a raw `StreamConsumer` (the notifier consumer's settings) that
/// decodes the event and stores its offset, in this process.
///
/// Each round and side: fresh topic, group and database; one warm-up event handled first (group
/// join, connections); then `min(messages, 200)` events (10 in a smoke run) one at a time: start
/// a watcher on the consumer's count of handled events, publish (waiting for the acknowledgement,
/// as the order service does), wait until the count moves past the event, 5 ms pause, next.
/// Latency = when the watcher saw the count move - when publish was called. Ours reads the
/// notifier's stats counters, raw a counter its loop bumps, by the same watcher (every 50 µs on a
/// blocking thread). Rows: the p50 and p99 of each round, in ms.
///
/// Runs on tansu where it is installed, else on the embedded broker. Neither answers a waiting
/// fetch when an event arrives (Kafka does): with the default `fetch.wait.max.ms` (500 ms) a lone
/// event would wait out the rest of that fetch on both sides, and the benchmark would measure the
/// broker. Both sides therefore fetch with `LATENCY_FETCH_WAIT_MS` (5 ms).
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
}
