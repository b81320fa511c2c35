//! The notifier handles every event as earlier versions published it: each frozen fixture
//! (`tests/fixtures/events/`, one per event type and version) is published to a real broker exactly
//! as stored (key, headers, value bytes), and a running notifier must come to the outcome expected
//! for its type on both channels, with a SENT notification for each event it sends. A change that
//! stops the notifier reading an old event (a renamed field, a header it newly requires) fails here.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use ordermesh::{
    events::{ORDER_CANCELLED_TYPE, ORDER_PLACED_TYPE},
    proto::notification::v1::{
        ListNotificationsRequest, NotificationStatus,
        notification_service_client::NotificationServiceClient,
    },
};
use ordermesh_notifier::{Channel, Config, Outcome, Stats, dead_letter};
use ordermesh_testkit::{Broker, EventFixture, eventually_sync};
use rdkafka::{
    ClientConfig,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};

/// What the notifier should do with an event of `ce_type`, on each channel.
fn expected(ce_type: &str) -> Result<Outcome> {
    Ok(match ce_type {
        ORDER_PLACED_TYPE => Outcome::Sent,
        // Intended: a cancellation notice on both channels. Until the notifier handles
        // OrderCancelled it passes it over: to see this test pass before that, flip this line to
        // `Outcome::Skipped`.
        ORDER_CANCELLED_TYPE => Outcome::Sent,
        other => bail!("no expected outcome for events of type {other:?}"),
    })
}

/// How many messages a channel came to `outcome` for.
fn count(stats: &Stats, outcome: Outcome) -> u64 {
    let counter = match outcome {
        Outcome::Sent => &stats.sent,
        Outcome::Duplicate => &stats.duplicates,
        Outcome::Skipped => &stats.skipped,
        Outcome::Retrying => &stats.retrying,
        Outcome::DeadLettered => &stats.dead_lettered,
    };
    counter.load(Ordering::Relaxed)
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Sent,
    Outcome::Duplicate,
    Outcome::Skipped,
    Outcome::Retrying,
    Outcome::DeadLettered,
];

/// Publishes `fixture` as it is stored: its key, its headers in order, its value's bytes.
async fn publish(producer: &FutureProducer, topic: &str, fixture: &EventFixture) -> Result<()> {
    let headers = fixture
        .headers
        .iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        });
    let record = FutureRecord::to(topic)
        .key(&fixture.key)
        .payload(&fixture.payload)
        .headers(headers);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| error)
        .with_context(|| format!("publishing {}", fixture.file))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_an_earlier_version_published_is_handled_on_both_channels() -> Result<()> {
    // Arrange: the fixtures on a topic of this test's own, on an embedded broker.
    let fixtures = ordermesh_testkit::event_fixtures()?;
    let topic = format!("order-events-fixtures-{}", uuid::Uuid::new_v4().simple());
    let mut topics = vec![topic.clone()];
    topics.extend(Channel::ALL.map(|c| dead_letter::topic(&topic, c)));
    let broker = Broker::embedded(&topics.iter().map(String::as_str).collect::<Vec<_>>(), 3)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .create()?;
    let mut outcomes = Vec::new();
    for fixture in &fixtures {
        let ce_type = fixture.header("ce_type").unwrap_or_default();
        outcomes.push(expected(ce_type).with_context(|| fixture.file.clone())?);
        publish(&producer, &topic, fixture).await?;
    }

    // Act: a notifier on them, both channels, no mail server or SMS gateway (sends are logged and
    // succeed).
    let data = tempfile::tempdir()?;
    let group = uuid::Uuid::new_v4().simple().to_string();
    let config = Config {
        database_url: format!("sqlite://{}/notifier.db", data.path().display()),
        kafka: ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
        events_topic: topic.clone(),
        channels: Channel::ALL.to_vec(),
        email_group: format!("fixtures-email-{group}"),
        sms_group: format!("fixtures-sms-{group}"),
        smtp_url: None,
        sms_webhook_url: None,
        drain_grace: Duration::from_secs(2),
        ..Config::from_env()?
    };
    let stats: HashMap<Channel, Arc<Stats>> =
        Channel::ALL.iter().map(|c| (*c, Arc::default())).collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let notifier = tokio::spawn(ordermesh_notifier::run_with_stats(
        listener,
        config,
        async move {
            let _ = stopped.await;
        },
        stats.clone(),
    ));

    // Assert: each channel came to an outcome for every fixture.
    let handled = |stats: &Stats| OUTCOMES.iter().map(|o| count(stats, *o)).sum::<u64>();
    let waited = eventually_sync("every fixture handled on both channels", || {
        stats.values().all(|s| handled(s) >= fixtures.len() as u64)
    })
    .await;
    // Each event expected to be sent was, once per channel (named by its file)...
    let mut client = NotificationServiceClient::connect(format!("http://{addr}")).await?;
    let notifications = client
        .list_notifications(ListNotificationsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await?
        .into_inner()
        .notifications;
    for (fixture, outcome) in fixtures.iter().zip(&outcomes) {
        if *outcome != Outcome::Sent {
            continue;
        }
        let event_id = fixture.header("ce_id").unwrap_or_default();
        let sent = notifications
            .iter()
            .filter(|n| n.event_id == event_id && n.status() == NotificationStatus::Sent)
            .count();
        ensure!(
            sent == Channel::ALL.len(),
            "{}: {sent} SENT notifications of event {event_id}, expected one per channel",
            fixture.file
        );
    }
    // ... and each channel's counts of every outcome are the expected ones.
    for channel in Channel::ALL {
        let stats = &stats[&channel];
        for outcome in OUTCOMES {
            let want = outcomes.iter().filter(|o| **o == outcome).count() as u64;
            ensure!(
                count(stats, outcome) == want,
                "{channel:?}: {} fixtures came to {outcome:?}, expected {want} ({stats:?}; \
                 waiting: {waited:?})",
                count(stats, outcome),
            );
        }
    }
    let _ = stop.send(());
    notifier.await??;
    Ok(())
}
