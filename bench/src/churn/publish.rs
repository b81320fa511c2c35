//! Orders flowing during a churn campaign: OrderPlaced events published as the order service's
//! relay publishes them (protobuf payload, CloudEvents headers, keyed by order id, so one order's
//! events stay on one partition), in the plan's bursts.

use anyhow::Result;
use ordermesh::{
    proto::events::v1::OrderPlaced, proto::order::v1::Customer, proto::types::v1::Money,
};
use rdkafka::{ClientConfig, producer::FutureProducer};
use tokio::time::Instant;

use super::plan::Burst;

/// Publishes the events of `bursts`, each burst at its time from now, event ids
/// `evt_{prefix}_{i}`: the ids published, in order.
pub(crate) async fn bursts(
    brokers: String,
    topic: String,
    prefix: String,
    bursts: Vec<Burst>,
) -> Result<Vec<String>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()?;
    let started = Instant::now();
    let mut published = Vec::new();
    for burst in bursts {
        tokio::time::sleep_until(started + burst.at).await;
        // The burst's sends all in flight at once: it lands as a backlog, not a trickle.
        let sends = (0..burst.events).map(|_| {
            let i = published.len();
            let event = event(&prefix, i);
            published.push(event.event_id.clone());
            send(&producer, &topic, event)
        });
        for sent in futures::future::join_all(sends.collect::<Vec<_>>()).await {
            sent?;
        }
    }
    Ok(published)
}

fn event(prefix: &str, i: usize) -> OrderPlaced {
    OrderPlaced {
        event_id: format!("evt_{prefix}_{i}"),
        order_id: format!("ord_{prefix}_{i}"),
        customer: Some(Customer {
            email: format!("churn+{i}@example.com"),
            phone: "+14155550100".into(),
        }),
        total: Some(Money {
            currency_code: "EUR".into(),
            minor_units: 1_000 + i64::try_from(i).unwrap_or(0),
        }),
        ..Default::default()
    }
}

async fn send(producer: &FutureProducer, topic: &str, event: OrderPlaced) -> Result<()> {
    crate::events::publish_order_placed(producer, topic, &event, None).await
}
