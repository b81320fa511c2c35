//! A short fault campaign against a mesh (the library behind `ordermesh-load --faults random`):
//! 500 requests, 40 % of calls with payment faults (delays around the order service's deadlines,
//! aborts of every code before and after the charge, declined and unknown tokens), 30 % of request
//! ids sent again, the orders of 30 % cancelled once accepted (a third of them twice, 40 % of the
//! cancels with faults on the refund, which leave the order CANCELLING for the reconciler); then,
//! once the reconciler has settled every pending order and finished every cancel, the ledger must
//! keep the money promise. The seed is printed; `ORDERMESH_CAMPAIGN_SEED=<seed>` replays it.

use ordermesh_testkit::{Backend, on_both_backends};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ordermesh_bench::campaign::{self, Report, plan};

use super::{
    support::helpers::{MeshOptions, spawn_mesh_with},
    support::ledger,
};

const REQUESTS: usize = 500;

fn seed() -> Result<u64> {
    match std::env::var("ORDERMESH_CAMPAIGN_SEED") {
        Ok(seed) => seed.parse().context("ORDERMESH_CAMPAIGN_SEED: a number"),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64),
    }
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_fault_campaign_leaves_the_ledger_keeping_the_money_promise(
    backend: Backend,
) -> Result<()> {
    // Arrange: the reconciler settles what the calls leave pending after 2.5 s. The breaker never
    // opens: open, it would answer most calls UNAVAILABLE without reaching payment, and so
    // without the faults under test.
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            order: |config| {
                config.breaker_window = 10_000;
                config.breaker_min_calls = 10_000;
                config.reconcile_grace = std::time::Duration::from_millis(2_500);
                config.reconcile_interval = std::time::Duration::from_millis(200);
            },
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let seed = seed()?;
    eprintln!("fault campaign seed {seed} (replay: ORDERMESH_CAMPAIGN_SEED={seed})");
    // Delays up to 1.5 s: past the mesh's 1 s attempt deadline, within its 2 s payment deadline,
    // and short enough for the test to stay quick.
    let shape = plan::Shape {
        requests: REQUESTS,
        max_delay: Duration::from_millis(1_500),
        ..plan::Shape::default()
    };
    let calls = plan::plan(seed, &shape, &format!("campaign-{seed}"));

    // Act
    let mut client = mesh.order_client().await?;
    let outcome = campaign::execute(client.clone(), calls, 16, Duration::from_secs(5)).await;
    let settled = campaign::settle(&mut client, Duration::from_secs(60)).await?;
    let ledger = ledger::ledger(&mesh).await?;

    // Assert
    let mut violations = ledger.violations();
    violations.extend(ledger.accepted_without_order(outcome.accepted.iter().map(String::as_str)));
    violations.extend(
        ledger.accepted_cancels_not_kept(outcome.cancel_accepted.iter().map(String::as_str)),
    );
    let report = Report::new(
        seed,
        format!(
            "ORDERMESH_CAMPAIGN_SEED={seed} cargo test --test {} campaign",
            env!("CARGO_CRATE_NAME")
        ),
        REQUESTS,
        outcome,
        settled,
        &ledger,
        violations,
    );
    eprintln!("{report}");
    let outcome = &report.outcome;
    ensure!(outcome.calls as usize >= REQUESTS, "{report}");
    ensure!(
        outcome.faulted_calls as f64 >= 0.3 * outcome.calls as f64,
        "too few faulted calls\n{report}"
    );
    ensure!(
        report.outcome.cancel_calls > 0 && report.cancelled > 0,
        "no order was cancelled\n{report}"
    );
    ensure!(report.violations.is_empty(), "seed {seed}\n{report}");
    mesh.shutdown().await
}
