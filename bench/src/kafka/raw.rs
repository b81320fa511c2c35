//! The raw baselines of the Kafka benchmarks: plain rdkafka clients set exactly as ours are (the
//! order service's publisher, the notifier's channel consumer), doing what ours does per message
//! (send with key, payload and CloudEvents headers; decode OrderPlaced and store its offset) and
//! nothing more. Whatever ours costs beyond these is what the benchmarks measure. The clients take
//! their settings from the services' own `client_config` functions, so the two cannot drift apart
//! (they had: the raw consumer lacked the notifier's cooperative-sticky assignment).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _, future, stream};
use ordermesh::events;
use ordermesh_kafka::KafkaHeaders;
use rdkafka::{
    Message as _,
    consumer::{Consumer as _, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use tokio_util::sync::CancellationToken;

use crate::grpc::cpu_seconds;

use super::{
    payload::{Event, order_events},
    setup::{ACK_TIMEOUT, IN_FLIGHT, STALL, drop_blocking, fresh_name},
};

/// A `FutureProducer` with `EventPublisher`'s own settings (order/src/publisher.rs).
pub(super) fn raw_producer(brokers: &str) -> Result<FutureProducer> {
    let kafka = ordermesh_kafka::KafkaSettings::plaintext(brokers);
    Ok(ordermesh_order::publisher::client_config(&kafka, ACK_TIMEOUT).create()?)
}

/// A `StreamConsumer` of `topic` in a fresh group with the notifier's own email consumer settings
/// (notifier/src/consumer.rs), from the configuration the notifier starts from, waiting at most
/// `fetch_wait_ms` for a fetch.
pub(super) fn raw_consumer(
    brokers: &str,
    topic: &str,
    fetch_wait_ms: u64,
) -> Result<StreamConsumer> {
    let config = ordermesh_notifier::Config {
        kafka: ordermesh_kafka::KafkaSettings::plaintext(brokers),
        fetch_wait_max: Duration::from_millis(fetch_wait_ms),
        ..ordermesh_notifier::Config::from_env()?
    };
    let consumer: StreamConsumer =
        ordermesh_notifier::consumer_client_config(&config, ordermesh_notifier::Channel::Email)
            .set("group.id", fresh_name("bench-raw"))
            .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Receives one message, decodes it as OrderPlaced and stores its offset. Consumer errors are
/// reports (librdkafka reconnects by itself): the loop waits and goes on, as the notifier's does.
pub(super) async fn next_event(consumer: &StreamConsumer) -> Result<()> {
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

/// The raw consumer of the latency benchmark: handles events until `stop`, counting each, and
/// gives the consumer back to be committed and closed, with the error that ended it early, if one
/// did.
pub(super) async fn consume_loop(
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

/// Commits the stored offsets and closes `consumer`, as the notifier does on shutdown (with the
/// same function). Outside every measurement.
pub(super) async fn commit_and_close(consumer: StreamConsumer) {
    if let Err(error) = ordermesh_kafka::commit_and_close(consumer).await {
        tracing::debug!(%error, "final commit of a benchmark consumer failed");
    }
}

/// This process's CPU time per event, in microseconds, of a raw consumer (a fresh group, the
/// notifier's settings) reading `count` events that are put on `topic` first, outside the
/// measurement. The clock starts once the first event is handled, so the group's join is left out.
pub(crate) async fn consume_cpu_us(brokers: &str, topic: &str, count: usize) -> Result<f64> {
    let count = count.max(2);
    send_raw_to(brokers, topic, &order_events(count)?).await?;
    let consumer = raw_consumer(brokers, topic, 500)?;
    let mut handled = next_event(&consumer).await;
    let before = cpu_seconds();
    for _ in 1..count {
        if handled.is_err() {
            break;
        }
        handled = next_event(&consumer).await;
    }
    let cpu = cpu_seconds() - before;
    commit_and_close(consumer).await;
    handled?;
    Ok(cpu * 1e6 / (count - 1) as f64)
}

/// Sends `events` as `EventPublisher` does (key, payload, CloudEvents headers), waiting for each
/// acknowledgement, up to [`IN_FLIGHT`] at once.
pub(super) async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    events: &[Event],
) -> Result<()> {
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
pub(super) async fn send_raw_to(brokers: &str, topic: &str, events: &[Event]) -> Result<()> {
    let producer = raw_producer(brokers)?;
    let sent = send_raw(&producer, topic, events).await;
    drop_blocking(producer).await;
    sent
}
