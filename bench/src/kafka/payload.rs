//! The events every Kafka benchmark sends: real OrderPlaced events, encoded as the order service
//! encodes them, with their CloudEvents headers. Built once, before any clock starts, so encoding
//! is never timed and both sides send the very same bytes.

use anyhow::Result;
use ordermesh::{
    events, events::CloudEventHeaders, proto::events::v1::OrderPlaced, proto::order::v1::Customer,
    proto::order::v1::LineItem, proto::types::v1::Money, timestamp,
};

/// An encoded OrderPlaced ready to send.
pub(super) struct Event {
    pub(super) order_id: String,
    pub(super) payload: Vec<u8>,
    pub(super) headers: CloudEventHeaders,
}

/// `count` OrderPlaced events as the order service publishes them: its id formats, a customer with
/// both contacts, two line items, a total, a payment id.
pub(super) fn order_events(count: usize) -> Result<Vec<Event>> {
    let placed_at = timestamp::now_millis();
    (0..count)
        .map(|i| {
            let price = |minor_units| Money {
                currency_code: "EUR".into(),
                minor_units,
            };
            let event = OrderPlaced {
                event_id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
                order_id: format!("ord_{}", uuid::Uuid::now_v7().simple()),
                customer: Some(Customer {
                    email: format!("customer{i}@example.com"),
                    phone: "+14155550100".into(),
                }),
                items: vec![
                    LineItem {
                        sku: "SKU-BOOK-0042".into(),
                        quantity: 2,
                        unit_price: Some(price(1_999)),
                    },
                    LineItem {
                        sku: "SKU-MUG-0007".into(),
                        quantity: 1,
                        unit_price: Some(price(1_250)),
                    },
                ],
                total: Some(price(5_248)),
                placed_at: Some(timestamp::from_millis(placed_at)),
                payment_id: format!("pay_{}", uuid::Uuid::now_v7().simple()),
            };
            Ok(Event {
                payload: events::encode_order_placed(&event)?,
                headers: CloudEventHeaders::order_placed(&event),
                order_id: event.order_id,
            })
        })
        .collect()
}
