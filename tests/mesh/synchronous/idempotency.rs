//! One request id is one order, one charge and one event: sent twice, sent concurrently, and
//! straight to payment with one idempotency key.

use anyhow::Result;
use ordermesh::{
    proto::order::v1::ListOrdersRequest, proto::order::v1::OrderStatus,
    proto::payment::v1::ChargeRequest, proto::payment::v1::PaymentStatus, proto::types::v1::Money,
};
use ordermesh_testkit::{Backend, on_both_backends};
use tonic::Code;

use super::support::helpers::{order_request, spawn_mesh};

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_id_twice_is_one_order_one_charge_one_event(
    backend: Backend,
) -> Result<()> {
    // Arrange
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let mut orders = mesh.order_client().await?;
    let request = order_request("dup-1", "tok_visa");

    // Act
    let first = orders.create_order(request.clone()).await?.into_inner();
    let second = orders.create_order(request.clone()).await?.into_inner();

    // Assert
    assert_eq!(first, second, "the retry returns the same order");
    assert_eq!(first.status(), OrderStatus::Paid);
    assert!(
        !first.event_pending,
        "answered once the broker acknowledged the event: {first:?}"
    );
    let listed = orders
        .list_orders(ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders;
    assert_eq!(listed.len(), 1, "one order stored");
    assert_eq!(mesh.event_count().await?, 1, "one event published");
    let notifications = mesh.wait_for_notifications(2).await?;
    // Give a stray duplicate time to show up before counting.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        mesh.all_notifications().await?.len(),
        2,
        "{notifications:?}"
    );

    // The same request id with a different order is refused, and changes nothing.
    let mut different = request.clone();
    different.items[0].quantity = 3;
    let refused = orders.create_order(different).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(refused.message().contains("dup-1"), "{}", refused.message());
    assert_eq!(
        orders
            .list_orders(ListOrdersRequest::default())
            .await?
            .into_inner()
            .orders
            .len(),
        1
    );
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_charges_once_per_idempotency_key(backend: Backend) -> Result<()> {
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let mut payments = mesh.payment_client().await?;
    let charge = ChargeRequest {
        idempotency_key: "key-1".into(),
        order_id: "ord-1".into(),
        amount: Some(Money {
            currency_code: "EUR".into(),
            minor_units: 500,
        }),
        payment_method_token: "tok_mastercard".into(),
    };

    let first = payments.charge(charge.clone()).await?.into_inner();
    let again = payments.charge(charge.clone()).await?.into_inner();
    assert_eq!(first, again, "a retried charge returns the first payment");
    assert_eq!(first.status(), PaymentStatus::Succeeded);

    let mut other_amount = charge.clone();
    other_amount.amount = Some(Money {
        currency_code: "EUR".into(),
        minor_units: 501,
    });
    let refused = payments.charge(other_amount).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(refused.message().contains("key-1"));
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_request_make_one_order_one_charge_one_event(
    backend: Backend,
) -> Result<()> {
    // Arrange: a client that retries before its first call has answered, several times over.
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let client = mesh.order_client().await?;
    let request = order_request("race-1", "tok_visa");

    // Act
    let calls = (0..8).map(|_| {
        let mut client = client.clone();
        let request = request.clone();
        tokio::spawn(async move { client.create_order(request).await })
    });
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await??.into_inner());
    }

    // Assert
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "every copy got the same order"
    );
    assert_eq!(answers[0].status(), OrderStatus::Paid);
    let mut orders = mesh.order_client().await?;
    assert_eq!(
        orders
            .list_orders(ListOrdersRequest::default())
            .await?
            .into_inner()
            .orders
            .len(),
        1
    );
    assert_eq!(mesh.event_count().await?, 1, "one event");
    mesh.shutdown().await
}
