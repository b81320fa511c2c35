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

use std::{
    collections::HashSet,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use ordermesh::{
    proto::payment::v1::Payment, proto::payment::v1::payment_service_client::PaymentServiceClient,
};
use ordermesh_platform::rpc_telemetry::RpcTelemetryLayer;
use tokio::{sync::watch, time::Instant};
use tonic::{
    Status,
    transport::{Channel, ClientTlsConfig, Endpoint as TonicEndpoint, Uri},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::{BoxError, Layer, Service, ServiceExt};

use super::{
    ChargeCall, ClientConfigError,
    attempt::{ChargeService, PaymentChannel},
    breaker::{Breaker, BreakerConfig, BreakerLayer, BreakerState, CircuitBreaker, Open},
};

/// The health entry payment reports for its API.
const PAYMENT_SERVICE: &str = "ordermesh.payment.v1.PaymentService";
/// How often the breakers' combined state is looked at (for the order service's own health entry).
const STATE_INTERVAL: Duration = Duration::from_millis(100);

/// One of the URLs of `ORDER_PAYMENT_URL`.
#[derive(Debug, Clone)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Self, ClientConfigError> {
        let uri: Uri = url.parse()?;
        let bad = |why: &str| ClientConfigError::Target(format!("{url}: {why}"));
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| bad("no scheme (http:// or https://)"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Self {
            scheme: scheme.to_owned(),
            // `[::1]` is written with brackets in a URL, resolved without.
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        })
    }

    /// The address, when the URL gives one rather than a host name to resolve.
    fn literal(&self) -> Option<SocketAddr> {
        let ip = self.host.parse::<IpAddr>().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// The addresses the target stands for now.
    async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(addr) = self.literal() {
            return Ok(vec![addr]);
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }
}

/// How endpoints are made: everything but the address.
#[derive(Debug, Clone)]
pub(crate) struct EndpointSettings {
    pub(crate) tls: Option<ClientTlsConfig>,
    /// The name payment's certificate must carry, if set; otherwise the URL's host.
    pub(crate) tls_domain: Option<String>,
    pub(crate) attempt_timeout: Duration,
    pub(crate) breaker: BreakerConfig,
    pub(crate) is_failure: fn(&BoxError) -> bool,
    pub(crate) resolve_interval: Duration,
    pub(crate) health_interval: Duration,
}

/// One payment replica, as this client sees it.
struct Endpoint {
    addr: SocketAddr,
    /// The target it was resolved from (a host name may stand for several endpoints).
    target: usize,
    service: Breaker<ChargeService>,
    /// The same channel for the calls beside Charge (settling a key), which bypass the breaker:
    /// they are rare, idempotent, and are what settles the orders a failing Charge left behind.
    client: PaymentServiceClient<PaymentChannel>,
    breaker: CircuitBreaker,
    health: HealthClient<Channel>,
    /// The last health check's verdict (true until the first check says otherwise).
    healthy: AtomicBool,
}

impl Endpoint {
    fn new(
        target: usize,
        from: &Target,
        addr: SocketAddr,
        settings: &EndpointSettings,
        meter: &opentelemetry::metrics::Meter,
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
        let breaker = CircuitBreaker::new(
            format!("payment {addr}"),
            settings.breaker.clone(),
            settings.is_failure,
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

    /// Asks the replica whether it serves, within `timeout`, and records the answer.
    async fn check(&self, timeout: Duration) {
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

struct Shared {
    targets: Vec<Target>,
    settings: EndpointSettings,
    meter: opentelemetry::metrics::Meter,
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    next: AtomicUsize,
    state: watch::Sender<BreakerState>,
}

impl Shared {
    fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Resolves every target and makes the endpoint set match: new addresses added, gone ones
    /// dropped, the others kept (with their breaker and health). A target that does not resolve
    /// now keeps the endpoints it had.
    async fn resolve(&self) {
        let mut found: Vec<(usize, SocketAddr)> = Vec::new();
        let mut failed: HashSet<usize> = HashSet::new();
        for (index, target) in self.targets.iter().enumerate() {
            match target.resolve().await {
                Ok(addrs) => found.extend(addrs.into_iter().map(|addr| (index, addr))),
                Err(error) => {
                    tracing::warn!(host = %target.host, %error, "cannot resolve payment host; keeping its endpoints");
                    failed.insert(index);
                }
            }
        }
        let current = self.endpoints();
        let mut next: Vec<Arc<Endpoint>> = current
            .iter()
            .filter(|e| failed.contains(&e.target) || found.contains(&(e.target, e.addr)))
            .cloned()
            .collect();
        for (target, addr) in found {
            if next.iter().any(|e| e.target == target && e.addr == addr) {
                continue;
            }
            match Endpoint::new(
                target,
                &self.targets[target],
                addr,
                &self.settings,
                &self.meter,
            ) {
                Ok(endpoint) => next.push(Arc::new(endpoint)),
                Err(error) => tracing::error!(%addr, %error, "cannot make a payment endpoint"),
            }
        }
        let before: HashSet<SocketAddr> = current.iter().map(|e| e.addr).collect();
        let after: HashSet<SocketAddr> = next.iter().map(|e| e.addr).collect();
        if before != after {
            tracing::info!(endpoints = ?after, "payment endpoints");
        }
        *self
            .endpoints
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
    }

    /// The breakers taken together: closed if any endpoint's is, open if all are (or there is no
    /// endpoint), half-open otherwise.
    fn combined_state(&self) -> BreakerState {
        let now = Instant::now();
        let states: Vec<BreakerState> =
            self.endpoints().iter().map(|e| e.breaker.state()).collect();
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
                .unwrap_or(now + self.settings.breaker.open_for);
            BreakerState::Open { until }
        }
    }
}

/// Spreads Charge attempts over the payment endpoints. Clones share the endpoints.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field(
                "endpoints",
                &self
                    .shared
                    .endpoints()
                    .iter()
                    .map(|e| e.addr)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Balancer {
    /// A balancer over the comma-separated URLs in `urls`. Background tasks (resolving, health
    /// checks) run on the current Tokio runtime and end when the last clone is dropped.
    pub(crate) fn new(
        urls: &str,
        settings: EndpointSettings,
        meter: &opentelemetry::metrics::Meter,
    ) -> Result<Self, ClientConfigError> {
        let targets = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(Target::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(ClientConfigError::Target("no URL given".into()));
        }
        let (state, _) = watch::channel(BreakerState::Closed);
        let shared = Arc::new(Shared {
            targets,
            settings,
            meter: meter.clone(),
            endpoints: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            state,
        });
        // Addresses given as such are endpoints at once; host names once resolved (below).
        let literal: Vec<Arc<Endpoint>> = shared
            .targets
            .iter()
            .enumerate()
            .filter_map(|(index, target)| {
                let addr = target.literal()?;
                Some(Endpoint::new(index, target, addr, &shared.settings, meter).map(Arc::new))
            })
            .collect::<Result<_, _>>()?;
        *shared
            .endpoints
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = literal;
        breaker_gauge(meter, Arc::downgrade(&shared));
        tokio::spawn(maintain(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    /// The payment service's state as the breakers see it, updated as it changes.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.shared.state.subscribe()
    }

    /// The endpoints this attempt may go to, best first: healthy ones whose breaker lets a call
    /// through, those the call has not tried yet before those it has, starting at the round-robin
    /// position. If no endpoint is healthy, health is ignored (checks can be wrong; calls tell).
    fn candidates(&self, tried: &[SocketAddr]) -> Vec<Arc<Endpoint>> {
        let now = Instant::now();
        let endpoints = self.shared.endpoints();
        let admitting: Vec<&Arc<Endpoint>> =
            endpoints.iter().filter(|e| e.breaker.admits(now)).collect();
        let healthy: Vec<&Arc<Endpoint>> = admitting
            .iter()
            .copied()
            .filter(|e| e.healthy.load(Ordering::Relaxed))
            .collect();
        let usable = if healthy.is_empty() {
            admitting
        } else {
            healthy
        };
        if usable.is_empty() {
            return Vec::new();
        }
        let start = self.shared.next.fetch_add(1, Ordering::Relaxed) % usable.len();
        let rotated = usable[start..].iter().chain(&usable[..start]);
        let (fresh, again): (Vec<&Arc<Endpoint>>, Vec<&Arc<Endpoint>>) =
            rotated.partition(|e| !tried.contains(&e.addr));
        fresh.into_iter().chain(again).map(Arc::clone).collect()
    }

    /// A client on each endpoint, healthy ones first, for the calls beside Charge: they are
    /// idempotent, so a caller may try one endpoint after another.
    pub(crate) fn clients(&self) -> Vec<PaymentServiceClient<PaymentChannel>> {
        let mut endpoints = self.shared.endpoints();
        endpoints.sort_by_key(|e| !e.healthy.load(Ordering::Relaxed));
        endpoints.iter().map(|e| e.client.clone()).collect()
    }

    /// The error of a call no endpoint would take: every breaker open (fail fast, retry after the
    /// soonest reopening), or no endpoint known at all.
    fn none_usable(&self) -> BoxError {
        if self.shared.endpoints().is_empty() {
            return Status::unavailable(format!(
                "no payment endpoint: {} resolved to no address yet",
                self.shared
                    .targets
                    .iter()
                    .map(|t| t.host.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into();
        }
        let retry_after = match self.shared.combined_state() {
            BreakerState::Open { until } => until.saturating_duration_since(Instant::now()),
            _ => self.shared.settings.breaker.slow_call,
        };
        Open { retry_after }.into()
    }
}

impl Service<ChargeCall> for Balancer {
    type Response = Payment;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Payment, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each attempt is given to an endpoint's own service when it is made.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: ChargeCall) -> Self::Future {
        let balancer = self.clone();
        Box::pin(async move {
            let tried = call
                .tried
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            // An endpoint whose breaker refuses at the last moment (its half-open probes are out)
            // passes the attempt on to the next candidate; only when all refuse does it fail fast.
            for endpoint in balancer.candidates(&tried) {
                record_try(&call.tried, endpoint.addr);
                match endpoint.service.clone().oneshot(call.clone()).await {
                    Err(error) if error.is::<Open>() => continue,
                    result => return result,
                }
            }
            Err(balancer.none_usable())
        })
    }
}

fn record_try(tried: &Mutex<Vec<SocketAddr>>, addr: SocketAddr) {
    let mut tried = tried
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !tried.contains(&addr) {
        tried.push(addr);
    }
}

/// Re-resolves the targets, health-checks the endpoints and publishes the combined breaker state,
/// until the balancer is dropped.
async fn maintain(shared: Weak<Shared>) {
    let Some(first) = shared.upgrade() else {
        return;
    };
    let (resolve_every, check_every) = (
        first.settings.resolve_interval,
        first.settings.health_interval,
    );
    let has_names = first.targets.iter().any(|t| t.literal().is_none());
    drop(first);
    let mut resolve = tokio::time::interval(resolve_every);
    let mut check = tokio::time::interval(check_every);
    let mut state = tokio::time::interval(STATE_INTERVAL);
    for timer in [&mut resolve, &mut check, &mut state] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            _ = resolve.tick(), if has_names => {
                let Some(shared) = shared.upgrade() else { return };
                shared.resolve().await;
            }
            _ = check.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                let timeout = check_every.min(shared.settings.attempt_timeout);
                // Checked together, off this loop, so a hanging replica delays nothing else.
                tokio::spawn(async move {
                    let endpoints = shared.endpoints();
                    futures::future::join_all(endpoints.iter().map(|e| e.check(timeout))).await;
                });
            }
            _ = state.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                let now = shared.combined_state();
                shared.state.send_if_modified(|seen| {
                    let changed = std::mem::discriminant(seen) != std::mem::discriminant(&now);
                    *seen = now;
                    changed
                });
            }
        }
    }
}

/// Reports each endpoint's breaker as `ordermesh.payment.breaker.state` when metrics are read (0
/// closed, 1 half-open, 2 open) and its last health check as `ordermesh.payment.endpoint.healthy`
/// (1 or 0), labelled with the endpoint's address.
fn breaker_gauge(meter: &opentelemetry::metrics::Meter, shared: Weak<Shared>) {
    use opentelemetry::KeyValue;
    let labels = |endpoint: &Endpoint| {
        [
            KeyValue::new("peer.service", "payment"),
            KeyValue::new("server.address", endpoint.addr.to_string()),
        ]
    };
    let healthy = shared.clone();
    meter
        .u64_observable_gauge("ordermesh.payment.endpoint.healthy")
        .with_description(
            "Whether each payment endpoint passed its last health check (1) or not (0)",
        )
        .with_callback(move |gauge| {
            let Some(shared) = healthy.upgrade() else {
                return;
            };
            for endpoint in shared.endpoints() {
                let value = u64::from(endpoint.healthy.load(Ordering::Relaxed));
                gauge.observe(value, &labels(&endpoint));
            }
        })
        .build();
    meter
        .u64_observable_gauge("ordermesh.payment.breaker.state")
        .with_description(
            "The payment circuit breaker of each payment endpoint: 0 closed, 1 half-open, 2 open",
        )
        .with_callback(move |gauge| {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            for endpoint in shared.endpoints() {
                let value = match endpoint.breaker.state() {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open { .. } => 2,
                };
                gauge.observe(value, &labels(&endpoint));
            }
        })
        .build();
}
