//! When payment says no or is not there: a decline fails the order with the reason and publishes
//! nothing, payment's error details reach the client, payment down is UNAVAILABLE within the
//! deadline and a retry resumes the order, and an unknown order is NOT_FOUND.

use ordermesh_testkit::{Backend, on_both_backends};
use std::time::{Duration, Instant};

use anyhow::Result;
use ordermesh::{
    proto::order::v1::GetOrderRequest, proto::order::v1::ListOrdersRequest,
    proto::order::v1::OrderStatus, proto::payment::v1::GetPaymentRequest,
    proto::payment::v1::PaymentStatus,
};
use tonic::Code;
use tonic_types::StatusExt;

use super::support::helpers::{MeshOptions, order_request, spawn_mesh, spawn_mesh_with};

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_fails_the_order_with_the_reason_and_publishes_nothing(
    backend: Backend,
) -> Result<()> {
    // Arrange
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let mut orders = mesh.order_client().await?;

    // Act
    let declined = orders
        .create_order(order_request("decl-1", "tok_declined"))
        .await
        .unwrap_err();

    // Assert
    assert_eq!(declined.code(), Code::FailedPrecondition);
    assert!(
        declined.message().contains("card_declined"),
        "{}",
        declined.message()
    );
    let stored = &orders
        .list_orders(ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders[0];
    assert_eq!(stored.status(), OrderStatus::PaymentFailed);
    assert_eq!(stored.failure_reason, "card_declined");
    assert!(stored.event_id.is_empty());
    // The declined payment is on record at the payment service too.
    let payment = mesh
        .payment_client()
        .await?
        .get_payment(GetPaymentRequest {
            payment_id: stored.payment_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(payment.status(), PaymentStatus::Declined);
    assert_eq!(payment.decline_reason, "card_declined");

    // A retry gets the same answer and still no event.
    let again = orders
        .create_order(order_request("decl-1", "tok_declined"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(mesh.event_count().await?, 0);
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_services_error_details_reach_the_client(backend: Backend) -> Result<()> {
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let mut orders = mesh.order_client().await?;

    let refused = orders
        .create_order(order_request("tok-1", "tok_unknown"))
        .await
        .unwrap_err();

    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("payment service refused"),
        "{}",
        refused.message()
    );
    let fields: Vec<String> = refused
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["payment_method_token"]);
    // A refused request leaves nothing behind: no order, no charge, no event.
    let listed = orders
        .list_orders(ordermesh::proto::order::v1::ListOrdersRequest::default())
        .await?
        .into_inner();
    assert!(listed.orders.is_empty(), "{:?}", listed.orders);
    assert_eq!(mesh.payment_count().await?, 0);
    assert_eq!(mesh.event_count().await?, 0);
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_down_is_unavailable_within_the_deadline_and_a_retry_resumes_the_order(
    backend: Backend,
) -> Result<()> {
    // Arrange: no payment service.
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: true,
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    mesh.payment
        .take()
        .expect("payment was started")
        .stop()
        .await?;
    let mut orders = mesh.order_client().await?;

    // Act
    let started = Instant::now();
    let unavailable = orders
        .create_order(order_request("down-1", "tok_visa"))
        .await
        .unwrap_err();
    let waited = started.elapsed();

    // Assert: UNAVAILABLE, bounded by the 2 s charge deadline (plus slack for a loaded machine: this
    // bounds a hang, it does not measure speed).
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");
    assert!(
        unavailable
            .message()
            .contains("retry with the same request_id"),
        "{}",
        unavailable.message()
    );
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
    let pending = &orders
        .list_orders(ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders[0];
    assert_eq!(pending.status(), OrderStatus::PendingPayment);
    assert_eq!(mesh.event_count().await?, 0);

    // Payment comes back; the client retries with the same request id and the order completes.
    mesh.start_payment().await?;
    let paid = orders
        .create_order(order_request("down-1", "tok_visa"))
        .await?
        .into_inner();
    assert_eq!(paid.order_id, pending.order_id);
    assert_eq!(paid.status(), OrderStatus::Paid);
    let fetched = orders
        .get_order(GetOrderRequest {
            order_id: paid.order_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(fetched.status(), OrderStatus::Paid);
    assert_eq!(mesh.event_count().await?, 1);
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_order_is_not_found(backend: Backend) -> Result<()> {
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: true,
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let missing = mesh
        .order_client()
        .await?
        .get_order(GetOrderRequest {
            order_id: "ord_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("ord_nope"));
    mesh.shutdown().await
}
