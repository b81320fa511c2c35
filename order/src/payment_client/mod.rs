//! The order service's client of the payment service: a typed Charge service wrapped in tower
//! middleware, outermost first:
//!
//! 1. [`deadline`]: the call's deadline is the smaller of its timeout and the caller's, minus a
//!    margin; a spent budget fails at once;
//! 2. [`retry`]: transient failures are retried with jittered exponential backoff, within the
//!    deadline, a maximum attempt count and a shared budget;
//! 3. [`balance`]: each attempt goes to one payment endpoint (replica), round-robin among the
//!    healthy ones, a retry to one not tried yet;
//! 4. [`breaker`], one per endpoint: while an endpoint keeps failing, it gets no calls (outlier
//!    ejection); while every endpoint's is open, calls fail fast without reaching payment;
//! 5. [`attempt`]: one Charge over the generated tonic client, bounded by the per-attempt timeout.
//!
//! The breakers sit inside the retries so that every attempt counts towards their verdict, and an
//! open circuit everywhere stops the retries at once (its error is not retryable).
//!
//! What each gRPC code from payment means to the breakers, the retries and the caller is one table,
//! [`codes`], which all of them read.

pub mod attempt;
pub mod balance;
pub mod breaker;
pub mod codes;
pub mod deadline;
pub mod retry;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::metrics::Meter;
use ordermesh::{
    proto::payment::v1::ChargeOutcome,
    proto::payment::v1::ChargeRequest,
    proto::payment::v1::CloseChargeKeyRequest,
    proto::payment::v1::Payment,
    proto::payment::v1::{Refund, RefundRequest},
};
use ordermesh_platform::tls::ClientTlsFiles;
use tokio::{sync::watch, time::Instant};
use tonic::{Request, Status, codegen::http::uri::InvalidUri, metadata::MetadataMap};
use tower::{
    ServiceBuilder, ServiceExt,
    retry::{
        Retry, RetryLayer,
        backoff::{ExponentialBackoffMaker, InvalidBackoff},
        budget::TpsBudget,
    },
    util::rng::HasherRng,
};

use self::{
    balance::{Balancer, EndpointSettings},
    breaker::{BreakerConfig, BreakerState, Open},
    codes::{Breaker, Meaning, classify},
    deadline::{Deadline, DeadlineLayer},
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
    /// The endpoints this call's attempts went to, shared by the retries' copies of the call, so a
    /// retry goes elsewhere if it can.
    pub tried: Arc<Mutex<Vec<SocketAddr>>>,
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
            tried: Arc::default(),
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
    /// One URL or several, comma-separated; a host name stands for every address it resolves to.
    pub url: String,
    /// How often host names in `url` are resolved again.
    pub resolve_interval: Duration,
    /// How often each endpoint's health is checked.
    pub health_interval: Duration,
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
    Tls(#[from] ordermesh_platform::tls::TlsError),
    #[error("ORDER_PAYMENT_URL with TLS: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("ORDER_PAYMENT_URL: {0}")]
    Target(String),
}

/// What a failed charge means for the order.
#[derive(Debug)]
pub enum ChargeError {
    /// The processor said no; final for this order.
    Declined { payment_id: String, reason: String },
    /// The payment service refused the request itself (bad token, reused key, a closed key), or
    /// answered with an error this client does not know to be a decline. Whether an earlier
    /// attempt charged is not said by it: the order settles the key before it gives up.
    Refused(Status),
    /// No answer in time: whether the charge happened is unknown, so the order stays pending and a
    /// retry with the same idempotency key settles it.
    DeadlineExceeded(String),
    /// Failing fast: payment is not called until the breaker lets probes through.
    CircuitOpen(Open),
    /// Unreachable or failing even after retries; as with a deadline, a retry settles it.
    Unavailable(Status),
}

type Stack = Deadline<Retry<RetryPolicy, Balancer>>;

/// The payment client: clone it freely, clones share the endpoints, their breakers and the retry
/// budget.
#[derive(Debug, Clone)]
pub struct PaymentClient {
    stack: Stack,
    balancer: Balancer,
}

impl PaymentClient {
    /// A client for the endpoints of `config.url`. It connects lazily, so the order service starts
    /// (and answers UNAVAILABLE) while payment is down, and reconnects when it is back. Must be
    /// called on a Tokio runtime: endpoints are resolved and health-checked in the background.
    ///
    /// Attempts, retries and the breakers' states are measured with `meter`.
    pub fn new(config: &PaymentClientConfig, meter: &Meter) -> Result<Self, ClientConfigError> {
        let balancer = Balancer::new(
            &config.url,
            EndpointSettings {
                tls: config.tls.load()?,
                tls_domain: config.tls.domain.clone(),
                attempt_timeout: config.attempt_timeout,
                breaker: config.breaker.clone(),
                resolve_interval: config.resolve_interval,
                health_interval: config.health_interval,
            },
            meter,
        )?;
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
            // Each attempt to one endpoint, through that endpoint's breaker, to one Charge call.
            .service(balancer.clone());
        Ok(Self { stack, balancer })
    }

    /// Payment as the breakers see it: closed while any endpoint takes calls, open when none does;
    /// updated as it changes.
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.balancer.subscribe()
    }

    pub async fn charge(&self, call: ChargeCall) -> Result<Payment, ChargeError> {
        self.stack.clone().oneshot(call).await.map_err(classify)
    }

    /// Settles `key` for good with payment's CloseChargeKey: the charge or decline stored under
    /// it, or else the key closed, so that no charge with it can land any more. Closing is
    /// idempotent, so each endpoint is tried in turn (healthy ones first) until one answers;
    /// `timeout` bounds each try. An error means nothing is known yet.
    pub async fn close_key(
        &self,
        key: &str,
        reason: &str,
        timeout: Duration,
    ) -> Result<ChargeOutcome, Status> {
        let mut last = Status::unavailable("no payment endpoint to settle the charge key with");
        for mut client in self.balancer.clients() {
            let mut request = Request::new(CloseChargeKeyRequest {
                idempotency_key: key.to_owned(),
                reason: reason.to_owned(),
            });
            request.set_timeout(timeout);
            match tokio::time::timeout(timeout, client.close_charge_key(request)).await {
                Ok(Ok(outcome)) => return Ok(outcome.into_inner()),
                // This endpoint cannot answer now (what its breaker would count as failing);
                // another may.
                Ok(Err(status)) if Meaning::of(status.code()).breaker == Breaker::Failure => {
                    last = status;
                }
                Ok(Err(status)) => return Err(status),
                Err(_) => {
                    last = Status::deadline_exceeded(format!(
                        "payment did not settle the charge key within {} ms",
                        timeout.as_millis()
                    ));
                }
            }
        }
        Err(last)
    }

    /// Refunds `payment_id` with payment's Refund under `key`: the refund made under the key
    /// before, or a new one. Idempotent by its key, so each endpoint is tried in turn (healthy ones
    /// first) until one answers; `timeout` bounds each try. An error from every endpoint means the
    /// refund may or may not have been made: asking again with the same key finds out. `forward`
    /// (a CancelOrder's fault injection headers, when so configured) goes on every try.
    pub async fn refund(
        &self,
        key: &str,
        payment_id: &str,
        reason: &str,
        timeout: Duration,
        forward: &MetadataMap,
    ) -> Result<Refund, Status> {
        let mut last = Status::unavailable("no payment endpoint to refund with");
        for mut client in self.balancer.clients() {
            let mut request = Request::new(RefundRequest {
                idempotency_key: key.to_owned(),
                payment_id: payment_id.to_owned(),
                reason: reason.to_owned(),
            });
            request.set_timeout(timeout);
            for entry in forward.iter() {
                if let tonic::metadata::KeyAndValueRef::Ascii(name, value) = entry {
                    request.metadata_mut().append(name.clone(), value.clone());
                }
            }
            match tokio::time::timeout(timeout, client.refund(request)).await {
                Ok(Ok(refund)) => return Ok(refund.into_inner()),
                // This endpoint cannot answer now; another may.
                Ok(Err(status)) if Meaning::of(status.code()).breaker == Breaker::Failure => {
                    last = status;
                }
                Ok(Err(status)) => return Err(status),
                Err(_) => {
                    last = Status::deadline_exceeded(format!(
                        "payment did not refund within {} ms",
                        timeout.as_millis()
                    ));
                }
            }
        }
        Err(last)
    }
}
