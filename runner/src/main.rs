//! `ordermesh`: the whole mesh in one process, for laptops and demos. Starts an embedded
//! Kafka-protocol broker (unless `KAFKA_BROKERS` names one), then payment, order and notifier on their
//! usual ports, each exactly as its own binary would run it, and stops them all on Ctrl-C.

use anyhow::{Context, bail};
use clap::Parser;
use ordermesh_notifier::{Channel, dead_letter};
use ordermesh_platform::{
    cli::ServiceSettings,
    listeners::{Address, Listeners, bind},
};
use ordermesh_runner::cli::{Cli, Command, Service};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[tokio::main]
#[allow(clippy::print_stdout)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::DevCerts { dir }) => {
            for path in ordermesh_runner::dev_certs::write_dev_certs(dir)? {
                println!("{}", path.display());
            }
            return Ok(());
        }
        Some(Command::Token {
            key,
            scope,
            subject,
            ttl_secs,
        }) => {
            let issuer =
                ordermesh_runner::tokens::TokenIssuer::new("ORDERMESH_AUTH_KEY (--key)", key)?;
            let scopes: Vec<&str> = scope.iter().map(String::as_str).collect();
            println!(
                "{}",
                issuer.issue(subject, &scopes, std::time::Duration::from_secs(*ttl_secs))?
            );
            return Ok(());
        }
        Some(Command::ConfigReference) => {
            print!("{}", ordermesh_runner::config_reference::render());
            return Ok(());
        }
        None => {}
    }
    // One process, one tracer: spans of all three services are reported as `ordermesh` unless
    // OTEL_SERVICE_NAME says otherwise (each service's metrics keep their own name and port).
    let telemetry = ordermesh_platform::telemetry::init(cli.log_format, "ordermesh")?;
    let mut payment = ordermesh_payment::Config::from_env()?;
    let mut order = ordermesh_order::Config::from_env()?;
    let mut notifier = ordermesh_notifier::Config::from_env()?;
    // The quick start is a demo: the README's walkthrough makes payment misbehave through order
    // with x-fault-* headers. Both switches stay off in every other deployment (and here too when
    // the environment says so).
    if std::env::var_os("PAYMENT_FAULTS_ENABLED").is_none() {
        payment.faults_enabled = true;
    }
    if std::env::var_os("ORDER_FORWARD_FAULT_HEADERS").is_none() {
        order.forward_fault_headers = true;
    }
    if let Some(dir) = &cli.data_dir {
        payment.database_url = format!("sqlite://{dir}/payment.db");
        order.database_url = format!("sqlite://{dir}/order.db");
        notifier.database_url = format!("sqlite://{dir}/notifier.db");
    }
    // Order calls this process's payment; over TLS when order is told which CA to trust
    // (ORDER_PAYMENT_TLS_CA), by the name the development certificates carry for loopback.
    order.payment_url = if order.payment_tls_ca.is_some() {
        format!("https://localhost:{}", payment.listen_addr.port())
    } else {
        format!("http://{}", payment.listen_addr)
    };

    // `embedded` is kept until the end of main: dropping it stops the broker.
    let (brokers, embedded) = match cli.kafka_brokers.clone() {
        Some(brokers) => (brokers, None),
        None => {
            // Silently dropping TLS or SASL the user asked for would be worse than refusing.
            if order.kafka.security_protocol != ordermesh_kafka::SecurityProtocol::Plaintext {
                bail!(
                    "KAFKA_SECURITY_PROTOCOL is set, but the embedded broker speaks plaintext only: \
                     set KAFKA_BROKERS to a secured cluster, or unset KAFKA_SECURITY_PROTOCOL"
                );
            }
            // The mock cluster cannot create topics on request, so every topic is made here.
            let mut topics = vec![order.events_topic.clone()];
            topics.extend(Channel::ALL.map(|c| dead_letter::topic(&order.events_topic, c)));
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            let broker = ordermesh_kafka::EmbeddedBroker::start(
                cli.embedded_kafka_addr,
                &topics,
                ordermesh_kafka::DEFAULT_PARTITIONS,
            )
            .context("cannot start the embedded Kafka broker (ORDERMESH_EMBEDDED_KAFKA_ADDR)")?;
            (broker.bootstrap_servers(), Some(broker))
        }
    };
    order.kafka.brokers = brokers.clone();
    notifier.kafka.brokers = brokers.clone();

    // Where each service listens, from its own settings (the banner's first line is order's).
    let addresses = [
        (Service::Order, order.listen_addr(), order.admin_addr()),
        (
            Service::Payment,
            payment.listen_addr(),
            payment.admin_addr(),
        ),
        (
            Service::Notifier,
            notifier.listen_addr(),
            notifier.admin_addr(),
        ),
    ];
    let stop = CancellationToken::new();
    let mut services = JoinSet::new();
    let wants = |s| cli.services.contains(&s);
    // Bind everything first, so a busy port fails the start instead of one service later.
    if wants(Service::Payment) {
        let listeners = Listeners {
            grpc: bind(payment.listen_addr()).await?,
            admin: Some(bind(payment.admin_addr()).await?),
        };
        let stop = stop.clone();
        services.spawn(async move {
            ordermesh_payment::run(listeners, payment, stop.cancelled_owned())
                .await
                .context("payment")
        });
    }
    if wants(Service::Order) {
        let listeners = Listeners {
            grpc: bind(order.listen_addr()).await?,
            admin: Some(bind(order.admin_addr()).await?),
        };
        let stop = stop.clone();
        services.spawn(async move {
            ordermesh_order::run(listeners, order, stop.cancelled_owned())
                .await
                .context("order")
        });
    }
    if wants(Service::Notifier) {
        let listeners = Listeners {
            grpc: bind(notifier.listen_addr()).await?,
            admin: Some(bind(notifier.admin_addr()).await?),
        };
        let stop = stop.clone();
        services.spawn(async move {
            ordermesh_notifier::run(listeners, notifier, stop.cancelled_owned())
                .await
                .context("notifier")
        });
    }
    print_banner(&cli, &brokers, embedded.is_some(), &addresses);

    let mut result = Ok(());
    tokio::select! {
        // Ctrl-C or SIGTERM: stop everything below.
        _ = ordermesh_platform::shutdown::signal() => {}
        // A service stopped by itself (it failed): stop the others too.
        Some(joined) = services.join_next() => result = flatten(joined),
    }
    stop.cancel();
    while let Some(joined) = services.join_next().await {
        if let Err(error) = flatten(joined) {
            tracing::error!("{error:#}");
        }
    }
    drop(embedded);
    telemetry.shutdown();
    result
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    joined.context("service task panicked")?
}

/// What a newcomer needs to start poking at the mesh. Printed to stdout, apart from the logs.
#[allow(clippy::print_stdout)]
fn print_banner(
    cli: &Cli,
    brokers: &str,
    embedded: bool,
    addresses: &[(Service, Address<'static>, Address<'static>)],
) {
    let kind = if embedded {
        "embedded broker"
    } else {
        "external cluster"
    };
    println!();
    println!("ordermesh is up");
    println!("  kafka     {brokers} ({kind})");
    for &(service, (addr, _), (admin, _)) in addresses {
        if cli.services.contains(&service) {
            let name = format!("{service:?}").to_lowercase();
            println!("  {name:<9} {addr}  (metrics: http://{admin}/metrics)");
        }
    }
    println!();
    println!("Place an order:");
    println!(
        "  grpcurl -plaintext -d '{{\"request_id\":\"demo-1\",\"customer\":{{\"email\":\"ada@example.com\",\"phone\":\"+14155550100\"}},\"items\":[{{\"sku\":\"BOOK-1\",\"quantity\":2,\"unit_price\":{{\"currency_code\":\"USD\",\"minor_units\":1999}}}}],\"payment_method_token\":\"tok_visa\"}}' {} ordermesh.order.v1.OrderService/CreateOrder",
        addresses[0].1.0
    );
    println!("Read the events:");
    println!("  kcat -b {brokers} -t order-events -C -e -J");
    println!();
}
