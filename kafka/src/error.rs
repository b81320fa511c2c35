//! What can go wrong talking to a broker, for every Kafka client here.

use std::net::SocketAddr;

use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("Kafka client error: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("Kafka client task failed: {0}")]
    Task(String),
    #[error("the embedded broker's client has no mock cluster")]
    NoMockCluster,
    #[error(
        "embedded broker cannot listen on {addr}: {source} (is another broker on that port? set another address)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
