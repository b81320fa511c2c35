//! The synchronous benchmarks, each beside its raw baseline:
//!
//! 1. CreateOrder latency at low load (open loop) vs the sum of its parts measured in the same
//!    round: two raw tonic unary hops, one raw rdkafka produce-with-ack, one durable SQLite commit.
//! 2. CreateOrder saturation throughput and CPU per order vs a raw tonic echo server under the same
//!    generator.
//! 3. The payment client's middleware stack (deadline, retry, breaker, telemetry layer; no tracing
//!    subscriber installed) vs the raw generated tonic client, both against the same stub payment
//!    server that answers at once, so only the client side differs.
//!
//! The raw tonic server is the standard health service alone (`grpc.health.v1.Health/Check`): a
//! real tonic unary call with a tiny message and no layers. Everything runs in this process, on
//! loopback, against the embedded broker; CPU time is this process's (`/proc/self/stat`), so it
//! covers the generator, the services and the broker alike on both sides.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use ordermesh::{
    proto::order::v1::order_service_client::OrderServiceClient, proto::payment::v1::ChargeOutcome,
    proto::payment::v1::ChargeRequest, proto::payment::v1::CloseChargeKeyRequest,
    proto::payment::v1::GetChargeOutcomeRequest, proto::payment::v1::GetPaymentRequest,
    proto::payment::v1::ListPaymentsRequest, proto::payment::v1::ListPaymentsResponse,
    proto::payment::v1::Payment, proto::payment::v1::PaymentStatus,
    proto::payment::v1::payment_service_client::PaymentServiceClient,
    proto::payment::v1::payment_service_server::PaymentService,
    proto::payment::v1::payment_service_server::PaymentServiceServer, proto::types::v1::Money,
};
use ordermesh_order::payment_client::{
    ChargeCall, PaymentClient, PaymentClientConfig, breaker::BreakerConfig,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    Scale,
    compare::{Better, Comparison, in_turn},
    echo,
    load::{self, Pace, Summary, Until},
};

/// This process's CPU time so far (user + system), in seconds. Linux only; USER_HZ is 100.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) end with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// A server task on a port-0 listener, stopped when dropped.
struct Serving {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn channel(url: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// The raw tonic server (see [`echo`]), in this process.
async fn raw_echo() -> Result<Serving> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = echo::serve(listener, async {
            let _ = stopped.await;
        })
        .await;
    });
    Ok(Serving {
        addr,
        stop: Some(stop),
        task,
    })
}

/// A payment server that charges nothing and answers at once.
#[derive(Debug, Default)]
struct StubPayment;

#[tonic::async_trait]
impl PaymentService for StubPayment {
    async fn charge(
        &self,
        request: tonic::Request<ChargeRequest>,
    ) -> Result<tonic::Response<Payment>, tonic::Status> {
        let request = request.into_inner();
        Ok(tonic::Response::new(Payment {
            payment_id: format!("pay_{}", request.idempotency_key),
            order_id: request.order_id,
            status: PaymentStatus::Succeeded as i32,
            amount: request.amount,
            ..Default::default()
        }))
    }

    async fn get_payment(
        &self,
        _: tonic::Request<GetPaymentRequest>,
    ) -> Result<tonic::Response<Payment>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn get_charge_outcome(
        &self,
        _: tonic::Request<GetChargeOutcomeRequest>,
    ) -> Result<tonic::Response<ChargeOutcome>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn close_charge_key(
        &self,
        _: tonic::Request<CloseChargeKeyRequest>,
    ) -> Result<tonic::Response<ChargeOutcome>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn list_payments(
        &self,
        _: tonic::Request<ListPaymentsRequest>,
    ) -> Result<tonic::Response<ListPaymentsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("stub"))
    }
}

async fn stub_payment() -> Result<Serving> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(PaymentServiceServer::new(StubPayment))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Serving {
        addr,
        stop: Some(stop),
        task,
    })
}

/// Payment and order as the binaries run them (order's defaults), on the embedded broker, with
/// SQLite files in a temporary directory. The notifier is not part of CreateOrder.
struct Mesh {
    payment: Serving,
    order: Serving,
    broker: ordermesh_kafka::EmbeddedBroker,
    _dir: tempfile::TempDir,
}

impl Mesh {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let topic = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let broker = ordermesh_kafka::EmbeddedBroker::start("127.0.0.1:0".parse()?, &[&topic], 3)?;
        let db = |name: &str| format!("sqlite://{}", dir.path().join(name).display());

        let payment_config = ordermesh_payment::Config {
            database_url: db("payment.db"),
            ..ordermesh_payment::Config::from_env()?
        };
        let payment = spawn(|listener, stop| async move {
            ordermesh_payment::run(listener, payment_config, stop)
                .await
                .map_err(anyhow::Error::from)
        })
        .await?;
        let order_config = ordermesh_order::Config {
            database_url: db("order.db"),
            payment_url: payment.url(),
            kafka: ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
            events_topic: topic,
            ..ordermesh_order::Config::from_env()?
        };
        let order = spawn(|listener, stop| async move {
            ordermesh_order::run(listener, order_config, stop)
                .await
                .map_err(anyhow::Error::from)
        })
        .await?;
        Ok(Self {
            payment,
            order,
            broker,
            _dir: dir,
        })
    }

    async fn stop(self) {
        self.order.stop().await;
        self.payment.stop().await;
        drop(self.broker);
    }
}

async fn spawn<F, Fut>(run: F) -> Result<Serving>
where
    F: FnOnce(TcpListener, futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let future = run(
        listener,
        Box::pin(async move {
            let _ = stopped.await;
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(error) = future.await {
            tracing::error!("{error:#}");
        }
    });
    let serving = Serving {
        addr,
        stop: Some(stop),
        task,
    };
    let addr = serving.addr;
    ordermesh_testkit::eventually(&format!("{addr} SERVING"), || async {
        Ok(ordermesh_testkit::is_serving(addr).await)
    })
    .await?;
    Ok(serving)
}

/// Runs CreateOrder against `url` under `pace` until `until`.
pub(crate) async fn create_orders(url: &str, pace: Pace, until: Until) -> Result<Summary> {
    let client = OrderServiceClient::new(channel(url).await?);
    let run = uuid::Uuid::new_v4().simple().to_string();
    Ok(load::run(pace, until, Arc::default(), move |seq| {
        let mut client = client.clone();
        let request = load::order_request(&run, seq);
        async move {
            client
                .create_order(request)
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}", s.code()))
        }
    })
    .await)
}

/// Runs health Check against `url` (the raw tonic hop) under `pace` until `until`.
pub(crate) async fn echo_calls(url: &str, pace: Pace, until: Until) -> Result<Summary> {
    let client = HealthClient::new(channel(url).await?);
    Ok(load::run(pace, until, Arc::default(), move |_| {
        let mut client = client.clone();
        async move {
            client
                .check(HealthCheckRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}", s.code()))
        }
    })
    .await)
}

pub(crate) fn no_errors(what: &str, summary: &Summary) -> Result<()> {
    anyhow::ensure!(
        summary.errors.is_empty(),
        "{what}: errors {:?}",
        summary.errors
    );
    Ok(())
}

/// 1. CreateOrder at low load vs the sum of its parts.
pub async fn create_order_latency(scale: &Scale) -> Result<Vec<Comparison>> {
    let rate = 50.0;
    let calls = if scale.smoke {
        20
    } else {
        scale.messages.min(400)
    } as u64;
    let pace = Pace::Open {
        rate,
        max_in_flight: 1_000,
    };
    let mut p50 = Comparison::new(
        "CreateOrder p50 at 50/s vs sum of parts",
        "ms",
        Better::Lower,
        Some(1.15),
    );
    let mut p99 = Comparison::new(
        "CreateOrder p99 at 50/s vs sum of parts",
        "ms",
        Better::Lower,
        Some(1.5),
    );
    let mesh = Mesh::start().await?;
    let echo = raw_echo().await?;
    let parts = Parts::new(&mesh.broker).await?;
    for round in 0..scale.rounds {
        let ours = async {
            let s = create_orders(&mesh.order.url(), pace, Until::Calls(calls)).await?;
            no_errors("CreateOrder", &s)?;
            Ok::<_, anyhow::Error>((s.latency_ms(0.5), s.latency_ms(0.99)))
        };
        let raw = async {
            let hop = echo_calls(&echo.url(), pace, Until::Calls(calls)).await?;
            no_errors("raw hop", &hop)?;
            let produce = parts.produce(pace, calls).await?;
            let commit = parts.commit(pace, calls).await?;
            // Two hops (client -> order, order -> payment), one produce, one commit.
            let sum = |q| 2.0 * hop.latency_ms(q) + produce.latency_ms(q) + commit.latency_ms(q);
            Ok::<_, anyhow::Error>((sum(0.5), sum(0.99)))
        };
        let (a, b) = in_turn(round, ours, raw).await?;
        p50.ours.push(a.0);
        p50.raw.push(b.0);
        p99.ours.push(a.1);
        p99.raw.push(b.1);
    }
    echo.stop().await;
    drop(parts);
    mesh.stop().await;
    Ok(vec![p50, p99])
}

/// The raw parts of CreateOrder other than the hops: a produce acknowledged by the broker with
/// the publisher's settings, and a durable SQLite commit with the services' settings.
struct Parts {
    producer: FutureProducer,
    topic: String,
    pool: sqlx::SqlitePool,
    _dir: tempfile::TempDir,
}

impl Parts {
    async fn new(broker: &ordermesh_kafka::EmbeddedBroker) -> Result<Self> {
        let topic = format!("bench-parts-{}", uuid::Uuid::new_v4().simple());
        // The mock cluster does not create topics on request.
        broker.create_topic(&topic, 3)?;
        let brokers = &broker.bootstrap_servers();
        // The publisher's settings (order/src/publisher.rs).
        let producer = ordermesh_kafka::KafkaSettings::plaintext(brokers)
            .client_config("bench-raw")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "5000")
            .create()?;
        let dir = tempfile::tempdir()?;
        // The services' database settings (src/db.rs): WAL, synchronous=NORMAL.
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("parts.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY, body BLOB NOT NULL)")
            .execute(&pool)
            .await?;
        Ok(Self {
            producer,
            topic,
            pool,
            _dir: dir,
        })
    }

    async fn produce(&self, pace: Pace, calls: u64) -> Result<Summary> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let payload = vec![b'x'; 400];
        let summary = load::run(pace, Until::Calls(calls), Arc::default(), move |seq| {
            let (producer, topic, payload) = (producer.clone(), topic.clone(), payload.clone());
            async move {
                let key = seq.to_string();
                let record = FutureRecord::to(&topic).key(&key).payload(&payload);
                producer
                    .send(record, rdkafka::util::Timeout::Never)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e.to_string())
            }
        })
        .await;
        no_errors("raw produce", &summary)?;
        Ok(summary)
    }

    async fn commit(&self, pace: Pace, calls: u64) -> Result<Summary> {
        let pool = self.pool.clone();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let summary = load::run(pace, Until::Calls(calls), Arc::default(), move |seq| {
            let pool = pool.clone();
            let id = format!("{run}-{seq}");
            async move {
                let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
                sqlx::query("INSERT INTO t (id, body) VALUES (?, ?)")
                    .bind(id)
                    .bind(vec![0u8; 400])
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                tx.commit().await.map_err(|e| e.to_string())
            }
        })
        .await;
        no_errors("raw commit", &summary)?;
        Ok(summary)
    }
}

/// 2. CreateOrder at saturation vs a raw tonic echo server under the same closed loop.
pub async fn saturation(scale: &Scale) -> Result<Vec<Comparison>> {
    let (concurrency, seconds) = if scale.smoke { (8, 1) } else { (64, 5) };
    let pace = Pace::Closed { concurrency };
    let until = Until::Elapsed(Duration::from_secs(seconds));
    let mut throughput = Comparison::new(
        &format!("CreateOrder/s vs echo req/s ({concurrency} callers)"),
        "calls/s",
        Better::Higher,
        Some(0.3),
    );
    let mut cpu = Comparison::new(
        "CPU per CreateOrder vs per echo request (all in-process)",
        "us/call",
        Better::Lower,
        Some(3.0),
    );
    let mesh = Mesh::start().await?;
    let echo = raw_echo().await?;
    let measure = |summary: &Summary, cpu_before: f64| {
        let cpu_us = (cpu_seconds() - cpu_before) * 1e6 / summary.ok.max(1) as f64;
        (summary.throughput(), cpu_us)
    };
    for round in 0..scale.rounds {
        let ours = async {
            let before = cpu_seconds();
            let s = create_orders(&mesh.order.url(), pace, until).await?;
            Ok::<_, anyhow::Error>(measure(&s, before))
        };
        let raw = async {
            let before = cpu_seconds();
            let s = echo_calls(&echo.url(), pace, until).await?;
            no_errors("echo", &s)?;
            Ok::<_, anyhow::Error>(measure(&s, before))
        };
        let (a, b) = in_turn(round, ours, raw).await?;
        throughput.ours.push(a.0);
        throughput.raw.push(b.0);
        cpu.ours.push(a.1);
        cpu.raw.push(b.1);
    }
    echo.stop().await;
    mesh.stop().await;
    Ok(vec![throughput, cpu])
}

/// 3. The payment client stack vs the raw tonic client, sequential calls to a stub server.
pub async fn payment_client_stack(scale: &Scale) -> Result<Vec<Comparison>> {
    let calls = if scale.smoke {
        100
    } else {
        scale.messages.max(1_000)
    } as u64;
    let stub = stub_payment().await?;
    let config = PaymentClientConfig {
        url: stub.url(),
        // The order service's defaults.
        resolve_interval: Duration::from_secs(5),
        health_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(1),
        deadline_margin: Duration::from_millis(50),
        max_attempts: 3,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        retry_budget_ratio: 0.2,
        retry_min_per_sec: 10,
        breaker: BreakerConfig {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(2),
            slow_call_rate: 0.8,
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
        },
        tls: Default::default(),
    };
    let meter = opentelemetry::global::meter("bench");
    let ours_client = PaymentClient::new(&config, &meter)?;
    let raw_client = PaymentServiceClient::new(channel(&stub.url()).await?);
    let request = |seq: u64| ChargeRequest {
        idempotency_key: format!("bench-{seq}"),
        order_id: format!("ord-{seq}"),
        amount: Some(Money {
            currency_code: "USD".into(),
            minor_units: 1999,
        }),
        payment_method_token: "tok_visa".into(),
    };
    // Warm both connections up first.
    ours_client
        .charge(ChargeCall::new(request(0), None, Default::default()))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    raw_client.clone().charge(request(0)).await?;

    let pace = Pace::Closed { concurrency: 1 };
    let mut p50 = Comparison::new(
        "Payment client stack p50 vs raw tonic client",
        "us",
        Better::Lower,
        Some(1.03),
    );
    let mut p99 = Comparison::new(
        "Payment client stack p99 vs raw tonic client",
        "us",
        Better::Lower,
        Some(1.10),
    );
    let mut cpu = Comparison::new(
        "Payment client stack CPU/call vs raw tonic client",
        "us/call",
        Better::Lower,
        Some(1.05),
    );
    for round in 0..scale.rounds {
        let ours = async {
            let client = ours_client.clone();
            let before = cpu_seconds();
            let s = load::run(pace, Until::Calls(calls), Arc::default(), move |seq| {
                let client = client.clone();
                let call = ChargeCall::new(request(seq), None, Default::default());
                async move {
                    client
                        .charge(call)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("{e:?}"))
                }
            })
            .await;
            no_errors("payment client stack", &s)?;
            let cpu_us = (cpu_seconds() - before) * 1e6 / s.ok.max(1) as f64;
            Ok::<_, anyhow::Error>((
                s.latency_ms(0.5) * 1000.0,
                s.latency_ms(0.99) * 1000.0,
                cpu_us,
            ))
        };
        let raw = async {
            let client = raw_client.clone();
            let before = cpu_seconds();
            let s = load::run(pace, Until::Calls(calls), Arc::default(), move |seq| {
                let mut client = client.clone();
                let charge = request(seq);
                async move {
                    client
                        .charge(charge)
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("{:?}", s.code()))
                }
            })
            .await;
            no_errors("raw payment client", &s)?;
            let cpu_us = (cpu_seconds() - before) * 1e6 / s.ok.max(1) as f64;
            Ok::<_, anyhow::Error>((
                s.latency_ms(0.5) * 1000.0,
                s.latency_ms(0.99) * 1000.0,
                cpu_us,
            ))
        };
        let (a, b) = in_turn(round, ours, raw).await?;
        p50.ours.push(a.0);
        p50.raw.push(b.0);
        p99.ours.push(a.1);
        p99.raw.push(b.1);
        cpu.ours.push(a.2);
        cpu.raw.push(b.2);
    }
    drop((ours_client, raw_client));
    stub.stop().await;
    Ok(vec![p50, p99, cpu])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_moves() {
        let before = cpu_seconds();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(cpu_seconds() > before, "{before}");
    }
}
