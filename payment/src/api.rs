//! The PaymentService gRPC implementation: validate, decide, store once, answer from what is stored.

use ordermesh::proto::{
    payment::v1::{
        ChargeRequest, GetPaymentRequest, Payment, PaymentStatus,
        payment_service_server::PaymentService,
    },
    types::v1::Money,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tonic_types::FieldViolation;

use crate::{
    decide::{APPROVED, DECLINED, Decision, decide},
    error::PaymentError,
    fault::{self, FaultConfig},
    store::{PaymentRow, Store},
};

/// Longest idempotency key, order id or token accepted.
const MAX_ID_LEN: usize = 128;
/// Largest single charge, in minor units: far above any real basket, far below overflow.
const MAX_MINOR_UNITS: i64 = 1_000_000_000_000;

#[derive(Debug, Clone)]
pub(crate) struct PaymentApi {
    store: Store,
    faults: FaultConfig,
}

impl PaymentApi {
    pub(crate) fn new(store: Store, faults: FaultConfig) -> Self {
        Self { store, faults }
    }

    async fn charge(&self, req: ChargeRequest) -> Result<Payment, PaymentError> {
        let (amount, decision) = validate(&req)?;
        let (status, decline_reason) = match decision {
            Decision::Approve => ("SUCCEEDED", String::new()),
            Decision::Decline(reason) => ("DECLINED", reason.to_owned()),
        };
        let candidate = PaymentRow {
            payment_id: format!("pay_{}", uuid::Uuid::now_v7().simple()),
            idempotency_key: req.idempotency_key.clone(),
            request_fingerprint: fingerprint(&req),
            order_id: req.order_id.clone(),
            currency_code: amount.currency_code,
            minor_units: amount.minor_units,
            status: status.to_owned(),
            decline_reason,
            created_at_ms: ordermesh::timestamp::now_millis(),
        };
        let stored = self.store.insert_or_get(&candidate).await?;
        if stored.request_fingerprint != candidate.request_fingerprint {
            return Err(PaymentError::KeyReused {
                key: req.idempotency_key,
            });
        }
        let replay = stored.payment_id != candidate.payment_id;
        tracing::info!(
            payment_id = %stored.payment_id,
            order_id = %stored.order_id,
            status = %stored.status,
            replay,
            "charge"
        );
        if stored.status == "DECLINED" {
            return Err(PaymentError::Declined {
                payment_id: stored.payment_id,
                reason: stored.decline_reason,
            });
        }
        Ok(to_proto(stored))
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn charge(&self, request: Request<ChargeRequest>) -> Result<Response<Payment>, Status> {
        let fault =
            fault::for_call(&self.faults, request.metadata()).map_err(PaymentError::Invalid)?;
        if let Some(fault) = &fault {
            fault.before().await?;
        }
        let payment = PaymentApi::charge(self, request.into_inner()).await?;
        if let Some(fault) = &fault {
            fault.after()?;
        }
        Ok(Response::new(payment))
    }

    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<Payment>, Status> {
        let id = request.into_inner().payment_id;
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(PaymentError::Invalid(vec![FieldViolation::new(
                "payment_id",
                format!("required, at most {MAX_ID_LEN} characters"),
            )])
            .into());
        }
        match self.store.get(&id).await.map_err(PaymentError::from)? {
            Some(row) => Ok(Response::new(to_proto(row))),
            None => Err(PaymentError::NotFound(id).into()),
        }
    }
}

/// Checks every field and reports all violations at once; on success returns the amount and what the
/// processor decides for the token.
fn validate(req: &ChargeRequest) -> Result<(Money, Decision), PaymentError> {
    let mut violations = Vec::new();
    let mut text = |field: &str, value: &str| {
        if value.is_empty() || value.len() > MAX_ID_LEN {
            violations.push(FieldViolation::new(
                field,
                format!("required, at most {MAX_ID_LEN} characters"),
            ));
        }
    };
    text("idempotency_key", &req.idempotency_key);
    text("order_id", &req.order_id);
    text("payment_method_token", &req.payment_method_token);
    let decision = decide(&req.payment_method_token);
    if !req.payment_method_token.is_empty() && decision.is_none() {
        let known: Vec<&str> = APPROVED
            .iter()
            .copied()
            .chain(DECLINED.iter().map(|(t, _)| *t))
            .collect();
        violations.push(FieldViolation::new(
            "payment_method_token",
            format!("unknown token; use one of {}", known.join(", ")),
        ));
    }
    let amount = req.amount.clone().unwrap_or_default();
    if req.amount.is_none() {
        violations.push(FieldViolation::new("amount", "required"));
    } else {
        if !ordermesh::money::is_known_currency(&amount.currency_code) {
            violations.push(FieldViolation::new(
                "amount.currency_code",
                format!(
                    "unknown currency {:?}; use an ISO 4217 code such as USD",
                    amount.currency_code
                ),
            ));
        }
        if amount.minor_units <= 0 || amount.minor_units > MAX_MINOR_UNITS {
            violations.push(FieldViolation::new(
                "amount.minor_units",
                format!("must be between 1 and {MAX_MINOR_UNITS}"),
            ));
        }
    }
    match decision {
        Some(decision) if violations.is_empty() => Ok((amount, decision)),
        _ => Err(PaymentError::Invalid(violations)),
    }
}

/// What makes two charges "the same request" for one idempotency key.
fn fingerprint(req: &ChargeRequest) -> String {
    let amount = req.amount.clone().unwrap_or_default();
    let mut hash = Sha256::new();
    for part in [
        req.order_id.as_bytes(),
        amount.currency_code.as_bytes(),
        &amount.minor_units.to_be_bytes(),
        req.payment_method_token.as_bytes(),
    ] {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("{:x}", hash.finalize())
}

fn to_proto(row: PaymentRow) -> Payment {
    let status = match row.status.as_str() {
        "SUCCEEDED" => PaymentStatus::Succeeded,
        "DECLINED" => PaymentStatus::Declined,
        _ => PaymentStatus::Unspecified,
    };
    Payment {
        payment_id: row.payment_id,
        order_id: row.order_id,
        status: status.into(),
        amount: Some(Money {
            currency_code: row.currency_code,
            minor_units: row.minor_units,
        }),
        decline_reason: row.decline_reason,
        created_at: Some(ordermesh::timestamp::from_millis(row.created_at_ms)),
    }
}
