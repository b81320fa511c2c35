//! Several replicas of a service on one database (a PostgreSQL server, or one SQLite file): whatever replica a request reaches, and however many copies of it
//! race, the database's unique keys and the relays' leases make one order, one charge and one event
//! of it. Each test ends with the ledger check: orders accepted = charges = emails = SMS.

use ordermesh_testkit::{Backend, on_both_backends};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Result, ensure};
use futures::{StreamExt, TryStreamExt};
use ordermesh::{
    proto::order::v1::Order, proto::order::v1::OrderStatus,
    proto::order::v1::order_service_client::OrderServiceClient,
};
use ordermesh_notifier::{Channel, Stats};

use super::{
    support::helpers::{
        EVENTUALLY, Metrics, Running, Severable, TestMesh, order_request, spawn_mesh,
    },
    support::ledger::all_orders,
};

/// The ledger check: every order accepted is stored once and PAID, charged once, published once,
/// and notified once by email and once by SMS; nothing else exists.
pub async fn ledger_check(mesh: &TestMesh, accepted: &HashSet<String>) -> Result<()> {
    let stored = all_orders(mesh).await?;
    let stored_ids: HashSet<String> = stored.iter().map(|o| o.order_id.clone()).collect();
    ensure!(
        stored.len() == stored_ids.len() && &stored_ids == accepted,
        "stored orders ({}) are the accepted ones ({})",
        stored.len(),
        accepted.len()
    );
    ensure!(stored.iter().all(|o| o.status() == OrderStatus::Paid));
    ensure!(
        mesh.payment_count().await? == accepted.len() as i64,
        "one charge per order: {} charges for {} orders",
        mesh.payment_count().await?,
        accepted.len()
    );
    for order in accepted {
        ensure!(mesh.payments_for(order).await? == 1, "{order} charged once");
    }
    let events = mesh.events_once_published(accepted.len()).await?;
    let mut per_order: HashMap<&str, usize> = HashMap::new();
    for (order, _) in &events {
        *per_order.entry(order.as_str()).or_default() += 1;
    }
    ensure!(
        events.len() == accepted.len() && per_order.values().all(|n| *n == 1),
        "one event per order: {} events for {} orders",
        events.len(),
        accepted.len()
    );
    ensure!(per_order.keys().all(|o| accepted.contains(*o)));
    let notifications = mesh.wait_for_notifications(2 * accepted.len()).await?;
    // A stray duplicate would show up after the expected ones; give it the time to.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let notifications = if notifications.len() == 2 * accepted.len() {
        mesh.all_notifications().await?
    } else {
        notifications
    };
    for channel in Channel::ALL {
        let sent: Vec<&str> = notifications
            .iter()
            .filter(|n| n.channel().as_str_name().ends_with(channel.as_str()))
            .map(|n| n.order_id.as_str())
            .collect();
        let distinct: HashSet<&str> = sent.iter().copied().collect();
        ensure!(
            sent.len() == accepted.len() && distinct.len() == accepted.len(),
            "{channel:?}: {} notifications ({} orders) for {} accepted orders",
            sent.len(),
            distinct.len(),
            accepted.len()
        );
    }
    Ok(())
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_split_across_two_order_and_two_payment_replicas_make_one_order_charge_and_event(
    backend: Backend,
) -> Result<()> {
    // Arrange: order replicas A and B on one database, A calling payment replica 1 and B payment
    // replica 2, both payment replicas on one database.
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let payment_2 = mesh.spawn_payment_replica().await?;
    let order_b = mesh.spawn_order_replica(&payment_2.url()).await?;
    let a = mesh.order_client().await?;
    let b = OrderServiceClient::connect(order_b.url()).await?;

    // Act: 30 requests, each sent twice to A and twice to B at the same moment.
    let answers: Vec<(String, Order)> = futures::stream::iter(0..30)
        .flat_map(|i| {
            let request = order_request(&format!("replicated-{i}"), "tok_visa");
            futures::stream::iter([a.clone(), b.clone(), a.clone(), b.clone()].map(
                move |mut client| {
                    let request = request.clone();
                    async move {
                        let order = client.create_order(request.clone()).await?.into_inner();
                        Ok::<_, anyhow::Error>((request.request_id, order))
                    }
                },
            ))
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;

    // Assert: every copy answered with the same paid order.
    let mut by_request: HashMap<String, HashSet<String>> = HashMap::new();
    for (request_id, order) in &answers {
        assert_eq!(order.status(), OrderStatus::Paid, "{order:?}");
        by_request
            .entry(request_id.clone())
            .or_default()
            .insert(order.order_id.clone());
    }
    assert_eq!(by_request.len(), 30);
    assert!(
        by_request.values().all(|ids| ids.len() == 1),
        "one order id per request id: {by_request:?}"
    );
    let accepted: HashSet<String> = by_request.into_values().flatten().collect();
    ledger_check(&mesh, &accepted).await?;
    stop_all([order_b, payment_2]).await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_outbox_publish_every_event_once(backend: Backend) -> Result<()> {
    // Arrange: a second order replica, whose relay shares the outbox with the first's.
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let order_b = mesh
        .spawn_order_replica(&format!("http://{}", mesh.payment_addr))
        .await?;
    let a = mesh.order_client().await?;
    let b = OrderServiceClient::connect(order_b.url()).await?;

    // Act: 300 orders, alternately to each replica, 32 at a time: both relays wake for every
    // round of commits and claim from the same rows.
    let orders: Vec<Order> = futures::stream::iter(0..300)
        .map(|i| {
            let mut client = if i % 2 == 0 { a.clone() } else { b.clone() };
            async move {
                let request = order_request(&format!("relayed-{i}"), "tok_visa");
                Ok::<_, anyhow::Error>(client.create_order(request).await?.into_inner())
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;

    // Assert
    let accepted: HashSet<String> = orders.iter().map(|o| o.order_id.clone()).collect();
    assert_eq!(accepted.len(), 300);
    let events = mesh.events_once_published(300).await?;
    let distinct: HashSet<&String> = events.iter().map(|(_, event)| event).collect();
    assert_eq!(
        (events.len(), distinct.len()),
        (300, 300),
        "every event published, none twice"
    );
    ledger_check(&mesh, &accepted).await?;
    stop_all([order_b]).await?;
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_replica_killed_under_load_moves_its_traffic_to_the_others_and_accepted_orders_complete(
    backend: Backend,
) -> Result<()> {
    // Arrange: three payment replicas on one database, and an order replica balancing over all
    // three (ORDER_PAYMENT_URL a list of them).
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let payment_2 = mesh.spawn_payment_replica().await?;
    let payment_3 = mesh.spawn_payment_replica().await?;
    let first = mesh.payment.as_ref().expect("payment runs");
    // Replica 2 is reached through a proxy whose severing is its crash.
    let network_2 = Severable::start(payment_2.addr).await?;
    let urls = [first.url(), network_2.url(), payment_3.url()].join(",");
    let order = mesh.spawn_order_replica(&urls).await?;
    let client = OrderServiceClient::connect(order.url()).await?;

    // Act: 240 orders, 8 at a time; after the first 60 answers, replica 2 dies.
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = {
        let answered = answered.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..240)
                .map(|i| {
                    let (mut client, answered) = (client.clone(), answered.clone());
                    async move {
                        let request = order_request(&format!("under-load-{i}"), "tok_visa");
                        let answer = client.create_order(request).await;
                        answered.fetch_add(1, Ordering::Relaxed);
                        answer
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        })
    };
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while answered.load(Ordering::Relaxed) < 60 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the load did not get going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let served_by_2 = charges(&payment_2).await?;
    let payment_2_addr = network_2.addr;
    let survivors_before = (charges(first).await?, charges(&payment_3).await?);
    network_2.sever();
    let answered_before = answered.load(Ordering::Relaxed);
    let answers = load.await?;

    // Assert: every order was accepted (paid), though a replica died under them: the attempts that
    // met it were retried on the others, with the same idempotency key.
    let mut accepted = HashSet::new();
    for answer in answers {
        let order = answer.map_err(|status| anyhow::anyhow!("an order failed: {status:?}"))?;
        assert_eq!(order.into_inner().status(), OrderStatus::Paid);
    }
    for order in all_orders(&mesh).await? {
        accepted.insert(order.order_id);
    }
    assert_eq!(accepted.len(), 240);
    // All three took charges before the kill; the two left went on taking them after it.
    let (served_by_1, served_by_3) = (charges(first).await?, charges(&payment_3).await?);
    eprintln!(
        "charges served: replica 1 {served_by_1}, replica 2 {served_by_2} (then killed, after \
         {answered_before} answers), replica 3 {served_by_3}"
    );
    ensure!(
        served_by_2 > 0.0,
        "replica 2 took no calls before it was killed"
    );
    ensure!(
        served_by_1 > survivors_before.0 && served_by_3 > survivors_before.1,
        "both survivors took charges after the kill (before it: {survivors_before:?})"
    );

    // The dead replica is out of rotation once its health check fails: from then on no attempt
    // goes to it, so none fails and is retried.
    let dead = payment_2_addr.to_string();
    order
        .wait_for_metrics("the killed replica reported unhealthy", |m| {
            m.has(
                "ordermesh_payment_endpoint_healthy",
                &[("server_address", &dead)],
            ) && m.sum(
                "ordermesh_payment_endpoint_healthy",
                &[("server_address", &dead)],
            ) == 0.0
        })
        .await?;
    let retries = |m: &Metrics| m.sum("ordermesh_payment_retries_total", &[]);
    let retries_before = retries(&order.scrape().await?);
    let mut client = OrderServiceClient::connect(order.url()).await?;
    for i in 0..30 {
        let request = order_request(&format!("after-kill-{i}"), "tok_visa");
        let order = client.create_order(request).await?.into_inner();
        assert_eq!(order.status(), OrderStatus::Paid);
        accepted.insert(order.order_id);
    }
    assert_eq!(
        retries(&order.scrape().await?),
        retries_before,
        "no attempt went to the dead replica (retries {retries_before})"
    );
    ledger_check(&mesh, &accepted).await?;
    stop_all([order, payment_2, payment_3]).await?;
    mesh.shutdown().await
}

/// Charge calls a payment replica answered (any code), from its metrics.
async fn charges(payment: &Running) -> Result<f64> {
    Ok(payment.scrape().await?.sum(
        "rpc_server_call_duration_seconds_count",
        &[("rpc_method", "Charge")],
    ))
}

async fn stop_all<const N: usize>(replicas: [Running; N]) -> Result<()> {
    for replica in replicas {
        replica.stop().await?;
    }
    Ok(())
}

/// Places orders, a dozen at a time, until `done` holds (or fails naming `what` after
/// [`EVENTUALLY`]); adds them to `accepted`.
async fn place_until(
    mesh: &TestMesh,
    accepted: &mut HashSet<String>,
    what: &str,
    done: impl Fn() -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while !done() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "not so after {EVENTUALLY:?}: {what}"
        );
        let prefix = uuid::Uuid::new_v4().simple().to_string();
        let batch = mesh.place_orders(&prefix, 12).await?;
        accepted.extend(batch.into_iter().map(|o| o.order_id));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Emails sent by a notifier replica, from its counters.
fn emails_sent(stats: &HashMap<Channel, Arc<Stats>>) -> u64 {
    stats[&Channel::Email].sent.load(Ordering::Relaxed)
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_replicas_share_the_partitions_and_one_leaving_and_one_joining_loses_and_repeats_nothing(
    backend: Backend,
) -> Result<()> {
    // Arrange: two notifier replicas in each channel's group, both at work on the first orders.
    let Some(mut mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let (second, second_stats) = mesh.spawn_notifier_replica().await?;
    let mut accepted: HashSet<String> = HashSet::new();
    let first_stats = mesh.notifier_stats.clone();
    place_until(
        &mesh,
        &mut accepted,
        "both replicas send (they share the three partitions)",
        || emails_sent(&first_stats) > 0 && emails_sent(&second_stats) > 0,
    )
    .await?;

    // Act: while more orders flow, the first replica stops (its partitions move to the second) and
    // a third joins (some move to it).
    let placing = {
        let client = mesh.order_client().await?;
        tokio::spawn(async move {
            let mut placed = Vec::new();
            for i in 0..150 {
                let mut client = client.clone();
                let request = order_request(&format!("during-{i}"), "tok_visa");
                placed.push(client.create_order(request).await?.into_inner().order_id);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, anyhow::Error>(placed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    mesh.stop_notifier().await?;
    // The mesh's notifier is now the third replica (the ledger check reads through it).
    mesh.start_notifier().await?;
    accepted.extend(placing.await??);
    let third_stats = mesh.notifier_stats.clone();
    place_until(
        &mesh,
        &mut accepted,
        "the third replica takes partitions and sends",
        || emails_sent(&third_stats) > 0,
    )
    .await?;

    // Assert: every order notified exactly once per channel, among all replicas.
    ledger_check(&mesh, &accepted).await?;
    eprintln!(
        "emails sent by replica: first {}, second {}, third {}",
        emails_sent(&first_stats),
        emails_sent(&second_stats),
        emails_sent(&third_stats)
    );
    second.stop().await?;
    mesh.shutdown().await
}
