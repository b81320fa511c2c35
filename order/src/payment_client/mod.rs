//! The order service's client of the payment service: a typed Charge service wrapped in tower
//! middleware, outermost first:
//!
//! 1. [`deadline`]: the call's deadline is the smaller of its timeout and the caller's, minus a
//!    margin; a spent budget fails at once;
//! 2. [`retry`]: transient failures are retried with jittered exponential backoff, within the
//!    deadline, a maximum attempt count and a shared budget;
//! 3. [`breaker`]: while payment keeps failing, calls fail fast without reaching it;
//! 4. [`attempt`]: one Charge over the generated tonic client, bounded by the per-attempt timeout.
//!
//! The breaker sits inside the retries so that every attempt counts towards its verdict, and an open
//! circuit stops the retries at once (its error is not retryable).

pub mod attempt;
pub mod breaker;
pub mod deadline;
pub mod retry;

use std::{sync::Arc, time::Duration};

use opentelemetry::{KeyValue, metrics::Meter};
use ordermesh::proto::payment::v1::{
    ChargeRequest, Payment, payment_service_client::PaymentServiceClient,
};
use ordermesh::{rpc_telemetry::RpcTelemetryLayer, tls::ClientTlsFiles};
use tokio::time::Instant;
use tonic::{
    Code, Status, codegen::http::uri::InvalidUri, metadata::MetadataMap, transport::Channel,
};
use tonic_types::StatusExt;
use tower::{
    BoxError, Layer, ServiceBuilder, ServiceExt,
    retry::{
        Retry, RetryLayer,
        backoff::{ExponentialBackoffMaker, InvalidBackoff},
        budget::TpsBudget,
    },
    util::rng::HasherRng,
};

use self::{
    attempt::ChargeService,
    breaker::{Breaker, BreakerConfig, BreakerLayer, BreakerState, CircuitBreaker, Open},
    deadline::{Deadline, DeadlineLayer, Exhausted},
    retry::RetryPolicy,
};

/// One logical Charge call, as it travels down the stack.
#[derive(Debug, Clone)]
pub struct ChargeCall {
    pub charge: ChargeRequest,
    /// The caller's own deadline (from the `grpc-timeout` it sent), if it set one.
    pub caller_deadline: Option<Instant>,
    /// When the call, retries included, must be over; set by the deadline layer.
    pub deadline: Option<Instant>,
    /// 1 for the first attempt; the retry policy counts up.
    pub attempt: u32,
    /// Metadata passed on to payment with every attempt (fault injection headers).
    pub forward: MetadataMap,
}

impl ChargeCall {
    pub fn new(
        charge: ChargeRequest,
        caller_deadline: Option<Instant>,
        forward: MetadataMap,
    ) -> Self {
        Self {
            charge,
            caller_deadline,
            deadline: None,
            attempt: 1,
            forward,
        }
    }

    #[cfg(test)]
    pub(crate) fn for_test(caller_deadline: Option<Instant>) -> Self {
        Self::new(
            ChargeRequest::default(),
            caller_deadline,
            MetadataMap::new(),
        )
    }
}

/// Settings of the payment client stack.
#[derive(Debug, Clone)]
pub struct PaymentClientConfig {
    pub url: String,
    /// The whole call, retries included.
    pub timeout: Duration,
    /// One attempt.
    pub attempt_timeout: Duration,
    /// Left free before the caller's deadline.
    pub deadline_margin: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Retries allowed as a share of calls (0.0 to 1.0), on top of `retry_min_per_sec`.
    pub retry_budget_ratio: f32,
    pub retry_min_per_sec: u32,
    pub breaker: BreakerConfig,
    /// TLS (and the client certificate for mutual TLS) to payment; no CA: plaintext.
    pub tls: ClientTlsFiles,
}

/// A payment client setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("ORDER_PAYMENT_URL is not a URL: {0}")]
    Url(#[from] InvalidUri),
    #[error("ORDER_PAYMENT_BACKOFF_BASE_MS / ORDER_PAYMENT_BACKOFF_MAX_MS: {0}")]
    Backoff(#[from] InvalidBackoff),
    #[error(transparent)]
    Tls(#[from] ordermesh::tls::TlsError),
    #[error("ORDER_PAYMENT_URL with TLS: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// What a failed charge means for the order.
#[derive(Debug)]
pub enum ChargeError {
    /// The processor said no; final for this order.
    Declined { payment_id: String, reason: String },
    /// The payment service refused the request itself (bad token, reused key); final.
    Refused(Status),
    /// No answer in time: whether the charge happened is unknown, so the order stays pending and a
    /// retry with the same idempotency key settles it.
    DeadlineExceeded(String),
    /// Failing fast: payment is not called until the breaker lets probes through.
    CircuitOpen(Open),
    /// Unreachable or failing even after retries; as with a deadline, a retry settles it.
    Unavailable(Status),
}

type Stack = Deadline<Retry<RetryPolicy, Breaker<ChargeService>>>;

/// The payment client: clone it freely, clones share the breaker and the retry budget.
#[derive(Debug, Clone)]
pub struct PaymentClient {
    stack: Stack,
    breaker: CircuitBreaker,
}

impl PaymentClient {
    /// A client for `config.url`. It connects lazily, so the order service starts (and answers
    /// UNAVAILABLE) while payment is down, and reconnects when it is back.
    ///
    /// Attempts, retries and the breaker's state are measured with `meter`.
    pub fn new(config: &PaymentClientConfig, meter: &Meter) -> Result<Self, ClientConfigError> {
        let mut endpoint = Channel::from_shared(config.url.clone())?;
        if let Some(tls) = config.tls.load()? {
            endpoint = endpoint.tls_config(tls)?;
        }
        let url = endpoint.uri().clone();
        let channel = endpoint
            .connect_timeout(config.attempt_timeout.min(Duration::from_secs(1)))
            .tcp_nodelay(true)
            .connect_lazy();
        // Each attempt: a client span carrying the trace context, and its duration by status code.
        let channel = RpcTelemetryLayer::client(meter, &url).layer(channel);
        let breaker = CircuitBreaker::new("payment", config.breaker.clone(), is_breaker_failure);
        let backoff = ExponentialBackoffMaker::new(
            config.backoff_base,
            config.backoff_max.max(config.backoff_base),
            // Up to +100% of each wait, so clients that failed together do not retry together.
            1.0,
            HasherRng::default(),
        )?;
        let budget = Arc::new(TpsBudget::new(
            Duration::from_secs(10),
            config.retry_min_per_sec,
            config.retry_budget_ratio,
        ));
        let retries = meter
            .u64_counter("ordermesh.payment.retries")
            .with_description("Charge attempts made again after a transient failure")
            .build();
        breaker_gauge(meter, &breaker);
        let stack = ServiceBuilder::new()
            // The call's deadline: the smaller of our timeout and the caller's, minus a margin.
            .layer(DeadlineLayer::new(config.timeout, config.deadline_margin))
            // Transient failures again, within that deadline and the shared budget.
            .layer(RetryLayer::new(RetryPolicy::new(
                config.max_attempts,
                backoff,
                budget,
                retries,
            )))
            // Fail fast while payment keeps failing; every attempt counts.
            .layer(BreakerLayer::new(breaker.clone()))
            // One attempt over the typed client.
            .service(ChargeService::new(
                PaymentServiceClient::new(channel),
                config.attempt_timeout,
            ));
        Ok(Self { stack, breaker })
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    pub async fn charge(&self, call: ChargeCall) -> Result<Payment, ChargeError> {
        self.stack.clone().oneshot(call).await.map_err(classify)
    }
}

/// Reports the breaker's state as `ordermesh.payment.breaker.state` when metrics are read: 0
/// closed, 1 half-open, 2 open.
fn breaker_gauge(meter: &Meter, breaker: &CircuitBreaker) {
    let states = breaker.subscribe();
    meter
        .u64_observable_gauge("ordermesh.payment.breaker.state")
        .with_description("The payment circuit breaker: 0 closed, 1 half-open, 2 open")
        .with_callback(move |gauge| {
            let value = match *states.borrow() {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open { .. } => 2,
            };
            gauge.observe(value, &[KeyValue::new("peer.service", "payment")]);
        })
        .build();
}

/// What the breaker counts as payment failing: no answer, or an answer saying it cannot work now.
/// Declines and refusals are answers from a healthy service.
fn is_breaker_failure(error: &BoxError) -> bool {
    match error.downcast_ref::<Status>() {
        Some(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Internal
                | Code::Unknown
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Cancelled
                | Code::DataLoss
        ),
        None => true,
    }
}

fn classify(error: BoxError) -> ChargeError {
    if let Some(open) = error.downcast_ref::<Open>() {
        return ChargeError::CircuitOpen(*open);
    }
    if error.downcast_ref::<Exhausted>().is_some() {
        return ChargeError::DeadlineExceeded(error.to_string());
    }
    let status = match error.downcast::<Status>() {
        Ok(status) => *status,
        Err(other) => return ChargeError::Unavailable(Status::unavailable(other.to_string())),
    };
    match status.code() {
        Code::FailedPrecondition => {
            let info = status.get_details_error_info();
            let payment_id = info
                .as_ref()
                .and_then(|i| i.metadata.get("payment_id").cloned())
                .unwrap_or_default();
            let reason = info
                .map(|i| i.reason.to_lowercase())
                .unwrap_or_else(|| status.message().to_owned());
            ChargeError::Declined { payment_id, reason }
        }
        Code::DeadlineExceeded => ChargeError::DeadlineExceeded(status.message().to_owned()),
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::OutOfRange
        | Code::Unimplemented => ChargeError::Refused(status),
        _ => ChargeError::Unavailable(status),
    }
}
