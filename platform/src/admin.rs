//! The admin HTTP port of a service: `/metrics` in the Prometheus text format for scrapers, and
//! `/healthz` for probes that speak HTTP rather than gRPC. Kept off the gRPC port so it can be
//! firewalled separately and scraped without a gRPC client.

use std::future::Future;

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

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

/// A running admin HTTP server (see [`serve`]); nothing if there was no admin listener.
#[derive(Debug)]
pub struct Admin {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Admin {
    /// Serves `metrics` on `listener`, if there is one, until [`Admin::stop`].
    pub fn start(listener: Option<TcpListener>, metrics: &Metrics) -> Self {
        let stop = CancellationToken::new();
        let task = listener.map(|listener| {
            let metrics = metrics.clone();
            let stopped = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                if let Err(error) = serve(listener, metrics, stopped).await {
                    tracing::error!(%error, "admin HTTP server failed");
                }
            })
        });
        Self { stop, task }
    }

    /// Stops serving and waits until it has.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Admin {
    /// A service that fails to start returns early: its admin port closes with it.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], metrics.render())
}
