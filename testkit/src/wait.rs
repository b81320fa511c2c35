//! Waiting for what happens asynchronously: one bound ([`EVENTUALLY`]), one polling loop, and the
//! readiness probe for a gRPC server. A test waits for a condition instead of sleeping, so it is as
//! fast as the system and fails with what it was waiting for.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, bail};

/// Upper bound for anything that happens asynchronously. It only bounds a failing test.
pub const EVENTUALLY: Duration = Duration::from_secs(60);

/// Polls the async `check` until it answers true, or fails naming `what` after [`EVENTUALLY`].
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let last = check().await;
        if matches!(last, Ok(true)) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("not so after {EVENTUALLY:?}: {what} (last check: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for a check that needs no waiting of its own (it reads state the test shares
/// with a server, a counter or a mailbox).
pub async fn eventually_sync(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    eventually(what, || std::future::ready(Ok(check()))).await
}

/// Whether the gRPC server at `addr` answers its health check with SERVING.
pub async fn is_serving(addr: SocketAddr) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|a| a.into_inner().status() == ServingStatus::Serving)
}
