//! Every SQL statement of the notifier.

use sqlx::{Row, SqlitePool, sqlite::SqliteRow};

use crate::channel::Channel;

/// A notification as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotificationRow {
    pub(crate) seq: i64,
    pub(crate) notification_id: String,
    pub(crate) event_id: String,
    pub(crate) order_id: String,
    pub(crate) channel: Channel,
    pub(crate) recipient: String,
    /// `PENDING`, `SENT` or `FAILED`.
    pub(crate) status: String,
    pub(crate) attempts: i32,
    pub(crate) created_at_ms: i64,
    pub(crate) sent_at_ms: Option<i64>,
    pub(crate) source_topic: String,
    pub(crate) source_partition: i32,
    pub(crate) source_offset: i64,
}

/// Filters of a listing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) order_id: Option<String>,
    pub(crate) channel: Option<Channel>,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: SqlitePool,
}

impl Store {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Records a PENDING notification for (event, channel) unless one exists, and returns whichever
    /// row holds that key now: a redelivered event finds the first one.
    pub(crate) async fn claim(
        &self,
        new: &NotificationRow,
    ) -> Result<NotificationRow, sqlx::Error> {
        sqlx::query(
            "INSERT INTO notifications (notification_id, event_id, order_id, channel, recipient,
                 status, attempts, created_at_ms, source_topic, source_partition, source_offset)
             VALUES (?, ?, ?, ?, ?, 'PENDING', 0, ?, ?, ?, ?)
             ON CONFLICT (event_id, channel) DO NOTHING",
        )
        .bind(&new.notification_id)
        .bind(&new.event_id)
        .bind(&new.order_id)
        .bind(new.channel.as_str())
        .bind(&new.recipient)
        .bind(new.created_at_ms)
        .bind(&new.source_topic)
        .bind(new.source_partition)
        .bind(new.source_offset)
        .execute(&self.pool)
        .await?;
        sqlx::query("SELECT * FROM notifications WHERE event_id = ? AND channel = ?")
            .bind(&new.event_id)
            .bind(new.channel.as_str())
            .try_map(|row: SqliteRow| from_row(&row))
            .fetch_one(&self.pool)
            .await
    }

    /// Marks a notification sent, counting the attempt.
    pub(crate) async fn mark_sent(
        &self,
        notification_id: &str,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE notifications SET status = 'SENT', attempts = attempts + 1, sent_at_ms = ?
             WHERE notification_id = ?",
        )
        .bind(now_ms)
        .bind(notification_id)
        .execute(&self.pool)
        .await?;
        Ok(())
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
             WHERE seq > ? AND (? IS NULL OR order_id = ?) AND (? IS NULL OR channel = ?)
             ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(&filter.order_id)
        .bind(&filter.order_id)
        .bind(filter.channel.map(Channel::as_str))
        .bind(filter.channel.map(Channel::as_str))
        .bind(limit)
        .try_map(|row: SqliteRow| from_row(&row))
        .fetch_all(&self.pool)
        .await
    }
}

fn from_row(row: &SqliteRow) -> Result<NotificationRow, sqlx::Error> {
    let channel: String = row.try_get("channel")?;
    Ok(NotificationRow {
        seq: row.try_get("seq")?,
        notification_id: row.try_get("notification_id")?,
        event_id: row.try_get("event_id")?,
        order_id: row.try_get("order_id")?,
        channel: Channel::parse(&channel)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown channel {channel:?}").into()))?,
        recipient: row.try_get("recipient")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        created_at_ms: row.try_get("created_at_ms")?,
        sent_at_ms: row.try_get("sent_at_ms")?,
        source_topic: row.try_get("source_topic")?,
        source_partition: row.try_get("source_partition")?,
        source_offset: row.try_get("source_offset")?,
    })
}
