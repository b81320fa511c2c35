//! The ledger audit of the money promise (README, "Keeping the money promise"), over everything the
//! mesh holds: every order (ListOrders), every payment (payment's ListPayments), every event on the
//! topic and, when given, every notification.
//!
//! The invariant: once pending orders are settled, every order is PAID, PAYMENT_FAILED or
//! ABANDONED, and there is one order per request id; a PAID order has exactly one SUCCEEDED charge,
//! made under its own charge key (`order:<order_id>`) and named by the order, exactly one
//! OrderPlaced event, and (with notifications) exactly one email and one SMS; an order that is not
//! paid has no charge standing, no event and no notification; payment holds no SUCCEEDED charge and
//! the topic no event that no order accounts for.
//!
//! Reading ([`Ledger::read`]) is kept apart from judging ([`Ledger::violations`]), so the judging
//! is tested on ledgers built by hand, broken ones included.

use std::collections::HashMap;

use anyhow::Result;
use ordermesh::{
    proto::notification::v1::ListNotificationsRequest, proto::notification::v1::Notification,
    proto::notification::v1::notification_service_client::NotificationServiceClient,
    proto::order::v1::ListOrdersRequest, proto::order::v1::Order, proto::order::v1::OrderStatus,
    proto::order::v1::order_service_client::OrderServiceClient,
    proto::payment::v1::ListPaymentsRequest, proto::payment::v1::Payment,
    proto::payment::v1::PaymentStatus,
    proto::payment::v1::payment_service_client::PaymentServiceClient,
};
use tonic::transport::Channel;

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
    /// A PAID order has exactly one event.
    PaidAnnouncedOnce,
    /// A PAID order has exactly one email and one SMS notification.
    PaidNotifiedOnce,
    /// An order not paid has no SUCCEEDED charge standing.
    UnpaidNotCharged,
    /// An order not paid has no event.
    UnpaidNotAnnounced,
    /// An order not paid has no notification.
    UnpaidNotNotified,
    /// Every SUCCEEDED charge belongs to an order.
    NoStrayCharge,
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
            Self::PaidAnnouncedOnce => "a paid order has exactly one event",
            Self::PaidNotifiedOnce => "a paid order has one email and one SMS",
            Self::UnpaidNotCharged => "an unpaid order has no charge standing",
            Self::UnpaidNotAnnounced => "an unpaid order has no event",
            Self::UnpaidNotNotified => "an unpaid order has no notification",
            Self::NoStrayCharge => "every charge belongs to an order",
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
    /// Every event on the topic as (message key = order id, event id).
    pub events: Vec<(String, String)>,
    /// Every notification; None skips the notification checks (no notifier).
    pub notifications: Option<Vec<Notification>>,
}

/// Reads the orders and payments through their services and judges them with `events` and
/// `notifications` (see [`Ledger`]): every way the invariant is broken, empty when it holds.
pub async fn audit(
    order: &mut OrderServiceClient<Channel>,
    payment: &mut PaymentServiceClient<Channel>,
    events: Vec<(String, String)>,
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
        events: Vec<(String, String)>,
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
        for payment in &self.payments {
            match payment.status() {
                // A charge standing: the money is held.
                PaymentStatus::Succeeded => {
                    charges.entry(&payment.order_id).or_default().push(payment);
                }
                // Charged, then given back in full (a PAID order with only this has no charge
                // standing); declined; or not a payment at all: no money held.
                PaymentStatus::Refunded | PaymentStatus::Declined | PaymentStatus::Unspecified => {}
            }
        }
        let mut events_of: HashMap<&str, usize> = HashMap::new();
        for (order_id, _) in &self.events {
            *events_of.entry(order_id).or_default() += 1;
        }
        let mut notified: HashMap<(&str, &str), usize> = HashMap::new();
        for n in self.notifications.iter().flatten() {
            *notified
                .entry((n.order_id.as_str(), n.channel().as_str_name()))
                .or_default() += 1;
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
        for order in &self.orders {
            let id = order.order_id.as_str();
            let charged = charges.get(id).map_or(&[][..], Vec::as_slice);
            let event_count = events_of.get(id).copied().unwrap_or(0);
            let siblings = &orders_of[order.request_id.as_str()];
            if siblings.len() > 1 && siblings[0] == id {
                breach(
                    Invariant::OneOrderPerRequest,
                    order,
                    "",
                    format!("has {} orders: {}", siblings.len(), siblings.join(", ")),
                );
            }
            match order.status() {
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
                    if event_count != 1 {
                        breach(
                            Invariant::PaidAnnouncedOnce,
                            order,
                            "",
                            format!("is PAID with {event_count} events"),
                        );
                    }
                    if self.notifications.is_some() {
                        for channel in ["CHANNEL_EMAIL", "CHANNEL_SMS"] {
                            let sent = notified.get(&(id, channel)).copied().unwrap_or(0);
                            if sent != 1 {
                                breach(
                                    Invariant::PaidNotifiedOnce,
                                    order,
                                    "",
                                    format!("is PAID with {sent} notifications on {channel}"),
                                );
                            }
                        }
                    }
                }
                status => {
                    if status == OrderStatus::PendingPayment {
                        breach(Invariant::Settled, order, "", "is still pending".into());
                    }
                    for charge in charged {
                        breach(
                            Invariant::UnpaidNotCharged,
                            order,
                            &charge.payment_id,
                            format!("is {} with a charge standing", status.as_str_name()),
                        );
                    }
                    if event_count != 0 {
                        breach(
                            Invariant::UnpaidNotAnnounced,
                            order,
                            "",
                            format!("is {} with {event_count} events", status.as_str_name()),
                        );
                    }
                    if notified.keys().any(|(o, _)| *o == id) {
                        breach(
                            Invariant::UnpaidNotNotified,
                            order,
                            "",
                            format!("is {} but was notified", status.as_str_name()),
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
        for (order_id, count) in &events_of {
            if !known.contains_key(order_id) {
                out.push(Violation {
                    invariant: Invariant::NoStrayEvent,
                    request_id: String::new(),
                    order_id: (*order_id).to_owned(),
                    payment_id: String::new(),
                    detail: format!("is announced by {count} events but does not exist"),
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
}

/// How many of `orders` are PENDING_PAYMENT.
pub fn count_pending(orders: &[Order]) -> usize {
    orders
        .iter()
        .filter(|o| o.status() == OrderStatus::PendingPayment)
        .count()
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

    fn event(order_id: &str) -> (String, String) {
        (order_id.into(), format!("evt-{order_id}"))
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
        use ordermesh::proto::notification::v1::Channel as NotifyChannel;
        let note = |order_id: &str, channel: NotifyChannel| Notification {
            order_id: order_id.into(),
            channel: channel as i32,
            ..Default::default()
        };
        let mut ledger = sound();
        ledger.notifications = Some(vec![
            note("o1", NotifyChannel::Email),
            note("o1", NotifyChannel::Sms),
        ]);
        assert_eq!(ledger.violations(), vec![]);
        ledger.notifications = Some(vec![
            note("o1", NotifyChannel::Email),
            note("o1", NotifyChannel::Email),
            note("o2", NotifyChannel::Sms),
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
}
