//! What handling a message came to ([`Outcome`]), and the per-channel counts of it ([`Stats`]). The
//! consumer, the retry loop and the replay all end a message in an `Outcome`; the counts, the
//! metrics (`metrics`) and the span of the message are all read from it, so they cannot disagree.

use std::sync::atomic::{AtomicU64, Ordering};

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

    /// Records the outcome on a [`Handler::process_span`](crate::handler::Handler::process_span);
    /// parking an event fails its span.
    pub(crate) fn record_on(self, span: &tracing::Span) {
        span.record("ordermesh.outcome", self.as_str());
        if self == Outcome::DeadLettered {
            span.record("otel.status_code", "ERROR");
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_is_counted_once_in_its_own_counter() {
        let table = [
            (Outcome::Sent, "sent"),
            (Outcome::Duplicate, "duplicate"),
            (Outcome::Skipped, "skipped"),
            (Outcome::Retrying, "retrying"),
            (Outcome::DeadLettered, "dead_lettered"),
        ];
        for (n, (outcome, label)) in table.into_iter().enumerate() {
            assert_eq!(outcome.as_str(), label);
            let stats = Stats::default();
            stats.count(outcome);
            let counts = [
                &stats.sent,
                &stats.duplicates,
                &stats.skipped,
                &stats.retrying,
                &stats.dead_lettered,
            ]
            .map(|c| c.load(Ordering::Relaxed));
            let mut expected = [0; 5];
            expected[n] = 1;
            assert_eq!(counts, expected, "{label}");
        }
    }
}
