//! The notifier being down loses nothing: events wait in Kafka, and every one is handled once per
//! channel when it is back, also when it was stopped in the middle of a backlog.

use ordermesh_testkit::{Backend, on_both_backends};
use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use anyhow::{Result, ensure};

use ordermesh::{proto::notification::v1::Channel, proto::notification::v1::Notification};
use ordermesh_notifier::Channel as NotifierChannel;

use super::{
    support::helpers::{
        EVENTUALLY, MeshOptions, Running, TestMesh, eventually_sync, spawn_mesh_with,
    },
    support::servers::{SMS_TOKEN, SmsGateway},
};

fn order_ids(orders: Vec<ordermesh::proto::order::v1::Order>) -> Vec<String> {
    orders.into_iter().map(|o| o.order_id).collect()
}

/// Asserts every order has exactly one notification per channel and nothing else is there.
fn assert_exactly_once(notifications: &[Notification], orders: &[String]) {
    let mut per_key: HashMap<(String, i32), usize> = HashMap::new();
    for n in notifications {
        *per_key.entry((n.order_id.clone(), n.channel)).or_default() += 1;
    }
    for order in orders {
        for channel in [Channel::Email, Channel::Sms] {
            assert_eq!(
                per_key.get(&(order.clone(), channel as i32)),
                Some(&1),
                "{order} {channel:?}"
            );
        }
    }
    assert_eq!(
        notifications.len(),
        orders.len() * 2,
        "no notification for anything else"
    );
}

fn sent(mesh: &TestMesh) -> u64 {
    mesh.notifier_stats
        .values()
        .map(|s| s.sent.load(Ordering::Relaxed))
        .sum()
}

/// How many claims a stopping notifier released to the retry loop (see the notifier's `store`).
async fn released_claims(mesh: &TestMesh) -> Result<u64> {
    let pool = ordermesh_platform::db::connect(&mesh.databases.url("notifier")).await?;
    let released: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM notifications WHERE last_error = 'released unsent by a stopping notifier'",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(released as u64)
}

fn duplicates(mesh: &TestMesh) -> u64 {
    mesh.notifier_stats
        .values()
        .map(|s| s.duplicates.load(Ordering::Relaxed))
        .sum()
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_while_the_notifier_is_down_are_each_notified_once_when_it_returns(
    backend: Backend,
) -> Result<()> {
    // Arrange: no notifier; orders pile up in Kafka.
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: true,
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let orders = order_ids(mesh.place_orders("down", 20).await?);
    assert_eq!(mesh.event_count().await?, 20);

    // Act: the notifier starts with consumer groups that have never existed.
    mesh.start_notifier().await?;

    // Assert: both groups read from the beginning, each event handled once per channel.
    mesh.wait_for_notifications(40).await?;
    eventually_sync("each channel counted 20 sent", || {
        NotifierChannel::ALL
            .iter()
            .all(|c| mesh.notifier_stats[c].sent.load(Ordering::Relaxed) >= 20)
    })
    .await?;
    assert_exactly_once(&mesh.all_notifications().await?, &orders);
    for channel in NotifierChannel::ALL {
        assert_eq!(
            mesh.notifier_stats[&channel].sent.load(Ordering::Relaxed),
            20,
            "{channel:?}"
        );
    }
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_stopped_mid_backlog_resumes_where_it_stopped_without_loss_or_repeat(
    backend: Backend,
) -> Result<()> {
    // Arrange: a backlog of events with the notifier down.
    const ORDERS: usize = 300;
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: true,
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let orders = order_ids(mesh.place_orders("backlog", ORDERS).await?);

    // Act: start it, stop it gracefully once it is part-way through, start it again.
    mesh.start_notifier().await?;
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while sent(&mesh) < 20 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "notifier handled nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    mesh.stop_notifier().await?;
    let first_run = mesh.all_notifications_offline().await?;
    ensure!(
        first_run.len() < ORDERS * 2,
        "the notifier finished the whole backlog before it could be stopped; the test did not test a stop mid-way"
    );
    // What the stop had claimed but not sent it handed to the retry loop (not deleted: another
    // replica may have found those claims), and did not commit past.
    let released = released_claims(&mesh).await?;
    mesh.start_notifier().await?;

    // Assert: everything handled exactly once per channel across both runs; the second run was told
    // nothing it had already done (the graceful stop committed exactly what was handled) but the
    // claims the stop released, which it finds in the retry loop's hands.
    mesh.wait_for_notifications(ORDERS * 2).await?;
    let rest = ORDERS * 2 - first_run.len();
    eventually_sync("the second run counted the rest as sent", || {
        sent(&mesh) as usize >= rest
    })
    .await?;
    assert_exactly_once(&mesh.all_notifications().await?, &orders);
    assert_eq!(
        sent(&mesh) as usize,
        ORDERS * 2 - first_run.len(),
        "second run sent only the rest"
    );
    assert_eq!(
        duplicates(&mesh),
        released,
        "no redelivery after a graceful stop but the released claims"
    );
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_mid_backlog_moves_partitions_without_loss_or_a_second_send(
    backend: Backend,
) -> Result<()> {
    // Arrange: a backlog of SMS to a gateway taking 100 ms each (about 13 s for one replica, which
    // sends on its three partitions at once), and a notifier part-way through it.
    const ORDERS: usize = 400;
    let gateway = SmsGateway::start_slow(Duration::from_millis(100)).await;
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: true,
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let url = gateway.url();
    mesh.notifier_settings = std::sync::Arc::new(move |config| {
        config.sms_webhook_url = Some(url.clone());
        config.sms_webhook_token = Some(SMS_TOKEN.into());
        config.send_timeout = std::time::Duration::from_millis(2_000);
    });
    let orders = order_ids(mesh.place_orders("rebalance", ORDERS).await?);
    mesh.start_notifier().await?;
    let sms_sent = |stats: &HashMap<NotifierChannel, std::sync::Arc<ordermesh_notifier::Stats>>| {
        stats[&NotifierChannel::Sms].sent.load(Ordering::Relaxed)
    };
    eventually_sync("the first replica part-way through", || {
        sms_sent(&mesh.notifier_stats) >= 20
    })
    .await?;

    // Act: a second replica joins the same groups with the same database (the groups rebalance,
    // moving partitions away from the first while it sends), then the first leaves (they
    // rebalance again, giving its partitions to the second).
    let config = mesh.notifier_config()?;
    let second_stats: HashMap<NotifierChannel, std::sync::Arc<ordermesh_notifier::Stats>> =
        NotifierChannel::ALL
            .iter()
            .map(|c| (*c, Default::default()))
            .collect();
    let stats = second_stats.clone();
    let second = Running::spawn("127.0.0.1:0".parse()?, |listener, stop| async move {
        let stop = async move {
            let _ = stop.await;
        };
        ordermesh_notifier::run_with_stats(listener, config, stop, stats).await
    })
    .await?;
    eventually_sync("the second replica has SMS partitions and sends", || {
        sms_sent(&second_stats) > 0
    })
    .await?;
    ensure!(
        (sms_sent(&mesh.notifier_stats) as usize) < ORDERS,
        "the first replica finished before the rebalance; the test did not test one"
    );
    mesh.stop_notifier().await?;

    // Assert: every order notified once per channel, and the gateway took each SMS exactly once:
    // a message redelivered to the second replica while the first was still sending it was not
    // sent again.
    eventually_sync("every SMS at the gateway", || {
        gateway.accepted().len() >= ORDERS
    })
    .await?;
    second.stop().await?;
    let records = mesh.all_notifications_offline().await?;
    for channel in ["EMAIL", "SMS"] {
        let count = records.iter().filter(|(_, c)| c == channel).count();
        assert_eq!(
            count,
            orders.len(),
            "one SENT record per order on {channel}"
        );
    }
    let accepted = gateway.accepted();
    let distinct: std::collections::HashSet<&str> =
        accepted.iter().map(|s| s.reference.as_str()).collect();
    assert_eq!(distinct.len(), ORDERS, "every SMS sent");
    assert_eq!(accepted.len(), ORDERS, "no SMS sent twice");
    mesh.shutdown().await
}
