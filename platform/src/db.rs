//! Opening a service's database. Each service keeps its SQL in one module of its own and its schema
//! in its own `migrations/`; this is only the part they share: turning a URL into a ready pool.
//!
//! Two backends, one code path. The URL chooses:
//! - **SQLite** (`sqlite://data/order.db`), the embedded default: one file per service under the
//!   data directory, so a restart loses nothing; `sqlite::memory:` keeps everything in memory, for
//!   throwaway runs. One process per file.
//! - **PostgreSQL** (`postgres://user:password@host/db`), for several replicas of a service sharing
//!   one database. TLS with `?sslmode=require` (or `verify-full` and `sslrootcert=...`).
//!
//! The services' stores run their SQL (the same for both: `$1` placeholders, `INSERT ... ON
//! CONFLICT`, `RETURNING`) through [`crate::unit_of_work`]: on PostgreSQL over this pool, on a
//! SQLite file on the file's writer thread ([`crate::sqlite_writer`]), opened after this pool has
//! migrated it. Each service has one migrations directory
//! per backend (`migrations/sqlite`, `migrations/postgres`) with the same numbered steps, because the
//! DDL differs (identity columns, BLOB vs BYTEA, and SQLite rebuilding a table to change a CHECK);
//! the tests check that both end in the same tables and columns.

use std::{path::Path, time::Duration};

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::{MigrateError, Migrator},
};

/// A service's connection pool, to SQLite or PostgreSQL.
pub type Pool = AnyPool;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of `url`, from its scheme.
    pub fn of(url: &str) -> Result<Self, DbError> {
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Ok(Backend::Sqlite),
            Some("postgres" | "postgresql") => Ok(Backend::Postgres),
            _ => Err(DbError::Scheme {
                url: crate::pii::redact_url_password(url),
            }),
        }
    }

    /// The backend `pool` is connected to.
    pub fn of_pool(pool: &Pool) -> Self {
        match pool.connect_options().database_url.scheme() {
            "postgres" | "postgresql" => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    }

    /// The database's clock, in milliseconds since the Unix epoch, as an SQL expression. Leases
    /// and due times that replicas sharing a database compare are computed from this one clock,
    /// not from each replica's own: two hosts' clocks can differ by more than a lease's margin.
    /// PostgreSQL: `clock_timestamp()`, the time of the statement rather than `now()`'s start of
    /// its transaction (a batch's claims are timed when written). SQLite: `julianday('now')`
    /// (millisecond precision, in every SQLite version), from the Julian day of the epoch.
    pub fn now_millis_sql(self) -> &'static str {
        match self {
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }
}

/// `duration` in whole milliseconds, as stored times and the durations bound next to
/// [`Backend::now_millis_sql`] are.
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A service's schema migrations: the same numbered steps, written for each backend.
#[derive(Debug)]
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

/// Why a service's database could not be made ready. URLs are shown without their password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "database URL {url} is neither sqlite://... nor postgres://... (e.g. sqlite://data/order.db or postgres://user:password@localhost/order)"
    )]
    Scheme { url: String },
    #[error("cannot open database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot migrate database {url}: {source}")]
    Migrate { url: String, source: MigrateError },
    #[error("cannot start the writer of database {url}: {source}")]
    Writer {
        url: String,
        source: crate::sqlite_writer::WriterError,
    },
}

/// Opens the database at `url` and brings its schema up to date with the service's `migrations`,
/// before anything is served from it. Replicas starting together on one PostgreSQL database are
/// safe: sqlx takes an advisory lock while it migrates, so one applies the steps and the others
/// find them applied.
pub async fn open(url: &str, migrations: &Migrations) -> Result<Pool, DbError> {
    let shown = crate::pii::redact_url_password(url);
    let pool = connect(url).await.map_err(|source| match source {
        ConnectError::Scheme(error) => error,
        ConnectError::Sqlx(source) => DbError::Open {
            url: shown.clone(),
            source,
        },
    })?;
    let migrator = match Backend::of_pool(&pool) {
        Backend::Sqlite => &migrations.sqlite,
        Backend::Postgres => &migrations.postgres,
    };
    migrator
        .run(&pool)
        .await
        .map_err(|source| DbError::Migrate { url: shown, source })?;
    Ok(pool)
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Scheme(DbError),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// Connects to the database at `url` without migrating it: SQLite (creating the file and its
/// directory if missing) or PostgreSQL.
pub async fn connect(url: &str) -> Result<Pool, ConnectError> {
    sqlx::any::install_default_drivers();
    match Backend::of(url).map_err(ConnectError::Scheme)? {
        Backend::Sqlite => Ok(connect_sqlite(url).await?),
        Backend::Postgres => Ok(AnyPoolOptions::new()
            // Per replica. PostgreSQL's default limit is 100 connections for all clients together.
            .max_connections(10)
            .idle_timeout(Duration::from_secs(600))
            .max_lifetime(Duration::from_secs(3600))
            .connect(url)
            .await?),
    }
}

/// The file a `sqlite:` URL names; None for an in-memory database.
pub(crate) fn sqlite_file(url: &str) -> Option<&Path> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    Some(Path::new(path.split('?').next().unwrap_or_default()))
}

async fn connect_sqlite(url: &str) -> Result<Pool, sqlx::Error> {
    let file = sqlite_file(url);
    let in_memory = file.is_none();
    if let Some(dir) = file
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
    {
        create_dir(dir)?;
    }
    let mut url = url.to_owned();
    // Created if missing (the URL can still say otherwise, e.g. `mode=ro`).
    if !in_memory && !url.contains("mode=") {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("mode=rwc");
    }
    let options: AnyConnectOptions = url.parse()?;
    AnyPoolOptions::new()
        // One connection per file. SQLite lets one writer in at a time whatever the pool holds,
        // and with eight connections the other writers waited in SQLite's busy handler, which
        // sleeps (1, 2, 5 ... 100 ms) instead of queueing: on the runner under 64 callers, eight
        // connections against one gave 1.60 vs 1.41 ms of CPU per order and a CreateOrder p99 of
        // 153 vs 102 ms (docs/benchmarks.md). Readers wait behind a write here, for as long as
        // one statement or transaction takes (no store holds a transaction across a call to
        // anything else). And every connection to `:memory:` would be a separate empty database.
        .max_connections(1)
        .min_connections(if in_memory { 1 } else { 0 })
        // No ping before each use: a SQLite connection is a handle on a local file that nothing
        // can close from the other side, and each ping is a round trip to the connection's
        // worker thread (sqlx runs every SQLite connection on a thread of its own).
        .test_before_acquire(false)
        .idle_timeout(if in_memory {
            None
        } else {
            Some(Duration::from_secs(600))
        })
        .max_lifetime(if in_memory {
            None
        } else {
            Some(Duration::from_secs(3600))
        })
        .after_connect(|conn, _| {
            Box::pin(async move {
                // WAL lets readers (GetOrder, ListOrders) run while a writer commits. In WAL mode
                // NORMAL is still durable against process crashes; only an OS crash can lose the
                // last transactions (FULL would add an fsync per commit). Writers queue for the lock
                // instead of failing at once with SQLITE_BUSY.
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                )
                .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
}

fn create_dir(dir: &Path) -> Result<(), sqlx::Error> {
    std::fs::create_dir_all(dir).map_err(|e| {
        sqlx::Error::Configuration(
            format!("cannot create data directory {}: {e}", dir.display()).into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_chooses_the_backend_and_a_wrong_one_says_what_is_expected() {
        assert_eq!(
            Backend::of("sqlite://data/order.db").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(Backend::of("sqlite::memory:").ok(), Some(Backend::Sqlite));
        assert_eq!(
            Backend::of("postgres://u:p@db/order").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::of("postgresql://db/order").ok(),
            Some(Backend::Postgres)
        );
        let error = Backend::of("mysql://u:hunter2@db/order")
            .expect_err("not ours")
            .to_string();
        assert!(
            error.contains("sqlite://") && error.contains("postgres://"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[tokio::test]
    async fn a_sqlite_file_and_its_directory_are_created_in_wal_mode() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("nested/dir/order.db");
        let pool = connect(&format!("sqlite://{}", file.display())).await?;
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await?;
        assert_eq!(mode, "wal");
        assert!(file.exists());
        Ok(())
    }
}
