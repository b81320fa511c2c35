//! Handing partitions back: what commits a consumer's progress when partitions leave it (revoked
//! in a rebalance, or all of them when it closes), and the consumer context librdkafka calls on a
//! rebalance.
//!
//! Offsets are stored only after handling (see `consumer`) and reach the broker three ways: the
//! auto-commit timer, every second; [`RebalanceContext`], before partitions are revoked, so their
//! new owner starts right after the last message handled here; and
//! `ordermesh_kafka::commit_and_close`, once more when a consumer (a channel's, or a replay's)
//! stops.
//!
//! librdkafka has one context per consumer and calls its statistics callback on it too, so the lag
//! gauge, fed from those statistics, is recorded here as well, with a count of the rebalances: a
//! consumer that keeps losing its partitions (a member dropped for polling too late, replicas
//! restarting) shows there.

use std::time::Duration;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Meter},
};
use rdkafka::{
    ClientContext, Statistics,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    types::RDKafkaErrorCode,
};

/// How often librdkafka reports statistics, lag included.
pub(crate) const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

/// The context of a channel's consumer: commits before partitions are revoked, logs assignments,
/// and turns librdkafka's statistics into `ordermesh.consumer.lag`.
pub(crate) struct RebalanceContext {
    group: String,
    lag: Gauge<i64>,
    rebalances: Counter<u64>,
}

impl RebalanceContext {
    pub(crate) fn new(meter: &Meter, group: &str) -> Self {
        Self {
            group: group.to_owned(),
            lag: meter
                .i64_gauge("ordermesh.consumer.lag")
                .with_description("Events on a partition not yet handled by the group (high watermark minus the offset stored after handling)")
                .build(),
            rebalances: meter
                .u64_counter("ordermesh.consumer.rebalances")
                .with_description("Partitions assigned to or revoked from this consumer, by change")
                .build(),
        }
    }

    /// Counts `partitions` that were `change`d (assigned or revoked).
    fn count(&self, change: &'static str, partitions: usize) {
        self.rebalances.add(
            partitions as u64,
            &[
                KeyValue::new("messaging.consumer.group.name", self.group.clone()),
                KeyValue::new("change", change),
            ],
        );
    }
}

impl ClientContext for RebalanceContext {
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

impl ConsumerContext for RebalanceContext {
    /// Before partitions are taken away in a rebalance, the offsets stored for them (the messages
    /// handled) are committed, so their new owner starts right after them instead of at the last
    /// auto-commit. What it reads again anyway (a message in hand here when the partition went) it
    /// finds recorded in the shared database and does not send twice.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(group = %self.group, partitions = partitions.count(), "partitions revoked; committing what was handled");
            self.count("revoked", partitions.count());
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
            self.count("assigned", partitions.count());
        }
    }
}
