//! `Letter`: a Kafka message as read, owned. Every path a message takes once the consumer has it
//! (handled in a batch, kept in the database for a retry, parked on a dead-letter topic, replayed
//! from there) works on this one type, so none of them holds on to rdkafka's borrowed message. (A
//! letter, as in dead letter: the same message whether it is delivered or parked.)

use rdkafka::{Message, message::Headers};

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
