//! The README's run command, as a user runs it: the `ordermesh` binary starts the embedded broker and
//! all three services, they answer, and SIGTERM stops everything cleanly (exit status 0). With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, its spans and metrics reach an OTLP collector.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::any_value,
    resource::v1::Resource,
};
use ordermesh::{
    proto::notification::v1::ListNotificationsRequest,
    proto::notification::v1::notification_service_client::NotificationServiceClient,
    proto::order::v1::CreateOrderRequest, proto::order::v1::Customer, proto::order::v1::LineItem,
    proto::order::v1::OrderStatus, proto::order::v1::order_service_client::OrderServiceClient,
    proto::types::v1::Money,
};
use ordermesh_testkit::{EVENTUALLY, eventually, is_serving};
use tokio::process::Command;

/// A span as the collector saw it: (service.name, span name, trace id).
type SeenSpan = (String, String, Vec<u8>);

/// An OTLP collector on loopback that keeps what it is sent: spans, and (service.name, metric name).
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<SeenSpan>>>,
    metrics: Arc<Mutex<Vec<(String, String)>>>,
}

fn service_name(resource: Option<&Resource>) -> String {
    resource
        .into_iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            any_value::Value::StringValue(name) => name.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = service_name(resource_spans.resource.as_ref());
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span.name, span.trace_id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut metrics = self.metrics.lock().expect("lock");
        for resource_metrics in request.into_inner().resource_metrics {
            let service = service_name(resource_metrics.resource.as_ref());
            for scope in resource_metrics.scope_metrics {
                for metric in scope.metrics {
                    metrics.push((service.clone(), metric.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    /// Serves OTLP/gRPC on a free loopback port; returns its address.
    async fn start(&self) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()));
        tokio::spawn(
            router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok(addr)
    }
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_serving(addr: SocketAddr) -> Result<()> {
    eventually(&format!("{addr} SERVING"), || async move {
        Ok(is_serving(addr).await)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_starts_the_whole_mesh_and_stops_it_on_sigterm() -> Result<()> {
    // Arrange: free ports instead of the defaults, so the test runs beside anything else. The
    // collector binds first: a port picked free and released could otherwise be handed to it.
    let data = tempfile::tempdir()?;
    let collector = Collector::default();
    let otlp = collector.start().await?;
    let (kafka, order, payment, notifier) =
        (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
    let admin = [free_addr()?, free_addr()?, free_addr()?];
    let mut child = Command::new(env!("CARGO_BIN_EXE_ordermesh"))
        .env_remove("KAFKA_BROKERS")
        .env("ORDERMESH_EMBEDDED_KAFKA_ADDR", kafka.to_string())
        .env("ORDER_LISTEN_ADDR", order.to_string())
        .env("PAYMENT_LISTEN_ADDR", payment.to_string())
        .env("NOTIFIER_LISTEN_ADDR", notifier.to_string())
        .env("ORDER_ADMIN_ADDR", admin[0].to_string())
        .env("PAYMENT_ADMIN_ADDR", admin[1].to_string())
        .env("NOTIFIER_ADMIN_ADDR", admin[2].to_string())
        .env("ORDERMESH_DATA_DIR", data.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_METRICS_EXPORTER")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;

    // Act & Assert: everything serves, and an order goes all the way to both notifications.
    for addr in [order, payment, notifier] {
        wait_serving(addr).await?;
    }
    let created = OrderServiceClient::connect(format!("http://{order}"))
        .await?
        .create_order(CreateOrderRequest {
            request_id: "runner-1".into(),
            customer: Some(Customer {
                email: "ada@example.com".into(),
                phone: "+14155550100".into(),
            }),
            items: vec![LineItem {
                sku: "BOOK-1".into(),
                quantity: 1,
                unit_price: Some(Money {
                    currency_code: "USD".into(),
                    minor_units: 100,
                }),
            }],
            payment_method_token: "tok_visa".into(),
        })
        .await?
        .into_inner();
    assert_eq!(created.status(), OrderStatus::Paid);
    let mut notifications =
        NotificationServiceClient::connect(format!("http://{notifier}")).await?;
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let listed = notifications
            .list_notifications(ListNotificationsRequest {
                order_id: created.order_id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .notifications;
        if listed.len() == 2 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("expected 2 notifications, have {listed:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each service shows its own calls on its own admin port.
    for (admin, method) in admin
        .iter()
        .zip(["CreateOrder", "Charge", "ListNotifications"])
    {
        let scrape = reqwest::get(format!("http://{admin}/metrics"))
            .await?
            .text()
            .await?;
        assert!(
            scrape.lines().any(
                |line| line.starts_with("rpc_server_call_duration_seconds_count")
                    && line.contains(&format!("rpc_method=\"{method}\""))
            ),
            "{admin}: {scrape}"
        );
    }
    // The databases are real files in the data directory.
    for db in ["order.db", "payment.db", "notifier.db"] {
        assert!(data.path().join(db).is_file(), "{db}");
    }

    // SIGTERM: graceful stop, exit status 0.
    let pid = child.id().context("runner pid")?;
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    assert!(killed.success());
    let status = tokio::time::timeout(EVENTUALLY, child.wait())
        .await
        .context("runner did not stop")??;
    assert!(status.success(), "exit status {status}");
    let stdout = {
        use tokio::io::AsyncReadExt;
        let mut out = String::new();
        child
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)
            .await?;
        out
    };
    assert!(
        stdout.contains("grpcurl -plaintext"),
        "the banner shows a first command: {stdout}"
    );
    assert!(stdout.contains(&order.to_string()), "{stdout}");

    // The spans went out over OTLP (the last batch flushed at shutdown): the CreateOrder trace,
    // with the Kafka send and both notifications in it, under the runner's service name.
    let spans = collector.spans.lock().expect("lock").clone();
    let create = spans
        .iter()
        .find(|(_, name, _)| name == "ordermesh.order.v1.OrderService/CreateOrder")
        .with_context(|| format!("a CreateOrder span among {spans:?}"))?;
    assert_eq!(create.0, "ordermesh");
    let in_trace: Vec<&str> = spans
        .iter()
        .filter(|(_, _, trace)| *trace == create.2)
        .map(|(_, name, _)| name.as_str())
        .collect();
    for name in [
        "ordermesh.payment.v1.PaymentService/Charge",
        "send order-events",
        "process order-events",
        "send email",
        "send sms",
    ] {
        assert!(in_trace.contains(&name), "{name} in {in_trace:?}");
    }
    // And the metrics, each service under its own name.
    let metrics = collector.metrics.lock().expect("lock").clone();
    for service in ["order", "payment", "notifier"] {
        assert!(
            metrics
                .iter()
                .any(|(s, name)| s == service && name == "rpc.server.call.duration"),
            "{service} exported rpc.server.call.duration: {metrics:?}"
        );
    }
    assert!(
        metrics
            .iter()
            .any(|(s, name)| s == "notifier" && name == "ordermesh.notifications.sent"),
        "{metrics:?}"
    );
    Ok(())
}
