//! The OrderService gRPC implementation.
//!
//! CreateOrder is a small state machine over the stored order, so a retry with the same request_id
//! resumes wherever the first attempt stopped:
//!
//! ```text
//! (new) --insert--> PENDING_PAYMENT --charged--> PAID --publish acked--> PAID + published
//!                          |
//!                          +--declined (ErrorInfo with the payment id)--> PAYMENT_FAILED
//!                          +--no answer, unavailable, circuit open--> stays pending: a retry, or
//!                          |      the reconciler after its grace period, settles it
//!                          +--refused--> key settled at payment (CloseChargeKey), and then:
//!                                 charged -> PAID, declined -> PAYMENT_FAILED,
//!                                 closed -> deleted if this call created the order (nothing kept),
//!                                           else ABANDONED (the caller was told its order id)
//! ```
//!
//! The charge's idempotency key is made from the order id, so however often it is retried the
//! customer is charged once. No answer to an attempt undoes an earlier one that may have charged:
//! a refusal proves nothing about the attempts before it, so before giving the order up the call
//! closes its key at payment, which both tells whether a charge stands and makes sure none lands
//! later. Every end state is written by `settle`, conditionally on the order still being pending.
//! The event id is fixed when the order becomes PAID, so a re-published event is recognised by
//! consumers.

use std::time::Duration;

use ordermesh::{
    paging::PageRequest, proto::order::v1::CancelOrderRequest,
    proto::order::v1::CreateOrderRequest, proto::order::v1::GetOrderRequest,
    proto::order::v1::ListOrdersRequest, proto::order::v1::ListOrdersResponse,
    proto::order::v1::Order, proto::order::v1::order_service_server::OrderService,
    proto::payment::v1::ChargeRequest, timestamp,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tonic_types::FieldViolation;

use ordermesh::validate::{self, ValidOrder};

use crate::{
    cancel,
    convert::to_proto,
    error::OrderError,
    payment_client::{ChargeCall, ChargeError, PaymentClient},
    relay::Relay,
    request_lock::RequestLocks,
    settle::{self, Settled},
    store::{self, ItemRecord, OrderRow, Store, Writer},
};

/// Settings of the CreateOrder state machine beyond its collaborators.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CreateSettings {
    /// How long CreateOrder waits for its event to be acknowledged before answering it is pending
    /// (less if the caller's deadline comes sooner).
    pub(crate) publish_wait: Duration,
    /// Kept free before the caller's deadline to answer in time.
    pub(crate) deadline_margin: Duration,
    /// One try at settling a charge key at payment.
    pub(crate) settle_timeout: Duration,
    /// Whether the caller's `x-fault-*` headers go on to payment (demos and tests only).
    pub(crate) forward_faults: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct OrderApi {
    store: Store,
    payments: PaymentClient,
    relay: Relay,
    settings: CreateSettings,
    in_flight: RequestLocks,
}

impl OrderApi {
    pub(crate) fn new(
        store: Store,
        payments: PaymentClient,
        relay: Relay,
        settings: CreateSettings,
    ) -> Self {
        Self {
            store,
            payments,
            relay,
            settings,
            in_flight: RequestLocks::default(),
        }
    }

    async fn create(
        &self,
        metadata: &MetadataMap,
        req: CreateOrderRequest,
    ) -> Result<Order, OrderError> {
        let caller_deadline = ordermesh_platform::deadline::caller_deadline(metadata);
        let valid = validate::create_order(&req).map_err(OrderError::Invalid)?;
        // A concurrent copy of this request (a client retrying too early) waits here, then finds
        // the order as this call left it.
        let _in_flight = self.in_flight.lock(&valid.request_id).await;
        let candidate = pending_row(&valid);
        let order = self.store.insert_or_get(&candidate).await?;
        if order.request_fingerprint != valid.fingerprint {
            return Err(OrderError::RequestIdReused {
                request_id: valid.request_id,
            });
        }
        // Created by this call: no caller has seen its id yet.
        let created = order.order_id == candidate.order_id;
        let order = match order.status {
            store::Status::PendingPayment => {
                self.pay(order, &valid, metadata, caller_deadline, created)
                    .await?
            }
            // Paid (and perhaps cancelled since): the order as it is now.
            store::Status::Paid | store::Status::Cancelling | store::Status::Cancelled => order,
            // The same answer as the first attempt got.
            store::Status::PaymentFailed | store::Status::Abandoned => return Err(failure(order)),
        };
        if order.event_published_at_ms.is_some() {
            return Ok(to_proto(order));
        }
        // Paid, event in the outbox: wait a bounded time for the broker's acknowledgement, never
        // past the caller's deadline. If it does not come, the order is still accepted and the
        // event is reported pending; the relay delivers it later.
        let mut wait = self.settings.publish_wait;
        if let Some(deadline) = caller_deadline {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(self.settings.deadline_margin);
            wait = wait.min(left);
        }
        if let Some(at) = self
            .relay
            .published(&order.order_id, &order.event_id, wait)
            .await
        {
            // What the relay recorded on the order: no need to read it back.
            return Ok(to_proto(OrderRow {
                event_published_at_ms: Some(at),
                ..order
            }));
        }
        tracing::warn!(order_id = %order.order_id, event_id = %order.event_id, "event not yet acknowledged; answering with it pending");
        Ok(to_proto(order))
    }

    /// Charges a pending order and records the outcome. The caller's deadline bounds the charge, and
    /// (if so configured) its fault injection headers go on to payment. Returns the PAID order.
    async fn pay(
        &self,
        order: OrderRow,
        valid: &ValidOrder,
        metadata: &MetadataMap,
        caller_deadline: Option<Instant>,
        created: bool,
    ) -> Result<OrderRow, OrderError> {
        // The reconciler leaves the order alone for its grace period from now on (an order this
        // call created was stored with the time already). If it settled the order meanwhile, that
        // is the answer.
        if !created && !self.store.begin_payment(&order.order_id).await? {
            return match self.store.get(&order.order_id).await? {
                Some(settled) if settled.status == store::Status::Paid => Ok(settled),
                Some(settled) => Err(failure(settled)),
                None => Err(OrderError::NotFound(order.order_id)),
            };
        }
        let charge = ChargeRequest {
            idempotency_key: settle::charge_key(&order.order_id),
            order_id: order.order_id.clone(),
            amount: Some(valid.total.clone()),
            payment_method_token: valid.payment_method_token.clone(),
        };
        let forward = if self.settings.forward_faults {
            fault_headers(metadata)
        } else {
            MetadataMap::new()
        };
        let call = ChargeCall::new(charge, caller_deadline, forward);
        match self.payments.charge(call).await {
            Ok(payment) => {
                Ok(settle::paid(&self.store, &order, &payment.payment_id, Writer::Call).await?)
            }
            Err(ChargeError::Declined { payment_id, reason }) => {
                let order = self
                    .store
                    .mark_failed(
                        &order.order_id,
                        &payment_id,
                        &reason,
                        timestamp::now_millis(),
                        Writer::Call,
                    )
                    .await?;
                Err(failure(order))
            }
            Err(ChargeError::Refused(status)) => self.refused(order, status, created).await,
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

    /// Payment refused an attempt. A refusal says nothing of the attempts before it (this call's
    /// own retries, or an earlier call's that timed out), so the order is given up only once its
    /// charge key is settled at payment: closed, so that nothing can land under it any more, or
    /// found charged or declined, which is then what the order records.
    async fn refused(
        &self,
        order: OrderRow,
        status: Status,
        created: bool,
    ) -> Result<OrderRow, OrderError> {
        let reason = format!(
            "payment refused the charge ({:?}: {})",
            status.code(),
            status.message()
        );
        let settled = settle::settle_key(
            &self.payments,
            &order.order_id,
            &reason,
            self.settings.settle_timeout,
        )
        .await;
        tracing::info!(order_id = %order.order_id, code = ?status.code(), settled = settled.label(), "charge refused; key settled");
        match &settled {
            // Nothing stands under the key and nothing can: a new order leaves nothing behind.
            Settled::Closed { .. } if created => {
                self.store.discard_pending(&order.order_id).await?;
                return Err(refusal(status));
            }
            Settled::Unknown(detail) => {
                return Err(OrderError::PaymentUnsettled {
                    order_id: order.order_id,
                    detail: format!("{reason}; the charge key could not be settled ({detail})"),
                });
            }
            _ => {}
        }
        match settle::record(&self.store, &order, &settled, Writer::Call).await? {
            Some(order) if order.status == store::Status::Paid => Ok(order),
            Some(order) if order.status != store::Status::PendingPayment => Err(failure(order)),
            _ => Err(OrderError::PaymentUnsettled {
                order_id: order.order_id,
                detail: reason,
            }),
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

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let (metadata, _, request) = request.into_parts();
        Ok(Response::new(self.cancel(&metadata, request).await?))
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

impl OrderApi {
    /// CancelOrder: see `cancel` for the states. A pending order is settled first, as the
    /// reconciler would settle it; an order that was never paid has nothing to refund. Its fault
    /// injection headers go on to payment's Refund as CreateOrder's go to Charge (if so
    /// configured).
    async fn cancel(
        &self,
        metadata: &MetadataMap,
        request: CancelOrderRequest,
    ) -> Result<Order, OrderError> {
        let valid = validate::cancel_order(&request).map_err(OrderError::Invalid)?;
        // One cancel of an order at a time in this replica; other replicas are kept apart by the
        // conditional writes and the refund key.
        let _in_flight = self
            .in_flight
            .lock(&format!("cancel:{}", valid.order_id))
            .await;
        let Some(mut order) = self.store.get(&valid.order_id).await? else {
            return Err(OrderError::NotFound(valid.order_id));
        };
        if order.status == store::Status::PendingPayment {
            let settled = settle::settle_key(
                &self.payments,
                &order.order_id,
                "cancelled before payment completed",
                self.settings.settle_timeout,
            )
            .await;
            match settle::record(&self.store, &order, &settled, Writer::Call).await? {
                Some(after) => order = after,
                None => {
                    return Err(OrderError::PaymentUnsettled {
                        order_id: order.order_id,
                        detail: "payment could not say whether the order was charged".to_owned(),
                    });
                }
            }
        }
        let order = match order.status {
            store::Status::Paid => {
                self.store
                    .begin_cancel(&order.order_id, &valid.reason, timestamp::now_millis())
                    .await?
            }
            store::Status::Cancelling | store::Status::Cancelled => order,
            store::Status::PendingPayment
            | store::Status::PaymentFailed
            | store::Status::Abandoned => {
                return Err(OrderError::NotPaid {
                    status: format!("{:?}", order.status),
                    order_id: order.order_id,
                });
            }
        };
        let forward = if self.settings.forward_faults {
            fault_headers(metadata)
        } else {
            MetadataMap::new()
        };
        let order = match cancel::finish(
            &self.store,
            &self.payments,
            order,
            self.settings.settle_timeout,
            &forward,
        )
        .await?
        {
            cancel::Finished::Cancelled(order) => {
                self.relay.wake();
                order
            }
            // Accepted: answered CANCELLING, finished later (by a call again or the reconciler).
            cancel::Finished::Waiting { order, .. } => order,
        };
        Ok(to_proto(order))
    }
}

/// The fault injection headers (`x-fault-*`) of a CreateOrder or CancelOrder, to pass on to
/// payment, so a caller can make payment misbehave for one order and watch what the order service
/// does about it.
fn fault_headers(metadata: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for entry in metadata.iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry
            && key.as_str().starts_with(ordermesh::headers::FAULT_PREFIX)
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
        payment_attempted_at_ms: now,
        cancel: store::Cancel::default(),
    }
}

/// The error a settled, unpaid order answers with, first time and every retry.
fn failure(order: OrderRow) -> OrderError {
    match order.status {
        store::Status::Abandoned => OrderError::Abandoned {
            order_id: order.order_id,
            reason: order.failure_reason,
        },
        _ => OrderError::PaymentDeclined {
            order_id: order.order_id,
            reason: order.failure_reason,
        },
    }
}

/// Payment's refusal, passed on to the caller with its code and details.
fn refusal(status: Status) -> OrderError {
    OrderError::PaymentRefused {
        code: status.code(),
        message: status.message().to_owned(),
        details: Box::new(tonic_types::StatusExt::get_error_details(&status)),
    }
}
