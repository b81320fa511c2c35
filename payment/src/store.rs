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
//!
//! Each operation is one unit of work ([`ordermesh_platform::unit_of_work`]), on the SQLite
//! writer thread or on a PostgreSQL connection; a refund's two writes in one transaction.

use ordermesh_platform::{
    db::Migrations,
    unit_of_work::{Db, Param, Row},
};

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
    db: Db,
}

/// The payment service's schema, for SQLite and for PostgreSQL.
pub(crate) fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

const BY_KEY: &str = "SELECT * FROM payments WHERE idempotency_key = $1";
const REFUND_BY_KEY: &str = "SELECT * FROM refunds WHERE idempotency_key = $1";
const REFUND_OF: &str = "SELECT * FROM refunds WHERE payment_id = $1";

impl Store {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    /// Stores `new` unless its idempotency key is taken (by a payment or a close), and returns
    /// whichever row holds the key now. The unique constraint decides races, so concurrent retries
    /// get one row, and a close and a charge racing get whichever came first.
    pub(crate) async fn insert_or_get(&self, new: &PaymentRow) -> Result<PaymentRow, sqlx::Error> {
        let params: Vec<Param> = vec![
            new.payment_id.as_str().into(),
            new.idempotency_key.as_str().into(),
            new.request_fingerprint.as_str().into(),
            new.order_id.as_str().into(),
            new.currency_code.as_str().into(),
            new.minor_units.into(),
            new.status.as_str().into(),
            new.decline_reason.as_str().into(),
            new.close_reason.as_str().into(),
            new.created_at_ms.into(),
        ];
        self.db
            .statements(move |conn| {
                Box::pin(async move {
                    // The new row comes back from the INSERT itself; only a key taken before
                    // needs the SELECT.
                    let inserted = conn
                        .fetch_optional(
                            "INSERT INTO payments (payment_id, idempotency_key, request_fingerprint,
                                 order_id, currency_code, minor_units, status, decline_reason,
                                 close_reason, created_at_ms)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                             ON CONFLICT (idempotency_key) DO NOTHING
                             RETURNING *",
                            &params,
                        )
                        .await?;
                    let row = match inserted {
                        Some(row) => row,
                        None => conn
                            .fetch_optional(BY_KEY, &params[1..2])
                            .await?
                            .ok_or(sqlx::Error::RowNotFound)?,
                    };
                    from_row(&row)
                })
            })
            .await
    }

    /// The row holding `key`, if any.
    pub(crate) async fn by_key(&self, key: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
        self.one(BY_KEY, key, from_row).await
    }

    /// A payment by id; a closed key is not a payment.
    pub(crate) async fn get(&self, payment_id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
        self.one(
            "SELECT * FROM payments WHERE payment_id = $1 AND status <> 'CLOSED'",
            payment_id,
            from_row,
        )
        .await
    }

    /// Up to `limit` payments (not closed keys) with `seq` greater than `after`, oldest first.
    pub(crate) async fn list(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<PaymentRow>, sqlx::Error> {
        self.db
            .fetch_all(
                "SELECT * FROM payments WHERE seq > $1 AND status <> 'CLOSED' ORDER BY seq LIMIT $2",
                vec![after.into(), limit.into()],
                from_row,
            )
            .await
    }

    /// The refund made with `key`, if any.
    pub(crate) async fn refund_by_key(&self, key: &str) -> Result<Option<RefundRow>, sqlx::Error> {
        self.one(REFUND_BY_KEY, key, refund_from_row).await
    }

    /// The row `sql` finds for `key` (its one parameter), as `decode` reads it.
    async fn one<T: Send + 'static>(
        &self,
        sql: &'static str,
        key: &str,
        decode: fn(&Row) -> Result<T, sqlx::Error>,
    ) -> Result<Option<T>, sqlx::Error> {
        Ok(self
            .db
            .fetch_all(sql, vec![key.into()], decode)
            .await?
            .pop())
    }

    /// Stores `new` and changes its payment from SUCCEEDED to REFUNDED, as one unit: both or
    /// neither. The insert does nothing when the refund key or the payment is taken (a unique
    /// constraint each, so racing refunds store one), and the update changes the payment only if
    /// it is still SUCCEEDED; either way, nothing is written and the answer says what holds it.
    pub(crate) async fn refund(&self, new: &RefundRow) -> Result<RefundWrite, sqlx::Error> {
        let params: Vec<Param> = vec![
            new.refund_id.as_str().into(),
            new.idempotency_key.as_str().into(),
            new.request_fingerprint.as_str().into(),
            new.payment_id.as_str().into(),
            new.order_id.as_str().into(),
            new.currency_code.as_str().into(),
            new.minor_units.into(),
            new.reason.as_str().into(),
            new.created_at_ms.into(),
        ];
        self.db
            .transaction(move |conn| {
                Box::pin(async move {
                    // The write comes first: on SQLite through sqlx (in memory) it takes the
                    // write lock at once, so two refunds queue instead of both reading and then
                    // deadlocking on the upgrade.
                    let inserted = conn
                        .execute(
                            "INSERT INTO refunds (refund_id, idempotency_key, request_fingerprint,
                                 payment_id, order_id, currency_code, minor_units, reason,
                                 created_at_ms)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                             ON CONFLICT DO NOTHING",
                            &params,
                        )
                        .await?;
                    if inserted == 0 {
                        // The key first: a retry of this very request must find its refund, not
                        // be told the payment is taken (by that same refund).
                        if let Some(held) =
                            conn.fetch_optional(REFUND_BY_KEY, &params[1..2]).await?
                        {
                            return Ok(RefundWrite::KeyTaken(refund_from_row(&held)?));
                        }
                        return match conn.fetch_optional(REFUND_OF, &params[3..4]).await? {
                            Some(held) => Ok(RefundWrite::PaymentTaken(refund_from_row(&held)?)),
                            // Only the refund id can have collided, and it is a fresh UUID.
                            None => Err(sqlx::Error::RowNotFound),
                        };
                    }
                    // Conditional: a payment that stopped being SUCCEEDED since it was read
                    // (refunded by a racing call) is not refunded twice.
                    let (refund_id, payment_id, at) =
                        (params[0].clone(), params[3].clone(), params[8].clone());
                    let changed = conn
                        .execute(
                            "UPDATE payments SET status = 'REFUNDED', refunded_at_ms = $1,
                                 refund_id = $2
                             WHERE payment_id = $3 AND status = 'SUCCEEDED'",
                            &[at, refund_id, payment_id],
                        )
                        .await?;
                    if changed == 1 {
                        return Ok(RefundWrite::Stored);
                    }
                    // Nothing to refund: the refund row just written goes too (this unit's own
                    // write, so the unit as a whole changes nothing).
                    conn.execute("DELETE FROM refunds WHERE refund_id = $1", &params[..1])
                        .await?;
                    Ok(RefundWrite::NotSucceeded)
                })
            })
            .await
    }
}

fn refund_from_row(row: &Row) -> Result<RefundRow, sqlx::Error> {
    Ok(RefundRow {
        refund_id: row.get("refund_id")?,
        idempotency_key: row.get("idempotency_key")?,
        request_fingerprint: row.get("request_fingerprint")?,
        payment_id: row.get("payment_id")?,
        order_id: row.get("order_id")?,
        currency_code: row.get("currency_code")?,
        minor_units: row.get("minor_units")?,
        reason: row.get("reason")?,
        created_at_ms: row.get("created_at_ms")?,
    })
}

fn from_row(row: &Row) -> Result<PaymentRow, sqlx::Error> {
    Ok(PaymentRow {
        seq: row.get("seq")?,
        payment_id: row.get("payment_id")?,
        idempotency_key: row.get("idempotency_key")?,
        request_fingerprint: row.get("request_fingerprint")?,
        order_id: row.get("order_id")?,
        currency_code: row.get("currency_code")?,
        minor_units: row.get("minor_units")?,
        status: KeyStatus::parse(&row.get::<String>("status")?)?,
        decline_reason: row.get("decline_reason")?,
        close_reason: row.get("close_reason")?,
        created_at_ms: row.get("created_at_ms")?,
        refunded_at_ms: row.get("refunded_at_ms")?,
        refund_id: row.get("refund_id")?,
    })
}
