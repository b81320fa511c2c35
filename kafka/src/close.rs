//! Leaving a consumer group cleanly: commit the offsets stored so far, then close. Written once for
//! the notifier's consumers, its dead-letter replay and the benchmarks' consumers.

use rdkafka::{
    consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer},
    error::KafkaError,
    types::RDKafkaErrorCode,
};

use crate::BrokerError;

/// Commits the offsets stored so far and closes `consumer` (leaving its group). Both block until
/// the broker answers, so they run on a blocking thread, and the consumer is dropped there too.
/// Having nothing stored since the last commit is not an error.
pub async fn commit_and_close<C: ConsumerContext + 'static>(
    consumer: StreamConsumer<C>,
) -> Result<(), BrokerError> {
    let committed = tokio::task::spawn_blocking(move || {
        let committed = consumer.commit_consumer_state(CommitMode::Sync);
        drop(consumer);
        committed
    })
    .await
    .map_err(|error| BrokerError::Task(format!("the commit did not run: {error}")))?;
    match committed {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(error) => Err(error.into()),
    }
}
