//! Picking the endpoint of each attempt: round-robin among the healthy endpoints whose breaker lets
//! a call through, those the call has not tried yet first; failing fast when no endpoint would take
//! it. [`Balancer`] is the tower service the retry layer calls, and what makes the set of endpoints
//! (starting discovery and the gauges) in the first place.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering},
    task::{Context, Poll},
};

use opentelemetry::metrics::Meter;
use ordermesh::{
    proto::payment::v1::Payment, proto::payment::v1::payment_service_client::PaymentServiceClient,
};
use tokio::{sync::watch, time::Instant};
use tonic::Status;
use tower::{BoxError, Service, ServiceExt};

use super::{
    super::{
        ChargeCall, ClientConfigError,
        attempt::PaymentChannel,
        breaker::{BreakerState, Open},
    },
    Shared, discovery,
    endpoints::{Endpoint, EndpointSettings},
    gauges, target,
};

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
                    .endpoints
                    .snapshot()
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
        meter: &Meter,
    ) -> Result<Self, ClientConfigError> {
        let shared = Arc::new(Shared::new(target::parse_list(urls)?, settings, meter));
        // Addresses given as such are endpoints at once; host names once resolved (discovery).
        let literal: Vec<Arc<Endpoint>> = shared
            .targets
            .iter()
            .enumerate()
            .filter_map(|(index, target)| {
                let addr = target.literal()?;
                Some(Endpoint::new(index, target, addr, &shared.settings, meter).map(Arc::new))
            })
            .collect::<Result<_, _>>()?;
        shared.endpoints.replace(literal);
        gauges::register(meter, Arc::downgrade(&shared));
        tokio::spawn(discovery::maintain(Arc::downgrade(&shared)));
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
        let endpoints = self.shared.endpoints.snapshot();
        let admitting: Vec<&Arc<Endpoint>> =
            endpoints.iter().filter(|e| e.breaker.admits(now)).collect();
        let healthy: Vec<&Arc<Endpoint>> = admitting
            .iter()
            .copied()
            .filter(|e| e.is_healthy())
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
        let mut endpoints = self.shared.endpoints.snapshot();
        endpoints.sort_by_key(|e| !e.is_healthy());
        endpoints.iter().map(|e| e.client.clone()).collect()
    }

    /// The error of a call no endpoint would take: every breaker open (fail fast, retry after the
    /// soonest reopening), or no endpoint known at all.
    fn none_usable(&self) -> BoxError {
        if self.shared.endpoints.snapshot().is_empty() {
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
        let breaker = &self.shared.settings.breaker;
        let retry_after = match self.shared.endpoints.combined_state(breaker.open_for) {
            BreakerState::Open { until } => until.saturating_duration_since(Instant::now()),
            _ => breaker.slow_call,
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

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, time::Duration};

    use super::{
        super::{
            target::Target,
            testing::{closed_port, endpoint, meter, open_breaker, payment_replica, settings},
        },
        *,
    };

    /// A balancer over `endpoints`, with no discovery loop: what it picks is all there is.
    fn over(endpoints: &[Arc<Endpoint>]) -> Balancer {
        let target = Target::parse("http://payment:50052").unwrap();
        let shared = Shared::new(vec![target], settings(), &meter());
        shared.endpoints.replace(endpoints.to_vec());
        Balancer {
            shared: Arc::new(shared),
        }
    }

    /// Addresses nothing listens on; endpoints there connect lazily, so they cost nothing.
    async fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        let mut endpoints = Vec::new();
        for _ in 0..n {
            endpoints.push(endpoint(closed_port().await, &settings()));
        }
        endpoints
    }

    fn addrs(endpoints: &[Arc<Endpoint>]) -> Vec<SocketAddr> {
        endpoints.iter().map(|e| e.addr).collect()
    }

    /// The endpoint each of `n` attempts would go first, none tried before.
    fn firsts(balancer: &Balancer, n: usize) -> Vec<SocketAddr> {
        (0..n).map(|_| balancer.candidates(&[])[0].addr).collect()
    }

    #[tokio::test]
    async fn attempts_go_round_robin_over_the_healthy_endpoints() {
        let all = endpoints(3).await;
        let balancer = over(&all);
        let [a, b, c] = addrs(&all)[..] else {
            unreachable!()
        };
        assert_eq!(firsts(&balancer, 4), [a, b, c, a]);

        all[1].healthy.store(false, Ordering::Relaxed);
        let picks = firsts(&balancer, 4);
        assert!(
            !picks.contains(&b),
            "the unhealthy one is left out: {picks:?}"
        );
        assert_ne!(picks[0], picks[1], "the others take turns: {picks:?}");
        assert_eq!(picks[..2], picks[2..], "{picks:?}");
        let candidates = addrs(&balancer.candidates(&[]));
        assert_eq!(candidates.len(), 2, "and it is no candidate at all");
        assert!(candidates.contains(&a) && candidates.contains(&c));
    }

    #[tokio::test]
    async fn with_no_healthy_endpoint_health_is_ignored() {
        let all = endpoints(2).await;
        for endpoint in &all {
            endpoint.healthy.store(false, Ordering::Relaxed);
        }
        let balancer = over(&all);
        let seen: HashSet<SocketAddr> = firsts(&balancer, 2).into_iter().collect();
        assert_eq!(seen, addrs(&all).into_iter().collect(), "calls tell");
    }

    #[tokio::test]
    async fn untried_endpoints_come_first() {
        let all = endpoints(3).await;
        let balancer = over(&all);
        let [a, b, c] = addrs(&all)[..] else {
            unreachable!()
        };
        for _ in 0..3 {
            let order = addrs(&balancer.candidates(&[a, b]));
            assert_eq!(
                order[0], c,
                "the one not tried yet, wherever the rotation is"
            );
            assert_eq!(order.len(), 3, "the tried ones still follow: {order:?}");
        }
    }

    #[tokio::test]
    async fn an_endpoint_whose_breaker_is_open_gets_no_attempt_and_all_open_fails_fast() {
        let all = endpoints(2).await;
        let balancer = over(&all);
        open_breaker(&all[0]).await;
        assert_eq!(firsts(&balancer, 3), [all[1].addr; 3]);

        open_breaker(&all[1]).await;
        assert!(balancer.candidates(&[]).is_empty());
        let error = balancer
            .clone()
            .oneshot(ChargeCall::for_test(None))
            .await
            .unwrap_err();
        let open = error.downcast_ref::<Open>().expect("fails fast");
        let open_for = settings().breaker.open_for;
        assert!(
            open.retry_after <= open_for && open.retry_after > open_for - Duration::from_secs(5),
            "until the soonest reopening: {open:?}"
        );
    }

    #[tokio::test]
    async fn with_no_endpoint_the_error_names_the_hosts_not_resolved_yet() {
        let error = over(&[])
            .oneshot(ChargeCall::for_test(None))
            .await
            .unwrap_err();
        let status = error.downcast_ref::<Status>().expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("payment resolved to no address"),
            "{status:?}"
        );
    }

    #[tokio::test]
    async fn a_charge_reaches_a_replica_and_its_retry_the_other() {
        let (first, _stop_first) = payment_replica().await;
        let (second, _stop_second) = payment_replica().await;
        let balancer = Balancer::new(
            &format!("http://{first}, http://{second}"),
            settings(),
            &meter(),
        )
        .unwrap();

        // Two attempts of one call: its retries share the list of endpoints tried.
        let call = ChargeCall::for_test(None);
        let mut charge = call.charge.clone();
        charge.idempotency_key = "balancer-test".into();
        charge.order_id = "ord-balancer-test".into();
        charge.payment_method_token = "tok_visa".into();
        charge.amount = Some(ordermesh::proto::types::v1::Money {
            currency_code: "USD".into(),
            minor_units: 1999,
        });
        let call = ChargeCall { charge, ..call };
        let paid = balancer.clone().oneshot(call.clone()).await.unwrap();
        assert!(!paid.payment_id.is_empty());
        balancer.clone().oneshot(call.clone()).await.unwrap();

        let tried: HashSet<SocketAddr> = call.tried.lock().unwrap().iter().copied().collect();
        assert_eq!(tried, HashSet::from([first, second]));
    }
}
