//! One CreateOrder is one trace: order's server span, its Charge client span, payment's server
//! span, the Kafka send by the outbox relay, and the email and SMS consumers' process and send spans
//! all share the caller's trace id, each the child of the span that caused it.
//!
//! A test binary of its own: the tracer is process-wide, and here it is the production setup
//! (`ordermesh_platform::telemetry::install_to`) with an in-memory exporter instead of OTLP,
//! installed once for the binary's tests. The test runs on both database backends at once, each
//! with a trace id of its own to find its spans by (the trace context crosses the outbox table).

// The mesh helpers are shared with the mesh tests; this binary uses a few of them.
#![allow(unreachable_pub, dead_code)]
#![allow(clippy::unwrap_used)]

#[path = "mesh/support/helpers.rs"]
#[allow(unused_imports)]
mod helpers;

use anyhow::{Context, Result, ensure};
use opentelemetry::{
    Value,
    trace::{SpanId, SpanKind, TraceId},
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use ordermesh_platform::telemetry::LogFormat;
use tonic::Request;

use helpers::{eventually, order_request, spawn_mesh};
use ordermesh_testkit::{Backend, on_both_backends};

/// The caller's trace id on each backend.
fn trace_id(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "4bf92f3577b34da6a3ce929d0e0e4736",
        Backend::Postgres => "5cf92f3577b34da6a3ce929d0e0e4737",
    }
}
/// The caller's own span, as if grpcurl's caller were traced.
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The one span named `name` of kind `kind` (and with `key` = `value`, if given).
fn find<'a>(
    spans: &'a [SpanData],
    name: &str,
    kind: SpanKind,
    with: Option<(&str, &str)>,
) -> Result<&'a SpanData> {
    let found: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == name && s.span_kind == kind)
        .filter(|s| {
            with.is_none_or(|(key, value)| attribute(s, key).is_some_and(|v| v.as_str() == value))
        })
        .collect();
    ensure!(
        found.len() == 1,
        "one {kind:?} span {name:?} {with:?}, found {}: {:#?}",
        found.len(),
        spans
            .iter()
            .map(|s| (&s.name, &s.span_kind))
            .collect::<Vec<_>>()
    );
    Ok(found[0])
}

fn child_of(child: &SpanData, parent: &SpanData) -> Result<()> {
    ensure!(
        child.parent_span_id == parent.span_context.span_id(),
        "{} is a child of {}",
        child.name,
        parent.name
    );
    Ok(())
}

/// The process-wide tracer, installed by the first test to ask: every finished span lands in the
/// exporter returned.
fn exporter() -> &'static InMemorySpanExporter {
    static INSTALLED: std::sync::OnceLock<(
        InMemorySpanExporter,
        ordermesh_platform::telemetry::Telemetry,
    )> = std::sync::OnceLock::new();
    &INSTALLED
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let telemetry = ordermesh_platform::telemetry::install_to(
                LogFormat::Text,
                provider,
                tracing_subscriber::fmt::TestWriter::default,
            )
            .expect("the tracer installs once per process");
            (exporter, telemetry)
        })
        .0
}

#[on_both_backends]
#[tokio::test]
async fn one_create_order_is_one_trace_through_payment_kafka_and_both_notifications(
    backend: Backend,
) -> Result<()> {
    let exporter = exporter();
    let trace = trace_id(backend);
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };

    let mut request = Request::new(order_request("traced-1", "tok_visa"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{CALLER_SPAN}-01").parse()?,
    );
    let order = mesh
        .order_client()
        .await?
        .create_order(request)
        .await?
        .into_inner();
    mesh.wait_for_notifications(2).await?;

    // Spans are exported when they end, a moment after the work they cover: wait for all eight.
    let trace_id = TraceId::from_hex(trace)?;
    let traced = || -> Result<Vec<SpanData>> {
        Ok(exporter
            .get_finished_spans()?
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace_id)
            .collect())
    };
    eventually("eight spans in the caller's trace", || async {
        Ok(traced()?.len() >= 8)
    })
    .await?;
    let spans = traced()?;
    let topic = mesh.topic.as_str();

    let create = find(
        &spans,
        "ordermesh.order.v1.OrderService/CreateOrder",
        SpanKind::Server,
        None,
    )?;
    ensure!(create.parent_span_id == SpanId::from_hex(CALLER_SPAN)?);
    ensure!(
        attribute(create, "rpc.system")
            .map(Value::as_str)
            .as_deref()
            == Some("grpc")
    );
    ensure!(attribute(create, "rpc.grpc.status_code") == Some(&Value::I64(0)));
    let charge_client = find(
        &spans,
        "ordermesh.payment.v1.PaymentService/Charge",
        SpanKind::Client,
        None,
    )?;
    child_of(charge_client, create)?;
    ensure!(
        attribute(charge_client, "server.address")
            .map(Value::as_str)
            .as_deref()
            == Some("127.0.0.1")
    );
    ensure!(
        attribute(create, "network.peer.address")
            .map(Value::as_str)
            .as_deref()
            == Some("127.0.0.1")
    );
    let charge_server = find(
        &spans,
        "ordermesh.payment.v1.PaymentService/Charge",
        SpanKind::Server,
        None,
    )?;
    child_of(charge_server, charge_client)?;

    let send = find(&spans, &format!("send {topic}"), SpanKind::Producer, None)?;
    child_of(send, create)?;
    ensure!(
        attribute(send, "messaging.kafka.message.key")
            .map(Value::as_str)
            .as_deref()
            == Some(order.order_id.as_str())
    );
    for channel in ["EMAIL", "SMS"] {
        let process = find(
            &spans,
            &format!("process {topic}"),
            SpanKind::Consumer,
            Some(("ordermesh.channel", channel)),
        )?;
        child_of(process, send)?;
        ensure!(
            attribute(process, "ordermesh.outcome")
                .map(Value::as_str)
                .as_deref()
                == Some("sent"),
            "{process:?}"
        );
        let delivered = find(
            &spans,
            &format!("send {}", channel.to_lowercase()),
            SpanKind::Client,
            None,
        )?;
        child_of(delivered, process)?;
    }
    // Nothing else joined the trace (health checks are not traced, for one).
    ensure!(
        spans.len() == 8,
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    mesh.shutdown().await.context("shutdown")
}
