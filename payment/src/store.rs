//! Every SQL statement of the payment service.

use ordermesh::db::{Migrations, Pool};
use sqlx::{Row, any::AnyRow};

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PaymentRow {
    pub(crate) payment_id: String,
    pub(crate) idempotency_key: String,
    pub(crate) request_fingerprint: String,
    pub(crate) order_id: String,
    pub(crate) currency_code: String,
    pub(crate) minor_units: i64,
    /// `SUCCEEDED` or `DECLINED`.
    pub(crate) status: String,
    pub(crate) decline_reason: String,
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

    /// Stores `new` unless a payment with its idempotency key exists, and returns whichever row holds
    /// the key now. The unique constraint decides races, so concurrent retries get one row.
    pub(crate) async fn insert_or_get(&self, new: &PaymentRow) -> Result<PaymentRow, sqlx::Error> {
        sqlx::query(
            "INSERT INTO payments (payment_id, idempotency_key, request_fingerprint, order_id,
                 currency_code, minor_units, status, decline_reason, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&new.payment_id)
        .bind(&new.idempotency_key)
        .bind(&new.request_fingerprint)
        .bind(&new.order_id)
        .bind(&new.currency_code)
        .bind(new.minor_units)
        .bind(&new.status)
        .bind(&new.decline_reason)
        .bind(new.created_at_ms)
        .execute(&self.pool)
        .await?;
        sqlx::query("SELECT * FROM payments WHERE idempotency_key = $1")
            .bind(&new.idempotency_key)
            .try_map(|row: AnyRow| from_row(&row))
            .fetch_one(&self.pool)
            .await
    }

    pub(crate) async fn get(&self, payment_id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
        sqlx::query("SELECT * FROM payments WHERE payment_id = $1")
            .bind(payment_id)
            .try_map(|row: AnyRow| from_row(&row))
            .fetch_optional(&self.pool)
            .await
    }
}

fn from_row(row: &AnyRow) -> Result<PaymentRow, sqlx::Error> {
    Ok(PaymentRow {
        payment_id: row.try_get("payment_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_fingerprint: row.try_get("request_fingerprint")?,
        order_id: row.try_get("order_id")?,
        currency_code: row.try_get("currency_code")?,
        minor_units: row.try_get("minor_units")?,
        status: row.try_get("status")?,
        decline_reason: row.try_get("decline_reason")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}
