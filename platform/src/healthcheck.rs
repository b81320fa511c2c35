//! The `healthcheck` subcommand every service binary has: asks the service's own gRPC health
//! service whether it is SERVING, so container images need no grpcurl.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use tokio::net::TcpListener;
    use tonic_health::ServingStatus;

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
