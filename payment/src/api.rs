//! The PaymentService gRPC implementation: validate, decide, store once, answer from what is stored.
//! A refund the same way: validate, check the payment, store once (the store decides races), answer
//! from what is stored.

use ordermesh::{
    paging::PageRequest, proto::payment::v1::ChargeKeyState, proto::payment::v1::ChargeOutcome,
    proto::payment::v1::ChargeRequest, proto::payment::v1::CloseChargeKeyRequest,
    proto::payment::v1::GetChargeOutcomeRequest, proto::payment::v1::GetPaymentRequest,
    proto::payment::v1::ListPaymentsRequest, proto::payment::v1::ListPaymentsResponse,
    proto::payment::v1::Payment, proto::payment::v1::PaymentStatus, proto::payment::v1::Refund,
    proto::payment::v1::RefundRequest, proto::payment::v1::payment_service_server::PaymentService,
    proto::types::v1::Money,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tonic_types::FieldViolation;

use crate::{
    decide::{APPROVED, DECLINED, Decision, decide},
    error::PaymentError,
    fault::{self, FaultConfig},
    store::{KeyStatus, PaymentRow, RefundRow, RefundWrite, Store},
};

/// Longest idempotency key, order id or token accepted.
const MAX_ID_LEN: usize = 128;
/// Largest single charge, in minor units: far above any real basket, far below overflow.
const MAX_MINOR_UNITS: i64 = 1_000_000_000_000;
/// Longest reason accepted for closing a key or for a refund.
const MAX_REASON_LEN: usize = 512;

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
            Decision::Approve => (KeyStatus::Succeeded, String::new()),
            Decision::Decline(reason) => (KeyStatus::Declined, reason.to_owned()),
        };
        let candidate = PaymentRow {
            seq: 0,
            payment_id: format!("pay_{}", uuid::Uuid::now_v7().simple()),
            idempotency_key: req.idempotency_key.clone(),
            request_fingerprint: fingerprint(&req),
            order_id: req.order_id.clone(),
            currency_code: amount.currency_code,
            minor_units: amount.minor_units,
            status,
            decline_reason,
            close_reason: String::new(),
            created_at_ms: ordermesh::timestamp::now_millis(),
            refunded_at_ms: None,
            refund_id: String::new(),
        };
        let stored = self.store.insert_or_get(&candidate).await?;
        // Before the fingerprint: a closed key has none, and the caller must learn it was closed.
        if stored.status == KeyStatus::Closed {
            tracing::info!(key = %stored.idempotency_key, order_id = %req.order_id, "charge refused: key closed");
            return Err(PaymentError::KeyClosed {
                key: stored.idempotency_key,
                reason: stored.close_reason,
            });
        }
        if stored.request_fingerprint != candidate.request_fingerprint {
            return Err(PaymentError::KeyReused {
                key: req.idempotency_key,
            });
        }
        let replay = stored.payment_id != candidate.payment_id;
        tracing::info!(
            payment_id = %stored.payment_id,
            order_id = %stored.order_id,
            status = stored.status.as_str(),
            replay,
            "charge"
        );
        if stored.status == KeyStatus::Declined {
            return Err(PaymentError::Declined {
                payment_id: stored.payment_id,
                reason: stored.decline_reason,
            });
        }
        Ok(to_proto(stored))
    }

    /// Closes `key` unless a payment holds it; returns what holds it afterwards.
    async fn close(&self, req: CloseChargeKeyRequest) -> Result<ChargeOutcome, PaymentError> {
        let mut violations = Vec::new();
        check_key(&req.idempotency_key, &mut violations);
        check_reason(&req.reason, &mut violations);
        if !violations.is_empty() {
            return Err(PaymentError::Invalid(violations));
        }
        let closed = PaymentRow {
            seq: 0,
            payment_id: format!("key_{}", uuid::Uuid::now_v7().simple()),
            idempotency_key: req.idempotency_key,
            request_fingerprint: String::new(),
            order_id: String::new(),
            currency_code: String::new(),
            minor_units: 0,
            status: KeyStatus::Closed,
            decline_reason: String::new(),
            close_reason: req.reason,
            created_at_ms: ordermesh::timestamp::now_millis(),
            refunded_at_ms: None,
            refund_id: String::new(),
        };
        let stored = self.store.insert_or_get(&closed).await?;
        tracing::info!(
            key = %stored.idempotency_key,
            status = stored.status.as_str(),
            closed_now = stored.payment_id == closed.payment_id,
            "close charge key"
        );
        Ok(outcome(stored))
    }

    /// Refunds a SUCCEEDED payment in full, once per refund key and once per payment.
    async fn refund(&self, req: RefundRequest) -> Result<Refund, PaymentError> {
        let mut violations = Vec::new();
        check_key(&req.idempotency_key, &mut violations);
        check_payment_id(&req.payment_id, &mut violations);
        check_reason(&req.reason, &mut violations);
        if !violations.is_empty() {
            return Err(PaymentError::Invalid(violations));
        }
        let request_fingerprint = refund_fingerprint(&req);
        // A retry first: by then the payment is REFUNDED, and the caller must get its refund back
        // rather than be told the payment is refunded already.
        if let Some(stored) = self.store.refund_by_key(&req.idempotency_key).await? {
            return replay(stored, &request_fingerprint);
        }
        let payment = self
            .store
            .get(&req.payment_id)
            .await?
            .ok_or_else(|| PaymentError::NotFound(req.payment_id.clone()))?;
        if let Err(refused) = not_refundable(&payment) {
            // A copy of this request may have refunded it between the key's lookup and the
            // payment's: then this is its retry, and gets its refund.
            if let Some(stored) = self.store.refund_by_key(&req.idempotency_key).await? {
                return replay(stored, &request_fingerprint);
            }
            return Err(refused);
        }
        let candidate = RefundRow {
            refund_id: format!("ref_{}", uuid::Uuid::now_v7().simple()),
            idempotency_key: req.idempotency_key,
            request_fingerprint,
            payment_id: payment.payment_id,
            order_id: payment.order_id,
            currency_code: payment.currency_code,
            minor_units: payment.minor_units,
            reason: req.reason,
            created_at_ms: ordermesh::timestamp::now_millis(),
        };
        match self.store.refund(&candidate).await? {
            RefundWrite::Stored => {
                tracing::info!(
                    refund_id = %candidate.refund_id,
                    payment_id = %candidate.payment_id,
                    order_id = %candidate.order_id,
                    "refund"
                );
                Ok(refund_to_proto(candidate))
            }
            // A copy of this request racing this one stored first (or another request took the
            // key): the same answer as a retry after it.
            RefundWrite::KeyTaken(stored) => replay(stored, &candidate.request_fingerprint),
            // Taken by a copy of this request (the same key): its refund, as for a retry.
            RefundWrite::PaymentTaken(stored)
                if stored.idempotency_key == candidate.idempotency_key =>
            {
                replay(stored, &candidate.request_fingerprint)
            }
            RefundWrite::PaymentTaken(stored) => Err(PaymentError::AlreadyRefunded {
                payment_id: stored.payment_id,
                refund_id: stored.refund_id,
            }),
            // Refunded (or, impossibly, declined) since it was read: say which, from the row now.
            RefundWrite::NotSucceeded => {
                let now = self
                    .store
                    .get(&candidate.payment_id)
                    .await?
                    .ok_or_else(|| PaymentError::NotFound(candidate.payment_id.clone()))?;
                not_refundable(&now)?;
                // SUCCEEDED again cannot be (a payment never goes back); the caller may retry.
                Err(PaymentError::Store(sqlx::Error::RowNotFound))
            }
        }
    }
}

/// The answer to a refund key that is taken: the stored refund if the request is the same, else
/// ALREADY_EXISTS.
fn replay(stored: RefundRow, request_fingerprint: &str) -> Result<Refund, PaymentError> {
    if stored.request_fingerprint != request_fingerprint {
        return Err(PaymentError::RefundKeyReused {
            key: stored.idempotency_key,
        });
    }
    tracing::info!(
        refund_id = %stored.refund_id,
        payment_id = %stored.payment_id,
        replay = true,
        "refund"
    );
    Ok(refund_to_proto(stored))
}

/// Why `payment` cannot be refunded, if it cannot (only a SUCCEEDED payment can).
fn not_refundable(payment: &PaymentRow) -> Result<(), PaymentError> {
    match payment.status {
        KeyStatus::Succeeded => Ok(()),
        KeyStatus::Declined => Err(PaymentError::DeclinedNotRefundable {
            payment_id: payment.payment_id.clone(),
            reason: payment.decline_reason.clone(),
        }),
        KeyStatus::Refunded => Err(PaymentError::AlreadyRefunded {
            payment_id: payment.payment_id.clone(),
            refund_id: payment.refund_id.clone(),
        }),
        // A closed key holds no payment: as unknown as an id never issued.
        KeyStatus::Closed => Err(PaymentError::NotFound(payment.payment_id.clone())),
    }
}

/// Adds a violation unless `id` is a usable payment id.
fn check_payment_id(id: &str, violations: &mut Vec<FieldViolation>) {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        violations.push(FieldViolation::new(
            "payment_id",
            format!("required, at most {MAX_ID_LEN} characters"),
        ));
    }
}

/// Adds a violation unless `reason` is short enough to keep.
fn check_reason(reason: &str, violations: &mut Vec<FieldViolation>) {
    if reason.len() > MAX_REASON_LEN {
        violations.push(FieldViolation::new(
            "reason",
            format!("at most {MAX_REASON_LEN} characters"),
        ));
    }
}

/// Adds a violation unless `key` is a usable idempotency key.
fn check_key(key: &str, violations: &mut Vec<FieldViolation>) {
    if key.is_empty() || key.len() > MAX_ID_LEN {
        violations.push(FieldViolation::new(
            "idempotency_key",
            format!("required, at most {MAX_ID_LEN} characters"),
        ));
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
            fault.after().await?;
        }
        Ok(Response::new(payment))
    }

    async fn get_payment(
        &self,
        request: Request<GetPaymentRequest>,
    ) -> Result<Response<Payment>, Status> {
        let id = request.into_inner().payment_id;
        let mut violations = Vec::new();
        check_payment_id(&id, &mut violations);
        if !violations.is_empty() {
            return Err(PaymentError::Invalid(violations).into());
        }
        match self.store.get(&id).await.map_err(PaymentError::from)? {
            Some(row) => Ok(Response::new(to_proto(row))),
            None => Err(PaymentError::NotFound(id).into()),
        }
    }

    async fn get_charge_outcome(
        &self,
        request: Request<GetChargeOutcomeRequest>,
    ) -> Result<Response<ChargeOutcome>, Status> {
        let key = request.into_inner().idempotency_key;
        let mut violations = Vec::new();
        check_key(&key, &mut violations);
        if !violations.is_empty() {
            return Err(PaymentError::Invalid(violations).into());
        }
        let row = self.store.by_key(&key).await.map_err(PaymentError::from)?;
        Ok(Response::new(row.map_or_else(|| open(key), outcome)))
    }

    async fn close_charge_key(
        &self,
        request: Request<CloseChargeKeyRequest>,
    ) -> Result<Response<ChargeOutcome>, Status> {
        Ok(Response::new(self.close(request.into_inner()).await?))
    }

    async fn list_payments(
        &self,
        request: Request<ListPaymentsRequest>,
    ) -> Result<Response<ListPaymentsResponse>, Status> {
        let req = request.into_inner();
        let mut violations = Vec::new();
        let page = PageRequest::parse(req.page_size, &req.page_token, &mut violations);
        if !violations.is_empty() {
            return Err(PaymentError::Invalid(violations).into());
        }
        let mut rows = self
            .store
            .list(page.after, page.fetch_limit())
            .await
            .map_err(PaymentError::from)?;
        let next_page_token = page.finish(&mut rows, |r| r.seq);
        Ok(Response::new(ListPaymentsResponse {
            payments: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    /// Faults as for Charge: before the refund (nothing refunded) or after it is stored (the
    /// refund stands; a retry with the same key gets it).
    async fn refund(&self, request: Request<RefundRequest>) -> Result<Response<Refund>, Status> {
        let fault =
            fault::for_call(&self.faults, request.metadata()).map_err(PaymentError::Invalid)?;
        if let Some(fault) = &fault {
            fault.before().await?;
        }
        let refund = PaymentApi::refund(self, request.into_inner()).await?;
        if let Some(fault) = &fault {
            fault.after().await?;
        }
        Ok(Response::new(refund))
    }
}

/// What a key that nothing holds stands for: open, a Charge with it may still land.
fn open(key: String) -> ChargeOutcome {
    ChargeOutcome {
        idempotency_key: key,
        state: ChargeKeyState::Open.into(),
        ..Default::default()
    }
}

/// What the key of `row` stands for.
fn outcome(row: PaymentRow) -> ChargeOutcome {
    match row.status {
        KeyStatus::Closed => ChargeOutcome {
            idempotency_key: row.idempotency_key,
            state: ChargeKeyState::Closed.into(),
            payment: None,
            close_reason: row.close_reason,
            closed_at: Some(ordermesh::timestamp::from_millis(row.created_at_ms)),
        },
        KeyStatus::Succeeded | KeyStatus::Declined | KeyStatus::Refunded => ChargeOutcome {
            idempotency_key: row.idempotency_key.clone(),
            // A refunded payment was charged: the order it paid for was paid.
            state: if row.status == KeyStatus::Declined {
                ChargeKeyState::Declined
            } else {
                ChargeKeyState::Charged
            }
            .into(),
            payment: Some(to_proto(row)),
            close_reason: String::new(),
            closed_at: None,
        },
    }
}

/// Checks every field and reports all violations at once; on success returns the amount and what the
/// processor decides for the token.
fn validate(req: &ChargeRequest) -> Result<(Money, Decision), PaymentError> {
    let mut violations = Vec::new();
    check_key(&req.idempotency_key, &mut violations);
    let mut text = |field: &str, value: &str| {
        if value.is_empty() || value.len() > MAX_ID_LEN {
            violations.push(FieldViolation::new(
                field,
                format!("required, at most {MAX_ID_LEN} characters"),
            ));
        }
    };
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

/// What makes two refunds "the same request" for one refund key.
fn refund_fingerprint(req: &RefundRequest) -> String {
    let mut hash = Sha256::new();
    for part in [req.payment_id.as_bytes(), req.reason.as_bytes()] {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("{:x}", hash.finalize())
}

fn refund_to_proto(row: RefundRow) -> Refund {
    Refund {
        refund_id: row.refund_id,
        payment_id: row.payment_id,
        order_id: row.order_id,
        amount: Some(Money {
            currency_code: row.currency_code,
            minor_units: row.minor_units,
        }),
        reason: row.reason,
        created_at: Some(ordermesh::timestamp::from_millis(row.created_at_ms)),
        idempotency_key: row.idempotency_key,
    }
}

fn to_proto(row: PaymentRow) -> Payment {
    let status = match row.status {
        KeyStatus::Succeeded => PaymentStatus::Succeeded,
        KeyStatus::Declined => PaymentStatus::Declined,
        KeyStatus::Refunded => PaymentStatus::Refunded,
        KeyStatus::Closed => PaymentStatus::Unspecified,
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
        idempotency_key: row.idempotency_key,
        refunded_at: row.refunded_at_ms.map(ordermesh::timestamp::from_millis),
        refund_id: row.refund_id,
    }
}
