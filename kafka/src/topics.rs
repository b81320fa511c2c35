//! The topics the services use and making sure they exist, at start or in the background while
//! the broker is still down.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};

use crate::{BrokerError, KafkaSettings};

/// The topic OrderPlaced events go to unless configured otherwise.
pub const DEFAULT_ORDER_EVENTS_TOPIC: &str = "order-events";
/// Partitions of topics the services create. Events are keyed by order id, so one order's events stay
/// in order on one partition while different orders spread out.
pub const DEFAULT_PARTITIONS: i32 = 3;

/// Makes sure `topics` exist. Existing topics are left as they are. Brokers that refuse CreateTopics
/// (the embedded mock cluster does not implement it; the runner creates its topics directly) give an
/// error that says so.
pub async fn ensure_topics(
    kafka: &KafkaSettings,
    topics: &[&str],
    partitions: i32,
) -> Result<(), BrokerError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config("ordermesh-admin").create()?;
    // fetch_metadata blocks its thread until the broker answers: keep it off the async workers.
    let (admin, metadata) = tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10));
        (admin, metadata)
    })
    .await
    .map_err(|e| BrokerError::Task(e.to_string()))?;
    let metadata = metadata?;
    let missing: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|t| {
            !metadata
                .topics()
                .iter()
                .any(|m| m.name() == *t && m.error().is_none())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(BrokerError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}

/// [`ensure_topics`], retried with backoff until it succeeds, in the background: a service can start
/// (and accept work it keeps durably, as the order service's outbox does) while the broker is still
/// down, and the topics appear once it is up. Each failure is logged with the setting to check.
pub fn ensure_topics_in_background(
    kafka: KafkaSettings,
    topics: Vec<String>,
    partitions: i32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            match ensure_topics(&kafka, &names, partitions).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(brokers = %kafka.brokers, %error, retry_in_ms = backoff.as_millis(), "cannot make sure the topics exist yet (KAFKA_BROKERS)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    })
}
