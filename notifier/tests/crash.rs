//! The notifier as a real process, killed with SIGKILL in the middle of a backlog: restarted, it
//! notifies every event once per channel (one record each), and the SMS gateway sees each SMS at
//! most twice, the second time only for those in flight at the kill (one per partition: the
//! notifier sends on its partitions concurrently), under the same Idempotency-Key so the gateway can
//! drop it. Run against the embedded broker and against tansu, each
//! on SQLite and on PostgreSQL (`#[on_both_backends]`).
#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::Result;
use ordermesh::{
    proto::events::v1::OrderPlaced, proto::order::v1::Customer, proto::types::v1::Money,
};
use ordermesh_bench::events::publish_order_placed;
use ordermesh_testkit::{
    Backend, Broker, Databases, Process, SMS_TOKEN, SmsGateway, Tansu, eventually,
    on_both_backends, unused_addr,
};
use rdkafka::{ClientConfig, producer::FutureProducer};
use tempfile::TempDir;

const EVENTS: usize = 120;
/// Partitions of the events topic.
const PARTITIONS: usize = 3;

async fn publish_events(broker: &Broker, topic: &str) -> Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("enable.idempotence", "true")
        .create()?;
    for i in 0..EVENTS {
        let event = OrderPlaced {
            event_id: format!("evt_crash_{i}"),
            order_id: format!("ord_crash_{i}"),
            customer: Some(Customer {
                email: "ada@example.com".into(),
                phone: "+14155550100".into(),
            }),
            total: Some(Money {
                currency_code: "EUR".into(),
                minor_units: 2_500,
            }),
            ..Default::default()
        };
        publish_order_placed(&producer, topic, &event, None).await?;
    }
    Ok(())
}

/// SENT records per channel in the notifier's database.
async fn sent_counts(database: &str) -> Result<HashMap<String, i64>> {
    let pool = ordermesh_platform::db::connect(database).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT channel, COUNT(*) FROM notifications WHERE status = 'SENT' GROUP BY channel",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    pool.close().await;
    Ok(rows.into_iter().collect())
}

async fn start_notifier(
    dir: &Path,
    database: &str,
    addr: SocketAddr,
    broker: &Broker,
    topic: &str,
    gateway: &str,
) -> Result<Process> {
    let mut notifier = Process::spawn(
        "notifier",
        Path::new(env!("CARGO_BIN_EXE_notifier")),
        &[],
        &[
            ("NOTIFIER_LISTEN_ADDR", addr.to_string()),
            // Any free port: tests run side by side.
            ("NOTIFIER_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            ("NOTIFIER_DATABASE_URL", database.to_owned()),
            ("KAFKA_BROKERS", broker.bootstrap_servers()),
            ("ORDER_EVENTS_TOPIC", topic.to_owned()),
            ("NOTIFIER_EMAIL_GROUP", format!("{topic}-email")),
            ("NOTIFIER_SMS_GROUP", format!("{topic}-sms")),
            ("NOTIFIER_SMS_WEBHOOK_URL", gateway.to_owned()),
            ("NOTIFIER_SMS_WEBHOOK_TOKEN", SMS_TOKEN.to_owned()),
            // The SMS in flight at the kill is sent again once its claim could have finished:
            // twice this, plus a second.
            ("NOTIFIER_SEND_TIMEOUT_MS", "2000".to_owned()),
            // The killed member never leaves its group: the group waits this long for it.
            ("NOTIFIER_SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ],
        dir.join("notifier.log"),
    )?;
    notifier.wait_serving(addr).await?;
    Ok(notifier)
}

async fn scenario(backend: Backend, dir: TempDir, broker: Broker, topic: &str) -> Result<()> {
    let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
        return Ok(());
    };
    let database = databases.url("notifier");
    eprintln!("running against: {} ({databases:?})", broker.name());
    publish_events(&broker, topic).await?;
    // 20 ms per SMS, so the backlog takes seconds and a kill lands in it.
    let gateway = SmsGateway::start_slow(Duration::from_millis(20)).await;
    let gateway_url = gateway.url();

    let addr = unused_addr().await?;
    let notifier =
        start_notifier(dir.path(), &database, addr, &broker, topic, &gateway_url).await?;
    eventually("the notifier part way through the SMS backlog", || async {
        Ok(sent_counts(&database)
            .await?
            .get("SMS")
            .copied()
            .unwrap_or(0)
            >= 20)
    })
    .await?;
    notifier.kill().await?;
    let at_kill = sent_counts(&database).await?;
    let sms_at_kill = at_kill.get("SMS").copied().unwrap_or(0);
    assert!(
        (sms_at_kill as usize) < EVENTS,
        "the kill came after the backlog was done ({at_kill:?}): not mid-batch"
    );

    let notifier =
        start_notifier(dir.path(), &database, addr, &broker, topic, &gateway_url).await?;
    eventually("every event notified on both channels", || async {
        let counts = sent_counts(&database).await?;
        Ok(counts.get("EMAIL") == Some(&(EVENTS as i64))
            && counts.get("SMS") == Some(&(EVENTS as i64)))
    })
    .await?;
    notifier.kill().await?;

    // One record per event and channel (the unique key holds them to that) ...
    let counts = sent_counts(&database).await?;
    assert_eq!(counts.get("EMAIL"), Some(&(EVENTS as i64)));
    assert_eq!(counts.get("SMS"), Some(&(EVENTS as i64)));
    // ... every SMS reached the gateway, and a resend is at most one in flight at the kill per
    // partition (the notifier sends on its partitions concurrently, each in order), with the same
    // Idempotency-Key.
    let keys: Vec<String> = gateway
        .accepted()
        .into_iter()
        .map(|sms| sms.idempotency_key)
        .collect();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for key in &keys {
        *per_key.entry(key.as_str()).or_default() += 1;
    }
    assert_eq!(per_key.len(), EVENTS, "every SMS sent");
    let resent: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        resent.len() <= PARTITIONS && resent.iter().all(|(_, n)| **n == 2),
        "resent: {resent:?}"
    );
    Ok(())
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_backlog_notifies_each_event_once_after_restart_embedded(
    backend: Backend,
) -> Result<()> {
    let topic = format!("order-events-{}", uuid::Uuid::new_v4().simple());
    let dead_letters = [
        ordermesh_notifier::dead_letter::topic(&topic, ordermesh_notifier::Channel::Email),
        ordermesh_notifier::dead_letter::topic(&topic, ordermesh_notifier::Channel::Sms),
    ];
    let broker = Broker::embedded(
        &[&topic, &dead_letters[0], &dead_letters[1]],
        PARTITIONS as i32,
    )?;
    scenario(backend, tempfile::tempdir()?, broker, &topic).await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_backlog_notifies_each_event_once_after_restart_tansu(
    backend: Backend,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(tansu) = Tansu::start_in(dir.path()).await? else {
        return Ok(());
    };
    let topic = format!("order-events-{}", uuid::Uuid::new_v4().simple());
    ordermesh_kafka::ensure_topics(
        &ordermesh_kafka::KafkaSettings::plaintext(tansu.addr.to_string()),
        &[topic.as_str()],
        PARTITIONS as i32,
    )
    .await?;
    scenario(backend, dir, Broker::Tansu(Box::new(tansu)), &topic).await
}
