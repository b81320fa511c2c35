//! Serving gRPC the same way in every service: the router with its fixed layers, standard health,
//! server reflection in both versions (grpcurl 1.8 speaks only v1alpha), and a bounded graceful
//! drain. The limits each service sets on its generated server are in [`crate::limits`].

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::layer::util::{Identity, Stack};

use crate::{
    limits::MAX_STREAMS_PER_CONNECTION, metrics::Metrics, oversize::OversizeLayer,
    rpc_telemetry::RpcTelemetryLayer, shed::ShedLayer,
};

/// How long in-flight calls may run after shutdown was asked for before they are cut off.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Errors of setting up or running a gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot read the listener's address: {0}")]
    Io(#[from] std::io::Error),
}

/// The router of every ordermesh server: its layers are fixed here, so the type is too.
pub type Router = tonic::transport::server::Router<
    Stack<ShedLayer, Stack<OversizeLayer, Stack<RpcTelemetryLayer, Identity>>>,
>;

/// A router with the parts every ordermesh server has: TLS if `tls` says so, a span and duration
/// metrics for every call,
/// load shedding beyond `max_concurrent` calls, the health service (its reporter is returned so the caller can say SERVING once it is really
/// ready) and reflection v1 and v1alpha knowing our protos, the health proto and the `google.rpc`
/// error details, so grpcurl needs no .proto files and shows BadRequest field violations as fields
/// rather than bytes.
pub fn router(
    max_concurrent: usize,
    metrics: &Metrics,
    tls: Option<ServerTlsConfig>,
) -> Result<(HealthReporter, Router), ServeError> {
    let mut builder = Server::builder().max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
    // TLS (or mutual TLS, if the config names a client CA) on every connection; None: plaintext.
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let mut server = builder
        // Outermost, so every call is traced and measured, shed ones included: continue the
        // caller's trace, record the span and `rpc.server.call.duration` by status code.
        .layer(RpcTelemetryLayer::server(metrics.meter()))
        // The answer to an oversized request as RESOURCE_EXHAUSTED (see `oversize`), inside the
        // telemetry layer so that traces and metrics count it as such.
        .layer(OversizeLayer)
        // Refuse calls beyond the limit at once (RESOURCE_EXHAUSTED) instead of queueing them.
        .layer(ShedLayer::new(max_concurrent).counting(metrics.meter()));
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ordermesh::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let router = server
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok((reporter, router))
}

/// Serves `router` on `listener` until `shutdown` completes, then reports NOT_SERVING (for the whole
/// server, the `""` service health checks ask about by default), stops accepting and gives in-flight
/// calls `grace` to finish. The caller binds, so tests can pass a listener on port 0.
pub async fn serve(
    router: Router,
    health: HealthReporter,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gRPC server listening");
    // Small unary calls must not wait for Nagle's algorithm.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let _ = draining_tx.send(());
    };
    // Completes `grace` after shutdown began; never, if it never does.
    let grace_over = async move {
        match draining_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        // Normal path: tonic stopped accepting and every connection finished.
        result = router.serve_with_incoming_shutdown(incoming, signal) => result?,
        // The grace period ran out first: stop waiting for slow calls (dropping them).
        () = grace_over => {
            tracing::warn!(%addr, ?grace, "drain grace period over, dropping in-flight calls");
        }
    }
    tracing::info!(%addr, "gRPC server stopped");
    Ok(())
}
