//! The order domain's one error type and its one mapping to gRPC status codes.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `google.rpc.ErrorInfo` domain of order errors.
const ERROR_DOMAIN: &str = "order.ordermesh";

/// Everything an order call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    #[error(
        "request_id {request_id:?} was already used for a different order; use a new request_id for a new order"
    )]
    RequestIdReused { request_id: String },
    #[error("payment for order {order_id} was declined: {reason}")]
    PaymentDeclined { order_id: String, reason: String },
    #[error(
        "order {order_id} was not paid and never will be: {reason}; nothing was charged; send a new request_id to order again"
    )]
    Abandoned { order_id: String, reason: String },
    #[error(
        "{detail}; order {order_id} is waiting for payment: retry with the same request_id, or the order service settles it after its grace period"
    )]
    PaymentUnsettled { order_id: String, detail: String },
    #[error("payment service refused the charge, so no order was kept: {message}")]
    PaymentRefused {
        code: Code,
        message: String,
        details: Box<tonic_types::ErrorDetails>,
    },
    #[error(
        "payment service unavailable ({detail}); order {order_id} is waiting for payment, retry with the same request_id"
    )]
    PaymentUnavailable { order_id: String, detail: String },
    #[error(
        "payment service did not answer in time ({detail}); order {order_id} is waiting for payment, retry with the same request_id"
    )]
    PaymentDeadline { order_id: String, detail: String },
    #[error(
        "payment circuit is open after repeated payment failures, so payment was not called; order {order_id} is waiting for payment; payment will be tried again in {} ms, retry with the same request_id then",
        retry_after.as_millis()
    )]
    PaymentCircuitOpen {
        order_id: String,
        retry_after: std::time::Duration,
    },

    #[error(
        "order {order_id} was not paid ({status}): there is nothing to refund, so it cannot be cancelled"
    )]
    NotPaid { order_id: String, status: String },

    #[error("no order with id {0:?}")]
    NotFound(String),
    #[error("order store failed: {0}")]
    Store(#[from] sqlx::Error),
}

impl From<OrderError> for Status {
    fn from(error: OrderError) -> Self {
        let message = error.to_string();
        match error {
            OrderError::Invalid(violations) => ordermesh::bad_request::invalid_argument(violations),
            OrderError::RequestIdReused { .. } => Status::already_exists(message),
            OrderError::PaymentDeclined { .. } => Status::failed_precondition(message),
            OrderError::Abandoned { order_id, .. } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    "ORDER_ABANDONED",
                    ERROR_DOMAIN,
                    HashMap::from([("order_id".to_owned(), order_id)]),
                ),
            ),
            // Whether the order gets paid is not known yet: like no answer, come back later.
            OrderError::PaymentUnsettled { .. } => Status::unavailable(message),
            // Same code and details as payment gave (e.g. INVALID_ARGUMENT on payment_method_token,
            // a field both requests share), with a message that says where it came from.
            OrderError::PaymentRefused { code, details, .. } => {
                Status::with_error_details(code, message, *details)
            }
            OrderError::PaymentUnavailable { .. } => Status::unavailable(message),
            OrderError::PaymentDeadline { .. } => Status::deadline_exceeded(message),
            // RetryInfo tells well-behaved clients when to come back.
            OrderError::PaymentCircuitOpen { retry_after, .. } => Status::with_error_details(
                Code::Unavailable,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            OrderError::NotFound(_) => Status::not_found(message),
            OrderError::NotPaid { order_id, status } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    "ORDER_NOT_PAID",
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("order_id".to_owned(), order_id),
                        ("status".to_owned(), status),
                    ]),
                ),
            ),
            OrderError::Store(error) => {
                tracing::error!(%error, "order store failed");
                Status::unavailable("order store unavailable, retry later")
            }
        }
    }
}
