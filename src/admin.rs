//! The admin HTTP port of a service: `/metrics` in the Prometheus text format for scrapers, and
//! `/healthz` for probes that speak HTTP rather than gRPC. Kept off the gRPC port so it can be
//! firewalled separately and scraped without a gRPC client.

use std::future::Future;

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the admin endpoints of `metrics` on `listener` until `shutdown` completes. The caller
/// binds, so tests can pass a listener on port 0.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics);
    tracing::info!(%addr, "admin HTTP listening (/metrics, /healthz)");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], metrics.render())
}
