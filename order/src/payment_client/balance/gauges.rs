//! Each endpoint as operators see it, read when metrics are scraped: its breaker's state and its
//! last health check, labelled with its address. Observed rather than recorded, so the figures are
//! those of the endpoints there are now, and replicas gone disappear from them.

use std::sync::Weak;

use opentelemetry::{KeyValue, metrics::Meter};

use super::{super::breaker::BreakerState, Shared, endpoints::Endpoint};

/// Reports each endpoint's breaker as `ordermesh.payment.breaker.state` when metrics are read (0
/// closed, 1 half-open, 2 open) and its last health check as `ordermesh.payment.endpoint.healthy`
/// (1 or 0), labelled with the endpoint's address. Held weakly: a dropped balancer reports nothing.
pub(super) fn register(meter: &Meter, shared: Weak<Shared>) {
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
            for endpoint in shared.endpoints.snapshot() {
                let value = u64::from(endpoint.is_healthy());
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
            for endpoint in shared.endpoints.snapshot() {
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

fn labels(endpoint: &Endpoint) -> [KeyValue; 2] {
    [
        KeyValue::new("peer.service", "payment"),
        KeyValue::new("server.address", endpoint.addr.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use ordermesh_platform::metrics::Metrics;

    use super::{
        super::{
            target,
            testing::{closed_port, endpoint, open_breaker, settings},
        },
        *,
    };

    /// The value of the series of `name` for `addr` in a Prometheus scrape.
    fn value(scrape: &str, name: &str, addr: std::net::SocketAddr) -> Option<String> {
        let label = format!("server_address=\"{addr}\"");
        scrape
            .lines()
            .find(|line| line.starts_with(name) && line.contains(&label))
            .and_then(|line| line.rsplit(' ').next())
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn each_endpoint_shows_its_health_and_breaker_until_the_balancer_is_gone() {
        let metrics = Metrics::local("order").unwrap();
        let shared = Arc::new(Shared::new(
            target::parse_list("http://payment:50052").unwrap(),
            settings(),
            metrics.meter(),
        ));
        let (up, down) = (
            endpoint(closed_port().await, &settings()),
            endpoint(closed_port().await, &settings()),
        );
        shared.endpoints.replace(vec![up.clone(), down.clone()]);
        register(metrics.meter(), Arc::downgrade(&shared));

        down.healthy.store(false, Ordering::Relaxed);
        open_breaker(&down).await;
        let scrape = metrics.render();
        let healthy = "ordermesh_payment_endpoint_healthy";
        let state = "ordermesh_payment_breaker_state";
        assert_eq!(
            value(&scrape, healthy, up.addr).as_deref(),
            Some("1"),
            "{scrape}"
        );
        assert_eq!(value(&scrape, healthy, down.addr).as_deref(), Some("0"));
        assert_eq!(value(&scrape, state, up.addr).as_deref(), Some("0"));
        assert_eq!(value(&scrape, state, down.addr).as_deref(), Some("2"));

        drop(shared);
        let scrape = metrics.render();
        assert_eq!(value(&scrape, healthy, up.addr), None, "{scrape}");
        assert_eq!(value(&scrape, state, up.addr), None);
    }
}
