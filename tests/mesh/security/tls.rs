//! TLS on the servers and mutual TLS from order to payment, with the certificates `ordermesh
//! dev-certs` writes: payment takes Charge only from a client whose certificate chains to the mesh
//! CA and names the order service.

use ordermesh_testkit::{Backend, on_both_backends};
use std::path::{Path, PathBuf};

use anyhow::Result;
use ordermesh::{
    proto::order::v1::GetOrderRequest, proto::order::v1::OrderStatus,
    proto::order::v1::order_service_client::OrderServiceClient, proto::payment::v1::ChargeRequest,
    proto::payment::v1::payment_service_client::PaymentServiceClient,
};
use ordermesh_testkit::Broker;
use tonic::{
    Code,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::support::helpers::{Databases, Running, order_request};

/// A client's TLS: trusting `ca`, presenting `identity` (a `<name>.pem`/`.key` pair in `dir`).
fn client_tls(dir: &Path, ca: &str, identity: Option<&str>) -> Result<ClientTlsConfig> {
    let read = |name: &str| std::fs::read(dir.join(name));
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .domain_name("localhost");
    if let Some(name) = identity {
        tls = tls.identity(Identity::from_pem(
            read(&format!("{name}.pem"))?,
            read(&format!("{name}.key"))?,
        ));
    }
    Ok(tls)
}

/// Whether a health check over `endpoint` gets an answer at all (the handshake succeeded).
async fn health_answers(endpoint: Endpoint) -> bool {
    match endpoint.connect().await {
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_ok(),
        Err(_) => false,
    }
}

fn charge(key: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.to_owned(),
        order_id: "ord_tls".into(),
        amount: Some(ordermesh::proto::types::v1::Money {
            currency_code: "USD".into(),
            minor_units: 100,
        }),
        payment_method_token: "tok_visa".into(),
    }
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_takes_charges_only_from_the_order_service_over_mutual_tls(
    backend: Backend,
) -> Result<()> {
    // Arrange: the development certificates, and payment requiring a client certificate from the
    // mesh CA.
    let dir = tempfile::tempdir()?;
    let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
        return Ok(());
    };
    let certs = dir.path().join("certs");
    ordermesh_runner::dev_certs::write_dev_certs(&certs)?;
    let file = |name: &str| -> Option<PathBuf> { Some(certs.join(name)) };
    let payment_config = ordermesh_payment::Config {
        database_url: databases.url("payment"),
        drain_grace: std::time::Duration::from_millis(2_000),
        tls_cert: file("payment.pem"),
        tls_key: file("payment.key"),
        tls_client_ca: file("ca.pem"),
        ..ordermesh_payment::Config::from_env()?
    };
    let payment = Running::spawn_tls(
        "127.0.0.1:0".parse()?,
        Some(client_tls(&certs, "ca.pem", Some("order"))?),
        |listeners, stop| async move {
            ordermesh_payment::run(listeners, payment_config, async move {
                let _ = stop.await;
            })
            .await
        },
    )
    .await?;
    let plain = Endpoint::from_shared(format!("http://{}", payment.addr))?;
    let tls_as = |identity: Option<&str>, ca: &str| -> Result<Endpoint> {
        Ok(Endpoint::from_shared(payment.url())?.tls_config(client_tls(&certs, ca, identity)?)?)
    };

    // A plaintext client, a client without a certificate, and a client whose certificate comes
    // from another CA (though it claims to be order) do not get past the handshake.
    assert!(!health_answers(plain).await, "plaintext against a TLS port");
    assert!(
        !health_answers(tls_as(None, "ca.pem")?).await,
        "no client certificate"
    );
    assert!(
        !health_answers(tls_as(Some("outsider"), "ca.pem")?).await,
        "a certificate from another CA"
    );

    // A mesh certificate that is not the order service's: health stays open, Charge is refused
    // with a message that says who may call, and nothing is charged.
    let notifier = tls_as(Some("notifier"), "ca.pem")?;
    assert!(health_answers(notifier.clone()).await);
    let refused = PaymentServiceClient::new(notifier.connect().await?)
        .charge(charge("tls-refused"))
        .await
        .expect_err("the notifier may not charge");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("accepts only order")
            && refused.message().contains("names notifier"),
        "{}",
        refused.message()
    );
    let as_order = PaymentServiceClient::new(tls_as(Some("order"), "ca.pem")?.connect().await?);
    let first = as_order
        .clone()
        .charge(charge("tls-refused"))
        .await?
        .into_inner();
    assert_eq!(
        first.payment_id,
        as_order
            .clone()
            .charge(charge("tls-refused"))
            .await?
            .into_inner()
            .payment_id,
        "the refused call left nothing behind that a replay would find"
    );

    // The order service, itself serving TLS, charges through mutual TLS with its certificate.
    let topic = format!("order-events-{}", uuid::Uuid::new_v4().simple());
    let broker = Broker::embedded(&[&topic], 1)?;
    let order_config = ordermesh_order::Config {
        database_url: databases.url("order"),
        // `localhost` is in payment's certificate; the address is loopback.
        payment_url: format!("https://localhost:{}", payment.addr.port()),
        payment_tls_ca: file("ca.pem"),
        payment_tls_cert: file("order.pem"),
        payment_tls_key: file("order.key"),
        tls_cert: file("order.pem"),
        tls_key: file("order.key"),
        kafka: ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
        events_topic: topic,
        drain_grace: std::time::Duration::from_millis(2_000),
        ..ordermesh_order::Config::from_env()?
    };
    let order = Running::spawn_tls(
        "127.0.0.1:0".parse()?,
        Some(client_tls(&certs, "ca.pem", None)?),
        |listeners, stop| async move {
            ordermesh_order::run(listeners, order_config, async move {
                let _ = stop.await;
            })
            .await
        },
    )
    .await?;
    let mut orders = OrderServiceClient::new(order.endpoint()?.connect().await?);
    let placed = orders
        .create_order(order_request("tls-1", "tok_visa"))
        .await?
        .into_inner();
    assert_eq!(
        placed.status(),
        OrderStatus::Paid,
        "paid through mutual TLS"
    );
    let stored = orders
        .get_order(GetOrderRequest {
            order_id: placed.order_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(stored.payment_id, placed.payment_id);

    order.stop().await?;
    payment.stop().await
}
