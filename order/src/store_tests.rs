//! The reconciler's and the outbox relay's leases and the settlement's conditions, on both
//! backends: what several order replicas sharing one database rely on to settle each pending order
//! once and publish each event once, and what makes a writer that lost its claim change nothing.

use std::time::Duration;

use ordermesh_platform::unit_of_work::Db;
use ordermesh_testkit::{Backend, Databases, on_both_backends};

use super::*;

/// A store on a fresh database, with what keeps a PostgreSQL server alive; None to skip.
async fn store(backend: Backend) -> Option<(Store, Option<Databases>)> {
    let (url, databases) = ordermesh_testkit::unit_database(backend, "order").await?;
    let db = Db::open(&url, &migrations()).await.expect("database");
    Some((Store::new(db), databases))
}

/// A pending order, its charge last attempted now (by the database's clock), or `idle` ago.
async fn pending(store: &Store, id: &str, idle: Duration) -> OrderRow {
    let row = OrderRow {
        seq: 0,
        order_id: id.to_owned(),
        request_id: format!("req-{id}"),
        request_fingerprint: "fp".into(),
        customer_email: "ada@example.com".into(),
        customer_phone: "+14155550100".into(),
        items: Vec::new(),
        currency_code: "USD".into(),
        total_minor_units: 500,
        status: Status::PendingPayment,
        payment_id: String::new(),
        failure_reason: String::new(),
        event_id: String::new(),
        event_published_at_ms: None,
        created_at_ms: NOW,
        updated_at_ms: NOW,
        payment_attempted_at_ms: NOW,
        cancel: Cancel::default(),
    };
    store.insert_or_get(&row).await.expect("insert");
    // Times are the database's: a test cannot wait a grace period, so it moves the attempt back.
    store
        .execute(
            "UPDATE orders SET payment_attempted_at_ms = payment_attempted_at_ms - $1
             WHERE order_id = $2"
                .to_owned(),
            vec![super::millis(idle).into(), id.into()],
        )
        .await
        .expect("idle");
    store.get(id).await.expect("read").expect("stored")
}

/// Stored times the tests write themselves (a settlement's `updated_at_ms`); leases and the grace
/// period are measured on the database's clock.
const NOW: i64 = 1_000_000;
const GRACE: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(60);
/// A lease short enough to see end: the tests sleep past it.
const SHORT: Duration = Duration::from_millis(1_500);

#[on_both_backends]
#[tokio::test]
async fn a_reconciler_takes_only_idle_orders_and_none_leased_to_another(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    pending(&store, "ord_idle", 2 * GRACE).await;
    pending(&store, "ord_fresh", Duration::ZERO).await;

    let a = store
        .claim_pending("a", GRACE, SHORT, 10)
        .await
        .expect("claim");
    let b = store
        .claim_pending("b", GRACE, LEASE, 10)
        .await
        .expect("claim");
    let ids = |rows: &[OrderRow]| rows.iter().map(|r| r.order_id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&a),
        ["ord_idle"],
        "only the order past its grace period"
    );
    assert!(b.is_empty(), "leased to a: {b:?}");

    // a's lease runs out (a died): b takes the order.
    tokio::time::sleep(SHORT + Duration::from_millis(100)).await;
    let b = store
        .claim_pending("b", GRACE, LEASE, 10)
        .await
        .expect("claim");
    assert_eq!(ids(&b), ["ord_idle"]);
}

#[on_both_backends]
#[tokio::test]
async fn a_reconciler_that_lost_its_claim_changes_nothing(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let order = pending(&store, "ord_1", 2 * GRACE).await;
    let a = store
        .claim_pending("a", GRACE, SHORT, 10)
        .await
        .expect("claim");
    assert_eq!(a.len(), 1);
    // a stalls past its lease (by the database's clock): its write changes nothing, even before
    // another reconciler takes the order.
    tokio::time::sleep(SHORT + Duration::from_millis(100)).await;
    let stale = Writer::Reconciler { id: "a" };
    let after = store
        .mark_failed(&order.order_id, "pay_a", "a was late", NOW, stale)
        .await
        .expect("write");
    assert_eq!(after.status, Status::PendingPayment, "{after:?}");
    // b claims the order.
    let b = store
        .claim_pending("b", GRACE, LEASE, 10)
        .await
        .expect("claim");
    assert_eq!(b.len(), 1);

    // a, late, writes what it found: nothing changes.
    let after = store
        .mark_abandoned(&order.order_id, "a was late", NOW, stale)
        .await
        .expect("write");
    assert_eq!(after.status, Status::PendingPayment, "{after:?}");
    let after = store
        .mark_paid(
            &order.order_id,
            Paid {
                payment_id: "pay_a",
                event_id: "evt_a",
                trace_context: None,
                now_ms: NOW,
            },
            stale,
            |_| Ok(b"{}".to_vec()),
        )
        .await
        .expect("write");
    assert_eq!(after.status, Status::PendingPayment, "{after:?}");
    assert_eq!(
        store.outbox_summary().await.expect("backlog").0,
        0,
        "no event from a"
    );

    // b, holding the lease, settles it; then nobody else can.
    let current = Writer::Reconciler { id: "b" };
    let paid = store
        .mark_paid(
            &order.order_id,
            Paid {
                payment_id: "pay_b",
                event_id: "evt_b",
                trace_context: None,
                now_ms: NOW,
            },
            current,
            |_| Ok(b"{}".to_vec()),
        )
        .await
        .expect("write");
    assert_eq!(
        (paid.status, paid.payment_id.as_str()),
        (Status::Paid, "pay_b")
    );
    let again = store
        .mark_failed(&order.order_id, "pay_x", "declined", NOW, Writer::Call)
        .await
        .expect("write");
    assert_eq!(again.status, Status::Paid, "a settled order stays settled");
    assert_eq!(
        store.outbox_summary().await.expect("backlog").0,
        1,
        "one event, b's"
    );
}

#[on_both_backends]
#[tokio::test]
async fn a_call_starting_to_charge_holds_the_reconciler_off(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let order = pending(&store, "ord_1", 2 * GRACE).await;
    let (count, idle, oldest) = store.pending_summary(GRACE).await.expect("summary");
    assert_eq!((count, idle), (1, 1));
    assert!(
        oldest.is_some_and(|age| age >= super::millis(2 * GRACE)),
        "{oldest:?}"
    );
    assert!(store.begin_payment(&order.order_id).await.expect("write"));
    let claimed = store
        .claim_pending("a", GRACE, LEASE, 10)
        .await
        .expect("claim");
    assert!(claimed.is_empty(), "a call is charging it: {claimed:?}");
    let (count, idle, _) = store.pending_summary(GRACE).await.expect("summary");
    assert_eq!((count, idle), (1, 0), "within its grace again");
    // Settled orders are not charged again.
    store
        .mark_abandoned(&order.order_id, "given up", NOW, Writer::Call)
        .await
        .expect("write");
    assert!(!store.begin_payment(&order.order_id).await.expect("write"));
}

#[on_both_backends]
#[tokio::test]
async fn an_outbox_lease_holds_other_relays_off_until_it_ends_on_the_databases_clock(
    backend: Backend,
) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let order = pending(&store, "ord_1", Duration::ZERO).await;
    let paid = Paid {
        payment_id: "pay_1",
        event_id: "evt_1",
        trace_context: None,
        now_ms: NOW,
    };
    store
        .mark_paid(&order.order_id, paid, Writer::Call, |_| {
            Ok(b"event".to_vec())
        })
        .await
        .expect("paid");
    let long = Duration::from_secs(60);

    // Leased to a: b finds nothing while the lease lasts.
    let a = store.claim_events("a", long, 10).await.expect("claim");
    assert_eq!(a.len(), 1);
    assert!(
        store
            .claim_events("b", long, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    // a gives it up after a failed publish: b may take it, for no time at all ...
    store
        .mark_failed_attempt(&a[0], "broker down")
        .await
        .expect("give up");
    let b = store
        .claim_events("b", Duration::ZERO, 10)
        .await
        .expect("claim");
    assert_eq!(b.len(), 1);
    // ... so its lease has ended by the database's clock as soon as it is written.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store
            .claim_events("a", long, 10)
            .await
            .expect("claim")
            .len(),
        1
    );
}

#[on_both_backends]
#[tokio::test]
async fn a_relay_marks_the_acknowledged_part_of_its_batch_published_and_nothing_else(
    backend: Backend,
) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    for id in ["a", "b", "c"] {
        paid_with_event(&store, &format!("ord_{id}"), &format!("evt_{id}")).await;
    }
    let batch = store
        .claim_events("relay", Duration::from_secs(60), 10)
        .await
        .expect("claim");
    assert_eq!(batch.len(), 3);

    // The broker acknowledged a and c, not b.
    store
        .mark_published(&[&batch[0], &batch[2]], NOW + 5)
        .await
        .expect("marked");

    let published = |id: &'static str| {
        let store = &store;
        async move {
            let order = store.get(id).await.expect("read").expect("stored");
            order.event_published_at_ms
        }
    };
    assert_eq!(published("ord_a").await, Some(NOW + 5));
    assert_eq!(published("ord_b").await, None, "b was not acknowledged");
    assert_eq!(published("ord_c").await, Some(NOW + 5));
    // b's lease is the relay's still; once given up, b is the only event left to publish.
    store
        .mark_failed_attempt(&batch[1], "no answer")
        .await
        .expect("give up");
    let left = store
        .claim_events("relay", Duration::from_secs(60), 10)
        .await
        .expect("claim");
    assert_eq!(
        left.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
        ["evt_b"]
    );
    store
        .mark_published(&[], NOW)
        .await
        .expect("nothing to mark");
}

/// A paid order (its OrderPlaced, `evt_placed`, in the outbox).
async fn paid(store: &Store, id: &str) -> OrderRow {
    paid_with_event(store, id, "evt_placed").await
}

/// A paid order whose OrderPlaced in the outbox has the id `event_id`.
async fn paid_with_event(store: &Store, id: &str, event_id: &str) -> OrderRow {
    let order = pending(store, id, Duration::ZERO).await;
    let paid = Paid {
        payment_id: "pay_1",
        event_id,
        trace_context: None,
        now_ms: NOW,
    };
    store
        .mark_paid(&order.order_id, paid, Writer::Call, |_| {
            Ok(b"placed".to_vec())
        })
        .await
        .expect("paid")
}

fn cancelled(refund_id: &str) -> Cancelled<'_> {
    Cancelled {
        refund_id,
        event_id: "evt_cancelled",
        trace_context: None,
        now_ms: NOW + 1,
    }
}

#[on_both_backends]
#[tokio::test]
async fn a_paid_order_is_cancelled_once_with_one_event_whoever_finishes_it(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let order = paid(&store, "ord_1").await;

    // PAID -> CANCELLING: stored with the first reason, by the database's clock.
    let cancelling = store
        .begin_cancel(&order.order_id, "changed my mind", NOW)
        .await
        .expect("begin");
    assert_eq!(cancelling.status, Status::Cancelling);
    assert_eq!(cancelling.cancel.reason, "changed my mind");
    assert!(cancelling.cancel.requested_at_ms.is_some());
    let again = store
        .begin_cancel(&order.order_id, "another reason", NOW)
        .await
        .expect("begin");
    assert_eq!(
        (again.status, again.cancel.reason.as_str()),
        (Status::Cancelling, "changed my mind"),
        "a second cancel changes nothing"
    );

    // Two writers finish it (two replicas, or a call and the reconciler): one transition, one
    // OrderCancelled in the outbox, the first refund recorded.
    let first = store
        .mark_cancelled(&order.order_id, cancelled("ref_1"), |_| {
            Ok(b"cancelled".to_vec())
        })
        .await
        .expect("cancel");
    let second = store
        .mark_cancelled(&order.order_id, cancelled("ref_2"), |_| {
            Ok(b"again".to_vec())
        })
        .await
        .expect("cancel");
    assert_eq!(
        (first.status, first.cancel.refund_id.as_str()),
        (Status::Cancelled, "ref_1")
    );
    assert_eq!(second, first, "the second writer changed nothing");
    // In the outbox after the order's OrderPlaced, and not published before it.
    let types = |events: &[OutboxRow]| {
        events
            .iter()
            .map(|e| (e.event_id.clone(), e.event_type.clone(), e.payload.clone()))
            .collect::<Vec<_>>()
    };
    let lease = Duration::from_secs(60);
    let first_round = store
        .claim_events("relay", lease, 10)
        .await
        .expect("outbox");
    assert_eq!(
        types(&first_round),
        [(
            "evt_placed".to_owned(),
            ordermesh::events::ORDER_PLACED_TYPE.to_owned(),
            b"placed".to_vec()
        )]
    );
    store
        .mark_published(&[&first_round[0]], NOW)
        .await
        .expect("published");
    let second_round = store
        .claim_events("relay", lease, 10)
        .await
        .expect("outbox");
    assert_eq!(
        types(&second_round),
        [(
            "evt_cancelled".to_owned(),
            ordermesh::events::ORDER_CANCELLED_TYPE.to_owned(),
            b"cancelled".to_vec()
        )],
        "one OrderCancelled, with its type"
    );

    // Cancelled is final: a cancel asked again answers the same order.
    let after = store
        .begin_cancel(&order.order_id, "once more", NOW)
        .await
        .expect("begin");
    assert_eq!(
        (after.status, &after.cancel),
        (Status::Cancelled, &first.cancel)
    );
}

#[on_both_backends]
#[tokio::test]
async fn a_lease_from_settling_the_order_while_pending_does_not_hold_its_cancel_off(
    backend: Backend,
) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    // Reconciler a settles a pending order as paid, under a lease that outlives the settlement.
    let order = pending(&store, "ord_1", 2 * GRACE).await;
    let claimed = store
        .claim_pending("a", GRACE, LEASE, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let paid = Paid {
        payment_id: "pay_1",
        event_id: "evt_placed",
        trace_context: None,
        now_ms: NOW,
    };
    let after = store
        .mark_paid(
            &order.order_id,
            paid,
            Writer::Reconciler { id: "a" },
            |_| Ok(b"placed".to_vec()),
        )
        .await
        .expect("paid");
    assert_eq!(after.status, Status::Paid);

    // The order is cancelled and its refund fails: a reconciler takes the cancel at once (found
    // by the fault campaign: left CANCELLING until a's lease ran out, minutes later).
    store
        .begin_cancel(&order.order_id, "changed my mind", NOW)
        .await
        .expect("begin");
    let cancels = store
        .claim_cancelling("b", Duration::ZERO, LEASE, 10)
        .await
        .expect("claim");
    assert_eq!(
        cancels
            .iter()
            .map(|o| o.order_id.as_str())
            .collect::<Vec<_>>(),
        ["ord_1"]
    );
}

#[on_both_backends]
#[tokio::test]
async fn only_a_paid_order_starts_to_cancel(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let pending_order = pending(&store, "ord_pending", Duration::ZERO).await;
    let failed = pending(&store, "ord_failed", Duration::ZERO).await;
    store
        .mark_failed(&failed.order_id, "pay_x", "declined", NOW, Writer::Call)
        .await
        .expect("write");
    for (id, status) in [
        ("ord_pending", Status::PendingPayment),
        ("ord_failed", Status::PaymentFailed),
    ] {
        let after = store.begin_cancel(id, "why not", NOW).await.expect("begin");
        assert_eq!(after.status, status, "{id}");
        assert!(after.cancel.requested_at_ms.is_none(), "{id}");
    }
    // And nothing but a CANCELLING order is marked cancelled.
    let after = store
        .mark_cancelled(&pending_order.order_id, cancelled("ref_x"), |_| {
            Ok(Vec::new())
        })
        .await
        .expect("write");
    assert_eq!(after.status, Status::PendingPayment);
    assert_eq!(store.outbox_summary().await.expect("backlog").0, 0);
}
