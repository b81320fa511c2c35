//! Every SQL statement of the notifier.
//!
//! A status a statement writes or matches is bound from [`Status`], whose text is the stored one,
//! so no statement spells a status itself; the exception, and why, is at `due_retries`.

use std::collections::HashMap;

use ordermesh_platform::{db::Migrations, db::Pool};
// The batch statements are built from numbered placeholders only, never from values.
use sqlx::{AssertSqlSafe, Row, any::AnyRow};

use crate::{channel::Channel, letter::Letter, status::Status};

/// Rows per multi-row INSERT: 13 bound parameters each keeps a statement under SQLite's historical
/// limit of 999 parameters (newer builds allow more; staying under costs nothing).
const CLAIMS_PER_STATEMENT: usize = 64;
/// Ids per `IN (...)` list, under the same limit.
const IDS_PER_STATEMENT: usize = 500;

/// A notification as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotificationRow {
    pub(crate) seq: i64,
    pub(crate) notification_id: String,
    pub(crate) event_id: String,
    pub(crate) order_id: String,
    pub(crate) channel: Channel,
    pub(crate) recipient: String,
    pub(crate) status: Status,
    pub(crate) attempts: i32,
    pub(crate) created_at_ms: i64,
    pub(crate) sent_at_ms: Option<i64>,
    pub(crate) source_topic: String,
    pub(crate) source_partition: i32,
    pub(crate) source_offset: i64,
    pub(crate) last_error: Option<String>,
    pub(crate) first_failure_at_ms: Option<i64>,
    pub(crate) next_attempt_at_ms: Option<i64>,
}

impl NotificationRow {
    /// A new PENDING notification of `event_id` on `channel`, read at `source`, recorded at `now_ms`.
    pub(crate) fn pending(
        notification_id: String,
        event_id: &str,
        order_id: &str,
        channel: Channel,
        recipient: String,
        (source_topic, source_partition, source_offset): (String, i32, i64),
        now_ms: i64,
    ) -> Self {
        Self {
            seq: 0,
            notification_id,
            event_id: event_id.to_owned(),
            order_id: order_id.to_owned(),
            channel,
            recipient,
            status: Status::Pending,
            attempts: 0,
            created_at_ms: now_ms,
            sent_at_ms: None,
            source_topic,
            source_partition,
            source_offset,
            last_error: None,
            first_failure_at_ms: None,
            next_attempt_at_ms: None,
        }
    }
}

/// Filters of a listing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) order_id: Option<String>,
    pub(crate) channel: Option<Channel>,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: Pool,
}

/// The notifier service's schema, for SQLite and for PostgreSQL.
pub(crate) fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

impl Store {
    pub(crate) fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Records a PENDING notification for (event, channel), keeping `letter` (the message as read)
    /// for retries and parking, unless one exists; returns whichever row holds that key now: a
    /// redelivered event finds the first one.
    pub(crate) async fn claim(
        &self,
        new: &NotificationRow,
        letter: &Letter,
    ) -> Result<NotificationRow, sqlx::Error> {
        let mut rows = self.claim_all(&[(new, letter)]).await?;
        rows.pop().ok_or(sqlx::Error::RowNotFound)
    }

    /// [`Store::claim`] for a batch of messages, in one transaction: one commit for the whole batch
    /// instead of one per message is what lets a consumer keep up with a busy topic. Returns the row
    /// holding each claim's key, in the order of `claims`.
    pub(crate) async fn claim_all(
        &self,
        claims: &[(&NotificationRow, &Letter)],
    ) -> Result<Vec<NotificationRow>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for chunk in claims.chunks(CLAIMS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO notifications (notification_id, event_id, order_id, channel, recipient,
                     status, attempts, created_at_ms, source_topic, source_partition, source_offset,
                     message_key, message_payload, message_headers)
                 VALUES {}
                 ON CONFLICT (event_id, channel) DO NOTHING",
                rows_of_placeholders(chunk.len(), &[
                    "", "", "", "", "", "", "0", "", "", "", "", "", "", "",
                ])
            );
            let mut insert = sqlx::query(AssertSqlSafe(sql));
            for (new, letter) in chunk {
                insert = insert
                    .bind(&new.notification_id)
                    .bind(&new.event_id)
                    .bind(&new.order_id)
                    .bind(new.channel.as_str())
                    .bind(&new.recipient)
                    .bind(Status::Pending.as_str())
                    .bind(new.created_at_ms)
                    .bind(&new.source_topic)
                    .bind(new.source_partition)
                    .bind(new.source_offset)
                    .bind(&letter.key)
                    .bind(&letter.payload)
                    .bind(letter.headers_json());
            }
            // Not kept in the connection's statement cache: batches come in every size, and each
            // size is a different statement (caching them all cost the notifier about 5 MiB of
            // resident memory under load, benchmark 7).
            insert.persistent(false).execute(&mut *tx).await?;
        }
        let mut held = HashMap::with_capacity(claims.len());
        for chunk in claims.chunks(IDS_PER_STATEMENT) {
            let sql = format!(
                "SELECT * FROM notifications WHERE event_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut select = sqlx::query(AssertSqlSafe(sql));
            for (new, _) in chunk {
                select = select.bind(&new.event_id);
            }
            for row in select.persistent(false).fetch_all(&mut *tx).await? {
                let row = from_row(&row)?;
                held.insert((row.event_id.clone(), row.channel), row);
            }
        }
        tx.commit().await?;
        claims
            .iter()
            .map(|(new, _)| {
                held.get(&(new.event_id.clone(), new.channel))
                    .cloned()
                    .ok_or(sqlx::Error::RowNotFound)
            })
            .collect()
    }

    /// Deletes PENDING claims that were never acted on (a stop in the middle of a batch), so the
    /// messages are claimed afresh when they are read again.
    pub(crate) async fn release_claims(
        &self,
        notification_ids: &[String],
    ) -> Result<(), sqlx::Error> {
        for chunk in notification_ids.chunks(IDS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM notifications WHERE status = $1 AND notification_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut delete = sqlx::query(AssertSqlSafe(sql)).bind(Status::Pending.as_str());
            for id in chunk {
                delete = delete.bind(id);
            }
            delete.persistent(false).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Marks a notification sent, counting the attempt, and lets go of the message it kept.
    pub(crate) async fn mark_sent(
        &self,
        notification_id: &str,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE notifications SET status = $1, attempts = attempts + 1, sent_at_ms = $2,
                 next_attempt_at_ms = NULL, message_key = NULL, message_payload = NULL,
                 message_headers = NULL
             WHERE notification_id = $3",
        )
        .bind(Status::Sent.as_str())
        .bind(now_ms)
        .bind(notification_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the `attempts`-th failed send and when to try again.
    pub(crate) async fn schedule_retry(
        &self,
        notification_id: &str,
        attempts: i32,
        error: &str,
        now_ms: i64,
        next_attempt_at_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE notifications SET status = $1, attempts = $2, last_error = $3,
                 first_failure_at_ms = COALESCE(first_failure_at_ms, $4), next_attempt_at_ms = $5
             WHERE notification_id = $6",
        )
        .bind(Status::Retrying.as_str())
        .bind(attempts)
        .bind(error)
        .bind(now_ms)
        .bind(next_attempt_at_ms)
        .bind(notification_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that a notification was parked on the dead-letter topic after `attempts` sends; the
    /// dead-letter topic holds the message from now on.
    pub(crate) async fn mark_failed(
        &self,
        notification_id: &str,
        attempts: i32,
        error: &str,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE notifications SET status = $1, attempts = $2, last_error = $3,
                 first_failure_at_ms = COALESCE(first_failure_at_ms, $4), next_attempt_at_ms = NULL,
                 message_key = NULL, message_payload = NULL, message_headers = NULL
             WHERE notification_id = $5",
        )
        .bind(Status::Failed.as_str())
        .bind(attempts)
        .bind(error)
        .bind(now_ms)
        .bind(notification_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Hands a PENDING notification found by a redelivery to the retry loop, due when its claim's
    /// lease ends (`lease` after it was claimed, or as renewed), unless it was settled meanwhile. PENDING means another consumer may be sending it right now
    /// (its partition moved to us in a rebalance) or a notifier stopped mid-send; either way the
    /// outcome is not known yet, so it is not sent again before its claim could have finished.
    pub(crate) async fn hand_over_pending(
        &self,
        notification_id: &str,
        lease: std::time::Duration,
    ) -> Result<bool, sqlx::Error> {
        // Due when the claim's lease ends: renewed (see `renew_claim`) or from its creation. One
        // statement, so a renewal and a hand-over cannot interleave.
        let done = sqlx::query(
            "UPDATE notifications SET status = $1,
                 next_attempt_at_ms = COALESCE(next_attempt_at_ms, created_at_ms + $2),
                 last_error = 'send interrupted or under way elsewhere; checking again'
             WHERE notification_id = $3 AND status = $4",
        )
        .bind(Status::Retrying.as_str())
        .bind(lease.as_millis() as i64)
        .bind(notification_id)
        .bind(Status::Pending.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends a PENDING claim's lease to `until_ms` (kept in `next_attempt_at_ms`, unused while
    /// PENDING), if it is still PENDING: false if it was handed to the retry loop or settled
    /// meanwhile, and so is no longer the claimant's to send.
    pub(crate) async fn renew_claim(
        &self,
        notification_id: &str,
        until_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE notifications SET next_attempt_at_ms = $1
             WHERE notification_id = $2 AND status = $3",
        )
        .bind(until_ms)
        .bind(notification_id)
        .bind(Status::Pending.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Up to `limit` of `channel`'s retries due at `now_ms`, soonest first, with their messages.
    ///
    /// This statement and [`Store::next_retry_at`] spell RETRYING out rather than bind it: they are
    /// what the partial index `notifications_due` (`WHERE status = 'RETRYING'`) is for, and
    /// PostgreSQL uses a partial index only for a query it can prove matches the index's condition
    /// when planning, which a bound value is not in a generic plan (one reused for any value). The
    /// store's tests read these rows back through [`Status`], so the text cannot drift from it.
    pub(crate) async fn due_retries(
        &self,
        channel: Channel,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<(NotificationRow, Letter)>, sqlx::Error> {
        sqlx::query(
            "SELECT * FROM notifications
             WHERE status = 'RETRYING' AND channel = $1 AND next_attempt_at_ms <= $2
             ORDER BY next_attempt_at_ms LIMIT $3",
        )
        .bind(channel.as_str())
        .bind(now_ms)
        .bind(limit)
        .try_map(|row: AnyRow| {
            let letter = Letter::from_parts(
                row.try_get("source_topic")?,
                row.try_get("source_partition")?,
                row.try_get("source_offset")?,
                row.try_get("message_key")?,
                row.try_get("message_payload")?,
                row.try_get::<Option<String>, _>("message_headers")?
                    .as_deref(),
            )
            .map_err(|e| sqlx::Error::Decode(e.into()))?;
            Ok((from_row(&row)?, letter))
        })
        .fetch_all(&self.pool)
        .await
    }

    /// When `channel`'s next retry is due, if any is waiting. RETRYING is spelt out for the partial
    /// index; see [`Store::due_retries`].
    pub(crate) async fn next_retry_at(&self, channel: Channel) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT MIN(next_attempt_at_ms) FROM notifications
             WHERE status = 'RETRYING' AND channel = $1",
        )
        .bind(channel.as_str())
        .fetch_one(&self.pool)
        .await
    }

    /// Takes a due retry for `lease_until_ms` by moving its due time, if nobody else moved it since
    /// it was read as due at `seen_due_ms`: with several notifier replicas on one database, one of
    /// them sends it. A holder that dies leaves it due again when the lease ends.
    pub(crate) async fn lease_retry(
        &self,
        notification_id: &str,
        seen_due_ms: i64,
        lease_until_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE notifications SET next_attempt_at_ms = $1
             WHERE notification_id = $2 AND status = $3 AND next_attempt_at_ms = $4",
        )
        .bind(lease_until_ms)
        .bind(notification_id)
        .bind(Status::Retrying.as_str())
        .bind(seen_due_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Up to `limit` notifications matching `filter` with `seq` greater than `after`, oldest first.
    pub(crate) async fn list(
        &self,
        filter: &Filter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<NotificationRow>, sqlx::Error> {
        sqlx::query(
            "SELECT * FROM notifications
             WHERE seq > $1 AND ($2 IS NULL OR order_id = $3) AND ($4 IS NULL OR channel = $5)
             ORDER BY seq LIMIT $6",
        )
        .bind(after)
        .bind(&filter.order_id)
        .bind(&filter.order_id)
        .bind(filter.channel.map(Channel::as_str))
        .bind(filter.channel.map(Channel::as_str))
        .bind(limit)
        .try_map(|row: AnyRow| from_row(&row))
        .fetch_all(&self.pool)
        .await
    }
}

/// `$first, $first+1, ...`: `count` numbered placeholders, as both SQLite and PostgreSQL take them.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The VALUES rows of a multi-row INSERT: `rows` tuples of `columns`, where an empty column is the
/// next numbered placeholder and any other is written as is (a constant).
fn rows_of_placeholders(rows: usize, columns: &[&str]) -> String {
    let mut next = 1;
    let mut row = |_| {
        let values = columns
            .iter()
            .map(|column| {
                if column.is_empty() {
                    next += 1;
                    format!("${}", next - 1)
                } else {
                    (*column).to_owned()
                }
            })
            .collect::<Vec<_>>();
        format!("({})", values.join(", "))
    };
    (0..rows).map(&mut row).collect::<Vec<_>>().join(", ")
}

fn from_row(row: &AnyRow) -> Result<NotificationRow, sqlx::Error> {
    let channel: String = row.try_get("channel")?;
    let status: String = row.try_get("status")?;
    Ok(NotificationRow {
        seq: row.try_get("seq")?,
        notification_id: row.try_get("notification_id")?,
        event_id: row.try_get("event_id")?,
        order_id: row.try_get("order_id")?,
        channel: Channel::parse(&channel)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown channel {channel:?}").into()))?,
        recipient: row.try_get("recipient")?,
        status: Status::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown status {status:?}").into()))?,
        attempts: row.try_get("attempts")?,
        created_at_ms: row.try_get("created_at_ms")?,
        sent_at_ms: row.try_get("sent_at_ms")?,
        source_topic: row.try_get("source_topic")?,
        source_partition: row.try_get("source_partition")?,
        source_offset: row.try_get("source_offset")?,
        last_error: row.try_get("last_error")?,
        first_failure_at_ms: row.try_get("first_failure_at_ms")?,
        next_attempt_at_ms: row.try_get("next_attempt_at_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordermesh_testkit::{Backend, Databases, on_both_backends};

    // On SQLite (in memory) and on PostgreSQL: each statement writes or matches its status as a
    // literal, and both backends must agree with `Status`.

    /// A store on a fresh database, with what keeps a PostgreSQL server alive; None to skip.
    async fn store(backend: Backend) -> Option<(Store, Option<Databases>)> {
        let (url, databases) = match backend {
            Backend::Postgres => {
                let databases = Databases::for_test(std::path::Path::new("."), backend)
                    .await
                    .expect("a PostgreSQL server")?;
                (databases.url("notifier"), Some(databases))
            }
            Backend::Sqlite => ("sqlite::memory:".to_owned(), None),
        };
        let pool = ordermesh_platform::db::open(&url, &migrations())
            .await
            .expect("database");
        Some((Store::new(pool), databases))
    }

    /// A PENDING claim of event `n` and the message it was read from.
    fn claim(n: i64, now_ms: i64) -> (NotificationRow, Letter) {
        let row = NotificationRow::pending(
            format!("ntf_{n}"),
            &format!("evt_{n}"),
            "ord_1",
            Channel::Email,
            "ada@example.com".into(),
            ("order-events".into(), 0, n),
            now_ms,
        );
        let letter = Letter {
            topic: "order-events".into(),
            partition: 0,
            offset: n,
            key: None,
            payload: Some(b"event".to_vec()),
            headers: Vec::new(),
        };
        (row, letter)
    }

    #[on_both_backends]
    #[tokio::test]
    async fn every_transition_stores_a_status_that_reads_back_typed(backend: Backend) {
        let Some((store, _databases)) = store(backend).await else {
            return;
        };
        let now = 1_000_000;
        let lease = std::time::Duration::from_secs(60);
        let status = |id: &'static str| {
            let store = store.clone();
            async move {
                let rows = store
                    .list(&Filter::default(), 0, 100)
                    .await
                    .expect("list reads every status back");
                rows.into_iter()
                    .find(|r| r.notification_id == id)
                    .map(|r| r.status)
            }
        };

        // Claimed: PENDING, and renewable while it is.
        let (first, letter) = claim(1, now);
        let row = store.claim(&first, &letter).await.expect("claim");
        assert_eq!(row.status, Status::Pending);
        assert!(store.renew_claim("ntf_1", now + 1).await.expect("renew"));

        // Handed over: RETRYING, due, leasable, and schedulable again.
        assert!(
            store
                .hand_over_pending("ntf_1", lease)
                .await
                .expect("hand over")
        );
        assert_eq!(status("ntf_1").await, Some(Status::Retrying));
        assert_eq!(
            store.next_retry_at(Channel::Email).await.expect("next"),
            Some(now + 1)
        );
        let due = store
            .due_retries(Channel::Email, now + 1, 10)
            .await
            .expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.status, Status::Retrying);
        assert!(
            store
                .lease_retry("ntf_1", now + 1, now + 2)
                .await
                .expect("lease")
        );
        store
            .schedule_retry("ntf_1", 1, "mail server down", now, now + 3)
            .await
            .expect("schedule");
        assert_eq!(status("ntf_1").await, Some(Status::Retrying));

        // Sent: SENT, and no longer a claim to renew or hand over.
        store.mark_sent("ntf_1", now + 3).await.expect("sent");
        assert_eq!(status("ntf_1").await, Some(Status::Sent));
        assert!(!store.renew_claim("ntf_1", now + 4).await.expect("renew"));
        assert!(
            !store
                .hand_over_pending("ntf_1", lease)
                .await
                .expect("hand over")
        );
        assert_eq!(
            store.next_retry_at(Channel::Email).await.expect("next"),
            None
        );

        // Parked: FAILED.
        let (second, letter) = claim(2, now);
        store.claim(&second, &letter).await.expect("claim");
        store
            .mark_failed("ntf_2", 1, "no such mailbox", now)
            .await
            .expect("failed");
        assert_eq!(status("ntf_2").await, Some(Status::Failed));

        // Released: only a claim still PENDING is deleted.
        let (third, letter) = claim(3, now);
        store.claim(&third, &letter).await.expect("claim");
        store
            .release_claims(&["ntf_1".into(), "ntf_2".into(), "ntf_3".into()])
            .await
            .expect("release");
        assert_eq!(status("ntf_3").await, None);
        assert_eq!(status("ntf_1").await, Some(Status::Sent));
        assert_eq!(status("ntf_2").await, Some(Status::Failed));
    }
}
