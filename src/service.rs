//! What every service binary does the same way, so each `main.rs` only says what differs.

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

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

/// The `healthcheck` subcommand's options, the same for every service.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct HealthcheckArgs {
    /// For a service serving TLS: the CA its certificate chains to (PEM). The check then connects
    /// over TLS to `localhost`, and, if the service requires client certificates, presents the
    /// service's own certificate and key (`*_TLS_CERT`, `*_TLS_KEY`).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The name the service's certificate carries, if not `localhost`.
    #[arg(long)]
    pub domain: Option<String>,
}

impl HealthcheckArgs {
    /// Runs the check against the service on `listen_addr`; `own` is the service's certificate
    /// and key when its server requires client certificates.
    pub async fn run(
        &self,
        listen_addr: SocketAddr,
        own: Option<(PathBuf, PathBuf)>,
    ) -> anyhow::Result<()> {
        let (cert, key) = own.unzip();
        let tls = crate::tls::ClientTlsFiles {
            prefix: "HEALTHCHECK",
            ca: self.ca.clone(),
            cert: self.ca.as_ref().and(cert),
            key: self.ca.as_ref().and(key),
            domain: Some(
                self.domain
                    .clone()
                    .unwrap_or_else(|| "localhost".to_owned()),
            ),
        }
        .load()?;
        health_check(listen_addr, Duration::from_secs(3), tls).await
    }
}

/// Asks the gRPC server listening on `listen_addr` whether it is SERVING (the standard health
/// service, server-wide status), within `timeout`, over TLS if `tls` is given: what a container
/// health check runs, so images need no grpcurl. A wildcard listen address (`0.0.0.0`, `::`) is
/// reached on loopback.
pub async fn health_check(
    listen_addr: SocketAddr,
    timeout: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<()> {
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
        let (scheme, hint) = match tls {
            Some(_) => ("https", ""),
            None => ("http", " (if it serves TLS, pass --ca)"),
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("nothing answers on {addr} over {scheme}{hint}"))?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .with_context(|| format!("health check of {addr} failed{hint}"))?
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
        health_check(wildcard, timeout, None)
            .await
            .expect("serving");

        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let refused = health_check(wildcard, timeout, None)
            .await
            .expect_err("not serving");
        assert!(refused.to_string().contains("NOT_SERVING"), "{refused}");

        let _ = stop.send(());
        server.await.expect("joined").expect("served");
        let gone = health_check(wildcard, timeout, None)
            .await
            .expect_err("nothing listens");
        assert!(format!("{gone:#}").contains("nothing answers"), "{gone:#}");
    }
}
