//! The order service's client of the payment service: a typed client with a deadline per call, and
//! the payment service's answers sorted into what the order service does next.

use std::time::Duration;

use ordermesh::proto::payment::v1::{
    ChargeRequest, Payment, payment_service_client::PaymentServiceClient,
};
use tonic::{Code, Request, Status, codegen::http::uri::InvalidUri, transport::Channel};
use tonic_types::StatusExt;

/// What a failed charge means for the order.
#[derive(Debug)]
pub(crate) enum ChargeError {
    /// The processor said no; final for this order.
    Declined { payment_id: String, reason: String },
    /// The payment service refused the request itself (bad token, reused key); final.
    Refused(Status),
    /// No answer, or a transient one: whether the charge happened is unknown, so the order stays
    /// pending and a retry with the same idempotency key settles it.
    Unavailable(Status),
}

#[derive(Debug, Clone)]
pub(crate) struct PaymentClient {
    client: PaymentServiceClient<Channel>,
    timeout: Duration,
}

impl PaymentClient {
    /// A client for `url`. It connects lazily, so the order service starts (and answers UNAVAILABLE)
    /// while the payment service is down, and reconnects when it is back.
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, InvalidUri> {
        let channel = Channel::from_shared(url.to_owned())?
            .connect_timeout(timeout.min(Duration::from_secs(1)))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: PaymentServiceClient::new(channel),
            timeout,
        })
    }

    /// Charges with a deadline: the payment service sees it as `grpc-timeout` and stops working on a
    /// call nobody waits for; the local timer bounds the wait even if the server ignores it.
    pub(crate) async fn charge(&self, charge: ChargeRequest) -> Result<Payment, ChargeError> {
        let mut request = Request::new(charge);
        request.set_timeout(self.timeout);
        let mut client = self.client.clone();
        let call = client.charge(request);
        let status = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(payment)) => return Ok(payment.into_inner()),
            Ok(Err(status)) => status,
            Err(_) => Status::deadline_exceeded(format!(
                "payment service did not answer within {} ms",
                self.timeout.as_millis()
            )),
        };
        Err(classify(status))
    }
}

fn classify(status: Status) -> ChargeError {
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
