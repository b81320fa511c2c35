//! What every Kafka benchmark stands on, so the sides it compares are alike: one partition count,
//! one acknowledgement bound and in-flight window for both producers, one bound on a stall, the
//! size of a run, fresh names, and the throughput figure. Kept apart from the benchmarks so that
//! a change here visibly changes all of them, ours and raw together.

use std::time::Duration;

use anyhow::Result;
use ordermesh_testkit::Broker;

use crate::Scale;

/// Partitions of every benchmark topic, as the services create theirs.
pub(super) const PARTITIONS: i32 = ordermesh_kafka::DEFAULT_PARTITIONS;
/// Bound on one publish, retries included (`message.timeout.ms`), as the benchmarks give it.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Sends in flight at once in the publish benchmark (and when filling topics).
pub(super) const IN_FLIGHT: usize = 256;
/// A wait that sees no progress for this long fails the benchmark instead of hanging it.
pub(super) const STALL: Duration = Duration::from_secs(30);
/// Messages of a smoke run at most: it checks the harness, in seconds.
pub(super) const SMOKE_MESSAGES: usize = 200;

/// Rounds and messages per round: a smoke run is capped to 2 rounds of `smoke_messages`.
/// At least 2 messages, so a window that opens after the first still holds one.
pub(super) fn size(scale: &Scale, smoke_messages: usize) -> (usize, usize) {
    let (rounds, messages) = if scale.smoke {
        (scale.rounds.clamp(1, 2), scale.messages.min(smoke_messages))
    } else {
        (scale.rounds.max(1), scale.messages)
    };
    (rounds, messages.max(2))
}

/// A topic nobody used, created on `broker`.
pub(super) async fn fresh_topic(broker: &Broker, what: &str) -> Result<String> {
    let topic = fresh_name(&format!("bench-{what}"));
    broker.create_topic(&topic, PARTITIONS).await?;
    Ok(topic)
}

pub(super) fn fresh_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Drops a Kafka client on a blocking thread: librdkafka's destroy waits for its threads.
pub(super) async fn drop_blocking<T: Send + 'static>(client: T) {
    let _ = tokio::task::spawn_blocking(move || drop(client)).await;
}

pub(super) fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}
