//! One payment replica as this client sees it, and the set of them. An [`Endpoint`] is an address
//! with its own channel, its own breaker (outlier ejection) and the verdict of its last health
//! check; the [`EndpointSet`] is the current list, replaced whole by the discovery loop and read as
//! a snapshot by each attempt, so picking an endpoint never waits on DNS or on a health check.

use std::{
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::metrics::Meter;
use ordermesh::proto::payment::v1::payment_service_client::PaymentServiceClient;
use ordermesh_platform::rpc_telemetry::RpcTelemetryLayer;
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint as TonicEndpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::Layer;

use super::{
    super::{
        ClientConfigError,
        attempt::{ChargeService, PaymentChannel},
        breaker::{Breaker, BreakerConfig, BreakerLayer, BreakerState, CircuitBreaker},
        codes,
    },
    target::Target,
};

/// The health entry payment reports for its API.
pub(super) const PAYMENT_SERVICE: &str = "ordermesh.payment.v1.PaymentService";

/// How endpoints are made: everything but the address.
#[derive(Debug, Clone)]
pub(crate) struct EndpointSettings {
    pub(crate) tls: Option<ClientTlsConfig>,
    /// The name payment's certificate must carry, if set; otherwise the URL's host.
    pub(crate) tls_domain: Option<String>,
    pub(crate) attempt_timeout: Duration,
    pub(crate) breaker: BreakerConfig,
    pub(crate) resolve_interval: Duration,
    pub(crate) health_interval: Duration,
}

/// One payment replica, as this client sees it.
pub(super) struct Endpoint {
    pub(super) addr: SocketAddr,
    /// The target it was resolved from (a host name may stand for several endpoints).
    pub(super) target: usize,
    /// Charge through this endpoint's breaker.
    pub(super) service: Breaker<ChargeService>,
    /// The same channel for the calls beside Charge (settling a key), which bypass the breaker:
    /// they are rare, idempotent, and are what settles the orders a failing Charge left behind.
    pub(super) client: PaymentServiceClient<PaymentChannel>,
    pub(super) breaker: CircuitBreaker,
    health: HealthClient<Channel>,
    /// The last health check's verdict (true until the first check says otherwise).
    pub(super) healthy: AtomicBool,
}

impl Endpoint {
    /// An endpoint at `addr`, resolved from `from` (target number `target`). Connects lazily:
    /// making one never waits on the network.
    pub(super) fn new(
        target: usize,
        from: &Target,
        addr: SocketAddr,
        settings: &EndpointSettings,
        meter: &Meter,
    ) -> Result<Self, ClientConfigError> {
        let uri = format!("{}://{addr}", from.scheme);
        let mut endpoint = TonicEndpoint::from_shared(uri)?;
        if let Some(tls) = &settings.tls {
            // Connect to the address, but check the certificate against the name.
            let domain = settings.tls_domain.clone().unwrap_or(from.host.clone());
            endpoint = endpoint.tls_config(tls.clone().domain_name(domain))?;
        }
        let url = endpoint.uri().clone();
        let channel = endpoint
            .connect_timeout(settings.attempt_timeout.min(Duration::from_secs(1)))
            .tcp_nodelay(true)
            .connect_lazy();
        // Each attempt: a client span carrying the trace context, and its duration by status code.
        let traced = RpcTelemetryLayer::client(meter, &url).layer(channel.clone());
        // What counts against this replica is the code table's breaker column.
        let breaker = CircuitBreaker::new(
            format!("payment {addr}"),
            settings.breaker.clone(),
            codes::is_breaker_failure,
        );
        let client = PaymentServiceClient::new(traced);
        let service = BreakerLayer::new(breaker.clone())
            .layer(ChargeService::new(client.clone(), settings.attempt_timeout));
        Ok(Self {
            addr,
            target,
            service,
            client,
            breaker,
            health: HealthClient::new(channel),
            healthy: AtomicBool::new(true),
        })
    }

    pub(super) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Asks the replica whether it serves, within `timeout`, and records the answer. Anything but
    /// SERVING in time (no answer, an error, NOT_SERVING, an unknown service) takes it out.
    pub(super) async fn check(&self, timeout: Duration) {
        let mut health = self.health.clone();
        let request = HealthCheckRequest {
            service: PAYMENT_SERVICE.into(),
        };
        let serving = matches!(
            tokio::time::timeout(timeout, health.check(request)).await,
            Ok(Ok(answer)) if answer.get_ref().status() == ServingStatus::Serving
        );
        if self.healthy.swap(serving, Ordering::Relaxed) != serving {
            if serving {
                tracing::info!(endpoint = %self.addr, "payment endpoint healthy again: back in rotation");
            } else {
                tracing::warn!(endpoint = %self.addr, "payment endpoint failed its health check: out of rotation");
            }
        }
    }
}

/// The endpoints now. Readers take a snapshot (cheap: a list of `Arc`s) and work on it, so an
/// endpoint dropped meanwhile finishes the calls it has.
#[derive(Default)]
pub(super) struct EndpointSet {
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
}

impl EndpointSet {
    pub(super) fn snapshot(&self) -> Vec<Arc<Endpoint>> {
        // The list is replaced whole, never left half-written, so a panic elsewhere cannot
        // corrupt it.
        self.endpoints
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(super) fn replace(&self, endpoints: Vec<Arc<Endpoint>>) {
        *self
            .endpoints
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = endpoints;
    }

    /// The breakers taken together (see [`combine`]).
    pub(super) fn combined_state(&self, open_for: Duration) -> BreakerState {
        let states: Vec<BreakerState> = self.snapshot().iter().map(|e| e.breaker.state()).collect();
        combine(&states, Instant::now(), open_for)
    }
}

/// Payment as the breakers see it at `now`: closed if any endpoint's is, open if all are (or there
/// is no endpoint: then for `open_for`, as a breaker that just opened), half-open otherwise.
fn combine(states: &[BreakerState], now: Instant, open_for: Duration) -> BreakerState {
    if states.contains(&BreakerState::Closed) {
        BreakerState::Closed
    } else if states.iter().any(|s| s.admits(now)) {
        BreakerState::HalfOpen
    } else {
        let until = states
            .iter()
            .filter_map(|s| match s {
                BreakerState::Open { until } => Some(*until),
                _ => None,
            })
            .min()
            .unwrap_or(now + open_for);
        BreakerState::Open { until }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_health::ServingStatus;
    use tower::ServiceExt;

    use super::{
        super::{
            super::ChargeCall,
            testing::{closed_port, endpoint, health_server, open_breaker, settings},
        },
        *,
    };

    #[test]
    fn the_breakers_together_are_closed_if_any_is_open_if_all_are() {
        let now = Instant::now();
        let open_for = Duration::from_secs(5);
        let open = |secs| BreakerState::Open {
            until: now + Duration::from_secs(secs),
        };
        let up = BreakerState::Open { until: now };
        assert_eq!(
            combine(&[open(3), BreakerState::Closed], now, open_for),
            BreakerState::Closed,
            "one replica still takes calls"
        );
        assert_eq!(
            combine(&[open(3), BreakerState::HalfOpen], now, open_for),
            BreakerState::HalfOpen
        );
        assert_eq!(
            combine(&[open(3), up], now, open_for),
            BreakerState::HalfOpen,
            "open with its time up lets a probe through"
        );
        assert_eq!(
            combine(&[open(3), open(1)], now, open_for),
            open(1),
            "open until the soonest reopening"
        );
        assert_eq!(combine(&[], now, open_for), open(5), "no endpoint at all");
    }

    #[tokio::test]
    async fn serving_keeps_a_replica_in_and_anything_else_takes_it_out() {
        let (addr, mut reporter) = health_server().await;
        let endpoint = endpoint(addr, &settings());
        let timeout = Duration::from_secs(2);

        reporter
            .set_service_status(PAYMENT_SERVICE, ServingStatus::NotServing)
            .await;
        endpoint.check(timeout).await;
        assert!(!endpoint.is_healthy(), "NOT_SERVING");

        reporter
            .set_service_status(PAYMENT_SERVICE, ServingStatus::Serving)
            .await;
        endpoint.check(timeout).await;
        assert!(endpoint.is_healthy(), "SERVING again");

        reporter.clear_service_status(PAYMENT_SERVICE).await;
        endpoint.check(timeout).await;
        assert!(
            !endpoint.is_healthy(),
            "a server that does not know payment"
        );
    }

    #[tokio::test]
    async fn a_replica_that_does_not_answer_fails_its_check_in_time() {
        // Nobody listening: refused at once.
        let gone = endpoint(closed_port().await, &settings());
        gone.check(Duration::from_secs(2)).await;
        assert!(!gone.is_healthy());

        // Listening, never answering: the check's timeout ends it.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hanging = endpoint(silent.local_addr().unwrap(), &settings());
        let started = std::time::Instant::now();
        hanging.check(Duration::from_millis(200)).await;
        assert!(!hanging.is_healthy());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn the_breaker_counts_what_the_code_table_calls_a_failure() {
        // Nobody listening: each attempt fails UNAVAILABLE, a failure in the table.
        let endpoint = endpoint(closed_port().await, &settings());
        let error = endpoint
            .service
            .clone()
            .oneshot(ChargeCall::for_test(None))
            .await
            .unwrap_err();
        assert!(codes::is_breaker_failure(&error), "{error}");
        open_breaker(&endpoint).await;
        assert!(matches!(
            endpoint.breaker.state(),
            BreakerState::Open { .. }
        ));
    }
}
