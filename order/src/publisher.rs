//! Publishing OrderPlaced: keyed by order id, idempotent producer, `acks=all`, and the caller waits
//! for the broker's acknowledgement (or the configured bound) before answering its client.

use std::time::Duration;

use ordermesh::events::CloudEventHeaders;
use rdkafka::{
    error::KafkaError,
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};

/// Where the broker stored an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Publishes order events to one topic.
#[derive(Clone)]
pub struct EventPublisher {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl EventPublisher {
    /// A producer for `topic`. `ack_timeout` bounds each publish, retries included.
    pub fn new(brokers: &str, topic: &str, ack_timeout: Duration) -> Result<Self, KafkaError> {
        let producer = ordermesh::kafka::client_config(brokers, "ordermesh-order")
            // The broker deduplicates the producer's own retries, so a network blip cannot write an
            // event twice or reorder one order's events.
            .set("enable.idempotence", "true")
            // Acknowledged only once every in-sync replica has it.
            .set("acks", "all")
            // Every send has a caller waiting: do not hold records back to batch them. Records
            // still batch naturally while earlier requests are in flight.
            .set("linger.ms", "1")
            .set("message.timeout.ms", ack_timeout.as_millis().to_string())
            .create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Sends an encoded event keyed by its order id, with its CloudEvents headers, and waits for
    /// the acknowledgement.
    pub async fn publish(
        &self,
        order_id: &str,
        payload: &[u8],
        headers: &CloudEventHeaders,
    ) -> Result<Delivered, KafkaError> {
        let record = FutureRecord::to(&self.topic)
            .key(order_id.as_bytes())
            .payload(payload)
            .headers(headers.to_kafka());
        // Timeout::Never only concerns a full local queue; message.timeout.ms bounds the delivery.
        match self.producer.send(record, Timeout::Never).await {
            Ok(delivery) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _)) => Err(error),
        }
    }

    /// Waits up to `timeout` for queued events to be delivered, for a clean shutdown.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
