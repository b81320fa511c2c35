//! The outbox relay: the one publisher of order events.
//!
//! CreateOrder never publishes itself. It writes the event into the outbox in the transaction that
//! marks the order paid (so an order can never be paid without its event), wakes the relay, and waits
//! a bounded time for the broker's acknowledgement. The relay publishes pending rows oldest first
//! (idempotent producer, `acks=all`, keyed by order id) and marks them published. If the broker is
//! down the rows wait, CreateOrder answers with the event pending, and the relay keeps trying with
//! backoff; after a restart it starts with whatever is still pending.
//!
//! Every replica of the order service runs a relay, and on PostgreSQL they share one outbox. A relay
//! leases the rows of its round before it sends them (see `Store::claim_events`): the others skip
//! them, so an event is published once in the normal case, and each order's events leave in order.
//! A relay that dies mid-round leaves its rows to the others when the lease ends; they publish them
//! again, with the same event ids, which consumers recognise.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::join_all;
use opentelemetry::metrics::{Gauge, Meter};
use ordermesh::{events::CloudEventHeaders, timestamp};
use ordermesh_platform::trace_context;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    publisher::EventPublisher,
    store::{OutboxRow, Store, age_seconds},
};

/// Rows published per round.
const BATCH: i64 = 256;
/// How often the relay looks at the outbox without being woken: a safety net, not the fast path.
const POLL: Duration = Duration::from_secs(1);
/// Longest wait between rounds while the broker keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a caller waiting for its event looks at the order too: another replica's relay may
/// publish it, and then nothing here wakes the caller.
const PUBLISHED_CHECK: Duration = Duration::from_millis(100);

/// Callers waiting for their event, by event id; each is sent the time the acknowledgement was
/// recorded on its order (None if it could not be recorded).
type Waiters = Arc<Mutex<WaiterMap>>;
type WaiterMap = HashMap<String, Vec<oneshot::Sender<Option<i64>>>>;

/// A handle on the relay: wake it, or wait for an event to be published.
#[derive(Debug, Clone)]
pub(crate) struct Relay {
    store: Store,
    /// This relay among the replicas' relays (logged with the rows it leases).
    id: Arc<str>,
    /// How long the rows of a round stay leased: longer than a round can take (its sends are
    /// bounded by the producer's message timeout), so a live relay never loses its rows mid-round.
    lease: Duration,
    wake: Arc<Notify>,
    waiters: Waiters,
    backlog: Gauge<i64>,
    oldest: Gauge<f64>,
}

impl Relay {
    /// A relay whose sends are acknowledged or given up within `publish_timeout`.
    pub(crate) fn new(store: Store, publish_timeout: Duration, meter: &Meter) -> Self {
        Self {
            store,
            id: format!("relay_{}", uuid::Uuid::now_v7().simple()).into(),
            lease: publish_timeout * 2 + Duration::from_secs(10),
            wake: Arc::new(Notify::new()),
            waiters: Waiters::default(),
            backlog: meter
                .i64_gauge("ordermesh.outbox.backlog")
                .with_description("Events in the outbox not yet acknowledged by Kafka (measured at most every second)")
                .build(),
            // What the outbox alert watches: a backlog that drains is fine however large, an
            // event that has waited minutes means the broker has not taken anything for minutes.
            oldest: meter
                .f64_gauge("ordermesh.outbox.oldest_age")
                .with_unit("s")
                .with_description("Time since the oldest event still in the outbox was written (0 when none waits; measured with the backlog)")
                .build(),
        }
    }

    /// Records the outbox backlog and the age of its oldest event; returns the backlog.
    async fn measure_backlog(&self) -> Option<i64> {
        match self.store.outbox_summary().await {
            Ok((backlog, oldest_age_ms)) => {
                self.backlog.record(backlog, &[]);
                self.oldest.record(age_seconds(oldest_age_ms), &[]);
                Some(backlog)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot count the outbox backlog");
                None
            }
        }
    }

    /// Has the relay look at the outbox now (a new event is in it).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits up to `timeout` for the event of `order_id` to be acknowledged by the broker, and
    /// returns when that was recorded on the order (its `event_published_at_ms`). None if it is
    /// still pending then (it stays in the outbox and is published later).
    pub(crate) async fn published(
        &self,
        order_id: &str,
        event_id: &str,
        timeout: Duration,
    ) -> Option<i64> {
        let (tx, mut rx) = oneshot::channel();
        self.lock().entry(event_id.to_owned()).or_default().push(tx);
        self.wake.notify_one();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Published already (before we started listening, or by another replica's relay)?
            if let Ok(Some(order)) = self.store.get(order_id).await
                && order.event_published_at_ms.is_some()
            {
                return order.event_published_at_ms;
            }
            let check = (tokio::time::Instant::now() + PUBLISHED_CHECK).min(deadline);
            tokio::select! {
                woken = &mut rx => return woken.ok().flatten(),
                _ = tokio::time::sleep_until(check) => {
                    if check == deadline {
                        return None;
                    }
                }
            }
        }
    }

    /// Publishes pending events until `stop` is cancelled, finishing the round in hand.
    pub(crate) async fn run(self, publisher: EventPublisher, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        if let Some(backlog @ 1..) = self.measure_backlog().await {
            tracing::info!(
                backlog,
                "outbox has events to publish from before the start"
            );
        }
        let mut measured = Instant::now();
        loop {
            let batch = match self.store.claim_events(&self.id, self.lease, BATCH).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(%error, "cannot read the outbox");
                    Vec::new()
                }
            };
            let failed = if batch.is_empty() {
                false
            } else {
                self.publish(&publisher, batch).await
            };
            // The gauge is kept fresh without a COUNT per event under load.
            let backlog = if failed || measured.elapsed() >= POLL {
                measured = Instant::now();
                self.measure_backlog().await
            } else {
                None
            };
            let pause = if failed {
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if let Some(backlog) = backlog {
                    tracing::warn!(
                        backlog,
                        retry_in_ms = pause.as_millis(),
                        "outbox backlog: events waiting for the broker"
                    );
                }
                pause
            } else {
                backoff = Duration::from_millis(100);
                POLL
            };
            tokio::select! {
                // Shutting down: the round in hand is done, the rest stays in the outbox.
                _ = stop.cancelled() => break,
                // New events (or someone waiting for one): go again now, unless the broker is
                // failing, when the backoff applies.
                _ = self.wake.notified(), if !failed => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Publishes one round; true if any event failed.
    async fn publish(&self, publisher: &EventPublisher, batch: Vec<OutboxRow>) -> bool {
        // All sends start together and are acknowledged in order per partition (the producer is
        // idempotent), which is the order per order id.
        let sends = batch.iter().map(|row| async move {
            let headers = CloudEventHeaders::of(
                &row.event_type,
                &row.event_id,
                &row.order_id,
                row.created_at_ms,
            );
            let stored = trace_context::from_json(row.trace_context.as_deref());
            let parent =
                trace_context::from_headers(stored.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            publisher
                .publish(&row.order_id, &row.payload, &headers, parent)
                .await
                .map_err(|e| e.to_string())
        });
        let results = join_all(sends).await;
        let mut failed = false;
        let mut published = Vec::with_capacity(batch.len());
        for (row, result) in batch.iter().zip(results) {
            match result {
                Ok(at) => {
                    tracing::debug!(order_id = %row.order_id, event_id = %row.event_id, ce_type = %row.event_type, partition = at.partition, offset = at.offset, relay = %self.id, "event published");
                    published.push(row);
                }
                Err(error) => {
                    failed = true;
                    tracing::warn!(event_id = %row.event_id, ce_type = %row.event_type, %error, "event not acknowledged, will retry");
                    let _ = self.store.mark_failed_attempt(row, &error).await;
                }
            }
        }
        let now_ms = timestamp::now_millis();
        let marked = match self.store.mark_published(&published, now_ms).await {
            Ok(()) => Some(now_ms),
            Err(error) => {
                // Published but not marked: they will be published again, with the same event
                // ids, which consumers recognise.
                tracing::error!(%error, events = published.len(), "cannot mark events published");
                None
            }
        };
        let mut waiters = self.lock();
        for row in &published {
            for waiter in waiters.remove(&row.event_id).unwrap_or_default() {
                let _ = waiter.send(marked);
            }
        }
        // Waiters whose caller gave up are dropped here, so the map cannot grow during an outage.
        waiters.retain(|_, senders| {
            senders.retain(|s| !s.is_closed());
            !senders.is_empty()
        });
        failed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WaiterMap> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
