//! Several replicas of a service on one database (run on PostgreSQL by the `mesh_postgres` binary,
//! and on one SQLite file here): whatever replica a request reaches, and however many copies of it
//! race, the database's unique keys and the relays' leases make one order, one charge and one event
//! of it. Each test ends with the ledger check: orders accepted = charges = emails = SMS.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Result, ensure};
use futures::{StreamExt, TryStreamExt};
use ordermesh::proto::order::v1::{
    ListOrdersRequest, Order, OrderStatus, order_service_client::OrderServiceClient,
};
use ordermesh_notifier::{Channel, Stats};
use tonic::transport::Channel as GrpcChannel;

use super::helpers::{EVENTUALLY, Running, TestMesh, order_request, spawn_mesh};

/// Every order stored, through `client` (all pages).
async fn all_orders(client: &mut OrderServiceClient<GrpcChannel>) -> Result<Vec<Order>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_orders(ListOrdersRequest {
                page_size: 500,
                page_token,
            })
            .await?
            .into_inner();
        out.extend(page.orders);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// The ledger check: every order accepted is stored once and PAID, charged once, published once,
/// and notified once by email and once by SMS; nothing else exists.
pub async fn ledger_check(mesh: &TestMesh, accepted: &HashSet<String>) -> Result<()> {
    let mut orders = mesh.order_client().await?;
    let stored = all_orders(&mut orders).await?;
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
    let events = mesh.all_events().await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_split_across_two_order_and_two_payment_replicas_make_one_order_charge_and_event()
-> Result<()> {
    // Arrange: order replicas A and B on one database, A calling payment replica 1 and B payment
    // replica 2, both payment replicas on one database.
    let Some(mesh) = spawn_mesh().await? else {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_outbox_publish_every_event_once() -> Result<()> {
    // Arrange: a second order replica, whose relay shares the outbox with the first's.
    let Some(mesh) = spawn_mesh().await? else {
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
    let events = mesh.all_events().await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_replicas_share_the_partitions_and_one_leaving_and_one_joining_loses_and_repeats_nothing()
-> Result<()> {
    // Arrange: two notifier replicas in each channel's group, both at work on the first orders.
    let Some(mut mesh) = spawn_mesh().await? else {
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
