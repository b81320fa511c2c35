//! The notifier's poll loop stays in its group whatever its senders and its dead-letter topic do
//! (issue 19): a mail server that accepts connections and never answers does not keep a batch
//! past `max.poll.interval.ms` (the member would be dropped and its partitions churn), and a
//! dead-letter topic that cannot be written holds up only the partition whose message waits for it.
//!
//! Both are about Kafka, not the database, so they run on SQLite only.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use ordermesh::proto::events::v1::OrderPlaced;
use ordermesh_bench::events::publish_order_placed;
use ordermesh_notifier::{Channel, dead_letter};
use ordermesh_testkit::{Backend, Broker};
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
};
use tokio::net::TcpListener;

use super::support::{
    helpers::{MeshOptions, TestMesh, eventually, order_request, spawn_mesh_with, unused_addr},
    servers::{SmtpServer, read_maildir, smtp_available},
};

/// A mesh without payment and without a notifier yet; events are published by the test.
async fn mesh() -> Result<Option<TestMesh>> {
    spawn_mesh_with(
        Backend::Sqlite,
        MeshOptions {
            payment: false,
            notifier: false,
            ..Default::default()
        },
    )
    .await
}

/// Publishes `count` OrderPlaced events (ids `{prefix}_{i}`) to `partition` of the mesh's topic.
async fn publish(mesh: &TestMesh, prefix: &str, count: usize, partition: i32) -> Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mesh.broker.bootstrap_servers())
        .create()?;
    for i in 0..count {
        let event = OrderPlaced {
            event_id: format!("evt_{prefix}_{i}"),
            order_id: format!("ord_{prefix}_{i}"),
            customer: order_request("x", "tok_visa").customer,
            ..Default::default()
        };
        publish_order_placed(&producer, &mesh.topic, &event, Some(partition)).await?;
    }
    Ok(())
}

/// Gives every partition of both dead-letter topics `leader` (None: no leader, so nothing can be
/// written to them).
fn dead_letter_leader(mesh: &TestMesh, leader: Option<i32>) -> Result<()> {
    let Broker::Embedded(broker) = &mesh.broker else {
        anyhow::bail!("the embedded broker is needed to take a topic's leader away");
    };
    for channel in Channel::ALL {
        let topic = dead_letter::topic(&mesh.topic, channel);
        for partition in 0..3 {
            broker
                .cluster()?
                .partition_leader(&topic, partition, leader)
                .with_context(|| format!("leader of {topic} [{partition}]"))?;
        }
    }
    Ok(())
}

/// A mail server that accepts connections and says nothing, so every send runs into its timeout;
/// abort the task to free its address.
async fn silent_smtp() -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let addr = unused_addr().await?;
    let silent = TcpListener::bind(addr).await?;
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    Ok((addr, holding))
}

/// A count from `channel`'s outcome counters.
fn counted(
    mesh: &TestMesh,
    channel: Channel,
    count: impl Fn(&ordermesh_notifier::Stats) -> u64,
) -> u64 {
    mesh.notifier_stats.get(&channel).map_or(0, |s| count(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_server_that_accepts_and_never_answers_keeps_the_consumer_in_its_group_and_loses_nothing()
-> Result<()> {
    if !smtp_available().await? {
        return Ok(());
    }
    let Some(mut mesh) = mesh().await? else {
        return Ok(());
    };
    // Arrange: where the mail server will be, silent for now.
    let (smtp, holding) = silent_smtp().await?;
    // A backlog on one partition: 30 sends of 1 s each, against a poll interval of 6 s.
    const EVENTS: usize = 30;
    publish(&mesh, "silent", EVENTS, 0).await?;
    let smtp_url = format!("smtp://{smtp}");
    mesh.notifier_settings = Arc::new(move |config| {
        config.channels = vec![Channel::Email];
        config.smtp_url = Some(smtp_url.clone());
        config.send_timeout = Duration::from_millis(1_000);
        config.max_poll_interval = Duration::from_millis(6_000);
        // Retried quickly and never parked while the server is silent.
        config.send_attempts = 100;
        config.retry_backoff = Duration::from_millis(200);
        config.retry_max_backoff = Duration::from_millis(1_000);
    });
    mesh.start_notifier().await?;

    // Act: the server stays silent for well over two poll intervals.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let tried = counted(&mesh, Channel::Email, |s| {
        s.retrying.load(Ordering::Relaxed)
    });
    // Then it answers, on the same address.
    holding.abort();
    let _ = holding.await;
    let maildir = mesh.dir.path().join("maildir");
    let server = SmtpServer::start(smtp, &maildir).await?;

    // Assert: the sends timed out rather than hung, and once the server answers every event gets
    // one email ...
    ensure!(tried > 0, "no send timed out while the server was silent");
    eventually(
        "an email for every event once the server answers",
        || async { Ok(read_maildir(&maildir)?.len() >= EVENTS) },
    )
    .await?;
    let mut ids: Vec<String> = read_maildir(&maildir)?
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..EVENTS)
        .map(|i| format!("<evt_silent_{i}.email@ordermesh>"))
        .collect();
    expected.sort();
    ensure!(ids == expected, "emails {ids:?}");
    // ... and the consumer kept its partitions throughout: never dropped from its group. (Checked
    // last: a member that overran its poll interval hears of its lost partitions only at its next
    // poll, after the batch that overran.)
    let metrics = mesh
        .notifier
        .as_ref()
        .context("notifier running")?
        .scrape()
        .await?;
    let changes =
        |change| metrics.sum("ordermesh_consumer_rebalances_total", &[("change", change)]);
    let (revoked, assigned) = (changes("revoked"), changes("assigned"));
    ensure!(
        revoked == 0.0 && assigned == 3.0,
        "partitions revoked {revoked} times, assigned {assigned}: the member left its group"
    );
    server.stop().await?;
    mesh.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_that_cannot_be_written_holds_only_its_own_partition() -> Result<()> {
    let Some(mut mesh) = mesh().await? else {
        return Ok(());
    };
    // Arrange: both dead-letter topics without a leader, so nothing can be written to them.
    dead_letter_leader(&mesh, None)?;
    // A message no channel can use on partition 0: it is to be parked, and cannot be.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mesh.broker.bootstrap_servers())
        .create()?;
    producer
        .send(
            FutureRecord::to(&mesh.topic)
                .key("poison")
                .payload("not an event")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    mesh.notifier_settings = Arc::new(|config| {
        // A park gives up after a fifth of this (2 s) and is tried again later.
        config.max_poll_interval = Duration::from_millis(10_000);
        config.send_timeout = Duration::from_millis(2_000);
    });
    mesh.start_notifier().await?;

    // Act: events on the other partitions, some at once and some once the park has failed.
    publish(&mesh, "early", 5, 1).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    publish(&mesh, "late", 5, 2).await?;

    // Assert: they are notified on both channels while the park keeps failing ...
    eventually("every event on the other partitions notified", || async {
        Ok(Channel::ALL
            .iter()
            .all(|c| counted(&mesh, *c, |s| s.sent.load(Ordering::Relaxed)) == 10))
    })
    .await?;
    let parked = |mesh: &TestMesh| {
        Channel::ALL.map(|c| counted(mesh, c, |s| s.dead_lettered.load(Ordering::Relaxed)))
    };
    ensure!(parked(&mesh) == [0, 0], "parked without a leader?");
    let paused = mesh
        .notifier
        .as_ref()
        .context("notifier")?
        .scrape()
        .await?
        .sum("ordermesh_consumer_partitions_paused_total", &[]);
    ensure!(paused >= 2.0, "partition 0 paused {paused} times");
    // ... and the message is parked, once per channel, when the topic can be written again.
    dead_letter_leader(&mesh, Some(1))?;
    eventually(
        "the message parked on each channel's dead-letter topic",
        || async { Ok(parked(&mesh) == [1, 1]) },
    )
    .await?;
    mesh.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_mail_server_is_silent_does_not_wait_out_every_due_retry() -> Result<()> {
    let Some(mut mesh) = mesh().await? else {
        return Ok(());
    };
    // Arrange: 30 emails whose sends time out after 1 s each. The consumer's batch runs out of
    // time after 3 s (half the poll interval) and hands the rest to the retry loop, due at once: a
    // round of some 27 sends of 1 s each.
    let (smtp, holding) = silent_smtp().await?;
    publish(&mesh, "stop", 30, 0).await?;
    let smtp_url = format!("smtp://{smtp}");
    mesh.notifier_settings = Arc::new(move |config| {
        config.channels = vec![Channel::Email];
        config.smtp_url = Some(smtp_url.clone());
        config.send_timeout = Duration::from_millis(1_000);
        config.max_poll_interval = Duration::from_millis(6_000);
        config.send_attempts = 100;
    });
    mesh.start_notifier().await?;
    // The rest handed over (read again, they are found taken: duplicates), then the retry loop's
    // round of them under way.
    let retrying =
        |mesh: &TestMesh| counted(mesh, Channel::Email, |s| s.retrying.load(Ordering::Relaxed));
    eventually("the rest of the batch handed to the retry loop", || async {
        Ok(counted(&mesh, Channel::Email, |s| {
            s.duplicates.load(Ordering::Relaxed)
        }) >= 20)
    })
    .await?;
    let before = retrying(&mesh);
    eventually("the retry loop's round under way", || async {
        Ok(retrying(&mesh) >= before + 2)
    })
    .await?;

    // Act
    let asked = tokio::time::Instant::now();
    mesh.stop_notifier().await?;
    let took = asked.elapsed();

    // Assert: the stop waits for the sends in hand (1 s each), not for a send timeout per due
    // retry of the round (over 20 s); 10 s leaves room for a slow machine.
    ensure!(
        took < Duration::from_secs(10),
        "the notifier took {took:?} to stop"
    );
    holding.abort();
    mesh.shutdown().await
}
