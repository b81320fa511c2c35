//! The ledger audit of the money promise (README, "Keeping the money promise"), over everything the
//! mesh holds: every order (ListOrders), every payment (payment's ListPayments), every event on the
//! topic and, when given, every notification.
//!
//! The invariant: once pending orders are settled and cancels finished, every order is PAID,
//! CANCELLED, PAYMENT_FAILED or ABANDONED, and there is one order per request id; a PAID order has
//! exactly one SUCCEEDED charge, made under its own charge key (`order:<order_id>`) and named by
//! the order, exactly one OrderPlaced event, no OrderCancelled event, and (with notifications)
//! exactly one email and one SMS for its event; a CANCELLED order has no charge standing, exactly
//! one REFUNDED payment (the refund the order names), exactly one OrderPlaced and one
//! OrderCancelled event, and one email and one SMS for each; an order that was never paid has no
//! charge standing, no event and no notification; payment holds no SUCCEEDED charge and no refund,
//! and the topic no event, that no order accounts for; a cancel answered OK ends CANCELLED.
//!
//! Notifications are counted per event (their `event_id`), since a cancelled order has two events,
//! each notified on both channels.
//!
//! Reading ([`Ledger::read`]) is kept apart from judging ([`Ledger::violations`]), so the judging
//! is tested on ledgers built by hand, broken ones included.

use std::collections::HashMap;

use anyhow::Result;
use ordermesh::{
    events::{ORDER_CANCELLED_TYPE, ORDER_PLACED_TYPE},
    proto::notification::v1::ListNotificationsRequest,
    proto::notification::v1::Notification,
    proto::notification::v1::notification_service_client::NotificationServiceClient,
    proto::order::v1::ListOrdersRequest,
    proto::order::v1::Order,
    proto::order::v1::OrderStatus,
    proto::order::v1::order_service_client::OrderServiceClient,
    proto::payment::v1::ListPaymentsRequest,
    proto::payment::v1::Payment,
    proto::payment::v1::PaymentStatus,
    proto::payment::v1::payment_service_client::PaymentServiceClient,
};
use tonic::transport::Channel;

use crate::events::TopicEvent;

/// Which part of the invariant a [`Violation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// One order per request id.
    OneOrderPerRequest,
    /// A request id the order service answered with an order has that order.
    AcceptedOrderKept,
    /// No order is left PENDING_PAYMENT.
    Settled,
    /// A PAID order has exactly one SUCCEEDED charge.
    PaidChargedOnce,
    /// A PAID order's charge is the one it names, under the key `order:<order_id>`.
    ChargeMatchesOrder,
    /// A PAID (or CANCELLED) order has exactly one OrderPlaced event.
    PaidAnnouncedOnce,
    /// A PAID (or CANCELLED) order has exactly one email and one SMS notification of its
    /// OrderPlaced event, and none for an event that is not on the topic.
    PaidNotifiedOnce,
    /// No order is left CANCELLING.
    CancelFinished,
    /// A cancel answered OK ends CANCELLED.
    AcceptedCancelKept,
    /// A CANCELLED order has exactly one REFUNDED payment.
    CancelledRefundedOnce,
    /// A CANCELLED order's refund is the one it names, of the payment it names.
    RefundMatchesOrder,
    /// A CANCELLED order has exactly one OrderCancelled event.
    CancelledAnnouncedOnce,
    /// A CANCELLED order has exactly one email and one SMS notification of its OrderCancelled
    /// event.
    CancelledNotifiedOnce,
    /// An order not CANCELLED has no OrderCancelled event.
    UncancelledNotAnnouncedCancelled,
    /// An order not paid has no SUCCEEDED charge standing.
    UnpaidNotCharged,
    /// An order not paid has no event.
    UnpaidNotAnnounced,
    /// An order not paid has no notification.
    UnpaidNotNotified,
    /// Every SUCCEEDED charge belongs to an order.
    NoStrayCharge,
    /// Every REFUNDED payment belongs to a CANCELLED order.
    NoRefundWithoutCancel,
    /// Every event announces an order.
    NoStrayEvent,
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OneOrderPerRequest => "one order per request id",
            Self::AcceptedOrderKept => "an accepted request keeps its order",
            Self::Settled => "no order left pending",
            Self::PaidChargedOnce => "a paid order has exactly one charge",
            Self::ChargeMatchesOrder => "a paid order's charge is its own",
            Self::PaidAnnouncedOnce => "a paid order has exactly one OrderPlaced event",
            Self::PaidNotifiedOnce => "a paid order has one email and one SMS",
            Self::CancelFinished => "no order left cancelling",
            Self::AcceptedCancelKept => "an accepted cancel ends cancelled",
            Self::CancelledRefundedOnce => "a cancelled order has exactly one refund",
            Self::RefundMatchesOrder => "a cancelled order's refund is its own",
            Self::CancelledAnnouncedOnce => {
                "a cancelled order has exactly one OrderCancelled event"
            }
            Self::CancelledNotifiedOnce => {
                "a cancelled order has one cancellation email and one cancellation SMS"
            }
            Self::UncancelledNotAnnouncedCancelled => {
                "an order not cancelled has no OrderCancelled event"
            }
            Self::UnpaidNotCharged => "an unpaid order has no charge standing",
            Self::UnpaidNotAnnounced => "an unpaid order has no event",
            Self::UnpaidNotNotified => "an unpaid order has no notification",
            Self::NoStrayCharge => "every charge belongs to an order",
            Self::NoRefundWithoutCancel => "every refund belongs to a cancelled order",
            Self::NoStrayEvent => "every event announces an order",
        })
    }
}

/// One breach of the invariant, naming what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    /// The request id of the order concerned; empty for a charge or event without an order.
    pub request_id: String,
    pub order_id: String,
    /// The charge concerned, if any.
    pub payment_id: String,
    /// What was found, in words.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.invariant)?;
        if !self.request_id.is_empty() {
            write!(f, "request {} ", self.request_id)?;
        }
        if !self.order_id.is_empty() {
            write!(f, "order {} ", self.order_id)?;
        }
        if !self.payment_id.is_empty() {
            write!(f, "payment {} ", self.payment_id)?;
        }
        write!(f, "{}", self.detail)
    }
}

/// Everything the audit looks at.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub orders: Vec<Order>,
    pub payments: Vec<Payment>,
    /// Every event on the topic (key = order id, event id, type).
    pub events: Vec<TopicEvent>,
    /// Every notification; None skips the notification checks (no notifier).
    pub notifications: Option<Vec<Notification>>,
}

/// Reads the orders and payments through their services and judges them with `events` and
/// `notifications` (see [`Ledger`]): every way the invariant is broken, empty when it holds.
pub async fn audit(
    order: &mut OrderServiceClient<Channel>,
    payment: &mut PaymentServiceClient<Channel>,
    events: Vec<TopicEvent>,
    notifications: Option<Vec<Notification>>,
) -> Result<Vec<Violation>> {
    Ok(Ledger::read(order, payment, events, notifications)
        .await?
        .violations())
}

impl Ledger {
    /// The orders and payments as their services list them, with `events` and `notifications`.
    pub async fn read(
        order: &mut OrderServiceClient<Channel>,
        payment: &mut PaymentServiceClient<Channel>,
        events: Vec<TopicEvent>,
        notifications: Option<Vec<Notification>>,
    ) -> Result<Self> {
        Ok(Self {
            orders: all_orders(order).await?,
            payments: all_payments(payment).await?,
            events,
            notifications,
        })
    }

    /// Every way this ledger breaks the invariant; empty when it holds.
    pub fn violations(&self) -> Vec<Violation> {
        let mut charges: HashMap<&str, Vec<&Payment>> = HashMap::new();
        let mut refunds: HashMap<&str, Vec<&Payment>> = HashMap::new();
        for payment in &self.payments {
            match payment.status() {
                // A charge standing: the money is held.
                PaymentStatus::Succeeded => {
                    charges.entry(&payment.order_id).or_default().push(payment);
                }
                // Charged, then given back in full: no money held (a PAID order with only this
                // has no charge standing), and a refund that only a CANCELLED order accounts for.
                PaymentStatus::Refunded => {
                    refunds.entry(&payment.order_id).or_default().push(payment);
                }
                // Declined, or not a payment at all: no money held.
                PaymentStatus::Declined | PaymentStatus::Unspecified => {}
            }
        }
        // Each order's events by kind, as event ids.
        let mut events_of: HashMap<&str, Events<'_>> = HashMap::new();
        for event in &self.events {
            let of = events_of.entry(&event.key).or_default();
            match event.ce_type.as_str() {
                // No type is what the notifier reads as OrderPlaced too.
                "" | ORDER_PLACED_TYPE => of.placed.push(&event.id),
                ORDER_CANCELLED_TYPE => of.cancelled.push(&event.id),
                _ => of.other.push(&event.id),
            }
        }
        // Notifications per (event id, channel), and the event ids each order was notified of.
        let mut notified: HashMap<(&str, &str), usize> = HashMap::new();
        let mut notified_events: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
        for n in self.notifications.iter().flatten() {
            let channel = n.channel().as_str_name();
            *notified.entry((n.event_id.as_str(), channel)).or_default() += 1;
            notified_events
                .entry(n.order_id.as_str())
                .or_default()
                .push((n.event_id.as_str(), channel));
        }
        let mut orders_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for order in &self.orders {
            orders_of
                .entry(&order.request_id)
                .or_default()
                .push(&order.order_id);
        }

        let mut out = Vec::new();
        let mut breach = |invariant, order: &Order, payment_id: &str, detail: String| {
            out.push(Violation {
                invariant,
                request_id: order.request_id.clone(),
                order_id: order.order_id.clone(),
                payment_id: payment_id.to_owned(),
                detail,
            });
        };
        let no_events = Events::default();
        for order in &self.orders {
            let id = order.order_id.as_str();
            let status = order.status();
            let status_name = status.as_str_name();
            let charged = charges.get(id).map_or(&[][..], Vec::as_slice);
            let refunded = refunds.get(id).map_or(&[][..], Vec::as_slice);
            let events = events_of.get(id).unwrap_or(&no_events);
            let siblings = &orders_of[order.request_id.as_str()];
            if siblings.len() > 1 && siblings[0] == id {
                breach(
                    Invariant::OneOrderPerRequest,
                    order,
                    "",
                    format!("has {} orders: {}", siblings.len(), siblings.join(", ")),
                );
            }
            // What is wrong with the notifications of each event of `ids` (with notifications):
            // each is notified once on each channel.
            let misnotified = |ids: &[&str], what: &str| {
                let mut found = Vec::new();
                if self.notifications.is_none() {
                    return found;
                }
                for event_id in ids {
                    for channel in ["CHANNEL_EMAIL", "CHANNEL_SMS"] {
                        let sent = notified.get(&(*event_id, channel)).copied().unwrap_or(0);
                        if sent != 1 {
                            found.push(format!(
                                "is {status_name} with {sent} notifications on {channel} for its {what} {event_id}"
                            ));
                        }
                    }
                }
                found
            };
            match status {
                OrderStatus::Paid | OrderStatus::Cancelled => {
                    if events.placed.len() != 1 {
                        breach(
                            Invariant::PaidAnnouncedOnce,
                            order,
                            "",
                            format!(
                                "is {status_name} with {} OrderPlaced events",
                                events.placed.len()
                            ),
                        );
                    }
                    for detail in misnotified(&events.placed, "OrderPlaced") {
                        breach(Invariant::PaidNotifiedOnce, order, "", detail);
                    }
                    if status == OrderStatus::Cancelled {
                        for detail in misnotified(&events.cancelled, "OrderCancelled") {
                            breach(Invariant::CancelledNotifiedOnce, order, "", detail);
                        }
                    }
                    // A notification of an event that is not among the order's on the topic.
                    let known: Vec<&str> = events
                        .placed
                        .iter()
                        .chain(&events.cancelled)
                        .copied()
                        .collect();
                    for (event_id, channel) in notified_events.get(id).into_iter().flatten() {
                        if !known.contains(event_id) {
                            breach(
                                Invariant::PaidNotifiedOnce,
                                order,
                                "",
                                format!(
                                    "is {status_name} with a notification on {channel} for event {event_id}, which is not on the topic"
                                ),
                            );
                        }
                    }
                }
                _ => {}
            }
            match status {
                OrderStatus::Paid => {
                    if charged.len() != 1 {
                        breach(
                            Invariant::PaidChargedOnce,
                            order,
                            &order.payment_id,
                            format!("is PAID with {} charges", charged.len()),
                        );
                    }
                    for charge in charged {
                        if charge.payment_id != order.payment_id
                            || charge.idempotency_key != format!("order:{id}")
                        {
                            breach(
                                Invariant::ChargeMatchesOrder,
                                order,
                                &charge.payment_id,
                                format!(
                                    "names payment {:?}, but its charge is {} under key {}",
                                    order.payment_id, charge.payment_id, charge.idempotency_key
                                ),
                            );
                        }
                    }
                    if !events.cancelled.is_empty() {
                        breach(
                            Invariant::UncancelledNotAnnouncedCancelled,
                            order,
                            "",
                            format!(
                                "is PAID with {} OrderCancelled events",
                                events.cancelled.len()
                            ),
                        );
                    }
                }
                OrderStatus::Cancelled => {
                    for charge in charged {
                        breach(
                            Invariant::UnpaidNotCharged,
                            order,
                            &charge.payment_id,
                            "is CANCELLED with a charge standing".into(),
                        );
                    }
                    if refunded.len() != 1 {
                        breach(
                            Invariant::CancelledRefundedOnce,
                            order,
                            &order.payment_id,
                            format!("is CANCELLED with {} refunded payments", refunded.len()),
                        );
                    }
                    for payment in refunded {
                        if payment.payment_id != order.payment_id
                            || payment.refund_id != order.refund_id
                            || order.refund_id.is_empty()
                        {
                            breach(
                                Invariant::RefundMatchesOrder,
                                order,
                                &payment.payment_id,
                                format!(
                                    "names payment {:?} and refund {:?}, but payment {} shows refund {:?}",
                                    order.payment_id,
                                    order.refund_id,
                                    payment.payment_id,
                                    payment.refund_id
                                ),
                            );
                        }
                    }
                    if events.cancelled.len() != 1 {
                        breach(
                            Invariant::CancelledAnnouncedOnce,
                            order,
                            "",
                            format!(
                                "is CANCELLED with {} OrderCancelled events",
                                events.cancelled.len()
                            ),
                        );
                    }
                }
                // A cancel half done: the refund is still owed (or owed its record). What it
                // holds meanwhile is judged once it is finished.
                OrderStatus::Cancelling => {
                    breach(
                        Invariant::CancelFinished,
                        order,
                        &order.payment_id,
                        format!(
                            "is still CANCELLING ({} refunded payments, {} OrderCancelled events)",
                            refunded.len(),
                            events.cancelled.len()
                        ),
                    );
                }
                OrderStatus::PendingPayment
                | OrderStatus::PaymentFailed
                | OrderStatus::Abandoned
                | OrderStatus::Unspecified => {
                    if status == OrderStatus::PendingPayment {
                        breach(Invariant::Settled, order, "", "is still pending".into());
                    }
                    for charge in charged {
                        breach(
                            Invariant::UnpaidNotCharged,
                            order,
                            &charge.payment_id,
                            format!("is {status_name} with a charge standing"),
                        );
                    }
                    let event_count = events.len();
                    if event_count != 0 {
                        breach(
                            Invariant::UnpaidNotAnnounced,
                            order,
                            "",
                            format!("is {status_name} with {event_count} events"),
                        );
                    }
                    if notified_events.contains_key(id) {
                        breach(
                            Invariant::UnpaidNotNotified,
                            order,
                            "",
                            format!("is {status_name} but was notified"),
                        );
                    }
                }
            }
        }

        let known: HashMap<&str, &Order> = self
            .orders
            .iter()
            .map(|o| (o.order_id.as_str(), o))
            .collect();
        for (order_id, charged) in &charges {
            if !known.contains_key(order_id) {
                for charge in charged {
                    out.push(Violation {
                        invariant: Invariant::NoStrayCharge,
                        request_id: String::new(),
                        order_id: (*order_id).to_owned(),
                        payment_id: charge.payment_id.clone(),
                        detail: format!(
                            "(key {}) is for an order that does not exist",
                            charge.idempotency_key
                        ),
                    });
                }
            }
        }
        for (order_id, refunded) in &refunds {
            let status = known.get(order_id).map(|o| o.status());
            if status == Some(OrderStatus::Cancelled) {
                continue;
            }
            let (request_id, whose) = match known.get(order_id) {
                Some(order) => (
                    order.request_id.clone(),
                    format!("whose order is {}", order.status().as_str_name()),
                ),
                None => (String::new(), "for an order that does not exist".to_owned()),
            };
            for payment in refunded {
                out.push(Violation {
                    invariant: Invariant::NoRefundWithoutCancel,
                    request_id: request_id.clone(),
                    order_id: (*order_id).to_owned(),
                    payment_id: payment.payment_id.clone(),
                    detail: format!("is REFUNDED (refund {:?}) {whose}", payment.refund_id),
                });
            }
        }
        for (order_id, events) in &events_of {
            if !known.contains_key(order_id) {
                out.push(Violation {
                    invariant: Invariant::NoStrayEvent,
                    request_id: String::new(),
                    order_id: (*order_id).to_owned(),
                    payment_id: String::new(),
                    detail: format!("is announced by {} events but does not exist", events.len()),
                });
            }
        }
        out.sort_by(|a, b| {
            (a.invariant, &a.request_id, &a.order_id).cmp(&(
                b.invariant,
                &b.request_id,
                &b.order_id,
            ))
        });
        out
    }

    /// A violation for each of `cancelled` (order ids whose CancelOrder was answered OK) that is
    /// not CANCELLED in this ledger.
    pub fn accepted_cancels_not_kept<'a>(
        &self,
        cancelled: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Violation> {
        let known: HashMap<&str, &Order> = self
            .orders
            .iter()
            .map(|o| (o.order_id.as_str(), o))
            .collect();
        let mut out: Vec<Violation> = cancelled
            .into_iter()
            .filter_map(|order_id| {
                let (request_id, status) = match known.get(order_id) {
                    Some(o) if o.status() == OrderStatus::Cancelled => return None,
                    Some(o) => (o.request_id.clone(), o.status().as_str_name()),
                    None => (String::new(), "not listed"),
                };
                Some(Violation {
                    invariant: Invariant::AcceptedCancelKept,
                    request_id,
                    order_id: order_id.to_owned(),
                    payment_id: String::new(),
                    detail: format!("was answered OK to CancelOrder but is {status}"),
                })
            })
            .collect();
        out.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        out
    }

    /// A violation for each of `accepted` (request ids the order service answered with an order)
    /// that has no order in this ledger.
    pub fn accepted_without_order<'a>(
        &self,
        accepted: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Violation> {
        let present: std::collections::HashSet<&str> =
            self.orders.iter().map(|o| o.request_id.as_str()).collect();
        accepted
            .into_iter()
            .filter(|r| !present.contains(r))
            .map(|request_id| Violation {
                invariant: Invariant::AcceptedOrderKept,
                request_id: request_id.to_owned(),
                order_id: String::new(),
                payment_id: String::new(),
                detail: "was answered with an order that the order service no longer lists".into(),
            })
            .collect()
    }

    /// The orders still PENDING_PAYMENT.
    pub fn pending(&self) -> usize {
        count_pending(&self.orders)
    }

    /// The orders still CANCELLING.
    pub fn cancelling(&self) -> usize {
        count_cancelling(&self.orders)
    }
}

/// How many of `orders` are PENDING_PAYMENT.
pub fn count_pending(orders: &[Order]) -> usize {
    count_status(orders, OrderStatus::PendingPayment)
}

/// How many of `orders` are CANCELLING.
pub fn count_cancelling(orders: &[Order]) -> usize {
    count_status(orders, OrderStatus::Cancelling)
}

/// How many of `orders` are `status`.
pub fn count_status(orders: &[Order], status: OrderStatus) -> usize {
    orders.iter().filter(|o| o.status() == status).count()
}

/// One order's events on the topic by kind, as event ids.
#[derive(Debug, Default)]
struct Events<'a> {
    placed: Vec<&'a str>,
    cancelled: Vec<&'a str>,
    /// Of a type the audit does not know.
    other: Vec<&'a str>,
}

impl Events<'_> {
    fn len(&self) -> usize {
        self.placed.len() + self.cancelled.len() + self.other.len()
    }
}

/// Every order the order service holds (all pages).
pub async fn all_orders(client: &mut OrderServiceClient<Channel>) -> Result<Vec<Order>> {
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
pub async fn all_payments(client: &mut PaymentServiceClient<Channel>) -> Result<Vec<Payment>> {
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

/// Every notification the notifier has recorded (all pages).
pub async fn all_notifications(
    client: &mut NotificationServiceClient<Channel>,
) -> Result<Vec<Notification>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_notifications(ListNotificationsRequest {
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(page.notifications);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use ordermesh::proto::notification::v1::Channel as NotifyChannel;

    use super::*;

    fn order(id: &str, status: OrderStatus, payment_id: &str) -> Order {
        Order {
            order_id: id.into(),
            request_id: format!("req-{id}"),
            status: status as i32,
            payment_id: payment_id.into(),
            ..Default::default()
        }
    }

    fn charge(payment_id: &str, order_id: &str) -> Payment {
        Payment {
            payment_id: payment_id.into(),
            order_id: order_id.into(),
            status: PaymentStatus::Succeeded as i32,
            idempotency_key: format!("order:{order_id}"),
            ..Default::default()
        }
    }

    fn event(order_id: &str) -> TopicEvent {
        TopicEvent {
            key: order_id.into(),
            id: format!("evt-{order_id}"),
            ce_type: ORDER_PLACED_TYPE.into(),
        }
    }

    fn cancelled_event(order_id: &str) -> TopicEvent {
        TopicEvent {
            key: order_id.into(),
            id: format!("evt-cancel-{order_id}"),
            ce_type: ORDER_CANCELLED_TYPE.into(),
        }
    }

    /// `o5`, paid and cancelled as CancelOrder leaves it: refunded once, by the refund it names.
    fn cancelled(ledger: &mut Ledger) {
        let mut order = order("o5", OrderStatus::Cancelled, "p5");
        order.refund_id = "r5".into();
        ledger.orders.push(order);
        let mut payment = charge("p5", "o5");
        payment.status = PaymentStatus::Refunded as i32;
        payment.refund_id = "r5".into();
        ledger.payments.push(payment);
        ledger.events.push(event("o5"));
        ledger.events.push(cancelled_event("o5"));
    }

    fn note(order_id: &str, event_id: &str, channel: NotifyChannel) -> Notification {
        Notification {
            order_id: order_id.into(),
            event_id: event_id.into(),
            channel: channel as i32,
            ..Default::default()
        }
    }

    /// Both notifications of every event of `ledger`.
    fn all_notified(ledger: &Ledger) -> Vec<Notification> {
        ledger
            .events
            .iter()
            .flat_map(|e| {
                [NotifyChannel::Email, NotifyChannel::Sms].map(|c| note(&e.key, &e.id, c))
            })
            .collect()
    }

    fn sound() -> Ledger {
        Ledger {
            orders: vec![
                order("o1", OrderStatus::Paid, "p1"),
                order("o2", OrderStatus::PaymentFailed, ""),
                order("o3", OrderStatus::Abandoned, ""),
            ],
            payments: vec![charge("p1", "o1")],
            events: vec![event("o1")],
            notifications: None,
        }
    }

    fn invariants(ledger: &Ledger) -> Vec<Invariant> {
        ledger.violations().iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn a_sound_ledger_has_no_violation() {
        assert_eq!(sound().violations(), vec![]);
    }

    #[test]
    fn a_double_charge_is_caught_and_names_the_request() {
        let mut ledger = sound();
        ledger.payments.push(charge("p1b", "o1"));
        let found = ledger.violations();
        assert!(
            found
                .iter()
                .any(|v| v.invariant == Invariant::PaidChargedOnce
                    && v.request_id == "req-o1"
                    && v.order_id == "o1"),
            "{found:?}"
        );
    }

    #[test]
    fn pending_orders_stray_charges_and_stray_events_are_caught() {
        let mut ledger = sound();
        ledger
            .orders
            .push(order("o4", OrderStatus::PendingPayment, ""));
        ledger.payments.push(charge("p9", "nobody"));
        ledger.events.push(event("ghost"));
        ledger.payments.push(charge("p2", "o2"));
        ledger.events.push(event("o3"));
        assert_eq!(
            invariants(&ledger),
            vec![
                Invariant::Settled,
                Invariant::UnpaidNotCharged,
                Invariant::UnpaidNotAnnounced,
                Invariant::NoStrayCharge,
                Invariant::NoStrayEvent,
            ]
        );
    }

    #[test]
    fn two_orders_for_one_request_and_a_lost_accepted_order_are_caught() {
        let mut ledger = sound();
        let mut twin = order("o1b", OrderStatus::Abandoned, "");
        twin.request_id = "req-o1".into();
        ledger.orders.push(twin);
        assert_eq!(invariants(&ledger), vec![Invariant::OneOrderPerRequest]);
        let lost = ledger.accepted_without_order(["req-o1", "req-gone"]);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].request_id, "req-gone");
    }

    #[test]
    fn with_notifications_a_paid_order_needs_one_of_each_and_others_none() {
        let mut ledger = sound();
        ledger.notifications = Some(vec![
            note("o1", "evt-o1", NotifyChannel::Email),
            note("o1", "evt-o1", NotifyChannel::Sms),
        ]);
        assert_eq!(ledger.violations(), vec![]);
        ledger.notifications = Some(vec![
            note("o1", "evt-o1", NotifyChannel::Email),
            note("o1", "evt-o1", NotifyChannel::Email),
            note("o2", "evt-o2", NotifyChannel::Sms),
        ]);
        assert_eq!(
            invariants(&ledger),
            vec![
                Invariant::PaidNotifiedOnce,
                Invariant::PaidNotifiedOnce,
                Invariant::UnpaidNotNotified,
            ]
        );
    }

    #[test]
    fn a_cancelled_order_refunded_announced_and_notified_once_is_sound() {
        let mut ledger = sound();
        cancelled(&mut ledger);
        assert_eq!(ledger.violations(), vec![]);
        ledger.notifications = Some(all_notified(&ledger));
        assert_eq!(ledger.violations(), vec![]);
        assert_eq!(ledger.cancelling(), 0);
    }

    #[test]
    fn a_cancelled_order_without_its_refund_or_its_event_or_with_two_is_caught() {
        let mut lost = sound();
        cancelled(&mut lost);
        lost.payments.retain(|p| p.payment_id != "p5");
        lost.events.retain(|e| e.ce_type != ORDER_CANCELLED_TYPE);
        assert_eq!(
            invariants(&lost),
            vec![
                Invariant::CancelledRefundedOnce,
                Invariant::CancelledAnnouncedOnce,
            ]
        );
        let mut twice = sound();
        cancelled(&mut twice);
        let mut again = cancelled_event("o5");
        again.id = "evt-cancel-o5-again".into();
        twice.events.push(again);
        assert_eq!(invariants(&twice), vec![Invariant::CancelledAnnouncedOnce]);
    }

    #[test]
    fn a_refund_not_named_by_its_order_or_a_charge_left_standing_is_caught() {
        let mut ledger = sound();
        cancelled(&mut ledger);
        ledger.orders[3].refund_id = "r-other".into();
        ledger.payments.push(charge("p5b", "o5"));
        let found = ledger.violations();
        assert_eq!(
            found.iter().map(|v| v.invariant).collect::<Vec<_>>(),
            vec![Invariant::RefundMatchesOrder, Invariant::UnpaidNotCharged],
            "{found:?}"
        );
        assert_eq!(found[0].payment_id, "p5");
        assert_eq!(found[0].request_id, "req-o5");
    }

    #[test]
    fn a_refund_without_a_cancelled_order_and_a_cancel_left_unfinished_are_caught() {
        let mut ledger = sound();
        let mut refunded = charge("p1", "o1");
        refunded.status = PaymentStatus::Refunded as i32;
        refunded.refund_id = "r1".into();
        ledger.payments = vec![refunded];
        ledger
            .orders
            .push(order("o6", OrderStatus::Cancelling, "p6"));
        let mut ghost = charge("p7", "ghost");
        ghost.status = PaymentStatus::Refunded as i32;
        ledger.payments.push(ghost);
        assert_eq!(
            invariants(&ledger),
            vec![
                Invariant::PaidChargedOnce,
                Invariant::CancelFinished,
                Invariant::NoRefundWithoutCancel,
                Invariant::NoRefundWithoutCancel,
            ]
        );
        assert_eq!(ledger.cancelling(), 1);
    }

    #[test]
    fn a_paid_order_announced_cancelled_is_caught() {
        let mut ledger = sound();
        ledger.events.push(cancelled_event("o1"));
        assert_eq!(
            invariants(&ledger),
            vec![Invariant::UncancelledNotAnnouncedCancelled]
        );
    }

    #[test]
    fn notifications_are_counted_per_event() {
        let mut ledger = sound();
        cancelled(&mut ledger);
        let mut notes = all_notified(&ledger);
        // The cancellation SMS lost, the cancellation email sent twice, and the confirmation
        // email of an event that is not on the topic.
        notes.retain(|n| !(n.event_id == "evt-cancel-o5" && n.channel() == NotifyChannel::Sms));
        notes.push(note("o5", "evt-cancel-o5", NotifyChannel::Email));
        notes.push(note("o5", "evt-forged", NotifyChannel::Email));
        ledger.notifications = Some(notes);
        let found = ledger.violations();
        assert_eq!(
            found.iter().map(|v| v.invariant).collect::<Vec<_>>(),
            vec![
                Invariant::PaidNotifiedOnce,
                Invariant::CancelledNotifiedOnce,
                Invariant::CancelledNotifiedOnce,
            ],
            "{found:?}"
        );
        assert!(found[0].detail.contains("evt-forged"), "{found:?}");
    }

    #[test]
    fn an_accepted_cancel_must_end_cancelled() {
        let mut ledger = sound();
        cancelled(&mut ledger);
        let found = ledger.accepted_cancels_not_kept(["o5", "o1", "gone"]);
        let ids: Vec<&str> = found.iter().map(|v| v.order_id.as_str()).collect();
        assert_eq!(ids, ["gone", "o1"]);
        assert!(
            found
                .iter()
                .all(|v| v.invariant == Invariant::AcceptedCancelKept)
        );
    }
}
