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
    Message,
    error::KafkaError,
    message::{Header, Headers, OwnedHeaders},
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
    pub(crate) fn new(kafka: &KafkaSettings) -> Result<Self, KafkaError> {
        let producer = kafka
            .client_config("ordermesh-notifier-dlq")
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

/// A Kafka message as read, owned: what the notifier keeps to retry a send later and to park it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Letter {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    /// In order, as on the message; values are bytes (Kafka headers need not be text).
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Set (as a header of its own) on a letter whose headers could not be read; such a letter is
/// parked, its payload kept.
pub(crate) const UNREADABLE_HEADERS: &str = "ordermesh_unreadable_headers";

impl Letter {
    pub(crate) fn from_message(message: &impl Message) -> Self {
        // rdkafka 0.39 reads each header name with `to_str().unwrap()`, so a header name that is
        // not UTF-8 (any producer can send one) panics inside it. `unsafe` is forbidden here, so
        // the read is fenced instead: such a message loses its headers, keeps its payload, and is
        // parked by the handler, rather than taking the consumer down on every redelivery. (The
        // panic hook still prints the panic once.)
        let headers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default()
        }))
        .unwrap_or_else(|_| vec![(UNREADABLE_HEADERS.to_owned(), Some(b"true".to_vec()))]);
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// A letter as stored by [`Letter::headers_json`] and the columns beside it.
    pub(crate) fn from_parts(
        topic: String,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
        headers_json: Option<&str>,
    ) -> Result<Self, serde_json::Error> {
        let headers = match headers_json {
            Some(json) => serde_json::from_str(json)?,
            None => Vec::new(),
        };
        Ok(Self {
            topic,
            partition,
            offset,
            key,
            payload,
            headers,
        })
    }

    /// The headers as JSON, for the database.
    pub(crate) fn headers_json(&self) -> String {
        // A Vec of (String, Option<Vec<u8>>) always serialises.
        serde_json::to_string(&self.headers).unwrap_or_else(|_| "[]".to_owned())
    }

    /// The trace context the message carries (`traceparent`, `tracestate`), if any.
    pub(crate) fn trace_context(&self) -> opentelemetry::Context {
        ordermesh_platform::trace_context::from_headers(self.headers.iter().filter_map(|(k, v)| {
            let value = std::str::from_utf8(v.as_deref()?).ok()?;
            Some((k.as_str(), value))
        }))
    }

    /// The value of header `key` as text, if present.
    pub(crate) fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_survives_the_database_round_trip() {
        let letter = Letter {
            topic: "orders.placed".into(),
            partition: 2,
            offset: 41,
            key: Some(b"ord_1".to_vec()),
            payload: Some(b"{}".to_vec()),
            headers: vec![
                ("ce_type".into(), Some(b"x".to_vec())),
                ("binary".into(), Some(vec![0, 159, 255])),
                ("empty".into(), None),
            ],
        };
        let back = Letter::from_parts(
            letter.topic.clone(),
            letter.partition,
            letter.offset,
            letter.key.clone(),
            letter.payload.clone(),
            Some(&letter.headers_json()),
        )
        .expect("stored headers parse");
        assert_eq!(back, letter);
    }
}
