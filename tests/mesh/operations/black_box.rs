//! The mesh from outside, with the tools users have: grpcurl through server reflection (no .proto
//! files) and kcat reading the topic. Without the tools a local run says so and skips; under CI=true
//! (where `.ci/run` installs them) a missing tool fails.

use anyhow::{Context, Result};
use ordermesh_testkit::{Backend, on_both_backends};
use tokio::process::Command;

use super::support::{
    helpers::spawn_mesh,
    shell::{sh, tool},
};

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_finds_every_service_through_reflection_and_places_an_order(
    backend: Backend,
) -> Result<()> {
    let Some(grpcurl) = tool("grpcurl")? else {
        return Ok(());
    };
    let grpcurl = grpcurl.display();
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let payment = mesh.payment.as_ref().context("payment")?.addr;
    let notifier = mesh.notifier.as_ref().context("notifier")?.addr;
    let order = mesh.order_addr()?;

    for (addr, service) in [
        (order, "ordermesh.order.v1.OrderService"),
        (payment, "ordermesh.payment.v1.PaymentService"),
        (notifier, "ordermesh.notification.v1.NotificationService"),
    ] {
        let listed = sh(&format!("{grpcurl} -plaintext {addr} list")).await?;
        assert!(listed.contains(service), "{addr}: {listed}");
        assert!(listed.contains("grpc.health.v1.Health"), "{addr}: {listed}");
        let health = sh(&format!(
            "{grpcurl} -plaintext {addr} grpc.health.v1.Health/Check"
        ))
        .await?;
        assert!(health.contains("SERVING"), "{addr}: {health}");
        let described = sh(&format!("{grpcurl} -plaintext {addr} describe {service}")).await?;
        assert!(described.contains("rpc "), "{described}");
    }

    let created = sh(&format!(
        r#"{grpcurl} -plaintext -d '{{"request_id":"bb-1","customer":{{"email":"ada@example.com","phone":"+14155550100"}},"items":[{{"sku":"BOOK-1","quantity":1,"unit_price":{{"currency_code":"USD","minor_units":500}}}}],"payment_method_token":"tok_visa"}}' {order} ordermesh.order.v1.OrderService/CreateOrder"#
    ))
    .await?;
    assert!(created.contains("ORDER_STATUS_PAID"), "{created}");

    // A validation error shows the field violations as fields: reflection knows google.rpc.
    let invalid = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"{grpcurl} -plaintext -format-error -d '{{"request_id":"bb-2"}}' {order} ordermesh.order.v1.OrderService/CreateOrder"#
        ))
        .output()
        .await?;
    let shown = String::from_utf8_lossy(&invalid.stdout).into_owned()
        + &String::from_utf8_lossy(&invalid.stderr);
    assert!(!invalid.status.success());
    assert!(shown.contains("\"fieldViolations\""), "{shown}");
    assert!(shown.contains("customer"), "{shown}");
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_reads_the_event_with_its_cloudevents_headers(backend: Backend) -> Result<()> {
    let Some(kcat) = tool("kcat")? else {
        return Ok(());
    };
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let created = mesh
        .order_client()
        .await?
        .create_order(super::support::helpers::order_request("kcat-1", "tok_visa"))
        .await?
        .into_inner();

    let output = sh(&format!(
        "{} -b {} -t {} -C -e -J -q",
        kcat.display(),
        mesh.broker.bootstrap_servers(),
        mesh.topic
    ))
    .await?;

    let line = output
        .lines()
        .find(|l| l.contains(&created.event_id))
        .context("event not read")?;
    let record: serde_json::Value = serde_json::from_str(line)?;
    assert_eq!(record["key"], created.order_id.as_str());
    let headers: Vec<&str> = record["headers"]
        .as_array()
        .context("headers")?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for expected in [
        "ce_specversion",
        "ce_id",
        "ce_type",
        "ordermesh.events.v1.OrderPlaced",
        "content-type",
        "application/json",
    ] {
        assert!(headers.contains(&expected), "{expected} in {headers:?}");
    }
    let payload: serde_json::Value =
        serde_json::from_str(record["payload"].as_str().context("payload")?)?;
    assert_eq!(payload["eventId"], created.event_id.as_str());
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_reads_an_order_cancelled_after_its_order_placed_on_the_same_key(
    backend: Backend,
) -> Result<()> {
    let Some(kcat) = tool("kcat")? else {
        return Ok(());
    };
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let mut client = mesh.order_client().await?;
    let created = client
        .create_order(super::support::helpers::order_request(
            "kcat-cancel",
            "tok_visa",
        ))
        .await?
        .into_inner();
    let cancelled = client
        .cancel_order(ordermesh::proto::order::v1::CancelOrderRequest {
            order_id: created.order_id.clone(),
            reason: "changed my mind".into(),
        })
        .await?
        .into_inner();

    // The order's events as kcat reads them, in the partition's order; the relay publishes the
    // cancellation shortly after CancelOrder answers.
    let read = || async {
        let output = sh(&format!(
            "{} -b {} -t {} -C -e -J -q",
            kcat.display(),
            mesh.broker.bootstrap_servers(),
            mesh.topic
        ))
        .await?;
        let mut ours = Vec::new();
        for line in output.lines() {
            let record: serde_json::Value = serde_json::from_str(line)?;
            if record["key"] != created.order_id.as_str() {
                continue;
            }
            let headers: Vec<String> = record["headers"]
                .as_array()
                .context("headers")?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let ce_type = headers
                .iter()
                .position(|h| h == "ce_type")
                .and_then(|i| headers.get(i + 1).cloned())
                .unwrap_or_default();
            let payload: serde_json::Value =
                serde_json::from_str(record["payload"].as_str().unwrap_or("null"))?;
            ours.push((record["offset"].as_i64().unwrap_or(-1), ce_type, payload));
        }
        Ok::<_, anyhow::Error>(ours)
    };
    let mut ours = read().await?;
    for _ in 0..50 {
        if ours.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ours = read().await?;
    }
    assert_eq!(
        ours.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>(),
        [
            ordermesh::events::ORDER_PLACED_TYPE,
            ordermesh::events::ORDER_CANCELLED_TYPE
        ],
        "{ours:?}"
    );
    assert!(ours[0].0 < ours[1].0, "in the partition's order: {ours:?}");
    let event = &ours[1].2;
    assert_eq!(event["refundId"], cancelled.refund_id.as_str());
    assert_eq!(event["reason"], "changed my mind");
    assert_eq!(event["amount"]["minorUnits"], "3998");
    mesh.shutdown().await
}
