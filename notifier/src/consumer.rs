//! One consumer per channel, each in its own consumer group, at least once:
//!
//! 1. take a message;
//! 2. record the notification (unique per event and channel) and send it, unless a record says it
//!    was already sent: redelivery after a crash or rebalance is recognised by event id;
//! 3. only then store the message's offset, which the auto-commit timer and the final commit send
//!    to the broker.
//!
//! `enable.auto.offset.store=false` is what makes step 3 true: with librdkafka's default, an offset is
//! stored as soon as a message is handed to the application, so a consumer stopped with fetched but
//! unhandled messages commits past them and they are never notified. A new group starts from the
//! earliest offset, because the default (`latest`) silently skips every event published before the
//! group first joined.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use ordermesh::{events, timestamp};
use rdkafka::{
    Message,
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::{KafkaError, KafkaResult},
    message::BorrowedMessage,
    types::RDKafkaErrorCode,
};
use tokio_util::sync::CancellationToken;

use crate::{
    channel::Channel,
    config::Config,
    dead_letter::DeadLetters,
    store::{NotificationRow, Store},
};

/// What handling one message came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded and sent now.
    Sent,
    /// Already sent for this event and channel: a redelivery.
    Duplicate,
    /// Not for this consumer (another event type).
    Skipped,
    /// Never actionable (undecodable, no recipient): parked on the channel's dead-letter topic.
    DeadLettered,
}

/// What the step decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Done(Outcome),
    /// To be parked on the dead-letter topic, with the reason.
    Poison(String),
}

/// Counts of outcomes per channel, for tests and operators.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub duplicates: AtomicU64,
    pub skipped: AtomicU64,
    pub dead_lettered: AtomicU64,
}

impl Stats {
    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Sent => &self.sent,
            Outcome::Duplicate => &self.duplicates,
            Outcome::Skipped => &self.skipped,
            Outcome::DeadLettered => &self.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a message was read from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// Handles one message for one channel: the step the consumer loop repeats, callable on its own.
pub(crate) async fn handle(
    store: &Store,
    channel: Channel,
    payload: Option<&[u8]>,
    ce_type: &str,
    source: Source,
) -> Result<Verdict, sqlx::Error> {
    // Events without a type header are assumed to be OrderPlaced; other types are for other consumers.
    if !ce_type.is_empty() && ce_type != events::ORDER_PLACED_TYPE {
        tracing::debug!(ce_type, ?source, "not an OrderPlaced event, skipped");
        return Ok(Verdict::Done(Outcome::Skipped));
    }
    let event = match events::decode_order_placed(payload.unwrap_or_default()) {
        Ok(event) => event,
        // A poison message must not block the partition: it is parked, and the consumer goes on.
        Err(error) => return Ok(Verdict::Poison(error.to_string())),
    };
    let Some(recipient) = channel.recipient(&event) else {
        return Ok(Verdict::Poison(format!(
            "event has no {} recipient",
            channel.as_str().to_lowercase()
        )));
    };
    let claim = NotificationRow {
        seq: 0,
        notification_id: format!("ntf_{}", uuid::Uuid::now_v7().simple()),
        event_id: event.event_id.clone(),
        order_id: event.order_id.clone(),
        channel,
        recipient,
        status: "PENDING".into(),
        attempts: 0,
        created_at_ms: timestamp::now_millis(),
        sent_at_ms: None,
        source_topic: source.topic,
        source_partition: source.partition,
        source_offset: source.offset,
    };
    let record = store.claim(&claim).await?;
    if record.status == "SENT" {
        tracing::info!(channel = channel.as_str(), event_id = %event.event_id, "duplicate delivery, already notified");
        return Ok(Verdict::Done(Outcome::Duplicate));
    }
    // PENDING: new, or left by a run that stopped between recording and confirming; send (again).
    channel.send(&record.recipient, &event).await;
    store
        .mark_sent(&record.notification_id, timestamp::now_millis())
        .await?;
    Ok(Verdict::Done(Outcome::Sent))
}

/// Commits the offsets stored so far and closes `consumer` (leaving its group). Both block until the
/// broker answers, so they run on a blocking thread, and the consumer is dropped there too. Having
/// nothing stored since the last commit is not an error.
pub(crate) async fn commit_and_close(consumer: StreamConsumer) -> Result<(), String> {
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
    consumer: StreamConsumer,
    channel: Channel,
    events_topic: String,
    store: Store,
    dead_letters: DeadLetters,
    stats: Arc<Stats>,
}

impl ChannelConsumer {
    /// A consumer of `config.events_topic` in `channel`'s group.
    pub(crate) fn new(
        config: &Config,
        channel: Channel,
        store: Store,
        dead_letters: DeadLetters,
        stats: Arc<Stats>,
    ) -> KafkaResult<Self> {
        let session_timeout = config.session_timeout();
        let consumer: StreamConsumer = ordermesh::kafka::client_config(
            &config.kafka_brokers,
            &format!("ordermesh-notifier-{}", channel.as_str().to_lowercase()),
        )
        .set("group.id", config.group(channel))
        // See the module comment: offsets are stored by us, after handling.
        .set("enable.auto.offset.store", "false")
        // Stored offsets are committed every second and once more on shutdown.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
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
        .create()?;
        consumer.subscribe(&[&config.events_topic])?;
        Ok(Self {
            consumer,
            channel,
            events_topic: config.events_topic.clone(),
            store,
            dead_letters,
            stats,
        })
    }

    /// Consumes until `stop` is cancelled, then finishes the message in hand, commits what was handled
    /// and leaves the group.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let channel = self.channel.as_str();
        tracing::info!(channel, "consumer started");
        loop {
            let message = tokio::select! {
                // Only between messages: a message once taken is always finished.
                _ = stop.cancelled() => break,
                message = self.consumer.recv() => message,
            };
            match message {
                Ok(message) => {
                    if !self.process(&message, &stop).await {
                        break;
                    }
                    if let Err(error) = self.consumer.store_offset_from_message(&message) {
                        // The partition was taken away (a rebalance) while the message was being
                        // handled. Its new owner gets it again and finds it already recorded.
                        tracing::warn!(channel, %error, "offset not stored; the message will be redelivered");
                    }
                }
                // librdkafka reconnects by itself; these are reports, not the end of the stream.
                Err(error) => {
                    tracing::warn!(channel, %error, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if let Err(error) = commit_and_close(self.consumer).await {
            tracing::warn!(channel, %error, "final offset commit failed; the broker will redeliver");
        }
        tracing::info!(channel, "consumer stopped");
    }

    /// Handles `message`, retrying while the store is failing. Returns false if asked to stop before
    /// the message was handled (its offset is then not stored, so it is redelivered).
    async fn process(&self, message: &BorrowedMessage<'_>, stop: &CancellationToken) -> bool {
        let ce_type = message
            .headers()
            .map(|h| events::CloudEventHeaders::from_kafka(h).r#type)
            .unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        loop {
            let source = Source {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            };
            let step = match handle(
                &self.store,
                self.channel,
                message.payload(),
                &ce_type,
                source,
            )
            .await
            {
                Ok(Verdict::Done(outcome)) => Ok(outcome),
                Ok(Verdict::Poison(reason)) => {
                    let parked = self
                        .dead_letters
                        .park(&self.events_topic, self.channel, message, &reason)
                        .await;
                    parked.map(|()| {
                        tracing::error!(channel = self.channel.as_str(), topic = message.topic(), partition = message.partition(), offset = message.offset(), %reason, "message parked on the dead-letter topic");
                        Outcome::DeadLettered
                    })
                    .map_err(|e| format!("cannot park the message on the dead-letter topic: {e}"))
                }
                Err(error) => Err(format!("cannot record the notification: {error}")),
            };
            match step {
                Ok(outcome) => {
                    self.stats.count(outcome);
                    return true;
                }
                // The message stays in hand (its offset is not stored) until this works.
                Err(error) => {
                    tracing::error!(channel = self.channel.as_str(), %error, ?backoff, "retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(5)),
                    }
                }
            }
        }
    }
}
