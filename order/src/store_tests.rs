//! The reconciler's and the outbox relay's leases and the settlement's conditions, on both
//! backends: what several order replicas sharing one database rely on to settle each pending order
//! once and publish each event once, and what makes a writer that lost its claim change nothing.

use ordermesh_platform::db;
use ordermesh_testkit::{Backend, Databases, on_both_backends};

use super::*;

/// A store on a fresh database, with what keeps a PostgreSQL server alive; None to skip.
async fn store(backend: Backend) -> Option<(Store, Option<Databases>)> {
    let (url, databases) = ordermesh_testkit::unit_database(backend, "order").await?;
    let pool = db::open(&url, &migrations()).await.expect("database");
    Some((Store::new(pool), databases))
}

/// A pending order whose last charge attempt began at `attempted_ms`.
async fn pending(store: &Store, id: &str, attempted_ms: i64) -> OrderRow {
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
        created_at_ms: attempted_ms,
        updated_at_ms: attempted_ms,
        payment_attempted_at_ms: attempted_ms,
    };
    store.insert_or_get(&row).await.expect("insert")
}

const NOW: i64 = 1_000_000;
const GRACE: i64 = 60_000;
const LEASE: i64 = 30_000;

#[on_both_backends]
#[tokio::test]
async fn a_reconciler_takes_only_idle_orders_and_none_leased_to_another(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    pending(&store, "ord_idle", NOW - 2 * GRACE).await;
    pending(&store, "ord_fresh", NOW).await;
    let idle_since = NOW - GRACE;

    let a = store
        .claim_pending("a", idle_since, NOW, NOW + LEASE, 10)
        .await
        .expect("claim");
    let b = store
        .claim_pending("b", idle_since, NOW, NOW + LEASE, 10)
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
    let later = NOW + LEASE + 1;
    let b = store
        .claim_pending("b", later - GRACE, later, later + LEASE, 10)
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
    let order = pending(&store, "ord_1", NOW - 2 * GRACE).await;
    store
        .claim_pending("a", NOW - GRACE, NOW, NOW + LEASE, 10)
        .await
        .expect("claim");
    // a stalls past its lease; b claims the order.
    let later = NOW + LEASE + 1;
    store
        .claim_pending("b", later - GRACE, later, later + LEASE, 10)
        .await
        .expect("claim");

    // a, late, writes what it found: nothing changes.
    let stale = Writer::Reconciler {
        id: "a",
        now_ms: later,
    };
    let after = store
        .mark_abandoned(&order.order_id, "a was late", later, stale)
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
                now_ms: later,
            },
            stale,
            |_| Ok(b"{}".to_vec()),
        )
        .await
        .expect("write");
    assert_eq!(after.status, Status::PendingPayment, "{after:?}");
    assert_eq!(
        store.backlog().await.expect("backlog"),
        0,
        "no event from a"
    );

    // b, holding the lease, settles it; then nobody else can.
    let current = Writer::Reconciler {
        id: "b",
        now_ms: later,
    };
    let paid = store
        .mark_paid(
            &order.order_id,
            Paid {
                payment_id: "pay_b",
                event_id: "evt_b",
                trace_context: None,
                now_ms: later,
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
        .mark_failed(&order.order_id, "pay_x", "declined", later, Writer::Call)
        .await
        .expect("write");
    assert_eq!(again.status, Status::Paid, "a settled order stays settled");
    assert_eq!(store.backlog().await.expect("backlog"), 1, "one event, b's");
}

#[on_both_backends]
#[tokio::test]
async fn a_call_starting_to_charge_holds_the_reconciler_off(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let order = pending(&store, "ord_1", NOW - 2 * GRACE).await;
    assert!(
        store
            .begin_payment(&order.order_id, NOW)
            .await
            .expect("write")
    );
    let claimed = store
        .claim_pending("a", NOW - GRACE, NOW, NOW + LEASE, 10)
        .await
        .expect("claim");
    assert!(claimed.is_empty(), "a call is charging it: {claimed:?}");
    // Settled orders are not charged again.
    store
        .mark_abandoned(&order.order_id, "given up", NOW, Writer::Call)
        .await
        .expect("write");
    assert!(
        !store
            .begin_payment(&order.order_id, NOW)
            .await
            .expect("write")
    );
}

#[on_both_backends]
#[tokio::test]
async fn an_outbox_lease_holds_other_relays_off_until_it_ends_on_the_databases_clock(
    backend: Backend,
) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let order = pending(&store, "ord_1", NOW).await;
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
    let long = std::time::Duration::from_secs(60);

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
        .claim_events("b", std::time::Duration::ZERO, 10)
        .await
        .expect("claim");
    assert_eq!(b.len(), 1);
    // ... so its lease has ended by the database's clock as soon as it is written.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        store
            .claim_events("a", long, 10)
            .await
            .expect("claim")
            .len(),
        1
    );
}
