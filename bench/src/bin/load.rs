//! `ordermesh-load`: drives CreateOrder against an order endpoint, prints the latency summary,
//! throughput and errors by code, then audits that every accepted order got exactly one email and
//! one SMS notification.
//!
//! With `--faults random` it runs a fault campaign instead (`ordermesh_bench::campaign`): calls with
//! payment faults injected from a seed, some sent again, some accepted orders cancelled (some
//! twice, some with refund faults), then a wait until no order is pending or cancelling, then the
//! ledger audit of the money promise over orders, charges, refunds, events and notifications; it
//! exits non-zero on any violation and prints the command that replays the seed.
//!
//! ```text
//! ordermesh-load --concurrency 32 --duration 30s
//! ordermesh-load --rate 500 --count 10000 --json
//! ordermesh-load --faults random --seed 42 --count 500
//! ```

use std::{
    collections::{HashMap, HashSet},
    io::IsTerminal,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ordermesh::{
    proto::notification::v1::Channel, proto::notification::v1::ListNotificationsRequest,
    proto::notification::v1::NotificationStatus,
    proto::notification::v1::notification_service_client::NotificationServiceClient,
    proto::order::v1::order_service_client::OrderServiceClient,
};
use ordermesh_bench::load::{self, Pace, Progress, Until};
use serde::Serialize;
use tonic::transport::{Channel as GrpcChannel, Endpoint};

#[derive(Debug, Parser)]
#[command(
    name = "ordermesh-load",
    version,
    about = "Drives CreateOrder against an order endpoint and audits the notifications"
)]
struct Cli {
    /// The order service.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    order: String,
    /// The notifier, for the audit.
    #[arg(long, default_value = "http://127.0.0.1:50053")]
    notifier: String,
    /// Closed loop: this many callers, each calling again once answered (the default pacing).
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open loop: this many calls per second, whatever the answers.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: calls outstanding at most; beyond it a due call counts as CLIENT_OVERLOADED.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// Run this long (e.g. 30s, 2m, 500ms).
    #[arg(long, value_parser = parse_duration, conflicts_with = "count")]
    duration: Option<Duration>,
    /// Make this many calls.
    #[arg(long)]
    count: Option<u64>,
    /// gRPC connections to spread the calls over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Deadline of each CreateOrder.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// How long the audit waits for stragglers; 0 skips the audit.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    audit_timeout: Duration,
    /// Print the result as JSON instead of a table (not with --faults random).
    #[arg(long)]
    json: bool,
    /// `random`: a fault campaign (see the crate docs) instead of plain load.
    #[arg(long, value_enum, default_value = "none")]
    faults: Faults,
    /// Campaign: the seed of its plan (default: taken from the clock, and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Campaign: the share of calls with faults injected.
    #[arg(long, default_value_t = 0.4)]
    fault_share: f64,
    /// Campaign: the share of request ids sent a second time.
    #[arg(long, default_value_t = 0.3)]
    resend_share: f64,
    /// Campaign: the share of request ids whose order, once accepted, is cancelled (a third of
    /// them twice; a cancel carries refund faults with --fault-share).
    #[arg(long, default_value_t = 0.3)]
    cancel_share: f64,
    /// Campaign: the longest injected delay.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    max_delay: Duration,
    /// Campaign: how long to wait for the order service to settle every pending order.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    settle_timeout: Duration,
    /// Campaign: the payment service, whose charges the audit lists.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    payment: String,
    /// Campaign: the Kafka brokers, whose events topic the audit reads.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Campaign: the events topic.
    #[arg(long, default_value = "order-events")]
    topic: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Faults {
    /// Plain load, no faults.
    None,
    /// A seeded fault campaign followed by the ledger audit.
    Random,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a number and a unit (ms, s, m), e.g. 30s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: the unit is ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// What the audit found.
#[derive(Debug, Serialize)]
struct Audit {
    accepted: usize,
    emails_sent: usize,
    sms_sent: usize,
    /// Accepted orders without a sent email or SMS when the audit gave up.
    missing: usize,
    /// Notifications beyond one per order and channel (must be 0).
    duplicates: usize,
    waited_s: f64,
}

#[derive(Debug, Serialize)]
struct Output {
    pacing: String,
    #[serde(flatten)]
    load: load::Report,
    audit: Option<Audit>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.faults == Faults::Random {
        return campaign(&cli).await;
    }
    let pace = match (cli.rate, cli.concurrency) {
        (Some(rate), _) => Pace::Open {
            rate,
            max_in_flight: cli.max_in_flight,
        },
        (None, concurrency) => Pace::Closed {
            concurrency: concurrency.unwrap_or(16),
        },
    };
    let until = match (cli.count, cli.duration) {
        (Some(count), _) => Until::Calls(count),
        (None, duration) => Until::Elapsed(duration.unwrap_or(Duration::from_secs(10))),
    };
    let mut clients = Vec::new();
    for _ in 0..cli.connections.max(1) {
        let channel = Endpoint::from_shared(cli.order.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot reach the order service at {}", cli.order))?;
        clients.push(OrderServiceClient::new(channel));
    }
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(until);
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let ok = progress.ok.load(Ordering::Relaxed);
                let failed = progress.failed.load(Ordering::Relaxed);
                match until {
                    Until::Calls(_) => bar.set_position(ok + failed),
                    Until::Elapsed(_) => bar.set_position(started.elapsed().as_millis() as u64),
                }
                bar.set_message(format!("ok {ok}  failed {failed}"));
            }
        })
    };
    let summary = {
        let accepted = accepted.clone();
        let timeout = cli.timeout;
        load::run(pace, until, progress, move |seq| {
            let mut client = clients[seq as usize % clients.len()].clone();
            let accepted = accepted.clone();
            let mut request = tonic::Request::new(load::order_request(&run_id, seq));
            request.set_timeout(timeout);
            async move {
                match client.create_order(request).await {
                    Ok(order) => {
                        accepted
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(order.into_inner().order_id);
                        Ok(())
                    }
                    Err(status) => Err(format!("{:?}", status.code()).to_uppercase()),
                }
            }
        })
        .await
    };
    ticker.abort();
    bar.finish_and_clear();

    let accepted = accepted.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let audit = if cli.audit_timeout.is_zero() {
        None
    } else {
        Some(audit(&cli.notifier, &accepted, cli.audit_timeout).await?)
    };
    let output = Output {
        pacing: match pace {
            Pace::Closed { concurrency } => format!("closed loop, {concurrency} callers"),
            Pace::Open { rate, .. } => format!("open loop, {rate} calls/s"),
        },
        load: summary.report(),
        audit,
    };
    print(&output, cli.json)?;
    let audit_failed = output
        .audit
        .as_ref()
        .is_some_and(|a| a.missing > 0 || a.duplicates > 0);
    if audit_failed {
        anyhow::bail!("the audit found orders without exactly one email and one SMS");
    }
    Ok(())
}

fn progress_bar(until: Until) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (length, template) = match until {
        Until::Calls(n) => (n, "{bar:40} {pos}/{len} calls  {msg}  {elapsed}"),
        Until::Elapsed(d) => (d.as_millis() as u64, "{bar:40} {elapsed}  {msg}"),
    };
    let bar = ProgressBar::new(length);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Waits up to `timeout` for every accepted order to have a SENT email and a SENT SMS, reading
/// every notification page by page.
async fn audit(notifier: &str, accepted: &[String], timeout: Duration) -> Result<Audit> {
    let channel = Endpoint::from_shared(notifier.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the notifier at {notifier} for the audit"))?;
    let mut client = NotificationServiceClient::new(channel);
    let ours: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    let started = tokio::time::Instant::now();
    loop {
        let counts = sent_per_order(&mut client, &ours).await?;
        let per_channel = |wanted: Channel| {
            counts
                .iter()
                .filter(|((_, channel), _)| *channel == wanted as i32)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
        };
        let (emails, sms) = (per_channel(Channel::Email), per_channel(Channel::Sms));
        let complete = |list: &[usize]| list.iter().filter(|n| **n >= 1).count();
        let duplicates: usize = counts.values().map(|n| n.saturating_sub(1)).sum();
        let missing = ours
            .iter()
            .filter(|id| {
                !(counts.contains_key(&(id.to_string(), Channel::Email as i32))
                    && counts.contains_key(&(id.to_string(), Channel::Sms as i32)))
            })
            .count();
        if missing == 0 || started.elapsed() >= timeout {
            return Ok(Audit {
                accepted: ours.len(),
                emails_sent: complete(&emails),
                sms_sent: complete(&sms),
                missing,
                duplicates,
                waited_s: started.elapsed().as_secs_f64(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// SENT notifications per (order id, channel), for the orders in `ours`.
async fn sent_per_order(
    client: &mut NotificationServiceClient<GrpcChannel>,
    ours: &HashSet<&str>,
) -> Result<HashMap<(String, i32), usize>> {
    let mut counts = HashMap::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_notifications(ListNotificationsRequest {
                page_size: 500,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        for n in page.notifications {
            if n.status() == NotificationStatus::Sent && ours.contains(n.order_id.as_str()) {
                *counts.entry((n.order_id, n.channel)).or_default() += 1;
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(counts);
        }
        page_token = page.next_page_token;
    }
}

/// The fault campaign: plan, calls, settlement, audit, report.
#[allow(clippy::print_stdout)]
async fn campaign(cli: &Cli) -> Result<()> {
    use std::io::Write;

    use ordermesh::proto::payment::v1::payment_service_client::PaymentServiceClient;
    use ordermesh_bench::{
        audit::{self, Ledger},
        campaign::{self, Report, plan},
        events,
    };

    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let requests = usize::try_from(cli.count.unwrap_or(500))?;
    let replay = format!(
        "ordermesh-load --faults random --seed {seed} --count {requests} --fault-share {} --resend-share {} --cancel-share {} --max-delay {}ms",
        cli.fault_share,
        cli.resend_share,
        cli.cancel_share,
        cli.max_delay.as_millis()
    );
    println!("fault campaign, seed {seed} (replay with: {replay})");
    std::io::stdout().flush()?;

    let connect = |url: &str, what: &'static str| {
        let url = url.to_owned();
        async move {
            Endpoint::from_shared(url.clone())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("cannot reach the {what} at {url}"))
        }
    };
    let mut order = OrderServiceClient::new(connect(&cli.order, "order service").await?);
    let mut payment = PaymentServiceClient::new(connect(&cli.payment, "payment service").await?);
    let mut notifier = NotificationServiceClient::new(connect(&cli.notifier, "notifier").await?);

    let shape = plan::Shape {
        requests,
        fault_share: cli.fault_share,
        resend_share: cli.resend_share,
        cancel_share: cli.cancel_share,
        max_delay: cli.max_delay,
        ..plan::Shape::default()
    };
    // The run id keeps request ids apart from an earlier run of the same seed on the same mesh.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let calls = plan::plan(seed, &shape, &format!("campaign-{seed}-{}", &run[24..]));
    let outcome = campaign::execute(
        order.clone(),
        calls,
        cli.concurrency.unwrap_or(16),
        cli.timeout,
    )
    .await;
    let settled = campaign::settle(&mut order, cli.settle_timeout).await?;

    let kafka = ordermesh_kafka::KafkaSettings::plaintext(cli.kafka_brokers.clone());
    let events = events::read_topic_events(&kafka, &cli.topic, Duration::from_secs(60))
        .await
        .with_context(|| format!("reading topic {} at {}", cli.topic, cli.kafka_brokers))?;
    // The notifications due (two per paid order, four per cancelled one: a confirmation and a
    // cancellation on each channel), then a moment for a stray duplicate to show.
    let due = {
        use ordermesh::proto::order::v1::OrderStatus;
        let orders = audit::all_orders(&mut order).await?;
        2 * audit::count_status(&orders, OrderStatus::Paid)
            + 4 * audit::count_status(&orders, OrderStatus::Cancelled)
    };
    let started = tokio::time::Instant::now();
    while audit::all_notifications(&mut notifier).await?.len() < due
        && started.elapsed() < cli.audit_timeout
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let notifications = audit::all_notifications(&mut notifier).await?;

    let ledger = Ledger::read(&mut order, &mut payment, events, Some(notifications)).await?;
    let mut violations = ledger.violations();
    violations.extend(ledger.accepted_without_order(outcome.accepted.iter().map(String::as_str)));
    violations.extend(
        ledger.accepted_cancels_not_kept(outcome.cancel_accepted.iter().map(String::as_str)),
    );
    let report = Report::new(
        seed, replay, requests, outcome, settled, &ledger, violations,
    );
    print!("{report}");
    if !report.violations.is_empty() {
        anyhow::bail!(
            "the ledger breaks the money promise ({} violations); seed {seed}",
            report.violations.len()
        );
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print(output: &Output, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(output)?);
        return Ok(());
    }
    println!("{}", output.pacing);
    print!("{}", output.load);
    if let Some(audit) = &output.audit {
        println!("audit (waited {:.1} s)", audit.waited_s);
        for (name, value) in [
            ("accepted orders", audit.accepted),
            ("emails sent", audit.emails_sent),
            ("sms sent", audit.sms_sent),
            ("missing", audit.missing),
            ("duplicates", audit.duplicates),
        ] {
            println!("  {name:<16} {value:>10}");
        }
    }
    Ok(())
}
