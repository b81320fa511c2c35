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
    store::{NotificationRow, Store},
};

/// What handling one message came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded and sent now.
    Sent,
    /// Already sent for this event and channel: a redelivery.
    Duplicate,
    /// Not something this channel can act on (undecodable, another event type, no recipient).
    Skipped,
}

/// Counts of outcomes per channel, for tests and operators.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub duplicates: AtomicU64,
    pub skipped: AtomicU64,
}

impl Stats {
    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Sent => &self.sent,
            Outcome::Duplicate => &self.duplicates,
            Outcome::Skipped => &self.skipped,
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
) -> Result<Outcome, sqlx::Error> {
    // Events without a type header are assumed to be OrderPlaced; other types are for other consumers.
    if !ce_type.is_empty() && ce_type != events::ORDER_PLACED_TYPE {
        tracing::debug!(ce_type, ?source, "not an OrderPlaced event, skipped");
        return Ok(Outcome::Skipped);
    }
    let event = match events::decode_order_placed(payload.unwrap_or_default()) {
        Ok(event) => event,
        Err(error) => {
            // A poison message must not block the partition. It stays in the topic for inspection.
            tracing::error!(%error, channel = channel.as_str(), ?source, "undecodable event skipped");
            return Ok(Outcome::Skipped);
        }
    };
    let Some(recipient) = channel.recipient(&event) else {
        tracing::warn!(channel = channel.as_str(), order_id = %event.order_id, "event has no recipient for this channel");
        return Ok(Outcome::Skipped);
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
        return Ok(Outcome::Duplicate);
    }
    // PENDING: new, or left by a run that stopped between recording and confirming; send (again).
    channel.send(&record.recipient, &event).await;
    store
        .mark_sent(&record.notification_id, timestamp::now_millis())
        .await?;
    Ok(Outcome::Sent)
}

/// A channel's consumer: subscribed, and looping until cancelled.
pub(crate) struct ChannelConsumer {
    consumer: StreamConsumer,
    channel: Channel,
    store: Store,
    stats: Arc<Stats>,
}

impl ChannelConsumer {
    pub(crate) fn new(
        brokers: &str,
        group: &str,
        topic: &str,
        channel: Channel,
        session_timeout: Duration,
        store: Store,
        stats: Arc<Stats>,
    ) -> KafkaResult<Self> {
        let consumer: StreamConsumer = ordermesh::kafka::client_config(
            brokers,
            &format!("ordermesh-notifier-{}", channel.as_str().to_lowercase()),
        )
        .set("group.id", group)
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
        consumer.subscribe(&[topic])?;
        Ok(Self {
            consumer,
            channel,
            store,
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
        // Committing synchronously and closing (leaving the group) both block until the broker
        // answers, so they run on a blocking thread, and the consumer is dropped there too.
        let consumer = self.consumer;
        let committed = tokio::task::spawn_blocking(move || {
            let committed = consumer.commit_consumer_state(CommitMode::Sync);
            drop(consumer);
            committed
        })
        .await;
        match committed {
            // Nothing stored since the last commit.
            Ok(Ok(())) | Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
            Ok(Err(error)) => {
                tracing::warn!(channel, %error, "final offset commit failed; the broker will redeliver")
            }
            Err(error) => {
                tracing::warn!(channel, %error, "final offset commit did not run; the broker will redeliver")
            }
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
            match handle(
                &self.store,
                self.channel,
                message.payload(),
                &ce_type,
                source,
            )
            .await
            {
                Ok(outcome) => {
                    self.stats.count(outcome);
                    return true;
                }
                Err(error) => {
                    tracing::error!(channel = self.channel.as_str(), %error, ?backoff, "cannot record notification, retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(5)),
                    }
                }
            }
        }
    }
}
