//! The notifier's metrics, per channel (each channel is its own consumer group):
//!
//! | instrument | labels | what |
//! |---|---|---|
//! | `ordermesh.consumer.handled` | group, outcome | messages the consumer finished with (sent, duplicate, skipped, retrying, dead_lettered) |
//! | `ordermesh.consumer.retried` | group | sends that failed and were scheduled again (consumer and retry loop) |
//! | `ordermesh.consumer.dead_lettered` | group | messages parked on the dead-letter topic |
//! | `ordermesh.consumer.lag` | group, topic, partition | messages on the partition not yet handled (librdkafka's statistics, every 5 s) |
//! | `ordermesh.notifications.sent` | channel | notifications delivered (first send or retry) |
//! | `messaging.process.duration` | group, topic | time to handle one message |

use std::time::Duration;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Histogram, Meter},
};
use rdkafka::{
    ClientContext, Statistics,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    types::RDKafkaErrorCode,
};

use crate::{channel::Channel, consumer::Outcome};

/// How often librdkafka reports statistics, lag included.
pub(crate) const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

/// The instruments of one channel.
#[derive(Debug, Clone)]
pub(crate) struct ChannelMetrics {
    group: KeyValue,
    channel: KeyValue,
    topic: KeyValue,
    handled: Counter<u64>,
    retried: Counter<u64>,
    dead_lettered: Counter<u64>,
    sent: Counter<u64>,
    process_duration: Histogram<f64>,
}

impl ChannelMetrics {
    pub(crate) fn new(meter: &Meter, channel: Channel, group: &str, topic: &str) -> Self {
        Self {
            group: KeyValue::new("messaging.consumer.group.name", group.to_owned()),
            channel: KeyValue::new("channel", channel.as_str().to_lowercase()),
            topic: KeyValue::new("messaging.destination.name", topic.to_owned()),
            handled: meter
                .u64_counter("ordermesh.consumer.handled")
                .with_description("Events the consumer finished with, by outcome")
                .build(),
            retried: meter
                .u64_counter("ordermesh.consumer.retried")
                .with_description("Sends that failed transiently and were scheduled again")
                .build(),
            dead_lettered: meter
                .u64_counter("ordermesh.consumer.dead_lettered")
                .with_description("Events parked on the dead-letter topic")
                .build(),
            sent: meter
                .u64_counter("ordermesh.notifications.sent")
                .with_description("Notifications delivered, by channel")
                .build(),
            process_duration: ordermesh_platform::metrics::duration_histogram(
                meter,
                "messaging.process.duration",
                "Time to handle one consumed event, sending included",
            ),
        }
    }

    /// Counts the outcome of handling a message: `consumed` when it came from the consumer (not
    /// from the retry loop), with the time it took.
    pub(crate) fn outcome(&self, outcome: Outcome, consumed: Option<Duration>) {
        if let Some(took) = consumed {
            let labels = [
                self.group.clone(),
                KeyValue::new("outcome", outcome.as_str()),
            ];
            self.handled.add(1, &labels);
            self.process_duration.record(
                ordermesh_platform::metrics::seconds(took),
                &[self.group.clone(), self.topic.clone()],
            );
        }
        match outcome {
            Outcome::Sent => self.sent.add(1, std::slice::from_ref(&self.channel)),
            Outcome::Retrying => self.retried.add(1, std::slice::from_ref(&self.group)),
            Outcome::DeadLettered => self.dead_lettered.add(1, std::slice::from_ref(&self.group)),
            Outcome::Duplicate | Outcome::Skipped => {}
        }
    }
}

/// A consumer context that turns librdkafka's statistics into `ordermesh.consumer.lag`.
pub(crate) struct LagContext {
    group: String,
    lag: Gauge<i64>,
}

impl LagContext {
    pub(crate) fn new(meter: &Meter, group: &str) -> Self {
        Self {
            group: group.to_owned(),
            lag: meter
                .i64_gauge("ordermesh.consumer.lag")
                .with_description("Events on a partition not yet handled by the group (high watermark minus the offset stored after handling)")
                .build(),
        }
    }
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                // -1 is librdkafka's internal partition; a negative lag means not assigned here.
                if *partition < 0 || stats.consumer_lag_stored < 0 {
                    continue;
                }
                self.lag.record(
                    stats.consumer_lag_stored,
                    &[
                        KeyValue::new("messaging.consumer.group.name", self.group.clone()),
                        KeyValue::new("messaging.destination.name", topic.clone()),
                        KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                    ],
                );
            }
        }
    }
}

impl ConsumerContext for LagContext {
    /// Before partitions are taken away in a rebalance, the offsets stored for them (the messages
    /// handled) are committed, so their new owner starts right after them instead of at the last
    /// auto-commit. What it reads again anyway (a message in hand here when the partition went) it
    /// finds recorded in the shared database and does not send twice.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(group = %self.group, partitions = partitions.count(), "partitions revoked; committing what was handled");
            match consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last commit.
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => {
                    tracing::warn!(group = %self.group, %error, "commit before rebalance failed; the new owner repeats from the last commit (and finds those messages recorded)")
                }
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(group = %self.group, partitions = partitions.count(), "partitions assigned");
        }
    }
}
