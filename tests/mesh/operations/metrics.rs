//! Each service's admin port, scraped as Prometheus would: the counters move as orders are placed
//! and as faults are injected, and they say what happened (codes, channels, groups).

use anyhow::{Result, ensure};
use ordermesh_testkit::{Backend, on_both_backends};
use tonic::{Code, Request};

use super::support::helpers::{
    MeshOptions, Metrics, eventually, order_request, spawn_mesh, spawn_mesh_with,
};

const CALLS: &str = "rpc_server_call_duration_seconds_count";
const CLIENT_CALLS: &str = "rpc_client_call_duration_seconds_count";

fn calls(metrics: &Metrics, name: &str, method: &str, code: Code) -> f64 {
    let code = (code as i32).to_string();
    metrics.sum(
        name,
        &[("rpc_method", method), ("rpc_grpc_status_code", &code)],
    )
}

#[on_both_backends]
#[tokio::test]
async fn counters_move_as_orders_are_placed_and_faults_injected(backend: Backend) -> Result<()> {
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let order = mesh.order()?;
    let payment = mesh.payment.as_ref().expect("payment runs");
    let notifier = mesh.notifier.as_ref().expect("notifier runs");

    let before = order.scrape().await?;
    ensure!(
        calls(&before, CALLS, "CreateOrder", Code::Ok) == 0.0,
        "{}",
        before.0
    );

    mesh.place_orders("metrics", 3).await?;
    mesh.wait_for_notifications(6).await?;

    let after = order.scrape().await?;
    ensure!(
        calls(&after, CALLS, "CreateOrder", Code::Ok) == 3.0,
        "{}",
        after.0
    );
    ensure!(
        calls(&after, CLIENT_CALLS, "Charge", Code::Ok) == 3.0,
        "{}",
        after.0
    );
    ensure!(
        after.sum(
            "messaging_client_sent_messages_total",
            &[("messaging_destination_name", &mesh.topic)]
        ) == 3.0,
        "{}",
        after.0
    );
    ensure!(
        after.has("ordermesh_payment_breaker_state", &[]),
        "{}",
        after.0
    );
    ensure!(
        after.sum("ordermesh_payment_breaker_state", &[]) == 0.0,
        "closed"
    );
    ensure!(after.has("ordermesh_outbox_backlog", &[]), "{}", after.0);
    let charged = payment.scrape().await?;
    ensure!(
        calls(&charged, CALLS, "Charge", Code::Ok) == 3.0,
        "{}",
        charged.0
    );

    // The notifier counts once the offset is stored, just after the notification is recorded:
    // wait for it. Lag comes from librdkafka's statistics, every few seconds.
    eventually("the notifier counted both channels", || async {
        let m = notifier.scrape().await?;
        Ok(m.sum(
            "ordermesh_notifications_sent_total",
            &[("channel", "email")],
        ) == 3.0
            && m.sum("ordermesh_notifications_sent_total", &[("channel", "sms")]) == 3.0
            && m.sum("ordermesh_consumer_handled_total", &[("outcome", "sent")]) == 6.0
            && m.sum("messaging_process_duration_seconds_count", &[]) == 6.0
            && m.has("ordermesh_consumer_lag", &[]))
    })
    .await?;
    let counted = notifier.scrape().await?;
    ensure!(
        counted.sum("ordermesh_consumer_retried_total", &[]) == 0.0
            && counted.sum("ordermesh_consumer_dead_lettered_total", &[]) == 0.0,
        "{}",
        counted.0
    );

    // A bad request is an INVALID_ARGUMENT call; payment failing once is a retry.
    let mut client = mesh.order_client().await?;
    let refused = client
        .create_order(ordermesh::proto::order::v1::CreateOrderRequest::default())
        .await
        .expect_err("empty request");
    ensure!(refused.code() == Code::InvalidArgument, "{refused:?}");
    let mut flaky = Request::new(order_request("metrics-retried", "tok_visa"));
    flaky
        .metadata_mut()
        .insert("x-fault-abort", "unavailable".parse()?);
    flaky
        .metadata_mut()
        .insert("x-fault-until-attempt", "1".parse()?);
    client.create_order(flaky).await?;

    let faulted = order.scrape().await?;
    ensure!(
        calls(&faulted, CALLS, "CreateOrder", Code::InvalidArgument) == 1.0,
        "{}",
        faulted.0
    );
    ensure!(
        calls(&faulted, CALLS, "CreateOrder", Code::Ok) == 4.0,
        "{}",
        faulted.0
    );
    ensure!(
        calls(&faulted, CLIENT_CALLS, "Charge", Code::Unavailable) == 1.0,
        "{}",
        faulted.0
    );
    ensure!(
        calls(&faulted, CLIENT_CALLS, "Charge", Code::Ok) == 4.0,
        "{}",
        faulted.0
    );
    ensure!(
        faulted.sum("ordermesh_payment_retries_total", &[]) == 1.0,
        "{}",
        faulted.0
    );
    let charged = payment.scrape().await?;
    ensure!(
        calls(&charged, CALLS, "Charge", Code::Unavailable) == 1.0,
        "{}",
        charged.0
    );
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test]
async fn shed_calls_are_counted_as_resource_exhausted(backend: Backend) -> Result<()> {
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            order: |config| config.max_concurrent_requests = 1,
            ..MeshOptions::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    // Five at once, each held by payment for a while: one is served at a time, the rest shed.
    let client = mesh.order_client().await?;
    let calls_made = (0..5).map(|i| {
        let mut client = client.clone();
        async move {
            let mut request = Request::new(order_request(&format!("shed-{i}"), "tok_visa"));
            request
                .metadata_mut()
                .insert("x-fault-delay-ms", "300".parse().expect("ascii"));
            client.create_order(request).await
        }
    });
    let results = futures::future::join_all(calls_made).await;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(status) if status.code() == Code::ResourceExhausted))
        .count() as f64;
    ensure!(refused >= 1.0, "{results:?}");

    let m = mesh.order()?.scrape().await?;
    ensure!(
        m.sum("ordermesh_requests_shed_total", &[]) == refused,
        "{}",
        m.0
    );
    ensure!(
        calls(&m, CALLS, "CreateOrder", Code::ResourceExhausted) == refused,
        "{}",
        m.0
    );
    mesh.shutdown().await
}
