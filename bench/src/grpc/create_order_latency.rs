//! 1. CreateOrder latency at low load (open loop, 50/s) beside the sum of its parts measured in the
//!    same round: two raw tonic hops, one raw produce, one durable commit (see `parts`).

use anyhow::Result;

use super::{
    drive::{create_orders, echo_calls, no_errors},
    parts::Parts,
    servers::{Mesh, raw_echo},
};
use crate::{
    Scale,
    compare::{Better, Comparison, in_turn},
    load::{Pace, Until},
};

/// 1. CreateOrder at low load vs the sum of its parts.
pub async fn create_order_latency(scale: &Scale) -> Result<Vec<Comparison>> {
    let rate = 50.0;
    let calls = if scale.smoke {
        20
    } else {
        scale.messages.min(400)
    } as u64;
    let pace = Pace::Open {
        rate,
        max_in_flight: 1_000,
    };
    let mut p50 = Comparison::new(
        "CreateOrder p50 at 50/s vs sum of parts",
        "ms",
        Better::Lower,
        Some(1.15),
    );
    let mut p99 = Comparison::new(
        "CreateOrder p99 at 50/s vs sum of parts",
        "ms",
        Better::Lower,
        Some(1.5),
    );
    let mesh = Mesh::start().await?;
    let echo = raw_echo().await?;
    let parts = Parts::new(&mesh.broker).await?;
    for round in 0..scale.rounds {
        let ours = async {
            let s = create_orders(&mesh.order.url(), pace, Until::Calls(calls)).await?;
            no_errors("CreateOrder", &s)?;
            Ok::<_, anyhow::Error>((s.latency_ms(0.5), s.latency_ms(0.99)))
        };
        let raw = async {
            let hop = echo_calls(&echo.url(), pace, Until::Calls(calls)).await?;
            no_errors("raw hop", &hop)?;
            let produce = parts.produce(pace, calls).await?;
            let commit = parts.commit(pace, calls).await?;
            // Two hops (client -> order, order -> payment), one produce, one commit.
            let sum = |q| 2.0 * hop.latency_ms(q) + produce.latency_ms(q) + commit.latency_ms(q);
            Ok::<_, anyhow::Error>((sum(0.5), sum(0.99)))
        };
        let (a, b) = in_turn(round, ours, raw).await?;
        p50.ours.push(a.0);
        p50.raw.push(b.0);
        p99.ours.push(a.1);
        p99.raw.push(b.1);
    }
    echo.stop().await;
    drop(parts);
    mesh.stop().await;
    Ok(vec![p50, p99])
}
