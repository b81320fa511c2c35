//! The CloudEvents attributes of the contract (`ordermesh::events::CloudEventHeaders`) as Kafka
//! record headers, through rdkafka's header types.

use ordermesh::events::CloudEventHeaders;
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Reading and writing [`CloudEventHeaders`] as Kafka headers: an extension trait, because the
/// contract crate does not link rdkafka.
pub trait KafkaHeaders: Sized {
    /// The Kafka headers of binary-mode CloudEvents.
    fn to_kafka(&self) -> OwnedHeaders;
    /// Reads the attributes back from Kafka headers (absent ones are empty).
    fn from_kafka(headers: &impl Headers) -> Self;
}

impl KafkaHeaders for CloudEventHeaders {
    fn to_kafka(&self) -> OwnedHeaders {
        let written = self.headers();
        written.iter().fold(
            OwnedHeaders::new_with_capacity(written.len()),
            |all, (key, value)| {
                all.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            },
        )
    }

    fn from_kafka(headers: &impl Headers) -> Self {
        Self::from_headers(headers.iter().map(|header| (header.key, header.value)))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    #[test]
    fn every_attribute_survives_kafka_headers() {
        let ce = CloudEventHeaders::order_placed_parts("ev-1", "ord-1", 1_700_000_000_123);
        let headers = ce.to_kafka();
        assert_eq!(headers.count(), 7);
        assert_eq!(CloudEventHeaders::from_kafka(&headers), ce);
        let content_type = headers
            .iter()
            .find(|h| h.key == "content-type")
            .and_then(|h| h.value);
        assert_eq!(content_type, Some(&b"application/json"[..]));
    }
}
