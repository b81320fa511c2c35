//! The reconciler: settles orders left PENDING_PAYMENT.
//!
//! An order stays pending when CreateOrder could not learn the outcome of its charge (no answer in
//! time, payment unavailable, the caller gone, the process killed between the charge and its
//! record) and nobody retries. Nothing else would ever ask payment again, so a customer could be
//! charged for an order that never shows as paid. Every interval, the reconciler takes the pending
//! orders that no CreateOrder has tried to charge for a grace period (longer than a charge call can
//! take, so it never competes with a live one) and settles each with payment's CloseChargeKey:
//! the charge under the order's key if one landed (PAID, event through the outbox, notifications
//! follow), the decline if one was stored (PAYMENT_FAILED), or else the key closed so that no
//! charge still in flight can land (ABANDONED, with the reason).
//!
//! Replicas share the work like the relays share the outbox: a reconciler leases the orders of its
//! round (`Store::claim_pending`) and writes a settlement only while it holds the lease
//! (`Writer::Reconciler`), so each order is settled once; a reconciler that dies leaves its orders
//! to the others when the lease ends. Closing a key is idempotent, so settling an order twice would
//! do no harm either.

use std::time::Duration;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Meter},
};
use ordermesh::timestamp;
use tokio_util::sync::CancellationToken;

use crate::{
    cancel,
    payment_client::PaymentClient,
    relay::Relay,
    settle::{self, Settled},
    store::{OrderRow, Store, Writer, age_seconds},
};

/// Orders settled per round at most; a full round is followed by another at once.
const BATCH: i64 = 64;

/// Settings of the reconciler.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReconcilerSettings {
    /// How long an order must have been left alone (since a CreateOrder last tried to charge it)
    /// before the reconciler settles it.
    pub(crate) grace: Duration,
    /// How often it looks.
    pub(crate) interval: Duration,
    /// One try at settling a key at payment.
    pub(crate) settle_timeout: Duration,
}

/// The reconciler of one order replica. Clones share nothing but their handles.
#[derive(Debug, Clone)]
pub(crate) struct Reconciler {
    store: Store,
    payments: PaymentClient,
    relay: Relay,
    settings: ReconcilerSettings,
    /// This reconciler among the replicas' (logged, and written on the orders it leases).
    id: String,
    pending: Gauge<i64>,
    oldest: Gauge<f64>,
    settlements: Counter<u64>,
}

impl Reconciler {
    pub(crate) fn new(
        store: Store,
        payments: PaymentClient,
        relay: Relay,
        settings: ReconcilerSettings,
        meter: &Meter,
    ) -> Self {
        Self {
            store,
            payments,
            relay,
            settings,
            id: format!("reconciler_{}", uuid::Uuid::now_v7().simple()),
            pending: meter
                .i64_gauge("ordermesh.orders.pending")
                .with_description("Orders waiting for payment, by age: within_grace (a call may still settle them) or past_grace (the reconciler's to settle)")
                .build(),
            oldest: meter
                .f64_gauge("ordermesh.orders.pending.oldest_age")
                .with_unit("s")
                .with_description("Time since a CreateOrder last tried to charge the longest-waiting pending order (0 when none waits)")
                .build(),
            settlements: meter
                .u64_counter("ordermesh.reconciler.settlements")
                .with_description("Pending orders the reconciler settled, by outcome: paid, payment_failed, abandoned, unknown (payment could not say; tried again next round)")
                .build(),
        }
    }

    /// Settles pending orders every interval until `stop` is cancelled.
    pub(crate) async fn run(self, stop: CancellationToken) {
        tracing::info!(reconciler = %self.id, grace_ms = self.settings.grace.as_millis(), "reconciler started");
        loop {
            // A full round of settled orders may have left more behind: go again at once. Not
            // when some could not be settled (payment down): they are claimable again at once,
            // and going again would only ask payment the same in a tight loop.
            let settled = self.round(&stop).await;
            if settled >= BATCH as usize && !stop.is_cancelled() {
                continue;
            }
            tokio::select! {
                // Shutting down: the round in hand is done; leases on the rest run out.
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.settings.interval) => {}
            }
        }
        tracing::info!(reconciler = %self.id, "reconciler stopped");
    }

    /// One round: measure the pending orders, lease those past the grace period, settle each
    /// (until `stop`: the rest keep their lease until it runs out). Returns how many it settled.
    pub(crate) async fn round(&self, stop: &CancellationToken) -> usize {
        let grace = self.settings.grace;
        match self.store.pending_summary(grace).await {
            Ok((pending, idle, oldest_age_ms)) => {
                self.pending
                    .record(pending - idle, &[KeyValue::new("age", "within_grace")]);
                self.pending
                    .record(idle, &[KeyValue::new("age", "past_grace")]);
                self.oldest.record(age_seconds(oldest_age_ms), &[]);
            }
            Err(error) => tracing::warn!(%error, "cannot count pending orders"),
        }
        // Long enough for every order of a full round to be settled in turn, with room to spare.
        let lease = self.settings.settle_timeout * 2 * BATCH as u32 + Duration::from_secs(10);
        let orders = match self
            .store
            .claim_pending(&self.id, grace, lease, BATCH)
            .await
        {
            Ok(orders) => orders,
            Err(error) => {
                tracing::error!(%error, "cannot read pending orders");
                return 0;
            }
        };
        let mut settled = 0;
        for order in &orders {
            if stop.is_cancelled() {
                break;
            }
            settled += usize::from(self.settle(order).await);
        }
        settled + self.finish_cancels(grace, lease, stop).await
    }

    /// Finishes the cancels a CancelOrder left CANCELLING (payment could not refund then, or the
    /// process died) once `grace` has passed: the forward recovery of the compensation. Returns how
    /// many it finished.
    async fn finish_cancels(
        &self,
        grace: Duration,
        lease: Duration,
        stop: &CancellationToken,
    ) -> usize {
        let orders = match self
            .store
            .claim_cancelling(&self.id, grace, lease, BATCH)
            .await
        {
            Ok(orders) => orders,
            Err(error) => {
                tracing::error!(%error, "cannot read cancelling orders");
                return 0;
            }
        };
        let mut finished = 0;
        for order in orders {
            if stop.is_cancelled() {
                break;
            }
            let order_id = order.order_id.clone();
            match cancel::finish(
                &self.store,
                &self.payments,
                order,
                self.settings.settle_timeout,
                // No faults: the reconciler is how a cancel faulted on the call gets finished.
                &tonic::metadata::MetadataMap::new(),
            )
            .await
            {
                Ok(cancel::Finished::Cancelled(after)) => {
                    tracing::info!(order_id = %after.order_id, reconciler = %self.id, "cancel finished");
                    self.settlements
                        .add(1, &[KeyValue::new("outcome", "cancelled")]);
                    self.relay.wake();
                    finished += 1;
                }
                Ok(cancel::Finished::Waiting { detail, .. }) => {
                    tracing::warn!(%order_id, reconciler = %self.id, %detail, "cannot refund now; next round tries again");
                    // Given up, so that the next round (of any replica) takes it at once.
                    if let Err(error) = self.store.release_claim(&order_id, &self.id).await {
                        tracing::warn!(%order_id, %error, "cannot give up the lease; it runs out by itself");
                    }
                }
                Err(error) => tracing::error!(%order_id, %error, "cannot record the cancel"),
            }
        }
        finished
    }

    /// Settles one leased order at payment and records the outcome; false if payment could not
    /// say what its key holds (the order is left for a later round).
    async fn settle(&self, order: &OrderRow) -> bool {
        // This host's clock against the database's: near enough for a log line, never for a lease.
        let waited_ms = timestamp::now_millis() - order.payment_attempted_at_ms;
        let reason = format!(
            "no charge reached payment within the grace period ({} ms after the last attempt); \
             the reconciler closed the charge key",
            self.settings.grace.as_millis()
        );
        let settled = settle::settle_key(
            &self.payments,
            &order.order_id,
            &reason,
            self.settings.settle_timeout,
        )
        .await;
        let writer = Writer::Reconciler { id: &self.id };
        let recorded = settle::record(&self.store, order, &settled, writer).await;
        self.settlements
            .add(1, &[KeyValue::new("outcome", settled.label())]);
        let known = !matches!(settled, Settled::Unknown(_));
        match (&settled, recorded) {
            (Settled::Unknown(detail), _) => {
                tracing::warn!(order_id = %order.order_id, reconciler = %self.id, %detail, "cannot settle pending order now; next round tries again");
                // Given up, so that the next round (of any replica) takes it at once.
                if let Err(error) = self.store.release_claim(&order.order_id, &self.id).await {
                    tracing::warn!(order_id = %order.order_id, %error, "cannot give up the lease; it runs out by itself");
                }
            }
            (_, Ok(Some(after))) => {
                tracing::info!(
                    order_id = %order.order_id,
                    request_id = %order.request_id,
                    outcome = settled.label(),
                    status = ?after.status,
                    waited_ms,
                    reconciler = %self.id,
                    "pending order settled"
                );
                if matches!(settled, Settled::Charged { .. }) {
                    self.relay.wake();
                }
            }
            (_, Ok(None)) => {}
            (_, Err(error)) => {
                tracing::error!(order_id = %order.order_id, %error, "cannot record the settlement; next round tries again");
            }
        }
        known
    }
}
