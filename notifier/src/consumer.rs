//! The batch loop of a channel's consumer: one consumer per channel, each in its own consumer
//! group, at least once:
//!
//! 1. take a message, and whatever else has been fetched already (a batch);
//! 2. record the notifications (unique per event and channel, keeping the message; one transaction
//!    for the batch) and send each, unless a record says it was already handled: redelivery after
//!    a crash or rebalance is recognised by event id;
//! 3. if the send failed and may work later, record when to retry (the retry loop in `retry` takes
//!    it from there); if it can never work, park the message on the dead-letter topic;
//! 4. only then store the message's offset, which the auto-commit timer and the final commit send
//!    to the broker.
//!
//! Step 3 is what keeps a mail server outage from blocking the partition: the message is durably
//! in the database, so the consumer moves on to the next one.
//!
//! `enable.auto.offset.store=false` is what makes step 4 true: with librdkafka's default, an offset is
//! stored as soon as a message is handed to the application, so a consumer stopped with fetched but
//! unhandled messages commits past them and they are never notified. A new group starts from the
//! earliest offset, because the default (`latest`) silently skips every event published before the
//! group first joined.
//!
//! What is done with each message (steps 2 and 3) is the handler's (`handler`), shared with the
//! retry loop and the replay; this module is the loop around it: batches, partitions, offsets and
//! the stop. The commits when partitions leave the consumer are in `rebalance`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, future::join_all};
use opentelemetry::metrics::Meter;
use ordermesh::timestamp;
use rdkafka::{
    ClientConfig,
    consumer::{Consumer, StreamConsumer},
    error::KafkaResult,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    channel::Channel,
    config::Config,
    handler::{Handler, Mode, Prepared, Verdict},
    letter::Letter,
    outcome::{Outcome, Stats},
    rebalance::{RebalanceContext, STATISTICS_INTERVAL},
    status::Status,
    store::NotificationRow,
};

/// One message of a batch: the letter, what preparing it decided, and the row its claim found.
type Step<'l, 'p> = (&'l Letter, &'p Prepared, Option<NotificationRow>);

/// The most messages handled as one batch. Enough that a backlog drains at the database's pace
/// rather than its commit rate; few enough that a stop finishes the batch in hand quickly.
const MAX_BATCH: usize = 256;

/// A channel's consumer: subscribed, and looping until cancelled.
pub(crate) struct ChannelConsumer {
    consumer: StreamConsumer<RebalanceContext>,
    handler: Handler,
    stats: Arc<Stats>,
}

/// The settings of `channel`'s consumer: public so the benchmarks' raw baseline
/// (`bench/src/kafka/raw.rs`) runs with exactly these.
pub fn client_config(config: &Config, channel: Channel) -> ClientConfig {
    let session_timeout = config.session_timeout;
    let mut client = config.kafka.client_config(&format!(
        "ordermesh-notifier-{}",
        channel.as_str().to_lowercase()
    ));
    client
        .set("group.id", config.group(channel))
        // See the module comment: offsets are stored by us, after handling.
        .set("enable.auto.offset.store", "false")
        // Stored offsets are committed every second and once more on shutdown.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        // Several notifier replicas share a channel's partitions. Cooperative-sticky moves only the
        // partitions that must move when a member joins or leaves; the others keep being consumed
        // through the rebalance (eager assignment stops every member).
        .set("partition.assignment.strategy", "cooperative-sticky")
        // How long the group waits for a member that stopped heartbeating. Also how long a
        // restarted notifier can wait to rejoin when the group did not see the old one leave.
        .set(
            "session.timeout.ms",
            session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (session_timeout / 4).as_millis().to_string(),
        )
        .set(
            "fetch.wait.max.ms",
            config.fetch_wait_max.as_millis().to_string(),
        )
        // Statistics (the lag metric) come from librdkafka on this interval.
        .set(
            "statistics.interval.ms",
            STATISTICS_INTERVAL.as_millis().to_string(),
        );
    client
}

impl ChannelConsumer {
    /// A consumer of `config.events_topic` in the group of `handler`'s channel.
    pub(crate) fn new(
        config: &Config,
        handler: Handler,
        stats: Arc<Stats>,
        meter: &Meter,
    ) -> KafkaResult<Self> {
        let consumer: StreamConsumer<RebalanceContext> = client_config(config, handler.channel)
            .create_with_context(RebalanceContext::new(meter, &handler.group))?;
        consumer.subscribe(&[&config.events_topic])?;
        Ok(Self {
            consumer,
            handler,
            stats,
        })
    }

    /// Consumes until `stop` is cancelled, then finishes the messages in hand, commits what was
    /// handled and leaves the group.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let channel = self.handler.channel.as_str();
        tracing::info!(channel, sender = %self.handler.sender.describe(), "consumer started");
        loop {
            let first = tokio::select! {
                // Only between batches: messages once taken are always finished.
                _ = stop.cancelled() => break,
                message = self.consumer.recv() => message,
            };
            let mut letters = match first {
                Ok(message) => vec![Letter::from_message(&message)],
                // librdkafka reconnects by itself; these are reports, not the end of the stream.
                Err(error) => {
                    tracing::warn!(channel, %error, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Whatever librdkafka has fetched already is taken too, without waiting: a backlog is
            // handled in batches (one commit each), a quiet topic a message at a time, with no
            // added latency either way.
            while letters.len() < MAX_BATCH {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(message)) => letters.push(Letter::from_message(&message)),
                    Some(Err(error)) => {
                        tracing::warn!(channel, %error, "consumer error");
                        break;
                    }
                    None => break,
                }
            }
            let (handled, complete) = self.process_batch(&letters, &stop).await;
            self.store_offsets(&handled);
            if !complete {
                break;
            }
        }
        if let Err(error) = ordermesh_kafka::commit_and_close(self.consumer).await {
            tracing::warn!(channel, %error, "final offset commit failed; the broker will redeliver");
        }
        tracing::info!(channel, "consumer stopped");
    }

    /// Handles `letters` as one batch: one transaction claims them all, instead of a commit per
    /// message. Then each partition's letters are handled in order, the partitions concurrently: an
    /// order's events share a partition (they are keyed by order id), so they stay in order, while a
    /// slow send holds up only its own partition. Each send is still recorded (SENT) as soon as it
    /// is done, so a crash leaves at most one notification per partition in flight unrecorded.
    ///
    /// Returns the letters handled (in each partition, the first ones: all of them, unless asked to
    /// stop while a send was slow or the database or the dead-letter topic was failing), and
    /// whether that is all of them.
    async fn process_batch<'a>(
        &self,
        letters: &'a [Letter],
        stop: &CancellationToken,
    ) -> (Vec<&'a Letter>, bool) {
        let handler = &self.handler;
        let started = Instant::now();
        let now = timestamp::now_millis();
        let mut in_batch = HashSet::new();
        let prepared: Vec<Prepared> = letters
            .iter()
            .map(|letter| match handler.prepare(letter, now) {
                // The same event twice in one batch (a producer's retry) is claimed once; the
                // second copy is a redelivery of the first.
                Prepared::Claim { claim, .. } if !in_batch.insert(claim.event_id.clone()) => {
                    tracing::info!(channel = handler.channel.as_str(), event_id = %claim.event_id, "duplicate delivery in one batch");
                    Prepared::Decided(Verdict::Done(Outcome::Duplicate))
                }
                prepared => prepared,
            })
            .collect();
        let claims: Vec<(&NotificationRow, &Letter)> = prepared
            .iter()
            .zip(letters)
            .filter_map(|(prepared, letter)| match prepared {
                Prepared::Claim { claim, .. } => Some((claim, letter)),
                Prepared::Decided(_) => None,
            })
            .collect();
        let records = if claims.is_empty() {
            Vec::new()
        } else {
            match self
                .until_done(stop, || handler.store.claim_all(&claims))
                .await
            {
                Some(records) => records,
                None => return (Vec::new(), false),
            }
        };
        // The row found for each letter that claimed one (claim_all answers in the claims' order).
        let mut records = records.into_iter();
        let steps: Vec<Step<'_, '_>> = letters
            .iter()
            .zip(&prepared)
            .map(|(letter, prepared)| {
                let record = match prepared {
                    Prepared::Claim { .. } => records.next(),
                    Prepared::Decided(_) => None,
                };
                (letter, prepared, record)
            })
            .collect();
        // Each partition's steps, in the order read.
        let mut partitions: Vec<Vec<Step<'_, '_>>> = Vec::new();
        for step in steps {
            let same = |p: &&mut Vec<Step<'_, '_>>| {
                p[0].0.partition == step.0.partition && p[0].0.topic == step.0.topic
            };
            match partitions.iter_mut().find(same) {
                Some(partition) => partition.push(step),
                None => partitions.push(vec![step]),
            }
        }
        let done = join_all(
            partitions
                .into_iter()
                .map(|steps| self.process_partition(steps, started, stop)),
        )
        .await;
        let complete = done.iter().all(|(_, complete)| *complete);
        (
            done.into_iter().flat_map(|(handled, _)| handled).collect(),
            complete,
        )
    }

    /// One partition's share of a batch, in order; see [`ChannelConsumer::process_batch`]. Returns
    /// the letters handled (the first ones) and whether that is all of them.
    async fn process_partition<'a>(
        &self,
        steps: Vec<Step<'a, '_>>,
        started: Instant,
        stop: &CancellationToken,
    ) -> (Vec<&'a Letter>, bool) {
        let handler = &self.handler;
        let mut handled = Vec::with_capacity(steps.len());
        let mut steps = steps.into_iter();
        while let Some((letter, prepared, record)) = steps.next() {
            // A stop is honoured between messages, not only between batches: a batch of slow sends
            // must not hold a shutdown up. The claims not acted on are released, so the next run
            // takes those messages afresh (not as unsettled claims to wait out).
            if stop.is_cancelled() {
                let rest: Vec<(&Prepared, Option<NotificationRow>)> =
                    std::iter::once((prepared, record))
                        .chain(steps.map(|(_, prepared, record)| (prepared, record)))
                        .collect();
                self.release_unsent(rest).await;
                return (handled, false);
            }
            let span = handler.process_span(letter, 1);
            let step = async {
                let verdict = match (prepared, record) {
                    (Prepared::Decided(verdict), _) => verdict.clone(),
                    (Prepared::Claim { claim, event }, Some(record)) => {
                        handler
                            .after_claim(&record, claim, event, Mode::Live)
                            .await?
                    }
                    // claim_all answers every claim, so this is not reached; the one-message path
                    // would still do the right thing.
                    (Prepared::Claim { .. }, None) => {
                        return handler.process(letter, Mode::Live).await;
                    }
                };
                handler.settle(verdict, letter).await
            };
            match step.instrument(span.clone()).await {
                Ok(outcome) => {
                    outcome.record_on(&span);
                    self.stats.count(outcome);
                    handler.metrics.outcome(outcome, Some(started.elapsed()));
                }
                Err(error) => {
                    tracing::error!(parent: &span, channel = handler.channel.as_str(), %error, "retrying");
                    // On its own from here, with retries; it records its outcome itself. Its new
                    // claim finds the batch's claim unsettled, so if the failure came after the
                    // send, the retry loop (not this) checks it once the claim's lease is over.
                    if !self.process(letter, stop).instrument(span).await {
                        return (handled, false);
                    }
                }
            }
            handled.push(letter);
        }
        (handled, true)
    }

    /// Hands the claims a batch made for `rest` (the messages it will not handle, each with the
    /// row found for its claim) to the retry loop, due now. Best effort: a claim left behind is
    /// still handled, by whoever reads the message again (it hands the claim to the retry loop,
    /// due when the claim's lease is over).
    async fn release_unsent(&self, rest: Vec<(&Prepared, Option<NotificationRow>)>) {
        let ours: Vec<String> = rest
            .into_iter()
            .filter_map(|(prepared, record)| match (prepared, record) {
                (Prepared::Claim { claim, .. }, Some(record))
                    if record.status == Status::Pending
                        && record.notification_id == claim.notification_id =>
                {
                    claim.claim_token.clone()
                }
                _ => None,
            })
            .collect();
        if ours.is_empty() {
            return;
        }
        let now = ordermesh::timestamp::now_millis();
        if let Err(error) = self.handler.store.release_claims(&ours, now).await {
            tracing::warn!(channel = self.handler.channel.as_str(), %error, "claims not released; whoever reads them again hands them to the retry loop");
        }
    }

    /// Stores the offset after the last of `letters` in each partition: they are handled.
    fn store_offsets(&self, letters: &[&Letter]) {
        let mut last: Vec<&Letter> = Vec::new();
        for &letter in letters {
            match last
                .iter_mut()
                .find(|l| l.partition == letter.partition && l.topic == letter.topic)
            {
                Some(seen) => *seen = letter,
                None => last.push(letter),
            }
        }
        for letter in last {
            // store_offset stores offset + 1: the next message to read.
            if let Err(error) =
                self.consumer
                    .store_offset(&letter.topic, letter.partition, letter.offset)
            {
                // The partition was taken away (a rebalance) while the messages were being
                // handled. Its new owner gets them again and finds them already recorded.
                tracing::warn!(channel = self.handler.channel.as_str(), %error, "offset not stored; messages will be redelivered");
            }
        }
    }

    /// Runs `op` until it succeeds, backing off between failures (the messages stay in hand, their
    /// offsets not stored); None if `stop` is cancelled first.
    async fn until_done<T, E, F, Fut>(&self, stop: &CancellationToken, mut op: F) -> Option<T>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match op().await {
                Ok(done) => return Some(done),
                Err(error) => {
                    tracing::error!(channel = self.handler.channel.as_str(), %error, ?backoff, "retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(5)),
                    }
                }
            }
        }
    }

    /// Handles `letter` on its own, retrying while the database or the dead-letter topic is
    /// failing. Returns false if asked to stop before the message was handled (its offset is then
    /// not stored, so it is redelivered).
    async fn process(&self, letter: &Letter, stop: &CancellationToken) -> bool {
        let started = Instant::now();
        match self
            .until_done(stop, || self.handler.process(letter, Mode::Live))
            .await
        {
            Some(outcome) => {
                outcome.record_on(&tracing::Span::current());
                self.stats.count(outcome);
                self.handler
                    .metrics
                    .outcome(outcome, Some(started.elapsed()));
                true
            }
            None => false,
        }
    }
}
