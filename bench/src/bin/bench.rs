//! `ordermesh-bench`: every benchmark, ours beside its raw baseline in the same run, printed as a
//! table of ratios. The method, the machine and the figures are in docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p ordermesh-bench --bin ordermesh-bench            # everything
//! cargo run --release -p ordermesh-bench --bin ordermesh-bench -- --only publish,consume
//! cargo run -p ordermesh-bench --bin ordermesh-bench -- --smoke         # seconds: does it work?
//! ```

use std::{future::Future, pin::Pin};

use anyhow::Result;
use clap::Parser;
use ordermesh_bench::{
    Scale,
    compare::{self, Comparison},
    cost, grpc, kafka, rss,
};

#[derive(Debug, Parser)]
#[command(
    name = "ordermesh-bench",
    version,
    about = "Benchmarks every ordermesh hop beside its raw baseline"
)]
struct Cli {
    /// Rounds of ours-then-raw per benchmark (alternating which goes first).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Calls or messages per round.
    #[arg(long, default_value_t = 5_000)]
    messages: usize,
    /// A tiny run that checks the harness works (what CI runs); its figures mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Only these benchmarks (comma-separated names, see --list).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the benchmarks and exit.
    #[arg(long)]
    list: bool,
    /// Print the comparisons as JSON after the table.
    #[arg(long)]
    json: bool,
}

type Bench = for<'a> fn(&'a Scale) -> Pin<Box<dyn Future<Output = Result<Vec<Comparison>>> + 'a>>;

/// Every benchmark, by name, in the order of docs/benchmarks.md.
const BENCHMARKS: &[(&str, &str, Bench)] = &[
    (
        "create-order-latency",
        "1. CreateOrder at low load vs the sum of its parts",
        |s| Box::pin(grpc::create_order_latency(s)),
    ),
    (
        "saturation",
        "2. CreateOrder at saturation, and CPU per order, vs a raw tonic echo",
        |s| Box::pin(grpc::saturation(s)),
    ),
    (
        "payment-client",
        "3. The payment client stack vs the raw tonic client",
        |s| Box::pin(grpc::payment_client_stack(s)),
    ),
    (
        "publish",
        "4. Event publish throughput vs raw rdkafka",
        |s| Box::pin(kafka::publish(s)),
    ),
    (
        "consume",
        "5. Notifier consume throughput vs a raw rdkafka consumer and kcat",
        |s| Box::pin(kafka::consume(s)),
    ),
    (
        "event-latency",
        "6. End-to-end event latency vs a raw producer -> consumer pair",
        |s| Box::pin(kafka::event_latency(s)),
    ),
    (
        "rss",
        "7. Resident memory of each service, idle and under load, vs a raw tonic echo server",
        |s| Box::pin(rss::rss(s)),
    ),
    (
        "cost-per-order",
        "8. CPU per order, notifications included, vs the sum of its raw parts",
        |s| Box::pin(cost::cost_per_order(s)),
    ),
];

#[tokio::main]
#[allow(clippy::print_stdout, clippy::print_stderr)]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Silent by default (logging would be measured too); RUST_LOG shows what the services under
    // measurement say, to find out why a run failed.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if cli.list {
        for (name, what, _) in BENCHMARKS {
            println!("{name:<22} {what}");
        }
        return Ok(());
    }
    if let Some(unknown) = cli
        .only
        .iter()
        .find(|name| !BENCHMARKS.iter().any(|(n, _, _)| n == name))
    {
        anyhow::bail!("no benchmark {unknown:?} (see --list)");
    }
    let scale = Scale {
        rounds: if cli.smoke { 1 } else { cli.rounds.max(1) },
        messages: if cli.smoke { 100 } else { cli.messages.max(1) },
        smoke: cli.smoke,
    };
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (name, what, bench) in BENCHMARKS {
        if !cli.only.is_empty() && !cli.only.iter().any(|n| n == name) {
            continue;
        }
        eprintln!("running {what} ...");
        match bench(&scale).await {
            Ok(mut comparisons) => rows.append(&mut comparisons),
            Err(error) => {
                eprintln!("{name} failed: {error:#}");
                failed.push(*name);
            }
        }
    }
    println!(
        "{} rounds, {} calls or messages per round{}",
        scale.rounds,
        scale.messages,
        if scale.smoke {
            " (smoke run: the figures mean nothing)"
        } else {
            ""
        }
    );
    print!("{}", compare::table(&rows));
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}
