//! CancelOrder, the way back (issue 20): a paid order is refunded once and announced with
//! OrderCancelled after its OrderPlaced; asked again it answers the same; a refund payment cannot
//! make now leaves the order CANCELLING and the reconciler finishes it without the client; an order
//! that was never paid, or is unknown, gets the documented answers.

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::{Context, Result, ensure};
use ordermesh::proto::{
    order::v1::{CancelOrderRequest, Order, OrderStatus},
    payment::v1::{GetPaymentRequest, PaymentStatus},
};
use ordermesh_notifier::Channel;
use ordermesh_testkit::{Backend, on_both_backends};
use rdkafka::Message;
use tonic::Code;

use super::support::helpers::{
    MeshOptions, TestMesh, eventually, header, order_request, spawn_mesh_with,
};

async fn cancel(mesh: &TestMesh, order_id: &str, reason: &str) -> Result<Order, tonic::Status> {
    let mut client = mesh
        .order_client()
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    client
        .cancel_order(CancelOrderRequest {
            order_id: order_id.to_owned(),
            reason: reason.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_is_refunded_once_and_announced_after_its_placement(
    backend: Backend,
) -> Result<()> {
    let Some(mesh) = spawn_mesh_with(backend, MeshOptions::default()).await? else {
        return Ok(());
    };
    let order = mesh
        .place_orders("cancel", 1)
        .await?
        .pop()
        .context("an order")?;

    // Act: cancelled, then cancelled again (a client retrying).
    let cancelled = cancel(&mesh, &order.order_id, "changed my mind").await?;
    let again = cancel(&mesh, &order.order_id, "another reason").await?;

    // Assert: CANCELLED with its refund, the same answer twice ...
    ensure!(
        cancelled.status() == OrderStatus::Cancelled && !cancelled.refund_id.is_empty(),
        "{cancelled:?}"
    );
    ensure!(
        (again.status(), &again.refund_id, &again.cancel_reason)
            == (
                OrderStatus::Cancelled,
                &cancelled.refund_id,
                &cancelled.cancel_reason
            ),
        "asked again: {again:?}"
    );
    // ... the payment refunded once (one payment, REFUNDED, naming the refund) ...
    ensure!(mesh.payments_for(&order.order_id).await? == 1);
    let payment = mesh
        .payment_client()
        .await?
        .get_payment(GetPaymentRequest {
            payment_id: order.payment_id.clone(),
        })
        .await?
        .into_inner();
    ensure!(
        payment.status() == PaymentStatus::Refunded && payment.refund_id == cancelled.refund_id,
        "{payment:?}"
    );
    // ... OrderCancelled once, after the order's OrderPlaced, with the same key ...
    let events = mesh.read_events(2).await?;
    let ours: Vec<(String, i64)> = events
        .iter()
        .filter(|m| m.key() == Some(order.order_id.as_bytes()))
        .map(|m| (header(m, "ce_type").unwrap_or_default(), m.offset()))
        .collect();
    ensure!(
        ours.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>()
            == [
                ordermesh::events::ORDER_PLACED_TYPE,
                ordermesh::events::ORDER_CANCELLED_TYPE
            ]
            && ours[0].1 < ours[1].1,
        "the order's events in order: {ours:?}"
    );
    // ... and both notifiers told the customer twice: confirmed, then cancelled.
    eventually("the cancellation notified on both channels", || async {
        Ok(Channel::ALL.iter().all(|c| {
            mesh.notifier_stats
                .get(c)
                .is_some_and(|s| s.sent.load(Ordering::Relaxed) == 2)
        }))
    })
    .await?;
    mesh.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_payment_cannot_refund_now_is_finished_by_the_reconciler() -> Result<()> {
    let Some(mut mesh) = spawn_mesh_with(
        Backend::Sqlite,
        MeshOptions {
            order: |config| {
                config.reconcile_grace = Duration::from_millis(2_500);
                config.reconcile_interval = Duration::from_millis(200);
            },
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let order = mesh
        .place_orders("cancel-later", 1)
        .await?
        .pop()
        .context("an order")?;

    // Act: payment goes away; the cancel is asked for; payment comes back.
    mesh.payment.take().context("payment")?.stop().await?;
    let answered = cancel(&mesh, &order.order_id, "out of stock").await?;
    mesh.start_payment().await?;

    // Assert: answered CANCELLING (accepted, not done), then CANCELLED without a second call.
    ensure!(
        answered.status() == OrderStatus::Cancelling && answered.refund_id.is_empty(),
        "{answered:?}"
    );
    let client = mesh.order_client().await?;
    eventually("the reconciler finished the cancel", || {
        let mut client = client.clone();
        let order_id = order.order_id.clone();
        async move {
            let now = client
                .get_order(ordermesh::proto::order::v1::GetOrderRequest { order_id })
                .await?
                .into_inner();
            Ok(now.status() == OrderStatus::Cancelled && !now.refund_id.is_empty())
        }
    })
    .await?;
    let done = cancel(&mesh, &order.order_id, "asked again").await?;
    ensure!(done.cancel_reason == "out of stock", "{done:?}");
    ensure!(mesh.payments_for(&order.order_id).await? == 1);
    mesh.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_or_unknown_order_is_refused_with_what_to_do() -> Result<()> {
    let Some(mut mesh) = spawn_mesh_with(Backend::Sqlite, MeshOptions::default()).await? else {
        return Ok(());
    };
    // Unknown.
    let unknown = cancel(&mesh, "ord_nobody", "").await.expect_err("unknown");
    ensure!(unknown.code() == Code::NotFound, "{unknown:?}");
    // Invalid.
    let invalid = cancel(&mesh, "", &"x".repeat(600))
        .await
        .expect_err("invalid");
    ensure!(
        invalid.code() == Code::InvalidArgument
            && invalid.message().contains("order_id")
            && invalid.message().contains("reason"),
        "{invalid:?}"
    );
    // Declined: nothing was charged, so nothing to refund.
    let mut client = mesh.order_client().await?;
    let declined = client
        .create_order(order_request("cancel-declined", "tok_declined"))
        .await
        .expect_err("declined");
    ensure!(declined.code() == Code::FailedPrecondition);
    let orders = client
        .list_orders(ordermesh::proto::order::v1::ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders;
    let failed = orders
        .iter()
        .find(|o| o.request_id == "cancel-declined")
        .context("the declined order")?;
    let refused = cancel(&mesh, &failed.order_id, "")
        .await
        .expect_err("not paid");
    ensure!(
        refused.code() == Code::FailedPrecondition
            && refused.message().contains("nothing to refund"),
        "{refused:?}"
    );
    // Pending (payment was down when it was placed): settled first; no charge reached payment,
    // so the key is closed and the order ABANDONED: not paid either.
    mesh.payment.take().context("payment")?.stop().await?;
    let pending = client
        .create_order(order_request("cancel-pending", "tok_visa"))
        .await
        .expect_err("payment is down");
    ensure!(pending.code() == Code::Unavailable, "{pending:?}");
    mesh.start_payment().await?;
    let orders = client
        .list_orders(ordermesh::proto::order::v1::ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders;
    let pending = orders
        .iter()
        .find(|o| o.request_id == "cancel-pending")
        .context("the pending order")?;
    ensure!(
        pending.status() == OrderStatus::PendingPayment,
        "{pending:?}"
    );
    let refused = cancel(&mesh, &pending.order_id, "")
        .await
        .expect_err("never paid");
    ensure!(
        refused.code() == Code::FailedPrecondition && refused.message().contains("Abandoned"),
        "{refused:?}"
    );
    ensure!(mesh.payments_for(&pending.order_id).await? == 0);
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_racing_on_two_order_replicas_make_one_refund_and_one_event(
    backend: Backend,
) -> Result<()> {
    // Arrange: order replicas A and B on one database (on SQLite, one process's file: the
    // in-process replicas share it), B calling a second payment replica on payment's database.
    let Some(mesh) = spawn_mesh_with(backend, MeshOptions::default()).await? else {
        return Ok(());
    };
    let payment_2 = mesh.spawn_payment_replica().await?;
    let order_b = mesh.spawn_order_replica(&payment_2.url()).await?;
    let orders = mesh.place_orders("race", 10).await?;
    let a = mesh.order_client().await?;
    let b = ordermesh::proto::order::v1::order_service_client::OrderServiceClient::connect(
        order_b.url(),
    )
    .await?;

    // Act: each order cancelled four times at once, twice through each replica.
    let answers = futures::future::join_all(orders.iter().flat_map(|order| {
        [a.clone(), b.clone(), a.clone(), b.clone()].map(|mut client| {
            let order_id = order.order_id.clone();
            async move {
                client
                    .cancel_order(CancelOrderRequest {
                        order_id,
                        reason: "raced".into(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
    }))
    .await;

    // Assert: every answer CANCELLED with the one refund of its order ...
    let mut refunds: std::collections::HashMap<String, std::collections::HashSet<String>> =
        std::collections::HashMap::new();
    for answer in answers {
        let order = answer?;
        ensure!(order.status() == OrderStatus::Cancelled, "{order:?}");
        refunds
            .entry(order.order_id)
            .or_default()
            .insert(order.refund_id);
    }
    ensure!(
        refunds.len() == 10 && refunds.values().all(|r| r.len() == 1),
        "one refund per order: {refunds:?}"
    );
    // ... and one OrderCancelled per order: every event on the topic read back, each order's key
    // twice (placed, cancelled), no more.
    let events = mesh.events_once_published(20).await?;
    let mut per_order: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (order_id, _) in &events {
        *per_order.entry(order_id.clone()).or_default() += 1;
    }
    ensure!(
        events.len() == 20 && per_order.len() == 10 && per_order.values().all(|n| *n == 2),
        "events per order: {per_order:?}"
    );
    order_b.stop().await?;
    payment_2.stop().await?;
    mesh.shutdown().await
}
