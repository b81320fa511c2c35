//! Whatever is on the topic, the notifier neither panics nor stops: messages it cannot read are
//! logged and passed over, and the events behind them are still handled.

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::Result;
use ordermesh::events::CloudEventHeaders;
use ordermesh_notifier::Channel;
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
};

use crate::helpers::{MeshOptions, order_request, spawn_mesh_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_foreign_messages_are_skipped_and_do_not_block_the_partition() -> Result<()>
{
    // Arrange: garbage, half-events and another event type, all on partition 0, then a real order.
    let mut mesh = spawn_mesh_with(MeshOptions {
        payment: true,
        notifier: false,
    })
    .await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mesh.broker.bootstrap_servers())
        .create()?;
    let foreign = CloudEventHeaders {
        r#type: "example.v1.SomethingElse".into(),
        ..Default::default()
    };
    let bad: Vec<(&[u8], Option<CloudEventHeaders>)> = vec![
        (b"not json", None),
        (b"", None),
        (b"{\"eventId\": 7}", None),
        (b"{\"orderId\": \"o-1\"}", None),
        (&[0xff, 0xfe, 0x00], None),
        (
            b"{\"eventId\":\"e\",\"orderId\":\"o\",\"customer\":{}}",
            None,
        ),
        (b"{}", Some(foreign)),
    ];
    for (payload, headers) in &bad {
        let mut record = FutureRecord::to(&mesh.topic)
            .key("poison")
            .payload(*payload)
            .partition(0);
        if let Some(headers) = headers {
            record = record.headers(headers.to_kafka());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    let order = mesh
        .order_client()
        .await?
        .create_order(order_request("after-poison", "tok_visa"))
        .await?
        .into_inner();

    // Act
    mesh.start_notifier().await?;

    // Assert: the real order is notified on both channels; everything else was counted as skipped.
    let notifications = mesh.wait_for_notifications(2).await?;
    assert!(notifications.iter().all(|n| n.order_id == order.order_id));
    for channel in Channel::ALL {
        let stats = &mesh.notifier_stats[&channel];
        assert_eq!(stats.sent.load(Ordering::Relaxed), 1, "{channel:?}");
        assert_eq!(
            stats.skipped.load(Ordering::Relaxed),
            bad.len() as u64,
            "{channel:?}"
        );
    }
    mesh.shutdown().await
}
