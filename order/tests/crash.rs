//! The order service as a real process, killed with SIGKILL while its orders' events are stored but
//! not yet published (the broker is down): restarted, it publishes every event exactly once. Run
//! against the embedded broker and against tansu, a broker nobody here wrote, each on SQLite and on
//! PostgreSQL (`#[on_both_backends]`). And killed between a charge and its
//! record: restarted, its reconciler finds the charge and the order is paid.
#![allow(clippy::unwrap_used)]

use std::{collections::HashSet, net::SocketAddr, path::Path};

use anyhow::{Result, ensure};
use ordermesh::{
    proto::order::v1::CreateOrderRequest, proto::order::v1::Customer,
    proto::order::v1::GetOrderRequest, proto::order::v1::LineItem, proto::order::v1::Order,
    proto::order::v1::OrderStatus, proto::order::v1::order_service_client::OrderServiceClient,
    proto::payment::v1::ListPaymentsRequest,
    proto::payment::v1::payment_service_client::PaymentServiceClient, proto::types::v1::Money,
};
use ordermesh_testkit::{
    Backend, Broker, Databases, Process, Tansu, eventually, on_both_backends, unused_addr,
};
use tempfile::TempDir;

fn order_request(request_id: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        request_id: request_id.into(),
        customer: Some(Customer {
            email: "ada@example.com".into(),
            phone: "+14155550100".into(),
        }),
        items: vec![LineItem {
            sku: "SKU-1".into(),
            quantity: 2,
            unit_price: Some(Money {
                currency_code: "EUR".into(),
                minor_units: 1_250,
            }),
        }],
        payment_method_token: "tok_visa".into(),
    }
}

/// The order binary on `addr`, on `database`, logging into `dir`, with `extra` settings.
async fn start_order(
    dir: &Path,
    database: &str,
    addr: SocketAddr,
    payment: SocketAddr,
    broker: &Broker,
    topic: &str,
    extra: &[(&str, &str)],
) -> Result<Process> {
    let mut env = vec![
        ("ORDER_LISTEN_ADDR", addr.to_string()),
        // Any free port: tests run side by side.
        ("ORDER_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("ORDER_DATABASE_URL", database.to_owned()),
        ("ORDER_PAYMENT_URL", format!("http://{payment}")),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
        ("ORDER_EVENTS_TOPIC", topic.to_owned()),
        // CreateOrder gives up waiting for the broker quickly and reports the event pending.
        ("ORDER_PUBLISH_TIMEOUT_MS", "300".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let mut order = Process::spawn(
        "order",
        Path::new(env!("CARGO_BIN_EXE_order")),
        &[],
        &env,
        dir.join("order.log"),
    )?;
    order.wait_serving(addr).await?;
    Ok(order)
}

async fn scenario(backend: Backend, dir: TempDir, mut broker: Broker, topic: &str) -> Result<()> {
    let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
        return Ok(());
    };
    eprintln!("running against: {} ({databases:?})", broker.name());
    // Payment runs in this process (it is not what is killed here).
    let payment_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let payment_addr = payment_listener.local_addr()?;
    let payment_config = ordermesh_payment::Config {
        database_url: databases.url("payment"),
        ..ordermesh_payment::Config::from_env()?
    };
    let payment = tokio::spawn(ordermesh_payment::run(
        payment_listener,
        payment_config,
        std::future::pending(),
    ));

    let order_addr = unused_addr().await?;
    let order = start_order(
        dir.path(),
        &databases.url("order"),
        order_addr,
        payment_addr,
        &broker,
        topic,
        &[],
    )
    .await?;
    let mut client = OrderServiceClient::connect(format!("http://{order_addr}")).await?;
    // One order while all is well: the topic exists and the pipeline works.
    let first = client
        .create_order(order_request("crash-first"))
        .await?
        .into_inner();
    eventually("the first event on the topic", || async {
        Ok(broker.message_count(topic).await? == 1)
    })
    .await?;

    // Broker down: orders are accepted, their events stay in the outbox.
    broker.down().await?;
    let mut orders: Vec<Order> = vec![first];
    for i in 0..10 {
        let order = client
            .create_order(order_request(&format!("crash-{i}")))
            .await?
            .into_inner();
        ensure!(
            order.event_pending,
            "event published with the broker down? {order:?}"
        );
        orders.push(order);
    }

    // SIGKILL: no shutdown, no final flush.
    order.kill().await?;
    broker.up().await?;
    let _order = start_order(
        dir.path(),
        &databases.url("order"),
        order_addr,
        payment_addr,
        &broker,
        topic,
        &[],
    )
    .await?;
    let client = OrderServiceClient::connect(format!("http://{order_addr}")).await?;

    // Every order's event is published: the orders say so...
    eventually("no order's event pending", || {
        let mut client = client.clone();
        let ids: Vec<String> = orders.iter().map(|o| o.order_id.clone()).collect();
        async move {
            for order_id in ids {
                let now = client
                    .get_order(GetOrderRequest { order_id })
                    .await?
                    .into_inner();
                if now.event_pending {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await?;
    // ... and the topic holds each exactly once.
    let messages = broker.read(topic, orders.len()).await?;
    assert_eq!(
        broker.message_count(topic).await?,
        orders.len() as i64,
        "no event twice"
    );
    let on_topic: HashSet<String> = messages
        .iter()
        .map(|m| {
            use rdkafka::Message;
            ordermesh::events::decode_order_placed(m.payload().unwrap_or_default())
                .unwrap()
                .event_id
        })
        .collect();
    let expected: HashSet<String> = orders.iter().map(|o| o.event_id.clone()).collect();
    assert_eq!(on_topic, expected);
    payment.abort();
    Ok(())
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_events_unpublished_publishes_each_once_after_restart_embedded(
    backend: Backend,
) -> Result<()> {
    let topic = format!("order-events-{}", uuid::Uuid::new_v4().simple());
    let broker = Broker::embedded(&[&topic], 3)?;
    scenario(backend, tempfile::tempdir()?, broker, &topic).await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_events_unpublished_publishes_each_once_after_restart_tansu(
    backend: Backend,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(tansu) = Tansu::start_in(dir.path()).await? else {
        return Ok(());
    };
    let topic = format!("order-events-{}", uuid::Uuid::new_v4().simple());
    scenario(backend, dir, Broker::Tansu(Box::new(tansu)), &topic).await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_the_charge_and_its_record_is_settled_paid_by_the_reconciler_after_restart(
    backend: Backend,
) -> Result<()> {
    // Arrange: payment in this process, answering 10 s after it stored the charge; the order
    // binary waiting up to 20 s for it, and forwarding the fault headers.
    let dir = tempfile::tempdir()?;
    let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
        return Ok(());
    };
    let topic = format!("order-events-{}", uuid::Uuid::new_v4().simple());
    let broker = Broker::embedded(&[&topic], 3)?;
    let payment_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let payment_addr = payment_listener.local_addr()?;
    let payment = tokio::spawn(ordermesh_payment::run(
        payment_listener,
        ordermesh_payment::Config {
            database_url: databases.url("payment"),
            faults_enabled: true,
            ..ordermesh_payment::Config::from_env()?
        },
        std::future::pending(),
    ));
    let order_addr = unused_addr().await?;
    const PATIENT: &[(&str, &str)] = &[
        ("ORDER_PAYMENT_TIMEOUT_MS", "20000"),
        ("ORDER_PAYMENT_ATTEMPT_TIMEOUT_MS", "20000"),
        ("ORDER_RECONCILE_GRACE_MS", "30000"),
        ("ORDER_FORWARD_FAULT_HEADERS", "true"),
    ];
    const SETTLING: &[(&str, &str)] = &[
        ("ORDER_PAYMENT_TIMEOUT_MS", "2000"),
        ("ORDER_RECONCILE_GRACE_MS", "2500"),
        ("ORDER_RECONCILE_INTERVAL_MS", "200"),
    ];
    let order_db = databases.url("order");
    let start = |extra: &'static [(&'static str, &'static str)]| {
        start_order(
            dir.path(),
            &order_db,
            order_addr,
            payment_addr,
            &broker,
            &topic,
            extra,
        )
    };
    let order = start(PATIENT).await?;
    let mut client = OrderServiceClient::connect(format!("http://{order_addr}")).await?;
    let mut request = tonic::Request::new(order_request("killed-mid-charge"));
    request
        .metadata_mut()
        .insert("x-fault-delay-ms", "10000".parse()?);
    request
        .metadata_mut()
        .insert("x-fault-stage", "after".parse()?);
    let in_flight = tokio::spawn(async move { client.create_order(request).await });
    let mut payments = PaymentServiceClient::connect(format!("http://{payment_addr}")).await?;
    eventually("payment holds the charge", || {
        let mut payments = payments.clone();
        async move {
            let page = payments
                .list_payments(ListPaymentsRequest::default())
                .await?
                .into_inner();
            Ok(page.payments.len() == 1)
        }
    })
    .await?;

    // Act: SIGKILL before the answer comes back, then a restart with a short grace period.
    order.kill().await?;
    ensure!(in_flight.await?.is_err(), "the call died with the process");
    let _order = start(SETTLING).await?;

    // Assert: the reconciler pays the order with that charge; its event is published once.
    let charge = payments
        .list_payments(ListPaymentsRequest::default())
        .await?
        .into_inner()
        .payments
        .remove(0);
    let client = OrderServiceClient::connect(format!("http://{order_addr}")).await?;
    eventually("the order is paid, its event published", || {
        let (mut client, order_id) = (client.clone(), charge.order_id.clone());
        async move {
            let order = client
                .get_order(GetOrderRequest { order_id })
                .await?
                .into_inner();
            Ok(order.status() == OrderStatus::Paid && !order.event_pending)
        }
    })
    .await?;
    let paid = OrderServiceClient::connect(format!("http://{order_addr}"))
        .await?
        .get_order(GetOrderRequest {
            order_id: charge.order_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(paid.payment_id, charge.payment_id);
    assert_eq!(broker.message_count(&topic).await?, 1, "one event");
    let after = payments
        .list_payments(ListPaymentsRequest::default())
        .await?
        .into_inner();
    assert_eq!(after.payments.len(), 1, "one charge");
    payment.abort();
    Ok(())
}
