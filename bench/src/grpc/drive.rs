//! The load loops the gRPC benchmarks drive their servers with: CreateOrder at an order service
//! (ours) and health Check at the echo server (the raw hop), under the same pace from
//! [`crate::load`], so the two sides differ only in what answers. The resident-memory benchmark
//! ([`crate::rss`]) drives its processes with the same loops.

use std::sync::Arc;

use anyhow::Result;
use ordermesh::proto::order::v1::order_service_client::OrderServiceClient;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::servers::channel;
use crate::load::{self, Pace, Summary, Until};

/// Runs CreateOrder against `url` under `pace` until `until`.
pub(crate) async fn create_orders(url: &str, pace: Pace, until: Until) -> Result<Summary> {
    let client = OrderServiceClient::new(channel(url).await?);
    let run = uuid::Uuid::new_v4().simple().to_string();
    Ok(load::run(pace, until, Arc::default(), move |seq| {
        let mut client = client.clone();
        let request = load::order_request(&run, seq);
        async move {
            client
                .create_order(request)
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}", s.code()))
        }
    })
    .await)
}

/// Runs health Check against `url` (the raw tonic hop) under `pace` until `until`.
pub(crate) async fn echo_calls(url: &str, pace: Pace, until: Until) -> Result<Summary> {
    let client = HealthClient::new(channel(url).await?);
    Ok(load::run(pace, until, Arc::default(), move |_| {
        let mut client = client.clone();
        async move {
            client
                .check(HealthCheckRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}", s.code()))
        }
    })
    .await)
}

/// Fails unless every call of a run succeeded: a figure that counts errors times another path.
pub(crate) fn no_errors(what: &str, summary: &Summary) -> Result<()> {
    anyhow::ensure!(
        summary.errors.is_empty(),
        "{what}: errors {:?}",
        summary.errors
    );
    Ok(())
}
