//! A fault campaign: many CreateOrder calls with payment faults injected at random (from a seed,
//! see [`plan`]), some requests sent again, some accepted orders cancelled (some twice, some with
//! faults on the refund), then a wait until the order service has settled every pending order and
//! finished every cancel, then the ledger audit ([`crate::audit`]). Answers are not judged
//! (faulted calls are meant to fail, with many codes); only the ledger at the end is.
//!
//! The steps are separate functions, so the mesh tests run them against a test mesh and the
//! `ordermesh-load --faults random` binary against any endpoint.

pub mod plan;
mod report;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use ordermesh::proto::order::v1::{CreateOrderRequest, order_service_client::OrderServiceClient};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tonic::{metadata::MetadataValue, transport::Channel};

use self::plan::{Faults, PlannedCall};
pub use self::report::Report;
use crate::audit;

/// What the calls of a campaign got.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Answers by gRPC code name (`OK`, `UNAVAILABLE`, ...).
    pub answers: BTreeMap<String, u64>,
    /// Request ids answered with an order at least once: their orders must be kept.
    pub accepted: HashSet<String>,
    pub calls: u64,
    pub faulted_calls: u64,
    /// CancelOrder calls planned (made only for the request ids answered with an order).
    pub cancels_planned: u64,
    pub cancel_calls: u64,
    pub cancel_faulted_calls: u64,
    /// CancelOrder answers by code name, an OK by the status it answered with (`OK CANCELLED`,
    /// `OK CANCELLING`: accepted, the refund to be finished later).
    pub cancel_answers: BTreeMap<String, u64>,
    /// Order ids asked to cancel.
    pub cancel_asked: HashSet<String>,
    /// Order ids whose cancel was answered OK at least once: they must end CANCELLED.
    pub cancel_accepted: HashSet<String>,
    pub elapsed: Duration,
}

/// Makes the planned calls, at most `concurrency` in flight, each with deadline `timeout`. A
/// resend waits its pause after the first call's answer, a cancel its pause after the last
/// CreateOrder answer (with an order; without one there is nothing to cancel), a second cancel
/// its pause after the first; none holds a slot while it waits.
pub async fn execute(
    client: OrderServiceClient<Channel>,
    calls: Vec<PlannedCall>,
    concurrency: usize,
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let caller = Caller {
        client,
        slots: Arc::new(Semaphore::new(concurrency.max(1))),
        outcome: Arc::new(Mutex::new(Outcome {
            cancels_planned: calls.iter().map(PlannedCall::cancels).sum::<usize>() as u64,
            ..Outcome::default()
        })),
        timeout,
    };
    let mut tasks = JoinSet::new();
    for call in calls {
        let caller = caller.clone();
        tasks.spawn(async move {
            let mut order_id = caller.create(&call.request, call.faults.as_ref()).await;
            if let Some(resend) = &call.resend {
                tokio::time::sleep(resend.pause).await;
                if let Some(id) = caller.create(&call.request, resend.faults.as_ref()).await {
                    order_id = Some(id);
                }
            }
            if let (Some(cancel), Some(order_id)) = (&call.cancel, order_id) {
                tokio::time::sleep(cancel.pause).await;
                caller.cancel(&order_id, cancel.faults.as_ref()).await;
                if let Some(again) = &cancel.again {
                    tokio::time::sleep(again.pause).await;
                    caller.cancel(&order_id, again.faults.as_ref()).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut outcome = caller.outcome().clone();
    outcome.elapsed = started.elapsed();
    outcome
}

/// What every call of a campaign shares: the client, the slots that bound the calls in flight,
/// and the outcome they add to.
#[derive(Clone)]
struct Caller {
    client: OrderServiceClient<Channel>,
    slots: Arc<Semaphore>,
    outcome: Arc<Mutex<Outcome>>,
    timeout: Duration,
}

impl Caller {
    fn outcome(&self) -> std::sync::MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One CreateOrder; the order id it was answered with, if any.
    async fn create(
        &self,
        request: &CreateOrderRequest,
        faults: Option<&Faults>,
    ) -> Option<String> {
        let Ok(_slot) = self.slots.clone().acquire_owned().await else {
            return None;
        };
        let answer = self
            .client
            .clone()
            .create_order(with_faults(request.clone(), faults, self.timeout))
            .await;
        let code = match &answer {
            Ok(_) => "OK".to_owned(),
            Err(status) => code_name(status.code()),
        };
        let mut outcome = self.outcome();
        *outcome.answers.entry(code).or_default() += 1;
        outcome.calls += 1;
        outcome.faulted_calls += u64::from(faults.is_some());
        let order = answer.ok()?.into_inner();
        outcome.accepted.insert(request.request_id.clone());
        Some(order.order_id)
    }

    /// One CancelOrder of `order_id`.
    async fn cancel(&self, order_id: &str, faults: Option<&Faults>) {
        let Ok(_slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        let answer = self
            .client
            .clone()
            .cancel_order(with_faults(
                plan::cancel_request(order_id),
                faults,
                self.timeout,
            ))
            .await;
        let code = match &answer {
            Ok(order) => format!(
                "OK {}",
                order
                    .get_ref()
                    .status()
                    .as_str_name()
                    .trim_start_matches("ORDER_STATUS_")
            ),
            Err(status) => code_name(status.code()),
        };
        let mut outcome = self.outcome();
        *outcome.cancel_answers.entry(code).or_default() += 1;
        outcome.cancel_calls += 1;
        outcome.cancel_faulted_calls += u64::from(faults.is_some());
        outcome.cancel_asked.insert(order_id.to_owned());
        if answer.is_ok() {
            outcome.cancel_accepted.insert(order_id.to_owned());
        }
    }
}

/// A code as gRPC spells it (`DEADLINE_EXCEEDED`), from tonic's name for it (`DeadlineExceeded`).
fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `body` with deadline `timeout` and the headers asking for `faults`.
fn with_faults<T>(body: T, faults: Option<&Faults>, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request.set_timeout(timeout);
    for (name, value) in faults.map(Faults::headers).unwrap_or_default() {
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            request.metadata_mut().insert(name, value);
        }
    }
    request
}

/// How the wait for settlement ended.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    /// Orders still PENDING_PAYMENT when the wait ended (0 unless it timed out).
    pub pending: usize,
    /// Orders still CANCELLING when the wait ended (0 unless it timed out).
    pub cancelling: usize,
    pub waited: Duration,
}

/// Polls ListOrders until no order is PENDING_PAYMENT or CANCELLING (the reconciler settles what
/// the calls left pending and finishes the cancels whose refund failed), or `timeout` passes.
pub async fn settle(
    client: &mut OrderServiceClient<Channel>,
    timeout: Duration,
) -> Result<Settled> {
    let started = Instant::now();
    loop {
        let orders = audit::all_orders(client).await?;
        let (pending, cancelling) = (
            audit::count_pending(&orders),
            audit::count_cancelling(&orders),
        );
        if (pending == 0 && cancelling == 0) || started.elapsed() >= timeout {
            return Ok(Settled {
                pending,
                cancelling,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }
}
