//! The synchronous path under failure, driven the way a user drives it: fault injection headers on
//! CreateOrder that the order service passes on to payment.

use ordermesh_testkit::{Backend, on_both_backends};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use ordermesh::{
    proto::order::v1::CreateOrderRequest, proto::order::v1::ListOrdersRequest,
    proto::order::v1::Order, proto::order::v1::OrderStatus,
};
use tokio::net::TcpListener;
use tonic::{Code, Request, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use super::support::helpers::{
    EVENTUALLY, MeshOptions, TestMesh, order_request, spawn_mesh, spawn_mesh_with,
};

/// CreateOrder with metadata headers.
pub async fn create(
    mesh: &TestMesh,
    request: CreateOrderRequest,
    headers: &[(&'static str, &str)],
) -> Result<Order, Status> {
    let mut request = Request::new(request);
    for (key, value) in headers {
        request
            .metadata_mut()
            .insert(*key, value.parse().expect("ASCII header"));
    }
    let mut client = mesh
        .order_client()
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    client
        .create_order(request)
        .await
        .map(tonic::Response::into_inner)
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_lost_after_the_charge_is_retried_into_one_paid_order_and_one_charge(
    backend: Backend,
) -> Result<()> {
    // Arrange: payment stores the charge, then the first attempt's answer is lost.
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let headers = [
        ("x-fault-abort", "unavailable"),
        ("x-fault-stage", "after"),
        ("x-fault-until-attempt", "1"),
    ];

    // Act
    let order = create(&mesh, order_request("lost-1", "tok_visa"), &headers).await?;

    // Assert: the retry got the first charge back instead of charging again.
    assert_eq!(order.status(), OrderStatus::Paid);
    assert_eq!(
        mesh.payments_for(&order.order_id).await?,
        1,
        "exactly one charge"
    );
    assert_eq!(mesh.event_count().await?, 1);
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_slower_than_the_deadline_is_deadline_exceeded_and_a_later_retry_charges_once(
    backend: Backend,
) -> Result<()> {
    // Arrange: the order service's payment deadline is 2 s; payment takes 10 s.
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let request = order_request("slow-1", "tok_visa");

    // Act
    let started = Instant::now();
    let error = create(&mesh, request.clone(), &[("x-fault-delay-ms", "10000")])
        .await
        .unwrap_err();
    let waited = started.elapsed();

    // Assert: DEADLINE_EXCEEDED from the order service's own deadline, long before payment would
    // have answered; nothing charged, the order waits for payment.
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
    assert!(
        error.message().contains("payment service did not answer"),
        "{}",
        error.message()
    );
    assert!(
        waited < Duration::from_secs(8),
        "waited {waited:?} for a 2 s deadline"
    );
    let pending = &mesh
        .order_client()
        .await?
        .list_orders(ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders[0];
    assert_eq!(pending.status(), OrderStatus::PendingPayment);
    assert_eq!(mesh.payments_for(&pending.order_id).await?, 0);

    // The same request later, payment healthy: one charge.
    let paid = create(&mesh, request, &[]).await?;
    assert_eq!(paid.order_id, pending.order_id);
    assert_eq!(paid.status(), OrderStatus::Paid);
    assert_eq!(mesh.payments_for(&paid.order_id).await?, 1);
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_deadline_shorter_than_the_payment_timeout_is_honoured(
    backend: Backend,
) -> Result<()> {
    // Arrange: the order service would wait 30 s for payment, payment takes 10 s, the caller gives 1 s.
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            order: |config| {
                config.payment_timeout = std::time::Duration::from_millis(30_000);
                config.payment_attempt_timeout = std::time::Duration::from_millis(30_000);
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
    let mut request = Request::new(order_request("hurry-1", "tok_visa"));
    request.set_timeout(Duration::from_secs(1));
    request
        .metadata_mut()
        .insert("x-fault-delay-ms", "10000".parse()?);

    // Act
    let started = Instant::now();
    let error = mesh
        .order_client()
        .await?
        .create_order(request)
        .await
        .unwrap_err();
    let waited = started.elapsed();

    // Assert: the order service's own answer (not only tonic's timer), before the caller's deadline.
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
    assert!(
        error.message().contains("payment service did not answer"),
        "{}",
        error.message()
    );
    assert!(
        waited < Duration::from_secs(5),
        "waited {waited:?} with a 1 s deadline"
    );
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declines_and_bad_input_are_never_retried(backend: Backend) -> Result<()> {
    // A declined card answered once is the answer: one payment row, not three.
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let error = create(&mesh, order_request("decl-once", "tok_declined"), &[])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    let order = &mesh
        .order_client()
        .await?
        .list_orders(ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders[0];
    assert_eq!(mesh.payments_for(&order.order_id).await?, 1);
    // A bad fault header is bad input, named, and not retried either.
    let error = create(
        &mesh,
        order_request("bad-header", "tok_visa"),
        &[("x-fault-delay-ms", "soon")],
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("x-fault-delay-ms"),
        "{}",
        error.message()
    );
    mesh.shutdown().await
}

/// Accepts connections on `listener` and drops them at once, counting them: a payment address where
/// nothing answers, that shows whether anyone still tries.
fn black_hole(listener: TcpListener) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (accepted, task)
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_when_payment_is_gone_fails_fast_and_closes_when_it_is_back(
    backend: Backend,
) -> Result<()> {
    // Arrange: a small breaker, one attempt per order so each order is one breaker call.
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            order: |config| {
                config.payment_max_attempts = 1;
                config.breaker_window = 4;
                config.breaker_min_calls = 4;
                config.breaker_failure_rate_percent = 50;
                config.breaker_open = std::time::Duration::from_millis(1_000);
                config.breaker_half_open_probes = 1;
            },
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.order_addr()?))?
            .connect()
            .await?;
    let mut payment_health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: ordermesh_order::PAYMENT_HEALTH.into(),
        })
        .await?
        .into_inner();
    let mut next_health = async move || -> Result<ServingStatus> {
        let update = tokio::time::timeout(EVENTUALLY, payment_health.next())
            .await?
            .context("watch ended")??;
        Ok(update.status())
    };
    assert_eq!(next_health().await?, ServingStatus::Serving);
    assert_eq!(
        create(&mesh, order_request("before", "tok_visa"), &[])
            .await?
            .status(),
        OrderStatus::Paid
    );

    // Act 1: payment goes away; whatever is at its address drops every connection.
    mesh.payment
        .take()
        .context("payment running")?
        .stop()
        .await?;
    let (accepted, hole) = black_hole(TcpListener::bind(mesh.payment_addr).await?);
    let mut opened_after = None;
    for i in 0..10 {
        let error = create(&mesh, order_request(&format!("gone-{i}"), "tok_visa"), &[])
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
        if error.message().contains("circuit is open") {
            opened_after = Some(i);
            break;
        }
    }
    let opened_after = opened_after.context("the breaker never opened")?;
    assert!(
        opened_after >= 2,
        "it takes the window's share of failures to open, not one ({opened_after})"
    );
    assert_eq!(next_health().await?, ServingStatus::NotServing);

    // Assert 1: while open, CreateOrder fails fast and payment's address sees no call at all.
    let tried = accepted.load(Ordering::SeqCst);
    for i in 0..3 {
        let error = create(&mesh, order_request(&format!("open-{i}"), "tok_visa"), &[])
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
        assert!(
            error.message().contains("circuit is open"),
            "{}",
            error.message()
        );
        assert!(
            error.message().contains("tried again in"),
            "{}",
            error.message()
        );
        assert!(
            error
                .get_details_retry_info()
                .is_some_and(|r| r.retry_delay.is_some()),
            "RetryInfo details"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        tried,
        "no connection to payment while the circuit is open"
    );

    // Act 2: payment is back at its address.
    hole.abort();
    let _ = hole.await;
    mesh.start_payment().await?;

    // Assert 2: once the open time is over, a probe goes through, the circuit closes, orders flow.
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    let mut i = 0;
    let probe = loop {
        i += 1;
        match create(&mesh, order_request(&format!("back-{i}"), "tok_visa"), &[]).await {
            Ok(order) => break order,
            Err(error)
                if error.message().contains("circuit is open")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => bail!("after payment came back: {error:?}"),
        }
    };
    assert_eq!(probe.status(), OrderStatus::Paid);
    assert_eq!(next_health().await?, ServingStatus::Serving);
    assert_eq!(
        create(&mesh, order_request("after", "tok_visa"), &[])
            .await?
            .status(),
        OrderStatus::Paid
    );
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_limit_calls_are_shed_none_hang_and_accepted_orders_are_complete(
    backend: Backend,
) -> Result<()> {
    // Arrange: order serves 4 calls at once; payment takes 500 ms per charge.
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            order: |config| config.max_concurrent_requests = 4,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let client = mesh.order_client().await?;

    // Act: 16 at once.
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut request = Request::new(order_request(&format!("load-{i}"), "tok_visa"));
                request.metadata_mut().insert(
                    "x-fault-delay-ms",
                    tonic::metadata::MetadataValue::from_static("500"),
                );
                client.create_order(request).await
            })
        })
        .collect();
    // Health answers while the server is saturated.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.order_addr()?))?
            .connect()
            .await?;
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let mut accepted = Vec::new();
    let mut shed = 0;
    for call in calls {
        match tokio::time::timeout(EVENTUALLY, call)
            .await
            .context("a call hung")??
        {
            Ok(order) => accepted.push(order.into_inner()),
            Err(status) if status.code() == Code::ResourceExhausted => shed += 1,
            Err(status) => bail!("unexpected {status:?}"),
        }
    }

    // Assert
    assert!(shed > 0, "some calls were shed");
    assert!(!accepted.is_empty(), "some calls were served");
    assert!(accepted.iter().all(|o| o.status() == OrderStatus::Paid));
    let stored = mesh
        .order_client()
        .await?
        .list_orders(ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders;
    assert_eq!(
        stored.len(),
        accepted.len(),
        "a shed call left nothing behind"
    );
    assert_eq!(
        mesh.event_count().await?,
        accepted.len() as i64,
        "every accepted order was published"
    );
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_can_be_configured_for_every_call_and_switched_off_entirely(
    backend: Backend,
) -> Result<()> {
    // Configured: every Charge fails with UNAVAILABLE, so CreateOrder does too, after its retries.
    let Some(faulty) = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            payment_config: |config| config.fault_abort = Some(Code::Unavailable),
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let error = create(&faulty, order_request("configured", "tok_visa"), &[])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(
        error.message().contains("fault injected"),
        "{}",
        error.message()
    );
    faulty.shutdown().await?;

    // Switched off: the headers are ignored and the order goes through.
    let Some(off) = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            payment_config: |config| config.faults_enabled = false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let order = create(
        &off,
        order_request("off", "tok_visa"),
        &[("x-fault-abort", "unavailable")],
    )
    .await?;
    assert_eq!(order.status(), OrderStatus::Paid);
    off.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_the_calls_in_flight_finish(backend: Backend) -> Result<()> {
    // Arrange: a CreateOrder that will take 1.5 s, in flight (its order row exists) when the stop comes.
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            order: |config| {
                config.drain_grace = std::time::Duration::from_millis(20_000);
                config.payment_attempt_timeout = std::time::Duration::from_millis(5_000);
                config.payment_timeout = std::time::Duration::from_millis(5_000);
            },
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let mut client = mesh.order_client().await?;
    let call = tokio::spawn(async move {
        let mut request = Request::new(order_request("draining", "tok_visa"));
        request.metadata_mut().insert(
            "x-fault-delay-ms",
            tonic::metadata::MetadataValue::from_static("1500"),
        );
        client.create_order(request).await
    });
    let mut orders = mesh.order_client().await?;
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while orders
        .list_orders(ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders
        .is_empty()
    {
        if tokio::time::Instant::now() > deadline {
            bail!("the call never reached the order service");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Act: stop everything gracefully (order first, then payment).
    mesh.shutdown().await?;

    // Assert: the call in flight was allowed to finish.
    let order = call.await??.into_inner();
    assert_eq!(order.status(), OrderStatus::Paid);
    Ok(())
}
