//! Settling an order: recording what payment holds under the order's charge key.
//!
//! An order leaves PENDING_PAYMENT only by one of these writes, and each writes what payment said
//! of the key: a charge (PAID, with its event in the outbox), a decline (PAYMENT_FAILED), or the
//! key closed with nothing under it (ABANDONED). What a key holds never changes once stored, so
//! CreateOrder calls and reconcilers settling one order at the same time can only agree; each write
//! is conditional on the order still being pending (and, for a reconciler, still leased to it), so
//! the first one counts and the others change nothing.

use std::time::Duration;

use ordermesh::{proto::payment::v1::ChargeKeyState, proto::payment::v1::ChargeOutcome, timestamp};
use ordermesh_platform::trace_context;

use crate::{
    convert,
    payment_client::PaymentClient,
    store::{OrderRow, Paid, Store, Writer},
};

/// The idempotency key of an order's charge: one per order, whatever happens to the calls that
/// try to charge it.
pub(crate) fn charge_key(order_id: &str) -> String {
    format!("order:{order_id}")
}

/// PENDING_PAYMENT -> PAID by the charge `payment_id`, the OrderPlaced event into the outbox in the
/// same transaction. Returns the order as it is afterwards (PAID, or whatever another writer made
/// of it first).
pub(crate) async fn paid(
    store: &Store,
    order: &OrderRow,
    payment_id: &str,
    writer: Writer<'_>,
) -> Result<OrderRow, sqlx::Error> {
    let event_id = format!("evt_{}", uuid::Uuid::now_v7().simple());
    let encode = |paid: &OrderRow| {
        ordermesh::events::encode_order_placed(&convert::order_placed(paid))
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))
    };
    // The relay publishes later, from its own task: the event carries the trace context of the
    // call that paid the order with it, through the outbox row.
    let trace = trace_context::to_json(&trace_context::headers_of(&tracing::Span::current()));
    let paid = Paid {
        payment_id,
        event_id: &event_id,
        trace_context: trace.as_deref(),
        now_ms: timestamp::now_millis(),
    };
    store.mark_paid(&order.order_id, paid, writer, encode).await
}

/// What a settled key means for the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Charged: record it PAID.
    Charged { payment_id: String },
    /// Declined: record it PAYMENT_FAILED.
    Declined { payment_id: String, reason: String },
    /// Closed with nothing under it: no charge can land; record it ABANDONED (or forget it).
    Closed { reason: String },
    /// Payment answered with a state this service does not know to be final.
    Unknown(String),
}

impl Settled {
    /// Reads payment's answer to CloseChargeKey.
    pub(crate) fn of(outcome: &ChargeOutcome) -> Self {
        let payment = outcome.payment.clone().unwrap_or_default();
        match outcome.state() {
            ChargeKeyState::Charged if !payment.payment_id.is_empty() => Settled::Charged {
                payment_id: payment.payment_id,
            },
            ChargeKeyState::Declined if !payment.payment_id.is_empty() => Settled::Declined {
                payment_id: payment.payment_id,
                reason: payment.decline_reason,
            },
            ChargeKeyState::Closed => Settled::Closed {
                reason: outcome.close_reason.clone(),
            },
            other => Settled::Unknown(format!(
                "payment answered the key {} with {other:?}",
                outcome.idempotency_key
            )),
        }
    }

    /// The metric label of this settlement.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Settled::Charged { .. } => "paid",
            Settled::Declined { .. } => "payment_failed",
            Settled::Closed { .. } => "abandoned",
            Settled::Unknown(_) => "unknown",
        }
    }
}

/// Settles the charge key of `order_id` at payment (CloseChargeKey, see
/// [`PaymentClient::close_key`]) and reads the answer; `reason` is kept with a key that gets closed.
pub(crate) async fn settle_key(
    payments: &PaymentClient,
    order_id: &str,
    reason: &str,
    timeout: Duration,
) -> Settled {
    match payments
        .close_key(&charge_key(order_id), reason, timeout)
        .await
    {
        Ok(outcome) => Settled::of(&outcome),
        Err(error) => Settled::Unknown(format!("{:?}: {}", error.code(), error.message())),
    }
}

/// Records `settled` on a pending order; None for [`Settled::Unknown`], which changes nothing.
/// Returns the order as it is afterwards.
pub(crate) async fn record(
    store: &Store,
    order: &OrderRow,
    settled: &Settled,
    writer: Writer<'_>,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let now = timestamp::now_millis();
    Ok(Some(match settled {
        Settled::Charged { payment_id } => paid(store, order, payment_id, writer).await?,
        Settled::Declined { payment_id, reason } => {
            store
                .mark_failed(&order.order_id, payment_id, reason, now, writer)
                .await?
        }
        Settled::Closed { reason } => {
            store
                .mark_abandoned(&order.order_id, reason, now, writer)
                .await?
        }
        Settled::Unknown(_) => return Ok(None),
    }))
}
