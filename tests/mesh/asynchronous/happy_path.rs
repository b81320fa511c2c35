//! The path everything goes right on: a paid order is stored, published and notified once per
//! channel, and ListOrders pages through every order once.

use anyhow::Result;
use ordermesh::{
    events, proto::notification::v1::Channel, proto::notification::v1::ListNotificationsRequest,
    proto::notification::v1::NotificationStatus, proto::order::v1::GetOrderRequest,
    proto::order::v1::OrderStatus, proto::payment::v1::GetPaymentRequest,
    proto::payment::v1::PaymentStatus,
};
use ordermesh_testkit::{Backend, on_both_backends};
use rdkafka::Message;

use super::support::helpers::{header, order_request, spawn_mesh};

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_is_stored_published_and_notified_once_per_channel(
    backend: Backend,
) -> Result<()> {
    // Arrange
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let mut orders = mesh.order_client().await?;

    // Act
    let created = orders
        .create_order(order_request("happy-1", "tok_visa"))
        .await?
        .into_inner();

    // Assert: the order, as the client sees it and as stored.
    assert_eq!(created.status(), OrderStatus::Paid);
    assert_eq!(
        created
            .total
            .as_ref()
            .map(|t| (t.currency_code.as_str(), t.minor_units)),
        Some(("USD", 3998))
    );
    assert!(!created.payment_id.is_empty() && !created.event_id.is_empty());
    let fetched = orders
        .get_order(GetOrderRequest {
            order_id: created.order_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(fetched, created);

    // The payment exists and is the one the order names.
    let payment = mesh
        .payment_client()
        .await?
        .get_payment(GetPaymentRequest {
            payment_id: created.payment_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(payment.status(), PaymentStatus::Succeeded);
    assert_eq!(payment.order_id, created.order_id);
    assert_eq!(payment.amount, created.total);

    // The event, read by a consumer that did not exist when it was published.
    let event_messages = mesh.read_events(1).await?;
    let message = &event_messages[0];
    assert_eq!(
        message.key(),
        Some(created.order_id.as_bytes()),
        "keyed by order id"
    );
    let event = events::decode_order_placed(message.payload().unwrap_or_default())?;
    assert_eq!(event.event_id, created.event_id);
    assert_eq!(event.order_id, created.order_id);
    assert_eq!(event.payment_id, created.payment_id);
    assert_eq!(event.customer, created.customer);
    assert_eq!(event.items, created.items);
    assert_eq!(event.total, created.total);
    assert!(event.placed_at.is_some());
    // It is readable as plain JSON with the proto3 mapping's field names.
    let json: serde_json::Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
    assert_eq!(json["orderId"], created.order_id.as_str());
    assert_eq!(json["total"]["minorUnits"], "3998");
    // CloudEvents binary-mode headers.
    assert_eq!(header(message, "ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(
        header(message, "ce_id").as_deref(),
        Some(created.event_id.as_str())
    );
    assert_eq!(
        header(message, "ce_type").as_deref(),
        Some(events::ORDER_PLACED_TYPE)
    );
    assert_eq!(
        header(message, "ce_source").as_deref(),
        Some(events::ORDER_SOURCE)
    );
    assert!(header(message, "ce_time").is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        header(message, "content-type").as_deref(),
        Some("application/json")
    );

    // One notification per channel, for this order.
    let all = mesh.wait_for_notifications(2).await?;
    let mut channels: Vec<Channel> = all.iter().map(|n| n.channel()).collect();
    channels.sort_by_key(|c| *c as i32);
    assert_eq!(channels, [Channel::Email, Channel::Sms]);
    for notification in &all {
        assert_eq!(notification.order_id, created.order_id);
        assert_eq!(notification.event_id, created.event_id);
        assert_eq!(notification.status(), NotificationStatus::Sent);
        assert_eq!(notification.attempts, 1);
        assert_eq!(notification.source_topic, mesh.topic);
        let expected = if notification.channel() == Channel::Email {
            "ada@example.com"
        } else {
            "+14155550100"
        };
        assert_eq!(notification.recipient, expected);
    }
    // Filters work.
    let email_only = mesh
        .notifier_client()
        .await?
        .list_notifications(ListNotificationsRequest {
            order_id: created.order_id.clone(),
            channel: Channel::Email.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(email_only.notifications.len(), 1);
    assert_eq!(mesh.event_count().await?, 1);
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_orders_pages_through_every_order_once(backend: Backend) -> Result<()> {
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let mut orders = mesh.order_client().await?;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            orders
                .create_order(order_request(&format!("page-{i}"), "tok_visa"))
                .await?
                .into_inner()
                .order_id,
        );
    }

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = orders
            .list_orders(ordermesh::proto::order::v1::ListOrdersRequest {
                page_size: 2,
                page_token,
            })
            .await?
            .into_inner();
        pages += 1;
        assert!(page.orders.len() <= 2);
        seen.extend(page.orders.into_iter().map(|o| o.order_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, created, "oldest first, each once");
    assert_eq!(pages, 3);
    mesh.shutdown().await
}
