//! Every SQL statement of the notifier.
//!
//! A status a statement writes or matches is bound from [`Status`], whose text is the stored one,
//! so no statement spells a status itself; the exception, and why, is at `due_retries`.
//!
//! Every time a statement writes or compares (when a claim was made, when a lease ends, when a
//! retry is due) is read from the database's clock in the statement itself, and callers pass
//! durations, never instants: replicas on hosts whose clocks differ still agree on who holds what.
//!
//! Who may change a row is explicit: the row's `claim_token` names its holder (the consumer that
//! claimed it, the retry loop that leased it, a replay that took it), and every change a holder
//! makes is conditional on that token. A writer whose claim was taken over (its lease ran out and
//! the retry loop leased the row, or it was settled meanwhile) changes nothing, and is told so
//! (`false`), so it can say so in its log and count it. The states and their transitions:
//!
//! ```text
//!             claim (INSERT, token T)
//!                    |
//!                    v
//!   +--------- PENDING(T) ---- release on stop: RETRYING(-), due now ------+
//!   |                |  \                                                   |
//!   |  send ok: SENT |   redelivery elsewhere: RETRYING(T), due at T's lease end
//!   |                |                                                      v
//!   |   send failed: RETRYING(-), due after backoff <-- send failed -- RETRYING(L)
//!   |                                                                  ^    |
//!   |   out of attempts / permanent: FAILED(-)     lease when due (L) -+    | send ok: SENT
//!   |                                                                       |
//!   +-- FAILED(-) -- replay takes it: PENDING(R), leased -------------------+
//! ```

use std::{collections::HashMap, sync::Arc, time::Duration};

// The batch statements are built from numbered placeholders only, never from values.
use ordermesh_platform::{
    batch_sql::{self, placeholders, rows_of_placeholders},
    db::{Migrations, millis},
    unit_of_work::{Db, Param, Row},
};

use crate::{channel::Channel, letter::Letter, status::Status};

/// Most rows per multi-row INSERT (a power of two: see `batch_sql`): 13 bound parameters each keeps
/// a statement under SQLite's historical limit of 999 parameters (newer builds allow more; staying
/// under costs nothing), and a full batch of 256 claims is 8 statements.
const CLAIMS_PER_STATEMENT: usize = 32;
/// Most ids per `IN (...)` list, under the same limit.
const IDS_PER_STATEMENT: usize = 256;

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
    /// The holder of the row, if any (see the module's documentation).
    pub(crate) claim_token: Option<String>,
}

/// A fresh token for a claim or a lease: unique, so a holder is told apart from every other,
/// including an earlier claim of its own.
pub(crate) fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl NotificationRow {
    /// A new PENDING notification of `event_id` on `channel`, read at `source`, with a claim token
    /// of its own. Its `created_at_ms` is the database's to set when it stores the claim.
    pub(crate) fn pending(
        notification_id: String,
        event_id: &str,
        order_id: &str,
        channel: Channel,
        recipient: String,
        (source_topic, source_partition, source_offset): (String, i32, i64),
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
            created_at_ms: 0,
            sent_at_ms: None,
            source_topic,
            source_partition,
            source_offset,
            last_error: None,
            first_failure_at_ms: None,
            next_attempt_at_ms: None,
            claim_token: Some(new_token()),
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
    db: Db,
    /// The database's clock as SQL (`Backend::now_millis_sql`): every time the store writes or
    /// compares is the database's, so replicas whose clocks differ agree on every lease.
    now: &'static str,
    sql: Arc<Statements>,
}

/// The store's statements that read the database's clock, written once for its backend (the
/// clock is SQL of its own on each) rather than formatted on every call: `mark_sent` runs once
/// per notification sent.
#[derive(Debug)]
struct Statements {
    mark_sent: String,
    schedule_retry: String,
    mark_failed: String,
    take_for_replay: String,
    renew_claim: String,
    lease_retry: String,
    due_retries: String,
    next_retry_in: String,
}

impl Statements {
    fn new(now: &str) -> Self {
        Self {
            mark_sent: format!(
                "UPDATE notifications SET status = $1, attempts = attempts + 1, sent_at_ms = {now},
                     next_attempt_at_ms = NULL, message_key = NULL, message_payload = NULL,
                     message_headers = NULL, claim_token = NULL
                 WHERE notification_id = $2 AND claim_token = $3"
            ),
            schedule_retry: format!(
                "UPDATE notifications SET status = $1, attempts = $2, last_error = $3,
                     first_failure_at_ms = COALESCE(first_failure_at_ms, {now}),
                     next_attempt_at_ms = {now} + $4, claim_token = NULL
                 WHERE notification_id = $5 AND claim_token = $6"
            ),
            mark_failed: format!(
                "UPDATE notifications SET status = $1, attempts = $2, last_error = $3,
                     first_failure_at_ms = COALESCE(first_failure_at_ms, {now}),
                     next_attempt_at_ms = NULL, message_key = NULL, message_payload = NULL,
                     message_headers = NULL, claim_token = NULL
                 WHERE notification_id = $4 AND claim_token = $5"
            ),
            take_for_replay: format!(
                "UPDATE notifications SET status = $1, claim_token = $2,
                     next_attempt_at_ms = {now} + $3
                 WHERE notification_id = $4 AND status = $5"
            ),
            renew_claim: format!(
                "UPDATE notifications SET next_attempt_at_ms = {now} + $1
                 WHERE notification_id = $2 AND status = $3 AND claim_token = $4"
            ),
            lease_retry: format!(
                "UPDATE notifications SET next_attempt_at_ms = {now} + $1, claim_token = $2
                 WHERE notification_id = $3 AND status = $4 AND next_attempt_at_ms = $5"
            ),
            due_retries: format!(
                "SELECT * FROM notifications
                 WHERE status = 'RETRYING' AND channel = $1 AND next_attempt_at_ms <= {now}
                 ORDER BY next_attempt_at_ms LIMIT $2"
            ),
            next_retry_in: format!(
                "SELECT MIN(next_attempt_at_ms) - {now} AS wait_ms FROM notifications
                 WHERE status = 'RETRYING' AND channel = $1"
            ),
        }
    }
}

/// The notifier service's schema, for SQLite and for PostgreSQL.
pub(crate) fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

impl Store {
    pub(crate) fn new(db: Db) -> Self {
        let now = db.backend().now_millis_sql();
        Self {
            db,
            now,
            sql: Arc::new(Statements::new(now)),
        }
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
    /// holding each claim's key, in the order of `claims`. A claim's lease starts at its
    /// `created_at_ms`, from the database's clock.
    pub(crate) async fn claim_all(
        &self,
        claims: &[(&NotificationRow, &Letter)],
    ) -> Result<Vec<NotificationRow>, sqlx::Error> {
        // Each chunk's multi-row INSERT and its parameters, 13 a row.
        let inserts: Vec<(String, Vec<Param>)> =
            batch_sql::chunks(claims, CLAIMS_PER_STATEMENT)
                .map(|chunk| {
                    let sql =
                        format!(
                    "INSERT INTO notifications (notification_id, event_id, order_id, channel,
                         recipient, status, attempts, created_at_ms, source_topic,
                         source_partition, source_offset, message_key, message_payload,
                         message_headers, claim_token)
                     VALUES {}
                     ON CONFLICT (event_id, channel) DO NOTHING",
                    rows_of_placeholders(chunk.len(), &[
                        "", "", "", "", "", "", "0", self.now, "", "", "", "", "", "", "",
                    ])
                );
                    let params = chunk
                        .iter()
                        .flat_map(|(new, letter)| {
                            [
                                new.notification_id.as_str().into(),
                                new.event_id.as_str().into(),
                                new.order_id.as_str().into(),
                                new.channel.as_str().into(),
                                new.recipient.as_str().into(),
                                Status::Pending.as_str().into(),
                                new.source_topic.as_str().into(),
                                new.source_partition.into(),
                                new.source_offset.into(),
                                Param::Blob(letter.key.clone()),
                                Param::Blob(letter.payload.clone()),
                                letter.headers_json().into(),
                                new.claim_token.clone().into(),
                            ]
                        })
                        .collect();
                    (sql, params)
                })
                .collect();
        let selects: Vec<(String, Vec<Param>)> = batch_sql::chunks(claims, IDS_PER_STATEMENT)
            .map(|chunk| {
                let sql = format!(
                    "SELECT * FROM notifications WHERE event_id IN ({})",
                    placeholders(1, chunk.len())
                );
                let params = chunk
                    .iter()
                    .map(|(new, _)| new.event_id.as_str().into())
                    .collect();
                (sql, params)
            })
            .collect();
        let keys: Vec<(String, Channel)> = claims
            .iter()
            .map(|(new, _)| (new.event_id.clone(), new.channel))
            .collect();
        self.db
            .transaction(move |conn| {
                Box::pin(async move {
                    // A few shapes, each prepared once and kept (see `batch_sql`).
                    for (sql, params) in &inserts {
                        conn.execute(sql, params).await?;
                    }
                    let mut held = HashMap::with_capacity(keys.len());
                    for (sql, params) in &selects {
                        for row in conn.fetch_all(sql, params).await? {
                            let row = from_row(&row)?;
                            held.insert((row.event_id.clone(), row.channel), row);
                        }
                    }
                    keys.iter()
                        .map(|key| held.get(key).cloned().ok_or(sqlx::Error::RowNotFound))
                        .collect()
                })
            })
            .await
    }

    /// Hands the PENDING claims holding `tokens` that were never acted on (a stop in the middle
    /// of a batch) to the retry loop, due now. Not deleted: another replica may have found
    /// the claim already (its partition moved there in a rebalance) and be relying on the row to
    /// have it sent; handed over, it is sent once, by whichever retry loop takes it. Returns how
    /// many were still ours to hand over.
    pub(crate) async fn release_claims(&self, tokens: &[String]) -> Result<u64, sqlx::Error> {
        let releases: Vec<(String, Vec<Param>)> = batch_sql::chunks(tokens, IDS_PER_STATEMENT)
            .map(|chunk| {
                let sql = format!(
                    "UPDATE notifications SET status = $1, claim_token = NULL,
                         next_attempt_at_ms = {now},
                         last_error = 'released unsent by a stopping notifier'
                     WHERE status = $2 AND claim_token IN ({})",
                    placeholders(3, chunk.len()),
                    now = self.now,
                );
                let params = [Status::Retrying.as_str(), Status::Pending.as_str()]
                    .into_iter()
                    .map(Param::from)
                    .chain(chunk.iter().map(Param::from))
                    .collect();
                (sql, params)
            })
            .collect();
        self.db
            .statements(move |conn| {
                Box::pin(async move {
                    let mut released = 0;
                    for (sql, params) in &releases {
                        released += conn.execute(sql, params).await?;
                    }
                    Ok(released)
                })
            })
            .await
    }

    /// Marks a notification sent by the holder of `token`, counting the attempt, and lets go of
    /// the message it kept. False, changing nothing, if `token` no longer holds it.
    pub(crate) async fn mark_sent(
        &self,
        notification_id: &str,
        token: &str,
    ) -> Result<bool, sqlx::Error> {
        self.changed_one(
            self.sql.mark_sent.clone(),
            vec![
                Status::Sent.as_str().into(),
                notification_id.into(),
                token.into(),
            ],
        )
        .await
    }

    /// Records, for the holder of `token`, the `attempts`-th failed send, to be tried again
    /// `delay` from now: the retry schedule holds it from now on. False, changing nothing, if
    /// `token` no longer holds it.
    pub(crate) async fn schedule_retry(
        &self,
        notification_id: &str,
        token: &str,
        attempts: i32,
        error: &str,
        delay: Duration,
    ) -> Result<bool, sqlx::Error> {
        self.changed_one(
            self.sql.schedule_retry.clone(),
            vec![
                Status::Retrying.as_str().into(),
                attempts.into(),
                error.into(),
                millis(delay).into(),
                notification_id.into(),
                token.into(),
            ],
        )
        .await
    }

    /// Records, for the holder of `token`, that a notification was parked on the dead-letter
    /// topic after `attempts` sends; the dead-letter topic holds the message from now on. False,
    /// changing nothing, if `token` no longer holds it.
    pub(crate) async fn mark_failed(
        &self,
        notification_id: &str,
        token: &str,
        attempts: i32,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        self.changed_one(
            self.sql.mark_failed.clone(),
            vec![
                Status::Failed.as_str().into(),
                attempts.into(),
                error.into(),
                notification_id.into(),
                token.into(),
            ],
        )
        .await
    }

    /// Takes a FAILED (parked) notification for a replay's one more send: PENDING again, held by
    /// `token` for `lease` from now, as a fresh claim would be. False if it is not FAILED any
    /// more (another replay took it).
    pub(crate) async fn take_for_replay(
        &self,
        notification_id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, sqlx::Error> {
        self.changed_one(
            self.sql.take_for_replay.clone(),
            vec![
                Status::Pending.as_str().into(),
                token.into(),
                millis(lease).into(),
                notification_id.into(),
                Status::Failed.as_str().into(),
            ],
        )
        .await
    }

    /// Hands a PENDING notification found by a redelivery to the retry loop, due when its claim's
    /// lease ends (`lease` after it was claimed, or as renewed), unless it was settled meanwhile.
    /// PENDING means another consumer may be sending it right now (its partition moved to us in a
    /// rebalance) or a notifier stopped mid-send; either way the outcome is not known yet, so it is
    /// not sent again before its claim could have finished. The claimant keeps its token until
    /// then: its send, if it finishes, is recorded, and the retry loop finds it SENT.
    pub(crate) async fn hand_over_pending(
        &self,
        notification_id: &str,
        lease: Duration,
    ) -> Result<bool, sqlx::Error> {
        // Due when the claim's lease ends: renewed (see `renew_claim`) or from its creation. One
        // statement, so a renewal and a hand-over cannot interleave.
        self.changed_one(
            "UPDATE notifications SET status = $1,
                 next_attempt_at_ms = COALESCE(next_attempt_at_ms, created_at_ms + $2),
                 last_error = 'send interrupted or under way elsewhere; checking again'
             WHERE notification_id = $3 AND status = $4"
                .to_owned(),
            vec![
                Status::Retrying.as_str().into(),
                millis(lease).into(),
                notification_id.into(),
                Status::Pending.as_str().into(),
            ],
        )
        .await
    }

    /// Extends the PENDING claim held by `token` to `lease` from now (kept in `next_attempt_at_ms`,
    /// unused while PENDING): false if it was handed to the retry loop or settled meanwhile, and
    /// so is no longer the claimant's to send.
    pub(crate) async fn renew_claim(
        &self,
        notification_id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, sqlx::Error> {
        self.changed_one(
            self.sql.renew_claim.clone(),
            vec![
                millis(lease).into(),
                notification_id.into(),
                Status::Pending.as_str().into(),
                token.into(),
            ],
        )
        .await
    }

    /// Up to `limit` of `channel`'s retries due now, soonest first, with their messages.
    ///
    /// This statement and [`Store::next_retry_in`] spell RETRYING out rather than bind it: they are
    /// what the partial index `notifications_due` (`WHERE status = 'RETRYING'`) is for, and
    /// PostgreSQL uses a partial index only for a query it can prove matches the index's condition
    /// when planning, which a bound value is not in a generic plan (one reused for any value). The
    /// store's tests read these rows back through [`Status`], so the text cannot drift from it.
    pub(crate) async fn due_retries(
        &self,
        channel: Channel,
        limit: i64,
    ) -> Result<Vec<(NotificationRow, Letter)>, sqlx::Error> {
        let sql = self.sql.due_retries.clone();
        let params: Vec<Param> = vec![channel.as_str().into(), limit.into()];
        self.db
            .statements(move |conn| {
                Box::pin(async move {
                    conn.fetch_all(&sql, &params)
                        .await?
                        .iter()
                        .map(|row| {
                            let letter = Letter::from_parts(
                                row.get("source_topic")?,
                                row.get("source_partition")?,
                                row.get("source_offset")?,
                                row.get("message_key")?,
                                row.get("message_payload")?,
                                row.get::<Option<String>>("message_headers")?.as_deref(),
                            )
                            .map_err(|e| sqlx::Error::Decode(e.into()))?;
                            Ok((from_row(row)?, letter))
                        })
                        .collect()
                })
            })
            .await
    }

    /// How long until `channel`'s next retry is due (zero if one is due), if any is waiting: by
    /// the database's clock, as [`Store::due_retries`] judges it. RETRYING is spelt out for the
    /// partial index; see [`Store::due_retries`].
    pub(crate) async fn next_retry_in(
        &self,
        channel: Channel,
    ) -> Result<Option<Duration>, sqlx::Error> {
        let sql = self.sql.next_retry_in.clone();
        let channel = Param::from(channel.as_str());
        let wait: Option<i64> = self
            .db
            .statements(move |conn| {
                Box::pin(async move {
                    conn.fetch_optional(&sql, std::slice::from_ref(&channel))
                        .await?
                        .ok_or(sqlx::Error::RowNotFound)?
                        .get("wait_ms")
                })
            })
            .await?;
        Ok(wait.map(|ms| Duration::from_millis(ms.max(0) as u64)))
    }

    /// Takes a due retry for `token` for `lease` from now by moving its due time, if nobody else
    /// moved it since it was read as due at `seen_due_ms`: with several notifier replicas on one
    /// database, one of them sends it. The token it takes over from (a claim handed over whose
    /// lease has ended, an earlier lease) can change nothing any more. A holder that dies leaves
    /// it due again when the lease ends.
    pub(crate) async fn lease_retry(
        &self,
        notification_id: &str,
        seen_due_ms: i64,
        lease: Duration,
        token: &str,
    ) -> Result<bool, sqlx::Error> {
        self.changed_one(
            self.sql.lease_retry.clone(),
            vec![
                millis(lease).into(),
                token.into(),
                notification_id.into(),
                Status::Retrying.as_str().into(),
                seen_due_ms.into(),
            ],
        )
        .await
    }

    /// Up to `limit` notifications matching `filter` with `seq` greater than `after`, oldest first.
    pub(crate) async fn list(
        &self,
        filter: &Filter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<NotificationRow>, sqlx::Error> {
        let channel = filter.channel.map(|c| c.as_str().to_owned());
        let params: Vec<Param> = vec![
            after.into(),
            filter.order_id.clone().into(),
            filter.order_id.clone().into(),
            channel.clone().into(),
            channel.into(),
            limit.into(),
        ];
        self.db
            .fetch_all(
                "SELECT * FROM notifications
                 WHERE seq > $1 AND ($2 IS NULL OR order_id = $3) AND ($4 IS NULL OR channel = $5)
                 ORDER BY seq LIMIT $6",
                params,
                from_row,
            )
            .await
    }

    /// Runs the conditional write `sql` with `params`: whether it changed the one row it names.
    async fn changed_one(&self, sql: String, params: Vec<Param>) -> Result<bool, sqlx::Error> {
        Ok(self.db.execute(sql, params).await? == 1)
    }
}

fn from_row(row: &Row) -> Result<NotificationRow, sqlx::Error> {
    let channel: String = row.get("channel")?;
    let status: String = row.get("status")?;
    Ok(NotificationRow {
        seq: row.get("seq")?,
        notification_id: row.get("notification_id")?,
        event_id: row.get("event_id")?,
        order_id: row.get("order_id")?,
        channel: Channel::parse(&channel)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown channel {channel:?}").into()))?,
        recipient: row.get("recipient")?,
        status: Status::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown status {status:?}").into()))?,
        attempts: row.get("attempts")?,
        created_at_ms: row.get("created_at_ms")?,
        sent_at_ms: row.get("sent_at_ms")?,
        source_topic: row.get("source_topic")?,
        source_partition: row.get("source_partition")?,
        source_offset: row.get("source_offset")?,
        last_error: row.get("last_error")?,
        first_failure_at_ms: row.get("first_failure_at_ms")?,
        next_attempt_at_ms: row.get("next_attempt_at_ms")?,
        claim_token: row.get("claim_token")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordermesh::timestamp;
    use ordermesh_testkit::{Backend, Databases, on_both_backends};

    // On SQLite (a file: the writer thread) and on PostgreSQL: each statement writes or matches its status as a
    // literal, and both backends must agree with `Status`.

    /// A store on a fresh database, with what keeps a PostgreSQL server alive; None to skip.
    async fn store(backend: Backend) -> Option<(Store, Option<Databases>)> {
        let (url, databases) = ordermesh_testkit::unit_database(backend, "notifier").await?;
        let db = Db::open(&url, &migrations()).await.expect("database");
        Some((Store::new(db), databases))
    }

    /// A PENDING claim of event `n` and the message it was read from.
    fn claim(n: i64) -> (NotificationRow, Letter) {
        let row = NotificationRow::pending(
            format!("ntf_{n}"),
            &format!("evt_{n}"),
            "ord_1",
            Channel::Email,
            "ada@example.com".into(),
            ("order-events".into(), 0, n),
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

    /// The row of `id` as stored.
    async fn row(store: &Store, id: &str) -> NotificationRow {
        store
            .list(&Filter::default(), 0, 100)
            .await
            .expect("list reads every status back")
            .into_iter()
            .find(|r| r.notification_id == id)
            .expect("the row")
    }

    // Times are the database's (see the module's documentation): a test cannot set them, so it
    // makes a retry due now with a zero lease or delay, and not due with a long one.
    const NOW: Duration = Duration::ZERO;
    const LONG: Duration = Duration::from_secs(60);

    #[on_both_backends]
    #[tokio::test]
    async fn every_transition_stores_a_status_that_reads_back_typed(backend: Backend) {
        let Some((store, _databases)) = store(backend).await else {
            return;
        };
        let status = |id: &'static str| {
            let store = store.clone();
            async move { row(&store, id).await.status }
        };

        // Claimed: PENDING at the database's time, and renewable by its holder while it is.
        let (first, letter) = claim(1);
        let token = first.claim_token.clone().expect("a claim has a token");
        let before = timestamp::now_millis();
        let claimed = store.claim(&first, &letter).await.expect("claim");
        assert_eq!(claimed.status, Status::Pending);
        assert_eq!(claimed.claim_token.as_ref(), Some(&token));
        // The database's clock and this test's are the same host's here.
        assert!(
            (before - 1_000..=timestamp::now_millis() + 1_000).contains(&claimed.created_at_ms),
            "created at the database's now, in milliseconds since the epoch: {}",
            claimed.created_at_ms
        );
        assert!(
            store
                .renew_claim("ntf_1", &token, LONG)
                .await
                .expect("renew")
        );
        assert!(
            !store
                .renew_claim("ntf_1", "not-the-holder", LONG)
                .await
                .expect("renew"),
            "only the holder renews"
        );

        // Handed over: RETRYING, due at the renewed lease's end, not before.
        assert!(
            store
                .hand_over_pending("ntf_1", NOW)
                .await
                .expect("hand over")
        );
        assert_eq!(status("ntf_1").await, Status::Retrying);
        let wait = store
            .next_retry_in(Channel::Email)
            .await
            .expect("next")
            .expect("one waiting");
        assert!(wait > LONG - Duration::from_secs(5), "due in {wait:?}");
        assert!(
            store
                .due_retries(Channel::Email, 10)
                .await
                .expect("due")
                .is_empty()
        );

        // Leased when due, and scheduled again by the lease's holder.
        let (second, letter) = claim(2);
        store.claim(&second, &letter).await.expect("claim");
        assert!(
            store
                .hand_over_pending("ntf_2", NOW)
                .await
                .expect("hand over")
        );
        let due = store.due_retries(Channel::Email, 10).await.expect("due");
        assert_eq!(
            due.iter()
                .map(|(row, _)| (row.notification_id.as_str(), row.status))
                .collect::<Vec<_>>(),
            [("ntf_2", Status::Retrying)]
        );
        let seen_due = due[0].0.next_attempt_at_ms.expect("due time");
        assert!(
            store
                .lease_retry("ntf_2", seen_due, LONG, "lease-1")
                .await
                .expect("lease")
        );
        assert!(
            !store
                .lease_retry("ntf_2", seen_due, LONG, "lease-x")
                .await
                .expect("lease"),
            "leased once"
        );
        assert!(
            store
                .schedule_retry("ntf_2", "lease-1", 1, "mail server down", NOW)
                .await
                .expect("schedule")
        );
        assert_eq!(status("ntf_2").await, Status::Retrying);

        // Sent by the next lease's holder: SENT, and no longer a claim to renew or hand over.
        let seen_due = row(&store, "ntf_2")
            .await
            .next_attempt_at_ms
            .expect("due time");
        assert!(
            store
                .lease_retry("ntf_2", seen_due, LONG, "lease-2")
                .await
                .expect("lease")
        );
        assert!(store.mark_sent("ntf_2", "lease-2").await.expect("sent"));
        assert_eq!(status("ntf_2").await, Status::Sent);
        assert!(row(&store, "ntf_2").await.sent_at_ms.is_some());
        assert!(
            !store
                .renew_claim("ntf_2", "lease-2", LONG)
                .await
                .expect("renew")
        );
        assert!(
            !store
                .hand_over_pending("ntf_2", NOW)
                .await
                .expect("hand over")
        );

        // Parked by its holder: FAILED; and taken again by a replay: PENDING under the replay's
        // token, which alone may settle it.
        let (third, letter) = claim(3);
        let third_token = third.claim_token.clone().expect("token");
        store.claim(&third, &letter).await.expect("claim");
        assert!(
            store
                .mark_failed("ntf_3", &third_token, 1, "no such mailbox")
                .await
                .expect("failed")
        );
        assert_eq!(status("ntf_3").await, Status::Failed);
        assert!(
            store
                .take_for_replay("ntf_3", "replay", LONG)
                .await
                .expect("take")
        );
        assert_eq!(status("ntf_3").await, Status::Pending);
        assert!(
            !store
                .take_for_replay("ntf_3", "another replay", LONG)
                .await
                .expect("take"),
            "a second replay finds it taken"
        );
        assert!(
            store
                .mark_failed("ntf_3", "replay", 2, "no such mailbox")
                .await
                .expect("failed")
        );
        assert_eq!(status("ntf_3").await, Status::Failed);

        // Released on stop: a claim still PENDING goes to the retry loop, due now; settled rows
        // are left alone.
        let (fourth, letter) = claim(4);
        store.claim(&fourth, &letter).await.expect("claim");
        let released = store
            .release_claims(&[
                "lease-2".to_owned(),
                third_token,
                fourth.claim_token.clone().expect("token"),
            ])
            .await
            .expect("release");
        assert_eq!(released, 1);
        assert_eq!(status("ntf_4").await, Status::Retrying);
        assert_eq!(status("ntf_2").await, Status::Sent);
        assert_eq!(status("ntf_3").await, Status::Failed);
        let due = store.due_retries(Channel::Email, 10).await.expect("due");
        assert_eq!(
            due.iter()
                .map(|(row, _)| (row.notification_id.as_str(), row.claim_token.clone()))
                .collect::<Vec<_>>(),
            [("ntf_4", None)],
            "due at once, held by nobody until a retry loop leases it"
        );
    }

    /// Issue 19: a holder that lost its claim (handed over, then leased and sent by the retry
    /// loop) must not turn the SENT row back into a retry or a failure.
    #[on_both_backends]
    #[tokio::test]
    async fn a_stale_writer_after_a_hand_over_cannot_change_a_sent_row(backend: Backend) {
        let Some((store, _databases)) = store(backend).await else {
            return;
        };
        let (first, letter) = claim(1);
        let stale = first.claim_token.clone().expect("token");
        store.claim(&first, &letter).await.expect("claim");
        // A redelivery elsewhere hands it over; its lease ends; the retry loop leases and sends.
        assert!(
            store
                .hand_over_pending("ntf_1", NOW)
                .await
                .expect("hand over")
        );
        let due_at = row(&store, "ntf_1")
            .await
            .next_attempt_at_ms
            .expect("due time");
        assert!(
            store
                .lease_retry("ntf_1", due_at, LONG, "retry-loop")
                .await
                .expect("lease")
        );
        assert!(store.mark_sent("ntf_1", "retry-loop").await.expect("sent"));

        // The first holder, late, reports a failed send, then a park: neither is recorded.
        assert!(
            !store
                .schedule_retry("ntf_1", &stale, 1, "timed out", NOW)
                .await
                .expect("schedule")
        );
        assert!(
            !store
                .mark_failed("ntf_1", &stale, 1, "timed out")
                .await
                .expect("failed")
        );
        assert!(!store.mark_sent("ntf_1", &stale).await.expect("sent"));
        let rows = store.list(&Filter::default(), 0, 10).await.expect("list");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].status,
                rows[0].attempts,
                rows[0].last_error.as_deref()
            ),
            (
                Status::Sent,
                1,
                Some("send interrupted or under way elsewhere; checking again")
            )
        );
        assert!(
            store
                .due_retries(Channel::Email, 10)
                .await
                .expect("due")
                .is_empty(),
            "nothing for the retry loop to send again or park"
        );
    }
}
