//! The ledger check of the money promise, over everything a mesh holds: every order (ListOrders),
//! every payment (payment's ListPayments), every event on the topic and every notification.
//!
//! The invariant (README, "What the mesh promises"): once pending orders are settled, every order
//! is PAID, PAYMENT_FAILED or ABANDONED; a PAID order has exactly one SUCCEEDED charge, made under
//! its own charge key and named by the order, exactly one OrderPlaced event, and (with a notifier)
//! exactly one email and one SMS; an order that is not paid has no charge standing, no event and
//! no notification; and payment holds no charge that no paid order accounts for.

use std::collections::HashMap;

use anyhow::{Result, bail};
use ordermesh::proto::{
    order::v1::{ListOrdersRequest, Order, OrderStatus},
    payment::v1::{ListPaymentsRequest, Payment, PaymentStatus},
};

use super::helpers::TestMesh;

/// Every order the order service holds (all pages).
pub async fn all_orders(mesh: &TestMesh) -> Result<Vec<Order>> {
    let mut client = mesh.order_client().await?;
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_orders(ListOrdersRequest {
                page_size: 500,
                page_token,
            })
            .await?
            .into_inner();
        out.extend(page.orders);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Every payment the payment service holds (all pages), through its API.
pub async fn all_payments(mesh: &TestMesh) -> Result<Vec<Payment>> {
    let mut client = mesh.payment_client().await?;
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_payments(ListPaymentsRequest {
                page_size: 500,
                page_token,
            })
            .await?
            .into_inner();
        out.extend(page.payments);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Every way the mesh breaks the invariant, one line each naming the order or payment; empty when
/// it holds. Notifications are checked when the mesh runs a notifier.
pub async fn violations(mesh: &TestMesh) -> Result<Vec<String>> {
    let orders = all_orders(mesh).await?;
    let payments = all_payments(mesh).await?;
    let events = mesh.all_events().await?;
    let paid: Vec<&Order> = orders
        .iter()
        .filter(|o| o.status() == OrderStatus::Paid)
        .collect();
    let notifications = if mesh.notifier.is_some() {
        // Those that are due, then a moment for a stray duplicate to show up after them.
        let due = mesh.wait_for_notifications(2 * paid.len()).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        due?;
        Some(mesh.all_notifications().await?)
    } else {
        None
    };

    let mut charges: HashMap<&str, Vec<&Payment>> = HashMap::new();
    for payment in &payments {
        if payment.status() == PaymentStatus::Succeeded {
            charges.entry(&payment.order_id).or_default().push(payment);
        }
    }
    let mut events_of: HashMap<&str, usize> = HashMap::new();
    for (order_id, _) in &events {
        *events_of.entry(order_id).or_default() += 1;
    }
    let mut notified: HashMap<(&str, &str), usize> = HashMap::new();
    for n in notifications.iter().flatten() {
        *notified
            .entry((n.order_id.as_str(), n.channel().as_str_name()))
            .or_default() += 1;
    }

    let mut out = Vec::new();
    let by_id: HashMap<&str, &Order> = orders.iter().map(|o| (o.order_id.as_str(), o)).collect();
    for order in &orders {
        let id = order.order_id.as_str();
        let request = &order.request_id;
        let charged = charges.get(id).map_or(&[][..], Vec::as_slice);
        let event_count = events_of.get(id).copied().unwrap_or(0);
        match order.status() {
            OrderStatus::Paid => {
                if charged.len() != 1 {
                    out.push(format!(
                        "order {id} (request {request}) is PAID with {} charges",
                        charged.len()
                    ));
                }
                for charge in charged {
                    if charge.payment_id != order.payment_id
                        || charge.idempotency_key != format!("order:{id}")
                    {
                        out.push(format!(
                            "order {id} (request {request}) names payment {:?}, but its charge is {} under key {}",
                            order.payment_id, charge.payment_id, charge.idempotency_key
                        ));
                    }
                }
                if event_count != 1 {
                    out.push(format!(
                        "order {id} (request {request}) is PAID with {event_count} events"
                    ));
                }
                if notifications.is_some() {
                    for channel in ["CHANNEL_EMAIL", "CHANNEL_SMS"] {
                        let sent = notified.get(&(id, channel)).copied().unwrap_or(0);
                        if sent != 1 {
                            out.push(format!(
                                "order {id} (request {request}) is PAID with {sent} notifications on {channel}"
                            ));
                        }
                    }
                }
            }
            status => {
                if status == OrderStatus::PendingPayment {
                    out.push(format!("order {id} (request {request}) is still pending"));
                }
                if !charged.is_empty() {
                    out.push(format!(
                        "order {id} (request {request}) is {status:?} with a charge standing: {}",
                        charged[0].payment_id
                    ));
                }
                if event_count != 0 {
                    out.push(format!(
                        "order {id} (request {request}) is {status:?} with {event_count} events"
                    ));
                }
                if notified.keys().any(|(o, _)| *o == id) {
                    out.push(format!(
                        "order {id} (request {request}) is {status:?} but was notified"
                    ));
                }
            }
        }
    }
    for (order_id, charged) in &charges {
        if !by_id.contains_key(order_id) {
            for charge in charged {
                out.push(format!(
                    "charge {} (key {}) is for order {order_id}, which does not exist",
                    charge.payment_id, charge.idempotency_key
                ));
            }
        }
    }
    for order_id in events_of.keys() {
        if !by_id.contains_key(order_id) {
            out.push(format!(
                "an event announces order {order_id}, which does not exist"
            ));
        }
    }
    Ok(out)
}

/// Fails listing every violation of the invariant (see [`violations`]).
pub async fn assert_ledger(mesh: &TestMesh) -> Result<()> {
    let found = violations(mesh).await?;
    if !found.is_empty() {
        bail!("the ledger breaks the invariant:\n  {}", found.join("\n  "));
    }
    Ok(())
}
