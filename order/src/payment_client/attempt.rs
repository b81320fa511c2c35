//! One attempt at Charge: the innermost service of the payment client stack, over the generated
//! tonic client (whose requests clone, so the retry layer above can repeat them).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use ordermesh::{
    proto::payment::v1::Payment, proto::payment::v1::payment_service_client::PaymentServiceClient,
};
use ordermesh_platform::rpc_telemetry::RpcTelemetry;
use tokio::time::Instant;
use tonic::{Request, Status, metadata::MetadataValue, transport::Channel};
use tower::{BoxError, Service};

use super::{ChargeCall, codes::ran_out_of_time};

/// The channel to payment: every attempt is a client span, carries the trace context, and is
/// measured in `rpc.client.call.duration`.
pub type PaymentChannel = RpcTelemetry<Channel>;

/// Makes one Charge call, bounded by the per-attempt timeout and the call's deadline.
#[derive(Debug, Clone)]
pub struct ChargeService {
    client: PaymentServiceClient<PaymentChannel>,
    attempt_timeout: Duration,
}

impl ChargeService {
    pub fn new(client: PaymentServiceClient<PaymentChannel>, attempt_timeout: Duration) -> Self {
        Self {
            client,
            attempt_timeout,
        }
    }
}

impl Service<ChargeCall> for ChargeService {
    type Response = Payment;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Payment, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each call uses its own clone of the client, which waits for the channel itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: ChargeCall) -> Self::Future {
        let mut client = self.client.clone();
        let now = Instant::now();
        let mut deadline = now + self.attempt_timeout;
        if let Some(call_deadline) = call.deadline {
            deadline = deadline.min(call_deadline);
        }
        Box::pin(async move {
            let budget = deadline.saturating_duration_since(now);
            let mut request = Request::from_parts(call.forward, Default::default(), call.charge);
            request.metadata_mut().insert(
                ordermesh::headers::ATTEMPT,
                MetadataValue::from(call.attempt),
            );
            // Sent as `grpc-timeout`: payment stops working on a call nobody waits for any more.
            request.set_timeout(budget);
            let timed_out = || {
                Status::deadline_exceeded(format!(
                    "payment service did not answer attempt {} within {} ms",
                    call.attempt,
                    budget.as_millis()
                ))
            };
            match tokio::time::timeout_at(deadline, client.charge(request)).await {
                Ok(Ok(payment)) => Ok(payment.into_inner()),
                // The same timeout, seen first by tonic's client or by the server (the code
                // table's `late` column).
                Ok(Err(status)) if ran_out_of_time(&status, deadline, Instant::now()) => {
                    Err(timed_out().into())
                }
                Ok(Err(status)) => Err(status.into()),
                // The local timer bounds the wait even if the server ignores grpc-timeout.
                Err(_) => Err(timed_out().into()),
            }
        })
    }
}
