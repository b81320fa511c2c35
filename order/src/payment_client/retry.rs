//! The retry policy of Charge, for `tower::retry::Retry` over the typed client service.
//!
//! Which failures are worth another attempt is the code table's to say ([`super::codes`], column
//! `retry`): payment unreachable, or an attempt that may have charged already, which is only safe
//! to repeat because every attempt carries the same idempotency key, so payment answers a repeat
//! with the first result. Answers and an open circuit are never retried.
//!
//! Each retry waits an exponentially growing, jittered backoff, must fit before the call's deadline,
//! stays under a maximum attempt count, and takes a token from a budget shared by all calls that
//! refills with the successful traffic: when payment is down, retries stop at a fraction of the load
//! instead of multiplying it.

use std::sync::Arc;

use opentelemetry::metrics::Counter;
use tokio::time::Sleep;
use tower::{
    BoxError,
    retry::{
        Policy,
        backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff},
        budget::{Budget, TpsBudget},
    },
};

use super::{ChargeCall, codes::is_retryable};

/// Per-call retry state plus the shared budget. tower clones the policy for each call, so the
/// backoff starts over for every call.
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: ExponentialBackoff,
    budget: Arc<TpsBudget>,
    /// `ordermesh.payment.retries`.
    retries: Counter<u64>,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    /// `max_attempts` counts the first; `backoff` makes the waits; `budget` is shared by all calls.
    pub fn new(
        max_attempts: u32,
        mut backoff: ExponentialBackoffMaker,
        budget: Arc<TpsBudget>,
        retries: Counter<u64>,
    ) -> Self {
        Self {
            max_attempts,
            backoff: backoff.make_backoff(),
            budget,
            retries,
        }
    }
}

impl<Res> Policy<ChargeCall, Res, BoxError> for RetryPolicy {
    type Future = Sleep;

    fn retry(
        &mut self,
        call: &mut ChargeCall,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Sleep> {
        if call.attempt == 1 {
            // Every call pays into the budget that retries draw from.
            self.budget.deposit();
        }
        let error = result.as_ref().err()?;
        if !is_retryable(error) || call.attempt >= self.max_attempts {
            return None;
        }
        let wait = self.backoff.next_backoff();
        if call
            .deadline
            .is_some_and(|deadline| wait.deadline() >= deadline)
        {
            tracing::debug!(
                attempt = call.attempt,
                "no time left before the deadline to retry"
            );
            return None;
        }
        if !self.budget.withdraw() {
            tracing::warn!(
                attempt = call.attempt,
                "retry budget exhausted, not retrying"
            );
            return None;
        }
        tracing::info!(attempt = call.attempt, %error, "retrying Charge");
        self.retries.add(1, &[]);
        call.attempt += 1;
        Some(wait)
    }

    fn clone_request(&mut self, call: &ChargeCall) -> Option<ChargeCall> {
        Some(call.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Mutex,
            atomic::{AtomicU32, Ordering},
        },
        time::Duration,
    };

    use tokio::time::Instant;
    use tonic::{Code, Status};
    use tower::{Layer, ServiceExt, retry::RetryLayer, util::rng::HasherRng};

    use super::{
        super::codes::{Meaning, Retry},
        *,
    };

    fn policy(max_attempts: u32, budget: Arc<TpsBudget>) -> RetryPolicy {
        let backoff = ExponentialBackoffMaker::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            1.0,
            HasherRng::default(),
        )
        .unwrap();
        let retries = opentelemetry::global::meter("test")
            .u64_counter("retries")
            .build();
        RetryPolicy::new(max_attempts, backoff, budget, retries)
    }

    fn generous_budget() -> Arc<TpsBudget> {
        Arc::new(TpsBudget::new(Duration::from_secs(10), 100, 1.0))
    }

    /// Attempt numbers and times of the calls a test service got.
    type Calls = Arc<Mutex<Vec<(u32, Instant)>>>;

    /// A service failing with `code` for the first `failures` calls, recording when each came.
    fn flaky(
        failures: u32,
        code: Code,
    ) -> (
        Calls,
        impl tower::Service<ChargeCall, Response = (), Error = BoxError, Future: Send> + Clone,
    ) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU32::new(0));
        let service = {
            let calls = calls.clone();
            tower::service_fn(move |call: ChargeCall| {
                calls.lock().unwrap().push((call.attempt, Instant::now()));
                let n = count.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < failures {
                        Err(BoxError::from(Status::new(code, "injected")))
                    } else {
                        Ok(())
                    }
                }
            })
        };
        (calls, service)
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_growing_jittered_backoff() {
        let (calls, inner) = flaky(2, Code::Unavailable);
        let service = RetryLayer::new(policy(3, generous_budget())).layer(inner);

        service.oneshot(ChargeCall::for_test(None)).await.unwrap();

        let calls = calls.lock().unwrap().clone();
        let attempts: Vec<u32> = calls.iter().map(|(a, _)| *a).collect();
        assert_eq!(
            attempts,
            [1, 2, 3],
            "attempts are numbered for payment to see"
        );
        let first_wait = calls[1].1 - calls[0].1;
        let second_wait = calls[2].1 - calls[1].1;
        // base 100 ms then 200 ms, each plus up to 100% jitter
        assert!(
            (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&first_wait),
            "{first_wait:?}"
        );
        assert!(
            (Duration::from_millis(200)..=Duration::from_millis(400)).contains(&second_wait),
            "{second_wait:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_never_retried() {
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::NotFound,
        ] {
            let (calls, inner) = flaky(1, code);
            let service = RetryLayer::new(policy(3, generous_budget())).layer(inner);
            let error = service
                .oneshot(ChargeCall::for_test(None))
                .await
                .unwrap_err();
            assert_eq!(error.downcast_ref::<Status>().map(Status::code), Some(code));
            assert_eq!(calls.lock().unwrap().len(), 1, "{code:?} not retried");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_policy_retries_what_the_code_table_says() {
        for code in (0..=16).map(Code::from_i32) {
            let (calls, inner) = flaky(1, code);
            let service = RetryLayer::new(policy(3, generous_budget())).layer(inner);
            let _ = service.oneshot(ChargeCall::for_test(None)).await;
            // The injected failures are statuses as a server sends them: no transport error.
            let expected = if Meaning::of(code).retry == Retry::Yes {
                2
            } else {
                1
            };
            assert_eq!(calls.lock().unwrap().len(), expected, "{code:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_stop_at_the_maximum() {
        let (calls, inner) = flaky(10, Code::Aborted);
        let service = RetryLayer::new(policy(3, generous_budget())).layer(inner);
        assert!(service.oneshot(ChargeCall::for_test(None)).await.is_err());
        assert_eq!(calls.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_whose_backoff_would_pass_the_deadline() {
        let (calls, inner) = flaky(10, Code::Unavailable);
        let service = RetryLayer::new(policy(5, generous_budget())).layer(inner);
        let mut call = ChargeCall::for_test(None);
        // Room for the first backoff (at most 200 ms) but not for the second (200 to 400 ms more).
        call.deadline = Some(Instant::now() + Duration::from_millis(250));
        assert!(service.oneshot(call).await.is_err());
        assert_eq!(calls.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_across_calls() {
        // Budget: no free retries per second, and retries may be at most 10% of calls.
        let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 0, 0.1));
        let (calls, inner) = flaky(u32::MAX, Code::Unavailable);
        let service = RetryLayer::new(policy(3, budget)).layer(inner);
        for _ in 0..20 {
            let _ = service.clone().oneshot(ChargeCall::for_test(None)).await;
        }
        let total = calls.lock().unwrap().len();
        // 20 calls, each allowed 2 retries without a budget (60 attempts); the budget allows ~2.
        assert!((20..=23).contains(&total), "{total} attempts for 20 calls");
    }
}
