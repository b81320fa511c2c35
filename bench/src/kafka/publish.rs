//! 4. Event publish throughput: the order service's `EventPublisher` beside a raw `FutureProducer`
//!    with its settings, the same events sent by both.

use std::time::Instant;

use anyhow::{Context as _, Result};
use ordermesh_testkit::Broker;

use super::{
    ours::{publisher, send_ours},
    payload::{Event, order_events},
    raw::{raw_producer, send_raw},
    setup::{PARTITIONS, SMOKE_MESSAGES, drop_blocking, fresh_topic, per_second, size},
};
use crate::{
    Scale,
    compare::{Better, Comparison, interleave},
};

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
