//! The dashboards and alert rules against a real Prometheus (Debian's) scraping a running mesh.
//! The test drives what each panel shows (orders, a refused request, a retried charge, a deadline,
//! shed calls, an order left pending and settled by the reconciler, a poison event dead-lettered,
//! SMS sends failing and retried) and a payment outage; then every query of every dashboard panel
//! is asked of Prometheus and must return data, so a panel whose metric or label was renamed
//! fails here. The alert rules of `compose/prometheus/alerts.yml` are loaded as they are, except
//! that each `for:` is cut to 2 s (the durations themselves are promtool's to test, in
//! `tests/checks/alerts.rs`): the circuit alert fires while payment is down and resolves after it
//! is back.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use ordermesh_testkit::{Backend, Prometheus, SMS_TOKEN, SmsGateway, eventually};
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
};
use tonic::{Code, Request};

use super::support::helpers::{MeshOptions, TestMesh, order_request, spawn_mesh_with};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const JOBS: [&str; 3] = ["order", "payment", "notifier"];

/// The rules as compose loads them, with every `for:` cut to 2 s.
fn rules_with_short_waits() -> Result<String> {
    let rules = std::fs::read_to_string(Path::new(ROOT).join("compose/prometheus/alerts.yml"))?;
    let mut out = String::new();
    for line in rules.lines() {
        match line.trim_start().strip_prefix("for: ") {
            Some(_) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}for: 2s\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    ensure!(
        out.contains("for: 2s"),
        "alerts.yml has no `for:` left to shorten"
    );
    Ok(out)
}

/// Points Prometheus at every running service's admin port.
fn point_at(prometheus: &Prometheus, mesh: &TestMesh) -> Result<()> {
    prometheus.set_targets("order", &[mesh.order()?.admin])?;
    let payment: Vec<_> = mesh.payment.iter().map(|p| p.admin).collect();
    prometheus.set_targets("payment", &payment)?;
    let notifier: Vec<_> = mesh.notifier.iter().map(|n| n.admin).collect();
    prometheus.set_targets("notifier", &notifier)
}

async fn circuit_alert(prometheus: &Prometheus) -> Result<Option<String>> {
    Ok(prometheus
        .alerts()
        .await?
        .into_iter()
        .find(|a| a.name == "PaymentCircuitOpen")
        .map(|a| a.state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_has_data_and_the_circuit_alert_fires_in_a_payment_outage_and_resolves()
-> Result<()> {
    let gateway = SmsGateway::start().await;
    gateway.answer(503);
    let Some(mut mesh) = spawn_mesh_with(
        Backend::Sqlite,
        MeshOptions {
            notifier: false,
            order: |config| {
                // Few enough that a burst is shed; pending orders settled within seconds.
                config.max_concurrent_requests = 4;
                config.reconcile_grace = Duration::from_millis(2_500);
                config.reconcile_interval = Duration::from_millis(500);
            },
            ..MeshOptions::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let sms_url = gateway.url();
    mesh.notifier_settings = Arc::new(move |config| {
        config.sms_webhook_url = Some(sms_url.clone());
        config.sms_webhook_token = Some(SMS_TOKEN.into());
        config.retry_backoff = Duration::from_millis(200);
        config.retry_max_backoff = Duration::from_millis(1_000);
    });
    mesh.start_notifier().await?;
    let Some(prometheus) =
        Prometheus::start(&JOBS, &[("alerts.yml", rules_with_short_waits()?)]).await?
    else {
        return Ok(());
    };
    point_at(&prometheus, &mesh)?;
    eventually("Prometheus scrapes all three services", || async {
        Ok(prometheus.query("up").await?.len() == 3 && prometheus.all_targets_up().await?)
    })
    .await?;

    // A steady trickle of orders all along, as a live shop has: rates need two scrapes of a
    // moving counter, and the breaker its calls.
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (stop, client) = (Arc::clone(&stop), mesh.order_client().await?);
        tokio::spawn(async move {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = client
                    .clone()
                    .create_order(order_request(&format!("trickle-{i}"), "tok_visa"))
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let result = drive_and_check(&mut mesh, &prometheus, &gateway).await;
    stop.store(true, Ordering::Relaxed);
    trickle.await?;
    // Stopped either way: a mesh dropped running hangs the test's cleanup and hides its error.
    let stopped = mesh.shutdown().await;
    result?;
    stopped
}

async fn drive_and_check(
    mesh: &mut TestMesh,
    prometheus: &Prometheus,
    gateway: &SmsGateway,
) -> Result<()> {
    let client = mesh.order_client().await?;
    let with_headers = |id: &str, headers: &[(&'static str, &str)]| {
        let mut request = Request::new(order_request(id, "tok_visa"));
        for (name, value) in headers {
            request
                .metadata_mut()
                .insert(*name, value.parse().expect("ascii"));
        }
        request
    };

    // A refused request (INVALID_ARGUMENT), and a charge retried once.
    let refused = client
        .clone()
        .create_order(ordermesh::proto::order::v1::CreateOrderRequest::default())
        .await;
    ensure!(
        matches!(&refused, Err(s) if s.code() == Code::InvalidArgument),
        "{refused:?}"
    );
    client
        .clone()
        .create_order(with_headers(
            "dash-retried",
            &[
                ("x-fault-abort", "unavailable"),
                ("x-fault-until-attempt", "1"),
            ],
        ))
        .await?;
    // Deadlines: the caller gives 300 ms and payment takes 3 s (the call is DEADLINE_EXCEEDED at
    // order); and a first charge attempt that outlives order's 1 s attempt deadline, the second
    // answered at once (DEADLINE_EXCEEDED on order's client side).
    let mut late = with_headers("dash-late", &[("x-fault-delay-ms", "3000")]);
    late.set_timeout(Duration::from_millis(300));
    let late = client.clone().create_order(late).await;
    ensure!(
        matches!(&late, Err(s) if s.code() == Code::DeadlineExceeded),
        "{late:?}"
    );
    let slow = client
        .clone()
        .create_order(with_headers(
            "dash-slow-attempt",
            &[("x-fault-delay-ms", "1500"), ("x-fault-until-attempt", "1")],
        ))
        .await;
    ensure!(slow.is_ok(), "the second attempt is answered: {slow:?}");
    // Shed: twelve at once, each held 500 ms, against a limit of four.
    let burst = (0..12).map(|i| {
        let mut client = client.clone();
        let request = with_headers(&format!("dash-burst-{i}"), &[("x-fault-delay-ms", "500")]);
        async move { client.create_order(request).await }
    });
    let burst = futures::future::join_all(burst).await;
    ensure!(
        burst
            .iter()
            .any(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted)),
        "none of the burst was shed: {burst:?}"
    );
    // Charged, but every answer lost: the order stays pending until the reconciler settles it.
    let lost = client
        .clone()
        .create_order(with_headers(
            "dash-pending",
            &[("x-fault-abort", "unavailable"), ("x-fault-stage", "after")],
        ))
        .await;
    ensure!(lost.is_err(), "{lost:?}");
    // A poison event: both channels park it on their dead-letter topics.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mesh.broker.bootstrap_servers())
        .create()?;
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&mesh.topic).payload(b"not an event"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;

    // The outage: payment stops; the trickle's calls fail until order's breaker opens and stays
    // open long enough for the alert to fire.
    let payment = mesh.payment.take().context("payment runs")?;
    payment.stop().await?;
    eventually("the circuit alert fires while payment is down", || async {
        Ok(circuit_alert(prometheus).await?.as_deref() == Some("firing"))
    })
    .await?;
    // Payment back (on a new admin port, which discovery is told of): the breaker's next probe
    // succeeds, it closes, the alert resolves. The SMS gateway recovers too.
    mesh.start_payment().await?;
    point_at(prometheus, mesh)?;
    gateway.answer(200);
    eventually(
        "the circuit alert resolves once payment is back",
        || async { Ok(circuit_alert(prometheus).await?.is_none()) },
    )
    .await?;

    // Every query of every panel returns data.
    let boards = ordermesh_testkit::dashboards(Path::new(ROOT))?;
    let mut empty = Vec::new();
    let deadline = tokio::time::Instant::now() + ordermesh_testkit::EVENTUALLY;
    loop {
        empty.clear();
        for board in &boards {
            for panel in &board.panels {
                for query in &panel.queries {
                    let answer = prometheus.query(query).await?;
                    if !answer.iter().any(|(_, value)| value.is_finite()) {
                        empty.push(format!("{} / {}: {query}", board.file, panel.title));
                    }
                }
            }
        }
        if empty.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("panels without data:\n{}", empty.join("\n"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
