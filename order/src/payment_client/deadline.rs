//! Deadlines that propagate, in tower's shape: [`Deadline<S>`], [`DeadlineLayer`],
//! [`ResponseFuture`] and its error, [`Exhausted`].
//!
//! A call to payment gets the smaller of its own timeout and what remains of the caller's deadline
//! (the `grpc-timeout` CreateOrder arrived with), minus a margin that leaves the order service time to
//! record the outcome and answer. The deadline is written into the request, so every layer below
//! (retries, each attempt) works within it. A call whose budget is already spent fails at once,
//! without calling payment.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use super::ChargeCall;

/// The error of a call whose caller's deadline leaves no time to make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the caller's deadline leaves no time to call the payment service")
    }
}

impl std::error::Error for Exhausted {}

#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    timeout: Duration,
    margin: Duration,
}

impl DeadlineLayer {
    /// Calls get at most `timeout`, and end `margin` before the caller's deadline.
    pub fn new(timeout: Duration, margin: Duration) -> Self {
        Self { timeout, margin }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.timeout,
            margin: self.margin,
        }
    }
}

/// Sets each call's deadline, or fails it with [`Exhausted`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
    margin: Duration,
}

impl<S> Deadline<S> {
    /// The deadline of a call starting `now` for a caller whose own deadline is `caller`.
    fn deadline(&self, now: Instant, caller: Option<Instant>) -> Instant {
        let own = now + self.timeout;
        match caller {
            Some(caller) => own.min(caller.checked_sub(self.margin).unwrap_or(now)),
            None => own,
        }
    }
}

impl<S> Service<ChargeCall> for Deadline<S>
where
    S: Service<ChargeCall>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut call: ChargeCall) -> Self::Future {
        let now = Instant::now();
        let deadline = self.deadline(now, call.caller_deadline);
        if deadline <= now {
            return ResponseFuture { inner: None };
        }
        call.deadline = Some(deadline);
        ResponseFuture {
            inner: Some(Box::pin(self.inner.call(call))),
        }
    }
}

/// The inner response, or [`Exhausted`] at once.
pub struct ResponseFuture<F> {
    inner: Option<Pin<Box<F>>>,
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("exhausted", &self.inner.is_none())
            .finish()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll(cx).map_err(Into::into),
            None => Poll::Ready(Err(Exhausted.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tower::ServiceExt;

    use super::*;

    type Seen = Arc<Mutex<Vec<Option<Instant>>>>;

    /// A service recording the deadline of each call it gets.
    fn recording() -> (
        Seen,
        impl Service<ChargeCall, Response = (), Error = BoxError> + Clone,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let service = {
            let seen = seen.clone();
            tower::service_fn(move |call: ChargeCall| {
                seen.lock().unwrap().push(call.deadline);
                async { Ok::<_, BoxError>(()) }
            })
        };
        (seen, service)
    }

    #[tokio::test(start_paused = true)]
    async fn the_smaller_of_the_timeout_and_the_callers_deadline_minus_the_margin_wins() {
        let (seen, inner) = recording();
        let service =
            DeadlineLayer::new(Duration::from_secs(3), Duration::from_millis(50)).layer(inner);
        let now = Instant::now();

        service
            .clone()
            .oneshot(ChargeCall::for_test(None))
            .await
            .unwrap();
        service
            .clone()
            .oneshot(ChargeCall::for_test(Some(now + Duration::from_secs(1))))
            .await
            .unwrap();
        service
            .clone()
            .oneshot(ChargeCall::for_test(Some(now + Duration::from_secs(10))))
            .await
            .unwrap();

        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                Some(now + Duration::from_secs(3)),
                Some(now + Duration::from_millis(950)),
                Some(now + Duration::from_secs(3))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_fails_without_calling() {
        let (seen, inner) = recording();
        let service =
            DeadlineLayer::new(Duration::from_secs(3), Duration::from_millis(50)).layer(inner);
        let caller = Instant::now() + Duration::from_millis(30);

        let error = service
            .oneshot(ChargeCall::for_test(Some(caller)))
            .await
            .unwrap_err();

        assert!(error.downcast_ref::<Exhausted>().is_some());
        assert!(seen.lock().unwrap().is_empty(), "payment was not called");
    }
}
