//! The OrderService gRPC implementation.
//!
//! CreateOrder is a small state machine over the stored order, so a retry with the same request_id
//! resumes wherever the first attempt stopped:
//!
//! ```text
//! (new) --insert--> PENDING_PAYMENT --charge ok--> PAID --publish acked--> PAID + published
//!                          |                         ^
//!                          +--declined--> PAYMENT_FAILED
//!                          +--request refused by payment--> (deleted: nothing kept)
//! ```
//!
//! The charge uses the order id as idempotency key, so however often it is retried the customer is
//! charged once; the event id is fixed when the order becomes PAID, so a re-published event is
//! recognised by consumers.

use std::time::Duration;

use ordermesh::{
    paging::PageRequest,
    proto::{
        events::v1::OrderPlaced,
        order::v1::{
            CreateOrderRequest, Customer, GetOrderRequest, LineItem, ListOrdersRequest,
            ListOrdersResponse, Order, OrderStatus, order_service_server::OrderService,
        },
        payment::v1::ChargeRequest,
        types::v1::Money,
    },
    timestamp, trace_context,
};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tonic_types::FieldViolation;

use crate::{
    error::OrderError,
    payment_client::{ChargeCall, ChargeError, PaymentClient},
    relay::Relay,
    request_lock::RequestLocks,
    store::{self, ItemRecord, OrderRow, Paid, Store},
    validate::{self, ValidOrder},
};

#[derive(Debug, Clone)]
pub(crate) struct OrderApi {
    store: Store,
    payments: PaymentClient,
    relay: Relay,
    /// How long CreateOrder waits for its event to be acknowledged before answering it is pending.
    publish_wait: Duration,
    in_flight: RequestLocks,
}

impl OrderApi {
    pub(crate) fn new(
        store: Store,
        payments: PaymentClient,
        relay: Relay,
        publish_wait: Duration,
    ) -> Self {
        Self {
            store,
            payments,
            relay,
            publish_wait,
            in_flight: RequestLocks::default(),
        }
    }

    async fn create(
        &self,
        metadata: &MetadataMap,
        req: CreateOrderRequest,
    ) -> Result<Order, OrderError> {
        let valid = validate::create_order(&req).map_err(OrderError::Invalid)?;
        // A concurrent copy of this request (a client retrying too early) waits here, then finds
        // the order as this call left it.
        let _in_flight = self.in_flight.lock(&valid.request_id).await;
        let order = self.store.insert_or_get(&pending_row(&valid)).await?;
        if order.request_fingerprint != valid.fingerprint {
            return Err(OrderError::RequestIdReused {
                request_id: valid.request_id,
            });
        }
        let order = match order.status {
            store::Status::PendingPayment => self.pay(order, &valid, metadata).await?,
            store::Status::Paid => order,
            // The same answer as the first attempt got.
            store::Status::PaymentFailed => return Err(failure(order)),
        };
        if order.event_published_at_ms.is_some() {
            return Ok(to_proto(order));
        }
        // Paid, event in the outbox: wait a bounded time for the broker's acknowledgement. If it does
        // not come, the order is still accepted and the event is reported pending; the relay
        // delivers it later.
        if self
            .relay
            .published(&order.order_id, &order.event_id, self.publish_wait)
            .await
        {
            let published = self.store.get(&order.order_id).await?;
            return Ok(to_proto(published.unwrap_or(order)));
        }
        tracing::warn!(order_id = %order.order_id, event_id = %order.event_id, "event not yet acknowledged; answering with it pending");
        Ok(to_proto(order))
    }

    /// Charges a pending order and records the outcome. The caller's deadline bounds the charge, and
    /// its fault injection headers go on to payment.
    async fn pay(
        &self,
        order: OrderRow,
        valid: &ValidOrder,
        metadata: &MetadataMap,
    ) -> Result<OrderRow, OrderError> {
        let charge = ChargeRequest {
            idempotency_key: format!("order:{}", order.order_id),
            order_id: order.order_id.clone(),
            amount: Some(valid.total.clone()),
            payment_method_token: valid.payment_method_token.clone(),
        };
        let call = ChargeCall::new(
            charge,
            ordermesh::grpc::caller_deadline(metadata),
            forwarded(metadata),
        );
        let result = self.payments.charge(call).await;
        let now = timestamp::now_millis();
        match result {
            Ok(payment) => {
                let event_id = format!("evt_{}", uuid::Uuid::now_v7().simple());
                let encode = |paid: &OrderRow| {
                    ordermesh::events::encode_order_placed(&order_placed(paid))
                        .map_err(|e| sqlx::Error::Encode(Box::new(e)))
                };
                // The relay publishes later, from its own task: the event carries this call's trace
                // context with it, through the outbox row.
                let trace =
                    trace_context::to_json(&trace_context::headers_of(&tracing::Span::current()));
                let paid = Paid {
                    payment_id: &payment.payment_id,
                    event_id: &event_id,
                    trace_context: trace.as_deref(),
                    now_ms: now,
                };
                Ok(self.store.mark_paid(&order.order_id, paid, encode).await?)
            }
            Err(ChargeError::Declined { payment_id, reason }) => {
                let order = self
                    .store
                    .mark_failed(&order.order_id, &payment_id, &reason, now)
                    .await?;
                Err(failure(order))
            }
            // Payment found the request itself wrong (an unknown payment method, say): a refused
            // request leaves nothing behind, so the pending order goes. No charge was made and no
            // event written; the same request, sent again, is checked again.
            Err(ChargeError::Refused(status)) => {
                self.store.discard_pending(&order.order_id).await?;
                Err(OrderError::PaymentRefused {
                    code: status.code(),
                    message: status.message().to_owned(),
                    details: Box::new(tonic_types::StatusExt::get_error_details(&status)),
                })
            }
            Err(ChargeError::DeadlineExceeded(detail)) => {
                tracing::warn!(order_id = %order.order_id, %detail, "payment deadline exceeded");
                Err(OrderError::PaymentDeadline {
                    order_id: order.order_id,
                    detail,
                })
            }
            Err(ChargeError::CircuitOpen(open)) => Err(OrderError::PaymentCircuitOpen {
                order_id: order.order_id,
                retry_after: open.retry_after,
            }),
            Err(ChargeError::Unavailable(status)) => {
                tracing::warn!(order_id = %order.order_id, code = ?status.code(), message = status.message(), "payment unavailable");
                Err(OrderError::PaymentUnavailable {
                    order_id: order.order_id,
                    detail: format!("{:?}: {}", status.code(), status.message()),
                })
            }
        }
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let (metadata, _, request) = request.into_parts();
        Ok(Response::new(self.create(&metadata, request).await?))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let id = request.into_inner().order_id;
        if id.is_empty() || id.len() > validate::MAX_ID_LEN {
            return Err(OrderError::Invalid(vec![FieldViolation::new(
                "order_id",
                format!("required, at most {} characters", validate::MAX_ID_LEN),
            )])
            .into());
        }
        match self.store.get(&id).await.map_err(OrderError::from)? {
            Some(order) => Ok(Response::new(to_proto(order))),
            None => Err(OrderError::NotFound(id).into()),
        }
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let req = request.into_inner();
        let mut violations = Vec::new();
        let page = PageRequest::parse(req.page_size, &req.page_token, &mut violations);
        if !violations.is_empty() {
            return Err(OrderError::Invalid(violations).into());
        }
        let mut rows = self
            .store
            .list(page.after, page.fetch_limit())
            .await
            .map_err(OrderError::from)?;
        let next_page_token = page.finish(&mut rows, |r| r.seq);
        Ok(Response::new(ListOrdersResponse {
            orders: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }
}

/// Request metadata passed on to payment: the fault injection headers (`x-fault-*`), so a caller can
/// make payment misbehave for one CreateOrder and watch what the order service does about it.
fn forwarded(metadata: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for entry in metadata.iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry
            && key.as_str().starts_with("x-fault-")
        {
            out.append(key.clone(), value.clone());
        }
    }
    out
}

fn pending_row(valid: &ValidOrder) -> OrderRow {
    let now = timestamp::now_millis();
    OrderRow {
        seq: 0,
        order_id: format!("ord_{}", uuid::Uuid::now_v7().simple()),
        request_id: valid.request_id.clone(),
        request_fingerprint: valid.fingerprint.clone(),
        customer_email: valid.customer.email.clone(),
        customer_phone: valid.customer.phone.clone(),
        items: valid
            .items
            .iter()
            .map(|item| {
                let price = item.unit_price.clone().unwrap_or_default();
                ItemRecord {
                    sku: item.sku.clone(),
                    quantity: item.quantity,
                    currency_code: price.currency_code,
                    unit_minor_units: price.minor_units,
                }
            })
            .collect(),
        currency_code: valid.total.currency_code.clone(),
        total_minor_units: valid.total.minor_units,
        status: store::Status::PendingPayment,
        payment_id: String::new(),
        failure_reason: String::new(),
        event_id: String::new(),
        event_published_at_ms: None,
        created_at_ms: now,
        updated_at_ms: now,
    }
}

/// The OrderPlaced event of a paid order.
fn order_placed(order: &OrderRow) -> OrderPlaced {
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

/// The error a PAYMENT_FAILED order answers with, first time and every retry.
fn failure(order: OrderRow) -> OrderError {
    OrderError::PaymentDeclined {
        order_id: order.order_id,
        reason: order.failure_reason,
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

fn to_proto(order: OrderRow) -> Order {
    let event_pending =
        order.status == store::Status::Paid && order.event_published_at_ms.is_none();
    let status = match order.status {
        store::Status::PendingPayment => OrderStatus::PendingPayment,
        store::Status::Paid => OrderStatus::Paid,
        store::Status::PaymentFailed => OrderStatus::PaymentFailed,
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
