//! Order events on a topic, as the tools and tests see them: [`publish_order_placed`] and
//! [`publish_order_cancelled`] publish one as the order service's relay does (for the notifier's
//! tests and campaigns, which need events and no order service), and [`read_topic_events`] (or
//! [`read_events`], without the types) reads every one back for an audit: each partition from its
//! low watermark to the high watermark it had when reading began, with a consumer of no group
//! (assigned partitions, nothing committed), so reading changes nothing for anyone else.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, Result, bail};
use ordermesh::{
    events::{CloudEventHeaders, Event, encode},
    proto::events::v1::{OrderCancelled, OrderPlaced},
};
use ordermesh_kafka::{KafkaHeaders, KafkaSettings};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    producer::{FutureProducer, FutureRecord},
};

/// Publishes `event` on `topic` as the order service's relay does (protobuf payload, CloudEvents
/// headers, keyed by order id so one order's events share a partition), to `partition` if given,
/// and waits for the broker's acknowledgement.
pub async fn publish_order_placed(
    producer: &FutureProducer,
    topic: &str,
    event: &OrderPlaced,
    partition: Option<i32>,
) -> Result<()> {
    let headers = CloudEventHeaders::order_placed(event);
    publish(producer, topic, event, &event.order_id, headers, partition).await
}

/// [`publish_order_placed`] for OrderCancelled.
pub async fn publish_order_cancelled(
    producer: &FutureProducer,
    topic: &str,
    event: &OrderCancelled,
    partition: Option<i32>,
) -> Result<()> {
    let headers = CloudEventHeaders::order_cancelled(event);
    publish(producer, topic, event, &event.order_id, headers, partition).await
}

async fn publish<E: Event>(
    producer: &FutureProducer,
    topic: &str,
    event: &E,
    order_id: &str,
    headers: CloudEventHeaders,
    partition: Option<i32>,
) -> Result<()> {
    let payload = encode(event)?;
    let mut record = FutureRecord::to(topic)
        .key(order_id)
        .payload(&payload)
        .headers(headers.to_kafka());
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(error, _)| error)
        .with_context(|| format!("publish {} {} to {topic}", E::TYPE, headers.id))?;
    Ok(())
}

/// One message on the topic, as an audit reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicEvent {
    /// The message key: for order events, the order id.
    pub key: String,
    /// The `ce_id` header: the event id.
    pub id: String,
    /// The `ce_type` header (`ordermesh.events.v1.OrderPlaced`, ...); empty if there is none.
    pub ce_type: String,
}

/// Every message on `topic` as (key, `ce_id` header): for order events, (order id, event id).
pub async fn read_events(
    kafka: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(String, String)>> {
    Ok(read_topic_events(kafka, topic, timeout)
        .await?
        .into_iter()
        .map(|e| (e.key, e.id))
        .collect())
}

/// Every message on `topic` with its key, event id and type.
pub async fn read_topic_events(
    kafka: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<TopicEvent>> {
    let mut config = kafka.client_config("ordermesh-audit");
    config
        .set(
            "group.id",
            format!("ordermesh-audit-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let topic = topic.to_owned();
    // librdkafka's metadata, watermark and poll calls block.
    tokio::task::spawn_blocking(move || read_blocking(&consumer, &topic, timeout)).await?
}

fn read_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<TopicEvent>> {
    let deadline = std::time::Instant::now() + timeout;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("metadata of topic {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    // The offset after which each partition is read to the end.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            ends.insert(partition, high);
        }
    }
    consumer.assign(&assignment)?;
    let mut out = Vec::new();
    let mut last_error = None;
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            bail!(
                "read {} events of {topic}, partitions {:?} unfinished after {timeout:?} (last error: {last_error:?})",
                out.len(),
                ends.keys().collect::<Vec<_>>()
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                let header = |name: &str| {
                    message
                        .headers()
                        .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                out.push(TopicEvent {
                    key,
                    id: header("ce_id"),
                    ce_type: header("ce_type"),
                });
                let partition = message.partition();
                if ends
                    .get(&partition)
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    ends.remove(&partition);
                }
            }
            // Connection trouble is reported here and retried by librdkafka; so does the reader.
            Some(Err(error)) => last_error = Some(error),
            None => {}
        }
    }
    Ok(out)
}
