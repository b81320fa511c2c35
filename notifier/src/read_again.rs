//! Partitions to read again from a message: what keeps one partition's trouble from holding up the
//! others, and the poll loop inside its group.
//!
//! A consumer that retried a failing message in place (the database down, the dead-letter topic
//! unwritable) would stop calling librdkafka: past `max.poll.interval.ms` the member is dropped from
//! its group and its partitions churn, and meanwhile its other partitions wait too. Instead the
//! message's partition is sent back to that message (a seek) and paused for a backoff, and the
//! consumer goes on polling, so the other partitions keep flowing and the member stays in its group.
//! The same seek, without the pause, takes back the rest of a batch whose time ran out.
//!
//! The offsets of the messages before it were stored; its own was not, so if the partition moves to
//! another member meanwhile, that member starts at it (or earlier) too.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{Consumer, ConsumerContext},
};

use crate::letter::Letter;

/// The first wait after a failure; doubled after each further failure of the same partition.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a seek may wait for librdkafka's own thread (local work, no broker round trip).
const SEEK_TIMEOUT: Duration = Duration::from_secs(1);

/// A paused partition and where to read it again from.
#[derive(Debug)]
struct Paused {
    topic: String,
    partition: i32,
    offset: i64,
    resume_at: Instant,
}

/// The partitions a channel's consumer is holding back, and each one's current backoff.
#[derive(Debug, Default)]
pub(crate) struct ReadAgain {
    paused: Vec<Paused>,
    /// Per partition: the wait after its next failure. Reset when it handles its share of a batch.
    backoff: HashMap<(String, i32), Duration>,
}

impl ReadAgain {
    /// `letter` could not be handled now: its partition is read again from it after a backoff,
    /// paused meanwhile. Returns the wait.
    pub(crate) fn after_failure<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        letter: &Letter,
    ) -> Duration {
        let key = (letter.topic.clone(), letter.partition);
        let backoff = self.backoff.entry(key).or_insert(FIRST_BACKOFF);
        let wait = *backoff;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        self.pause(consumer, letter, wait);
        wait
    }

    /// `letter` was not reached in its batch's time: its partition is read again from it now.
    pub(crate) fn at_once<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        letter: &Letter,
    ) {
        if let Err(error) = consumer.seek(
            &letter.topic,
            letter.partition,
            Offset::Offset(letter.offset),
            SEEK_TIMEOUT,
        ) {
            // Paused instead, so nothing after it is read before the seek is made again.
            tracing::warn!(topic = %letter.topic, partition = letter.partition, %error, "seek failed; pausing the partition and seeking again on resume");
            self.pause(consumer, letter, Duration::ZERO);
        }
    }

    /// The partition of `topic` and `partition` handled its share of a batch: its next failure
    /// starts again at the first backoff.
    pub(crate) fn handled(&mut self, topic: &str, partition: i32) {
        if !self.backoff.is_empty() {
            self.backoff.remove(&(topic.to_owned(), partition));
        }
    }

    /// Sleeps until the next paused partition is due to resume; never returns if none is paused.
    pub(crate) async fn next_resume(&self) {
        match self.paused.iter().map(|p| p.resume_at).min() {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    }

    /// Resumes the paused partitions whose wait is over, each from the message it was held at.
    pub(crate) fn resume_due<C: ConsumerContext>(&mut self, consumer: &impl Consumer<C>) {
        let now = Instant::now();
        let (due, waiting): (Vec<Paused>, Vec<Paused>) = std::mem::take(&mut self.paused)
            .into_iter()
            .partition(|p| p.resume_at <= now);
        self.paused = waiting;
        for paused in due {
            // The seek is made here rather than when pausing: pausing moves librdkafka's position
            // to after the last message the consumer was given, so it must be set after the pause.
            // A partition revoked meanwhile fails both, harmlessly: its new owner starts at its
            // committed offset, which is not past this message.
            if let Err(error) = consumer.seek(
                &paused.topic,
                paused.partition,
                Offset::Offset(paused.offset),
                SEEK_TIMEOUT,
            ) {
                tracing::info!(topic = %paused.topic, partition = paused.partition, %error, "not seeking a partition no longer assigned here");
            }
            if let Err(error) = consumer.resume(&partition_list(&paused.topic, paused.partition)) {
                tracing::info!(topic = %paused.topic, partition = paused.partition, %error, "not resuming a partition no longer assigned here");
            }
        }
    }

    fn pause<C: ConsumerContext>(
        &mut self,
        consumer: &impl Consumer<C>,
        letter: &Letter,
        wait: Duration,
    ) {
        if let Err(error) = consumer.pause(&partition_list(&letter.topic, letter.partition)) {
            tracing::warn!(topic = %letter.topic, partition = letter.partition, %error, "pause failed");
        }
        self.paused.push(Paused {
            topic: letter.topic.clone(),
            partition: letter.partition,
            offset: letter.offset,
            resume_at: Instant::now() + wait,
        });
    }
}

fn partition_list(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}
