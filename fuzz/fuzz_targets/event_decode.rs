//! What the notifier does with a Kafka message before it sends anything: the CloudEvents headers
//! read (as `ordermesh_kafka::KafkaHeaders` reads rdkafka's: name and optional value), the
//! OrderPlaced JSON decoded, the customer's addresses, the email address parsed, the total formatted
//! for the message text. A message the notifier cannot use must come out as an error (the notifier
//! parks it), never a panic. Only the contract crate is linked: no Kafka client to build.
//!
//! Input: header lines `key: value` (`key` alone is a header without a value), an empty line, then
//! the payload; an input without an empty line is all payload and no headers. The seeds in
//! `corpus/event_decode/` are in that form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ordermesh::events::{self, CloudEventHeaders};

fuzz_target!(|data: &[u8]| {
    let (headers, payload) = split(data);

    // The attributes, read as the consumer reads them: header names are text in Kafka (and in
    // rdkafka's API); values are bytes, or absent. Written back and read again, they are the same.
    let attributes = CloudEventHeaders::from_headers(
        headers
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_deref())),
    );
    let written = attributes.headers();
    let again = written.iter().map(|(k, v)| (*k, Some(v.as_bytes())));
    assert_eq!(CloudEventHeaders::from_headers(again), attributes);

    // The notifier skips other `ce_type`s and decodes the rest; here everything is decoded.
    let event = match events::decode_order_placed(payload) {
        Ok(event) => event,
        // Parked with this reason.
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    // What every consumer relies on, checked by the decoder.
    assert!(!event.event_id.is_empty() && !event.order_id.is_empty());
    let customer = event
        .customer
        .as_ref()
        .expect("a decoded event has a customer");

    // The email channel parses the address (a bad one is a permanent failure, not a panic).
    if !customer.email.is_empty() {
        let _ = customer.email.parse::<lettre::message::Mailbox>();
    }
    // The message text shows the total, whatever the amount and currency.
    let total = event.total.clone().unwrap_or_default();
    let shown = ordermesh::money::formatted(total.minor_units, &total.currency_code);
    assert!(shown.ends_with(&total.currency_code));

    // What the order service would publish for it: the same event, whatever its timestamp.
    let _ = CloudEventHeaders::order_placed(&event).headers();
    let json = events::encode_order_placed(&event).expect("a decoded event encodes");
    let again = events::decode_order_placed(&json).expect("an encoded event decodes");
    assert_eq!(again, event);
});

type Headers = Vec<(String, Option<Vec<u8>>)>;

/// Splits an input into its header lines and its payload.
fn split(data: &[u8]) -> (Headers, &[u8]) {
    let Some(blank) = data.windows(2).position(|w| w == b"\n\n") else {
        return (Vec::new(), data);
    };
    let headers = data[..blank]
        .split(|&b| b == b'\n')
        .map(|line| match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (text(&line[..colon]), Some(value.to_vec()))
            }
            None => (text(line), None),
        })
        .collect();
    (headers, &data[blank + 2..])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
