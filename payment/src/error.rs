//! The payment domain's one error type and its one mapping to gRPC status codes.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `google.rpc.ErrorInfo` domain of payment errors.
pub(crate) const ERROR_DOMAIN: &str = "payment.ordermesh";
/// The `google.rpc.ErrorInfo` reason of a Charge whose idempotency key was closed.
pub(crate) const KEY_CLOSED_REASON: &str = "CHARGE_KEY_CLOSED";
/// The `google.rpc.ErrorInfo` reason of a Refund of a declined payment.
pub(crate) const DECLINED_REASON: &str = "PAYMENT_DECLINED";
/// The `google.rpc.ErrorInfo` reason of a Refund of a payment refunded under another key.
pub(crate) const ALREADY_REFUNDED_REASON: &str = "ALREADY_REFUNDED";

/// Everything a payment call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    #[error("payment {payment_id} declined: {reason}")]
    Declined { payment_id: String, reason: String },
    #[error(
        "idempotency key {key:?} was already used for a different charge; use a new key for a new charge"
    )]
    KeyReused { key: String },
    #[error(
        "idempotency key {key:?} was closed without a charge ({reason}); nothing was charged, and no charge can be made with this key"
    )]
    KeyClosed { key: String, reason: String },
    #[error(
        "refund idempotency key {key:?} was already used for a different refund; use a new key for a new refund"
    )]
    RefundKeyReused { key: String },
    #[error(
        "payment {payment_id} was declined ({reason}): nothing was charged, so there is nothing to refund"
    )]
    DeclinedNotRefundable { payment_id: String, reason: String },
    #[error(
        "payment {payment_id} is already refunded by refund {refund_id}; a payment is refunded once, in full"
    )]
    AlreadyRefunded {
        payment_id: String,
        refund_id: String,
    },
    #[error("no payment with id {0:?}")]
    NotFound(String),
    #[error("payment store failed: {0}")]
    Store(#[from] sqlx::Error),
}

impl From<PaymentError> for Status {
    fn from(error: PaymentError) -> Self {
        let message = error.to_string();
        match error {
            PaymentError::Invalid(violations) => {
                ordermesh::bad_request::invalid_argument(violations)
            }
            PaymentError::Declined { payment_id, reason } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                // The reason and payment id machine-readably, so the order service need not parse text.
                ErrorDetails::with_error_info(
                    reason.to_uppercase(),
                    ERROR_DOMAIN,
                    HashMap::from([("payment_id".to_owned(), payment_id)]),
                ),
            ),
            PaymentError::KeyReused { .. } | PaymentError::RefundKeyReused { .. } => {
                Status::already_exists(message)
            }
            PaymentError::DeclinedNotRefundable { payment_id, .. } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    DECLINED_REASON,
                    ERROR_DOMAIN,
                    HashMap::from([("payment_id".to_owned(), payment_id)]),
                ),
            ),
            // The existing refund machine-readably: a caller that lost track of its key can adopt it.
            PaymentError::AlreadyRefunded {
                payment_id,
                refund_id,
            } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    ALREADY_REFUNDED_REASON,
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("payment_id".to_owned(), payment_id),
                        ("refund_id".to_owned(), refund_id),
                    ]),
                ),
            ),
            // Machine-readable like a decline, but with no payment id: nothing was charged.
            PaymentError::KeyClosed { key, .. } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(
                    KEY_CLOSED_REASON,
                    ERROR_DOMAIN,
                    HashMap::from([("idempotency_key".to_owned(), key)]),
                ),
            ),
            PaymentError::NotFound(_) => Status::not_found(message),
            PaymentError::Store(error) => {
                // Details stay in the log; the caller learns only that it may retry.
                tracing::error!(%error, "payment store failed");
                Status::unavailable("payment store unavailable, retry later")
            }
        }
    }
}
