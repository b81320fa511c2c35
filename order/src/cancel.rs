//! Cancelling a paid order: the way back of the saga, a compensating step rather than a rollback
//! (the charge happened; it is refunded).
//!
//! ```text
//!   PAID --CancelOrder--> CANCELLING --refund at payment--> CANCELLED + OrderCancelled (outbox)
//!                           |   ^
//!                           |   +-- refund failed for now: stays CANCELLING; the next CancelOrder,
//!                           |       or the reconciler after its grace period, refunds again
//!                           +-- under the same refund key, so payment refunds once
//! ```
//!
//! CANCELLING is stored before payment is asked, so a cancel cut short (payment down, the process
//! killed) is finished later, never left half done (forward recovery). The refund's idempotency
//! key is derived from the order id, so every attempt, by any replica, names the same refund;
//! CANCELLING -> CANCELLED is a conditional write with the OrderCancelled event in the same
//! transaction, so whoever finishes first records it and the others change nothing.

use std::time::Duration;

use ordermesh::timestamp;
use ordermesh_platform::trace_context;
use tonic::metadata::MetadataMap;

use crate::{
    convert,
    payment_client::PaymentClient,
    store::{Cancelled, OrderRow, Status, Store},
};

/// The idempotency key of an order's refund: one per order, whoever asks for it.
pub(crate) fn refund_key(order_id: &str) -> String {
    format!("refund:{order_id}")
}

/// Where a cancel stands after [`finish`].
#[derive(Debug)]
pub(crate) enum Finished {
    /// CANCELLED (by this call or another writer).
    Cancelled(OrderRow),
    /// Still CANCELLING: payment could not refund now (`detail` says why); it is asked again later.
    Waiting { order: OrderRow, detail: String },
}

/// Refunds the payment of `order` (CANCELLING) and records it CANCELLED with its OrderCancelled
/// event; `timeout` bounds each try at payment. `forward` goes to payment's Refund: a CancelOrder's
/// fault injection headers (demos, tests and fault campaigns), empty for the reconciler, so that
/// a refund faulted on the call is finished by the reconciler.
pub(crate) async fn finish(
    store: &Store,
    payments: &PaymentClient,
    order: OrderRow,
    timeout: Duration,
    forward: &MetadataMap,
) -> Result<Finished, sqlx::Error> {
    if order.status != Status::Cancelling {
        return Ok(Finished::Cancelled(order));
    }
    let refund = match payments
        .refund(
            &refund_key(&order.order_id),
            &order.payment_id,
            &order.cancel.reason,
            timeout,
            forward,
        )
        .await
    {
        Ok(refund) => refund,
        Err(status) => {
            let detail = format!("{:?}: {}", status.code(), status.message());
            tracing::warn!(order_id = %order.order_id, %detail, "refund not made now; the cancel stays CANCELLING and is finished later");
            return Ok(Finished::Waiting { order, detail });
        }
    };
    let event_id = format!("evt_{}", uuid::Uuid::now_v7().simple());
    let trace = trace_context::to_json(&trace_context::headers_of(&tracing::Span::current()));
    let cancelled = Cancelled {
        refund_id: &refund.refund_id,
        event_id: &event_id,
        trace_context: trace.as_deref(),
        now_ms: timestamp::now_millis(),
    };
    let encode = |order: &OrderRow| {
        ordermesh::events::encode(&convert::order_cancelled(order))
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))
    };
    let after = store
        .mark_cancelled(&order.order_id, cancelled, encode)
        .await?;
    tracing::info!(order_id = %after.order_id, refund_id = %after.cancel.refund_id, "order cancelled");
    Ok(Finished::Cancelled(after))
}
