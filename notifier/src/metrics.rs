//! The notifier's metrics, per channel (each channel is its own consumer group):
//!
//! | instrument | labels | what |
//! |---|---|---|
//! | `ordermesh.consumer.handled` | group, outcome | messages the consumer finished with (sent, duplicate, skipped, retrying, dead_lettered) |
//! | `ordermesh.consumer.retried` | group | sends that failed and were scheduled again (consumer and retry loop) |
//! | `ordermesh.consumer.dead_lettered` | group | messages parked on the dead-letter topic |
//! | `ordermesh.consumer.lag` | group, topic, partition | messages on the partition not yet handled (librdkafka's statistics, every 5 s; recorded by the consumer's context in `rebalance`) |
//! | `ordermesh.consumer.rebalances` | group, change | partitions assigned to or revoked from the consumer (recorded in `rebalance`) |
//! | `ordermesh.consumer.partitions_paused` | group | times a partition was paused because its next message could not be finished (`read_again`) |
//! | `ordermesh.notifications.sent` | channel | notifications delivered (first send or retry) |
//! | `ordermesh.notifications.stale_writes` | channel, write | writes refused because the writer's claim was taken over meanwhile (see `store`) |
//! | `messaging.process.duration` | group, topic | time to handle one message |

use std::time::Duration;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, Meter},
};

use crate::{channel::Channel, outcome::Outcome};

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
    stale_writes: Counter<u64>,
    partitions_paused: Counter<u64>,
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
            stale_writes: meter
                .u64_counter("ordermesh.notifications.stale_writes")
                .with_description(
                    "Writes refused because the writer's claim was taken over meanwhile",
                )
                .build(),
            partitions_paused: meter
                .u64_counter("ordermesh.consumer.partitions_paused")
                .with_description(
                    "Partitions paused because their next message could not be finished (database or dead-letter topic failing)",
                )
                .build(),
            process_duration: ordermesh_platform::metrics::duration_histogram(
                meter,
                "messaging.process.duration",
                "Time to handle one consumed event, sending included",
            ),
        }
    }

    /// Counts a write refused because its writer no longer held the notification.
    pub(crate) fn stale_write(&self, write: &'static str) {
        self.stale_writes
            .add(1, &[self.channel.clone(), KeyValue::new("write", write)]);
    }

    /// Counts a partition paused after a failure.
    pub(crate) fn partition_paused(&self) {
        self.partitions_paused
            .add(1, std::slice::from_ref(&self.group));
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
