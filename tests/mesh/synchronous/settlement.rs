//! The money promise under sequences of answers: one request, at most one charge, and every charge
//! ends in a paid order or is given back (here: never lands). Each test drives a sequence that
//! broke it before the charge keys could be settled (issue 17), then runs the ledger check.

use ordermesh_testkit::{Backend, on_both_backends};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use ordermesh::{
    proto::order::v1::GetOrderRequest, proto::order::v1::Order, proto::order::v1::OrderStatus,
    proto::payment::v1::ChargeKeyState, proto::payment::v1::ChargeRequest,
    proto::payment::v1::GetChargeOutcomeRequest, proto::types::v1::Money,
};
use tonic::{Code, Request};
use tonic_types::StatusExt;

use super::{
    support::helpers::{
        MeshOptions, Running, TestMesh, eventually, order_request, spawn_mesh_with,
    },
    support::ledger::{all_orders, assert_ledger},
    sync_path::create,
};

/// Payment's answer is lost after the charge is stored, on every attempt: the order stays pending.
const CHARGED_ANSWER_LOST: &[(&str, &str)] =
    &[("x-fault-abort", "unavailable"), ("x-fault-stage", "after")];
/// Payment is unreachable on every attempt, before anything is stored: the order stays pending.
const NOT_CHARGED: &[(&str, &str)] = &[("x-fault-abort", "unavailable")];

/// The breaker never opens (these tests fail many attempts on purpose and want each call to reach
/// payment); with `reconcile`, the reconciler settles orders left alone for 2.5 s.
fn options(reconcile: bool) -> MeshOptions {
    MeshOptions {
        order: if reconcile {
            |config| {
                no_breaker(config);
                config.reconcile_grace = std::time::Duration::from_millis(2_500);
                config.reconcile_interval = std::time::Duration::from_millis(200);
            }
        } else {
            no_breaker
        },
        ..Default::default()
    }
}

fn no_breaker(config: &mut ordermesh_order::Config) {
    config.breaker_window = 10_000;
    config.breaker_min_calls = 10_000;
}

async fn get(mesh: &TestMesh, order_id: &str) -> Result<Order> {
    Ok(mesh
        .order_client()
        .await?
        .get_order(GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await?
        .into_inner())
}

/// A Charge straight to payment, as the order service would send it.
fn charge(key: &str, order_id: &str) -> Request<ChargeRequest> {
    Request::new(ChargeRequest {
        idempotency_key: key.to_owned(),
        order_id: order_id.to_owned(),
        amount: Some(Money {
            currency_code: "USD".into(),
            minor_units: 1_000,
        }),
        payment_method_token: "tok_visa".into(),
    })
}

/// The order a pending answer names (its message carries the order id).
async fn pending_order(mesh: &TestMesh, request_id: &str) -> Result<Order> {
    all_orders(mesh)
        .await?
        .into_iter()
        .find(|o| o.request_id == request_id)
        .with_context(|| format!("an order for {request_id}"))
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_a_lost_charge_answer_keeps_the_order_and_its_one_charge(
    backend: Backend,
) -> Result<()> {
    // Arrange
    let Some(mesh) = spawn_mesh_with(backend, options(false)).await? else {
        return Ok(());
    };
    let request = order_request("dc-1", "tok_visa");

    // Act: the review's sequence. The charge is stored, the answer lost (DEADLINE_EXCEEDED); the
    // same request is then refused (INVALID_ARGUMENT); then sent once more, plainly.
    let lost = create(
        &mesh,
        request.clone(),
        &[
            ("x-fault-abort", "deadline_exceeded"),
            ("x-fault-stage", "after"),
        ],
    )
    .await
    .unwrap_err();
    let refused = create(
        &mesh,
        request.clone(),
        &[("x-fault-abort", "invalid_argument")],
    )
    .await;
    let again = create(&mesh, request, &[]).await?;

    // Assert: the refusal did not undo the charge: the order it named is the one paid, once.
    assert_eq!(lost.code(), Code::DeadlineExceeded, "{lost:?}");
    let first = pending_order(&mesh, "dc-1").await?;
    let refused = refused.context("the refusal found the charge and paid the order")?;
    assert_eq!(refused.status(), OrderStatus::Paid);
    assert_eq!(refused.order_id, first.order_id);
    assert_eq!(again.order_id, first.order_id);
    assert_eq!(mesh.payments_for(&first.order_id).await?, 1);
    assert_ledger(&mesh).await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_after_an_uncertain_attempt_is_settled_by_what_payment_holds(
    backend: Backend,
) -> Result<()> {
    // Arrange
    let Some(mesh) = spawn_mesh_with(backend, options(false)).await? else {
        return Ok(());
    };
    let refusals = [
        "invalid_argument",
        "permission_denied",
        "unimplemented",
        "not_found",
        "failed_precondition",
    ];
    for code in refusals {
        // Act: an uncertain attempt that charged, then a refusal; an uncertain attempt that did
        // not, then a refusal; then each request once more, plainly.
        let charged = order_request(&format!("charged-then-{code}"), "tok_visa");
        let uncharged = order_request(&format!("uncharged-then-{code}"), "tok_visa");
        let refusal: &[(&str, &str)] = &[("x-fault-abort", code)];
        for (request, first) in [(&charged, CHARGED_ANSWER_LOST), (&uncharged, NOT_CHARGED)] {
            let error = create(&mesh, request.clone(), first).await.unwrap_err();
            assert_eq!(error.code(), Code::Unavailable, "{code}: {error:?}");
        }
        let paid = create(&mesh, charged.clone(), refusal).await;
        let given_up = create(&mesh, uncharged.clone(), refusal).await.unwrap_err();
        let paid_again = create(&mesh, charged, &[]).await?;
        let given_up_again = create(&mesh, uncharged, &[]).await.unwrap_err();

        // Assert: the charge that stood is the order's payment; the order with none is kept,
        // abandoned, its key closed, and answers the same on a retry.
        let paid = paid.with_context(|| format!("{code} after a charge"))?;
        assert_eq!(paid.status(), OrderStatus::Paid, "{code}");
        assert_eq!(paid_again.order_id, paid.order_id);
        for error in [&given_up, &given_up_again] {
            assert_eq!(error.code(), Code::FailedPrecondition, "{code}: {error:?}");
            assert_eq!(
                error.get_details_error_info().map(|i| i.reason),
                Some("ORDER_ABANDONED".to_owned()),
                "{code}: {error:?}"
            );
        }
        let abandoned = pending_order(&mesh, &format!("uncharged-then-{code}")).await?;
        assert_eq!(abandoned.status(), OrderStatus::Abandoned, "{code}");
        assert!(
            abandoned
                .failure_reason
                .contains("payment refused the charge"),
            "{}",
            abandoned.failure_reason
        );
    }
    assert_ledger(&mesh).await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_failed_precondition_is_not_a_decline_and_a_refusal_on_the_first_try_pays_what_stood(
    backend: Backend,
) -> Result<()> {
    // Arrange
    let Some(mesh) = spawn_mesh_with(backend, options(false)).await? else {
        return Ok(());
    };

    // Act: payment stores the charge, then answers FAILED_PRECONDITION without the decline's
    // ErrorInfo; and, for a new order, INVALID_ARGUMENT after storing its charge.
    let bare = create(
        &mesh,
        order_request("bare-fp", "tok_visa"),
        &[
            ("x-fault-abort", "failed_precondition"),
            ("x-fault-stage", "after"),
        ],
    )
    .await?;
    let lying = create(
        &mesh,
        order_request("charged-then-invalid", "tok_visa"),
        &[
            ("x-fault-abort", "invalid_argument"),
            ("x-fault-stage", "after"),
        ],
    )
    .await?;
    // A true refusal on the first try still leaves nothing behind.
    let unknown_token = create(&mesh, order_request("bad-token", "tok_unknown"), &[])
        .await
        .unwrap_err();

    // Assert
    assert_eq!(bare.status(), OrderStatus::Paid);
    assert_eq!(lying.status(), OrderStatus::Paid);
    assert_eq!(
        unknown_token.code(),
        Code::InvalidArgument,
        "{unknown_token:?}"
    );
    let orders = all_orders(&mesh).await?;
    assert!(
        orders.iter().all(|o| o.request_id != "bad-token"),
        "{orders:?}"
    );
    assert_ledger(&mesh).await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_whose_caller_gave_up_is_settled_paid_by_the_reconciler(
    backend: Backend,
) -> Result<()> {
    // Arrange
    let Some(mesh) = spawn_mesh_with(backend, options(true)).await? else {
        return Ok(());
    };

    // Act: the charge is stored, every answer lost, and the client never comes back.
    let error = create(
        &mesh,
        order_request("gone-1", "tok_visa"),
        CHARGED_ANSWER_LOST,
    )
    .await
    .unwrap_err();

    // Assert: the reconciler finds the charge: PAID, its event, both notifications.
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    let order = pending_order(&mesh, "gone-1").await?;
    assert_eq!(order.status(), OrderStatus::PendingPayment);
    eventually("the reconciler pays the order", || async {
        Ok(get(&mesh, &order.order_id).await?.status() == OrderStatus::Paid)
    })
    .await?;
    assert_ledger(&mesh).await?;
    let metrics = mesh.order()?.scrape().await?;
    assert_eq!(
        metrics.sum(
            "ordermesh_reconciler_settlements_total",
            &[("outcome", "paid")]
        ),
        1.0
    );
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_charged_order_is_abandoned_and_a_charge_delayed_past_the_grace_cannot_land(
    backend: Backend,
) -> Result<()> {
    // Arrange: an order left pending with nothing charged, and a Charge for its key on its way to
    // payment, delayed past the reconciler's grace period.
    let Some(mesh) = spawn_mesh_with(backend, options(true)).await? else {
        return Ok(());
    };
    let request = order_request("never-1", "tok_visa");
    let error = create(&mesh, request.clone(), NOT_CHARGED)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    let order = pending_order(&mesh, "never-1").await?;
    let key = format!("order:{}", order.order_id);
    let mut payment = mesh.payment_client().await?;
    let mut late = charge(&key, &order.order_id);
    late.metadata_mut()
        .insert("x-fault-delay-ms", "6000".parse()?);
    let sent = Instant::now();
    let late_charge = tokio::spawn(async move { payment.charge(late).await });

    // Act: the reconciler settles the order while the charge is delayed.
    eventually("the reconciler abandons the order", || async {
        Ok(get(&mesh, &order.order_id).await?.status() == OrderStatus::Abandoned)
    })
    .await?;
    let settled_after = sent.elapsed();
    let late_answer = late_charge.await?;

    // Assert: settled before the charge arrived, which then could not land.
    assert!(settled_after < Duration::from_secs(6), "{settled_after:?}");
    let refused = late_answer.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(
        refused.get_details_error_info().map(|i| i.reason),
        Some("CHARGE_KEY_CLOSED".to_owned())
    );
    let outcome = mesh
        .payment_client()
        .await?
        .get_charge_outcome(GetChargeOutcomeRequest {
            idempotency_key: key,
        })
        .await?
        .into_inner();
    assert_eq!(outcome.state(), ChargeKeyState::Closed);
    let abandoned = get(&mesh, &order.order_id).await?;
    assert!(
        abandoned.failure_reason.contains("grace period"),
        "{}",
        abandoned.failure_reason
    );
    // The same request later gets the same answer, and nothing is charged.
    let retry = create(&mesh, request, &[]).await.unwrap_err();
    assert_eq!(retry.code(), Code::FailedPrecondition, "{retry:?}");
    assert_eq!(mesh.payments_for(&order.order_id).await?, 0);
    assert_ledger(&mesh).await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_order_replicas_reconciling_one_backlog_settle_each_order_once(
    backend: Backend,
) -> Result<()> {
    // Arrange: a backlog of pending orders, charged and not, and a second order replica on the
    // same database, so two reconcilers find it.
    let Some(mesh) = spawn_mesh_with(backend, options(true)).await? else {
        return Ok(());
    };
    let (charged, uncharged) = (6, 4);
    for i in 0..charged + uncharged {
        let faults = if i < charged {
            CHARGED_ANSWER_LOST
        } else {
            NOT_CHARGED
        };
        let error = create(
            &mesh,
            order_request(&format!("backlog-{i}"), "tok_visa"),
            faults,
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    }
    let payment_url = mesh.payment.as_ref().context("payment")?.url();
    let replica: Running = mesh.spawn_order_replica(&payment_url).await?;

    // Act: both reconcile.
    eventually("every order is settled", || async {
        Ok(all_orders(&mesh)
            .await?
            .iter()
            .all(|o| o.status() != OrderStatus::PendingPayment))
    })
    .await?;

    // Assert: each settled once, between them; the charged ones paid, the others abandoned.
    let orders = all_orders(&mesh).await?;
    let paid = orders
        .iter()
        .filter(|o| o.status() == OrderStatus::Paid)
        .count();
    let abandoned = orders
        .iter()
        .filter(|o| o.status() == OrderStatus::Abandoned)
        .count();
    assert_eq!((paid, abandoned), (charged, uncharged));
    let mut settlements = 0.0;
    for service in [mesh.order()?, &replica] {
        settlements += service
            .scrape()
            .await?
            .sum("ordermesh_reconciler_settlements_total", &[]);
    }
    ensure!(
        settlements == (charged + uncharged) as f64,
        "{settlements} settlements for {} orders",
        charged + uncharged
    );
    assert_ledger(&mesh).await?;
    replica.stop().await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_a_caller_with_a_1_s_deadline_gets_its_paid_order_in_time(
    backend: Backend,
) -> Result<()> {
    // Arrange: CreateOrder would wait 5 s for the broker; the broker is down.
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            order: |config| {
                config.publish_timeout = std::time::Duration::from_millis(5_000);
                // Room to answer before the caller's own timer, even on a loaded test machine.
                config.deadline_margin = std::time::Duration::from_millis(300);
            },
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    mesh.broker.down().await?;

    // Act
    let mut request = Request::new(order_request("hurry-broker", "tok_visa"));
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let order = mesh
        .order_client()
        .await?
        .create_order(request)
        .await?
        .into_inner();
    let waited = started.elapsed();

    // Assert: the paid order, its event pending, within the deadline; the event follows.
    assert_eq!(order.status(), OrderStatus::Paid);
    assert!(order.event_pending, "{order:?}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    mesh.broker.up().await?;
    eventually("the event is published", || async {
        Ok(!get(&mesh, &order.order_id).await?.event_pending)
    })
    .await?;
    assert_ledger(&mesh).await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_headers_reach_payment_only_where_both_switches_are_on(
    backend: Backend,
) -> Result<()> {
    // Off by default, both of them: a deployment copied from this template has no fault injection.
    let order_defaults = ordermesh_order::Config::from_env()?;
    let payment_defaults = ordermesh_payment::Config::from_env()?;
    assert!(!order_defaults.forward_fault_headers);
    assert!(!payment_defaults.faults_enabled);

    // Arrange: payment would inject, order does not forward.
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            order: |config| config.forward_fault_headers = false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };

    // Act
    let order = create(&mesh, order_request("no-forward", "tok_visa"), NOT_CHARGED).await?;

    // Assert: the header stopped at order; straight to payment, it still works.
    assert_eq!(order.status(), OrderStatus::Paid);
    let mut direct = charge("direct-1", "ord_direct");
    direct
        .metadata_mut()
        .insert("x-fault-abort", "unavailable".parse()?);
    let error = mesh
        .payment_client()
        .await?
        .charge(direct)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_payment_gone_a_full_backlog_of_unsettleable_orders_does_not_hold_up_a_stop(
    backend: Backend,
) -> Result<()> {
    // Arrange: no payment at all, and more pending orders past the grace period than the
    // reconciler takes in one round; none can be settled.
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: false,
            notifier: false,
            ..options(true)
        },
    )
    .await?
    else {
        return Ok(());
    };
    let client = mesh.order_client().await?;
    let answers: Vec<_> = futures::stream::iter(0..70)
        .map(|i| {
            let mut client = client.clone();
            async move {
                client
                    .create_order(order_request(&format!("nowhere-{i}"), "tok_visa"))
                    .await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    ensure!(answers.iter().all(Result::is_err), "payment is gone");
    tokio::time::sleep(Duration::from_millis(3_500)).await;

    // Act: the order service is stopped while its reconciler keeps failing to settle them.
    let stopped = tokio::time::timeout(Duration::from_secs(15), mesh.stop_order()).await;

    // Assert: it stops, and the orders are still pending, for a later round.
    stopped.context("the order service did not stop within 15 s")??;
    mesh.start_order().await?;
    let orders = all_orders(&mesh).await?;
    assert_eq!(orders.len(), 70);
    assert!(
        orders
            .iter()
            .all(|o| o.status() == OrderStatus::PendingPayment)
    );
    mesh.shutdown().await
}
