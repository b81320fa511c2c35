//! A fault campaign: many CreateOrder calls with payment faults injected at random (from a seed,
//! see [`plan`]), some requests sent again, then a wait until the order service has settled every
//! pending order, then the ledger audit ([`crate::audit`]). Answers are not judged (faulted calls
//! are meant to fail, with many codes); only the ledger at the end is.
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
use ordermesh::proto::order::v1::order_service_client::OrderServiceClient;
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
    pub elapsed: Duration,
}

/// Makes the planned calls, at most `concurrency` in flight, each with deadline `timeout`. A
/// resend waits its pause after the first call's answer (without holding a slot meanwhile).
pub async fn execute(
    client: OrderServiceClient<Channel>,
    calls: Vec<PlannedCall>,
    concurrency: usize,
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut tasks = JoinSet::new();
    for call in calls {
        let (client, slots, outcome) = (client.clone(), slots.clone(), outcome.clone());
        tasks.spawn(async move {
            let send = |faults: Option<Faults>| {
                let (mut client, slots, outcome) = (client.clone(), slots.clone(), outcome.clone());
                let request = call.request.clone();
                async move {
                    let Ok(_slot) = slots.acquire_owned().await else {
                        return;
                    };
                    let faulted = faults.is_some();
                    let answer = client
                        .create_order(with_faults(request.clone(), faults.as_ref(), timeout))
                        .await;
                    let code = match &answer {
                        Ok(_) => "OK".to_owned(),
                        Err(status) => code_name(status.code()),
                    };
                    let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
                    *outcome.answers.entry(code).or_default() += 1;
                    outcome.calls += 1;
                    outcome.faulted_calls += u64::from(faulted);
                    if answer.is_ok() {
                        outcome.accepted.insert(request.request_id);
                    }
                }
            };
            send(call.faults.clone()).await;
            if let Some(resend) = &call.resend {
                tokio::time::sleep(resend.pause).await;
                send(resend.faults.clone()).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner()).clone();
    outcome.elapsed = started.elapsed();
    outcome
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

fn with_faults(
    body: ordermesh::proto::order::v1::CreateOrderRequest,
    faults: Option<&Faults>,
    timeout: Duration,
) -> tonic::Request<ordermesh::proto::order::v1::CreateOrderRequest> {
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
    pub waited: Duration,
}

/// Polls ListOrders until no order is PENDING_PAYMENT (the reconciler settles what the calls left
/// pending), or `timeout` passes.
pub async fn settle(
    client: &mut OrderServiceClient<Channel>,
    timeout: Duration,
) -> Result<Settled> {
    let started = Instant::now();
    loop {
        let pending = audit::count_pending(&audit::all_orders(client).await?);
        if pending == 0 || started.elapsed() >= timeout {
            return Ok(Settled {
                pending,
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
