//! Client-side load balancing over the payment replicas: the innermost service of the payment client
//! stack but one (see the module above). Each attempt goes to one endpoint, chosen round-robin among
//! the usable ones.
//!
//! - **Endpoints** come from `ORDER_PAYMENT_URL`: a comma-separated list of URLs. A host name is
//!   resolved again every `resolve_interval`, and each address it resolves to is an endpoint (with
//!   Docker Compose, `payment` resolves to every replica; replicas added or gone are picked up). TLS
//!   still checks the host name, not the address.
//! - **Health checks**: every `health_interval`, each endpoint is asked `grpc.health.v1.Health/Check`
//!   for the payment service; one that does not answer SERVING gets no calls until it does.
//! - **Outlier ejection is the circuit breaker, per endpoint**: each endpoint has its own breaker, so
//!   a replica that keeps failing is taken out (its breaker opens) while the others carry the load,
//!   and let back in through half-open probes. Per endpoint rather than per service because a
//!   service-wide breaker would fail every call when one replica of several dies; the service-wide
//!   fail-fast still happens when every endpoint's breaker is open, which is payment as a whole
//!   failing (see [`Balancer::subscribe`]).
//! - A retry goes to an endpoint the call has not tried yet, if there is one.
//!
//! Layout, in the order a call depends on them: `target` reads the URLs and resolves their host
//! names; `endpoints` is one replica (its channel, breaker and health check) and the set of them;
//! `discovery` is the background loop that keeps that set, its health and the combined breaker
//! state current; `balancer` picks an endpoint for each attempt; `gauges` shows each endpoint to
//! operators. The last three share one `Shared`: the balancer and its clones own it, the loop and
//! the gauges hold it weakly, so dropping the client stops them.

mod balancer;
mod discovery;
mod endpoints;
mod gauges;
mod target;
#[cfg(test)]
mod testing;

use std::sync::atomic::AtomicUsize;

use opentelemetry::metrics::Meter;
use tokio::sync::watch;

pub use self::balancer::Balancer;
pub(crate) use self::endpoints::EndpointSettings;
use self::{endpoints::EndpointSet, target::Target};
use super::breaker::BreakerState;

/// What the balancer, the discovery loop and the gauges share.
struct Shared {
    targets: Vec<Target>,
    settings: EndpointSettings,
    /// For the endpoints made as replicas appear (each measures its calls).
    meter: Meter,
    endpoints: EndpointSet,
    /// The round-robin position.
    next: AtomicUsize,
    /// The breakers taken together, as the discovery loop last saw them.
    state: watch::Sender<BreakerState>,
}

impl Shared {
    /// No endpoint yet: literal addresses are added by the balancer, host names once resolved.
    fn new(targets: Vec<Target>, settings: EndpointSettings, meter: &Meter) -> Self {
        let (state, _) = watch::channel(BreakerState::Closed);
        Self {
            targets,
            settings,
            meter: meter.clone(),
            endpoints: EndpointSet::default(),
            next: AtomicUsize::new(0),
            state,
        }
    }
}
