//! What every service binary does the same way, so each `main.rs` only says what differs.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::telemetry::{self, LogFormat};

/// A service's settings from their defaults and the environment alone (no command line): how the
/// runner configures the services it hosts, so they read the same variables as their binaries.
pub fn config_from_env<T>(name: &'static str) -> Result<T, clap::Error>
where
    T: clap::Args + clap::FromArgMatches,
{
    let command = T::augment_args(clap::Command::new(name));
    T::from_arg_matches(&command.try_get_matches_from([name])?)
}

/// The body of a service's `main`: install logging, bind `listen_addr` (naming `setting` if that
/// fails), and hand the listener to `serve`, which runs until SIGINT/SIGTERM.
pub async fn main<F, E>(
    listen_addr: SocketAddr,
    setting: &str,
    log_format: LogFormat,
    serve: impl FnOnce(TcpListener) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    telemetry::init(log_format)?;
    let listener = TcpListener::bind(listen_addr)
        .await
        .with_context(|| format!("cannot listen on {listen_addr} ({setting})"))?;
    serve(listener).await?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::ServingStatus;

    #[tokio::test]
    async fn health_check_passes_only_for_a_serving_server() {
        let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (health, router) = crate::grpc::router(8).expect("router");
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
