//! Every SQL statement of the order service. Each operation is one unit of work
//! ([`ordermesh_platform::unit_of_work`]), on the SQLite writer thread or on a PostgreSQL
//! connection; a settlement with its outbox event in one transaction.

use ordermesh_platform::{
    batch_sql,
    db::{Backend, Migrations, millis},
    unit_of_work::{Conn, Db, Param, Row},
};
use serde::{Deserialize, Serialize};
use std::{sync::Arc, time::Duration};

/// An order's status as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    PendingPayment,
    Paid,
    PaymentFailed,
    /// Not paid, and never to be: payment holds no charge for it and its charge key is closed.
    Abandoned,
    /// Paid, and being cancelled: stored before payment is asked to refund, so a cancel cut short
    /// is finished later (forward recovery) rather than left half done.
    Cancelling,
    /// Cancelled: the charge is refunded and the OrderCancelled event is in the outbox.
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::PendingPayment => "PENDING_PAYMENT",
            Status::Paid => "PAID",
            Status::PaymentFailed => "PAYMENT_FAILED",
            Status::Abandoned => "ABANDONED",
            Status::Cancelling => "CANCELLING",
            Status::Cancelled => "CANCELLED",
        }
    }

    fn parse(s: &str) -> Result<Self, sqlx::Error> {
        match s {
            "PENDING_PAYMENT" => Ok(Status::PendingPayment),
            "PAID" => Ok(Status::Paid),
            "PAYMENT_FAILED" => Ok(Status::PaymentFailed),
            "ABANDONED" => Ok(Status::Abandoned),
            "CANCELLING" => Ok(Status::Cancelling),
            "CANCELLED" => Ok(Status::Cancelled),
            other => Err(sqlx::Error::Decode(
                format!("unknown order status {other:?}").into(),
            )),
        }
    }
}

/// A line item as stored in `items_json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ItemRecord {
    pub(crate) sku: String,
    pub(crate) quantity: i32,
    pub(crate) currency_code: String,
    pub(crate) unit_minor_units: i64,
}

/// An event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboxRow {
    pub(crate) seq: i64,
    pub(crate) event_id: String,
    pub(crate) order_id: String,
    pub(crate) payload: Vec<u8>,
    /// When the event happened (the order paid, or cancelled): its `ce_time`.
    pub(crate) created_at_ms: i64,
    /// The trace context of the call that paid the order, as JSON (see `ordermesh_platform::trace_context`).
    pub(crate) trace_context: Option<String>,
    /// The event's `ce_type` (rows written before there was more than one type are OrderPlaced).
    pub(crate) event_type: String,
}

/// What marking an order paid records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paid<'a> {
    pub(crate) payment_id: &'a str,
    pub(crate) event_id: &'a str,
    pub(crate) trace_context: Option<&'a str>,
    pub(crate) now_ms: i64,
}

/// Who writes a settlement (PENDING_PAYMENT to an end state), for the write's condition.
///
/// Every settlement writes what payment answered for the order's charge key, and what a key holds
/// never changes once stored (charged, declined or closed), so two writers of one order can only
/// agree; the first one's write counts and the other's changes nothing. The reconciler also writes
/// only while it holds its lease on the order (by the database's clock, in the write itself): a
/// reconciler that lost its claim changes nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Writer<'a> {
    /// The CreateOrder call that charged the order.
    Call,
    /// The reconciler `id`, while its lease is live.
    Reconciler { id: &'a str },
}

impl<'a> Writer<'a> {
    /// The claimant the row must name ('' for a call: no claim asked); bound to the last
    /// parameter of a settlement statement ([`settle_sql`]).
    fn claimant(self) -> &'a str {
        match self {
            Writer::Call => "",
            Writer::Reconciler { id } => id,
        }
    }
}

/// A settlement: `set` on an order that is still pending and, for the reconciler, still leased to
/// it now. `set` uses $1..$3; $4 is the order id, $5 the claimant.
fn settle_sql(backend: Backend, set: &str) -> String {
    let now = backend.now_millis_sql();
    format!(
        "UPDATE orders SET {set}
         WHERE order_id = $4 AND status = 'PENDING_PAYMENT'
           AND ($5 = '' OR (reconcile_claimed_by = $5 AND reconcile_claimed_until_ms > {now}))
         RETURNING *"
    )
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderRow {
    pub(crate) seq: i64,
    pub(crate) order_id: String,
    pub(crate) request_id: String,
    pub(crate) request_fingerprint: String,
    pub(crate) customer_email: String,
    pub(crate) customer_phone: String,
    pub(crate) items: Vec<ItemRecord>,
    pub(crate) currency_code: String,
    pub(crate) total_minor_units: i64,
    pub(crate) status: Status,
    pub(crate) payment_id: String,
    pub(crate) failure_reason: String,
    pub(crate) event_id: String,
    pub(crate) event_published_at_ms: Option<i64>,
    pub(crate) created_at_ms: i64,
    pub(crate) updated_at_ms: i64,
    /// When a CreateOrder last started to charge the order (its creation, at first).
    pub(crate) payment_attempted_at_ms: i64,
    /// Its cancellation, once one was asked for.
    pub(crate) cancel: Cancel,
}

/// A paid order's cancellation, as stored (empty until one is asked for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cancel {
    pub(crate) reason: String,
    /// When it was first asked for, by the database's clock.
    pub(crate) requested_at_ms: Option<i64>,
    /// Set once payment refunded the charge.
    pub(crate) refund_id: String,
    /// The OrderCancelled event's id, once cancelled.
    pub(crate) event_id: String,
    pub(crate) cancelled_at_ms: Option<i64>,
}

/// What marking an order cancelled records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cancelled<'a> {
    pub(crate) refund_id: &'a str,
    pub(crate) event_id: &'a str,
    pub(crate) trace_context: Option<&'a str>,
    pub(crate) now_ms: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: Db,
    sql: Arc<Statements>,
}

/// The statements whose text depends on the backend (its clock, its row locking), written once.
/// Every time a lease or the reconciler's grace period is measured against is the database's, read
/// in the statement itself: replicas on hosts whose clocks differ agree on every lease.
#[derive(Debug)]
struct Statements {
    insert_order: String,
    begin_payment: String,
    begin_cancel: String,
    claim_pending: String,
    claim_cancelling: String,
    pending_summary: String,
    outbox_summary: String,
    settle_paid: String,
    settle_failed: String,
    settle_abandoned: String,
    claim_events: String,
}

impl Statements {
    fn new(backend: Backend) -> Self {
        let now = backend.now_millis_sql();
        Self {
            insert_order: format!(
                "INSERT INTO orders (order_id, request_id, request_fingerprint, customer_email,
                     customer_phone, items_json, currency_code, total_minor_units, status,
                     created_at_ms, updated_at_ms, payment_attempted_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, {now})
                 ON CONFLICT (request_id) DO NOTHING
                 RETURNING *"
            ),
            begin_payment: format!(
                "UPDATE orders SET payment_attempted_at_ms = {now}
                 WHERE order_id = $1 AND status = 'PENDING_PAYMENT'"
            ),
            // The reconciler's lease is dropped: one left from settling the order while it was
            // pending (taken for a whole round, minutes, and not given back on settling) would
            // otherwise hold the reconciler off the cancel it must finish if the refund fails.
            // No lease on a CANCELLING order can exist yet: the order is PAID.
            begin_cancel: format!(
                "UPDATE orders SET status = 'CANCELLING', cancel_reason = $1,
                     cancel_requested_at_ms = {now}, updated_at_ms = $2,
                     reconcile_claimed_until_ms = NULL
                 WHERE order_id = $3 AND status = 'PAID'"
            ),
            claim_pending: claim_idle_sql(backend, "PENDING_PAYMENT", "payment_attempted_at_ms"),
            claim_cancelling: claim_idle_sql(backend, "CANCELLING", "cancel_requested_at_ms"),
            pending_summary: format!(
                "SELECT COUNT(*) AS pending,
                        COALESCE(SUM(CASE WHEN payment_attempted_at_ms <= {now} - $1 THEN 1 ELSE 0 END), 0) AS idle,
                        {now} - MIN(payment_attempted_at_ms) AS oldest_age_ms
                 FROM orders WHERE status = 'PENDING_PAYMENT'"
            ),
            // An event's created_at_ms is the order replica's clock, `now` the database's: on one
            // host the same clock, across hosts as far apart as the clocks are (seconds at most,
            // against an alert threshold of minutes).
            outbox_summary: format!(
                "SELECT COUNT(*) AS backlog, {now} - MIN(created_at_ms) AS oldest_age_ms
                 FROM outbox WHERE published_at_ms IS NULL"
            ),
            settle_paid: settle_sql(
                backend,
                "status = 'PAID', payment_id = $1, event_id = $2, updated_at_ms = $3",
            ),
            settle_failed: settle_sql(
                backend,
                "status = 'PAYMENT_FAILED', payment_id = $1, failure_reason = $2, updated_at_ms = $3",
            ),
            settle_abandoned: settle_sql(
                backend,
                "status = 'ABANDONED', payment_id = $1, failure_reason = $2, updated_at_ms = $3",
            ),
            claim_events: claim_events_sql(backend),
        }
    }
}

/// [`Store::claim_events`]: lease rows nobody holds for `$2` milliseconds, oldest first, none behind
/// an unpublished row of the same order. Leases are read and written on the database's clock, so
/// relays on hosts whose clocks differ agree on when one ends. PostgreSQL locks the rows it takes
/// (`FOR UPDATE SKIP LOCKED`); SQLite runs one writer at a time.
/// The row locking of a claim's inner SELECT: PostgreSQL skips rows another claimant has locked,
/// so claimants at the same moment take disjoint rows; SQLite runs one writer at a time.
fn row_lock(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    }
}

fn claim_events_sql(backend: Backend) -> String {
    let now = backend.now_millis_sql();
    let lock = row_lock(backend);
    format!(
        "UPDATE outbox SET claimed_by = $1, claimed_until_ms = {now} + $2
         WHERE seq IN (
             SELECT seq FROM outbox o
             WHERE o.published_at_ms IS NULL
               AND (o.claimed_until_ms IS NULL OR o.claimed_until_ms <= {now})
               AND NOT EXISTS (
                   SELECT 1 FROM outbox earlier
                   WHERE earlier.order_id = o.order_id AND earlier.seq < o.seq
                     AND earlier.published_at_ms IS NULL)
             ORDER BY seq LIMIT $3 {lock})
           AND published_at_ms IS NULL
           AND (claimed_until_ms IS NULL OR claimed_until_ms <= {now})
         RETURNING seq, event_id, order_id, payload, created_at_ms, trace_context, event_type"
    )
}

/// [`Store::claim_pending`] and [`Store::claim_cancelling`]: lease orders in `status` whose
/// `since` (when a call last worked on them) is `$3` milliseconds old and that nobody holds, for
/// `$2` milliseconds, longest idle first. PostgreSQL locks the rows it takes (`FOR UPDATE SKIP
/// LOCKED`) and the conditions are checked again on them. (Parameters first appear in number
/// order: SQLite numbers them as they appear.)
fn claim_idle_sql(backend: Backend, status: &str, since: &str) -> String {
    let now = backend.now_millis_sql();
    let lock = row_lock(backend);
    format!(
        "UPDATE orders SET reconcile_claimed_by = $1, reconcile_claimed_until_ms = {now} + $2
         WHERE seq IN (
             SELECT seq FROM orders
             WHERE status = '{status}'
               AND (reconcile_claimed_until_ms IS NULL OR reconcile_claimed_until_ms <= {now})
               AND {since} <= {now} - $3
             ORDER BY {since} LIMIT $4 {lock})
           AND status = '{status}'
           AND (reconcile_claimed_until_ms IS NULL OR reconcile_claimed_until_ms <= {now})
           AND {since} <= {now} - $3
         RETURNING *"
    )
}

/// The order service's schema, for SQLite and for PostgreSQL.
pub(crate) fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

impl Store {
    pub(crate) fn new(db: Db) -> Self {
        let sql = Arc::new(Statements::new(db.backend()));
        Self { db, sql }
    }

    /// Stores `new` (a PENDING_PAYMENT order) unless an order with its request_id exists, and returns
    /// whichever row holds the request_id now. The unique constraint decides races. Its first charge
    /// attempt is timed by the database's clock, as the reconciler's grace period is measured.
    pub(crate) async fn insert_or_get(&self, new: &OrderRow) -> Result<OrderRow, sqlx::Error> {
        let items =
            serde_json::to_string(&new.items).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let params: Vec<Param> = vec![
            new.order_id.as_str().into(),
            new.request_id.as_str().into(),
            new.request_fingerprint.as_str().into(),
            new.customer_email.as_str().into(),
            new.customer_phone.as_str().into(),
            items.into(),
            new.currency_code.as_str().into(),
            new.total_minor_units.into(),
            new.status.as_str().into(),
            new.created_at_ms.into(),
            new.updated_at_ms.into(),
        ];
        let sql = Arc::clone(&self.sql);
        self.db
            .statements(move |conn| {
                Box::pin(async move {
                    // The new row comes back from the INSERT itself; only a request id seen
                    // before needs the SELECT.
                    let inserted = conn.fetch_optional(&sql.insert_order, &params).await?;
                    match inserted {
                        Some(row) => from_row(&row),
                        None => {
                            one_order(
                                conn,
                                "SELECT * FROM orders WHERE request_id = $1",
                                &params[1],
                            )
                            .await
                        }
                    }
                })
            })
            .await
    }

    /// PENDING_PAYMENT -> PAID with the payment, and the order's event into the outbox, in one
    /// transaction: only one request can make the transition, and a paid order always has its event.
    /// `event` builds the event from the paid order. Returns the order as it is afterwards.
    pub(crate) async fn mark_paid(
        &self,
        order_id: &str,
        paid: Paid<'_>,
        writer: Writer<'_>,
        event: impl FnOnce(&OrderRow) -> Result<Vec<u8>, sqlx::Error> + Send + 'static,
    ) -> Result<OrderRow, sqlx::Error> {
        let Paid {
            payment_id,
            event_id,
            trace_context,
            now_ms,
        } = paid;
        let settle: Vec<Param> = vec![
            payment_id.into(),
            event_id.into(),
            now_ms.into(),
            order_id.into(),
            writer.claimant().into(),
        ];
        let new_event = OwnedEvent {
            event_id: event_id.to_owned(),
            order_id: order_id.to_owned(),
            at_ms: now_ms,
            trace_context: trace_context.map(str::to_owned),
            ce_type: ordermesh::events::ORDER_PLACED_TYPE,
        };
        let sql = Arc::clone(&self.sql);
        self.db
            .transaction(move |conn| {
                Box::pin(async move {
                    // The paid row comes back from the UPDATE (RETURNING); none means another
                    // writer settled the order first, and it is read as that writer left it.
                    let paid_now = conn.fetch_optional(&sql.settle_paid, &settle).await?;
                    let Some(row) = paid_now else {
                        return one_order(conn, ORDER_BY_ID, &settle[3]).await;
                    };
                    let order = from_row(&row)?;
                    let payload = event(&order)?;
                    insert_event(conn, new_event, payload).await?;
                    Ok(order)
                })
            })
            .await
    }

    /// PENDING_PAYMENT -> PAYMENT_FAILED with the declined payment and the reason. Returns the
    /// order as it is afterwards.
    pub(crate) async fn mark_failed(
        &self,
        order_id: &str,
        payment_id: &str,
        reason: &str,
        now_ms: i64,
        writer: Writer<'_>,
    ) -> Result<OrderRow, sqlx::Error> {
        self.settle(
            self.sql.settle_failed.clone(),
            [payment_id, reason],
            now_ms,
            order_id,
            writer,
        )
        .await
    }

    /// PENDING_PAYMENT -> ABANDONED with the reason, once payment closed the order's charge key
    /// with no charge under it. Returns the order as it is afterwards.
    pub(crate) async fn mark_abandoned(
        &self,
        order_id: &str,
        reason: &str,
        now_ms: i64,
        writer: Writer<'_>,
    ) -> Result<OrderRow, sqlx::Error> {
        self.settle(
            self.sql.settle_abandoned.clone(),
            ["", reason],
            now_ms,
            order_id,
            writer,
        )
        .await
    }

    /// PAID -> CANCELLING with `reason`, stamped by the database's clock; the first reason stays.
    /// Returns the order as it is afterwards (CANCELLING or CANCELLED if a cancel was asked for
    /// before, unchanged if it is not paid).
    pub(crate) async fn begin_cancel(
        &self,
        order_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<OrderRow, sqlx::Error> {
        let params: Vec<Param> = vec![reason.into(), now_ms.into(), order_id.into()];
        let sql = Arc::clone(&self.sql);
        self.db
            .statements(move |conn| {
                Box::pin(async move {
                    conn.execute(&sql.begin_cancel, &params).await?;
                    one_order(conn, ORDER_BY_ID, &params[2]).await
                })
            })
            .await
    }

    /// CANCELLING -> CANCELLED with the refund, and the OrderCancelled event into the outbox, in
    /// one transaction: only one writer can make the transition (two replicas finishing the same
    /// cancel write one event), and a cancelled order always has its event. `event` builds the
    /// event from the cancelled order. Returns the order as it is afterwards.
    pub(crate) async fn mark_cancelled(
        &self,
        order_id: &str,
        cancelled: Cancelled<'_>,
        event: impl FnOnce(&OrderRow) -> Result<Vec<u8>, sqlx::Error> + Send + 'static,
    ) -> Result<OrderRow, sqlx::Error> {
        let params: Vec<Param> = vec![
            cancelled.refund_id.into(),
            cancelled.event_id.into(),
            cancelled.now_ms.into(),
            order_id.into(),
        ];
        let new_event = OwnedEvent {
            event_id: cancelled.event_id.to_owned(),
            order_id: order_id.to_owned(),
            at_ms: cancelled.now_ms,
            trace_context: cancelled.trace_context.map(str::to_owned),
            ce_type: ordermesh::events::ORDER_CANCELLED_TYPE,
        };
        self.db
            .transaction(move |conn| {
                Box::pin(async move {
                    let changed = conn
                        .execute(
                            "UPDATE orders SET status = 'CANCELLED', refund_id = $1,
                                 cancel_event_id = $2, cancelled_at_ms = $3, updated_at_ms = $3,
                                 reconcile_claimed_until_ms = NULL
                             WHERE order_id = $4 AND status = 'CANCELLING'",
                            &params,
                        )
                        .await?;
                    let order = one_order(conn, ORDER_BY_ID, &params[3]).await?;
                    if changed == 1 {
                        let payload = event(&order)?;
                        insert_event(conn, new_event, payload).await?;
                    }
                    Ok(order)
                })
            })
            .await
    }

    /// Runs one of the settlement statements without an event, and reads the order back.
    async fn settle(
        &self,
        sql: String,
        [first, second]: [&str; 2],
        now_ms: i64,
        order_id: &str,
        writer: Writer<'_>,
    ) -> Result<OrderRow, sqlx::Error> {
        let params: Vec<Param> = vec![
            first.into(),
            second.into(),
            now_ms.into(),
            order_id.into(),
            writer.claimant().into(),
        ];
        self.db
            .statements(move |conn| {
                Box::pin(async move {
                    match conn.fetch_optional(&sql, &params).await? {
                        Some(row) => from_row(&row),
                        None => one_order(conn, ORDER_BY_ID, &params[3]).await,
                    }
                })
            })
            .await
    }

    /// Records that a CreateOrder starts to charge the pending order now: the reconciler leaves it
    /// alone for its grace period from here. False if the order is no longer pending.
    pub(crate) async fn begin_payment(&self, order_id: &str) -> Result<bool, sqlx::Error> {
        let changed = self
            .execute(self.sql.begin_payment.clone(), vec![order_id.into()])
            .await?;
        Ok(changed == 1)
    }

    /// Leases up to `limit` pending orders that no CreateOrder has tried to charge for `grace` to
    /// reconciler `reconciler` for `lease`, longest idle first, and returns them. Orders under
    /// another reconciler's live lease are left to it; a lease that ends (its reconciler died)
    /// frees the order again. On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets replicas claiming at
    /// once take disjoint orders; the conditions are checked again on the row.
    pub(crate) async fn claim_pending(
        &self,
        reconciler: &str,
        grace: Duration,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<OrderRow>, sqlx::Error> {
        let mut rows = self
            .orders(
                self.sql.claim_pending.clone(),
                vec![
                    reconciler.into(),
                    millis(lease).into(),
                    millis(grace).into(),
                    limit.into(),
                ],
            )
            .await?;
        rows.sort_by_key(|row| row.payment_attempted_at_ms);
        Ok(rows)
    }

    /// Leases up to `limit` CANCELLING orders whose cancel was asked for at least `grace` ago to
    /// reconciler `reconciler` for `lease`, longest waiting first: cancels a call could not finish
    /// (payment could not refund then, or the process died), for the reconciler to finish.
    pub(crate) async fn claim_cancelling(
        &self,
        reconciler: &str,
        grace: Duration,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<OrderRow>, sqlx::Error> {
        self.orders(
            self.sql.claim_cancelling.clone(),
            vec![
                reconciler.into(),
                millis(lease).into(),
                millis(grace).into(),
                limit.into(),
            ],
        )
        .await
    }

    /// Gives up reconciler `reconciler`'s lease on an order, if it still holds it.
    pub(crate) async fn release_claim(
        &self,
        order_id: &str,
        reconciler: &str,
    ) -> Result<(), sqlx::Error> {
        self.execute(
            "UPDATE orders SET reconcile_claimed_until_ms = NULL
             WHERE order_id = $1 AND reconcile_claimed_by = $2"
                .to_owned(),
            vec![order_id.into(), reconciler.into()],
        )
        .await?;
        Ok(())
    }

    /// Pending orders: how many, how many have been left alone for `grace`, and how long ago the
    /// longest-idle one was last tried, in milliseconds (None when none is pending).
    pub(crate) async fn pending_summary(
        &self,
        grace: Duration,
    ) -> Result<(i64, i64, Option<i64>), sqlx::Error> {
        let sql = Arc::clone(&self.sql);
        let grace = Param::from(millis(grace));
        self.db
            .statements(move |conn| {
                Box::pin(async move {
                    let row = conn
                        .fetch_optional(&sql.pending_summary, std::slice::from_ref(&grace))
                        .await?
                        .ok_or(sqlx::Error::RowNotFound)?;
                    Ok((
                        row.get("pending")?,
                        row.get("idle")?,
                        row.get("oldest_age_ms")?,
                    ))
                })
            })
            .await
    }

    /// Deletes a PENDING_PAYMENT order whose request payment refused (nothing was charged).
    pub(crate) async fn discard_pending(&self, order_id: &str) -> Result<(), sqlx::Error> {
        self.execute(
            "DELETE FROM orders WHERE order_id = $1 AND status = 'PENDING_PAYMENT'".to_owned(),
            vec![order_id.into()],
        )
        .await?;
        Ok(())
    }

    /// Leases up to `limit` unpublished outbox rows to relay `relay` for `lease`, oldest first,
    /// and returns them. Rows under another relay's live lease are left to it, and so is every later
    /// row of an order whose earlier row is still unpublished, so each order's events go out in order
    /// whichever relays run. A lease that ends (its relay died, or is stuck) frees the rows again.
    ///
    /// On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets relays claiming at the same moment take disjoint
    /// rows instead of queueing behind each other, and the lease is checked again on the locked row.
    /// SQLite runs one writer at a time, so the claim is atomic there as it is.
    pub(crate) async fn claim_events(
        &self,
        relay: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, sqlx::Error> {
        let sql = Arc::clone(&self.sql);
        let params: Vec<Param> = vec![relay.into(), millis(lease).into(), limit.into()];
        let mut rows = self
            .db
            .statements(move |conn| {
                Box::pin(async move {
                    conn.fetch_all(&sql.claim_events, &params)
                        .await?
                        .iter()
                        .map(outbox_from_row)
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .await?;
        rows.sort_by_key(|row| row.seq);
        Ok(rows)
    }

    /// Records that the broker acknowledged `events`, on their outbox rows and on their orders,
    /// in one transaction: two statements for the relay's whole batch instead of a transaction per
    /// event (the relay marks a batch once every send in it has been answered anyway).
    pub(crate) async fn mark_published(
        &self,
        events: &[&OutboxRow],
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        // $1 is the time, then one parameter per event: numbered, never spliced from data. A few
        // shapes of each statement, each prepared once and kept (see `batch_sql`).
        let statements: Vec<(String, Vec<Param>, String, Vec<Param>)> =
            batch_sql::chunks(events, EVENTS_PER_STATEMENT)
                .map(|chunk| {
                    let list = batch_sql::placeholders(2, chunk.len());
                    let outbox = format!(
                        "UPDATE outbox SET published_at_ms = $1, attempts = attempts + 1,
                             claimed_until_ms = NULL
                         WHERE seq IN ({list})"
                    );
                    let orders = format!(
                        "UPDATE orders SET event_published_at_ms = $1
                         WHERE order_id IN ({list}) AND event_published_at_ms IS NULL"
                    );
                    let seqs = std::iter::once(now_ms.into())
                        .chain(chunk.iter().map(|e| e.seq.into()))
                        .collect();
                    let order_ids = std::iter::once(now_ms.into())
                        .chain(chunk.iter().map(|e| e.order_id.as_str().into()))
                        .collect();
                    (outbox, seqs, orders, order_ids)
                })
                .collect();
        self.db
            .transaction(move |conn| {
                Box::pin(async move {
                    for (outbox, seqs, orders, order_ids) in &statements {
                        conn.execute(outbox, seqs).await?;
                        conn.execute(orders, order_ids).await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    /// Records a failed publish attempt, and gives up the row's lease so that any relay may try it
    /// again.
    pub(crate) async fn mark_failed_attempt(
        &self,
        event: &OutboxRow,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        self.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $1, claimed_until_ms = NULL
             WHERE seq = $2"
                .to_owned(),
            vec![error.into(), event.seq.into()],
        )
        .await?;
        Ok(())
    }

    /// The events waiting in the outbox: how many, and how long ago the oldest was written, in
    /// milliseconds (None when none waits).
    pub(crate) async fn outbox_summary(&self) -> Result<(i64, Option<i64>), sqlx::Error> {
        let sql = Arc::clone(&self.sql);
        self.db
            .statements(move |conn| {
                Box::pin(async move {
                    let row = conn
                        .fetch_optional(&sql.outbox_summary, &[])
                        .await?
                        .ok_or(sqlx::Error::RowNotFound)?;
                    Ok((row.get("backlog")?, row.get("oldest_age_ms")?))
                })
            })
            .await
    }

    pub(crate) async fn get(&self, order_id: &str) -> Result<Option<OrderRow>, sqlx::Error> {
        Ok(self
            .orders(ORDER_BY_ID.to_owned(), vec![order_id.into()])
            .await?
            .pop())
    }

    /// Up to `limit` orders with `seq` greater than `after`, oldest first.
    pub(crate) async fn list(&self, after: i64, limit: i64) -> Result<Vec<OrderRow>, sqlx::Error> {
        self.orders(
            "SELECT * FROM orders WHERE seq > $1 ORDER BY seq LIMIT $2".to_owned(),
            vec![after.into(), limit.into()],
        )
        .await
    }

    /// The orders `sql` returns for `params`.
    async fn orders(&self, sql: String, params: Vec<Param>) -> Result<Vec<OrderRow>, sqlx::Error> {
        self.db.fetch_all(sql, params, from_row).await
    }

    /// Runs the one statement `sql` with `params`; returns how many rows it changed.
    async fn execute(&self, sql: String, params: Vec<Param>) -> Result<u64, sqlx::Error> {
        self.db.execute(sql, params).await
    }
}

/// An age the store measured in milliseconds (`oldest_age_ms` of [`Store::pending_summary`] and
/// [`Store::outbox_summary`]) as a gauge records it: seconds, 0 when nothing waits, and 0 for an
/// age below zero (the writer's clock and the database's a little apart).
pub(crate) fn age_seconds(age_ms: Option<i64>) -> f64 {
    age_ms.map_or(0.0, |ms| ms.max(0) as f64 / 1000.0)
}

/// Most events per statement marking a relay batch published (a power of two: see `batch_sql`);
/// the relay's batch of 256 is two of each statement.
const EVENTS_PER_STATEMENT: usize = 128;

const ORDER_BY_ID: &str = "SELECT * FROM orders WHERE order_id = $1";

/// The one order `sql` finds for `key`, as the operation's connection sees it.
async fn one_order(conn: &mut dyn Conn, sql: &str, key: &Param) -> Result<OrderRow, sqlx::Error> {
    let row = conn
        .fetch_optional(sql, std::slice::from_ref(key))
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    from_row(&row)
}

/// An event for the outbox, written in the unit that changed its order.
struct OwnedEvent {
    event_id: String,
    order_id: String,
    /// When it happened: its `ce_time`.
    at_ms: i64,
    trace_context: Option<String>,
    ce_type: &'static str,
}

async fn insert_event(
    conn: &mut dyn Conn,
    event: OwnedEvent,
    payload: Vec<u8>,
) -> Result<(), sqlx::Error> {
    conn.execute(
        "INSERT INTO outbox (event_id, order_id, payload, created_at_ms, trace_context, event_type)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            event.event_id.into(),
            event.order_id.into(),
            payload.into(),
            event.at_ms.into(),
            event.trace_context.into(),
            event.ce_type.into(),
        ],
    )
    .await?;
    Ok(())
}

fn outbox_from_row(row: &Row) -> Result<OutboxRow, sqlx::Error> {
    Ok(OutboxRow {
        seq: row.get("seq")?,
        event_id: row.get("event_id")?,
        order_id: row.get("order_id")?,
        payload: row.get("payload")?,
        created_at_ms: row.get("created_at_ms")?,
        trace_context: row.get("trace_context")?,
        event_type: row.get("event_type")?,
    })
}

fn from_row(row: &Row) -> Result<OrderRow, sqlx::Error> {
    let items: String = row.get("items_json")?;
    Ok(OrderRow {
        seq: row.get("seq")?,
        order_id: row.get("order_id")?,
        request_id: row.get("request_id")?,
        request_fingerprint: row.get("request_fingerprint")?,
        customer_email: row.get("customer_email")?,
        customer_phone: row.get("customer_phone")?,
        items: serde_json::from_str(&items).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        currency_code: row.get("currency_code")?,
        total_minor_units: row.get("total_minor_units")?,
        status: Status::parse(&row.get::<String>("status")?)?,
        payment_id: row.get("payment_id")?,
        failure_reason: row.get("failure_reason")?,
        event_id: row.get("event_id")?,
        event_published_at_ms: row.get("event_published_at_ms")?,
        created_at_ms: row.get("created_at_ms")?,
        updated_at_ms: row.get("updated_at_ms")?,
        payment_attempted_at_ms: row.get("payment_attempted_at_ms")?,
        cancel: Cancel {
            reason: row.get("cancel_reason")?,
            requested_at_ms: row.get("cancel_requested_at_ms")?,
            refund_id: row.get("refund_id")?,
            event_id: row.get("cancel_event_id")?,
            cancelled_at_ms: row.get("cancelled_at_ms")?,
        },
    })
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
