//! Real delivery: emails to a real SMTP server, SMS to an HTTP gateway. A server that is down is
//! retried with backoff without holding up the partition; one still down after the last attempt
//! leaves the message on the dead-letter topic with headers that say why, and a replay after the
//! fix delivers it once. Every scenario ends by counting orders = events = emails = SMS.

use ordermesh_testkit::{Backend, on_both_backends};
use std::{collections::HashMap, sync::Arc};

use anyhow::{Context, Result, ensure};
use ordermesh::{
    proto::notification::v1::Notification, proto::notification::v1::NotificationStatus,
};
use ordermesh_notifier::{Channel, ReplayReport, dead_letter, replay_dead_letters};

use super::{
    support::helpers::{
        MeshOptions, TestMesh, eventually, eventually_sync, header, spawn_mesh_on_tansu,
        spawn_mesh_with, unused_addr,
    },
    support::servers::{SMS_TOKEN, SmsGateway, SmtpServer, read_maildir, smtp_available},
};

/// A mesh whose notifier (not started yet) sends email to `smtp` and SMS to `gateway`, retrying
/// quickly, at most `attempts` sends per notification.
async fn mesh_delivering_to(
    backend: Backend,
    smtp: std::net::SocketAddr,
    gateway: &SmsGateway,
    attempts: u32,
) -> Result<Option<TestMesh>> {
    let mesh = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            ..Default::default()
        },
    )
    .await?;
    Ok(mesh.map(|mesh| delivering_to(mesh, smtp, gateway, attempts)))
}

/// `mesh` with its notifier (not started yet) set up as in [`mesh_delivering_to`].
fn delivering_to(
    mut mesh: TestMesh,
    smtp: std::net::SocketAddr,
    gateway: &SmsGateway,
    attempts: u32,
) -> TestMesh {
    let (smtp_url, sms_url) = (format!("smtp://{smtp}"), gateway.url());
    mesh.notifier_settings = Arc::new(move |config| {
        config.smtp_url = Some(smtp_url.clone());
        config.sms_webhook_url = Some(sms_url.clone());
        config.sms_webhook_token = Some(SMS_TOKEN.into());
        config.send_timeout = std::time::Duration::from_millis(2_000);
        config.send_attempts = attempts;
        config.retry_backoff = std::time::Duration::from_millis(50);
        config.retry_max_backoff = std::time::Duration::from_millis(400);
    });
    mesh
}

/// Event id of every event on the mesh's topic, with its partition and offset: `count` events,
/// each id once (an id at two positions is an event published twice).
async fn event_positions(mesh: &TestMesh, count: usize) -> Result<HashMap<String, (i32, i64)>> {
    use rdkafka::Message;
    let read: Vec<(String, (i32, i64))> = mesh
        .read_events(count)
        .await?
        .iter()
        .map(|m| {
            let id = header(m, "ce_id").unwrap_or_default();
            (id, (m.partition(), m.offset()))
        })
        .collect();
    let positions: HashMap<_, _> = read.iter().cloned().collect();
    ensure!(
        positions.len() == count,
        "{count} events expected, each with an id of its own; read (id, (partition, offset)): {read:?}"
    );
    Ok(positions)
}

fn statuses(notifications: &[Notification]) -> Vec<(Channel, NotificationStatus)> {
    notifications
        .iter()
        .map(|n| {
            let channel = match n.channel() {
                ordermesh::proto::notification::v1::Channel::Sms => Channel::Sms,
                _ => Channel::Email,
            };
            (channel, n.status())
        })
        .collect()
}

/// Checks that each event reached the SMTP server and the gateway exactly once, with its identity.
fn assert_each_delivered_once(
    maildir: &std::path::Path,
    gateway: &SmsGateway,
    events: &HashMap<String, (i32, i64)>,
) -> Result<()> {
    let emails = read_maildir(maildir)?;
    let mut email_ids: Vec<String> = emails.iter().map(|e| e.message_id.clone()).collect();
    email_ids.sort();
    let mut expected: Vec<String> = events
        .keys()
        .map(|id| format!("<{id}.email@ordermesh>"))
        .collect();
    expected.sort();
    ensure!(
        email_ids == expected,
        "emails {email_ids:?}, expected one per event {expected:?}"
    );
    for email in &emails {
        ensure!(
            email.to.contains("ada@example.com"),
            "email to {:?}",
            email.to
        );
        ensure!(
            email.subject.starts_with("Order ord_"),
            "subject {:?}",
            email.subject
        );
        ensure!(email.body.contains("is confirmed"), "body {:?}", email.body);
    }
    let sms = gateway.accepted();
    let mut references: Vec<String> = sms.iter().map(|s| s.reference.clone()).collect();
    references.sort();
    let mut expected: Vec<String> = events.keys().cloned().collect();
    expected.sort();
    ensure!(
        references == expected,
        "SMS {references:?}, expected one per event {expected:?}"
    );
    for one in &sms {
        ensure!(one.to == "+14155550100", "SMS to {:?}", one.to);
        ensure!(
            one.idempotency_key == format!("{}.sms", one.reference),
            "key {:?}",
            one.idempotency_key
        );
    }
    Ok(())
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_and_sms_reach_real_servers_once_per_order(backend: Backend) -> Result<()> {
    if !smtp_available().await? {
        return Ok(());
    }
    let gateway = SmsGateway::start().await;
    let smtp_addr = unused_addr().await?;
    let Some(mut mesh) = mesh_delivering_to(backend, smtp_addr, &gateway, 8).await? else {
        return Ok(());
    };
    let smtp = SmtpServer::start(smtp_addr, &mesh.dir.path().join("mail")).await?;
    mesh.start_notifier().await?;

    let orders = mesh.place_orders("deliver", 5).await?;
    eventually_sync("5 emails and 5 SMS delivered", || {
        smtp.emails().is_ok_and(|e| e.len() >= 5) && gateway.accepted().len() >= 5
    })
    .await?;
    let events = event_positions(&mesh, orders.len()).await?;
    // Stopped, the notifier sends nothing more: the counts are final.
    mesh.stop_notifier().await?;

    assert_eq!(events.len(), orders.len(), "one event per order");
    assert_each_delivered_once(&smtp.maildir, &gateway, &events)?;
    let sent = mesh.all_notifications_offline().await?;
    assert_eq!(
        sent.len(),
        10,
        "one SENT record per event and channel: {sent:?}"
    );
    smtp.stop().await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_down_are_retried_without_blocking_and_deliver_once_when_back(
    backend: Backend,
) -> Result<()> {
    if !smtp_available().await? {
        return Ok(());
    }
    // Arrange: no SMTP server yet, and a gateway that is overloaded (503).
    let gateway = SmsGateway::start().await;
    gateway.answer(503);
    let smtp_addr = unused_addr().await?;
    let Some(mut mesh) = mesh_delivering_to(backend, smtp_addr, &gateway, 1_000).await? else {
        return Ok(());
    };
    mesh.start_notifier().await?;

    // Act 1: orders while both are down.
    let orders = mesh.place_orders("down", 4).await?;

    // Every event was taken off the partition and is waiting for a retry: the consumer moved on
    // past each failure, and each notification has already been tried more than once.
    eventually(
        "all 8 notifications retrying, each tried twice or more",
        || async {
            let all = mesh.all_notifications().await?;
            Ok(all.len() == 8
                && all.iter().all(|n| {
                    n.status() == NotificationStatus::Retrying
                        && n.attempts >= 2
                        && n.next_attempt_at.is_some()
                        && !n.last_error.is_empty()
                }))
        },
    )
    .await?;
    let all = mesh.all_notifications().await?;
    let email_error = &all.iter().find(|n| n.channel == 1).unwrap().last_error;
    assert!(email_error.contains("SMTP"), "{email_error}");
    let sms_error = &all.iter().find(|n| n.channel == 2).unwrap().last_error;
    assert!(sms_error.contains("503"), "{sms_error}");
    assert!(gateway.accepted().is_empty());
    assert!(
        gateway.requests().await >= 8,
        "each SMS was tried twice or more"
    );
    // The metrics say so too: retries scheduled per group, nothing sent.
    let notifier = mesh.notifier.as_ref().context("running")?;
    eventually("retries counted for both groups", || async {
        let metrics = notifier.scrape().await?;
        let retried = |group: &str| {
            metrics.sum(
                "ordermesh_consumer_retried_total",
                &[("messaging_consumer_group_name", group)],
            )
        };
        let config = mesh.notifier_config()?;
        Ok(retried(config.group(Channel::Email)) >= 8.0
            && retried(config.group(Channel::Sms)) >= 8.0
            && metrics.sum("ordermesh_notifications_sent_total", &[]) == 0.0)
    })
    .await?;

    // Act 2: both come back.
    let smtp = SmtpServer::start(smtp_addr, &mesh.dir.path().join("mail")).await?;
    gateway.answer(202);

    eventually("all 8 notifications sent", || async {
        let all = mesh.all_notifications().await?;
        Ok(all.len() == 8 && all.iter().all(|n| n.status() == NotificationStatus::Sent))
    })
    .await?;
    let notifier = mesh.notifier.as_ref().context("running")?;
    eventually("4 sent per channel, counted", || async {
        let metrics = notifier.scrape().await?;
        let sent = |channel| {
            metrics.sum(
                "ordermesh_notifications_sent_total",
                &[("channel", channel)],
            )
        };
        Ok(sent("email") == 4.0 && sent("sms") == 4.0)
    })
    .await?;
    let events = event_positions(&mesh, orders.len()).await?;
    mesh.stop_notifier().await?;
    assert_each_delivered_once(&smtp.maildir, &gateway, &events)?;
    smtp.stop().await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_retries_is_dead_lettered_with_why_and_replay_delivers_once(
    backend: Backend,
) -> Result<()> {
    if !smtp_available().await? {
        return Ok(());
    }
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    dead_letter_and_replay(mesh).await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_retries_on_tansu_is_dead_lettered_with_why_and_replay_delivers_once(
    backend: Backend,
) -> Result<()> {
    if !smtp_available().await? {
        return Ok(());
    }
    let options = MeshOptions {
        notifier: false,
        ..Default::default()
    };
    match spawn_mesh_on_tansu(backend, options).await? {
        Some(mesh) => dead_letter_and_replay(mesh).await,
        None => Ok(()),
    }
}

async fn dead_letter_and_replay(mesh: TestMesh) -> Result<()> {
    // Arrange: SMTP down for longer than 3 attempts; a gateway refusing the requests for good (422).
    let gateway = SmsGateway::start().await;
    gateway.answer(422);
    let smtp_addr = unused_addr().await?;
    let mut mesh = delivering_to(mesh, smtp_addr, &gateway, 3);
    mesh.start_notifier().await?;

    let orders = mesh.place_orders("dlq", 2).await?;
    let email_dlq = dead_letter::topic(&mesh.topic, Channel::Email);
    let sms_dlq = dead_letter::topic(&mesh.topic, Channel::Sms);
    let parked_email = mesh.read_topic(&email_dlq, 2).await?;
    let parked_sms = mesh.read_topic(&sms_dlq, 2).await?;
    let events = event_positions(&mesh, orders.len()).await?;

    // The dead letters say why, how often, since when, and where each came from.
    for (parked, attempts, error) in [
        (&parked_email, "3", "SMTP"),
        // A refusal is not retried.
        (&parked_sms, "1", "422"),
    ] {
        for message in parked {
            let get = |key| header(message, key).unwrap_or_default();
            let (partition, offset) = events[&get("ce_id")];
            assert_eq!(get("dlq_attempts"), attempts);
            assert!(get("dlq_error").contains(error), "{}", get("dlq_error"));
            assert_eq!(get("dlq_original_topic"), mesh.topic);
            assert_eq!(get("dlq_original_partition"), partition.to_string());
            assert_eq!(get("dlq_original_offset"), offset.to_string());
            assert!(
                time::OffsetDateTime::parse(
                    &get("dlq_first_failure_time"),
                    &time::format_description::well_known::Rfc3339
                )
                .is_ok(),
                "{}",
                get("dlq_first_failure_time")
            );
            // The message itself travels unchanged: replayable.
            assert_eq!(get("ce_type"), ordermesh::events::ORDER_PLACED_TYPE);
        }
    }
    eventually("4 notifications FAILED", || async {
        let all = mesh.all_notifications().await?;
        Ok(all.len() == 4 && all.iter().all(|n| n.status() == NotificationStatus::Failed))
    })
    .await?;
    assert_eq!(
        statuses(&mesh.all_notifications().await?)
            .iter()
            .filter(|(c, _)| *c == Channel::Email)
            .count(),
        2
    );

    // Act: fix both, replay both channels.
    let smtp = SmtpServer::start(smtp_addr, &mesh.dir.path().join("mail")).await?;
    gateway.answer(202);
    let config = mesh.notifier_config()?;
    let sent_two = ReplayReport {
        replayed: 2,
        sent: 2,
        ..Default::default()
    };
    assert_eq!(
        replay_dead_letters(&config, Channel::Email).await?,
        sent_two
    );
    assert_eq!(replay_dead_letters(&config, Channel::Sms).await?, sent_two);
    // A second replay has nothing left to do.
    assert_eq!(
        replay_dead_letters(&config, Channel::Email).await?,
        ReplayReport::default()
    );

    mesh.stop_notifier().await?;
    assert_each_delivered_once(&smtp.maildir, &gateway, &events)?;
    let sent = mesh.all_notifications_offline().await?;
    assert_eq!(
        sent.len(),
        4,
        "one SENT record per event and channel: {sent:?}"
    );
    smtp.stop().await?;
    mesh.shutdown().await
}
