//! The ledger check of the money promise over a test mesh: its orders, payments, events and (with a
//! notifier) notifications, judged by the audit the `ordermesh-load` campaign uses too
//! (`ordermesh_bench::audit`, where the invariant is spelled out).

use anyhow::{Result, bail};
use ordermesh::{proto::order::v1::Order, proto::order::v1::OrderStatus};
pub use ordermesh_bench::audit::Violation;
use ordermesh_bench::audit::{self, Ledger};

use super::helpers::TestMesh;

/// Every order the order service holds (all pages).
pub async fn all_orders(mesh: &TestMesh) -> Result<Vec<Order>> {
    audit::all_orders(&mut mesh.order_client().await?).await
}

/// Everything the mesh holds. With a notifier, the notifications due (two per paid order, four per
/// cancelled one: a confirmation and a cancellation on each channel) are waited for, then a moment
/// more for a stray duplicate to show up after them; if they do not all come, the audit says which
/// are missing.
pub async fn ledger(mesh: &TestMesh) -> Result<Ledger> {
    let events = mesh.all_topic_events().await?;
    let notifications = if mesh.notifier.is_some() {
        let orders = all_orders(mesh).await?;
        let due = 2 * audit::count_status(&orders, OrderStatus::Paid)
            + 4 * audit::count_status(&orders, OrderStatus::Cancelled);
        // Short of them when the wait ends, the audit names the orders and events missing some.
        if let Err(error) = mesh.wait_for_notifications(due).await {
            eprintln!("{error:#}; auditing the notifications there are");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        Some(mesh.all_notifications().await?)
    } else {
        None
    };
    Ledger::read(
        &mut mesh.order_client().await?,
        &mut mesh.payment_client().await?,
        events,
        notifications,
    )
    .await
}

/// Every way the mesh breaks the invariant, one each naming the request and order or payment;
/// empty when it holds.
pub async fn violations(mesh: &TestMesh) -> Result<Vec<Violation>> {
    Ok(ledger(mesh).await?.violations())
}

/// Fails listing every violation of the invariant (see [`violations`]).
pub async fn assert_ledger(mesh: &TestMesh) -> Result<()> {
    let found = violations(mesh).await?;
    if !found.is_empty() {
        let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
        bail!("the ledger breaks the invariant:\n  {}", lines.join("\n  "));
    }
    Ok(())
}
