//! The background loop that keeps the endpoint set current: it re-resolves the host names of
//! `ORDER_PAYMENT_URL` (replicas come and go behind a name), health-checks every endpoint, and
//! publishes the breakers' combined state for the order service's own health entry. It holds the
//! shared state weakly and ends when the balancer is dropped.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Weak},
    time::Duration,
};

use super::{Shared, endpoints::Endpoint};

/// How often the breakers' combined state is looked at (for the order service's own health entry).
const STATE_INTERVAL: Duration = Duration::from_millis(100);

/// Re-resolves the targets, health-checks the endpoints and publishes the combined breaker state,
/// until the balancer is dropped.
pub(super) async fn maintain(shared: Weak<Shared>) {
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
            // Addresses never change: only host names are looked up again.
            _ = resolve.tick(), if has_names => {
                let Some(shared) = shared.upgrade() else { return };
                refresh(&shared).await;
            }
            _ = check.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                let timeout = check_every.min(shared.settings.attempt_timeout);
                // Checked together, off this loop, so a hanging replica delays nothing else.
                tokio::spawn(async move {
                    let endpoints = shared.endpoints.snapshot();
                    futures::future::join_all(endpoints.iter().map(|e| e.check(timeout))).await;
                });
            }
            // Published only when the state's kind changes, not each time an open one's end moves.
            _ = state.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                let now = shared.endpoints.combined_state(shared.settings.breaker.open_for);
                shared.state.send_if_modified(|seen| {
                    let changed = std::mem::discriminant(seen) != std::mem::discriminant(&now);
                    *seen = now;
                    changed
                });
            }
        }
    }
}

/// Resolves every target and makes the endpoint set match: new addresses added, gone ones
/// dropped, the others kept (with their breaker and health). A target that does not resolve now
/// keeps the endpoints it had.
async fn refresh(shared: &Shared) {
    let mut found: Vec<(usize, SocketAddr)> = Vec::new();
    let mut failed: HashSet<usize> = HashSet::new();
    for (index, target) in shared.targets.iter().enumerate() {
        match target.resolve().await {
            Ok(addrs) => found.extend(addrs.into_iter().map(|addr| (index, addr))),
            Err(error) => {
                tracing::warn!(host = %target.host, %error, "cannot resolve payment host; keeping its endpoints");
                failed.insert(index);
            }
        }
    }
    let current = shared.endpoints.snapshot();
    let (mut next, new) = reconcile(&current, found, &failed);
    for (target, addr) in new {
        match Endpoint::new(
            target,
            &shared.targets[target],
            addr,
            &shared.settings,
            &shared.meter,
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
    shared.endpoints.replace(next);
}

/// The decision of [`refresh`], without the lookups: of the `current` endpoints, those to keep (in
/// their order: the same `Arc`, so the same breaker and health), and the `(target, address)` pairs
/// `found` that need a new endpoint (in the order found). Kept: what was found again, and everything
/// of a target whose lookup `failed`.
fn reconcile(
    current: &[Arc<Endpoint>],
    found: Vec<(usize, SocketAddr)>,
    failed: &HashSet<usize>,
) -> (Vec<Arc<Endpoint>>, Vec<(usize, SocketAddr)>) {
    let kept: Vec<Arc<Endpoint>> = current
        .iter()
        .filter(|e| failed.contains(&e.target) || found.contains(&(e.target, e.addr)))
        .cloned()
        .collect();
    let mut new: Vec<(usize, SocketAddr)> = Vec::new();
    for (target, addr) in found {
        let known = kept.iter().any(|e| e.target == target && e.addr == addr)
            || new.contains(&(target, addr));
        if !known {
            new.push((target, addr));
        }
    }
    (kept, new)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tonic_health::ServingStatus;

    use super::{
        super::{
            super::breaker::BreakerState,
            endpoints::{EndpointSettings, PAYMENT_SERVICE},
            target::{self, Target},
            testing::{closed_port, endpoint_of, health_server, meter, settings},
        },
        *,
    };

    fn shared(urls: &str, settings: EndpointSettings) -> Arc<Shared> {
        Arc::new(Shared::new(
            target::parse_list(urls).unwrap(),
            settings,
            &meter(),
        ))
    }

    #[tokio::test]
    async fn found_again_is_kept_gone_is_dropped_new_is_made_and_a_failed_lookup_keeps_all() {
        let settings = settings();
        let targets = [
            Target::parse("http://payment:50052").unwrap(),
            Target::parse("http://audit:50052").unwrap(),
        ];
        let (a, b, c, d) = (
            closed_port().await,
            closed_port().await,
            closed_port().await,
            closed_port().await,
        );
        let current = vec![
            endpoint_of(0, &targets[0], a, &settings),
            endpoint_of(0, &targets[0], b, &settings),
            endpoint_of(1, &targets[1], c, &settings),
        ];

        // Target 0 now resolves to a and d (b is gone); target 1's lookup failed.
        let (kept, new) = reconcile(&current, vec![(0, a), (0, d), (0, d)], &HashSet::from([1]));

        assert_eq!(kept.len(), 2);
        assert!(
            Arc::ptr_eq(&kept[0], &current[0]),
            "a kept, breaker and health too"
        );
        assert!(
            Arc::ptr_eq(&kept[1], &current[2]),
            "c kept: its name did not resolve"
        );
        assert_eq!(new, [(0, d)], "d made once");

        // Both resolve, target 1 to nothing now: c goes.
        let (kept, new) = reconcile(&current, vec![(0, a), (0, b)], &HashSet::new());
        assert_eq!(kept.iter().map(|e| e.addr).collect::<Vec<_>>(), [a, b]);
        assert!(new.is_empty());
    }

    #[tokio::test]
    async fn a_host_name_becomes_the_endpoints_it_resolves_to_and_they_stay_the_same() {
        let shared = shared("http://localhost:50052", settings());
        refresh(&shared).await;
        let first = shared.endpoints.snapshot();
        assert!(!first.is_empty());
        assert!(
            first
                .iter()
                .all(|e| e.addr.ip().is_loopback() && e.addr.port() == 50052)
        );

        first[0].healthy.store(false, Ordering::Relaxed);
        refresh(&shared).await;
        let again = shared.endpoints.snapshot();
        assert_eq!(again.len(), first.len());
        assert!(
            Arc::ptr_eq(&again[0], &first[0]),
            "the same endpoint, not a new one"
        );
        assert!(!again[0].is_healthy(), "with what was known about it");
    }

    #[tokio::test(start_paused = true)]
    async fn the_combined_state_is_published_and_the_loop_ends_with_the_balancer() {
        // Long intervals: only the state is looked at again; no endpoint to check or resolve.
        let shared = shared(
            "http://192.0.2.1:1",
            EndpointSettings {
                resolve_interval: Duration::from_secs(3600),
                health_interval: Duration::from_secs(3600),
                ..settings()
            },
        );
        let mut state = shared.state.subscribe();
        let task = tokio::spawn(maintain(Arc::downgrade(&shared)));

        // No endpoint: payment is as good as open.
        state.changed().await.unwrap();
        assert!(matches!(
            *state.borrow_and_update(),
            BreakerState::Open { .. }
        ));

        // One appears (closed breaker): closed within one state interval. (Paused time moves on
        // only once the loop is idle, so the first health check, of no endpoint, is over.)
        tokio::time::sleep(STATE_INTERVAL).await;
        let addr = closed_port().await;
        let endpoint = endpoint_of(0, &shared.targets[0], addr, &shared.settings);
        shared.endpoints.replace(vec![endpoint]);
        state.changed().await.unwrap();
        assert_eq!(*state.borrow_and_update(), BreakerState::Closed);

        drop(shared);
        tokio::time::timeout(STATE_INTERVAL * 2, task)
            .await
            .expect("the loop ends at its next tick")
            .unwrap();
    }

    #[tokio::test]
    async fn a_replica_that_stops_serving_is_checked_out_of_rotation_and_back_in() {
        let (addr, reporter) = health_server().await;
        let shared = shared(
            &format!("http://{addr}"),
            EndpointSettings {
                health_interval: Duration::from_millis(200),
                ..settings()
            },
        );
        let endpoint = endpoint_of(0, &shared.targets[0], addr, &shared.settings);
        shared.endpoints.replace(vec![endpoint.clone()]);
        let _task = tokio::spawn(maintain(Arc::downgrade(&shared)));

        let until = |healthy: bool| {
            let endpoint = endpoint.clone();
            async move {
                while endpoint.is_healthy() != healthy {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        reporter
            .set_service_status(PAYMENT_SERVICE, ServingStatus::NotServing)
            .await;
        tokio::time::timeout(Duration::from_secs(5), until(false))
            .await
            .expect("out of rotation");
        reporter
            .set_service_status(PAYMENT_SERVICE, ServingStatus::Serving)
            .await;
        tokio::time::timeout(Duration::from_secs(5), until(true))
            .await
            .expect("back in rotation");
    }
}
