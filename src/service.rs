//! What every service binary does the same way, so each `main.rs` only says what differs.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    telemetry::{self, LogFormat},
};

/// The sockets a service serves on, bound by its caller: gRPC, and optionally the admin HTTP port
/// (metrics). A bare listener converts into one without an admin port.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Self {
        Self { grpc, admin: None }
    }
}

/// A running admin HTTP server (see [`crate::admin`]); nothing if there was no admin listener.
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
                if let Err(error) = crate::admin::serve(listener, metrics, stopped).await {
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

/// A service's settings from their defaults and the environment alone (no command line): how the
/// runner configures the services it hosts, so they read the same variables as their binaries.
pub fn config_from_env<T>(name: &'static str) -> Result<T, clap::Error>
where
    T: clap::Args + clap::FromArgMatches,
{
    let command = T::augment_args(clap::Command::new(name));
    T::from_arg_matches(&command.try_get_matches_from([name])?)
}

/// An address to bind and the setting it comes from, for the error message if binding fails.
pub type Address<'a> = (SocketAddr, &'a str);

/// The body of a service's `main`: install logging and tracing for `service`, bind the gRPC and
/// admin addresses (naming the setting if that fails), and hand the listeners to `serve`, which
/// runs until SIGINT/SIGTERM; then flush the spans not yet exported.
pub async fn main<F, E>(
    service: &str,
    grpc: Address<'_>,
    admin: Address<'_>,
    log_format: LogFormat,
    serve: impl FnOnce(Listeners) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let telemetry = telemetry::init(log_format, service)?;
    let listeners = Listeners {
        grpc: bind(grpc).await?,
        admin: Some(bind(admin).await?),
    };
    let served = serve(listeners).await;
    telemetry.shutdown();
    Ok(served?)
}

/// Binds `address`, naming its setting if that fails.
pub async fn bind((addr, setting): Address<'_>) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({setting})"))
}

/// Asks the gRPC server listening on `listen_addr` whether it is SERVING (the standard health
/// service, server-wide status), within `timeout`: what a container health check runs, so images
/// need no grpcurl. A wildcard listen address (`0.0.0.0`, `::`) is reached on loopback.
pub async fn health_check(listen_addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut addr = listen_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("nothing answers on {addr}"))?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .with_context(|| format!("health check of {addr} failed"))?
            .into_inner()
            .status();
        anyhow::ensure!(
            status == ServingStatus::Serving,
            "{addr} answers {}",
            status.as_str_name()
        );
        Ok(())
    };
    tokio::time::timeout(timeout, check)
        .await
        .with_context(|| format!("no health answer from {addr} within {timeout:?}"))?
}

/// The address `listener` serves on, if other hosts can reach it (not loopback only): where
/// plaintext or an open API deserves a warning.
pub fn off_loopback(listener: &TcpListener) -> Option<std::net::SocketAddr> {
    listener
        .local_addr()
        .ok()
        .filter(|addr| !addr.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::ServingStatus;

    #[tokio::test]
    async fn only_addresses_other_hosts_reach_are_off_loopback() {
        let loopback = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        assert_eq!(off_loopback(&loopback), None);
        let everywhere = TcpListener::bind("0.0.0.0:0").await.expect("bind");
        assert!(off_loopback(&everywhere).is_some());
    }

    #[tokio::test]
    async fn health_check_passes_only_for_a_serving_server() {
        let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (health, router) =
            crate::grpc::router(8, &Metrics::local("test").expect("metrics"), None)
                .expect("router");
        health.set_service_status("", ServingStatus::Serving).await;
        let reporter = health.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::grpc::serve(
            router,
            health,
            listener,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));
        // Listening on the wildcard address, checked on loopback.
        let wildcard: SocketAddr = format!("0.0.0.0:{port}").parse().expect("addr");
        let timeout = Duration::from_secs(5);
        health_check(wildcard, timeout).await.expect("serving");

        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let refused = health_check(wildcard, timeout)
            .await
            .expect_err("not serving");
        assert!(refused.to_string().contains("NOT_SERVING"), "{refused}");

        let _ = stop.send(());
        server.await.expect("joined").expect("served");
        let gone = health_check(wildcard, timeout)
            .await
            .expect_err("nothing listens");
        assert!(format!("{gone:#}").contains("nothing answers"), "{gone:#}");
    }
}
