//! Replaying a channel's dead letters once the cause is fixed (a mail server that was down for longer
//! than the retries lasted, a gateway that refused our requests, a notifier bug).
//!
//! Every message parked on the channel's dead-letter topic up to now is handled again by the same
//! step the consumer uses, against the same database: what now works is notified (or recognised as
//! already notified), what still fails is parked again with its attempt count raised and its origin
//! kept. Progress is committed under the group `{channel group}-replay`, so a second replay starts
//! where the first stopped. Messages parked during a replay wait for the next one, so a replay
//! always ends.

use std::{collections::HashMap, time::Duration};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    error::KafkaError,
};

use crate::{
    RunError,
    channel::Channel,
    config::Config,
    dead_letter::{self, DeadLetters},
    delivery::Sender,
    handler::{Handler, Mode},
    letter::Letter,
    outcome::Outcome,
    store::Store,
};

/// How long to wait for the next parked message before giving up on the broker.
const WAIT: Duration = Duration::from_secs(30);

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Parked messages handled again.
    pub replayed: u64,
    pub sent: u64,
    pub duplicates: u64,
    pub skipped: u64,
    /// Still failing, parked again.
    pub parked_again: u64,
}

/// Replays `channel`'s dead letters (see the module comment).
pub async fn replay_dead_letters(
    config: &Config,
    channel: Channel,
) -> Result<ReplayReport, RunError> {
    let kafka_error = |source: KafkaError| RunError::Kafka {
        brokers: config.kafka.brokers.clone(),
        source: source.into(),
    };
    config.kafka.check()?;
    let store = Store::new(
        ordermesh_platform::unit_of_work::Db::open(
            &config.database_url,
            &crate::store::migrations(),
        )
        .await?,
    );
    let dead_letters =
        DeadLetters::new(&config.kafka, config.park_timeout()).map_err(kafka_error)?;
    let handler = Handler::new(
        config,
        channel,
        store,
        Sender::new(channel, config)?,
        dead_letters,
        // A one-off command: nobody scrapes it, so its instruments go nowhere.
        &opentelemetry::global::meter("notifier-replay"),
    );
    let topic = dead_letter::topic(&config.events_topic, channel);
    let group = format!("{}-replay", config.group(channel));
    let consumer: StreamConsumer = config
        .kafka
        .client_config("ordermesh-notifier-replay")
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(kafka_error)?;

    // Where each partition starts (the group's committed offset, else the beginning) and where it
    // ends now. Partitions are assigned directly: no group join to wait for, commits still count.
    let (consumer, ranges) = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || -> Result<_, KafkaError> {
            let ranges = partition_ranges(&consumer, &topic)?;
            let mut assignment = TopicPartitionList::new();
            for (&partition, &(start, _)) in &ranges {
                assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
            }
            consumer.assign(&assignment)?;
            Ok((consumer, ranges))
        }
    })
    .await
    .map_err(|e| RunError::Kafka {
        brokers: config.kafka.brokers.clone(),
        source: ordermesh_kafka::BrokerError::Task(e.to_string()),
    })?
    .map_err(kafka_error)?;

    let mut remaining: HashMap<i32, i64> = ranges
        .into_iter()
        .filter(|(_, (start, end))| start < end)
        .map(|(p, (_, end))| (p, end))
        .collect();
    let mut report = ReplayReport::default();
    tracing::info!(%topic, %group, partitions_with_work = remaining.len(), "replaying dead letters");
    while !remaining.is_empty() {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .map_err(|_| RunError::Replay(format!("no message from {topic} within {WAIT:?}")))?
            .map_err(kafka_error)?;
        let partition = message.partition();
        let Some(&end) = remaining.get(&partition) else {
            continue;
        };
        if message.offset() >= end {
            // Parked after the replay began: for the next replay.
            remaining.remove(&partition);
            continue;
        }
        let letter = Letter::from_message(&message);
        match handler.process(&letter, Mode::Replay).await {
            Ok(Outcome::Sent) => report.sent += 1,
            Ok(Outcome::Duplicate) => report.duplicates += 1,
            Ok(Outcome::Skipped) => report.skipped += 1,
            Ok(Outcome::DeadLettered) => report.parked_again += 1,
            // A replay sends once and does not schedule retries.
            Ok(Outcome::Retrying) => report.parked_again += 1,
            Err(error) => return Err(RunError::Replay(error.to_string())),
        }
        report.replayed += 1;
        consumer
            .store_offset_from_message(&message)
            .map_err(kafka_error)?;
        if message.offset() + 1 >= end {
            remaining.remove(&partition);
        }
    }
    ordermesh_kafka::commit_and_close(consumer)
        .await
        .map_err(|e| RunError::Replay(format!("cannot commit the replay: {e}")))?;
    tracing::info!(?report, "dead letters replayed");
    Ok(report)
}

/// For each partition of `topic`: the offset to start from (the group's committed offset, else the
/// low watermark) and the high watermark now.
fn partition_ranges(
    consumer: &impl Consumer,
    topic: &str,
) -> Result<HashMap<i32, (i64, i64)>, KafkaError> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut wanted = TopicPartitionList::new();
    for &partition in &partitions {
        wanted.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(wanted, timeout)?;
    let mut ranges = HashMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let start = match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(offset)) => offset.max(low),
            _ => low,
        };
        ranges.insert(partition, (start, high));
    }
    Ok(ranges)
}
