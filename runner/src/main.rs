//! `ordermesh`: the whole mesh in one process, for laptops and demos. Starts an embedded
//! Kafka-protocol broker (unless `KAFKA_BROKERS` names one), then payment, order and notifier on their
//! usual ports, each exactly as its own binary would run it, and stops them all on Ctrl-C.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use ordermesh_notifier::{Channel, dead_letter};
use ordermesh_platform::{listeners::Listeners, listeners::bind, telemetry::LogFormat};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    Payment,
    Order,
    Notifier,
}

#[derive(Debug, Parser)]
#[command(
    name = "ordermesh",
    version,
    about = "Runs the ordermesh services and an embedded Kafka broker"
)]
struct Cli {
    /// Services to start, comma-separated.
    #[arg(
        long,
        env = "ORDERMESH_SERVICES",
        value_enum,
        value_delimiter = ',',
        default_value = "payment,order,notifier"
    )]
    services: Vec<Service>,
    /// An external Kafka cluster (comma-separated host:port). Without it an embedded broker is started.
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Where the embedded broker listens (for kcat and other clients).
    #[arg(long, env = "ORDERMESH_EMBEDDED_KAFKA_ADDR", default_value = ordermesh_kafka::DEFAULT_EMBEDDED_ADDR)]
    embedded_kafka_addr: SocketAddr,
    /// Directory of the services' SQLite databases (overrides each service's *_DATABASE_URL).
    #[arg(long, env = "ORDERMESH_DATA_DIR")]
    data_dir: Option<String>,
    #[arg(long, env = "PAYMENT_LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    payment_addr: SocketAddr,
    #[arg(long, env = "ORDER_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    order_addr: SocketAddr,
    #[arg(long, env = "NOTIFIER_LISTEN_ADDR", default_value = "127.0.0.1:50053")]
    notifier_addr: SocketAddr,
    /// Metrics (admin HTTP) of the payment service.
    #[arg(long, env = "PAYMENT_ADMIN_ADDR", default_value = "127.0.0.1:9462")]
    payment_admin_addr: SocketAddr,
    /// Metrics (admin HTTP) of the order service.
    #[arg(long, env = "ORDER_ADMIN_ADDR", default_value = "127.0.0.1:9461")]
    order_admin_addr: SocketAddr,
    /// Metrics (admin HTTP) of the notifier.
    #[arg(long, env = "NOTIFIER_ADMIN_ADDR", default_value = "127.0.0.1:9463")]
    notifier_admin_addr: SocketAddr,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Creates a development CA and a certificate and key for each service in DIR (ca.pem,
    /// order.pem/.key, payment.pem/.key, notifier.pem/.key), then exits. For development only.
    DevCerts {
        #[arg(long, default_value = "certs")]
        dir: std::path::PathBuf,
    },
    /// Prints a bearer token signed with KEY (the services' ORDER_AUTH_KEY / NOTIFIER_AUTH_KEY),
    /// for grpcurl's `-H "authorization: Bearer <token>"`.
    Token {
        /// The signing key, as the service is configured with it.
        #[arg(long, env = "ORDERMESH_AUTH_KEY", hide_env_values = true)]
        key: ordermesh_platform::auth::Secret,
        /// Scopes to grant, comma-separated: orders:write, orders:read, notifications:read.
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<String>,
        /// Who the token is for.
        #[arg(long, default_value = "ordermesh-cli")]
        subject: String,
        /// How long it is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

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
            let key = ordermesh_platform::auth::AuthKey::new("ORDERMESH_AUTH_KEY (--key)", key)?;
            let scopes: Vec<&str> = scope.iter().map(String::as_str).collect();
            println!(
                "{}",
                key.issue(subject, &scopes, std::time::Duration::from_secs(*ttl_secs))?
            );
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
        format!("https://localhost:{}", cli.payment_addr.port())
    } else {
        format!("http://{}", cli.payment_addr)
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

    let stop = CancellationToken::new();
    let mut services = JoinSet::new();
    let wants = |s| cli.services.contains(&s);
    // Bind everything first, so a busy port fails the start instead of one service later.
    if wants(Service::Payment) {
        let listeners = Listeners {
            grpc: bind((cli.payment_addr, "PAYMENT_LISTEN_ADDR")).await?,
            admin: Some(bind((cli.payment_admin_addr, "PAYMENT_ADMIN_ADDR")).await?),
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
            grpc: bind((cli.order_addr, "ORDER_LISTEN_ADDR")).await?,
            admin: Some(bind((cli.order_admin_addr, "ORDER_ADMIN_ADDR")).await?),
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
            grpc: bind((cli.notifier_addr, "NOTIFIER_LISTEN_ADDR")).await?,
            admin: Some(bind((cli.notifier_admin_addr, "NOTIFIER_ADMIN_ADDR")).await?),
        };
        let stop = stop.clone();
        services.spawn(async move {
            ordermesh_notifier::run(listeners, notifier, stop.cancelled_owned())
                .await
                .context("notifier")
        });
    }
    print_banner(&cli, &brokers, embedded.is_some());

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
fn print_banner(cli: &Cli, brokers: &str, embedded: bool) {
    let kind = if embedded {
        "embedded broker"
    } else {
        "external cluster"
    };
    println!();
    println!("ordermesh is up");
    println!("  kafka     {brokers} ({kind})");
    for (service, addr, admin) in [
        (Service::Order, cli.order_addr, cli.order_admin_addr),
        (Service::Payment, cli.payment_addr, cli.payment_admin_addr),
        (
            Service::Notifier,
            cli.notifier_addr,
            cli.notifier_admin_addr,
        ),
    ] {
        if cli.services.contains(&service) {
            let name = format!("{service:?}").to_lowercase();
            println!("  {name:<9} {addr}  (metrics: http://{admin}/metrics)");
        }
    }
    println!();
    println!("Place an order:");
    println!(
        "  grpcurl -plaintext -d '{{\"request_id\":\"demo-1\",\"customer\":{{\"email\":\"ada@example.com\",\"phone\":\"+14155550100\"}},\"items\":[{{\"sku\":\"BOOK-1\",\"quantity\":2,\"unit_price\":{{\"currency_code\":\"USD\",\"minor_units\":1999}}}}],\"payment_method_token\":\"tok_visa\"}}' {} ordermesh.order.v1.OrderService/CreateOrder",
        cli.order_addr
    );
    println!("Read the events:");
    println!("  kcat -b {brokers} -t order-events -C -e -J");
    println!();
}
