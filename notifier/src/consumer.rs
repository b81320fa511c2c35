//! One consumer per channel, each in its own consumer group, at least once:
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

use std::collections::HashSet;
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::{Duration, Instant};

use futures::{FutureExt, future::join_all};
use opentelemetry::metrics::Meter;
use ordermesh::{events, proto::events::v1::OrderPlaced, timestamp};
use rdkafka::{
    consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer},
    error::{KafkaError, KafkaResult},
    types::RDKafkaErrorCode,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    channel::Channel,
    config::{Config, RetryPolicy},
    dead_letter::{DeadLetterHeaders, DeadLetters, Letter, UNREADABLE_HEADERS},
    delivery::{SendError, Sender},
    metrics::{ChannelMetrics, LagContext, STATISTICS_INTERVAL},
    store::{NotificationRow, Store},
};

/// What handling one message came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded and sent now.
    Sent,
    /// Already sent, scheduled for retry or parked for this event and channel: a redelivery.
    Duplicate,
    /// Not for this consumer (another event type).
    Skipped,
    /// The send failed and will be tried again later.
    Retrying,
    /// Never actionable (undecodable, no recipient, refused for good) or out of attempts: parked on
    /// the channel's dead-letter topic.
    DeadLettered,
}

impl Outcome {
    /// The outcome as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Duplicate => "duplicate",
            Outcome::Skipped => "skipped",
            Outcome::Retrying => "retrying",
            Outcome::DeadLettered => "dead_lettered",
        }
    }

    /// Records the outcome on a [`Handler::process_span`]; parking an event fails its span.
    pub(crate) fn record_on(self, span: &tracing::Span) {
        span.record("ordermesh.outcome", self.as_str());
        if self == Outcome::DeadLettered {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// Where a message is handled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Read from the events topic: a failed send is retried per the policy.
    Live,
    /// Read from the dead-letter topic by a replay: parked notifications get one more send, and
    /// what fails is parked again.
    Replay,
}

/// What a step decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Done(Outcome),
    /// To be parked on the dead-letter topic.
    Park {
        reason: String,
        /// Attempts made since the message was last read from a dead-letter topic (or ever).
        attempts: u32,
        first_failure_ms: i64,
        /// The notification to mark FAILED once parked, if one was recorded.
        notification: Option<(String, i32)>,
    },
}

/// What a message needs, as far as can be told without the database.
#[derive(Debug)]
// Short-lived, one per message of a batch: not worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Prepared {
    /// Decided already: not for this consumer, or poison to park.
    Decided(Verdict),
    /// The notification to claim for the event.
    Claim {
        claim: NotificationRow,
        event: OrderPlaced,
    },
}

/// One message of a batch: the letter, what preparing it decided, and the row its claim found.
type Step<'l, 'p> = (&'l Letter, &'p Prepared, Option<NotificationRow>);

/// The most messages handled as one batch. Enough that a backlog drains at the database's pace
/// rather than its commit rate; few enough that a stop finishes the batch in hand quickly.
const MAX_BATCH: usize = 256;

/// Counts of outcomes per channel, for tests and operators.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub duplicates: AtomicU64,
    pub skipped: AtomicU64,
    pub retrying: AtomicU64,
    pub dead_lettered: AtomicU64,
}

impl Stats {
    pub(crate) fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Sent => &self.sent,
            Outcome::Duplicate => &self.duplicates,
            Outcome::Skipped => &self.skipped,
            Outcome::Retrying => &self.retrying,
            Outcome::DeadLettered => &self.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a message could not be handled now; the message stays in hand and is tried again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandleError {
    #[error("cannot record the notification: {0}")]
    Store(#[from] sqlx::Error),
    #[error("cannot park the message on the dead-letter topic: {0}")]
    Park(#[from] KafkaError),
}

/// Everything one channel needs to handle a message, shared by the consumer, the retry loop and
/// the replay.
#[derive(Debug, Clone)]
pub(crate) struct Handler {
    pub(crate) channel: Channel,
    pub(crate) store: Store,
    pub(crate) sender: Sender,
    pub(crate) policy: RetryPolicy,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) events_topic: String,
    /// The channel's consumer group.
    pub(crate) group: String,
    pub(crate) metrics: ChannelMetrics,
}

impl Handler {
    pub(crate) fn new(
        config: &Config,
        channel: Channel,
        store: Store,
        sender: Sender,
        dead_letters: DeadLetters,
        meter: &Meter,
    ) -> Self {
        let group = config.group(channel);
        Self {
            channel,
            store,
            sender,
            policy: config.retry_policy(),
            dead_letters,
            events_topic: config.events_topic.clone(),
            metrics: ChannelMetrics::new(meter, channel, group, &config.events_topic),
            group: group.to_owned(),
        }
    }

    /// The span of handling `letter`: a consumer span per the OpenTelemetry messaging conventions,
    /// child of the producer span whose context the message carries. A child rather than a link:
    /// each event has exactly one producer and is handled once per group, so the trace of an order
    /// reads as one tree from CreateOrder to both notifications (links are for batches, where one
    /// span handles messages of many traces).
    pub(crate) fn process_span(&self, letter: &Letter, attempt: u32) -> tracing::Span {
        let span = tracing::info_span!(
            "kafka_process",
            otel.name = %format!("process {}", letter.topic),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %letter.topic,
            messaging.consumer.group.name = %self.group,
            messaging.destination.partition.id = letter.partition,
            messaging.kafka.offset = letter.offset,
            messaging.message.id = letter.header("ce_id").unwrap_or_default(),
            ordermesh.channel = self.channel.as_str(),
            ordermesh.attempt = attempt,
            ordermesh.outcome = tracing::field::Empty,
        );
        ordermesh_platform::trace_context::set_parent(&span, letter.trace_context());
        span
    }

    /// Handles `letter` and carries out the verdict: the step the consumer loop repeats.
    pub(crate) async fn process(
        &self,
        letter: &Letter,
        mode: Mode,
    ) -> Result<Outcome, HandleError> {
        let verdict = self.decide(letter, mode).await?;
        self.settle(verdict, letter).await
    }

    /// Decides what `letter` needs and does it, short of parking.
    pub(crate) async fn decide(&self, letter: &Letter, mode: Mode) -> Result<Verdict, sqlx::Error> {
        match self.prepare(letter, timestamp::now_millis()) {
            Prepared::Decided(verdict) => Ok(verdict),
            Prepared::Claim { claim, event } => {
                let record = self.store.claim(&claim, letter).await?;
                self.after_claim(&record, &claim, &event, mode).await
            }
        }
    }

    /// What can be decided about `letter` without the database: not ours, poison, or the
    /// notification to claim.
    pub(crate) fn prepare(&self, letter: &Letter, now: i64) -> Prepared {
        let channel = self.channel;
        let poison = |reason: String| {
            Prepared::Decided(Verdict::Park {
                reason,
                attempts: 1,
                first_failure_ms: now,
                notification: None,
            })
        };
        if letter.header(UNREADABLE_HEADERS).is_some() {
            return poison("a header name is not UTF-8; the headers were dropped".to_owned());
        }
        // Events without a type header are assumed to be OrderPlaced; other types are for other
        // consumers.
        let ce_type = letter.header(events::TYPE_HEADER).unwrap_or_default();
        if !ce_type.is_empty() && ce_type != events::ORDER_PLACED_TYPE {
            tracing::debug!(ce_type, topic = %letter.topic, offset = letter.offset, "not an OrderPlaced event, skipped");
            return Prepared::Decided(Verdict::Done(Outcome::Skipped));
        }
        let event = match events::decode_order_placed(letter.payload.as_deref().unwrap_or_default())
        {
            Ok(event) => event,
            // A poison message must not block the partition: it is parked, and the consumer goes on.
            Err(error) => return poison(error.to_string()),
        };
        let Some(recipient) = channel.recipient(&event) else {
            return poison(format!(
                "event has no {} recipient",
                channel.as_str().to_lowercase()
            ));
        };
        // A replayed letter is recorded under its original position, not the dead-letter one.
        let source = match DeadLetterHeaders::read(letter) {
            Some(origin) => (
                origin.original_topic,
                origin.original_partition.parse().unwrap_or(-1),
                origin.original_offset.parse().unwrap_or(-1),
            ),
            None => (letter.topic.clone(), letter.partition, letter.offset),
        };
        let claim = NotificationRow::pending(
            format!("ntf_{}", uuid::Uuid::now_v7().simple()),
            &event.event_id,
            &event.order_id,
            channel,
            recipient,
            source,
            now,
        );
        Prepared::Claim { claim, event }
    }

    /// Acts on `record`, the row found holding `claim`'s key: sends a new notification, or
    /// recognises a redelivery.
    pub(crate) async fn after_claim(
        &self,
        record: &NotificationRow,
        claim: &NotificationRow,
        event: &OrderPlaced,
        mode: Mode,
    ) -> Result<Verdict, sqlx::Error> {
        let channel = self.channel;
        let event_id = &event.event_id;
        match (record.status.as_str(), mode) {
            // Recorded by this claim: send, if the claim is still ours.
            ("PENDING", _) if record.notification_id == claim.notification_id => {
                if !self.hold_claim(record).await? {
                    tracing::info!(channel = channel.as_str(), %event_id, "claim handed to the retry loop while waiting in its batch");
                    return Ok(Verdict::Done(Outcome::Duplicate));
                }
                self.attempt(record, event, mode == Mode::Live).await
            }
            ("SENT", _) => {
                tracing::info!(channel = channel.as_str(), %event_id, "duplicate delivery, already notified");
                Ok(Verdict::Done(Outcome::Duplicate))
            }
            ("RETRYING", _) => {
                tracing::info!(channel = channel.as_str(), %event_id, "duplicate delivery, already waiting for a retry");
                Ok(Verdict::Done(Outcome::Duplicate))
            }
            ("FAILED", Mode::Live) => {
                tracing::info!(channel = channel.as_str(), %event_id, "duplicate delivery, already parked on the dead-letter topic");
                Ok(Verdict::Done(Outcome::Duplicate))
            }
            // Recorded earlier and not settled: another replica may be sending it now (its
            // partition moved here in a rebalance), or a notifier stopped mid-send. Sending now
            // could send twice; the retry loop sends it once that claim has had time to finish,
            // unless it is SENT by then.
            ("PENDING", _) => {
                if self
                    .store
                    .hand_over_pending(&record.notification_id, self.sender.claim_lease())
                    .await?
                {
                    tracing::info!(channel = channel.as_str(), %event_id, "redelivered while unsettled; handed to the retry loop");
                }
                Ok(Verdict::Done(Outcome::Duplicate))
            }
            // FAILED in a replay: the cause is said to be fixed; one more send.
            _ => self.attempt(record, event, false).await,
        }
    }

    /// Whether this claimant may send `claim` now: a redelivery elsewhere leaves a claim alone for
    /// its lease, so a send must start while at least half of it is left (a send takes at most the
    /// send timeout, under half). A claim that waited longer in its batch (slow sends before it) is
    /// renewed first, unless it was handed to the retry loop meanwhile: then it is not ours.
    async fn hold_claim(&self, claim: &NotificationRow) -> Result<bool, sqlx::Error> {
        let lease = self.sender.claim_lease().as_millis() as i64;
        let now = timestamp::now_millis();
        if now < claim.created_at_ms.saturating_add(lease / 2) {
            return Ok(true);
        }
        self.store
            .renew_claim(&claim.notification_id, now.saturating_add(lease))
            .await
    }

    /// Sends `row`'s notification once and records the result. A transient failure is scheduled
    /// for retry when `may_retry` and attempts remain; otherwise the verdict is to park.
    pub(crate) async fn attempt(
        &self,
        row: &NotificationRow,
        event: &OrderPlaced,
        may_retry: bool,
    ) -> Result<Verdict, sqlx::Error> {
        let attempts = row.attempts + 1;
        let failure = match self.sender.send(self.channel, &row.recipient, event).await {
            Ok(()) => {
                self.store
                    .mark_sent(&row.notification_id, timestamp::now_millis())
                    .await?;
                return Ok(Verdict::Done(Outcome::Sent));
            }
            Err(failure) => failure,
        };
        let now = timestamp::now_millis();
        let first_failure_ms = row.first_failure_at_ms.unwrap_or(now);
        match failure {
            SendError::Transient(error)
                if may_retry && (attempts as u32) < self.policy.attempts =>
            {
                let delay = self.policy.delay(attempts as u32);
                tracing::warn!(
                    channel = self.channel.as_str(),
                    event_id = %event.event_id,
                    attempts,
                    retry_in = ?delay,
                    %error,
                    "send failed, will retry"
                );
                let next = now.saturating_add(delay.as_millis() as i64);
                self.store
                    .schedule_retry(&row.notification_id, attempts, &error, now, next)
                    .await?;
                Ok(Verdict::Done(Outcome::Retrying))
            }
            SendError::Transient(error) | SendError::Permanent(error) => {
                // Attempts in this round: all of them live; one in a replay.
                let round = if may_retry { attempts as u32 } else { 1 };
                Ok(Verdict::Park {
                    reason: error,
                    attempts: round,
                    first_failure_ms,
                    notification: Some((row.notification_id.clone(), attempts)),
                })
            }
        }
    }

    /// Carries out `verdict` for `letter`: parks it if so decided, and records that it was.
    pub(crate) async fn settle(
        &self,
        verdict: Verdict,
        letter: &Letter,
    ) -> Result<Outcome, HandleError> {
        let (reason, attempts, first_failure_ms, notification) = match verdict {
            Verdict::Done(outcome) => return Ok(outcome),
            Verdict::Park {
                reason,
                attempts,
                first_failure_ms,
                notification,
            } => (reason, attempts, first_failure_ms, notification),
        };
        self.dead_letters
            .park(
                &self.events_topic,
                self.channel,
                letter,
                &reason,
                attempts,
                first_failure_ms,
            )
            .await?;
        tracing::error!(
            channel = self.channel.as_str(),
            topic = %letter.topic,
            partition = letter.partition,
            offset = letter.offset,
            attempts,
            %reason,
            "message parked on the dead-letter topic"
        );
        if let Some((notification_id, total)) = notification {
            self.store
                .mark_failed(&notification_id, total, &reason, timestamp::now_millis())
                .await?;
        }
        Ok(Outcome::DeadLettered)
    }
}

/// Commits the offsets stored so far and closes `consumer` (leaving its group). Both block until the
/// broker answers, so they run on a blocking thread, and the consumer is dropped there too. Having
/// nothing stored since the last commit is not an error.
pub(crate) async fn commit_and_close<C: ConsumerContext + 'static>(
    consumer: StreamConsumer<C>,
) -> Result<(), String> {
    let committed = tokio::task::spawn_blocking(move || {
        let committed = consumer.commit_consumer_state(CommitMode::Sync);
        drop(consumer);
        committed
    })
    .await;
    match committed {
        Ok(Ok(())) | Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(format!("the commit did not run: {error}")),
    }
}

/// A channel's consumer: subscribed, and looping until cancelled.
pub(crate) struct ChannelConsumer {
    consumer: StreamConsumer<LagContext>,
    handler: Handler,
    stats: Arc<Stats>,
}

impl ChannelConsumer {
    /// A consumer of `config.events_topic` in the group of `handler`'s channel.
    pub(crate) fn new(
        config: &Config,
        handler: Handler,
        stats: Arc<Stats>,
        meter: &Meter,
    ) -> KafkaResult<Self> {
        let channel = handler.channel;
        let session_timeout = config.session_timeout();
        let consumer: StreamConsumer<LagContext> = config
            .kafka
            .client_config(&format!(
                "ordermesh-notifier-{}",
                channel.as_str().to_lowercase()
            ))
            .set("group.id", config.group(channel))
            // See the module comment: offsets are stored by us, after handling.
            .set("enable.auto.offset.store", "false")
            // Stored offsets are committed every second and once more on shutdown.
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            // Several notifier replicas share a channel's partitions. Cooperative-sticky moves only
            // the partitions that must move when a member joins or leaves; the others keep being
            // consumed through the rebalance (eager assignment stops every member).
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
            .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
            // Statistics (the lag metric) come from librdkafka on this interval.
            .set(
                "statistics.interval.ms",
                STATISTICS_INTERVAL.as_millis().to_string(),
            )
            .create_with_context(LagContext::new(meter, &handler.group))?;
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
        if let Err(error) = commit_and_close(self.consumer).await {
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

    /// Releases the claims a batch made for `rest` (the messages it will not handle, each with the
    /// row found for its claim). Best effort: a claim left behind is still handled, by the retry
    /// loop once its lease is over.
    async fn release_unsent(&self, rest: Vec<(&Prepared, Option<NotificationRow>)>) {
        let ours: Vec<String> = rest
            .into_iter()
            .filter_map(|(prepared, record)| match (prepared, record) {
                (Prepared::Claim { claim, .. }, Some(record))
                    if record.status == "PENDING"
                        && record.notification_id == claim.notification_id =>
                {
                    Some(claim.notification_id.clone())
                }
                _ => None,
            })
            .collect();
        if ours.is_empty() {
            return;
        }
        if let Err(error) = self.handler.store.release_claims(&ours).await {
            tracing::warn!(channel = self.handler.channel.as_str(), %error, "claims not released; the retry loop will take them");
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

#[cfg(test)]
mod tests {
    use super::*;
    use ordermesh::{events::CloudEventHeaders, proto::order::v1::Customer};

    // Each test runs on SQLite (in memory) and on PostgreSQL, as the claim and lease statements are
    // what replicas sharing a database rely on.
    ordermesh_testkit::on_both_backends!(
        a_claim_found_unsettled_is_handed_to_the_retry_loop_not_sent_again,
        a_claim_kept_waiting_in_its_batch_is_renewed_before_its_send_or_given_up_if_handed_over,
        a_new_event_is_sent_and_a_redelivery_of_it_is_a_duplicate,
    );

    /// A handler on a fresh database (see [`on_both_backends`]), with what keeps a PostgreSQL
    /// server alive; None to skip.
    async fn handler(postgres: bool) -> Option<(Handler, Option<ordermesh_testkit::Databases>)> {
        let mut config = Config::from_env().expect("defaults parse");
        let databases = if postgres {
            let databases = ordermesh_testkit::Databases::for_test(std::path::Path::new("."), true)
                .await
                .expect("a PostgreSQL server")?;
            config.database_url = databases.url("notifier");
            Some(databases)
        } else {
            config.database_url = "sqlite::memory:".into();
            None
        };
        let store = Store::new(
            ordermesh_platform::db::open(&config.database_url, &crate::store::migrations())
                .await
                .expect("database"),
        );
        // Creating a producer does not connect; nothing here is parked.
        let dead_letters =
            DeadLetters::new(&ordermesh_kafka::KafkaSettings::plaintext("127.0.0.1:1"))
                .expect("producer");
        let sender = Sender::new(Channel::Email, &config).expect("log-only sender");
        let meter = opentelemetry::global::meter("test");
        let handler = Handler::new(&config, Channel::Email, store, sender, dead_letters, &meter);
        Some((handler, databases))
    }

    fn letter() -> Letter {
        let event = OrderPlaced {
            event_id: "evt_1".into(),
            order_id: "ord_1".into(),
            customer: Some(Customer {
                email: "ada@example.com".into(),
                phone: "+14155550100".into(),
            }),
            ..Default::default()
        };
        let headers = CloudEventHeaders::order_placed(&event);
        Letter {
            topic: "order-events".into(),
            partition: 0,
            offset: 7,
            key: Some(b"ord_1".to_vec()),
            payload: Some(events::encode_order_placed(&event).expect("encodes")),
            headers: vec![(
                events::TYPE_HEADER.to_owned(),
                Some(headers.r#type.into_bytes()),
            )],
        }
    }

    async fn a_claim_found_unsettled_is_handed_to_the_retry_loop_not_sent_again(postgres: bool) {
        let Some((handler, _databases)) = handler(postgres).await else {
            return;
        };
        let letter = letter();
        // Another consumer (a replica that lost the partition in a rebalance, or a notifier killed
        // mid-send) claimed the event and has not settled it.
        let now = timestamp::now_millis();
        let theirs = NotificationRow::pending(
            "ntf_theirs".into(),
            "evt_1",
            "ord_1",
            Channel::Email,
            "ada@example.com".into(),
            ("order-events".into(), 0, 7),
            now,
        );
        handler.store.claim(&theirs, &letter).await.expect("claim");

        // The redelivery does not send; it schedules a check once their claim could have ended.
        let verdict = handler.decide(&letter, Mode::Live).await.expect("decide");
        assert_eq!(verdict, Verdict::Done(Outcome::Duplicate));
        let lease = handler.sender.claim_lease().as_millis() as i64;
        let row = handler.store.claim(&theirs, &letter).await.expect("read");
        assert_eq!(row.status, "RETRYING");
        assert_eq!(row.next_attempt_at_ms, Some(now + lease));
        assert!(
            handler
                .store
                .due_retries(Channel::Email, now + lease - 1, 10)
                .await
                .expect("due")
                .is_empty(),
            "not due while their send may still be under way"
        );

        // They finish: nothing is left to retry.
        handler
            .store
            .mark_sent("ntf_theirs", now)
            .await
            .expect("sent");
        assert!(
            handler
                .store
                .due_retries(Channel::Email, now + lease + 1, 10)
                .await
                .expect("due")
                .is_empty()
        );
    }

    async fn a_claim_kept_waiting_in_its_batch_is_renewed_before_its_send_or_given_up_if_handed_over(
        postgres: bool,
    ) {
        let Some((handler, _databases)) = handler(postgres).await else {
            return;
        };
        let letter = letter();
        let event = events::decode_order_placed(letter.payload.as_deref().unwrap()).unwrap();
        let lease = handler.sender.claim_lease();
        let lease_ms = lease.as_millis() as i64;
        // Claimed a whole lease ago: the sends before it in its batch were slow.
        let claimed_at = timestamp::now_millis() - lease_ms;
        let ours = NotificationRow::pending(
            "ntf_ours".into(),
            "evt_1",
            "ord_1",
            Channel::Email,
            "ada@example.com".into(),
            ("order-events".into(), 0, 7),
            claimed_at,
        );
        let record = handler.store.claim(&ours, &letter).await.expect("claim");

        // Still PENDING: the lease is renewed, so a redelivery elsewhere now hands it over due at
        // the renewed end, not at the original one (which has passed).
        assert!(handler.hold_claim(&record).await.expect("hold"));
        assert!(
            handler
                .store
                .hand_over_pending("ntf_ours", lease)
                .await
                .expect("hand over")
        );
        let row = handler.store.claim(&ours, &letter).await.expect("read");
        assert_eq!(row.status, "RETRYING");
        assert!(row.next_attempt_at_ms.expect("due") > claimed_at + lease_ms);

        // Handed over: no longer ours to send; the retry loop has it.
        assert_eq!(
            handler
                .after_claim(&record, &ours, &event, Mode::Live)
                .await
                .expect("verdict"),
            Verdict::Done(Outcome::Duplicate)
        );
        let row = handler.store.claim(&ours, &letter).await.expect("read");
        assert_eq!((row.status.as_str(), row.attempts), ("RETRYING", 0));
    }

    async fn a_new_event_is_sent_and_a_redelivery_of_it_is_a_duplicate(postgres: bool) {
        let Some((handler, _databases)) = handler(postgres).await else {
            return;
        };
        let letter = letter();
        assert_eq!(
            handler.decide(&letter, Mode::Live).await.expect("decide"),
            Verdict::Done(Outcome::Sent)
        );
        assert_eq!(
            handler.decide(&letter, Mode::Live).await.expect("decide"),
            Verdict::Done(Outcome::Duplicate)
        );
    }
}
