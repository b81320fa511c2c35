//! The dead-letter topics: where a message the notifier can never act on is parked, so it neither
//! blocks its partition nor disappears.
//!
//! Each channel has its own (`{events topic}.{channel}.dlq`), because each channel's consumer group
//! decides on its own. A parked message keeps its key, value and headers, and gains headers that say
//! why and where it came from:
//!
//! | header | value |
//! |---|---|
//! | `dlq_error` | why it could not be handled |
//! | `dlq_channel` | `email` or `sms` |
//! | `dlq_original_topic`, `dlq_original_partition`, `dlq_original_offset` | where it was read |
//! | `dlq_first_failure_time` | RFC 3339, when handling first failed |
//! | `dlq_attempts` | how many times sending (or handling) was tried, replays included |

use std::time::Duration;

use ordermesh::timestamp;
use ordermesh_kafka::KafkaSettings;
use rdkafka::{
    error::KafkaError,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};

use crate::{channel::Channel, letter::Letter};

/// The dead-letter topic of `channel` for events read from `events_topic`.
pub fn topic(events_topic: &str, channel: Channel) -> String {
    format!("{events_topic}.{}.dlq", channel.as_str().to_lowercase())
}

/// Parks messages on dead-letter topics.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    producer: FutureProducer,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// A producer whose park fails after `timeout` (the broker unreachable, the topic not
    /// writable): bounded, so the consumer's poll loop goes on (see `read_again`).
    pub(crate) fn new(kafka: &KafkaSettings, timeout: Duration) -> Result<Self, KafkaError> {
        let producer = kafka
            .client_config("ordermesh-notifier-dlq")
            // A parked message must be stored once and for good before its offset moves on.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .create()?;
        Ok(Self { producer })
    }

    /// Copies `letter` to `channel`'s dead-letter topic with the reason, and waits for the
    /// acknowledgement. `attempts` sends were tried, the first failing at `first_failure_ms`. A
    /// letter read from a dead-letter topic (a replay that failed again) keeps its origin and first
    /// failure time, and its attempts add to the earlier ones.
    pub(crate) async fn park(
        &self,
        events_topic: &str,
        channel: Channel,
        letter: &Letter,
        reason: &str,
        attempts: u32,
        first_failure_ms: i64,
    ) -> Result<(), KafkaError> {
        let earlier = DeadLetterHeaders::read(letter);
        let mut headers = OwnedHeaders::new();
        // The message's own headers travel on; the dead-letter ones are written afresh below.
        for (key, value) in letter
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq_"))
        {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: value.as_deref(),
            });
        }
        let (topic_from, partition, offset, first_failure, attempts) = match earlier {
            Some(earlier) => (
                earlier.original_topic,
                earlier.original_partition,
                earlier.original_offset,
                earlier.first_failure_time,
                (earlier.attempts + attempts).to_string(),
            ),
            None => (
                letter.topic.clone(),
                letter.partition.to_string(),
                letter.offset.to_string(),
                timestamp::rfc3339(first_failure_ms),
                attempts.to_string(),
            ),
        };
        let channel_name = channel.as_str().to_lowercase();
        for (key, value) in [
            ("dlq_error", reason),
            ("dlq_channel", channel_name.as_str()),
            ("dlq_original_topic", topic_from.as_str()),
            ("dlq_original_partition", partition.as_str()),
            ("dlq_original_offset", offset.as_str()),
            ("dlq_first_failure_time", first_failure.as_str()),
            ("dlq_attempts", attempts.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let topic = topic(events_topic, channel);
        let mut record = FutureRecord::to(&topic)
            .payload(letter.payload.as_deref().unwrap_or_default())
            .headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        self.producer
            .send(record, Timeout::Never)
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }
}

/// The dead-letter headers of a parked message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetterHeaders {
    pub(crate) original_topic: String,
    pub(crate) original_partition: String,
    pub(crate) original_offset: String,
    pub(crate) first_failure_time: String,
    pub(crate) attempts: u32,
}

impl DeadLetterHeaders {
    /// The headers of `letter` if it was parked by a notifier (it has `dlq_original_topic`).
    pub(crate) fn read(letter: &Letter) -> Option<Self> {
        let get = |key: &str| letter.header(key);
        Some(Self {
            original_topic: get("dlq_original_topic")?,
            original_partition: get("dlq_original_partition").unwrap_or_default(),
            original_offset: get("dlq_original_offset").unwrap_or_default(),
            first_failure_time: get("dlq_first_failure_time").unwrap_or_default(),
            attempts: get("dlq_attempts")
                .and_then(|a| a.parse().ok())
                .unwrap_or(1),
        })
    }
}
