//! One message, decided and done: the step shared by the consumer's batch loop (`consumer`), the
//! retry loop (`retry`) and the replay (`replay`). Each reads messages its own way and hands them
//! to a [`Handler`]; what happens to a message is decided here, once.
//!
//! [`Handler::process`] is the whole step for one message:
//!
//! 1. [`Handler::prepare`]: what can be told without the database (not ours, poison, or the
//!    notification to claim);
//! 2. the claim (`Store::claim`): a PENDING row, unique per event and channel, so a redelivery
//!    after a crash or a rebalance finds the first one by its event id;
//! 3. [`Handler::after_claim`]: what the row found says (send now, or a duplicate); a send goes
//!    through [`Handler::attempt`], which records it and on failure schedules a retry or decides
//!    to park;
//! 4. [`Handler::settle`]: carries the [`Verdict`] out (parks the message, if so decided).
//!
//! The batch loop runs the same steps but claims a whole batch in one transaction between 1 and 3;
//! the retry loop, which holds the row already, starts at [`Handler::attempt`].
//!
//! The invariant a reader must keep: a notification is sent only by the holder of its PENDING claim
//! while the claim's lease lasts, by the retry loop once it is RETRYING (and leased), or by a
//! replay once it is FAILED. Whatever else finds it unsettled hands it to the retry loop rather than
//! send it a second time. Each holder records what became of its send with its claim token
//! (`store`'s state machine); one whose claim was taken over meanwhile records nothing, and
//! [`Handler::stale`] says so in the log and in `ordermesh.notifications.stale_writes`.

use std::time::Instant;

use opentelemetry::metrics::Meter;
use ordermesh::{events, timestamp};
use rdkafka::error::KafkaError;

use crate::{
    channel::Channel,
    config::{Config, RetryPolicy},
    dead_letter::{DeadLetterHeaders, DeadLetters},
    delivery::{SendError, Sender},
    letter::{Letter, UNREADABLE_HEADERS},
    metrics::ChannelMetrics,
    notice::Notice,
    outcome::Outcome,
    status::Status,
    store::{NotificationRow, Store},
};

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
        notification: Option<Held>,
    },
}

/// A notification as its holder holds it: what a holder's writes name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) notification_id: String,
    /// The claim or lease token the holder holds it by.
    pub(crate) token: String,
    /// Sends made so far, this one included.
    pub(crate) attempts: i32,
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
        event: Notice,
    },
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
                let claimed = Instant::now();
                let record = self.store.claim(&claim, letter).await?;
                self.after_claim(&record, &claim, &event, mode, claimed)
                    .await
            }
        }
    }

    /// Says that the holder of `notification_id` lost it before recording `write` (its claim was
    /// handed over and leased, or it was settled by another): nothing was changed.
    fn stale(&self, notification_id: &str, write: &'static str) {
        tracing::warn!(
            channel = self.channel.as_str(),
            notification_id,
            write,
            "not recorded: this claim was taken over meanwhile; the new holder decides"
        );
        self.metrics.stale_write(write);
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
        // Read by its type (see `notice` for the policy); a type the notifier does not act on is
        // for other consumers.
        let ce_type = letter.header(events::TYPE_HEADER).unwrap_or_default();
        let event = match Notice::read(&ce_type, letter.payload.as_deref().unwrap_or_default()) {
            Some(Ok(event)) => event,
            // A poison message must not block the partition: it is parked, and the consumer goes on.
            Some(Err(error)) => return poison(error.to_string()),
            None => {
                tracing::info!(ce_type, topic = %letter.topic, partition = letter.partition, offset = letter.offset, "an event type the notifier does not act on, skipped");
                return Prepared::Decided(Verdict::Done(Outcome::Skipped));
            }
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
            event.event_id(),
            event.order_id(),
            channel,
            recipient,
            source,
        );
        Prepared::Claim { claim, event }
    }

    /// Acts on `record`, the row found holding `claim`'s key: sends a new notification, or
    /// recognises a redelivery. `claimed` is when the claim was asked for (its lease started
    /// after).
    pub(crate) async fn after_claim(
        &self,
        record: &NotificationRow,
        claim: &NotificationRow,
        event: &Notice,
        mode: Mode,
        claimed: Instant,
    ) -> Result<Verdict, sqlx::Error> {
        let channel = self.channel;
        let event_id = event.event_id();
        match (record.status, mode) {
            // Recorded by this claim: send, if the claim is still ours.
            (Status::Pending, _) if record.notification_id == claim.notification_id => {
                if !self.hold_claim(record, claimed).await? {
                    tracing::info!(channel = channel.as_str(), %event_id, "claim handed to the retry loop while waiting in its batch");
                    return Ok(Verdict::Done(Outcome::Duplicate));
                }
                self.attempt(record, event, mode == Mode::Live).await
            }
            (Status::Sent, _) => {
                tracing::info!(channel = channel.as_str(), %event_id, "duplicate delivery, already notified");
                Ok(Verdict::Done(Outcome::Duplicate))
            }
            (Status::Retrying, _) => {
                tracing::info!(channel = channel.as_str(), %event_id, "duplicate delivery, already waiting for a retry");
                Ok(Verdict::Done(Outcome::Duplicate))
            }
            (Status::Failed, Mode::Live) => {
                tracing::info!(channel = channel.as_str(), %event_id, "duplicate delivery, already parked on the dead-letter topic");
                Ok(Verdict::Done(Outcome::Duplicate))
            }
            // Recorded earlier and not settled: another replica may be sending it now (its
            // partition moved here in a rebalance), or a notifier stopped mid-send. Sending now
            // could send twice; the retry loop sends it once that claim has had time to finish,
            // unless it is SENT by then.
            (Status::Pending, _) => {
                if self
                    .store
                    .hand_over_pending(&record.notification_id, self.sender.claim_lease())
                    .await?
                {
                    tracing::info!(channel = channel.as_str(), %event_id, "redelivered while unsettled; handed to the retry loop");
                }
                Ok(Verdict::Done(Outcome::Duplicate))
            }
            // FAILED in a replay: the cause is said to be fixed; one more send, under a claim
            // of the replay's own (a second replay running at once finds it PENDING, above).
            (Status::Failed, Mode::Replay) => {
                let token = crate::store::new_token();
                if !self
                    .store
                    .take_for_replay(&record.notification_id, &token, self.sender.claim_lease())
                    .await?
                {
                    tracing::info!(channel = channel.as_str(), %event_id, "taken by another replay");
                    return Ok(Verdict::Done(Outcome::Duplicate));
                }
                let held = NotificationRow {
                    status: Status::Pending,
                    claim_token: Some(token),
                    ..record.clone()
                };
                self.attempt(&held, event, false).await
            }
        }
    }

    /// Whether this claimant may send `claim` now: a redelivery elsewhere leaves a claim alone for
    /// its lease, so a send must start while at least half of it is left (a send takes at most the
    /// send timeout, under half). A claim that waited longer in its batch (slow sends before it) is
    /// renewed first, unless it was handed to the retry loop meanwhile: then it is not ours.
    ///
    /// The age is measured here, on this process's monotonic clock, from `claimed` (before the
    /// claim was written, so never less than the lease's own age): no comparison of this host's
    /// clock with the database's.
    async fn hold_claim(
        &self,
        claim: &NotificationRow,
        claimed: Instant,
    ) -> Result<bool, sqlx::Error> {
        let lease = self.sender.claim_lease();
        if claimed.elapsed() < lease / 2 {
            return Ok(true);
        }
        let Some(token) = &claim.claim_token else {
            return Ok(false);
        };
        self.store
            .renew_claim(&claim.notification_id, token, lease)
            .await
    }

    /// Sends `row`'s notification once, as the holder of its claim token, and records the result.
    /// A transient failure is scheduled for retry when `may_retry` and attempts remain; otherwise
    /// the verdict is to park.
    pub(crate) async fn attempt(
        &self,
        row: &NotificationRow,
        event: &Notice,
        may_retry: bool,
    ) -> Result<Verdict, sqlx::Error> {
        let Some(token) = row.claim_token.as_deref() else {
            // Only a holder sends; a row held by nobody is the retry schedule's.
            self.stale(&row.notification_id, "send");
            return Ok(Verdict::Done(Outcome::Duplicate));
        };
        let attempts = row.attempts + 1;
        let failure = match self.sender.send(self.channel, &row.recipient, event).await {
            Ok(()) => {
                if !self.store.mark_sent(&row.notification_id, token).await? {
                    // Sent, but too late to say so: the new holder may send it again (the one
                    // repeat the contract allows, under the same Message-ID / Idempotency-Key).
                    self.stale(&row.notification_id, "mark_sent");
                }
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
                    event_id = %event.event_id(),
                    attempts,
                    retry_in = ?delay,
                    %error,
                    "send failed, will retry"
                );
                if !self
                    .store
                    .schedule_retry(&row.notification_id, token, attempts, &error, delay)
                    .await?
                {
                    self.stale(&row.notification_id, "schedule_retry");
                    return Ok(Verdict::Done(Outcome::Duplicate));
                }
                Ok(Verdict::Done(Outcome::Retrying))
            }
            SendError::Transient(error) | SendError::Permanent(error) => {
                // Attempts in this round: all of them live; one in a replay.
                let round = if may_retry { attempts as u32 } else { 1 };
                Ok(Verdict::Park {
                    reason: error,
                    attempts: round,
                    first_failure_ms,
                    notification: Some(Held {
                        notification_id: row.notification_id.clone(),
                        token: token.to_owned(),
                        attempts,
                    }),
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
        if let Some(held) = notification
            && !self
                .store
                .mark_failed(&held.notification_id, &held.token, held.attempts, &reason)
                .await?
        {
            // Parked, but no longer ours to mark: the new holder settles the row.
            self.stale(&held.notification_id, "mark_failed");
        }
        Ok(Outcome::DeadLettered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordermesh::{
        events::CloudEventHeaders,
        proto::{events::v1::OrderPlaced, order::v1::Customer},
    };
    use ordermesh_testkit::{Backend, Databases, on_both_backends};

    // Each test runs on SQLite (a file: the writer thread) and on PostgreSQL, as the claim and
    // lease statements are what replicas sharing a database rely on.

    /// A handler on a fresh database on `backend`, with what keeps a PostgreSQL server alive; None
    /// to skip.
    async fn handler(backend: Backend) -> Option<(Handler, Option<Databases>)> {
        let mut config = Config::from_env().expect("defaults parse");
        let (url, databases) = ordermesh_testkit::unit_database(backend, "notifier").await?;
        config.database_url = url;
        let store = Store::new(
            ordermesh_platform::unit_of_work::Db::open(
                &config.database_url,
                &crate::store::migrations(),
            )
            .await
            .expect("database"),
        );
        // Creating a producer does not connect; nothing here is parked.
        let dead_letters = DeadLetters::new(
            &ordermesh_kafka::KafkaSettings::plaintext("127.0.0.1:1"),
            config.park_timeout(),
        )
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

    #[on_both_backends]
    #[tokio::test]
    async fn a_claim_found_unsettled_is_handed_to_the_retry_loop_not_sent_again(backend: Backend) {
        let Some((handler, _databases)) = handler(backend).await else {
            return;
        };
        let letter = letter();
        // Another consumer (a replica that lost the partition in a rebalance, or a notifier killed
        // mid-send) claimed the event and has not settled it.
        let theirs = NotificationRow::pending(
            "ntf_theirs".into(),
            "evt_1",
            "ord_1",
            Channel::Email,
            "ada@example.com".into(),
            ("order-events".into(), 0, 7),
        );
        let claimed = handler.store.claim(&theirs, &letter).await.expect("claim");

        // The redelivery does not send; it schedules a check once their claim could have ended
        // (by the database's clock, from when the database stored their claim).
        let verdict = handler.decide(&letter, Mode::Live).await.expect("decide");
        assert_eq!(verdict, Verdict::Done(Outcome::Duplicate));
        let lease = handler.sender.claim_lease().as_millis() as i64;
        let row = handler.store.claim(&theirs, &letter).await.expect("read");
        assert_eq!(row.status, Status::Retrying);
        assert_eq!(row.next_attempt_at_ms, Some(claimed.created_at_ms + lease));
        assert!(
            handler
                .store
                .due_retries(Channel::Email, 10)
                .await
                .expect("due")
                .is_empty(),
            "not due while their send may still be under way"
        );

        // They finish within their lease: their send is recorded, and nothing is left to retry.
        let their_token = theirs.claim_token.as_deref().expect("token");
        assert!(
            handler
                .store
                .mark_sent("ntf_theirs", their_token)
                .await
                .expect("sent"),
            "a hand-over leaves the claimant its send until its lease ends"
        );
        assert_eq!(
            handler
                .store
                .next_retry_in(Channel::Email)
                .await
                .expect("next"),
            None,
            "nothing left to retry"
        );
    }

    #[on_both_backends]
    #[tokio::test]
    async fn a_claim_kept_waiting_in_its_batch_is_renewed_before_its_send_or_given_up_if_handed_over(
        backend: Backend,
    ) {
        let Some((handler, _databases)) = handler(backend).await else {
            return;
        };
        let letter = letter();
        let event = Notice::Placed(
            events::decode_order_placed(letter.payload.as_deref().unwrap()).unwrap(),
        );
        let lease = handler.sender.claim_lease();
        let lease_ms = lease.as_millis() as i64;
        let ours = NotificationRow::pending(
            "ntf_ours".into(),
            "evt_1",
            "ord_1",
            Channel::Email,
            "ada@example.com".into(),
            ("order-events".into(), 0, 7),
        );
        let record = handler.store.claim(&ours, &letter).await.expect("claim");
        // Asked for a whole lease ago: the sends before it in its batch were slow.
        let claimed = Instant::now()
            .checked_sub(lease)
            .expect("the monotonic clock runs back a lease");
        // Some time on the database's clock too, so a renewed end differs from the original.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;

        // Still PENDING: the lease is renewed, so a redelivery elsewhere now hands it over due at
        // the renewed end, not at the original one.
        assert!(handler.hold_claim(&record, claimed).await.expect("hold"));
        assert!(
            handler
                .store
                .hand_over_pending("ntf_ours", lease)
                .await
                .expect("hand over")
        );
        let row = handler.store.claim(&ours, &letter).await.expect("read");
        assert_eq!(row.status, Status::Retrying);
        assert!(row.next_attempt_at_ms.expect("due") >= record.created_at_ms + lease_ms + 20);

        // Handed over: no longer ours to send; the retry loop has it.
        assert_eq!(
            handler
                .after_claim(&record, &ours, &event, Mode::Live, claimed)
                .await
                .expect("verdict"),
            Verdict::Done(Outcome::Duplicate)
        );
        let row = handler.store.claim(&ours, &letter).await.expect("read");
        assert_eq!((row.status, row.attempts), (Status::Retrying, 0));
    }

    #[on_both_backends]
    #[tokio::test]
    async fn a_new_event_is_sent_and_a_redelivery_of_it_is_a_duplicate(backend: Backend) {
        let Some((handler, _databases)) = handler(backend).await else {
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

    /// Issue 19, interleaving 1: replica A claims M; a rebalance moves M's partition to B, whose
    /// batch claim finds A's row; A is stopped before reaching M and releases its unsent claims;
    /// then B acts on the row it found. M must still be sent, and once.
    #[on_both_backends]
    #[tokio::test]
    async fn a_claim_released_by_a_stopping_replica_after_another_found_it_is_still_sent_once(
        backend: Backend,
    ) {
        let Some((handler, _databases)) = handler(backend).await else {
            return;
        };
        let letter = letter();
        let now = timestamp::now_millis();
        let claim_of = |prepared| match prepared {
            Prepared::Claim { claim, event } => (claim, event),
            Prepared::Decided(verdict) => panic!("an event to claim, not {verdict:?}"),
        };
        // A claims M.
        let (a_claim, _) = claim_of(handler.prepare(&letter, now));
        handler.store.claim(&a_claim, &letter).await.expect("claim");
        // B claims M in its batch (same database, same channel): it finds A's row.
        let (b_claim, event) = claim_of(handler.prepare(&letter, now));
        let found = handler
            .store
            .claim_all(&[(&b_claim, &letter)])
            .await
            .expect("batch claim")
            .pop()
            .expect("a row");
        assert_eq!(found.notification_id, a_claim.notification_id);
        // A is stopped before it reached M: it releases its unsent claims.
        handler
            .store
            .release_claims(&[a_claim.claim_token.clone().expect("token")])
            .await
            .expect("release");
        // B acts on the row it found: not its claim, so it does not send it now.
        let verdict = handler
            .after_claim(&found, &b_claim, &event, Mode::Live, Instant::now())
            .await
            .expect("verdict");
        assert_eq!(verdict, Verdict::Done(Outcome::Duplicate));

        // Not lost: the retry loop has it, due now, and sends it once.
        let mut due = handler
            .store
            .due_retries(Channel::Email, 10)
            .await
            .expect("due");
        assert_eq!(due.len(), 1, "M is waiting for the retry loop");
        let (mut row, _) = due.remove(0);
        let seen_due = row.next_attempt_at_ms.expect("due time");
        assert!(
            handler
                .store
                .lease_retry(
                    &row.notification_id,
                    seen_due,
                    std::time::Duration::from_secs(1),
                    "retry-loop"
                )
                .await
                .expect("lease")
        );
        row.claim_token = Some("retry-loop".into());
        assert_eq!(
            handler.attempt(&row, &event, true).await.expect("send"),
            Verdict::Done(Outcome::Sent)
        );
        let rows = handler
            .store
            .list(&crate::store::Filter::default(), 0, 10)
            .await
            .expect("list");
        assert_eq!(
            rows.iter()
                .map(|r| (r.status, r.attempts))
                .collect::<Vec<_>>(),
            [(Status::Sent, 1)],
            "one row, sent once"
        );
    }
}
