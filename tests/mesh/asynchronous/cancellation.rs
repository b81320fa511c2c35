//! The notifiers act on the event types they know and let the others pass (issue 20): an
//! OrderCancelled gets one cancellation email and one SMS, under their own identity, after the
//! order's confirmation; an event type they do not know is skipped and counted, not parked, and
//! the partition goes on. The events are published as the order service's relay publishes them.

use std::time::Duration;

use anyhow::{Result, ensure};
use ordermesh::proto::events::v1::{OrderCancelled, OrderPlaced};
use ordermesh_bench::events::{publish_order_cancelled, publish_order_placed};
use ordermesh_notifier::Channel;
use ordermesh_testkit::{Backend, on_both_backends};
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
};

use super::support::{
    helpers::{
        MeshOptions, TestMesh, eventually, eventually_sync, order_request, spawn_mesh_with,
        unused_addr,
    },
    servers::{SMS_TOKEN, SmsGateway, SmtpServer, smtp_available},
};

fn producer(mesh: &TestMesh) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", mesh.broker.bootstrap_servers())
        .create()?)
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_gets_one_cancellation_email_and_sms_after_the_confirmation(
    backend: Backend,
) -> Result<()> {
    if !smtp_available().await? {
        return Ok(());
    }
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: false,
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let gateway = SmsGateway::start().await;
    let smtp_addr = unused_addr().await?;
    let smtp = SmtpServer::start(smtp_addr, &mesh.dir.path().join("mail")).await?;
    let (smtp_url, sms_url) = (format!("smtp://{smtp_addr}"), gateway.url());
    mesh.notifier_settings = std::sync::Arc::new(move |config| {
        config.smtp_url = Some(smtp_url.clone());
        config.sms_webhook_url = Some(sms_url.clone());
        config.sms_webhook_token = Some(SMS_TOKEN.into());
    });
    mesh.start_notifier().await?;

    // Act: an order placed, then cancelled; the cancellation published twice (a relay's retry).
    let customer = order_request("x", "tok_visa").customer;
    let placed = OrderPlaced {
        event_id: "evt_placed".into(),
        order_id: "ord_cancel".into(),
        customer: customer.clone(),
        total: Some(ordermesh::proto::types::v1::Money {
            currency_code: "EUR".into(),
            minor_units: 4_200,
        }),
        ..Default::default()
    };
    let cancelled = OrderCancelled {
        event_id: "evt_cancelled".into(),
        order_id: "ord_cancel".into(),
        customer,
        refund_id: "ref_1".into(),
        amount: placed.total.clone(),
        reason: "changed my mind".into(),
        cancelled_at: Some(ordermesh::timestamp::from_millis(1_700_000_000_000)),
    };
    let producer = producer(&mesh)?;
    publish_order_placed(&producer, &mesh.topic, &placed, None).await?;
    publish_order_cancelled(&producer, &mesh.topic, &cancelled, None).await?;
    publish_order_cancelled(&producer, &mesh.topic, &cancelled, None).await?;

    // Assert: two emails and two SMS, the cancellation once, each with its own identity.
    eventually_sync("2 emails and 2 SMS", || {
        smtp.emails().is_ok_and(|e| e.len() >= 2) && gateway.accepted().len() >= 2
    })
    .await?;
    eventually("the redelivered cancellation recognised", || async {
        Ok(Channel::ALL.iter().all(|c| {
            mesh.notifier_stats
                .get(c)
                .is_some_and(|s| s.duplicates.load(std::sync::atomic::Ordering::Relaxed) >= 1)
        }))
    })
    .await?;
    mesh.stop_notifier().await?;
    let mut emails: Vec<(String, String)> = smtp
        .emails()?
        .into_iter()
        .map(|e| (e.message_id, e.subject))
        .collect();
    emails.sort();
    ensure!(
        emails
            == [
                (
                    "<evt_cancelled.email@ordermesh>".to_owned(),
                    "Order ord_cancel cancelled".to_owned()
                ),
                (
                    "<evt_placed.email@ordermesh>".to_owned(),
                    "Order ord_cancel confirmed".to_owned()
                ),
            ],
        "emails {emails:?}"
    );
    let sms: Vec<(String, String)> = gateway
        .accepted()
        .into_iter()
        .map(|s| (s.idempotency_key, s.body))
        .collect();
    ensure!(sms.len() == 2, "SMS {sms:?}");
    ensure!(
        sms[1].0 == "evt_cancelled.sms" && sms[1].1.contains("is cancelled. 42.00 EUR is refunded"),
        "the cancellation SMS comes after the confirmation, with the refund: {sms:?}"
    );
    smtp.stop().await?;
    mesh.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_type_the_notifier_does_not_know_is_skipped_and_counted_not_parked() -> Result<()>
{
    let Some(mesh) = spawn_mesh_with(
        Backend::Sqlite,
        MeshOptions {
            payment: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    // Arrange: a type from some other producer, then an OrderPlaced, on one partition.
    let producer = producer(&mesh)?;
    let headers = ordermesh::events::CloudEventHeaders {
        id: "evt_other".into(),
        r#type: "example.v1.InvoiceIssued".into(),
        ..Default::default()
    };
    use ordermesh_kafka::KafkaHeaders;
    producer
        .send(
            FutureRecord::to(&mesh.topic)
                .key("ord_other")
                .payload("{\"invoiceId\": \"inv_1\"}")
                .headers(headers.to_kafka())
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let placed = OrderPlaced {
        event_id: "evt_after_other".into(),
        order_id: "ord_after_other".into(),
        customer: order_request("x", "tok_visa").customer,
        ..Default::default()
    };
    publish_order_placed(&producer, &mesh.topic, &placed, Some(0)).await?;

    // Assert: the OrderPlaced behind it is notified on both channels; the other event is counted
    // as skipped by each group, and nothing is parked.
    let count = |channel: Channel, of: fn(&ordermesh_notifier::Stats) -> u64| {
        mesh.notifier_stats.get(&channel).map_or(0, |s| of(s))
    };
    eventually("the event behind it notified on both channels", || async {
        Ok(Channel::ALL
            .iter()
            .all(|c| count(*c, |s| s.sent.load(std::sync::atomic::Ordering::Relaxed)) == 1))
    })
    .await?;
    for channel in Channel::ALL {
        ensure!(
            count(channel, |s| s
                .skipped
                .load(std::sync::atomic::Ordering::Relaxed))
                == 1,
            "{channel:?} skipped it once"
        );
        ensure!(
            count(channel, |s| s
                .dead_lettered
                .load(std::sync::atomic::Ordering::Relaxed))
                == 0,
            "{channel:?} parked nothing"
        );
    }
    let metrics = mesh
        .notifier
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("notifier"))?
        .scrape()
        .await?;
    ensure!(
        metrics.sum(
            "ordermesh_consumer_handled_total",
            &[("outcome", "skipped")]
        ) == 2.0,
        "skipped once per group, on the metric too"
    );
    mesh.shutdown().await
}
