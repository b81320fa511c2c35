//! The retry loop of a channel: sends again the notifications whose send failed, when their backoff
//! is over, until they are sent or out of attempts (then parked on the dead-letter topic).
//!
//! Retries live in the notifier's database rather than in retry topics: the consumer has already
//! stored the failed message there before moving its offset, so nothing is lost when the notifier
//! stops, and the partition never waits for a mail server. The loop wakes when the soonest retry is
//! due (or every [`POLL`] at most, to see retries another replica scheduled), and takes each due
//! retry with a lease, so replicas sharing a database do not send the same one twice.

use std::{sync::Arc, time::Duration};

use ordermesh::{events, timestamp};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    handler::{HandleError, Handler, Held, Verdict},
    notice::Notice,
    outcome::{Outcome, Stats},
};

/// Longest sleep between two looks at the retry schedule.
const POLL: Duration = Duration::from_secs(1);
/// Retries taken per look.
const BATCH: i64 = 64;

/// Runs `handler`'s channel's retries until `stop` is cancelled. A send under way is finished first.
pub(crate) async fn run(handler: Handler, stats: Arc<Stats>, stop: CancellationToken) {
    let channel = handler.channel.as_str();
    loop {
        let wait = match due_round(&handler, &stats, &stop).await {
            Ok(wait) => wait,
            Err(error) => {
                // The leases run out and the retries become due again.
                tracing::error!(channel, %error, "retry round failed");
                POLL
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!(channel, "retry loop stopped");
}

/// Sends every retry due now, until `stop` is cancelled (checked between sends: with a mail server
/// that times every send out, a round of due retries would otherwise hold a shutdown up for a
/// send timeout each); returns how long to sleep before the next look.
async fn due_round(
    handler: &Handler,
    stats: &Stats,
    stop: &CancellationToken,
) -> Result<Duration, HandleError> {
    let store = &handler.store;
    let lease = handler.sender.claim_lease();
    loop {
        let due = store.due_retries(handler.channel, BATCH).await?;
        let full = due.len() as i64 == BATCH;
        for (mut row, letter) in due {
            // Not leased yet: left due for whichever retry loop looks next.
            if stop.is_cancelled() {
                return Ok(POLL);
            }
            // Due, so it has a due time; the lease is taken only if nobody moved it since.
            let Some(seen_due) = row.next_attempt_at_ms else {
                continue;
            };
            let token = crate::store::new_token();
            if !store
                .lease_retry(&row.notification_id, seen_due, lease, &token)
                .await?
            {
                continue; // Another replica took it.
            }
            // Ours for the lease: every write from here names it.
            row.claim_token = Some(token.clone());
            // The retry continues the event's trace: the stored message keeps its headers.
            let span = handler.process_span(&letter, row.attempts as u32 + 1);
            // Read by the type it was stored with, as the consumer read it.
            let ce_type = letter.header(events::TYPE_HEADER).unwrap_or_default();
            let park = |reason: String| Verdict::Park {
                reason,
                attempts: row.attempts as u32,
                first_failure_ms: row
                    .first_failure_at_ms
                    .unwrap_or_else(timestamp::now_millis),
                notification: Some(Held {
                    notification_id: row.notification_id.clone(),
                    token: token.clone(),
                    attempts: row.attempts,
                }),
            };
            let verdict =
                match Notice::read(&ce_type, letter.payload.as_deref().unwrap_or_default()) {
                    Some(Ok(event)) => {
                        handler
                            .attempt(&row, &event, true)
                            .instrument(span.clone())
                            .await?
                    }
                    // It was read when it was first handled; a row damaged since (or stored by
                    // a notifier that knew a type this one does not) is parked as it is.
                    Some(Err(error)) => park(format!("stored message no longer decodes: {error}")),
                    None => park(format!(
                        "stored message is of a type this notifier does not act on: {ce_type:?}"
                    )),
                };
            let outcome = handler
                .settle(verdict, &letter)
                .instrument(span.clone())
                .await?;
            outcome.record_on(&span);
            handler.metrics.outcome(outcome, None);
            if outcome == Outcome::Sent {
                tracing::info!(channel = handler.channel.as_str(), event_id = %row.event_id, attempts = row.attempts + 1, "sent on retry");
            }
            stats.count(outcome);
        }
        if !full {
            break;
        }
    }
    // By the database's clock, which judges what is due.
    let wait = store
        .next_retry_in(handler.channel)
        .await?
        .map_or(POLL, |wait| wait.min(POLL));
    Ok(wait)
}
