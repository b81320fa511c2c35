//! The broker a test runs against, one of two behind one type: the embedded mock cluster (fast,
//! in-process, what `cargo run` uses) or [`Tansu`] (an independent broker, so the services are
//! proved against a Kafka implementation nobody here wrote). Tests speak to [`Broker`] only, so the
//! same test runs on either.

use std::time::Duration;

use anyhow::{Context, Result};
use ordermesh_kafka::EmbeddedBroker;
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::OwnedMessage,
};

use crate::{tansu::Tansu, wait::EVENTUALLY};

/// The broker a test runs against.
pub enum Broker {
    /// librdkafka's mock cluster behind a stable address (what `cargo run` uses).
    Embedded(EmbeddedBroker),
    /// tansu, an independent Kafka-compatible broker, on SQLite storage.
    Tansu(Box<Tansu>),
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Broker {
    /// An embedded broker with `topics` (the mock cluster cannot create topics on request).
    pub fn embedded(topics: &[&str], partitions: i32) -> Result<Self> {
        Ok(Self::Embedded(EmbeddedBroker::start(
            "127.0.0.1:0".parse()?,
            topics,
            partitions,
        )?))
    }

    /// What the tests print, so a log says which broker a test proved something against.
    pub fn name(&self) -> &'static str {
        match self {
            Broker::Embedded(_) => "embedded broker (librdkafka mock cluster)",
            Broker::Tansu(_) => "tansu 0.6 (independent Kafka-compatible broker, SQLite storage)",
        }
    }

    pub fn bootstrap_servers(&self) -> String {
        match self {
            Broker::Embedded(broker) => broker.bootstrap_servers(),
            Broker::Tansu(tansu) => tansu.addr.to_string(),
        }
    }

    /// Creates `topic` (the mock cluster directly, tansu through the admin API).
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        match self {
            Broker::Embedded(broker) => Ok(broker.create_topic(topic, partitions)?),
            Broker::Tansu(tansu) => {
                ordermesh_kafka::ensure_topics(
                    &ordermesh_kafka::KafkaSettings::plaintext(tansu.addr.to_string()),
                    &[topic],
                    partitions,
                )
                .await?;
                Ok(())
            }
        }
    }

    /// Makes the broker unreachable; [`Broker::up`] brings it back with what it had stored.
    pub async fn down(&mut self) -> Result<()> {
        match self {
            Broker::Embedded(broker) => {
                broker.down();
                Ok(())
            }
            Broker::Tansu(tansu) => tansu.stop().await,
        }
    }

    pub async fn up(&mut self) -> Result<()> {
        match self {
            Broker::Embedded(broker) => {
                broker.up();
                Ok(())
            }
            Broker::Tansu(tansu) => tansu.start().await,
        }
    }

    /// The first `count` messages of `topic`, read from the beginning by a new consumer group.
    pub async fn read(&self, topic: &str, count: usize) -> Result<Vec<OwnedMessage>> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set(
                "group.id",
                format!("ordermesh-testkit-read-{}", std::process::id()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[topic])?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        while out.len() < count {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .with_context(|| {
                    format!("read {} of {count} messages from {topic}", out.len())
                })??;
            out.push(message.detach());
        }
        Ok(out)
    }

    /// Messages on `topic` now: the sum of its partitions' high watermarks (none are deleted here).
    pub async fn message_count(&self, topic: &str) -> Result<i64> {
        let brokers = self.bootstrap_servers();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> Result<i64> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "ordermesh-testkit-count")
                .create()?;
            let timeout = Duration::from_secs(10);
            let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
            let mut total = 0;
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let (low, high) = consumer.fetch_watermarks(&topic, partition.id(), timeout)?;
                total += high - low;
            }
            Ok(total)
        })
        .await?
    }
}
