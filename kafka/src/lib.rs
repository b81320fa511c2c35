//! Kafka settings shared by the producer and the consumers, topic creation, and the embedded broker
//! the quick start runs on.
//!
//! The embedded broker is librdkafka's mock cluster: an in-process server that speaks the real Kafka
//! wire protocol (so kcat and any other client can read from it) and keeps everything in memory. Its
//! broker listens on a random loopback port, so [`EmbeddedBroker`] listens on a stable address
//! (127.0.0.1:9092 by default), has the mock broker advertise that address in its metadata, and
//! pipes every connection through to it.
//!
//! Payment does not link this crate: only the services that produce or consume events do.

mod close;
mod embedded;
mod error;
mod headers;
mod settings;
mod topics;

pub use close::commit_and_close;
pub use embedded::{DEFAULT_EMBEDDED_ADDR, EmbeddedBroker, RETAINED_BYTES_PER_PARTITION};
pub use error::BrokerError;
pub use headers::KafkaHeaders;
pub use settings::{KafkaSettings, KafkaSettingsError, SaslMechanism, SecurityProtocol};
pub use topics::{
    DEFAULT_ORDER_EVENTS_TOPIC, DEFAULT_PARTITIONS, ensure_topics, ensure_topics_in_background,
};
