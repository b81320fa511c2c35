//! Dead letters are replayed once the cause is fixed: what now works is notified, what still fails is
//! parked again with its history, and a replay starts where the last one stopped.

use ordermesh_testkit::{Backend, on_both_backends};
use std::time::Duration;

use anyhow::Result;
use ordermesh::{
    events::CloudEventHeaders, events::encode_order_placed, proto::events::v1::OrderPlaced,
    proto::notification::v1::Channel as ProtoChannel,
};
use ordermesh_kafka::KafkaHeaders;
use ordermesh_notifier::{Channel, ReplayReport, dead_letter, replay_dead_letters};
use rdkafka::{
    ClientConfig,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};

use super::support::helpers::{MeshOptions, header, order_request, spawn_mesh_with};

/// Dead-letter headers as a notifier wrote them for a message first parked on 1 January.
fn parked(headers: OwnedHeaders) -> OwnedHeaders {
    [
        ("dlq_error", "a notifier bug, since fixed"),
        ("dlq_channel", "email"),
        ("dlq_original_topic", "order-events"),
        ("dlq_original_partition", "0"),
        ("dlq_original_offset", "42"),
        ("dlq_first_failure_time", "2026-01-01T00:00:00Z"),
        ("dlq_attempts", "1"),
    ]
    .into_iter()
    .fold(headers, |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    })
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_notifies_what_now_works_parks_again_what_does_not_and_resumes(
    backend: Backend,
) -> Result<()> {
    // Arrange: on the email dead-letter topic, a valid event (parked by a buggy notifier) and garbage.
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: false,
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let topic = dead_letter::topic(&mesh.topic, Channel::Email);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mesh.broker.bootstrap_servers())
        .create()?;
    let valid = OrderPlaced {
        event_id: "evt_parked".into(),
        order_id: "ord_parked".into(),
        customer: order_request("x", "tok_visa").customer,
        ..Default::default()
    };
    let payload = encode_order_placed(&valid)?;
    let valid_headers = parked(CloudEventHeaders::order_placed(&valid).to_kafka());
    for (payload, headers) in [
        (&payload[..], valid_headers),
        (&b"garbage"[..], parked(OwnedHeaders::new())),
    ] {
        let record = FutureRecord::to(&topic)
            .key("k")
            .payload(payload)
            .headers(headers)
            .partition(0);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    let config = mesh.notifier_config()?;

    // Act
    let first = replay_dead_letters(&config, Channel::Email).await?;

    // Assert: the valid one is notified by email, the garbage is parked again with its history.
    assert_eq!(
        first,
        ReplayReport {
            replayed: 2,
            sent: 1,
            parked_again: 1,
            ..Default::default()
        }
    );
    let messages = mesh.read_topic(&topic, 3).await?;
    let again = messages
        .iter()
        .find(|m| header(m, "dlq_attempts").as_deref() == Some("2"))
        .expect("parked again");
    assert_eq!(
        header(again, "dlq_first_failure_time").as_deref(),
        Some("2026-01-01T00:00:00Z")
    );
    assert_eq!(header(again, "dlq_original_offset").as_deref(), Some("42"));
    assert!(
        header(again, "dlq_error").is_some_and(|e| e.contains("not valid JSON")),
        "{:?}",
        header(again, "dlq_error")
    );

    // A second replay starts after the first: only the message parked again is replayed.
    let second = replay_dead_letters(&config, Channel::Email).await?;
    assert_eq!(
        second,
        ReplayReport {
            replayed: 1,
            parked_again: 1,
            ..Default::default()
        }
    );

    // The notification is there, once, for the email channel only.
    let mut mesh = mesh;
    mesh.start_notifier().await?;
    let notifications = mesh.all_notifications().await?;
    assert_eq!(notifications.len(), 1, "{notifications:?}");
    assert_eq!(notifications[0].event_id, "evt_parked");
    assert_eq!(notifications[0].channel(), ProtoChannel::Email);
    mesh.shutdown().await
}
