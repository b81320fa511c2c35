//! The load generator against a real mesh (payment, order and both notifier channels in this
//! process, on the embedded broker): it makes the calls asked for, reports them, and its audit
//! finds one email and one SMS per accepted order; and a small fault campaign (`--faults random`)
//! prints its seed and finds the ledger keeping the money promise. No timing is asserted.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result};
use tokio::{net::TcpListener, process::Command, sync::oneshot};

/// Starts a service on a port-0 listener; returns its URL and a stop handle.
async fn start<F, E>(
    run: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> F,
) -> Result<(String, oneshot::Sender<()>)>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel();
    let future = run(listener, stopped);
    tokio::spawn(async move {
        if let Err(error) = future.await {
            eprintln!("service failed: {error}");
        }
    });
    Ok((url, stop))
}

async fn load(args: &[&str]) -> Result<(bool, String, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_ordermesh-load"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await?;
    Ok((
        output.status.success(),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_reports_its_calls_and_audits_the_notifications() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let topic = format!("load-{}", uuid::Uuid::new_v4().simple());
    let dead_letters = ["email", "sms"].map(|c| format!("{topic}.{c}.dlq"));
    let broker = ordermesh_kafka::EmbeddedBroker::start(
        "127.0.0.1:0".parse()?,
        &[&topic, &dead_letters[0], &dead_letters[1]],
        3,
    )?;

    // Faults on and forwarded, and a short reconcile grace, for the campaign; plain load sends no
    // fault headers and leaves nothing pending, so neither changes what it sees.
    let payment_config = ordermesh_payment::Config {
        database_url: db("payment.db"),
        faults_enabled: true,
        ..ordermesh_payment::Config::from_env()?
    };
    let (payment, stop_payment) = start(|listener, stop| async move {
        ordermesh_payment::run(listener, payment_config, async move {
            let _ = stop.await;
        })
        .await
    })
    .await?;
    let order_config = ordermesh_order::Config {
        database_url: db("order.db"),
        payment_url: payment.clone(),
        kafka: ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
        events_topic: topic.clone(),
        forward_fault_headers: true,
        // The grace must exceed the payment deadline (a reconciler must not close the key of a
        // call still charging).
        payment_timeout: std::time::Duration::from_millis(2_000),
        reconcile_grace: std::time::Duration::from_millis(2_500),
        reconcile_interval: std::time::Duration::from_millis(200),
        ..ordermesh_order::Config::from_env()?
    };
    let (order, stop_order) = start(|listener, stop| async move {
        ordermesh_order::run(listener, order_config, async move {
            let _ = stop.await;
        })
        .await
    })
    .await?;
    let mut notifier_config = ordermesh_notifier::Config::from_env()?;
    notifier_config.database_url = db("notifier.db");
    notifier_config.kafka.brokers = broker.bootstrap_servers();
    notifier_config.events_topic = topic.clone();
    let (notifier, stop_notifier) = start(|listener, stop| async move {
        ordermesh_notifier::run(listener, notifier_config, async move {
            let _ = stop.await;
        })
        .await
    })
    .await?;
    // The listeners are bound, so the generator connects; the services may still be migrating
    // their databases, which their first answers wait for.

    let (ok, stdout, stderr) = load(&[
        "--order",
        &order,
        "--notifier",
        &notifier,
        "--concurrency",
        "4",
        "--count",
        "30",
        "--audit-timeout",
        "60s",
        "--json",
    ])
    .await?;
    assert!(ok, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).context("JSON output")?;
    assert_eq!(report["calls"], 30, "{report}");
    assert_eq!(report["ok"], 30, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert!(
        report["latency_ms"]["p99"]
            .as_f64()
            .is_some_and(|p| p > 0.0),
        "{report}"
    );
    assert_eq!(report["audit"]["accepted"], 30, "{report}");
    assert_eq!(report["audit"]["emails_sent"], 30, "{report}");
    assert_eq!(report["audit"]["sms_sent"], 30, "{report}");
    assert_eq!(report["audit"]["missing"], 0, "{report}");
    assert_eq!(report["audit"]["duplicates"], 0, "{report}");

    // The table, open loop.
    let (ok, stdout, stderr) = load(&[
        "--order",
        &order,
        "--notifier",
        &notifier,
        "--rate",
        "50",
        "--count",
        "10",
    ])
    .await?;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("open loop, 50 calls/s"), "{stdout}");
    assert!(stdout.contains("latency p99.9"), "{stdout}");
    assert!(stdout.contains("missing"), "{stdout}");

    // A small fault campaign, seeded: it says its seed and how to replay it, and the audit of
    // orders, charges, events and notifications (these calls' and the ones above) finds nothing.
    let (ok, stdout, stderr) = load(&[
        "--faults",
        "random",
        "--seed",
        "7",
        "--count",
        "40",
        "--concurrency",
        "8",
        "--max-delay",
        "1500ms",
        "--settle-timeout",
        "60s",
        "--audit-timeout",
        "60s",
        "--order",
        &order,
        "--payment",
        &payment,
        "--notifier",
        &notifier,
        "--kafka-brokers",
        &broker.bootstrap_servers(),
        "--topic",
        &topic,
    ])
    .await?;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("fault campaign, seed 7 "), "{stdout}");
    assert!(
        stdout.contains("--faults random --seed 7 --count 40"),
        "{stdout}"
    );
    assert!(stdout.contains("0 orders still pending"), "{stdout}");
    assert!(
        stdout.contains("the money promise holds (0 violations)"),
        "{stdout}"
    );

    // Nothing listening: a clear error, not a panic.
    let (ok, _, stderr) = load(&["--order", "http://127.0.0.1:1", "--count", "1"]).await?;
    assert!(!ok);
    assert!(
        stderr.contains("cannot reach the order service"),
        "{stderr}"
    );

    for stop in [stop_notifier, stop_order, stop_payment] {
        let _ = stop.send(());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(broker);
    Ok(())
}
