//! A circuit breaker in tower's shape: [`Breaker<S>`], [`BreakerLayer`], [`ResponseFuture`] and the
//! error it fails fast with, [`Open`].
//!
//! States, named the usual way:
//!
//! ```text
//!            failure or slow-call rate over the threshold
//!   CLOSED ------------------------------------------------> OPEN (fail fast, no calls)
//!     ^                                                       |
//!     | every probe succeeded                                 | open_for has passed
//!     |                                                       v
//!     +-------------------------------------------------- HALF-OPEN (a few probes)
//!                   a probe failed or was slow: back to OPEN
//! ```
//!
//! While closed, the outcomes of the last `window` calls are kept; once at least `min_calls` are in,
//! the breaker opens when the share of failures or of slow calls reaches its threshold. What counts
//! as a failure is the caller's to say (a declined card is an answer, not a failure). Time comes from
//! `tokio::time::Instant`, so the whole machine is testable with paused time.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tower::{BoxError, Layer, Service};

/// Breaker thresholds and timings.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// How many of the latest calls the rates are computed over.
    pub window: usize,
    /// No verdict on fewer calls than this.
    pub min_calls: usize,
    /// Open when at least this share of the window failed (0.0 to 1.0).
    pub failure_rate: f64,
    /// A call taking longer than this is slow, whatever its outcome.
    pub slow_call: Duration,
    /// Open when at least this share of the window was slow (0.0 to 1.0).
    pub slow_call_rate: f64,
    /// How long the breaker stays open before letting probes through.
    pub open_for: Duration,
    /// How many probes half-open lets through (at least 1); all must succeed to close.
    pub half_open_probes: u32,
}

/// The state, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Failing fast until the instant given.
    Open {
        until: Instant,
    },
    HalfOpen,
}

impl BreakerState {
    /// Whether a call at `now` would be let through: closed, half-open, or open with its time up
    /// (that call is then the first probe).
    pub fn admits(&self, now: Instant) -> bool {
        match self {
            BreakerState::Closed | BreakerState::HalfOpen => true,
            BreakerState::Open { until } => *until <= now,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// The error of a call refused because the circuit is open (or half-open with its probes taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    /// When calls will be let through again, from now.
    pub retry_after: Duration,
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit open, next attempt in {} ms",
            self.retry_after.as_millis()
        )
    }
}

impl std::error::Error for Open {}

/// Which kind of admission a call got, to be handed back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permit {
    Normal,
    Probe,
}

/// How one call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    failed: bool,
    slow: bool,
}

#[derive(Debug)]
enum Inner {
    Closed { window: VecDeque<Outcome> },
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

/// The state machine, without locking or side effects: every method takes the time and returns the
/// transition it made, if any.
#[derive(Debug)]
struct Machine {
    config: BreakerConfig,
    inner: Inner,
}

impl Machine {
    fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Inner::Closed {
                window: VecDeque::new(),
            },
        }
    }

    fn state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } => BreakerState::Open { until },
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn try_acquire(&mut self, now: Instant) -> (Result<Permit, Open>, Option<BreakerState>) {
        match &mut self.inner {
            Inner::Closed { .. } => (Ok(Permit::Normal), None),
            Inner::Open { until } if now < *until => (
                Err(Open {
                    retry_after: *until - now,
                }),
                None,
            ),
            // open_for has passed: this call is the first probe.
            Inner::Open { .. } => {
                self.inner = Inner::HalfOpen {
                    in_flight: 1,
                    succeeded: 0,
                };
                (Ok(Permit::Probe), Some(BreakerState::HalfOpen))
            }
            Inner::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if *in_flight + *succeeded < self.config.half_open_probes {
                    *in_flight += 1;
                    (Ok(Permit::Probe), None)
                } else {
                    // The probes are out and their outcome decides. Suggest coming back once a
                    // probe would count as slow.
                    (
                        Err(Open {
                            retry_after: self.config.slow_call,
                        }),
                        None,
                    )
                }
            }
        }
    }

    fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) -> Option<BreakerState> {
        match (&mut self.inner, permit) {
            (Inner::Closed { window }, Permit::Normal) => {
                window.push_back(outcome);
                while window.len() > self.config.window {
                    window.pop_front();
                }
                if window.len() < self.config.min_calls {
                    return None;
                }
                let calls = window.len() as f64;
                let failures = window.iter().filter(|o| o.failed).count() as f64;
                let slow = window.iter().filter(|o| o.slow).count() as f64;
                if failures / calls >= self.config.failure_rate
                    || slow / calls >= self.config.slow_call_rate
                {
                    return Some(self.open(now));
                }
                None
            }
            (
                Inner::HalfOpen {
                    in_flight,
                    succeeded,
                },
                Permit::Probe,
            ) => {
                *in_flight = in_flight.saturating_sub(1);
                if outcome.failed || outcome.slow {
                    return Some(self.open(now));
                }
                *succeeded += 1;
                if *succeeded >= self.config.half_open_probes {
                    self.inner = Inner::Closed {
                        window: VecDeque::new(),
                    };
                    return Some(BreakerState::Closed);
                }
                None
            }
            // A call admitted in an earlier state finished after a transition: it says nothing about
            // the current state.
            _ => None,
        }
    }

    /// A probe ended without an outcome (its caller went away): free its slot.
    fn release(&mut self, permit: Permit) {
        if let (Inner::HalfOpen { in_flight, .. }, Permit::Probe) = (&mut self.inner, permit) {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    fn open(&mut self, now: Instant) -> BreakerState {
        let until = now + self.config.open_for;
        self.inner = Inner::Open { until };
        BreakerState::Open { until }
    }
}

/// Counters for operators.
#[derive(Debug, Default)]
pub struct BreakerStats {
    /// Calls refused without calling the service.
    pub rejected: AtomicU64,
    /// Transitions into each state.
    pub opened: AtomicU64,
    pub half_opened: AtomicU64,
    pub closed: AtomicU64,
}

/// A breaker shared by every clone of the service it guards.
#[derive(Clone)]
pub struct CircuitBreaker {
    name: Arc<str>,
    machine: Arc<Mutex<Machine>>,
    is_failure: fn(&BoxError) -> bool,
    state_tx: Arc<watch::Sender<BreakerState>>,
    stats: Arc<BreakerStats>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker called `name` (in logs) that counts errors matching `is_failure` as failures.
    pub fn new(
        name: impl Into<Arc<str>>,
        config: BreakerConfig,
        is_failure: fn(&BoxError) -> bool,
    ) -> Self {
        let (state_tx, _) = watch::channel(BreakerState::Closed);
        Self {
            name: name.into(),
            machine: Arc::new(Mutex::new(Machine::new(config))),
            is_failure,
            state_tx: Arc::new(state_tx),
            stats: Arc::default(),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state()
    }

    /// Whether a call now would be let through (closed, half-open, or open with its time up),
    /// without taking a permit: for choosing among endpoints.
    pub fn admits(&self, now: Instant) -> bool {
        self.state().admits(now)
    }

    /// Every change of state, as it happens.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.state_tx.subscribe()
    }

    pub fn stats(&self) -> &BreakerStats {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        // The machine is left consistent by every method, so a panic elsewhere cannot corrupt it.
        self.machine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn acquire(&self) -> Result<Permit, Open> {
        let (permit, transition) = self.lock().try_acquire(Instant::now());
        self.announce(transition);
        if permit.is_err() {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    fn record(&self, permit: Permit, result: Result<(), &BoxError>, elapsed: Duration) {
        let (slow_after, now) = (self.lock().config.slow_call, Instant::now());
        let outcome = Outcome {
            failed: result.is_err_and(|e| (self.is_failure)(e)),
            slow: elapsed >= slow_after,
        };
        let transition = self.lock().record(permit, outcome, now);
        self.announce(transition);
    }

    fn announce(&self, transition: Option<BreakerState>) {
        let Some(state) = transition else { return };
        let counter = match state {
            BreakerState::Open { until } => {
                let for_ms = until.saturating_duration_since(Instant::now()).as_millis();
                tracing::warn!(breaker = %self.name, for_ms, "circuit opened: failing fast");
                &self.stats.opened
            }
            BreakerState::HalfOpen => {
                tracing::info!(
                    breaker = %self.name,
                    "circuit half-open: letting probes through"
                );
                &self.stats.half_opened
            }
            BreakerState::Closed => {
                tracing::info!(breaker = %self.name, "circuit closed: calls flow again");
                &self.stats.closed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.state_tx.send_replace(state);
    }
}

/// Applies a [`CircuitBreaker`] to a service.
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    breaker: CircuitBreaker,
}

impl BreakerLayer {
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// A service that fails fast with [`Open`] while its breaker is open.
#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    breaker: CircuitBreaker,
}

impl<S, Req> Service<Req> for Breaker<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.acquire() {
            Ok(permit) => ResponseFuture {
                state: State::Called {
                    inner: Box::pin(self.inner.call(request)),
                    permit: Some(permit),
                    started: Instant::now(),
                },
                breaker: self.breaker.clone(),
            },
            Err(open) => ResponseFuture {
                state: State::Refused(Some(open)),
                breaker: self.breaker.clone(),
            },
        }
    }
}

enum State<F> {
    Called {
        inner: Pin<Box<F>>,
        permit: Option<Permit>,
        started: Instant,
    },
    Refused(Option<Open>),
}

/// The response of a [`Breaker`]: the inner response, with its outcome recorded on completion.
pub struct ResponseFuture<F> {
    state: State<F>,
    breaker: CircuitBreaker,
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is Unpin (the inner future is boxed), so the state can be used directly.
        let this = self.get_mut();
        match &mut this.state {
            State::Refused(open) => Poll::Ready(Err(open
                .take()
                .map(BoxError::from)
                .unwrap_or_else(|| "polled after completion".into()))),
            State::Called {
                inner,
                permit,
                started,
            } => {
                let result = ready!(inner.as_mut().poll(cx)).map_err(Into::into);
                if let Some(permit) = permit.take() {
                    this.breaker
                        .record(permit, result.as_ref().map(|_| ()), started.elapsed());
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<F> Drop for ResponseFuture<F> {
    fn drop(&mut self) {
        // Dropped before completion: neither success nor failure, but a probe slot to give back.
        if let State::Called {
            permit: Some(permit),
            ..
        } = &self.state
        {
            self.breaker.lock().release(*permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            slow_call: Duration::from_millis(500),
            slow_call_rate: 0.8,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    const OK: Outcome = Outcome {
        failed: false,
        slow: false,
    };
    const FAIL: Outcome = Outcome {
        failed: true,
        slow: false,
    };
    const SLOW: Outcome = Outcome {
        failed: false,
        slow: true,
    };

    fn call(machine: &mut Machine, outcome: Outcome, now: Instant) -> Option<BreakerState> {
        let (permit, _) = machine.try_acquire(now);
        machine.record(permit.expect("admitted"), outcome, now)
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_below_min_calls_then_opens_on_the_failure_rate() {
        let mut m = Machine::new(config());
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(
                call(&mut m, FAIL, now),
                None,
                "3 failures are fewer than min_calls"
            );
        }
        assert_eq!(
            call(&mut m, FAIL, now),
            Some(BreakerState::Open {
                until: now + Duration::from_secs(5)
            })
        );
        let (refused, _) = m.try_acquire(now + Duration::from_secs(1));
        assert_eq!(
            refused,
            Err(Open {
                retry_after: Duration::from_secs(4)
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_is_over_a_sliding_window() {
        let mut m = Machine::new(config());
        let now = Instant::now();
        // 10 successes, then failures: the window holds the last 10, so it opens at 5 failures of 10.
        for _ in 0..10 {
            call(&mut m, OK, now);
        }
        for i in 1..=5 {
            let transition = call(&mut m, FAIL, now);
            assert_eq!(transition.is_some(), i == 5, "failure {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_the_slow_call_rate() {
        let mut m = Machine::new(config());
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(call(&mut m, SLOW, now), None);
        }
        assert!(
            matches!(call(&mut m, SLOW, now), Some(BreakerState::Open { .. })),
            "4 of 4 slow >= 80%"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probes_close_it_or_open_it_again() {
        let mut m = Machine::new(config());
        let start = Instant::now();
        for _ in 0..4 {
            call(&mut m, FAIL, start);
        }
        let later = start + Duration::from_secs(5);

        // After open_for: half-open, two probes, a third caller is refused.
        let (first, transition) = m.try_acquire(later);
        assert_eq!(transition, Some(BreakerState::HalfOpen));
        let (second, _) = m.try_acquire(later);
        assert!(m.try_acquire(later).0.is_err(), "only two probes");
        assert_eq!(m.record(first.unwrap(), OK, later), None);
        assert_eq!(
            m.record(second.unwrap(), OK, later),
            Some(BreakerState::Closed)
        );
        assert_eq!(m.state(), BreakerState::Closed);

        // Open again, and this time a probe fails.
        for _ in 0..4 {
            call(&mut m, FAIL, later);
        }
        let again = later + Duration::from_secs(5);
        let (probe, _) = m.try_acquire(again);
        assert_eq!(
            m.record(probe.unwrap(), FAIL, again),
            Some(BreakerState::Open {
                until: again + Duration::from_secs(5)
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_gives_its_slot_back() {
        let mut m = Machine::new(BreakerConfig {
            half_open_probes: 1,
            ..config()
        });
        let now = Instant::now();
        for _ in 0..4 {
            call(&mut m, FAIL, now);
        }
        let later = now + Duration::from_secs(5);
        let (probe, _) = m.try_acquire(later);
        assert!(m.try_acquire(later).0.is_err());
        m.release(probe.unwrap());
        assert!(m.try_acquire(later).0.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_fails_fast_without_calling_while_open_and_reports_transitions() {
        use std::sync::atomic::AtomicUsize;
        use tower::ServiceExt;

        let calls = Arc::new(AtomicUsize::new(0));
        let breaker = CircuitBreaker::new("test", config(), |_| true);
        let mut states = breaker.subscribe();
        let service = {
            let calls = calls.clone();
            BreakerLayer::new(breaker.clone()).layer(tower::service_fn(move |fail: bool| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if fail {
                        Err::<(), BoxError>("down".into())
                    } else {
                        Ok(())
                    }
                }
            }))
        };
        for _ in 0..4 {
            assert!(service.clone().oneshot(true).await.is_err());
        }
        assert!(matches!(
            *states.borrow_and_update(),
            BreakerState::Open { .. }
        ));

        let refused = service.clone().oneshot(false).await.unwrap_err();
        assert!(refused.downcast_ref::<Open>().is_some(), "{refused}");
        assert_eq!(calls.load(Ordering::SeqCst), 4, "no call while open");
        assert_eq!(breaker.stats().rejected.load(Ordering::Relaxed), 1);

        tokio::time::advance(Duration::from_secs(5)).await;
        service.clone().oneshot(false).await.unwrap();
        service.clone().oneshot(false).await.unwrap();
        assert_eq!(*states.borrow_and_update(), BreakerState::Closed);
        assert_eq!(breaker.stats().opened.load(Ordering::Relaxed), 1);
        assert_eq!(breaker.stats().closed.load(Ordering::Relaxed), 1);
    }
}
