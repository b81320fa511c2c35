//! Publishing OrderPlaced: keyed by order id, idempotent producer, `acks=all`, and the caller waits
//! for the broker's acknowledgement (or the configured bound) before answering its client.

use std::time::Duration;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Meter},
};
use ordermesh::events::CloudEventHeaders;
use ordermesh_kafka::{KafkaHeaders, KafkaSettings};
use ordermesh_platform::trace_context;
use rdkafka::{
    ClientConfig,
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};
use tracing::Instrument;

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
    sent: Counter<u64>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// The producer's settings, `ack_timeout` bounding each publish: public so the benchmarks' raw
/// baseline (`bench/src/kafka/raw.rs`) runs with exactly these.
pub fn client_config(kafka: &KafkaSettings, ack_timeout: Duration) -> ClientConfig {
    let mut config = kafka.client_config("ordermesh-order");
    config
        // The broker deduplicates the producer's own retries, so a network blip cannot write an
        // event twice or reorder one order's events.
        .set("enable.idempotence", "true")
        // Acknowledged only once every in-sync replica has it.
        .set("acks", "all")
        // Every send has a caller waiting: do not hold records back to batch them. Records still
        // batch naturally while earlier requests are in flight.
        .set("linger.ms", "1")
        .set("message.timeout.ms", ack_timeout.as_millis().to_string());
    config
}

impl EventPublisher {
    /// A producer for `topic`. `ack_timeout` bounds each publish, retries included. Publishes are
    /// counted in `messaging.client.sent.messages` (with `error.type` when not acknowledged).
    pub fn new(
        kafka: &KafkaSettings,
        topic: &str,
        ack_timeout: Duration,
        meter: &Meter,
    ) -> Result<Self, KafkaError> {
        let producer = client_config(kafka, ack_timeout).create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            sent: meter
                .u64_counter("messaging.client.sent.messages")
                .with_description("Events sent to Kafka; with error.type if not acknowledged")
                .build(),
        })
    }

    /// Sends an encoded event keyed by its order id, with its CloudEvents headers, and waits for
    /// the acknowledgement. The send is a producer span, child of `parent` (the trace of the call
    /// that accepted the order), whose context goes along in the `traceparent` header so the
    /// consumers continue the same trace.
    pub async fn publish(
        &self,
        order_id: &str,
        payload: &[u8],
        headers: &CloudEventHeaders,
        parent: opentelemetry::Context,
    ) -> Result<Delivered, KafkaError> {
        let topic = &self.topic;
        // Named and attributed per the OpenTelemetry messaging conventions.
        let span = tracing::info_span!(
            "kafka_send",
            otel.name = %format!("send {topic}"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = %topic,
            messaging.message.id = %headers.id,
            messaging.kafka.message.key = %order_id,
            messaging.destination.partition.id = tracing::field::Empty,
            messaging.kafka.offset = tracing::field::Empty,
        );
        trace_context::set_parent(&span, parent);
        let mut kafka_headers = headers.to_kafka();
        kafka_headers = with_trace(kafka_headers, &trace_context::headers_of(&span));
        let record = FutureRecord::to(topic)
            .key(order_id.as_bytes())
            .payload(payload)
            .headers(kafka_headers);
        // Timeout::Never only concerns a full local queue; message.timeout.ms bounds the delivery.
        let sent = self
            .producer
            .send(record, Timeout::Never)
            .instrument(span.clone())
            .await;
        let destination = KeyValue::new("messaging.destination.name", topic.clone());
        let system = KeyValue::new("messaging.system", "kafka");
        match sent {
            Ok(delivery) => {
                span.record("messaging.destination.partition.id", delivery.partition);
                span.record("messaging.kafka.offset", delivery.offset);
                self.sent.add(1, &[system, destination]);
                Ok(Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Err((error, _)) => {
                span.record("otel.status_code", "ERROR");
                let kind = error
                    .rdkafka_error_code()
                    .map_or_else(|| "kafka".to_owned(), |code| format!("{code:?}"));
                self.sent
                    .add(1, &[system, destination, KeyValue::new("error.type", kind)]);
                Err(error)
            }
        }
    }

    /// Waits up to `timeout` for queued events to be delivered, for a clean shutdown.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

/// `headers` plus the trace context headers.
fn with_trace(mut headers: OwnedHeaders, trace: &[(String, String)]) -> OwnedHeaders {
    for (key, value) in trace {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}
