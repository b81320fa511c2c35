//! A stored order as the API answers with it and as its OrderPlaced event tells it.

use ordermesh::{
    proto::events::v1::{OrderCancelled, OrderPlaced},
    proto::order::v1::Customer,
    proto::order::v1::LineItem,
    proto::order::v1::Order,
    proto::order::v1::OrderStatus,
    proto::types::v1::Money,
    timestamp,
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

/// The OrderCancelled event of a cancelled order: its whole total was refunded.
pub(crate) fn order_cancelled(order: &OrderRow) -> OrderCancelled {
    OrderCancelled {
        event_id: order.cancel.event_id.clone(),
        order_id: order.order_id.clone(),
        customer: Some(customer(order)),
        refund_id: order.cancel.refund_id.clone(),
        amount: Some(total(order)),
        reason: order.cancel.reason.clone(),
        cancelled_at: order.cancel.cancelled_at_ms.map(timestamp::from_millis),
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
        store::Status::Cancelling => OrderStatus::Cancelling,
        store::Status::Cancelled => OrderStatus::Cancelled,
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
        cancel_reason: order.cancel.reason,
        refund_id: order.cancel.refund_id,
        cancelled_at: order.cancel.cancelled_at_ms.map(timestamp::from_millis),
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
