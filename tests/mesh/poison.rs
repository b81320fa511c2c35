//! Whatever is on the topic, the notifier neither panics nor stops: messages it cannot read are
//! logged and passed over, and the events behind them are still handled.

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::{Result, ensure};
use ordermesh::{
    events::{CloudEventHeaders, encode_order_placed},
    proto::events::v1::OrderPlaced,
};
use ordermesh_notifier::Channel;
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
};

use crate::helpers::{EVENTUALLY, MeshOptions, order_request, spawn_mesh_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_foreign_messages_are_skipped_and_do_not_block_the_partition() -> Result<()>
{
    // Arrange: garbage, half-events and another event type on partition 0, then a valid OrderPlaced
    // behind them on the same partition.
    let mut mesh = spawn_mesh_with(MeshOptions {
        payment: false,
        notifier: false,
        ..Default::default()
    })
    .await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mesh.broker.bootstrap_servers())
        .create()?;
    let foreign = CloudEventHeaders {
        r#type: "example.v1.SomethingElse".into(),
        ..Default::default()
    };
    let bad: Vec<(Vec<u8>, Option<CloudEventHeaders>)> = vec![
        (b"not json".to_vec(), None),
        (Vec::new(), None),
        (b"{\"eventId\": 7}".to_vec(), None),
        (b"{\"orderId\": \"o-1\"}".to_vec(), None),
        (vec![0xff, 0xfe, 0x00], None),
        // Valid shape, but no recipient for either channel.
        (
            b"{\"eventId\":\"e\",\"orderId\":\"o\",\"customer\":{}}".to_vec(),
            None,
        ),
        (b"{}".to_vec(), Some(foreign)),
    ];
    let valid = OrderPlaced {
        event_id: "evt_after_poison".into(),
        order_id: "ord_after_poison".into(),
        customer: order_request("x", "tok_visa").customer,
        ..Default::default()
    };
    let valid_message = (
        encode_order_placed(&valid)?,
        Some(CloudEventHeaders::order_placed(&valid)),
    );
    for (payload, headers) in bad.iter().chain([&valid_message]) {
        let mut record = FutureRecord::to(&mesh.topic)
            .key("same-partition")
            .payload(payload)
            .partition(0);
        if let Some(headers) = headers {
            record = record.headers(headers.to_kafka());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }

    // Act
    mesh.start_notifier().await?;

    // Assert: each channel got past every bad message to the valid one, counting each bad one as
    // skipped.
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while Channel::ALL
        .iter()
        .any(|c| mesh.notifier_stats[c].sent.load(Ordering::Relaxed) == 0)
    {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the valid event behind the poison was not handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for channel in Channel::ALL {
        let stats = &mesh.notifier_stats[&channel];
        assert_eq!(stats.sent.load(Ordering::Relaxed), 1, "{channel:?}");
        assert_eq!(
            stats.skipped.load(Ordering::Relaxed),
            bad.len() as u64,
            "{channel:?}"
        );
    }
    let notifications = mesh.all_notifications().await?;
    assert_eq!(notifications.len(), 2);
    assert!(notifications.iter().all(|n| n.event_id == valid.event_id));
    mesh.shutdown().await
}
