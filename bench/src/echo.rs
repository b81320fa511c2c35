//! The raw tonic echo server every "vs raw tonic" benchmark measures against: tonic's standard
//! health service alone (`grpc.health.v1.Health/Check`, a real unary call with a tiny message), no
//! layers, no telemetry. The same code serves in-process (benchmarks 1 and 2) and as its own
//! process, `ordermesh-echo` (benchmark 7, which needs a process of its own to measure).

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};

/// Serves the echo on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // The reporter can go: the server-wide status ("") starts SERVING and nothing changes it.
    let (_, health) = tonic_health::server::health_reporter();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
