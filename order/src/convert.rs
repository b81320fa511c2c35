//! A stored order as the API answers with it and as its OrderPlaced event tells it.

use ordermesh::{
    proto::events::v1::OrderPlaced, proto::order::v1::Customer, proto::order::v1::LineItem,
    proto::order::v1::Order, proto::order::v1::OrderStatus, proto::types::v1::Money, timestamp,
};

use crate::store::{self, OrderRow};

/// The OrderPlaced event of a paid order.
pub(crate) fn order_placed(order: &OrderRow) -> OrderPlaced {
    OrderPlaced {
        event_id: order.event_id.clone(),
        order_id: order.order_id.clone(),
        customer: Some(customer(order)),
        items: items(order),
        total: Some(total(order)),
        placed_at: Some(timestamp::from_millis(order.updated_at_ms)),
        payment_id: order.payment_id.clone(),
    }
}

pub(crate) fn to_proto(order: OrderRow) -> Order {
    let event_pending =
        order.status == store::Status::Paid && order.event_published_at_ms.is_none();
    let status = match order.status {
        store::Status::PendingPayment => OrderStatus::PendingPayment,
        store::Status::Paid => OrderStatus::Paid,
        store::Status::PaymentFailed => OrderStatus::PaymentFailed,
        store::Status::Abandoned => OrderStatus::Abandoned,
    };
    Order {
        customer: Some(customer(&order)),
        items: items(&order),
        total: Some(total(&order)),
        status: status.into(),
        created_at: Some(timestamp::from_millis(order.created_at_ms)),
        updated_at: Some(timestamp::from_millis(order.updated_at_ms)),
        order_id: order.order_id,
        request_id: order.request_id,
        payment_id: order.payment_id,
        failure_reason: order.failure_reason,
        event_id: order.event_id,
        event_pending,
    }
}

fn customer(order: &OrderRow) -> Customer {
    Customer {
        email: order.customer_email.clone(),
        phone: order.customer_phone.clone(),
    }
}

fn items(order: &OrderRow) -> Vec<LineItem> {
    order
        .items
        .iter()
        .map(|item| LineItem {
            sku: item.sku.clone(),
            quantity: item.quantity,
            unit_price: Some(Money {
                currency_code: item.currency_code.clone(),
                minor_units: item.unit_minor_units,
            }),
        })
        .collect()
}

fn total(order: &OrderRow) -> Money {
    Money {
        currency_code: order.currency_code.clone(),
        minor_units: order.total_minor_units,
    }
}
