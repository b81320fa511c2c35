//! What the tests of the balancing modules share: settings, endpoints, and real servers on port 0
//! (a gRPC health server as payment runs it, and payment itself on an in-memory database).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use opentelemetry::metrics::Meter;
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::ServiceExt;

use super::{
    super::{ChargeCall, breaker::BreakerConfig, breaker::BreakerState},
    endpoints::{Endpoint, EndpointSettings, PAYMENT_SERVICE},
    target::Target,
};

/// Plaintext; a breaker that opens on two failures of two and stays open for a minute; background
/// work far apart (tests that want it sooner say so).
pub(super) fn settings() -> EndpointSettings {
    EndpointSettings {
        tls: None,
        tls_domain: None,
        attempt_timeout: Duration::from_secs(1),
        breaker: BreakerConfig {
            window: 4,
            min_calls: 2,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(5),
            slow_call_rate: 1.0,
            open_for: Duration::from_secs(60),
            half_open_probes: 1,
        },
        resolve_interval: Duration::from_secs(3600),
        health_interval: Duration::from_secs(3600),
    }
}

pub(super) fn meter() -> Meter {
    opentelemetry::global::meter("test")
}

/// An endpoint of target number `target`.
pub(super) fn endpoint_of(
    target: usize,
    from: &Target,
    addr: SocketAddr,
    settings: &EndpointSettings,
) -> Arc<Endpoint> {
    Arc::new(Endpoint::new(target, from, addr, settings, &meter()).unwrap())
}

/// An endpoint at `addr`, from the URL `http://addr` (target 0).
pub(super) fn endpoint(addr: SocketAddr, settings: &EndpointSettings) -> Arc<Endpoint> {
    let from = Target::parse(&format!("http://{addr}")).unwrap();
    endpoint_of(0, &from, addr, settings)
}

/// An address nothing listens on (bound, then let go): connecting is refused at once.
pub(super) async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Opens `endpoint`'s breaker the way it opens in service: attempts that fail. The endpoint must
/// be on a [`closed_port`].
pub(super) async fn open_breaker(endpoint: &Endpoint) {
    for _ in 0..10 {
        if matches!(endpoint.breaker.state(), BreakerState::Open { .. }) {
            return;
        }
        let _ = endpoint
            .service
            .clone()
            .oneshot(ChargeCall::for_test(None))
            .await;
    }
    panic!("the breaker of {} did not open", endpoint.addr);
}

/// tonic's health service on port 0, payment SERVING, and the handle that changes what it says.
pub(super) async fn health_server() -> (SocketAddr, HealthReporter) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(PAYMENT_SERVICE, ServingStatus::Serving)
        .await;
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (addr, reporter)
}

/// A payment replica on port 0, on its own in-memory database; it stops when the sender is
/// dropped.
pub(super) async fn payment_replica() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ordermesh_payment::Config {
        database_url: "sqlite::memory:".into(),
        drain_grace: std::time::Duration::from_millis(0),
        ..ordermesh_payment::Config::from_env().unwrap()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ordermesh_payment::run(listener, config, async {
        let _ = stopped.await;
    }));
    // Serving once its database is migrated, as its health check says.
    let probe = endpoint(addr, &settings());
    for _ in 0..100 {
        probe.check(Duration::from_secs(1)).await;
        if probe.is_healthy() {
            return (addr, stop);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("payment on {addr} did not start serving");
}
