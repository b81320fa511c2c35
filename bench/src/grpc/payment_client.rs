//! 3. The order service's payment client (its whole middleware stack: deadline, retry, breaker,
//!    telemetry layer; no tracing subscriber installed) beside the raw generated tonic client,
//!    both making sequential calls to the same stub payment server that answers at once, so only
//!    the client side differs.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use ordermesh::proto::{
    payment::v1::{ChargeRequest, payment_service_client::PaymentServiceClient},
    types::v1::Money,
};
use ordermesh_order::payment_client::{
    ChargeCall, PaymentClient, PaymentClientConfig, breaker::BreakerConfig,
};

use super::{
    cpu::cpu_seconds,
    drive::no_errors,
    servers::{channel, stub_payment},
};
use crate::{
    Scale,
    compare::{Better, Comparison, in_turn},
    load::{self, Pace, Until},
};

/// 3. The payment client stack vs the raw tonic client, sequential calls to a stub server.
pub async fn payment_client_stack(scale: &Scale) -> Result<Vec<Comparison>> {
    let calls = if scale.smoke {
        100
    } else {
        scale.messages.max(1_000)
    } as u64;
    let stub = stub_payment().await?;
    let config = PaymentClientConfig {
        url: stub.url(),
        // The order service's defaults.
        resolve_interval: Duration::from_secs(5),
        health_interval: Duration::from_secs(1),
        timeout: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(1),
        deadline_margin: Duration::from_millis(50),
        max_attempts: 3,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        retry_budget_ratio: 0.2,
        retry_min_per_sec: 10,
        breaker: BreakerConfig {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(2),
            slow_call_rate: 0.8,
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
        },
        tls: Default::default(),
    };
    let meter = opentelemetry::global::meter("bench");
    let ours_client = PaymentClient::new(&config, &meter)?;
    let raw_client = PaymentServiceClient::new(channel(&stub.url()).await?);
    let request = |seq: u64| ChargeRequest {
        idempotency_key: format!("bench-{seq}"),
        order_id: format!("ord-{seq}"),
        amount: Some(Money {
            currency_code: "USD".into(),
            minor_units: 1999,
        }),
        payment_method_token: "tok_visa".into(),
    };
    // Warm both connections up first.
    ours_client
        .charge(ChargeCall::new(request(0), None, Default::default()))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    raw_client.clone().charge(request(0)).await?;

    let pace = Pace::Closed { concurrency: 1 };
    let mut p50 = Comparison::new(
        "Payment client stack p50 vs raw tonic client",
        "us",
        Better::Lower,
        Some(1.03),
    );
    let mut p99 = Comparison::new(
        "Payment client stack p99 vs raw tonic client",
        "us",
        Better::Lower,
        Some(1.10),
    );
    let mut cpu = Comparison::new(
        "Payment client stack CPU/call vs raw tonic client",
        "us/call",
        Better::Lower,
        Some(1.05),
    );
    for round in 0..scale.rounds {
        let ours = async {
            let client = ours_client.clone();
            let before = cpu_seconds();
            let s = load::run(pace, Until::Calls(calls), Arc::default(), move |seq| {
                let client = client.clone();
                let call = ChargeCall::new(request(seq), None, Default::default());
                async move {
                    client
                        .charge(call)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("{e:?}"))
                }
            })
            .await;
            no_errors("payment client stack", &s)?;
            let cpu_us = (cpu_seconds() - before) * 1e6 / s.ok.max(1) as f64;
            Ok::<_, anyhow::Error>((
                s.latency_ms(0.5) * 1000.0,
                s.latency_ms(0.99) * 1000.0,
                cpu_us,
            ))
        };
        let raw = async {
            let client = raw_client.clone();
            let before = cpu_seconds();
            let s = load::run(pace, Until::Calls(calls), Arc::default(), move |seq| {
                let mut client = client.clone();
                let charge = request(seq);
                async move {
                    client
                        .charge(charge)
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("{:?}", s.code()))
                }
            })
            .await;
            no_errors("raw payment client", &s)?;
            let cpu_us = (cpu_seconds() - before) * 1e6 / s.ok.max(1) as f64;
            Ok::<_, anyhow::Error>((
                s.latency_ms(0.5) * 1000.0,
                s.latency_ms(0.99) * 1000.0,
                cpu_us,
            ))
        };
        let (a, b) = in_turn(round, ours, raw).await?;
        p50.ours.push(a.0);
        p50.raw.push(b.0);
        p99.ours.push(a.1);
        p99.raw.push(b.1);
        cpu.ours.push(a.2);
        cpu.raw.push(b.2);
    }
    drop((ours_client, raw_client));
    stub.stop().await;
    Ok(vec![p50, p99, cpu])
}
