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
    read_again::ReadAgain,
    rebalance::{RebalanceContext, STATISTICS_INTERVAL},
    status::Status,
    store::NotificationRow,
};

/// One message of a batch: the letter, what preparing it decided, and the row its claim found.
type Step<'l, 'p> = (&'l Letter, (&'p Prepared, Option<NotificationRow>));

/// How a partition's share of a batch ended.
#[derive(Debug)]
enum End<'a> {
    /// Every letter handled (the partition named by its first letter).
    Done(&'a Letter),
    /// Asked to stop before this letter; whoever holds the partition next reads it again.
    Stopped,
    /// The batch's time ran out before this letter: read again from it at once.
    OutOfTime(&'a Letter),
    /// This letter could not be finished (the database or the dead-letter topic is failing):
    /// read again from it after a backoff.
    Failed(&'a Letter),
}

/// Groups `items` by their letter's partition, each group in the order read and named by its
/// first letter.
fn partitions<'l, T>(
    items: impl IntoIterator<Item = (&'l Letter, T)>,
) -> Vec<(&'l Letter, Vec<(&'l Letter, T)>)> {
    let mut groups: Vec<(&Letter, Vec<(&Letter, T)>)> = Vec::new();
    for (letter, item) in items {
        let same = |(first, _): &&mut (&Letter, Vec<(&Letter, T)>)| {
            first.partition == letter.partition && first.topic == letter.topic
        };
        match groups.iter_mut().find(same) {
            Some((_, group)) => group.push((letter, item)),
            None => groups.push((letter, vec![(letter, item)])),
        }
    }
    groups
}

/// The most messages handled as one batch. Enough that a backlog drains at the database's pace
/// rather than its commit rate; few enough that a stop finishes the batch in hand quickly.
const MAX_BATCH: usize = 256;

/// A channel's consumer: subscribed, and looping until cancelled.
pub(crate) struct ChannelConsumer {
    consumer: StreamConsumer<RebalanceContext>,
    handler: Handler,
    stats: Arc<Stats>,
    /// How long after a batch starts its sends may start (`Config::send_budget`).
    send_budget: Duration,
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
        // How long the consumer may go without polling before librdkafka leaves the group for
        // it. Set here rather than left to the default so that the batch budget derived from it
        // (`Config::send_budget`) is the one in force.
        .set(
            "max.poll.interval.ms",
            config.max_poll_interval.as_millis().to_string(),
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
            send_budget: config.send_budget(),
        })
    }

    /// Consumes until `stop` is cancelled, then finishes the messages in hand, commits what was
    /// handled and leaves the group.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let channel = self.handler.channel.as_str();
        tracing::info!(channel, sender = %self.handler.sender.describe(), "consumer started");
        let mut again = ReadAgain::default();
        loop {
            again.resume_due(&self.consumer);
            let first = tokio::select! {
                // Only between batches: messages once taken are always finished.
                _ = stop.cancelled() => break,
                _ = again.next_resume() => continue,
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
            let (handled, ends) = self.process_batch(&letters, &stop).await;
            self.store_offsets(&handled);
            let mut stopped = false;
            for end in ends {
                match end {
                    End::Done(letter) => again.handled(&letter.topic, letter.partition),
                    End::Stopped => stopped = true,
                    End::OutOfTime(letter) => {
                        tracing::info!(
                            channel,
                            partition = letter.partition,
                            offset = letter.offset,
                            "batch out of time; reading the rest again"
                        );
                        again.at_once(&self.consumer, letter);
                    }
                    End::Failed(letter) => {
                        let wait = again.after_failure(&self.consumer, letter);
                        self.handler.metrics.partition_paused();
                        tracing::warn!(
                            channel,
                            partition = letter.partition,
                            offset = letter.offset,
                            ?wait,
                            "partition paused; its other messages wait, the others flow"
                        );
                    }
                }
            }
            if stopped {
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
    /// No send starts after the batch's budget (half of `max.poll.interval.ms`; a send and a park
    /// are bounded so that the last one ends within the interval): the poll loop calls librdkafka
    /// again in time to stay in its group, whatever the senders do.
    ///
    /// Returns the letters handled (in each partition, the first ones), and how each partition's
    /// share ended.
    async fn process_batch<'a>(
        &self,
        letters: &'a [Letter],
        stop: &CancellationToken,
    ) -> (Vec<&'a Letter>, Vec<End<'a>>) {
        let handler = &self.handler;
        let started = Instant::now();
        let deadline = started + self.send_budget;
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
            match handler.store.claim_all(&claims).await {
                Ok(records) => records,
                // Nothing handled: every partition of the batch is read again after a backoff.
                Err(error) => {
                    tracing::error!(channel = handler.channel.as_str(), %error, "cannot record the batch's notifications");
                    let firsts = partitions(letters.iter().map(|letter| (letter, ())))
                        .into_iter()
                        .map(|(first, _)| End::Failed(first))
                        .collect();
                    return (Vec::new(), firsts);
                }
            }
        };
        // The row found for each letter that claimed one (claim_all answers in the claims' order).
        let mut records = records.into_iter();
        let steps = letters.iter().zip(&prepared).map(|(letter, prepared)| {
            let record = match prepared {
                Prepared::Claim { .. } => records.next(),
                Prepared::Decided(_) => None,
            };
            (letter, (prepared, record))
        });
        let done =
            join_all(partitions(steps).into_iter().map(|(first, steps)| {
                self.process_partition(first, steps, started, deadline, stop)
            }))
            .await;
        let mut handled = Vec::with_capacity(letters.len());
        let mut ends = Vec::with_capacity(done.len());
        for (letters, end) in done {
            handled.extend(letters);
            ends.push(end);
        }
        (handled, ends)
    }

    /// One partition's share of a batch, in order; see [`ChannelConsumer::process_batch`]. Returns
    /// the letters handled (the first ones) and how it ended.
    async fn process_partition<'a>(
        &self,
        first: &'a Letter,
        steps: Vec<Step<'a, '_>>,
        started: Instant,
        deadline: Instant,
        stop: &CancellationToken,
    ) -> (Vec<&'a Letter>, End<'a>) {
        let handler = &self.handler;
        let mut handled = Vec::with_capacity(steps.len());
        let mut steps = steps.into_iter();
        while let Some((letter, (prepared, record))) = steps.next() {
            // A stop is honoured between messages, not only between batches: a batch of slow sends
            // must not hold a shutdown up. Nor may it hold up the poll loop past its budget. The
            // claims not acted on are released to the retry loop, due now: sent once, by whichever
            // retry loop takes them, while whoever reads the messages again finds them taken.
            let out_of_time = Instant::now() >= deadline;
            if stop.is_cancelled() || out_of_time {
                let rest = std::iter::once((prepared, record))
                    .chain(steps.map(|(_, step)| step))
                    .collect();
                self.release_unsent(rest).await;
                let end = if out_of_time {
                    End::OutOfTime(letter)
                } else {
                    End::Stopped
                };
                return (handled, end);
            }
            let span = handler.process_span(letter, 1);
            let step = async {
                let verdict = match (prepared, record) {
                    (Prepared::Decided(verdict), _) => verdict.clone(),
                    (Prepared::Claim { claim, event }, Some(record)) => {
                        handler
                            .after_claim(&record, claim, event, Mode::Live, started)
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
                    tracing::error!(parent: &span, channel = handler.channel.as_str(), %error, "cannot finish the message; its partition is read again from it after a backoff");
                    // This letter's claim is left as it is: the send may have been made, and
                    // whoever reads it again hands it to the retry loop to check once the claim's
                    // lease is over. The ones after it were not reached.
                    self.release_unsent(steps.map(|(_, step)| step).collect())
                        .await;
                    return (handled, End::Failed(letter));
                }
            }
            handled.push(letter);
        }
        (handled, End::Done(first))
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
        if let Err(error) = self.handler.store.release_claims(&ours).await {
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
}
