//! The dual write, closed: an order and its event are stored together, and the event reaches Kafka
//! once, whatever the broker or the order service was doing. Every scenario ends by counting:
//! orders = events = emails = SMS.

use ordermesh_testkit::{Backend, on_both_backends};
use std::collections::HashSet;

use anyhow::{Result, ensure};

use ordermesh::{
    proto::order::v1::GetOrderRequest, proto::order::v1::Order, proto::order::v1::OrderStatus,
};
use rdkafka::Message;

use ordermesh_testkit::Broker;

use super::support::helpers::{
    MeshOptions, TestMesh, eventually, spawn_mesh_on_tansu, spawn_mesh_with,
};

/// Orders = events on the topic (each event id once) = emails = SMS.
async fn assert_all_delivered_once(mesh: &TestMesh, orders: &[Order]) -> Result<()> {
    let messages = mesh.read_events(orders.len()).await?;
    assert_eq!(
        mesh.event_count().await?,
        orders.len() as i64,
        "no event twice"
    );
    let event_ids: HashSet<String> = messages
        .iter()
        .map(|m| {
            ordermesh::events::decode_order_placed(m.payload().unwrap_or_default())
                .map(|e| e.event_id)
        })
        .collect::<Result<_, _>>()?;
    let expected: HashSet<String> = orders.iter().map(|o| o.event_id.clone()).collect();
    assert_eq!(event_ids, expected, "each order's own event");
    let notifications = mesh.wait_for_notifications(orders.len() * 2).await?;
    assert_eq!(
        notifications.len(),
        orders.len() * 2,
        "one email and one SMS per order"
    );
    Ok(())
}

/// CreateOrder waits at most 1 s for the broker.
const WAIT_FOR_BROKER: MeshOptions = MeshOptions {
    payment: true,
    notifier: true,
    order: |config| config.publish_timeout = std::time::Duration::from_millis(1_000),
    payment_config: |_| {},
    tansu: false,
    secured_kafka: false,
};

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_while_the_broker_is_down_are_accepted_and_their_events_follow_once(
    backend: Backend,
) -> Result<()> {
    match spawn_mesh_with(backend, WAIT_FOR_BROKER).await? {
        Some(mesh) => broker_down_while_ordering(mesh).await,
        None => Ok(()),
    }
}

async fn broker_down_while_ordering(mut mesh: TestMesh) -> Result<()> {
    // Arrange: the broker stops answering.
    mesh.broker.down().await?;

    // Act: orders while the broker is down.
    let orders = mesh.place_orders("down", 6).await?;

    // Assert: accepted and paid, events reported pending, nothing on the topic yet.
    for order in &orders {
        assert_eq!(order.status(), OrderStatus::Paid);
        assert!(order.event_pending, "{order:?}");
    }
    // Operators see the backlog on the metrics endpoint.
    let order_service = mesh.order()?;
    eventually("the backlog gauge shows the 6 waiting events", || async {
        let metrics = order_service.scrape().await?;
        Ok(metrics.sum("ordermesh_outbox_backlog", &[]) == 6.0)
    })
    .await?;
    // And how long the oldest has waited (what the outbox alert watches): it grows while the
    // broker stays down.
    let waited = order_service
        .scrape()
        .await?
        .sum("ordermesh_outbox_oldest_age_seconds", &[]);
    eventually("the oldest event's age grows", || async {
        let metrics = order_service.scrape().await?;
        Ok(metrics.sum("ordermesh_outbox_oldest_age_seconds", &[]) > waited.max(0.5))
    })
    .await?;

    // Act: the broker comes back.
    mesh.broker.up().await?;

    // Assert: the relay delivers every event once, the orders say so, and both channels notify once.
    assert_all_delivered_once(&mesh, &orders).await?;
    let order_service = mesh.order()?;
    eventually("the backlog gauge back to 0", || async {
        let metrics = order_service.scrape().await?;
        Ok(metrics.sum("ordermesh_outbox_backlog", &[]) == 0.0
            && metrics.sum("ordermesh_outbox_oldest_age_seconds", &[]) == 0.0)
    })
    .await?;
    let mut client = mesh.order_client().await?;
    for order in &orders {
        let now = client
            .get_order(GetOrderRequest {
                order_id: order.order_id.clone(),
            })
            .await?
            .into_inner();
        assert!(!now.event_pending, "{now:?}");
    }
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_still_pending_when_the_order_service_stops_are_published_once_after_it_restarts(
    backend: Backend,
) -> Result<()> {
    // Arrange: orders accepted while the broker is down, then the order service stops.
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            order: |config| config.publish_timeout = std::time::Duration::from_millis(500),
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    mesh.broker.down().await?;
    let orders = mesh.place_orders("restart", 5).await?;
    ensure!(
        orders.iter().all(|o| o.event_pending),
        "events were pending before the restart"
    );

    // Act: a new order service on the same database; the broker comes back.
    mesh.restart_order().await?;
    mesh.broker.up().await?;

    // Assert
    assert_all_delivered_once(&mesh, &orders).await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_while_notifiers_consume_loses_and_repeats_nothing(
    backend: Backend,
) -> Result<()> {
    match spawn_mesh_with(backend, WAIT_FOR_BROKER).await? {
        Some(mesh) => broker_restart_while_consuming(mesh).await,
        None => Ok(()),
    }
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tansu_restart_while_notifiers_consume_loses_and_repeats_nothing(
    backend: Backend,
) -> Result<()> {
    match spawn_mesh_on_tansu(backend, WAIT_FOR_BROKER).await? {
        Some(mesh) => broker_restart_while_consuming(mesh).await,
        None => Ok(()),
    }
}

/// Orders flow, the broker goes away while the notifiers are working through them and comes back:
/// every order is notified once per channel, and orders placed afterwards flow too. On tansu the
/// restart is a real one: a new process on the same SQLite storage, which keeps the topics, the
/// messages and the groups' committed offsets.
///
/// Found with tansu 0.6.0: once an idempotent producer's request has timed out (librdkafka then
/// bumps the producer epoch) or the producer outlives a broker restart, its next produce makes
/// tansu panic in its storage task ("more or less than one row", `idempotent_message_check`), and
/// from then on tansu answers nothing. So on tansu no producer is active across the restart: the
/// order service is stopped before it and started after it, and orders placed while the broker is
/// away are tested on the embedded broker only.
async fn broker_restart_while_consuming(mut mesh: TestMesh) -> Result<()> {
    let tansu = matches!(mesh.broker, Broker::Tansu(_));
    let mut orders = mesh.place_orders("before", 20).await?;
    // Some notified, the rest still to come: the notifiers are mid-stream.
    mesh.wait_for_notifications(2).await?;
    if tansu {
        mesh.stop_order().await?;
    }
    mesh.broker.down().await?;
    if !tansu {
        let during = mesh.place_orders("during", 5).await?;
        ensure!(
            during.iter().all(|o| o.event_pending),
            "published with the broker down?"
        );
        orders.extend(during);
    }
    mesh.broker.up().await?;
    if tansu {
        mesh.start_order().await?;
    }
    orders.extend(mesh.place_orders("after", 5).await?);

    assert_all_delivered_once(&mesh, &orders).await?;
    mesh.shutdown().await
}
