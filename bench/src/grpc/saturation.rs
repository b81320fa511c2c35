//! 2. CreateOrder at saturation (closed loop) beside a raw tonic echo server under the same
//!    generator: throughput, and CPU time per call of this whole process.

use std::time::Duration;

use anyhow::Result;

use super::{
    cpu::cpu_seconds,
    drive::{create_orders, echo_calls, no_errors},
    servers::{Mesh, raw_echo},
};
use crate::{
    Scale,
    compare::{Better, Comparison, in_turn},
    load::{Pace, Summary, Until},
};

/// 2. CreateOrder at saturation vs a raw tonic echo server under the same closed loop.
pub async fn saturation(scale: &Scale) -> Result<Vec<Comparison>> {
    let (concurrency, seconds) = if scale.smoke { (8, 1) } else { (64, 5) };
    let pace = Pace::Closed { concurrency };
    let until = Until::Elapsed(Duration::from_secs(seconds));
    let mut throughput = Comparison::new(
        &format!("CreateOrder/s vs echo req/s ({concurrency} callers)"),
        "calls/s",
        Better::Higher,
        Some(0.3),
    );
    let mut cpu = Comparison::new(
        "CPU per CreateOrder vs per echo request (all in-process)",
        "us/call",
        Better::Lower,
        Some(3.0),
    );
    let mesh = Mesh::start().await?;
    let echo = raw_echo().await?;
    let measure = |summary: &Summary, cpu_before: f64| {
        let cpu_us = (cpu_seconds() - cpu_before) * 1e6 / summary.ok.max(1) as f64;
        (summary.throughput(), cpu_us)
    };
    for round in 0..scale.rounds {
        let ours = async {
            let before = cpu_seconds();
            let s = create_orders(&mesh.order.url(), pace, until).await?;
            Ok::<_, anyhow::Error>(measure(&s, before))
        };
        let raw = async {
            let before = cpu_seconds();
            let s = echo_calls(&echo.url(), pace, until).await?;
            no_errors("echo", &s)?;
            Ok::<_, anyhow::Error>(measure(&s, before))
        };
        let (a, b) = in_turn(round, ours, raw).await?;
        throughput.ours.push(a.0);
        throughput.raw.push(b.0);
        cpu.ours.push(a.1);
        cpu.raw.push(b.1);
    }
    echo.stop().await;
    mesh.stop().await;
    Ok(vec![throughput, cpu])
}
