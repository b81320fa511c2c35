//! What a notification tells the customer: the event it is for, read from a message by its
//! `ce_type` header.
//!
//! The policy for event types, the same on every path (live, retry, replay):
//! - `ordermesh.events.v1.OrderPlaced`: "your order is confirmed";
//! - `ordermesh.events.v1.OrderCancelled`: "your order is cancelled and refunded";
//! - no `ce_type` at all: read as OrderPlaced (what the order service published before it wrote
//!   types, and what a hand-written test event often is);
//! - any other type: not for the notifier. Skipped, logged with its type and counted
//!   (`ordermesh.consumer.handled{outcome="skipped"}`; the type is not a label, since any producer
//!   can write any type and each would be a series of its own), never dead-lettered: another service may publish new types on the same topic, and an old notifier
//!   must let them pass rather than block or park them.
//!
//! A known type that cannot be read (bad JSON, a required field missing) is poison, parked on the
//! dead-letter topic with the reason.

use ordermesh::{
    events::{self, EventError, ORDER_CANCELLED_TYPE, ORDER_PLACED_TYPE},
    proto::{
        events::v1::{OrderCancelled, OrderPlaced},
        order::v1::Customer,
    },
};

/// An event the notifier notifies customers of.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Notice {
    Placed(OrderPlaced),
    Cancelled(OrderCancelled),
}

impl Notice {
    /// Reads `payload` as the event `ce_type` names: None for a type the notifier does not act on.
    pub(crate) fn read(ce_type: &str, payload: &[u8]) -> Option<Result<Self, EventError>> {
        match ce_type {
            "" | ORDER_PLACED_TYPE => Some(events::decode(payload).map(Notice::Placed)),
            ORDER_CANCELLED_TYPE => Some(events::decode(payload).map(Notice::Cancelled)),
            _ => None,
        }
    }

    pub(crate) fn event_id(&self) -> &str {
        match self {
            Notice::Placed(event) => &event.event_id,
            Notice::Cancelled(event) => &event.event_id,
        }
    }

    pub(crate) fn order_id(&self) -> &str {
        match self {
            Notice::Placed(event) => &event.order_id,
            Notice::Cancelled(event) => &event.order_id,
        }
    }

    pub(crate) fn customer(&self) -> Option<&Customer> {
        match self {
            Notice::Placed(event) => event.customer.as_ref(),
            Notice::Cancelled(event) => event.customer.as_ref(),
        }
    }

    /// The email's subject.
    pub(crate) fn subject(&self) -> String {
        match self {
            Notice::Placed(event) => format!("Order {} confirmed", event.order_id),
            Notice::Cancelled(event) => format!("Order {} cancelled", event.order_id),
        }
    }

    /// The text of the notification, the same on both channels.
    pub(crate) fn text(&self) -> String {
        let amount = |money: &Option<ordermesh::proto::types::v1::Money>| {
            let money = money.clone().unwrap_or_default();
            ordermesh::money::formatted(money.minor_units, &money.currency_code)
        };
        match self {
            Notice::Placed(event) => format!(
                "Your order {} is confirmed. Total: {}.",
                event.order_id,
                amount(&event.total)
            ),
            Notice::Cancelled(event) => format!(
                "Your order {} is cancelled. {} is refunded to your payment method.",
                event.order_id,
                amount(&event.amount)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordermesh::proto::types::v1::Money;

    fn customer() -> Option<Customer> {
        Some(Customer {
            email: "ada@example.com".into(),
            phone: "+14155550100".into(),
        })
    }

    #[test]
    fn each_known_type_is_read_as_itself_and_other_types_are_not_read() {
        let placed = OrderPlaced {
            event_id: "evt_1".into(),
            order_id: "ord_1".into(),
            customer: customer(),
            total: Some(Money {
                currency_code: "EUR".into(),
                minor_units: 2_500,
            }),
            ..Default::default()
        };
        let cancelled = OrderCancelled {
            event_id: "evt_2".into(),
            order_id: "ord_1".into(),
            customer: customer(),
            amount: placed.total.clone(),
            ..Default::default()
        };
        let placed_json = events::encode(&placed).unwrap();
        let cancelled_json = events::encode(&cancelled).unwrap();
        let read = |ce_type, json: &[u8]| Notice::read(ce_type, json).map(|r| r.unwrap());
        assert_eq!(
            read(ORDER_PLACED_TYPE, &placed_json),
            Some(Notice::Placed(placed.clone()))
        );
        assert_eq!(read("", &placed_json), Some(Notice::Placed(placed)));
        let notice = read(ORDER_CANCELLED_TYPE, &cancelled_json).unwrap();
        assert_eq!(notice, Notice::Cancelled(cancelled));
        assert_eq!(notice.subject(), "Order ord_1 cancelled");
        assert!(
            notice.text().contains("25.00 EUR is refunded"),
            "{}",
            notice.text()
        );
        assert!(Notice::read("example.v1.SomethingElse", &placed_json).is_none());
        assert!(
            Notice::read(ORDER_CANCELLED_TYPE, b"{}").is_some_and(|r| r.is_err()),
            "a known type that cannot be read is poison"
        );
    }
}
