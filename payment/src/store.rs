//! Every SQL statement of the payment service.
//!
//! One row per idempotency key. The key is unique, and every write that takes a key is an insert
//! that does nothing when the key is taken: a charge (SUCCEEDED or DECLINED) and a close (CLOSED)
//! race on that one constraint, so exactly one of them ever holds a key, and a row, once written,
//! never changes.

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
}

impl KeyStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Succeeded => "SUCCEEDED",
            KeyStatus::Declined => "DECLINED",
            KeyStatus::Closed => "CLOSED",
        }
    }

    fn parse(s: &str) -> Result<Self, sqlx::Error> {
        match s {
            "SUCCEEDED" => Ok(KeyStatus::Succeeded),
            "DECLINED" => Ok(KeyStatus::Declined),
            "CLOSED" => Ok(KeyStatus::Closed),
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
        sqlx::query(
            "INSERT INTO payments (payment_id, idempotency_key, request_fingerprint, order_id,
                 currency_code, minor_units, status, decline_reason, close_reason, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (idempotency_key) DO NOTHING",
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
        .execute(&self.pool)
        .await?;
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
    })
}
