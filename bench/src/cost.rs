//! 8. What one order costs in CPU, whole, beside the sum of its raw parts measured in the same run.
//!
//! Ours: payment, order and the notifier (email and SMS, log-only delivery, as the runner runs them
//! by default) in this process on the embedded broker, and closed-loop callers placing orders for a
//! few seconds. The figure is the CPU time of the whole process from the first call until the
//! notifier has sent both notifications of every order placed, divided by the orders placed: the
//! relay, the consumers and the generator are all in it.
//!
//! The parts, each driven alone by the same generator, its CPU time per unit of the same process:
//! - a raw tonic hop, client and server (the health service, see [`crate::echo`]): 2 per order,
//!   caller to order and order to payment;
//! - a produce acknowledged by the broker, with the order publisher's settings: 1;
//! - a durable SQLite commit of one row, with the services' settings, made with SQLite's own
//!   library on one thread: [`COMMITS`] per order (the new order, the charge, the paid order with
//!   its outbox row, and one SENT mark per channel). The writes the design batches (the relay's
//!   claim and published marks, the notifier's claims) are left out, so the baseline is, if
//!   anything, too cheap. Beside it, outside the sum: the same commit made through sqlx, as the
//!   services make theirs (each statement handed to the connection's own thread), and made by
//!   the platform's SQLite writer thread (`ordermesh_platform::sqlite_writer`), which commits
//!   whatever units of work wait in one transaction, a savepoint each (group commit);
//! - a raw consume that decodes OrderPlaced and stores its offset: 2 (one per channel).
//!
//! Each part is also printed in its own row (raw column only), so the sum can be read off.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{
    Scale,
    compare::{Better, Comparison, in_turn},
    grpc::{
        cpu_seconds, create_orders, echo_calls, no_errors,
        parts::Parts,
        servers::{Mesh, raw_echo},
    },
    kafka::consume_cpu_us,
    load::{Pace, Until},
};

/// Durable commits one order needs beyond those batched with other orders' (see the module text).
pub const COMMITS: f64 = 5.0;
/// A notifier that sends nothing new for this long fails the benchmark instead of hanging it.
const STALL: Duration = Duration::from_secs(30);

/// 8. CPU per order, whole, vs the sum of its parts.
pub async fn cost_per_order(scale: &Scale) -> Result<Vec<Comparison>> {
    let (concurrency, seconds, units) = if scale.smoke {
        (8, 1, 200)
    } else {
        (64, 5, scale.messages.max(1_000))
    };
    let pace = Pace::Closed { concurrency };
    let mut cpu = Comparison::new(
        "CPU per order (caller to both notifications) vs its parts",
        "us/order",
        Better::Lower,
        Some(2.0),
    );
    let mut orders = Comparison::new(
        &format!("Orders/s, notifier running ({concurrency} callers)"),
        "orders/s",
        Better::Higher,
        None,
    );
    let mut hop = part("raw tonic hop, client and server (x2)");
    let mut produce = part("acknowledged produce (x1)");
    let mut commit = part(&format!(
        "durable SQLite commit, SQLite's library (x{COMMITS})"
    ));
    let mut sqlx_commit = part("the same commit through sqlx, as ours (not in the sum)");
    let mut grouped_commit =
        part("the same commit, platform writer thread, group commit (not in the sum)");
    let mut consume = part("raw consume, decode and store offset (x2)");

    let mesh = Mesh::start_whole().await?;
    let echo = raw_echo().await?;
    let parts = Parts::new(&mesh.broker).await?;
    // The consumer groups' first join (3 s on the embedded broker) and the databases' first pages
    // are paid here, before any clock starts.
    let warm_up = create_orders(&mesh.order.url(), pace, Until::Calls(50)).await?;
    no_errors("CreateOrder (warm-up)", &warm_up)?;
    all_notified(&mesh, 2 * warm_up.ok).await?;

    for round in 0..scale.rounds {
        let ours = async {
            let (sent, before) = (mesh.sent(), cpu_seconds());
            let run = create_orders(&mesh.order.url(), pace, Until::Elapsed(secs(seconds))).await?;
            no_errors("CreateOrder", &run)?;
            all_notified(&mesh, sent + 2 * run.ok).await?;
            let per_order = (cpu_seconds() - before) * 1e6 / run.ok.max(1) as f64;
            Ok::<_, anyhow::Error>((per_order, run.throughput()))
        };
        let raw = async {
            let before = cpu_seconds();
            let hops = echo_calls(&echo.url(), pace, Until::Elapsed(secs(seconds))).await?;
            no_errors("raw hop", &hops)?;
            let hop_us = per_unit(before, hops.ok);
            let before = cpu_seconds();
            let produced = parts.produce(pace, units as u64).await?;
            let produce_us = per_unit(before, produced.ok);
            // Twenty times as many: each is short, and a run of `units` is over in milliseconds.
            let commit_us = parts.direct_commit_cpu_us(20 * units as u64).await?;
            let before = cpu_seconds();
            let committed = parts.commit(pace, units as u64).await?;
            let sqlx_commit_us = per_unit(before, committed.ok);
            let before = cpu_seconds();
            let grouped = parts.grouped_commit(pace, 20 * units as u64).await?;
            let grouped_commit_us = per_unit(before, grouped.ok);
            let topic = format!("bench-consume-{}", uuid::Uuid::new_v4().simple());
            mesh.broker.create_topic(&topic, 3)?;
            let consume_us =
                consume_cpu_us(&mesh.broker.bootstrap_servers(), &topic, units).await?;
            Ok::<_, anyhow::Error>(PartsCpu {
                hop_us,
                produce_us,
                commit_us,
                sqlx_commit_us,
                grouped_commit_us,
                consume_us,
            })
        };
        let ((ours_us, throughput), raw) = in_turn(round, ours, raw).await?;
        cpu.ours.push(ours_us);
        cpu.raw.push(raw.sum());
        orders.ours.push(throughput);
        hop.raw.push(raw.hop_us);
        produce.raw.push(raw.produce_us);
        commit.raw.push(raw.commit_us);
        sqlx_commit.raw.push(raw.sqlx_commit_us);
        grouped_commit.raw.push(raw.grouped_commit_us);
        consume.raw.push(raw.consume_us);
    }
    echo.stop().await;
    drop(parts);
    mesh.stop().await;
    Ok(vec![
        cpu,
        orders,
        hop,
        produce,
        commit,
        sqlx_commit,
        grouped_commit,
        consume,
    ])
}

/// One round's parts, CPU microseconds per unit.
struct PartsCpu {
    hop_us: f64,
    produce_us: f64,
    commit_us: f64,
    sqlx_commit_us: f64,
    grouped_commit_us: f64,
    consume_us: f64,
}

impl PartsCpu {
    /// What one order would cost if it were nothing but its parts (the module text says which).
    fn sum(&self) -> f64 {
        2.0 * self.hop_us + self.produce_us + COMMITS * self.commit_us + 2.0 * self.consume_us
    }
}

/// A row that shows one part's own figure (raw column), with no ratio of its own.
fn part(what: &str) -> Comparison {
    Comparison::new(&format!("  part: {what}"), "us/unit", Better::Lower, None)
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// CPU microseconds per unit since `before`.
fn per_unit(before: f64, units: u64) -> f64 {
    (cpu_seconds() - before) * 1e6 / units.max(1) as f64
}

/// Waits until the notifier has sent `target` notifications in all.
async fn all_notified(mesh: &Mesh, target: u64) -> Result<()> {
    let mut last = mesh.sent();
    let mut moved = Instant::now();
    while last < target {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let sent = mesh.sent();
        if sent != last {
            (last, moved) = (sent, Instant::now());
        } else if moved.elapsed() > STALL {
            bail!("the notifier is stuck at {sent} of {target} notifications");
        }
    }
    Ok(())
}
