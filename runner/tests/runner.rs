//! The README's run command, as a user runs it: the `ordermesh` binary starts the embedded broker and
//! all three services, they answer, and SIGTERM stops everything cleanly (exit status 0).

use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use ordermesh::proto::{
    notification::v1::{
        ListNotificationsRequest, notification_service_client::NotificationServiceClient,
    },
    order::v1::{
        CreateOrderRequest, Customer, LineItem, OrderStatus,
        order_service_client::OrderServiceClient,
    },
    types::v1::Money,
};
use tokio::process::Command;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Bounds a hang, not a speed: the runner normally answers within a second or two.
const EVENTUALLY: Duration = Duration::from_secs(60);

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_serving(addr: SocketAddr) -> Result<()> {
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await;
        if let Ok(mut client) = channel.map(HealthClient::new)
            && let Ok(answer) = client.check(HealthCheckRequest::default()).await
            && answer.into_inner().status() == ServingStatus::Serving
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{addr} not SERVING after {EVENTUALLY:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_starts_the_whole_mesh_and_stops_it_on_sigterm() -> Result<()> {
    // Arrange: free ports instead of the defaults, so the test runs beside anything else.
    let data = tempfile::tempdir()?;
    let (kafka, order, payment, notifier) =
        (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ordermesh"))
        .env_remove("KAFKA_BROKERS")
        .env("ORDERMESH_EMBEDDED_KAFKA_ADDR", kafka.to_string())
        .env("ORDER_LISTEN_ADDR", order.to_string())
        .env("PAYMENT_LISTEN_ADDR", payment.to_string())
        .env("NOTIFIER_LISTEN_ADDR", notifier.to_string())
        .env("ORDERMESH_DATA_DIR", data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;

    // Act & Assert: everything serves, and an order goes all the way to both notifications.
    for addr in [order, payment, notifier] {
        wait_serving(addr).await?;
    }
    let created = OrderServiceClient::connect(format!("http://{order}"))
        .await?
        .create_order(CreateOrderRequest {
            request_id: "runner-1".into(),
            customer: Some(Customer {
                email: "ada@example.com".into(),
                phone: "+14155550100".into(),
            }),
            items: vec![LineItem {
                sku: "BOOK-1".into(),
                quantity: 1,
                unit_price: Some(Money {
                    currency_code: "USD".into(),
                    minor_units: 100,
                }),
            }],
            payment_method_token: "tok_visa".into(),
        })
        .await?
        .into_inner();
    assert_eq!(created.status(), OrderStatus::Paid);
    let mut notifications =
        NotificationServiceClient::connect(format!("http://{notifier}")).await?;
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let listed = notifications
            .list_notifications(ListNotificationsRequest {
                order_id: created.order_id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .notifications;
        if listed.len() == 2 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("expected 2 notifications, have {listed:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The databases are real files in the data directory.
    for db in ["order.db", "payment.db", "notifier.db"] {
        assert!(data.path().join(db).is_file(), "{db}");
    }

    // SIGTERM: graceful stop, exit status 0.
    let pid = child.id().context("runner pid")?;
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    assert!(killed.success());
    let status = tokio::time::timeout(EVENTUALLY, child.wait())
        .await
        .context("runner did not stop")??;
    assert!(status.success(), "exit status {status}");
    let stdout = {
        use tokio::io::AsyncReadExt;
        let mut out = String::new();
        child
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)
            .await?;
        out
    };
    assert!(
        stdout.contains("grpcurl -plaintext"),
        "the banner shows a first command: {stdout}"
    );
    assert!(stdout.contains(&order.to_string()), "{stdout}");
    Ok(())
}
