//! The services reach a Kafka cluster that requires TLS and SASL/SCRAM through the KAFKA_* settings
//! alone, and a client with the wrong settings gets nothing from it.
//!
//! The broker is tansu (independent of us) with `--authentication`: it checks SCRAM-SHA-512
//! credentials it stores itself and answers nothing but the SASL handshake before them. tansu 0.6
//! does not serve TLS yet, so it sits behind a TLS terminator holding the development CA's `kafka`
//! certificate, and advertises the terminator, so every connection (bootstrap and broker) is TLS.

use ordermesh_testkit::{Backend, on_both_backends};
use std::time::Duration;

use anyhow::{Result, ensure};
use ordermesh_kafka::{KafkaSettings, SaslMechanism, SecurityProtocol};
use ordermesh_notifier::Channel;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::support::helpers::{MeshOptions, order_request, spawn_mesh_on_tansu};

/// Whether a client made from `settings` gets the cluster's metadata within a few seconds.
async fn metadata_with(settings: &KafkaSettings) -> Result<(), String> {
    let config = settings.client_config("ordermesh-security-test");
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_runs_on_a_broker_requiring_tls_and_scram_and_wrong_settings_get_nothing(
    backend: Backend,
) -> Result<()> {
    let Some(mesh) = spawn_mesh_on_tansu(
        backend,
        MeshOptions {
            secured_kafka: true,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let secured = mesh.secured_kafka.as_ref().expect("a secured mesh");
    let good = &secured.settings;

    // Act: an order through the whole mesh; the outbox relay publishes over SASL_SSL and both
    // notifier groups consume over it.
    let order = mesh
        .order_client()
        .await?
        .create_order(order_request("kafka-security-1", "tok_visa"))
        .await?
        .into_inner();
    let notifications = mesh.wait_for_notifications(2).await?;
    let mut channels: Vec<i32> = notifications.iter().map(|n| n.channel).collect();
    channels.sort_unstable();
    channels.dedup();
    ensure!(
        notifications.iter().all(|n| n.order_id == order.order_id) && channels.len() == 2,
        "one email and one SMS for the order: {notifications:?}"
    );
    let events = mesh.read_topic(&mesh.topic, 1).await?;
    ensure!(
        events.len() == 1,
        "the event is on the topic, read over TLS and SASL"
    );
    for channel in Channel::ALL {
        let sent = mesh.notifier_stats[&channel]
            .sent
            .load(std::sync::atomic::Ordering::Relaxed);
        ensure!(sent == 1, "{channel:?} sent {sent}");
    }

    // Assert: the settings are what got the services in. The control first, then one wrong
    // setting at a time.
    metadata_with(good)
        .await
        .map_err(|e| anyhow::anyhow!("the services' settings: {e}"))?;
    let direct = mesh.broker.bootstrap_servers();
    let wrong: Vec<(&str, KafkaSettings)> = vec![
        (
            "no SASL, straight to tansu",
            KafkaSettings::plaintext(direct.clone()),
        ),
        (
            "the right user on plaintext, straight to tansu, wrong password",
            KafkaSettings {
                brokers: direct,
                security_protocol: SecurityProtocol::SaslPlaintext,
                ssl_ca: None,
                sasl_password: Some("not the password".into()),
                ..good.clone()
            },
        ),
        (
            "TLS and SCRAM, wrong password",
            KafkaSettings {
                sasl_password: Some("not the password".into()),
                ..good.clone()
            },
        ),
        (
            "TLS and SCRAM-SHA-256 (tansu has only a SHA-512 credential)",
            KafkaSettings {
                sasl_mechanism: Some(SaslMechanism::ScramSha256),
                ..good.clone()
            },
        ),
        (
            "plaintext to the TLS port",
            KafkaSettings {
                security_protocol: SecurityProtocol::SaslPlaintext,
                ssl_ca: None,
                ..good.clone()
            },
        ),
        (
            "TLS trusting another CA",
            KafkaSettings {
                ssl_ca: Some(secured.certs.join("outsider.pem")),
                ..good.clone()
            },
        ),
    ];
    for (what, settings) in wrong {
        settings.check()?;
        let result = metadata_with(&settings).await;
        ensure!(result.is_err(), "{what}: got the cluster's metadata");
        eprintln!("{what}: refused ({})", result.unwrap_err());
    }
    mesh.shutdown().await
}
