//! 5. Notifier consume throughput on a pre-filled topic: the notifier beside a raw rdkafka consumer
//!    and kcat, three sides reading one topic per round in a rotating order.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use ordermesh_kafka::RETAINED_BYTES_PER_PARTITION;
use ordermesh_testkit::Broker;
use rdkafka::{ClientConfig, consumer::BaseConsumer, consumer::Consumer as _};

use super::{
    kcat,
    ours::Notifier,
    payload::order_events,
    raw::{commit_and_close, next_event, raw_consumer, send_raw_to},
    setup::{PARTITIONS, SMOKE_MESSAGES, fresh_topic, per_second, size},
};
use crate::{
    Scale,
    compare::{Better, Comparison},
};

/// The notifier's default `fetch.wait.max.ms`, for the throughput benchmarks.
const DEFAULT_FETCH_WAIT_MS: u64 = 500;

/// Notifier consume throughput on a pre-filled topic: the notifier (email channel only, log-only
/// delivery, a fresh SQLite file) against a raw `StreamConsumer` that decodes each event and
/// stores its offset as the notifier does, and against kcat.
///
/// Each round fills one fresh topic with `messages` events; then ours, raw and kcat each read all
/// of it (ours and raw in fresh consumer groups), in an order that rotates every round so no side
/// always goes first. (Not [`interleave`](crate::compare::interleave): three sides share one
/// filled topic per round; ours is measured once and its figure stands in both rows.)
///
/// Figures are events per second over a window that opens once a consumer has handled its first
/// events, so the 3 s group join of the embedded broker and the notifier's start-up (database
/// migrations, gRPC server) are left out: ours counts the events its stats gain between the first
/// change it sees and the last (read every millisecond); raw, the events after its first. kcat
/// joins no group and is timed as a process: its figure is `messages - 1` over the run time of
/// `kcat -c messages` less that of `kcat -c 1` (process start, metadata, offset lookup, first
/// fetch), the fastest of 3 runs each.
///
/// Ours records each notification in SQLite before storing the offset (what makes a redelivery
/// recognisable), so it is expected to be slower than the raw loop: that is the cost measured.
pub async fn consume(scale: &Scale) -> Result<Vec<Comparison>> {
    let (rounds, messages) = size(scale, SMOKE_MESSAGES);
    let broker = Broker::embedded(&[], PARTITIONS)?;
    let kcat = kcat::available().await;
    let mut vs_raw = Comparison::new(
        "Notifier consume throughput vs raw rdkafka consumer",
        "events/s",
        Better::Higher,
        Some(0.8),
    );
    let mut vs_kcat = Comparison::new(
        if kcat {
            "Notifier consume throughput vs kcat"
        } else {
            "Notifier consume throughput vs kcat (skipped: no kcat on PATH)"
        },
        "events/s",
        Better::Higher,
        Some(1.0),
    );
    let measured = async {
        for round in 0..rounds {
            let topic = fresh_topic(&broker, "consume").await?;
            send_raw_to(
                &broker.bootstrap_servers(),
                &topic,
                &order_events(messages)?,
            )
            .await?;
            all_kept(&broker, &topic, messages).await?;
            let (mut ours, mut raw, mut tool) = (None, None, None);
            for side in rotation(round) {
                match side {
                    Side::Ours => ours = Some(consume_ours(&broker, &topic, messages).await?),
                    Side::Raw => raw = Some(consume_raw(&broker, &topic, messages).await?),
                    Side::Kcat if kcat => {
                        tool = Some(kcat::throughput(&broker, &topic, messages).await?);
                    }
                    Side::Kcat => {}
                }
            }
            let ours = ours.context("ours not measured")?;
            vs_raw.ours.push(ours);
            vs_raw.raw.push(raw.context("raw not measured")?);
            if let Some(tool) = tool {
                vs_kcat.ours.push(ours);
                vs_kcat.raw.push(tool);
            }
        }
        anyhow::Ok(())
    }
    .await;
    drop(broker);
    measured?;
    Ok(vec![vs_raw, vs_kcat])
}

/// Fails, saying what to do, if the embedded broker dropped any of the `messages` just sent: it
/// keeps only the newest [`RETAINED_BYTES_PER_PARTITION`] of a partition, so a topic filled past
/// that starts after its first events and every side would wait for events that are gone.
async fn all_kept(broker: &Broker, topic: &str, messages: usize) -> Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .create()?;
    let topic = topic.to_owned();
    let dropped = tokio::task::spawn_blocking(move || -> Result<i64> {
        let mut dropped = 0;
        for partition in 0..PARTITIONS {
            let (low, _) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
            dropped += low;
        }
        Ok(dropped)
    })
    .await??;
    ensure!(
        dropped == 0,
        "the embedded broker kept only the newest {} MiB of each partition and dropped {dropped} of \
         the {messages} events sent: ask for fewer --messages (about 6,000 per partition fit)",
        RETAINED_BYTES_PER_PARTITION / (1024 * 1024)
    );
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Ours,
    Raw,
    Kcat,
}

/// The order the three sides run in, in `round`: each goes first once every three rounds.
fn rotation(round: usize) -> impl Iterator<Item = Side> {
    const SIDES: [Side; 3] = [Side::Ours, Side::Raw, Side::Kcat];
    (0..SIDES.len()).map(move |i| SIDES[(round + i) % SIDES.len()])
}

async fn consume_ours(broker: &Broker, topic: &str, messages: usize) -> Result<f64> {
    let notifier = Notifier::start(broker, topic, DEFAULT_FETCH_WAIT_MS).await?;
    let measured = async {
        let target = messages as u64;
        let (opened, before) = notifier.wait_for(1).await?;
        let (closed, _) = notifier.wait_for(target).await?;
        ensure!(
            before < target,
            "the notifier handled all {messages} events within one poll: too few to time"
        );
        notifier.all_sent(target)?;
        Ok(per_second((target - before) as usize, closed - opened))
    }
    .await;
    notifier.stop().await?;
    measured
}

async fn consume_raw(broker: &Broker, topic: &str, messages: usize) -> Result<f64> {
    let consumer = raw_consumer(&broker.bootstrap_servers(), topic, DEFAULT_FETCH_WAIT_MS)?;
    let measured = async {
        // The window opens after the first event, as ours opens after its first handled ones.
        next_event(&consumer).await?;
        let opened = Instant::now();
        for _ in 1..messages {
            next_event(&consumer).await?;
        }
        Ok(per_second(messages - 1, opened.elapsed()))
    }
    .await;
    commit_and_close(consumer).await;
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_side_goes_first_in_turn() {
        let firsts: Vec<String> = (0..3)
            .map(|r| format!("{:?}", rotation(r).next()))
            .collect();
        assert_eq!(firsts, ["Some(Ours)", "Some(Raw)", "Some(Kcat)"]);
    }
}
