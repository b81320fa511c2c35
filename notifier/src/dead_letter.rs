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
//! | `dlq_first_failure_time` | RFC 3339, when it was parked |
//! | `dlq_attempts` | how many times handling was tried |

use std::time::Duration;

use ordermesh::timestamp;
use rdkafka::{
    Message,
    error::KafkaError,
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};

use crate::channel::Channel;

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
    pub(crate) fn new(brokers: &str) -> Result<Self, KafkaError> {
        let producer = ordermesh::kafka::client_config(brokers, "ordermesh-notifier-dlq")
            // A parked message must be stored once and for good before its offset moves on.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                Duration::from_secs(30).as_millis().to_string(),
            )
            .create()?;
        Ok(Self { producer })
    }

    /// Copies `message` to `channel`'s dead-letter topic with the reason, and waits for the
    /// acknowledgement. A message read from a dead-letter topic (a replay that failed again) keeps
    /// its origin and first failure time, and its attempt count goes up.
    pub(crate) async fn park(
        &self,
        events_topic: &str,
        channel: Channel,
        message: &BorrowedMessage<'_>,
        reason: &str,
    ) -> Result<(), KafkaError> {
        let earlier = DeadLetterHeaders::read(message);
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            // The message's own headers travel on; the dead-letter ones are written afresh below.
            for header in original.iter().filter(|h| !h.key.starts_with("dlq_")) {
                headers = headers.insert(header);
            }
        }
        let now = timestamp::rfc3339(timestamp::now_millis());
        let (topic_from, partition, offset, first_failure, attempts) = match earlier {
            Some(earlier) => (
                earlier.original_topic,
                earlier.original_partition,
                earlier.original_offset,
                earlier.first_failure_time,
                (earlier.attempts + 1).to_string(),
            ),
            None => (
                message.topic().to_owned(),
                message.partition().to_string(),
                message.offset().to_string(),
                now,
                "1".to_owned(),
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
            .payload(message.payload().unwrap_or_default())
            .headers(headers);
        if let Some(key) = message.key() {
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
    /// The headers of `message` if it was parked by a notifier (it has `dlq_original_topic`).
    pub(crate) fn read(message: &BorrowedMessage<'_>) -> Option<Self> {
        let headers = message.headers()?;
        let get = |key: &str| {
            headers
                .iter()
                .find(|h| h.key == key)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
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
