//! Every SQL statement of the payment service.
//!
//! One row per idempotency key. The key is unique, and every write that takes a key is an insert
//! that does nothing when the key is taken: a charge (SUCCEEDED or DECLINED) and a close (CLOSED)
//! race on that one constraint, so exactly one of them ever holds a key. A row, once written,
//! changes once at most: SUCCEEDED to REFUNDED, in the transaction that stores the refund.
//!
//! Refunds have keys of their own (a second table): one row per refund key, and at most one per
//! payment. Both are unique constraints, so a retried refund finds the first one and two refunds
//! of one payment racing under different keys store one; the payment's change to REFUNDED is
//! conditional on its still being SUCCEEDED, a second guard that holds without the first.

use ordermesh_platform::{db::Migrations, db::Pool};
use sqlx::{Row, any::AnyRow};

/// What a key holds, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyStatus {
    /// A charge was made.
    Succeeded,
    /// The processor declined the charge.
    Declined,
    /// Closed without a charge: none can be made with the key.
    Closed,
    /// Charged, then refunded in full (a refund row holds the payment).
    Refunded,
}

impl KeyStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Succeeded => "SUCCEEDED",
            KeyStatus::Declined => "DECLINED",
            KeyStatus::Closed => "CLOSED",
            KeyStatus::Refunded => "REFUNDED",
        }
    }

    fn parse(s: &str) -> Result<Self, sqlx::Error> {
        match s {
            "SUCCEEDED" => Ok(KeyStatus::Succeeded),
            "DECLINED" => Ok(KeyStatus::Declined),
            "CLOSED" => Ok(KeyStatus::Closed),
            "REFUNDED" => Ok(KeyStatus::Refunded),
            other => Err(sqlx::Error::Decode(
                format!("unknown payment status {other:?}").into(),
            )),
        }
    }
}

/// A payment (or a closed key) as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PaymentRow {
    /// Insertion order, for ListPayments' pages (0 for a row not stored yet).
    pub(crate) seq: i64,
    pub(crate) payment_id: String,
    pub(crate) idempotency_key: String,
    pub(crate) request_fingerprint: String,
    pub(crate) order_id: String,
    pub(crate) currency_code: String,
    pub(crate) minor_units: i64,
    pub(crate) status: KeyStatus,
    pub(crate) decline_reason: String,
    pub(crate) close_reason: String,
    pub(crate) created_at_ms: i64,
    /// When the payment was refunded; set exactly when `status` is REFUNDED.
    pub(crate) refunded_at_ms: Option<i64>,
    /// The refund that gave the amount back; empty unless `status` is REFUNDED.
    pub(crate) refund_id: String,
}

/// A refund as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefundRow {
    pub(crate) refund_id: String,
    pub(crate) idempotency_key: String,
    pub(crate) request_fingerprint: String,
    pub(crate) payment_id: String,
    pub(crate) order_id: String,
    pub(crate) currency_code: String,
    pub(crate) minor_units: i64,
    pub(crate) reason: String,
    pub(crate) created_at_ms: i64,
}

/// What became of an attempt to store a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RefundWrite {
    /// Stored, and the payment is REFUNDED now.
    Stored,
    /// Nothing stored: a refund already holds the key (a copy of this request, or another one).
    KeyTaken(RefundRow),
    /// Nothing stored: another refund, under another key, already holds the payment.
    PaymentTaken(RefundRow),
    /// Nothing stored: the payment is not SUCCEEDED (any more), so there is nothing to refund.
    NotSucceeded,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: Pool,
}

/// The payment service's schema, for SQLite and for PostgreSQL.
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

    /// Stores `new` unless its idempotency key is taken (by a payment or a close), and returns
    /// whichever row holds the key now. The unique constraint decides races, so concurrent retries
    /// get one row, and a close and a charge racing get whichever came first.
    pub(crate) async fn insert_or_get(&self, new: &PaymentRow) -> Result<PaymentRow, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO payments (payment_id, idempotency_key, request_fingerprint, order_id,
                 currency_code, minor_units, status, decline_reason, close_reason, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING *",
        )
        .bind(&new.payment_id)
        .bind(&new.idempotency_key)
        .bind(&new.request_fingerprint)
        .bind(&new.order_id)
        .bind(&new.currency_code)
        .bind(new.minor_units)
        .bind(new.status.as_str())
        .bind(&new.decline_reason)
        .bind(&new.close_reason)
        .bind(new.created_at_ms)
        .try_map(|row: AnyRow| from_row(&row))
        .fetch_optional(&self.pool)
        .await?;
        // The new row comes back from the INSERT itself (one round trip instead of two); only a
        // key taken before needs the SELECT.
        if let Some(row) = inserted {
            return Ok(row);
        }
        match self.by_key(&new.idempotency_key).await? {
            Some(row) => Ok(row),
            None => Err(sqlx::Error::RowNotFound),
        }
    }

    /// The row holding `key`, if any.
    pub(crate) async fn by_key(&self, key: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
        sqlx::query("SELECT * FROM payments WHERE idempotency_key = $1")
            .bind(key)
            .try_map(|row: AnyRow| from_row(&row))
            .fetch_optional(&self.pool)
            .await
    }

    /// A payment by id; a closed key is not a payment.
    pub(crate) async fn get(&self, payment_id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
        sqlx::query("SELECT * FROM payments WHERE payment_id = $1 AND status <> 'CLOSED'")
            .bind(payment_id)
            .try_map(|row: AnyRow| from_row(&row))
            .fetch_optional(&self.pool)
            .await
    }

    /// Up to `limit` payments (not closed keys) with `seq` greater than `after`, oldest first.
    pub(crate) async fn list(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<PaymentRow>, sqlx::Error> {
        sqlx::query(
            "SELECT * FROM payments WHERE seq > $1 AND status <> 'CLOSED' ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .try_map(|row: AnyRow| from_row(&row))
        .fetch_all(&self.pool)
        .await
    }

    /// The refund made with `key`, if any.
    pub(crate) async fn refund_by_key(&self, key: &str) -> Result<Option<RefundRow>, sqlx::Error> {
        sqlx::query("SELECT * FROM refunds WHERE idempotency_key = $1")
            .bind(key)
            .try_map(|row: AnyRow| refund_from_row(&row))
            .fetch_optional(&self.pool)
            .await
    }

    /// The refund of `payment_id`, if any.
    pub(crate) async fn refund_of(
        &self,
        payment_id: &str,
    ) -> Result<Option<RefundRow>, sqlx::Error> {
        sqlx::query("SELECT * FROM refunds WHERE payment_id = $1")
            .bind(payment_id)
            .try_map(|row: AnyRow| refund_from_row(&row))
            .fetch_optional(&self.pool)
            .await
    }

    /// Stores `new` and changes its payment from SUCCEEDED to REFUNDED, in one transaction: both or
    /// neither. The insert does nothing when the refund key or the payment is taken (a unique
    /// constraint each, so racing refunds store one), and the update changes the payment only if
    /// it is still SUCCEEDED; either way, nothing is written and the answer says what holds it.
    pub(crate) async fn refund(&self, new: &RefundRow) -> Result<RefundWrite, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // The write comes first in the transaction: on SQLite it takes the write lock at once, so
        // two refunds queue instead of both reading and then deadlocking on the upgrade.
        let inserted = sqlx::query(
            "INSERT INTO refunds (refund_id, idempotency_key, request_fingerprint, payment_id,
                 order_id, currency_code, minor_units, reason, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT DO NOTHING",
        )
        .bind(&new.refund_id)
        .bind(&new.idempotency_key)
        .bind(&new.request_fingerprint)
        .bind(&new.payment_id)
        .bind(&new.order_id)
        .bind(&new.currency_code)
        .bind(new.minor_units)
        .bind(&new.reason)
        .bind(new.created_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            // The key first: a retry of this very request must find its refund, not be told the
            // payment is taken (by that same refund).
            if let Some(held) = self.refund_by_key(&new.idempotency_key).await? {
                return Ok(RefundWrite::KeyTaken(held));
            }
            return match self.refund_of(&new.payment_id).await? {
                Some(held) => Ok(RefundWrite::PaymentTaken(held)),
                // Only the refund id can have collided, and it is a fresh UUID.
                None => Err(sqlx::Error::RowNotFound),
            };
        }
        // Conditional: a payment that stopped being SUCCEEDED since it was read (refunded by a
        // racing call) is not refunded twice.
        let changed = sqlx::query(
            "UPDATE payments SET status = 'REFUNDED', refunded_at_ms = $1, refund_id = $2
             WHERE payment_id = $3 AND status = 'SUCCEEDED'",
        )
        .bind(new.created_at_ms)
        .bind(&new.refund_id)
        .bind(&new.payment_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 {
            tx.commit().await?;
            Ok(RefundWrite::Stored)
        } else {
            tx.rollback().await?;
            Ok(RefundWrite::NotSucceeded)
        }
    }
}

fn refund_from_row(row: &AnyRow) -> Result<RefundRow, sqlx::Error> {
    Ok(RefundRow {
        refund_id: row.try_get("refund_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_fingerprint: row.try_get("request_fingerprint")?,
        payment_id: row.try_get("payment_id")?,
        order_id: row.try_get("order_id")?,
        currency_code: row.try_get("currency_code")?,
        minor_units: row.try_get("minor_units")?,
        reason: row.try_get("reason")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn from_row(row: &AnyRow) -> Result<PaymentRow, sqlx::Error> {
    Ok(PaymentRow {
        seq: row.try_get("seq")?,
        payment_id: row.try_get("payment_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_fingerprint: row.try_get("request_fingerprint")?,
        order_id: row.try_get("order_id")?,
        currency_code: row.try_get("currency_code")?,
        minor_units: row.try_get("minor_units")?,
        status: KeyStatus::parse(row.try_get("status")?)?,
        decline_reason: row.try_get("decline_reason")?,
        close_reason: row.try_get("close_reason")?,
        created_at_ms: row.try_get("created_at_ms")?,
        refunded_at_ms: row.try_get("refunded_at_ms")?,
        refund_id: row.try_get("refund_id")?,
    })
}
